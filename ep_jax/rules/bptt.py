"""Backpropagation through time: the exact gradient of the unrolled free phase, as a rule.

The free phase runs ``T = phases.free.max_steps`` solver steps from ``state0``,
s_{t+1} = step(s_t; theta), and the loss reads the last state:

    L(theta) = mean_b C(output(s_T(theta)), y_b; theta),      g = dL/dtheta

by reverse-mode differentiation through the T steps (the input drive, every solver step and a
cost with parameters -- a ``SoftmaxReadout`` head -- included). It is the baseline Laborieux et
al. 2021 compare EP with (their Table 1 "BPTT"): the same energy, relaxation and optimizer, the
gradient taken exactly instead of estimated from nudged phases. Memory grows with T (every
step's state is kept for the backward pass).

Differs from ``ep_jax.exact.bptt_gradient`` in what it returns: the usual ``(grads,
RuleResult)`` with the free state and its ``RelaxStats``, so ``EPLearner`` trains with it
(``rule="bptt"``) and persistent particles see the same free state as under EP.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import apply_cost, prepare_target
from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, free_phase


def bptt_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """dL/dtheta by backprop through the ``phases.free.max_steps`` steps of the free phase.

    Args:
      energy: the model's energy.
      params: its parameters (including a readout cost's head).
      x: clamped inputs.
      target: labels ``(batch,)`` or dense targets.
      state0: ``"zeros"``, ``"feedforward"`` (differentiated through as well) or a state
        (persistent particles: a constant, the gradient does not flow into earlier batches).
      phases: ``phases.free`` (fixed steps: ``tol=None``) and ``phases.cost``; ``beta`` and
        ``phases.nudged`` are not used.
      key: unused (the rule is deterministic).

    Returns:
      ``(grads, RuleResult)``: ``grads`` shaped like ``params``, a gradient to descend; the
      result's nudged and second states are the free state (there is no nudged phase) and its
      beta is 0.

    Raises:
      ValueError: ``phases.free.tol`` is not ``None`` (a tolerance makes T depend on the data,
        and reverse-mode needs a fixed number of steps).
    """
    del key
    if phases.free.tol is not None:
        raise ValueError(
            "phases.free.tol: BPTT differentiates a fixed number of free steps, expected None, "
            f"received {phases.free.tol}"
        )

    def loss(p):
        s, stats = free_phase(energy, p, x, energy.init_state(p, x, state0), phases)
        out = energy.output(s)
        c = apply_cost(phases.cost, out, prepare_target(phases.cost, target, out), p)
        return jnp.mean(c), (s, stats)

    grads, (s0, stats) = jax.grad(loss, has_aux=True)(params)
    zero = jnp.zeros((), energy.param_dtype(params))
    return grads, RuleResult(s0, s0, s0, zero, stats, stats, stats)

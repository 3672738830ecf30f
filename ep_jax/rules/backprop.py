"""Backpropagation through the free phase of a feed-forward energy (the BP twin as a rule).

For an energy whose free equilibrium is its feed-forward pass (``init_state(params, x,
"feedforward")``: the residual MLP, the conditional Gaussian), the loss
L(theta) = mean_b C(output(s^0(theta)), y; theta) is differentiated through that pass:

    g = dL/dtheta      (jax.grad through ``feedforward_state`` and the cost, readout included)

It is the exact gradient the EP estimate approaches as beta -> 0, and the baseline of every
residual-EP number, trained through the same learner, optimizer and data path.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import apply_cost, prepare_target
from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, free_phase


def backprop_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "feedforward",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """dL/dtheta by backprop through the feed-forward pass; ``state0`` must be "feedforward"."""
    del key
    if not (isinstance(state0, str) and state0 == "feedforward"):
        raise ValueError(
            "state0: the backprop rule differentiates the feed-forward pass, expected "
            f"'feedforward', received {state0 if isinstance(state0, str) else type(state0).__name__!r}"
        )

    def loss(p):
        out = energy.output(energy.feedforward_state(p, x))
        return jnp.mean(apply_cost(phases.cost, out, prepare_target(phases.cost, target, out), p))

    grads = jax.grad(loss)(params)
    s0, stats = free_phase(energy, params, x, energy.feedforward_state(params, x), phases)
    zero = jnp.zeros((), energy.param_dtype(params))
    return grads, RuleResult(s0, s0, s0, zero, stats, stats, stats)

"""Equilibrium Propagation (Scellier & Bengio 2017; Laborieux et al. 2021).

Free phase s^0 = argmin E; nudged phase s^beta = argmin E + beta C (warm-started from s^0).
The estimate of dL/dtheta, L = mean_b C(s^0_b), is

* one-sided  (``ep``):             ( dF/dtheta(s^beta, beta) - dF/dtheta(s^0, 0) ) / beta,  error O(beta)
* random sign (``ep-random-sign``): the same with beta -> +-beta drawn per batch (seeds 001/003),
  unbiased at first order across batches
* symmetric (``ep-symmetric``):    ( dF/dtheta(s^beta, beta) - dF/dtheta(s^-beta, -beta) ) / (2 beta),
  error O(beta^2)

with F = E + beta C(theta): for a parameter-free cost dF/dtheta = dE/dtheta; a cost with
parameters (a readout) adds its own gradient, e.g. one-sided: dC/dtheta(s^beta) (seed 004's
head update) -- one formula, no special case. ``beta`` may be a traced value (``beta=``), so a
sweep over beta compiles once.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import (
    Phases,
    RuleResult,
    free_phase,
    nudged_phase,
    total_energy_grad_difference,
)

VARIANTS = ("one-sided", "random-sign", "symmetric")


def ep_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
    variant: str = "one-sided",
    beta=None,
) -> tuple[Params, RuleResult]:
    """EP estimate of the gradient of mean_b C(s^0_b) with respect to ``params``.

    Args:
      energy: the model's energy (``ep_jax.energies.Energy``).
      params: its parameters.
      x: clamped inputs ``(batch, n_in)``.
      target: labels ``(batch,)`` or dense targets.
      state0: initial free state: ``"zeros"``, ``"feedforward"`` or a state (particles).
      phases: solvers, cost and beta.
      key: PRNG key, needed by ``variant="random-sign"``.
      variant: ``"one-sided"``, ``"random-sign"`` or ``"symmetric"``.
      beta: overrides ``phases.beta``; may be a traced scalar (> 0, unchecked when traced).

    Returns:
      ``(grads, RuleResult)``; ``grads`` is shaped like ``params`` and is a gradient to
      *descend* (feed it to an optax optimizer as is).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, received {variant!r}")
    beta = phases.beta if beta is None else beta
    if isinstance(beta, (int, float)) and not beta > 0:
        raise ValueError(f"beta: expected > 0 (the variant sets the sign), received {beta}")
    state0 = energy.init_state(params, x, state0)
    # The clamped input's product, once for all phases (relax would otherwise take it per phase).
    drive = energy.input_drive(params, x)
    s0, free_stats = free_phase(energy, params, x, state0, phases, drive)

    dtype = energy.param_dtype(params)
    beta = jnp.asarray(beta, dtype)
    if variant == "random-sign":
        if key is None:
            raise ValueError("key: expected a PRNG key for variant='random-sign', received None")
        beta = beta * jax.random.rademacher(key, (), dtype=dtype)

    s_plus, plus_stats = nudged_phase(energy, params, x, target, s0, beta, phases, drive)
    if variant == "symmetric":
        s_minus, minus_stats = nudged_phase(energy, params, x, target, s0, -beta, phases, drive)
        grads = total_energy_grad_difference(
            energy, params, x, target, (s_plus, beta), (s_minus, -beta), 0.5 / beta, phases)
    else:
        s_minus, minus_stats = s0, plus_stats
        grads = total_energy_grad_difference(
            energy, params, x, target, (s_plus, beta), (s0, 0), 1.0 / beta, phases)
    return grads, RuleResult(s0, s_plus, s_minus, beta, free_stats, plus_stats, minus_stats)

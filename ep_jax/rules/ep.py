"""Equilibrium Propagation (Scellier & Bengio 2017; Laborieux et al. 2021).

Free phase s^0 = argmin E; nudged phase s^beta = argmin E + beta C (warm-started from s^0).
The estimate of dL/dtheta, L = mean_b C(s^0_b), is

* one-sided  (``ep``):             ( dE/dtheta(s^beta) - dE/dtheta(s^0) ) / beta,  error O(beta)
* random sign (``ep-random-sign``): the same with beta -> +-beta drawn per batch (seeds 001/003),
  unbiased at first order across batches
* symmetric (``ep-symmetric``):    ( dE/dtheta(s^beta) - dE/dtheta(s^-beta) ) / (2 beta),  error O(beta^2)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.energies.base import LayeredEnergy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, energy_grad_difference
from ep_jax.solvers import relax

VARIANTS = ("one-sided", "random-sign", "symmetric")


def free_phase(energy, params, x, state0, phases: Phases, drive=None):
    """Relaxes E alone from ``state0`` (``drive``: a shared ``energy.input_drive(params, x)``)."""
    return relax(energy, params, x, state0, solver=phases.free, cost=phases.cost, drive=drive)


def nudged_phase(energy, params, x, target, state0, beta, phases: Phases, drive=None):
    """Relaxes E + beta * C from ``state0`` (normally the free state)."""
    return relax(
        energy, params, x, state0, target=target, beta=beta, cost=phases.cost, solver=phases.nudged,
        drive=drive,
    )


def ep_gradient(
    energy: LayeredEnergy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
    variant: str = "one-sided",
) -> tuple[Params, RuleResult]:
    """EP estimate of the gradient of mean_b C(s^0_b) with respect to ``params``.

    Args:
      energy, params: the model.
      x: clamped inputs ``(batch, n_in)``; ``target``: labels ``(batch,)`` or dense targets.
      state0: initial free state: ``"zeros"``, ``"feedforward"`` or a state (particles).
      phases: solvers, cost and beta.
      key: PRNG key, needed by ``variant="random-sign"``.
      variant: ``"one-sided"``, ``"random-sign"`` or ``"symmetric"``.

    Returns:
      ``(grads, RuleResult)``; ``grads`` is shaped like ``params`` and is a gradient to
      *descend* (feed it to an optax optimizer as is).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, received {variant!r}")
    if not phases.beta > 0:
        raise ValueError(f"beta: expected > 0 (the variant sets the sign), received {phases.beta}")
    state0 = energy.init_state(params, x, state0)
    # The clamped input's product, once for all phases (relax would otherwise take it per phase).
    drive = energy.input_drive(params, x)
    s0, free_stats = free_phase(energy, params, x, state0, phases, drive)

    beta = jnp.asarray(phases.beta, x.dtype)
    if variant == "random-sign":
        if key is None:
            raise ValueError("key: expected a PRNG key for variant='random-sign', received None")
        beta = beta * jax.random.rademacher(key, (), dtype=x.dtype)

    s_plus, plus_stats = nudged_phase(energy, params, x, target, s0, beta, phases, drive)
    if variant == "symmetric":
        s_minus, minus_stats = nudged_phase(energy, params, x, target, s0, -beta, phases, drive)
        grads = energy_grad_difference(energy, params, x, s_plus, s_minus, 0.5 / beta)
    else:
        s_minus, minus_stats = s0, plus_stats
        grads = energy_grad_difference(energy, params, x, s_plus, s0, 1.0 / beta)
    return grads, RuleResult(s0, s_plus, s_minus, beta, free_stats, plus_stats, minus_stats)

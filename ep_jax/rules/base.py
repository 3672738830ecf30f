"""What learning rules share: the phase configuration and the energy-gradient difference."""

from __future__ import annotations

from typing import NamedTuple

import jax

from ep_jax.costs import Cost, squared_error
from ep_jax.energies.base import LayeredEnergy, Params, State
from ep_jax.solvers import GradientDescent, RelaxStats, Solver


class Phases(NamedTuple):
    """How a rule relaxes: solvers for the free and nudged phases, the cost, beta.

    Hashable, so a whole rule configuration is one static argument of ``jax.jit``.

    Attributes:
      beta: nudging strength (> 0; the sign is chosen by the rule's variant).
      free: solver of the free phase (seed 001: 20 steps of eps = 0.5 projected to [0, 1]).
      nudged: solver of the nudged phase(s), warm-started from the free state.
      cost: the cost C nudging the output.
    """

    beta: float = 0.5
    free: Solver = GradientDescent(0.5, 20, project="clip01")
    nudged: Solver = GradientDescent(0.5, 4, project="clip01")
    cost: Cost = squared_error


class RuleResult(NamedTuple):
    """Everything a rule computed besides the gradient (for metrics and particles).

    Attributes:
      free_state: the free equilibrium (write it back to persistent particles).
      nudged_state: the (+beta or signed) nudged state.
      second_state: the -beta nudged state of symmetric EP (else the free state).
      beta: the signed beta actually used.
      free_stats, nudged_stats: ``RelaxStats`` of the phases (``nudged_stats`` of the first
        nudged phase; ``second_stats`` of the -beta one, else equal to it).
    """

    free_state: State
    nudged_state: State
    second_state: State
    beta: jax.Array
    free_stats: RelaxStats
    nudged_stats: RelaxStats
    second_stats: RelaxStats


def energy_grad_difference(
    energy: LayeredEnergy, params: Params, x: jax.Array, state_a: State, state_b: State, scale
) -> Params:
    """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), both averaged over the batch.

    A pytree shaped like ``params`` that optax consumes directly; see
    ``LayeredEnergy.param_grad_difference`` (autodiff, or the energy's closed form).
    """
    return energy.param_grad_difference(params, x, tuple(state_a), tuple(state_b), scale)


def clamped_phase(energy, params, x, clamp, state0: State, phases: Phases):
    """Relaxes the hidden layers with the output held at ``clamp`` (``phases.nudged`` solver)."""
    from ep_jax.solvers import relax

    return relax(energy, params, x, state0, cost=phases.cost, solver=phases.nudged,
                 clamp_output=clamp)


def clamped_contrast(energy, params, x, target, state0, phases: Phases, eta):
    """Free phase, then the output held at (1 - eta) s_L^0 + eta y; descends
    (dE/dtheta(s^c) - dE/dtheta(s^0)) / eta. eta = 1 is CHL; 0 < eta < 1 is coupled learning."""
    import jax.numpy as jnp

    from ep_jax.costs import as_dense_target
    from ep_jax.rules.ep import free_phase  # ep.py imports this module

    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    eta = jnp.asarray(eta, x.dtype)
    y = as_dense_target(target, energy.sizes[-1], x.dtype)
    sc, clamped_stats = clamped_phase(energy, params, x, (1 - eta) * s0[-1] + eta * y, s0, phases)
    grads = energy_grad_difference(energy, params, x, sc, s0, 1.0 / eta)
    return grads, RuleResult(s0, sc, s0, eta, free_stats, clamped_stats, clamped_stats)

"""What learning rules share: the phase configuration and the total-energy gradient contrast.

Every rule is ``rule(energy, params, x, target, state0, *, phases, key) -> (grads, RuleResult)``
over any energy. Its estimate is a contrast of total-energy gradients at two relaxed states,

    g = scale * [ dF/dtheta(s_a, beta_a) - dF/dtheta(s_b, beta_b) ],   F = E + beta C(theta),

so a cost with parameters (a readout head) is learnt by the same formula as the energy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ep_jax.costs import Cost, apply_cost, prepare_target, squared_error
from ep_jax.energies.base import Energy, Params, State
from ep_jax.solvers import GradientDescent, RelaxStats, Solver, relax

ENERGY_GRAD_REDUCTIONS = ("mean", "sum")


class Phases(NamedTuple):
    """How a rule relaxes: solvers for the free and nudged phases, the cost, beta.

    Hashable, so a whole rule configuration is one static argument of ``jax.jit``.

    Attributes:
      beta: nudging strength (> 0; the sign is chosen by the rule's variant).
      free: solver of the free phase (seed 001: 20 steps of eps = 0.5 projected to [0, 1]).
      nudged: solver of the nudged phase(s), warm-started from the free state.
      cost: the cost C nudging the output.
      energy_grad_reduction: ``"mean"`` (default) averages dE/dtheta over the batch like the
        cost term; ``"sum"`` sums the energy term over the batch while the cost term stays a
        mean (seed 004's scaling, which multiplies the energy term by the batch size).
    """

    beta: float = 0.5
    free: Solver = GradientDescent(0.5, 20, project="clip01")
    nudged: Solver = GradientDescent(0.5, 4, project="clip01")
    cost: Cost = squared_error
    energy_grad_reduction: str = "mean"


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
    energy: Energy, params: Params, x: jax.Array, state_a: State, state_b: State, scale
) -> Params:
    """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), both averaged over the batch.

    A pytree shaped like ``params`` that optax consumes directly; see
    ``Energy.param_grad_difference`` (autodiff, or the energy's closed form).
    """
    return energy.param_grad_difference(params, x, state_a, state_b, scale)


def total_energy_grad_difference(energy: Energy, params: Params, x: jax.Array, target,
                                 a: tuple, b: tuple, scale, phases: Phases) -> Params:
    """scale * [dF/dtheta(s_a, beta_a) - dF/dtheta(s_b, beta_b)], F = E + beta C, batch means.

    ``a`` and ``b`` are ``(state, beta)`` pairs; ``beta`` may be the Python number 0 (no cost
    term). The energy term uses the energy's fast path; the cost term is added only for a cost
    with parameters (``has_params``), whose gradient is otherwise zero.
    """
    (s_a, beta_a), (s_b, beta_b) = a, b
    dtype = energy.param_dtype(params)
    e_scale = jnp.asarray(scale, dtype)
    if phases.energy_grad_reduction == "sum":
        e_scale = e_scale * jnp.shape(x)[0]
    elif phases.energy_grad_reduction != "mean":
        raise ValueError(
            f"energy_grad_reduction: expected one of {ENERGY_GRAD_REDUCTIONS}, received "
            f"{phases.energy_grad_reduction!r}"
        )
    grads = energy.param_grad_difference(params, x, s_a, s_b, e_scale)
    cost = phases.cost
    if not getattr(cost, "has_params", False):
        return grads
    y = prepare_target(cost, target, energy.output(s_a))

    def cost_term(p):
        c = jnp.asarray(beta_a, dtype) * apply_cost(cost, energy.output(s_a), y, p)
        if not (isinstance(beta_b, (int, float)) and beta_b == 0):
            c = c - jnp.asarray(beta_b, dtype) * apply_cost(cost, energy.output(s_b), y, p)
        return jnp.mean(c)

    c_scale = jnp.asarray(scale, dtype)
    return jax.tree.map(lambda g, c: g + c_scale * c, grads, jax.grad(cost_term)(params))


def free_phase(energy, params, x, state0, phases: Phases, drive=None):
    """Relaxes E alone from ``state0`` (``drive``: a shared ``energy.input_drive(params, x)``)."""
    return relax(energy, params, x, state0, solver=phases.free, cost=phases.cost, drive=drive)


def nudged_phase(energy, params, x, target, state0, beta, phases: Phases, drive=None):
    """Relaxes E + beta * C from ``state0`` (normally the free state)."""
    return relax(energy, params, x, state0, target=target, beta=beta, cost=phases.cost,
                 solver=phases.nudged, drive=drive)


def clamped_phase(energy, params, x, clamp, state0: State, phases: Phases):
    """Relaxes with the output held at ``clamp`` (``phases.nudged`` solver)."""
    return relax(energy, params, x, state0, cost=phases.cost, solver=phases.nudged,
                 clamp_output=clamp)


def clamped_contrast(energy, params, x, target, state0, phases: Phases, eta):
    """Free phase, then the output held at (1 - eta) s_out^0 + eta y; descends
    (dE/dtheta(s^c) - dE/dtheta(s^0)) / eta. eta = 1 is CHL; 0 < eta < 1 is coupled learning."""
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    dtype = energy.param_dtype(params)
    eta = jnp.asarray(eta, dtype)
    out = energy.output(s0)
    y = prepare_target(squared_error, target, out)  # the clamp is a point in output space
    sc, clamped_stats = clamped_phase(energy, params, x, (1 - eta) * out + eta * y, s0, phases)
    grads = energy_grad_difference(energy, params, x, sc, s0, 1.0 / eta)
    return grads, RuleResult(s0, sc, s0, eta, free_stats, clamped_stats, clamped_stats)

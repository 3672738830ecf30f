"""Holomorphic Equilibrium Propagation (Laborieux & Zenke 2022): exact gradients at finite beta.

With a holomorphic total energy F(s, beta) = E(s) + beta C(s; theta) (activations that extend to
complex states: sigmoid, tanh, identity; ``Energy.holomorphic``), the equilibrium s*(beta) is a
holomorphic function of a complex beta, and so is g(beta) = dF/dtheta(s*(beta), beta). The
gradient of the loss L = mean_b C(s*(0)) is g'(0) (the EP theorem), which Cauchy's formula
gives from a circle of radius r = |beta|:

    dL/dtheta = g'(0) = 1/(2 pi i) oint g(beta) / beta^2 dbeta
              = 1/(2 pi) int_0^{2 pi} g(r e^{i phi}) e^{-i phi} / r dphi

discretised with N points beta_k = r e^{2 pi i k / N}, k = 0..N-1 (trapezoid rule, exact for the
Fourier modes it resolves):

    g_N = Re[ 1/(N r) sum_k e^{-2 pi i k / N} ( dF/dtheta(s^{beta_k}, beta_k) - dF/dtheta(s^0, 0) ) ]

(the free term sums to zero over the circle for N >= 2; subtracting it only cancels rounding).
With g(beta) = sum_n a_n beta^n, the estimate is a_1 + a_{N+1} r^N + a_{2N+1} r^{2N} + ...:
the error falls geometrically with N, at any fixed r inside the radius of convergence, while
real EP at the same beta keeps its O(beta) (one-sided) or O(beta^2) (symmetric) bias. N = 2 is
symmetric EP. Like every rule here, ``grads`` is a gradient to *descend*.

Each nudged phase is a complex relaxation of F(s, beta_k) by ``phases.nudged`` (no projection:
clipping is not holomorphic), started from the real free state cast to complex. ``schedule``:

* ``"parallel"`` (default): the N relaxations are independent, ``jax.vmap`` over beta_k, each
  warm-started from the free state;
* ``"sequential"``: a ``lax.scan`` over k, each point warm-started from the previous point's
  equilibrium, the discrete form of the paper's continuously rotating teaching signal.

Both give the same estimate when every relaxation converges (to the same equilibrium branch).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import apply_cost, prepare_target
from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import ENERGY_GRAD_REDUCTIONS, Phases, RuleResult, free_phase
from ep_jax.solvers import RelaxStats
from ep_jax.solvers.base import Problem

SCHEDULES = ("parallel", "sequential")


def complex_dtype(dtype):
    """The complex dtype of a real floating dtype (float32 -> complex64, float64 -> complex128)."""
    return jnp.result_type(dtype, jnp.complex64)


def cauchy_points(points: int, radius, dtype):
    """(beta_k, w_k): beta_k = r e^{2 pi i k / N} and the weights w_k = e^{-2 pi i k / N} / (N r)
    of the discrete Cauchy integral g'(0) ~ sum_k w_k g(beta_k)."""
    cdtype = complex_dtype(dtype)
    phase = jnp.exp(2j * math.pi * jnp.arange(points) / points).astype(cdtype)
    radius = jnp.asarray(radius, dtype)
    return radius * phase, jnp.conj(phase) / (points * radius)


def check_holomorphic(energy: Energy, phases: Phases, points) -> None:
    """Raises ``ValueError`` for settings under which the complex relaxations are not holomorphic."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points: expected an int >= 2 (N points on the circle), received {points!r}")
    if not energy.holomorphic:
        acts = getattr(energy, "activation", None)
        raise ValueError(
            f"energy: ep-holomorphic needs a holomorphic energy (Energy.holomorphic; activations "
            f"sigmoid, tanh or identity), received {type(energy).__name__} with activation "
            f"{acts!r} (the hard sigmoid and relu clip, which has no complex extension)"
        )
    nudged = phases.nudged
    if nudged.bounds_states(energy) or getattr(nudged, "project", None) not in (None, "none"):
        raise ValueError(
            f"phases.nudged: ep-holomorphic relaxes complex states and needs an unprojected "
            f"solver, received {nudged!r} (a [0, 1] projection or clipping sweep is not "
            "holomorphic)"
        )
    if phases.energy_grad_reduction not in ENERGY_GRAD_REDUCTIONS:
        raise ValueError(
            f"energy_grad_reduction: expected one of {ENERGY_GRAD_REDUCTIONS}, received "
            f"{phases.energy_grad_reduction!r}"
        )


def _relax_point(energy, params, x, y, beta, state, phases: Phases, drive):
    """Relaxes F(s, beta) = E + beta C at one (complex) beta from ``state``: (state, stats)."""
    problem = Problem(energy, params, x, y, beta, phases.cost, drive)
    out = phases.nudged.solve(problem, state)
    f = jnp.real(jnp.mean(problem.total(out.carry)))
    return out.carry, RelaxStats(out.steps, out.residual, f, out.converged, out.nonfinite,
                                 out.unbounded, out.converged_fraction)


def _merge_stats(stats: RelaxStats) -> RelaxStats:
    """One ``RelaxStats`` for the N points: worst case of each field (energy: the beta_0 = r point)."""
    return RelaxStats(
        steps=jnp.max(stats.steps), residual=jnp.max(stats.residual), energy=stats.energy[0],
        converged=jnp.all(stats.converged), nonfinite=jnp.any(stats.nonfinite),
        unbounded=jnp.any(stats.unbounded), converged_fraction=jnp.min(stats.converged_fraction),
    )


def holomorphic_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
    points: int = 8,
    beta=None,
    schedule: str = "parallel",
) -> tuple[Params, RuleResult]:
    """Holomorphic EP estimate of the gradient of mean_b C(s^0_b) (module docstring).

    Args:
      energy: the model's energy (``energy.holomorphic`` must hold).
      params: its parameters.
      x: clamped inputs.
      target: labels ``(batch,)`` or dense targets.
      state0: initial free state: ``"zeros"``, ``"feedforward"`` or a state (particles).
      phases: solvers (``phases.nudged`` relaxes the complex points, unprojected), cost and
        ``beta`` = the radius |beta| of the circle.
      key: unused (the estimate is deterministic); accepted for the rule protocol.
      points: N >= 2, the number of points on the circle (N = 2 is symmetric EP).
      beta: overrides ``phases.beta`` (the radius; may be a traced scalar).
      schedule: ``"parallel"`` (vmap over the points) or ``"sequential"`` (scan, each point
        warm-started from the previous one).

    Returns:
      ``(grads, RuleResult)``: real ``grads`` shaped like ``params`` (to descend);
      ``nudged_state`` / ``second_state`` are the (real) beta = +r and, for even N, -r points;
      ``nudged_stats`` merges the N relaxations (max steps and residual, all converged).
    """
    del key
    check_holomorphic(energy, phases, points)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, received {schedule!r}")
    radius = phases.beta if beta is None else beta
    if isinstance(radius, (int, float)) and not radius > 0:
        raise ValueError(f"beta: expected the radius |beta| > 0, received {radius}")
    state0 = energy.init_state(params, x, state0)
    drive = energy.input_drive(params, x)
    s0, free_stats = free_phase(energy, params, x, state0, phases, drive)

    dtype = energy.param_dtype(params)
    y = prepare_target(phases.cost, target, energy.output(s0))
    if jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"target: expected batch size {jnp.shape(x)[0]} (as x), received {jnp.shape(y)[0]}"
        )
    phases.nudged.validate(energy)
    betas, weights = cauchy_points(points, radius, dtype)
    s0c = jax.tree.map(lambda v: v.astype(complex_dtype(dtype)), s0)

    def relax_at(b, s):
        return _relax_point(energy, params, x, y, b, s, phases, drive)

    if schedule == "parallel":
        states, stats = jax.vmap(relax_at, in_axes=(0, None))(betas, s0c)
    else:
        def body(s, b):
            new, st = relax_at(b, s)
            return new, (new, st)

        _, (states, stats) = jax.lax.scan(body, s0c, betas)

    # Energy term: sum_k w_k (dE/dtheta(s^{beta_k}) - dE/dtheta(s^0)), the energy's own
    # (closed-form or autodiff) contrast at each complex point, then the real part.
    e_scale = 1.0 if phases.energy_grad_reduction == "mean" else float(jnp.shape(x)[0])
    point_grads = jax.vmap(
        lambda s: energy.param_grad_difference(params, x, s, s0, e_scale))(states)
    grads = jax.tree.map(lambda g: jnp.real(jnp.tensordot(weights, g, axes=1)).astype(dtype),
                         point_grads)

    cost = phases.cost
    if getattr(cost, "has_params", False):
        # Cost term of dF/dtheta = dE/dtheta + beta dC/dtheta: Re sum_k w_k beta_k dC/dtheta(s_k)
        # = d/dtheta Re[sum_k w_k beta_k mean_b C(s_k; theta)] for real theta.
        def cost_term(p):
            c = jax.vmap(lambda s: jnp.mean(apply_cost(cost, energy.output(s), y, p)))(states)
            return jnp.real(jnp.sum(weights * betas * c))

        grads = jax.tree.map(jnp.add, grads, jax.grad(cost_term)(params))

    def point_state(k):
        return jax.tree.map(lambda v: jnp.real(v[k]).astype(dtype), states)

    nudged = point_state(0)  # beta_0 = +r: a real relaxation
    second = point_state(points // 2) if points % 2 == 0 else s0  # beta_{N/2} = -r
    merged = _merge_stats(stats)
    return grads, RuleResult(s0, nudged, second, jnp.asarray(radius, dtype), free_stats,
                             merged, merged)

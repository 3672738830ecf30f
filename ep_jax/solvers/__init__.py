"""Relaxation solvers and the one entry point ``relax``.

``relax(energy, params, x, state0, target=..., beta=..., solver=...)`` minimises F = E + beta C
over the state. A solver is a small object with ``init`` / ``step`` / ``terminate``
(``ep_jax.solvers.base.Solver``); adding one is one subclass in one file:

* ``GradientDescent(step_size, max_steps, tol, project)``: s <- proj(s - eps dF/ds)
* ``FixedPoint(max_steps, tol, order)``: s_l <- rho_l(-d(E_int + beta C)/d rho(s_l)),
  synchronous or even/odd (layered energies)
* ``OptaxSolver(transform, max_steps, tol, reduction)``: any optax optimizer on the state
* ``Stationary(tol)``: no step; checks the initial state is an equilibrium (feed-forward energies)
"""

from ep_jax.solvers.base import (
    GROWTH_STEPS,
    PROJECTIONS,
    LoopResult,
    Problem,
    RelaxationError,
    RelaxStats,
    Solver,
    all_finite,
    check_stats,
    iterate,
    nonfinite_cause,
    update_norm,
)
from ep_jax.solvers.fixed_point import FixedPoint
from ep_jax.solvers.gradient_descent import GradientDescent
from ep_jax.solvers.optax_solver import OptaxSolver
from ep_jax.solvers.relax import relax
from ep_jax.solvers.stationary import Stationary

__all__ = [
    "GROWTH_STEPS", "PROJECTIONS", "FixedPoint", "LoopResult", "GradientDescent", "OptaxSolver", "Problem",
    "RelaxStats", "RelaxationError", "Solver", "Stationary", "all_finite", "check_stats",
    "iterate", "nonfinite_cause", "relax", "update_norm",
]

"""No steps: the initial state is the equilibrium (feed-forward energies), checked, not assumed."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from ep_jax.energies.base import tree_sq_norm
from ep_jax.solvers.base import LoopResult, Problem, Solver, all_finite


@dataclasses.dataclass(frozen=True)
class Stationary(Solver):
    """Takes no step and checks that the initial state is stationary.

    For energies whose free equilibrium has a closed form -- the residual MLP and the conditional
    Gaussian, whose feed-forward pass gives E = 0 exactly -- the free phase is
    ``init_state(params, x, "feedforward")``: relaxing it would only cost time. ``residual`` is
    the gradient norm ``max_b ||dF/ds||`` at that state and ``converged`` means it is ``<= tol``.

    Attributes:
      tol: the tolerance on the gradient norm.
    """

    tol: Optional[float] = 1e-4
    max_steps: int = 0

    def validate(self, energy) -> None:
        if self.max_steps != 0:
            raise ValueError(f"max_steps: Stationary takes no step, expected 0, received {self.max_steps}")
        if self.tol is None or not self.tol >= 0:
            raise ValueError(f"tol: expected >= 0 (the stationarity check), received {self.tol!r}")

    def step(self, problem: Problem, state, solver_state, *, in_box: bool = False):
        return state, solver_state

    def solve(self, problem: Problem, state0, *, hold=None, box: bool = False) -> LoopResult:
        state = state0 if hold is None else hold(state0)
        res_b = jnp.sqrt(tree_sq_norm(problem.grad(state)))
        residual = jnp.max(res_b)
        nonfinite = ~all_finite(state) | ~jnp.isfinite(residual)
        converged = self.terminate(residual) & ~nonfinite
        fraction = jnp.mean(self.terminate(res_b).astype(residual.dtype))
        return LoopResult(state, jnp.asarray(0, jnp.int32), residual, nonfinite, converged,
                          jnp.asarray(False), fraction * (~nonfinite).astype(residual.dtype))

"""Projected gradient descent on F = E + beta C: ``s <- proj(s - step_size * dF/ds)``."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.solvers.base import PROJECTIONS, Problem, Solver


@dataclasses.dataclass(frozen=True)
class GradientDescent(Solver):
    """Projected gradient descent: ``s <- proj(s - step_size * dF/ds)`` on every state leaf.

    Attributes:
      step_size: epsilon (seeds 001/003 use 0.5).
      max_steps: steps to run (``tol=None``) or the cap (with ``tol``).
      tol: tolerance on the update norm; ``None`` runs a fixed number of steps.
      project: ``"clip01"`` keeps states in [0, 1] (seeds 001/003, where the projection is rho
        itself), or ``None``.
      unroll: steps per rolled loop iteration (``solvers.base.iterate``; same numbers for every
        value; >= max_steps unrolls fully).
    """

    step_size: float = 0.5
    max_steps: int = 20
    tol: Optional[float] = None
    project: Optional[str] = None
    unroll: int = 1

    def validate(self, energy) -> None:
        super().validate(energy)
        if not self.step_size > 0:
            raise ValueError(f"step_size: expected > 0, received {self.step_size}")
        if self.project not in PROJECTIONS:
            raise ValueError(f"project: expected one of {list(PROJECTIONS)}, received {self.project!r}")

    def keeps_in_box(self, energy) -> bool:
        """After one projected step every state lies in [0, 1], where rho is exactly the identity."""
        return self.project == "clip01" and energy.identity_on_unit_box

    def bounds_states(self, energy) -> bool:
        """The [0, 1] projection keeps every state bounded: nothing can run away."""
        return self.project == "clip01"

    def _descend(self, s, g):
        new = s - jnp.asarray(self.step_size, s.dtype) * g
        proj = PROJECTIONS[self.project]
        return new if proj is None else proj(new)

    def step(self, problem: Problem, state, solver_state, *, in_box: bool = False):
        grads = problem.grad(state, in_box=in_box)
        return jax.tree.map(self._descend, state, grads), solver_state

    def layer_step(self, problem: Problem, state: tuple, l: int):
        """One step of free layer ``l`` (1-based) of a layered state, the other layers held."""

        def f(s_l):
            return jnp.sum(problem.total(state[: l - 1] + (s_l,) + state[l:]))

        return self._descend(state[l - 1], jax.grad(f)(state[l - 1]))

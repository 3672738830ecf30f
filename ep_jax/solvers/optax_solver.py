"""Any optax optimizer as a relaxation solver: minimise F over the state."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from ep_jax.solvers.base import Problem, Solver

REDUCTIONS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class OptaxSolver(Solver):
    """Minimises F = E + beta C over the state with an optax optimizer (Adam, SGD, ...).

        g = d/ds sum_b F_b   (reduction="sum": every example moves as if alone)
        g = d/ds mean_b F_b  (reduction="mean": each example's step shrinks as 1/B -- seed 004's
                              nudged phase, kept selectable for its parity)
        updates, opt_state = transform.update(g, opt_state, s);  s <- s + updates

    Seed 004's nudged phase is ``OptaxSolver(optax.sgd(0.1), 20)``. The optimizer state is
    created at the start of every relaxation (warm starts share only the state).

    Attributes:
      transform: an ``optax.GradientTransformation`` (kept by identity: reuse one object so the
        jitted step compiles once).
      max_steps: steps (``tol=None``) or the cap.
      tol: tolerance on the update norm, or ``None``.
      reduction: ``"sum"`` or ``"mean"`` over the batch (see above).
      unroll: steps per rolled loop iteration (``solvers.base.iterate``; same numbers for every
        value; >= max_steps unrolls fully).
    """

    transform: optax.GradientTransformation
    max_steps: int = 20
    tol: Optional[float] = None
    reduction: str = "sum"
    unroll: int = 1

    def validate(self, energy) -> None:
        super().validate(energy)
        if not (callable(getattr(self.transform, "init", None))
                and callable(getattr(self.transform, "update", None))):
            raise ValueError(
                f"transform: expected an optax.GradientTransformation, received {self.transform!r}"
            )
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, received {self.reduction!r}")

    def init(self, problem: Problem, state):
        return self.transform.init(state)

    def step(self, problem: Problem, state, solver_state, *, in_box: bool = False):
        grads = problem.grad(state, in_box=in_box)
        if self.reduction == "mean":
            n = jnp.shape(problem.x)[0]
            grads = jax.tree.map(lambda g: g / jnp.asarray(n, g.dtype), grads)
        updates, solver_state = self.transform.update(grads, solver_state, state)
        return optax.apply_updates(state, updates), solver_state

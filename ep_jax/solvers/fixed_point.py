"""Fixed-point sweeps ``s_l <- rho_l(h_l)`` of layered energies (synchronous or even/odd).

The even/odd order is the asynchronous sweep of Scellier et al. 2023 (even layers from the old
state, then odd layers from the updated even ones), for dense and convolutional layers alike.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import apply_cost, cost_curvature
from ep_jax.solvers.base import Problem, Solver


@dataclasses.dataclass(frozen=True)
class FixedPoint(Solver):
    """Fixed-point sweeps ``s_l <- rho_l(h_l)``, h_l = -d(E_int + beta C)/d rho(s_l).

    For the hard sigmoid these fixed points are exactly the stationary points of F on the box
    [0, 1] (seed 000, Laborieux et al. 2021, Scellier et al. 2023). The nudged output layer is
    updated by minimising a quadratic majoriser of beta * C (curvature k = |beta| L, L the cost's
    curvature bound, ``costs.CURVATURE``):

        s_out <- rho( (h - beta dC/ds(s_out) + k s_out) / (1 + k) )

    which has the same fixed points as the plain ``rho(h - beta dC/ds)`` sweep but, unlike it,
    does not fall into period-2 cycles for beta >~ 0.2 (for the squared error it is the exact
    layer minimiser ``rho((h + 2 beta y) / (1 + 2 beta))``).

    Needs an energy with a fixed-point form: ``layer_field(params, state, x, l, drive, in_box)``
    and ``rho(l)`` over a tuple of layers (``Hopfield`` with the activity quadratic,
    ``ConvHopfield``: feature maps and dense layers alike; the last layer is the one the cost
    reads through ``energy.output``).

    Attributes:
      max_steps: sweeps to run (``tol=None``) or the cap (with ``tol``).
      tol: tolerance on the update norm, or ``None``.
      order: ``"synchronous"`` (all layers from the old state) or ``"asynchronous"``
        (even layers, then odd layers from the updated even ones; layer 0 is the input).
      cost_curvature: L above; ``None`` takes the cost's registered bound.
      unroll: sweeps per rolled loop iteration (``solvers.base.iterate``; same numbers for
        every value; >= max_steps unrolls fully, the fast form of short conv relaxations on CPU).
    """

    max_steps: int = 20
    tol: Optional[float] = None
    order: str = "synchronous"
    cost_curvature: Optional[float] = None
    unroll: int = 1

    def validate(self, energy) -> None:
        super().validate(energy)
        if self.order not in ("synchronous", "asynchronous"):
            raise ValueError(
                f"order: expected 'synchronous' or 'asynchronous', received {self.order!r}"
            )
        if not callable(getattr(energy, "layer_field", None)):
            raise ValueError(
                f"energy: FixedPoint needs a layered energy with a fixed-point form "
                f"(layer_field), received {type(energy).__name__}; use GradientDescent or OptaxSolver"
            )
        # An energy may declare that its sweeps s <- rho(h) are not its stationary points
        # (ConvHopfield with a smooth rho): refused rather than silently relaxing something else.
        reason = getattr(energy, "fixed_point_refusal", None)
        if reason:
            raise ValueError(f"energy: {reason}; use GradientDescent or OptaxSolver")

    def keeps_in_box(self, energy) -> bool:
        """After one sweep every state is rho(.) of a hard sigmoid: in [0, 1]."""
        return energy.identity_on_unit_box

    def update_layers(self, problem: Problem, state: tuple, layers, in_box: bool = False) -> tuple:
        """Sets each free layer in ``layers`` (1-based) to rho of its field, from ``state``."""
        energy, params, x = problem.energy, problem.params, problem.x
        new = list(state)
        n = len(state)
        for l in layers:
            h = energy.layer_field(params, state, x, l, drive=problem.drive, in_box=in_box)
            if l == n and problem.target is not None:
                out = state[-1]

                def cost_of(o):  # the cost reads energy.output (a map flattened, for ConvHopfield)
                    read = energy.output(state[:-1] + (o,))
                    return jnp.sum(apply_cost(problem.cost, read, problem.target, params))

                dcost = jax.grad(cost_of)(out)
                curv = self.cost_curvature
                if curv is None:
                    curv = cost_curvature(problem.cost)
                beta = jnp.asarray(problem.beta, h.dtype)
                k = jnp.abs(beta) * jnp.asarray(curv, h.dtype)
                h = (h - beta * dcost + k * out) / (1 + k)
            new[l - 1] = energy.rho(l)(h)
        return tuple(new)

    def step(self, problem: Problem, state, solver_state, *, in_box: bool = False):
        state, n = tuple(state), len(state)
        if self.order == "synchronous":
            return self.update_layers(problem, state, range(1, n + 1), in_box), solver_state
        state = self.update_layers(problem, state, range(2, n + 1, 2), in_box)
        # with in_box, the even layers just set are hard sigmoids of a field: still in [0, 1]
        return self.update_layers(problem, state, range(1, n + 1, 2), in_box), solver_state

    def layer_step(self, problem: Problem, state: tuple, l: int):
        """One sweep of free layer ``l`` (1-based) only, the other layers held."""
        return self.update_layers(problem, tuple(state), [l])[l - 1]

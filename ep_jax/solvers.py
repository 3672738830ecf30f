"""Relaxation solvers and the one entry point ``relax``.

``relax(energy, params, x, state0, target=..., beta=..., solver=...)`` minimises the total
energy F = E + beta * C over the free layers, with the input clamped. Everything is traced
once: the loop is a ``lax.fori_loop`` (fixed number of steps) or a ``lax.while_loop``
(tolerance stopping), with no host synchronisation inside, so ``relax`` jits, vmaps and nests
inside a training step. Solvers are small immutable objects (hashable, so they can be static
arguments of ``jax.jit``):

* ``GradientDescent(step_size, max_steps, tol, project)``:  s <- proj(s - eps * dF/ds)
* ``FixedPoint(max_steps, tol, order)``:  s_l <- rho_l(-d(E_int + beta C)/d rho(s_l)),
  all layers at once (``"synchronous"``) or even layers then odd layers (``"asynchronous"``,
  a block Gauss-Seidel sweep that respects the layered graph).

Stopping: with ``tol=None`` the solver runs exactly ``max_steps`` steps; with a tolerance it
stops at the first step whose update norm ``max_b ||s_{t+1} - s_t||_2`` (over all free layers of
example b, worst example of the batch) is ``<= tol``, or after ``max_steps``. Divergence is not
silent: a non-finite state ends the loop and is flagged in ``RelaxStats.nonfinite``;
``check_stats`` turns the flags into a Python exception on the host.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from ep_jax.activations import hard_sigmoid
from ep_jax.costs import Cost, as_dense_target, cost_curvature, squared_error, total_energy
from ep_jax.energies.base import LayeredEnergy, Params, State

PROJECTIONS = {None: None, "none": None, "clip01": hard_sigmoid}


class RelaxStats(NamedTuple):
    """What a relaxation did.

    Attributes:
      steps: number of solver steps taken (int32).
      residual: the last update norm ``max_b ||s_{t+1} - s_t||``.
      energy: mean over the batch of F = E + beta * C at the returned state.
      converged: ``residual <= tol`` and finite (``tol=None``: finite only).
      nonfinite: a NaN or Inf appeared in the state: the relaxation diverged.
    """

    steps: jax.Array
    residual: jax.Array
    energy: jax.Array
    converged: jax.Array
    nonfinite: jax.Array


class RelaxationError(RuntimeError):
    """A relaxation diverged (non-finite state) or missed its tolerance when required."""


class GradientDescent(NamedTuple):
    """Projected gradient descent on F: ``s <- proj(s - step_size * dF/ds)``.

    Attributes:
      step_size: epsilon (seeds 001/003 use 0.5).
      max_steps: steps to run (``tol=None``) or the cap (with ``tol``).
      tol: tolerance on the update norm; ``None`` runs a fixed number of steps.
      project: ``"clip01"`` keeps states in [0, 1] (seeds 001/003, where the projection is rho
        itself), or ``None``.
    """

    step_size: float = 0.5
    max_steps: int = 20
    tol: Optional[float] = None
    project: Optional[str] = None

    def validate(self, energy: LayeredEnergy) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size: expected > 0, received {self.step_size}")
        if self.project not in PROJECTIONS:
            raise ValueError(f"project: expected one of {list(PROJECTIONS)}, received {self.project!r}")

    def keeps_in_box(self, energy: LayeredEnergy) -> bool:
        """After one step every state lies in [0, 1], where rho is exactly the identity."""
        return self.project == "clip01" and energy.identity_on_unit_box

    def step(self, energy, params, x, state, target, beta, cost, *, drive=None, in_box=False):
        """One step. dF/ds = dE/ds (``energy.state_grad``: closed form or ``jax.grad``) plus
        beta dC/ds_L on the output; ``drive``: the shared ``energy.input_drive``; ``in_box``:
        every state is known to lie in [0, 1] (see ``relax``)."""
        grads = list(energy.state_grad(params, state, x, drive=drive, in_box=in_box))
        if target is not None:
            b = jnp.asarray(beta, x.dtype)
            grads[-1] = grads[-1] + jax.grad(lambda o: jnp.sum(b * cost(o, target)))(state[-1])
        eps = jnp.asarray(self.step_size, x.dtype)
        proj = PROJECTIONS[self.project]
        new = tuple(s - eps * g for s, g in zip(state, grads))
        return tuple(proj(s) for s in new) if proj is not None else new


class FixedPoint(NamedTuple):
    """Fixed-point sweeps ``s_l <- rho_l(h_l)``, h_l = -d(E_int + beta C)/d rho(s_l).

    For the hard sigmoid these fixed points are exactly the stationary points of F on the box
    [0, 1] (seed 000, Laborieux et al. 2021, Scellier et al. 2023). The nudged output layer is
    updated by minimising a quadratic majoriser of beta * C (curvature k = |beta| L, L the cost's
    curvature bound, ``costs.CURVATURE``):

        s_out <- rho( (h - beta dC/ds(s_out) + k s_out) / (1 + k) )

    which has the same fixed points as the plain ``rho(h - beta dC/ds)`` sweep but, unlike it,
    does not fall into period-2 cycles for beta >~ 0.2 (for the squared error it is the exact
    layer minimiser ``rho((h + 2 beta y) / (1 + 2 beta))``).

    Attributes:
      max_steps: sweeps to run (``tol=None``) or the cap (with ``tol``).
      tol: tolerance on the update norm, or ``None``.
      order: ``"synchronous"`` (all layers from the old state) or ``"asynchronous"``
        (even layers, then odd layers from the updated even ones; layer 0 is the input).
      cost_curvature: L above; ``None`` takes the cost's registered bound.
    """

    max_steps: int = 20
    tol: Optional[float] = None
    order: str = "synchronous"
    cost_curvature: Optional[float] = None

    def validate(self, energy: LayeredEnergy) -> None:
        if self.order not in ("synchronous", "asynchronous"):
            raise ValueError(
                f"order: expected 'synchronous' or 'asynchronous', received {self.order!r}"
            )

    def keeps_in_box(self, energy: LayeredEnergy) -> bool:
        """After one sweep every state is rho(.) of a hard sigmoid: in [0, 1]."""
        return energy.identity_on_unit_box

    def _update(self, energy, params, x, state, target, beta, cost, layers, drive=None,
                in_box=False):
        new = list(state)
        n = len(state)
        for l in layers:  # 1-based free-layer index
            h = energy.layer_field(params, state, x, l, drive=drive, in_box=in_box)
            if l == n and target is not None:
                out = state[-1]
                dcost = jax.grad(lambda o: jnp.sum(cost(o, target)))(out)
                curv = self.cost_curvature if self.cost_curvature is not None else cost_curvature(cost)
                beta_ = jnp.asarray(beta, h.dtype)
                k = jnp.abs(beta_) * jnp.asarray(curv, h.dtype)
                h = (h - beta_ * dcost + k * out) / (1 + k)
            new[l - 1] = energy.rho(l)(h)
        return tuple(new)

    def step(self, energy, params, x, state, target, beta, cost, *, drive=None, in_box=False):
        n = len(state)
        args = (energy, params, x)
        if self.order == "synchronous":
            return self._update(*args, state, target, beta, cost, range(1, n + 1), drive, in_box)
        state = self._update(*args, state, target, beta, cost, range(2, n + 1, 2), drive, in_box)
        # with in_box, the even layers just set are hard sigmoids of a field: still in [0, 1]
        return self._update(*args, state, target, beta, cost, range(1, n + 1, 2), drive, in_box)


Solver = Union[GradientDescent, FixedPoint]


def update_norm(new: State, old: State) -> jax.Array:
    """max_b ||new_b - old_b||_2 over all free layers: the residual every solver reports.

    One square root of the largest squared norm (sqrt is monotone: the same number as the
    largest of the per-example norms, without a square root per example).
    """
    sq = sum(jnp.sum((a - b) ** 2, axis=-1) for a, b in zip(new, old))
    return jnp.sqrt(jnp.max(sq))


def all_finite(state: State) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(s)) for s in state]))


def iterate(step, carry0, max_steps: int, tol: Optional[float] = None, *, first_step=None,
            state_of=lambda carry: carry):
    """The loop of every relaxation: ``carry <- step(carry)`` without host synchronisation.

    ``tol=None``: exactly ``max_steps`` steps (a ``fori_loop``; the update norm of the last step
    only). Otherwise a ``while_loop`` until the update norm ``max_b ||s_{t+1} - s_t||`` of
    ``state_of(carry)`` is ``<= tol``, a non-finite norm, or ``max_steps`` steps.
    ``first_step`` (if given) replaces ``step`` for step 1, which then runs outside the loop.

    Returns ``(carry, steps, residual, nonfinite, converged)``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1, received {max_steps}")
    dtype = jax.tree.leaves(state_of(carry0))[0].dtype
    if tol is None:
        carry, n_loop = carry0, max_steps - 1
        if first_step is not None:
            if n_loop == 0:
                step = first_step
            else:
                carry, n_loop = first_step(carry0), n_loop - 1
        carry = jax.lax.fori_loop(0, n_loop, lambda _, c: step(c), carry)
        last = step(carry)
        residual = update_norm(state_of(last), state_of(carry))
        nonfinite = ~all_finite(state_of(last))
        return last, jnp.asarray(max_steps, jnp.int32), residual, nonfinite, ~nonfinite

    tol = jnp.asarray(tol, dtype)

    def cond(c):
        _, i, res, bad = c
        return (i < max_steps) & (res > tol) & ~bad

    def body(c):
        carry, i, _, _ = c
        new = step(carry)
        res = update_norm(state_of(new), state_of(carry))
        return new, i + 1, res, ~jnp.isfinite(res)

    if first_step is not None:
        first = first_step(carry0)
        res0 = update_norm(state_of(first), state_of(carry0))
        init = (first, jnp.asarray(1, jnp.int32), res0, ~jnp.isfinite(res0))
    else:
        init = (carry0, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
    carry, steps, residual, nonfinite = jax.lax.while_loop(cond, body, init)
    nonfinite = nonfinite | ~all_finite(state_of(carry))
    return carry, steps, residual, nonfinite, (residual <= tol) & ~nonfinite


def relax(
    energy: LayeredEnergy,
    params: Params,
    x: jax.Array,
    state0: State,
    *,
    target: Optional[jax.Array] = None,
    beta: Union[float, jax.Array] = 0.0,
    cost: Cost = squared_error,
    solver: Solver = GradientDescent(),
    clamp_output: Optional[jax.Array] = None,
    drive: Optional[jax.Array] = None,
) -> tuple[State, RelaxStats]:
    """Relaxes the free layers to a minimum of F = E + beta * C(s_out, target).

    Args:
      energy: a layered energy (``ep_jax.energies``).
      params: its parameters.
      x: the clamped input, ``(batch, sizes[0])``.
      state0: initial free-layer states (zeros, feed-forward, or persistent particles).
      target: labels ``(batch,)`` or dense targets; ``None`` for the free phase.
      beta: nudging strength (may be a traced scalar; ignored when ``target`` is None).
      cost: the cost C.
      solver: ``GradientDescent`` or ``FixedPoint``.
      clamp_output: hold the output layer at this ``(batch, n_out)`` value and relax only the
        hidden layers (CHL's and coupled learning's clamped phases).
      drive: ``energy.input_drive(params, x)`` if the caller already has it (the EP rules share
        it between phases); ``None`` computes it here, once, outside the loop.

    How the loop is built (the same numbers as the plain iteration, up to float rounding):
    the clamped input's product is taken once, before the loop (``energy.input_drive``); the
    state gradient is the energy's closed form where it has one (``energy.state_grad``); and
    when the solver keeps states in [0, 1] where rho is exactly the identity (hard sigmoids
    with ``project="clip01"``, or fixed-point sweeps), the first step runs on its own and
    every later one skips rho and rho' (``in_box``), so the loop body holds only the two
    products per connection and one elementwise pass per layer.

    Returns:
      ``(state, stats)``: the relaxed state and ``RelaxStats``.
    """
    energy.check_inputs(params, state0, x)
    solver.validate(energy)
    if target is not None:
        target = as_dense_target(target, energy.sizes[-1], x.dtype)
        if target.shape[0] != x.shape[0]:
            raise ValueError(
                f"target: expected batch size {x.shape[0]} (as x), received {target.shape[0]}"
            )
    state0 = tuple(state0)
    dtype = x.dtype
    if clamp_output is not None:
        want = (x.shape[0], energy.sizes[-1])
        if jnp.shape(clamp_output) != want or jnp.result_type(clamp_output) != dtype:
            raise ValueError(
                f"clamp_output: expected shape {want} and dtype {dtype}, received "
                f"{jnp.shape(clamp_output)} {jnp.result_type(clamp_output)}"
            )
        state0 = state0[:-1] + (clamp_output,)

    if drive is None:
        drive = energy.input_drive(params, x)
    # After one step the states lie in [0, 1] (a held output layer may not).
    box = clamp_output is None and solver.keeps_in_box(energy)

    def step(s, in_box):
        new = solver.step(energy, params, x, s, target, beta, cost, drive=drive, in_box=in_box)
        return new if clamp_output is None else new[:-1] + (clamp_output,)

    # The first step (from any state0) runs outside the loop when the later ones can be in_box.
    state, steps, residual, nonfinite, converged = iterate(
        lambda s: step(s, box), state0, solver.max_steps, solver.tol,
        first_step=(lambda s: step(s, False)) if box else None,
    )
    f = jnp.mean(total_energy(energy, params, state, x, target, beta, cost))
    return state, RelaxStats(steps, residual, f, converged, nonfinite)


def check_stats(stats: RelaxStats, *, require_converged: bool = False, where: str = "relax") -> None:
    """Host-side check: raises ``RelaxationError`` if the relaxation diverged (or did not converge)."""
    if bool(jnp.any(stats.nonfinite)):
        raise RelaxationError(
            f"{where}: relaxation diverged (non-finite state after {int(jnp.max(stats.steps))} steps, "
            f"residual {float(jnp.max(stats.residual)):.3g}); lower the step size"
        )
    if require_converged and not bool(jnp.all(stats.converged)):
        raise RelaxationError(
            f"{where}: relaxation did not reach its tolerance in {int(jnp.max(stats.steps))} steps "
            f"(residual {float(jnp.max(stats.residual)):.3g})"
        )

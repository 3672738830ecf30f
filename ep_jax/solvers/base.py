"""The solver protocol, the relaxation problem, the step loop and its statistics.

A solver is a small immutable object (hashable: a static argument of ``jax.jit``) in the manner
of optimistix::

    init(problem, state) -> solver_state                      (e.g. an optax state; default ())
    step(problem, state, solver_state, in_box) -> (state, solver_state)
    terminate(residual) -> bool                               (default: residual <= tol)

with ``max_steps`` and ``tol`` attributes. ``relax`` (``ep_jax.solvers.relax``) hands it a
``Problem`` (energy, params, input, target, beta, cost) whose ``grad`` is dF/ds for
F = E + beta C. A new solver is one subclass in one file; nothing dispatches on solver types.

Stopping and reporting (``iterate``): with ``tol=None`` a solver runs exactly ``max_steps``
steps (a ``fori_loop``) and reports the last update norm ``max_b ||s_{t+1} - s_t||``;
``converged`` is then False, since no tolerance was checked. With a tolerance it runs a
``while_loop`` until ``terminate`` holds, a non-finite state, or ``max_steps``. ``unroll=k``
(a solver field) puts k steps in each rolled loop iteration: XLA's CPU backend runs the
convolutions of a rolled loop body several times slower than unrolled ones (docs/CONV_BENCH.md),
and the numbers and statistics are the same for every k (see ``iterate``). Divergence is
never silent: a non-finite state sets ``nonfinite``; an update norm that grew on each of the
last ``GROWTH_STEPS`` steps sets ``unbounded`` (F has no minimum the solver can reach, e.g. the
-beta phase of symmetric EP with beta > 1/2 on the state-quadratic energy and squared error).
Solvers that keep the states in a bounded set (``bounds_states``: a [0, 1] projection,
hard-sigmoid sweeps) cannot run away and skip that check, so their loop is the plain one.
``check_stats`` turns the flags into a Python exception on the host.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ep_jax.activations import hard_sigmoid
from ep_jax.costs import Cost, apply_cost
from ep_jax.energies.base import Energy, State, tree_sq_norm

PROJECTIONS = {None: None, "none": None, "clip01": hard_sigmoid}

# An update norm that grows by more than GROWTH_FACTOR on each of the last GROWTH_STEPS steps of
# a relaxation that did not converge flags it as unbounded.
GROWTH_STEPS = 3
GROWTH_FACTOR = 1.001


class RelaxStats(NamedTuple):
    """What a relaxation did.

    Attributes:
      steps: number of solver steps taken (int32).
      residual: the last update norm ``max_b ||s_{t+1} - s_t||`` (for ``Stationary``: the
        gradient norm ``max_b ||dF/ds||`` at the initial state).
      energy: mean over the batch of F = E + beta * C at the returned state.
      converged: a tolerance was met (``residual <= tol``) with a finite state; always False
        for a fixed number of steps (``tol=None``).
      nonfinite: a NaN or Inf appeared in the state: the relaxation diverged.
      unbounded: the update norm grew on each of the last steps without converging: F seems
        unbounded below along the trajectory (the states run away).
      converged_fraction: the fraction of examples whose own last update norm met the tolerance
        (0 for a fixed number of steps): convergence per example, not all-or-nothing.
    """

    steps: jax.Array
    residual: jax.Array
    energy: jax.Array
    converged: jax.Array
    nonfinite: jax.Array
    unbounded: jax.Array
    converged_fraction: jax.Array


class LoopResult(NamedTuple):
    """What ``iterate`` (and ``Solver.solve``) return; ``residuals``: per-example update norms."""

    carry: Any
    steps: jax.Array
    residual: jax.Array
    nonfinite: jax.Array
    converged: jax.Array
    unbounded: jax.Array
    converged_fraction: jax.Array


class RelaxationError(RuntimeError):
    """A relaxation diverged (non-finite state), ran away, or missed its tolerance when required."""


class Problem(NamedTuple):
    """One relaxation: minimise F(s) = E(params, s, x) + beta * C(output(s), target; params).

    ``target=None`` is the free phase (F = E); ``drive`` is ``energy.input_drive(params, x)``,
    computed once outside the loop.
    """

    energy: Energy
    params: Any
    x: jax.Array
    target: Optional[jax.Array]
    beta: Any
    cost: Cost
    drive: Any = None

    def total(self, state: State) -> jax.Array:
        """F per example, ``(batch,)``."""
        e = self.energy(self.params, state, self.x)
        if self.target is None:
            return e
        out = self.energy.output(state)
        return e + jnp.asarray(self.beta, e.dtype) * apply_cost(self.cost, out, self.target, self.params)

    def cost_grad(self, output: jax.Array) -> jax.Array:
        """beta dC/d output (of the batch sum); for a complex output (holomorphic EP, complex
        beta) the complex derivative."""
        b = jnp.asarray(self.beta, output.dtype)
        return jax.grad(lambda o: jnp.sum(b * apply_cost(self.cost, o, self.target, self.params)),
                        holomorphic=jnp.iscomplexobj(output))(output)

    def grad(self, state: State, *, in_box: bool = False) -> State:
        """dF/ds of the batch sum: ``energy.state_grad`` (closed form or autodiff) plus beta
        dC/d output on the output."""
        g = self.energy.state_grad(self.params, state, self.x, drive=self.drive, in_box=in_box)
        if self.target is None:
            return g
        out_g = self.energy.output(g) + self.cost_grad(self.energy.output(state))
        return self.energy.with_output(g, out_g)


class Solver(abc.ABC):
    """Base class of relaxation solvers (frozen dataclasses with ``max_steps`` and ``tol``)."""

    max_steps: int
    tol: Optional[float]
    # steps per rolled loop iteration (``iterate``); a subclass without the field runs 1
    unroll: int = 1

    def validate(self, energy: Energy) -> None:
        """Raises ``ValueError`` if the solver's settings or the energy do not fit."""
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"max_steps: expected an int >= 1, received {self.max_steps!r}")
        check_unroll(self.unroll)
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"tol: expected None or >= 0, received {self.tol!r}")

    def keeps_in_box(self, energy: Energy) -> bool:
        """True when after one step every state lies in [0, 1] where the energy's activations
        are exactly the identity, so later steps may run ``in_box``."""
        return False

    def bounds_states(self, energy: Energy) -> bool:
        """True when every step lands in a bounded set (no runaway to detect)."""
        return self.keeps_in_box(energy)

    def init(self, problem: Problem, state: State) -> Any:
        return ()

    @abc.abstractmethod
    def step(self, problem: Problem, state: State, solver_state: Any, *,
             in_box: bool = False) -> tuple[State, Any]:
        """One step from ``state``; returns the new state and solver state."""

    def terminate(self, residual: jax.Array) -> jax.Array:
        return residual <= jnp.asarray(self.tol, residual.dtype)

    def solve(self, problem: Problem, state0: State, *, hold=None, box: bool = False):
        """The loop: ``iterate`` over ``step``. ``hold(state)`` re-imposes a clamp after every
        step; ``box``: run the first step on its own and the later ones ``in_box``.

        Returns a ``LoopResult`` whose ``carry`` is the final state.
        """
        hold = hold or (lambda s: s)

        def step(carry, in_box):
            s, ss = self.step(problem, carry[0], carry[1], in_box=in_box)
            return hold(s), ss

        out = iterate(
            lambda c: step(c, box), (state0, self.init(problem, state0)), self.max_steps,
            self.tol, first_step=(lambda c: step(c, False)) if box else None,
            state_of=lambda c: c[0], terminate=self.terminate,
            detect_growth=not self.bounds_states(problem.energy), unroll=self.unroll,
        )
        return out._replace(carry=out.carry[0])

    def _replace(self, **changes):
        return dataclasses.replace(self, **changes)


def update_norm(new: State, old: State) -> jax.Array:
    """max_b ||new_b - old_b||_2 over every leaf of the state: the residual every solver reports.

    One square root of the largest squared norm (sqrt is monotone: the same number as the
    largest of the per-example norms, without a square root per example).
    """
    return jnp.sqrt(jnp.max(example_sq_norms(new, old)))


def example_sq_norms(new: State, old: State) -> jax.Array:
    """||new_b - old_b||^2 per example, ``(batch,)``."""
    return tree_sq_norm(jax.tree.map(jnp.subtract, new, old))


def all_finite(state: State) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(s)) for s in jax.tree.leaves(state)]))


def check_unroll(unroll) -> None:
    """Raises ``ValueError`` unless ``unroll`` is an int >= 1 (a bool is refused: say k)."""
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll: expected an int >= 1 (steps per rolled loop iteration; "
                         f">= max_steps unrolls fully), received {unroll!r}")


def _grew(new, old):
    return new > GROWTH_FACTOR * old


def iterate(step, carry0, max_steps: int, tol: Optional[float] = None, *, first_step=None,
            state_of=lambda carry: carry, terminate=None, detect_growth: bool = True,
            unroll: int = 1):
    """The loop of every relaxation: ``carry <- step(carry)`` without host synchronisation.

    ``tol=None``: exactly ``max_steps`` steps (a ``fori_loop``; with ``detect_growth`` the last
    ``GROWTH_STEPS`` steps run after it so their update norms can be compared, else only the
    last). Otherwise a ``while_loop`` until ``terminate(residual)`` (default ``residual <=
    tol``), a non-finite norm, or ``max_steps``. ``first_step`` (if given) replaces ``step`` for
    step 1, which then runs outside the loop.

    ``unroll=k``: k steps per rolled iteration. Fixed steps: ``fori_loop(..., unroll=k)``. With a
    tolerance each ``while_loop`` iteration runs k guarded steps: step j is applied only if the
    loop condition still holds before it (``carry <- where(cond(carry), body(carry), carry)``),
    so the steps taken, residuals, flags and states are those of ``unroll=1``; a block that
    stops early computes (and discards) at most k - 1 extra steps.

    Returns a ``LoopResult``.
    """
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps: expected an int >= 1, received {max_steps!r}")
    check_unroll(unroll)
    dtype = jnp.real(jax.tree.leaves(state_of(carry0))[0]).dtype
    if tol is None:
        carry, n_loop = carry0, max_steps
        norms = []
        if first_step is not None:
            carry, n_loop = first_step(carry0), n_loop - 1
            if detect_growth or n_loop == 0:
                norms.append(update_norm(state_of(carry), state_of(carry0)))
        tail = min(n_loop, GROWTH_STEPS if detect_growth else 1)
        if n_loop > tail:
            carry = jax.lax.fori_loop(0, n_loop - tail, lambda _, c: step(c), carry,
                                      unroll=min(unroll, n_loop - tail))
        for _ in range(tail):
            new = step(carry)
            norms.append(update_norm(state_of(new), state_of(carry)))
            carry = new
        nonfinite = ~all_finite(state_of(carry))
        unbounded = jnp.asarray(detect_growth and len(norms) >= GROWTH_STEPS)
        for a, b in zip(norms[-GROWTH_STEPS:], norms[-GROWTH_STEPS + 1:]):
            unbounded = unbounded & _grew(b, a)
        return LoopResult(carry, jnp.asarray(max_steps, jnp.int32), norms[-1], nonfinite,
                          jnp.asarray(False), unbounded & ~nonfinite, jnp.zeros((), dtype))

    terminate = terminate or (lambda r: r <= jnp.asarray(tol, r.dtype))

    # The carry holds every example's last update norm, so convergence is also per example.
    def cond(c):
        _, i, res_b, bad, _ = c
        return (i < max_steps) & ~terminate(jnp.max(res_b)) & ~bad

    def body(c):
        carry, i, res_old, _, growth = c
        new = step(carry)
        res_b = jnp.sqrt(example_sq_norms(state_of(new), state_of(carry)))
        res = jnp.max(res_b)
        growth = jnp.where(_grew(res, jnp.max(res_old)), growth + 1, 0)
        return new, i + 1, res_b, ~jnp.isfinite(res), growth

    def guarded(c):  # one step of unroll=1's loop, or nothing once that loop would have stopped
        go = cond(c)
        return jax.tree.map(lambda new, old: jnp.where(go, new, old), body(c), c)

    def block(c):  # cond(c) holds on entry: the first step needs no guard
        c = body(c)
        for _ in range(min(unroll, max_steps) - 1):
            c = guarded(c)
        return c

    zero = jnp.asarray(0, jnp.int32)
    batch = jnp.shape(jax.tree.leaves(state_of(carry0))[0])[0]
    if first_step is not None:
        first = first_step(carry0)
        res0 = jnp.sqrt(example_sq_norms(state_of(first), state_of(carry0)))
        init = (first, jnp.asarray(1, jnp.int32), res0, ~jnp.isfinite(jnp.max(res0)), zero)
    else:
        init = (carry0, zero, jnp.full((batch,), jnp.inf, dtype), jnp.asarray(False), zero)
    carry, steps, res_b, nonfinite, growth = jax.lax.while_loop(cond, block, init)
    residual = jnp.max(res_b)
    nonfinite = nonfinite | ~all_finite(state_of(carry))
    converged = terminate(residual) & ~nonfinite
    unbounded = (growth >= GROWTH_STEPS - 1) & ~converged & ~nonfinite & detect_growth
    fraction = jnp.mean(terminate(res_b).astype(dtype)) * (~nonfinite).astype(dtype)
    return LoopResult(carry, steps, residual, nonfinite, converged, unbounded, fraction)


def nonfinite_cause(x=None, params=None) -> str:
    """The likely cause of a non-finite relaxation, checked in order on the host: the input,
    the parameters, else the dynamics (a step size or beta too large for the energy)."""
    for name, tree in (("the input x", x), ("the parameters", params)):
        if tree is not None and not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(tree)):
            return f"{name} holds NaN or Inf"
    known = " and ".join(n for n, t in (("x", x), ("params", params)) if t is not None)
    dynamics = "a step size or beta too large for this energy (or an unbounded activation)"
    return (f"{known} are finite: {dynamics}" if known
            else f"non-finite inputs or parameters, or {dynamics}")


def check_stats(stats: RelaxStats, *, require_converged: bool = False, where: str = "relax",
                x=None, params=None) -> None:
    """Host-side check: raises ``RelaxationError`` if the relaxation diverged, ran away
    (``unbounded``), or (``require_converged``) did not meet its tolerance. Given ``x`` and
    ``params``, a divergence names its likely cause (``nonfinite_cause``)."""
    steps, res = int(jnp.max(stats.steps)), float(jnp.max(stats.residual))
    if bool(jnp.any(stats.nonfinite)):
        raise RelaxationError(
            f"{where}: relaxation diverged (non-finite state after {steps} steps, "
            f"residual {res:.3g}); likely cause: {nonfinite_cause(x, params)}"
        )
    if bool(jnp.any(stats.unbounded)):
        raise RelaxationError(
            f"{where}: relaxation is unbounded (the update norm grew on each of the last "
            f"{GROWTH_STEPS} of {steps} steps, residual {res:.3g}): F = E + beta C has no minimum "
            "the solver reaches; lower beta or the step size"
        )
    if require_converged and not bool(jnp.all(stats.converged)):
        fraction = float(jnp.min(stats.converged_fraction))
        raise RelaxationError(
            f"{where}: relaxation did not reach its tolerance in {steps} steps (residual "
            f"{res:.3g}; {100 * fraction:.1f}% of the examples did)"
        )

"""``relax``: the one entry point that minimises F = E + beta * C with a solver."""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

from ep_jax.costs import Cost, prepare_target, squared_error
from ep_jax.energies.base import Energy, Params, State
from ep_jax.solvers.base import Problem, RelaxStats, Solver
from ep_jax.solvers.gradient_descent import GradientDescent
from ep_jax.validate import check_finite


def relax(
    energy: Energy,
    params: Params,
    x: jax.Array,
    state0: State,
    *,
    target: Optional[jax.Array] = None,
    beta: Union[float, jax.Array] = 0.0,
    cost: Cost = squared_error,
    solver: Solver = GradientDescent(),
    clamp_output: Optional[jax.Array] = None,
    drive=None,
) -> tuple[State, RelaxStats]:
    """Relaxes the state to a minimum of F = E + beta * C(output(s), target; params).

    Everything is traced once: the loop is a ``lax.fori_loop`` (fixed number of steps) or a
    ``lax.while_loop`` (tolerance), with no host synchronisation inside, so ``relax`` jits,
    vmaps and nests inside a training step.

    Args:
      energy: any ``ep_jax.energies.Energy``.
      params: its parameters (and the cost's, for a cost with parameters).
      x: the clamped input, a batch.
      state0: the initial state (zeros, feed-forward, or persistent particles).
      target: labels ``(batch,)`` or dense targets; ``None`` for the free phase.
      beta: nudging strength (may be a traced scalar, so a sweep over beta compiles once;
        ignored when ``target`` is None).
      cost: the cost C.
      solver: any ``ep_jax.solvers.Solver``.
      clamp_output: hold the output at this value and relax the rest (CHL's and coupled
        learning's clamped phases).
      drive: ``energy.input_drive(params, x)`` if the caller already has it (the EP rules share
        it between phases); ``None`` computes it here, once, outside the loop.

    How the loop is built (the same numbers as the plain iteration, up to float rounding): the
    clamped input's product is taken once, before the loop (``energy.input_drive``); the state
    gradient is the energy's closed form where it has one (``energy.state_grad``); and when the
    solver keeps states in [0, 1] where rho is exactly the identity (hard sigmoids with
    ``project="clip01"``, or fixed-point sweeps), the first step runs on its own and every later
    one skips rho and rho' (``in_box``).

    Returns:
      ``(state, stats)``: the relaxed state and ``RelaxStats``.
    """
    state0 = energy.init_state(params, x, state0)
    energy.check_inputs(params, state0, x)
    check_finite(x, "x")
    solver.validate(energy)
    out0 = energy.output(state0)
    if target is not None:
        target = prepare_target(cost, target, out0)
        if jnp.shape(target)[0] != jnp.shape(x)[0]:
            raise ValueError(
                f"target: expected batch size {jnp.shape(x)[0]} (as x), received {jnp.shape(target)[0]}"
            )
    hold = None
    if clamp_output is not None:
        want = (jnp.shape(out0), jnp.result_type(out0))
        got = (jnp.shape(clamp_output), jnp.result_type(clamp_output))
        if got != want:
            raise ValueError(
                f"clamp_output: expected shape {want[0]} and dtype {want[1]}, received {got[0]} {got[1]}"
            )
        hold = lambda s: energy.with_output(s, clamp_output)  # noqa: E731
        state0 = hold(state0)
    if drive is None:
        drive = energy.input_drive(params, x)
    problem = Problem(energy, params, x, target, beta, cost, drive)
    # After one step the states lie in [0, 1] (a held output layer may not).
    box = clamp_output is None and solver.keeps_in_box(energy)
    out = solver.solve(problem, state0, hold=hold, box=box)
    f = jnp.mean(problem.total(out.carry))
    return out.carry, RelaxStats(out.steps, out.residual, f, out.converged, out.nonfinite,
                                 out.unbounded, out.converged_fraction)

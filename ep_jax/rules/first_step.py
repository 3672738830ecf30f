"""The first-step approximation: one nudge step from the free state instead of a nudged relaxation.

Free phase s^0 = argmin E. Instead of relaxing E + beta C, take ONE solver step per layer from
s^0, top-down: the output first,

    s_L^1 = step_L(s^0)        (GradientDescent: proj(s_L - eps dF/ds_L); at s^0 dE/ds_L = 0, so
                                this is the nudge -eps beta dC/ds_L),

then each hidden layer l = L-1, ..., 1 takes one step of F with the layers above already moved,

    s_l^1 = step_l(s_1^0, ..., s_l^0, s_{l+1}^1, ..., s_L^1),

which propagates the output's nudge down through the energy's state gradient (one sweep, L steps
in all). The update is EP's difference at that state: g = (dE/dtheta(s^1) - dE/dtheta(s^0)) / beta.

Seed 000's ``first_step_pos`` takes the output step on the pre-activation,
delta = rho(a - beta (rho(a) - y)) - rho(a), and adds ``layer_i^T delta`` to EVERY weight matrix,
which only has the right shape when all layers have the output's size and gives hidden weights the
output's error. Here every layer gets its own delta through the energy; the exact seed scheme is
``seed000-first-step``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import as_dense_target, total_energy
from ep_jax.energies.base import LayeredEnergy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, energy_grad_difference
from ep_jax.rules.ep import free_phase
from ep_jax.solvers import PROJECTIONS, FixedPoint, GradientDescent, RelaxStats, all_finite, update_norm


def _layer_step(solver, energy, params, x, state, y, beta, cost, l):
    """One solver step of free layer ``l`` (1-based) only, the other layers held."""
    if isinstance(solver, FixedPoint):
        return solver._update(energy, params, x, state, y, beta, cost, [l])[l - 1]
    if not isinstance(solver, GradientDescent):
        raise ValueError(f"phases.nudged: expected GradientDescent or FixedPoint, received {solver!r}")

    def f(s_l):
        s = state[: l - 1] + (s_l,) + state[l:]
        return jnp.sum(total_energy(energy, params, s, x, y, beta, cost))

    new = state[l - 1] - jnp.asarray(solver.step_size, x.dtype) * jax.grad(f)(state[l - 1])
    proj = PROJECTIONS[solver.project]
    return proj(new) if proj is not None else new


def first_step_gradient(
    energy: LayeredEnergy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """First-step estimate with beta = ``phases.beta``; the step is ``phases.nudged``'s."""
    del key
    if not phases.beta > 0:
        raise ValueError(f"beta: expected > 0, received {phases.beta}")
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    beta = jnp.asarray(phases.beta, x.dtype)
    y = as_dense_target(target, energy.sizes[-1], x.dtype)
    state = tuple(s0)
    for l in range(len(state), 0, -1):
        new = _layer_step(phases.nudged, energy, params, x, state, y, beta, phases.cost, l)
        state = state[: l - 1] + (new,) + state[l:]
    s1 = state
    grads = energy_grad_difference(energy, params, x, s1, s0, 1.0 / beta)
    finite = all_finite(s1)
    stats = RelaxStats(
        steps=jnp.asarray(len(s1), jnp.int32),
        residual=update_norm(s1, s0),
        energy=jnp.mean(total_energy(energy, params, s1, x, y, beta, phases.cost)),
        converged=finite,
        nonfinite=~finite,
    )
    return grads, RuleResult(s0, s1, s0, beta, free_stats, stats, stats)

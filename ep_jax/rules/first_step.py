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

from ep_jax.costs import prepare_target
from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, energy_grad_difference, free_phase
from ep_jax.solvers import Problem, RelaxStats, all_finite, update_norm


def first_step_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """First-step estimate with beta = ``phases.beta``; the step is ``phases.nudged``'s.

    Needs a layered (tuple) state and a solver with a per-layer step (``layer_step``:
    ``GradientDescent``, ``FixedPoint``).
    """
    del key
    if not phases.beta > 0:
        raise ValueError(f"beta: expected > 0, received {phases.beta}")
    layer_step = getattr(phases.nudged, "layer_step", None)
    if layer_step is None:
        raise ValueError(
            f"phases.nudged: the first-step rule needs a solver with a per-layer step "
            f"(layer_step: GradientDescent or FixedPoint), received {type(phases.nudged).__name__}"
        )
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    if not isinstance(s0, tuple):
        raise ValueError(
            f"energy: the first-step rule sweeps the layers of a tuple state, received a "
            f"{type(s0).__name__} state from {type(energy).__name__}"
        )
    beta = jnp.asarray(phases.beta, energy.param_dtype(params))
    y = prepare_target(phases.cost, target, energy.output(s0))
    problem = Problem(energy, params, x, y, beta, phases.cost)
    state = s0
    for l in range(len(state), 0, -1):
        state = state[: l - 1] + (layer_step(problem, state, l),) + state[l:]
    s1 = state
    grads = energy_grad_difference(energy, params, x, s1, s0, 1.0 / beta)
    finite = all_finite(s1)
    # One sweep, not a relaxation: no tolerance is checked, so never "converged".
    stats = RelaxStats(
        steps=jnp.asarray(len(s1), jnp.int32),
        residual=update_norm(s1, s0),
        energy=jnp.mean(problem.total(s1)),
        converged=jnp.asarray(False),
        nonfinite=~finite,
        unbounded=jnp.asarray(False),
        converged_fraction=jnp.zeros((), beta.dtype),
    )
    return grads, RuleResult(s0, s1, s0, beta, free_stats, stats, stats)

"""Predictive coding (Whittington & Bogacz 2017; Millidge et al. 2022; seed 002's energy).

For the ``conditional_gaussian`` energy E = sum_l ||u_{l+1} - mu_l||^2, mu_l = phi(u_l) W_l + b_l,
the free equilibrium is the feed-forward pass (E = 0, dE/dtheta = 0; start it from
``"feedforward"``). Learning is the local delta rule on the prediction errors
eps_l = u_{l+1} - mu_l at a target-driven state s*, i.e. descending

    g = dE/dtheta(s*) / scale,       dE/dW_l = -2 phi(u_l)^T eps_l / B,   dE/db_l = -2 mean_b eps_l

* ``pc``:       s* relaxes with the output clamped to the target y; scale = 1.
* ``pc-nudge``: s* relaxes E + beta C with the output free but nudged (seed 000's "PC-Nudge",
                done on the PC energy); scale = beta. For small beta this is EP at a free state
                where dE/dtheta = 0, so it tends to the exact gradient of the mean cost.

Seed 000's ``pcnudge_neg`` computes ``normalize(pred + (layer - pred))``: the prediction cancels
and its hidden layers never see their predictions (the exact seed scheme is ``seed000-pc-nudge``).
On energies whose dE/dtheta is not zero at the free state (Hopfield) these rules are not gradient
estimates; ``ep-jax gradcheck`` shows it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import prepare_target, squared_error
from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, clamped_phase, free_phase, nudged_phase


def _param_grad(energy, params, x, state, scale):
    g = jax.grad(lambda p: jnp.mean(energy(p, state, x)))(params)
    return jax.tree.map(lambda t: t / scale, g)


def pc_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "feedforward",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """Predictive coding with the output clamped to the target."""
    del key
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    y = prepare_target(squared_error, target, energy.output(s0))  # the clamp: a point in output space
    sc, clamped_stats = clamped_phase(energy, params, x, y, s0, phases)
    grads = _param_grad(energy, params, x, sc, jnp.asarray(1.0, x.dtype))
    return grads, RuleResult(s0, sc, s0, jnp.asarray(1.0, x.dtype), free_stats, clamped_stats,
                             clamped_stats)


def pc_nudge_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "feedforward",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """Predictive coding with a beta-nudged output (beta = ``phases.beta``)."""
    del key
    if not phases.beta > 0:
        raise ValueError(f"beta: expected > 0, received {phases.beta}")
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    beta = jnp.asarray(phases.beta, x.dtype)
    sb, nudged_stats = nudged_phase(energy, params, x, target, s0, beta, phases)
    grads = _param_grad(energy, params, x, sb, beta)
    return grads, RuleResult(s0, sb, s0, beta, free_stats, nudged_stats, nudged_stats)

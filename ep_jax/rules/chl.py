"""Contrastive Hebbian learning (Movellan 1991; Scellier et al. 2023).

Free phase s^0 = argmin E; clamped phase s^c = argmin E with the output held at the one-hot
target y (warm-started from s^0). The update descends

    g = dE/dtheta(s^c) - dE/dtheta(s^0)

(no 1/beta: the clamp is not a small perturbation). ``phases.beta`` is unused. CHL is not a
gradient of the cost in general; ``ep-jax gradcheck --rule chl`` reports how far it is.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.costs import as_dense_target
from ep_jax.energies.base import LayeredEnergy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, clamped_phase, energy_grad_difference
from ep_jax.rules.ep import free_phase


def chl_gradient(
    energy: LayeredEnergy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """CHL update: free phase, output clamped to ``target``, contrast of dE/dtheta."""
    del key
    s0, free_stats = free_phase(energy, params, x, energy.init_state(params, x, state0), phases)
    y = as_dense_target(target, energy.sizes[-1], x.dtype)
    sc, clamped_stats = clamped_phase(energy, params, x, y, s0, phases)
    grads = energy_grad_difference(energy, params, x, sc, s0, 1.0)
    one = jnp.asarray(1.0, x.dtype)
    return grads, RuleResult(s0, sc, s0, one, free_stats, clamped_stats, clamped_stats)

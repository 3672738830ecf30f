"""Contrastive Hebbian learning (Movellan 1991; Scellier et al. 2023).

Free phase s^0 = argmin E; clamped phase s^c = argmin E with the output held at the one-hot
target y (warm-started from s^0). The update descends

    g = dE/dtheta(s^c) - dE/dtheta(s^0)

(no 1/beta: the clamp is not a small perturbation). ``phases.beta`` is unused. CHL is not a
gradient of the cost in general; ``ep-jax gradcheck --rule chl`` reports how far it is.
It is coupled learning with eta = 1 (``rules.base.clamped_contrast``).
"""

from __future__ import annotations

from typing import Optional

import jax

from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, clamped_contrast


def chl_gradient(
    energy: Energy,
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
    return clamped_contrast(energy, params, x, target, state0, phases, 1.0)

"""Coupled learning (Stern et al. 2021; compared in Scellier et al. 2023).

Free phase s^0; the output is then clamped part of the way to the target,

    s_L^c = (1 - eta) s_L^0 + eta y,     eta = phases.beta in (0, 1],

the hidden layers relax with that output held (warm-started from s^0), and the update descends

    g = ( dE/dtheta(s^c) - dE/dtheta(s^0) ) / eta.

At eta = 1 this is CHL. For small eta it resembles EP with the squared error but is not its
limit (the output is moved, not nudged by a force the network can resist), so it is not the
gradient of the cost; ``ep-jax gradcheck --rule coupled`` reports the cosine.
"""

from __future__ import annotations

from typing import Optional

import jax

from ep_jax.energies.base import Energy, Params, StateInit
from ep_jax.rules.base import Phases, RuleResult, clamped_contrast


def coupled_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),
    key: Optional[jax.Array] = None,
) -> tuple[Params, RuleResult]:
    """Coupled-learning update with eta = ``phases.beta``."""
    del key
    if not 0 < phases.beta <= 1:
        raise ValueError(f"beta: expected eta in (0, 1] for coupled learning, received {phases.beta}")
    return clamped_contrast(energy, params, x, target, state0, phases, phases.beta)

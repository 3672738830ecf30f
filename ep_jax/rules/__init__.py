"""Learning rules and their registry.

A rule is ``rule(energy, params, x, target, state0, *, phases, key) -> (grads, RuleResult)``
over any energy (``ep_jax.energies.Energy``) and any solvers (``phases.free``, ``phases.nudged``).
Adding one: a file in this package and one line in ``RULES``.
"""

import functools

from ep_jax.rules.backprop import backprop_gradient
from ep_jax.rules.base import (
    Phases,
    RuleResult,
    clamped_phase,
    energy_grad_difference,
    free_phase,
    nudged_phase,
    total_energy_grad_difference,
)
from ep_jax.rules.bptt import bptt_gradient
from ep_jax.rules.chl import chl_gradient
from ep_jax.rules.coupled import coupled_gradient
from ep_jax.rules.ep import ep_gradient
from ep_jax.rules.first_step import first_step_gradient
from ep_jax.rules.holomorphic import holomorphic_gradient
from ep_jax.rules.pc import pc_gradient, pc_nudge_gradient
from ep_jax.rules.seed000 import SEED000_RULES

RULES = {
    "ep": functools.partial(ep_gradient, variant="one-sided"),
    "ep-random-sign": functools.partial(ep_gradient, variant="random-sign"),
    "ep-symmetric": functools.partial(ep_gradient, variant="symmetric"),
    "chl": chl_gradient,
    "coupled": coupled_gradient,
    "bptt": bptt_gradient,
    "first-step": first_step_gradient,
    "ep-holomorphic": holomorphic_gradient,  # options: points (N), schedule; beta = |beta|
    "pc": pc_gradient,
    "pc-nudge": pc_nudge_gradient,
    **SEED000_RULES,  # seed000-chl, seed000-ep, seed000-first-step, seed000-pc-nudge
}


def get_rule(name: str):
    """Returns the registered rule ``name`` (see ``RULES``)."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, received {name!r}") from None

__all__ = [
    "RULES", "Phases", "RuleResult", "backprop_gradient", "chl_gradient", "clamped_phase", "coupled_gradient",
    "energy_grad_difference", "ep_gradient", "first_step_gradient", "free_phase", "get_rule",
    "holomorphic_gradient",
    "nudged_phase", "pc_gradient", "pc_nudge_gradient", "total_energy_grad_difference",
]

"""The EP learner the training loop drives: one jit-able ``train_step`` and ``evaluate``.

A learner is a frozen dataclass with pure methods over a pytree state (so the loop can jit,
scan and checkpoint it without knowing what is inside)::

    init(key, n_train) -> state
    train_step(state, x, y, idx, key) -> (state, {"error", "energy", "cost", "steps", "residual"})
    evaluate(state, x, y) -> {"error", "energy", "cost", "steps", "residual", "converged"}

``ep_jax.backprop.BackpropLearner`` implements the same interface for the BP twins.

Persistent particles (Scellier's code, seeds 000/003): the free state of every training example
lives in ``EPState.particles`` (one ``(n_train, n_l)`` array per free layer, on device). A step
gathers the batch's particles by ``idx``, starts its free phase there and scatters the new free
state back, all inside the jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ep_jax.costs import Cost, as_dense_target
from ep_jax.energies.base import LayeredEnergy
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import Solver, relax


class EPState(NamedTuple):
    """``params``, optax state and the persistent particles (an empty tuple when not used)."""

    params: Any
    opt_state: Any
    particles: tuple


def _error(output: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(output, axis=-1) != y).astype(output.dtype))


@dataclasses.dataclass(frozen=True)
class EPLearner:
    """An energy-based net trained by an EP-family rule.

    Attributes:
      energy: the layered energy.
      rule: a rule name from ``ep_jax.rules.RULES``.
      phases: beta, the free and nudged solvers of training, and the cost.
      tx: the optax optimizer applied to the rule's gradient.
      eval_solver: the free-phase solver of evaluation (normally with a tolerance).
      persistent: use persistent particles in training.
      state_init: ``"zeros"`` or ``"feedforward"``: the start of evaluation (and of training
        without particles).
    """

    energy: LayeredEnergy
    rule: str
    phases: Phases
    tx: optax.GradientTransformation
    eval_solver: Solver
    persistent: bool = True
    state_init: str = "zeros"

    def __post_init__(self):
        get_rule(self.rule)  # fail early on unknown names

    @property
    def cost(self) -> Cost:
        return self.phases.cost

    def init(self, key: jax.Array, n_train: int, dtype=jnp.float32) -> EPState:
        params = self.energy.init_params(key, dtype)
        particles = ()
        if self.persistent:
            particles = tuple(jnp.zeros((n_train, n), dtype) for n in self.energy.sizes[1:])
        return EPState(params, self.tx.init(params), particles)

    def params(self, state: EPState):
        return state.params

    def train_step(self, state: EPState, x, y, idx, key):
        """One batch: free phase (from the particles), nudged phase(s), optax update."""
        if self.persistent:
            state0 = tuple(p[idx] for p in state.particles)
        else:
            state0 = self.state_init
        grads, res = get_rule(self.rule)(
            self.energy, state.params, x, y, state0, phases=self.phases, key=key
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        particles = state.particles
        if self.persistent:
            particles = tuple(p.at[idx].set(s) for p, s in zip(particles, res.free_state))
        out = res.free_state[-1]
        target = as_dense_target(y, self.energy.sizes[-1], x.dtype)
        metrics = {
            "error": _error(out, y),
            "energy": res.free_stats.energy,
            "cost": jnp.mean(self.cost(out, target)),
            "steps": res.free_stats.steps.astype(x.dtype),
            "residual": res.free_stats.residual,
        }
        return EPState(params, opt_state, particles), metrics

    def evaluate(self, state: EPState, x, y) -> dict:
        """Relaxes the free phase from ``state_init`` with ``eval_solver``; prediction = argmax."""
        params = state.params
        s0 = self.energy.init_state(params, x, self.state_init)
        s, stats = relax(self.energy, params, x, s0, solver=self.eval_solver, cost=self.cost)
        out = s[-1]
        target = as_dense_target(y, self.energy.sizes[-1], x.dtype)
        return {
            "error": _error(out, y),
            "energy": stats.energy,
            "cost": jnp.mean(self.cost(out, target)),
            "steps": stats.steps.astype(x.dtype),
            "residual": stats.residual,
            "converged": stats.converged.astype(x.dtype),
        }

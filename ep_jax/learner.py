"""One learner for every energy x rule x optimizer: a jit-able ``train_step`` and ``evaluate``.

The training loop drives any object with this interface (``Learner``; pure methods over a
pytree state, so the loop can jit, scan and checkpoint it without knowing what is inside)::

    init(key, n_train) -> state
    train_step(state, x, y, idx, key) -> (state, {"error", "cost", ...})
    evaluate(state, x, y) -> {"error", "cost", ...}
    params(state) -> params

``EPLearner`` is it for every energy-based model -- a layered Hopfield net with persistent
particles, the residual MLP (``Stationary`` free phase, ``OptaxSolver`` nudged phase, the ``ep``
rule, or the ``backprop`` rule for its BP twin), or an energy defined in a user's file. One step::

    x, y   <- preprocess.train(x, y, key)         (augment, standardise, control labels)
    state0 <- particles[idx] | state_init          (persistent particles: any state pytree)
    grads, result = rule(energy, params, x, y, state0, phases=phases, key=key)
    params <- optax(grads);  particles[idx] <- result.free_state

``ep_jax.backprop.BackpropLearner`` (the feed-forward MLP twin of a layered net) implements the
same protocol.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import optax

from ep_jax.costs import apply_cost, classification_error, logits, prepare_target
from ep_jax.distributed import LocalRows
from ep_jax.energies.base import Energy
from ep_jax.preprocess import Preprocess
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import Solver, relax


class Learner(Protocol):
    """What the training loop needs of a learner (see the module docstring)."""

    def init(self, key: jax.Array, n_train: int) -> Any: ...

    def train_step(self, state, x, y, idx, key) -> tuple[Any, dict]: ...

    def evaluate(self, state, x, y) -> dict: ...

    def params(self, state) -> Any: ...


class EPState(NamedTuple):
    """``params``, optax state and the persistent particles (an empty tuple when not used)."""

    params: Any
    opt_state: Any
    particles: Any


@dataclasses.dataclass(frozen=True)
class EPLearner:
    """An energy-based model trained by a rule from ``ep_jax.rules``.

    Attributes:
      energy: any ``ep_jax.energies.Energy``.
      rule: a rule name from ``ep_jax.rules.RULES``, or a rule function with the same signature
        (e.g. ``ep_jax.rules.backprop_gradient``, the BP twin of a feed-forward energy).
      phases: beta, the free and nudged solvers of training, the cost (and its readout).
      tx: the optax optimizer applied to the rule's gradient (``ep_jax.optim.make_optimizer``).
      eval_solver: the free-phase solver of evaluation (normally with a tolerance).
      persistent: keep each training example's free state between epochs (any state pytree).
      state_init: ``"zeros"`` or ``"feedforward"``: the start of evaluation (and of training
        without particles).
      preprocess: the on-device input pipeline (``None``: inputs as given).
      diagnostics_fn: ``f(params, x, y, key) -> report`` run at every evaluation (e.g. the
        credit report of ``ep_jax.credit``), or ``None``.
      rows: how the particles' rows are read and written (``take``/``put``):
        ``ep_jax.distributed.LocalRows`` (plain indexing), or ``ShardedRows`` (set by
        ``ep_jax.distributed.DataParallel``: each device indexes its own block of particles).
    """

    energy: Energy
    rule: Union[str, Callable]
    phases: Phases
    tx: optax.GradientTransformation
    eval_solver: Solver
    persistent: bool = True
    state_init: str = "zeros"
    preprocess: Optional[Preprocess] = None
    diagnostics_fn: Optional[Callable] = None
    rows: Any = LocalRows()

    def __post_init__(self):
        self.rule_fn  # fail early on unknown names
        if self.state_init not in ("zeros", "feedforward"):
            raise ValueError(
                f"state_init: expected 'zeros' or 'feedforward', received {self.state_init!r}"
            )

    @property
    def rule_fn(self) -> Callable:
        return self.rule if callable(self.rule) else get_rule(self.rule)

    @property
    def cost(self):
        return self.phases.cost

    def init(self, key: jax.Array, n_train: int, dtype=jnp.float32) -> EPState:
        params = self.energy.init_params(key, dtype)
        particles = ()
        if self.persistent:
            shapes = self.energy.state_shapes(n_train, dtype)
            particles = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return EPState(params, self.tx.init(params), particles)

    def params(self, state: EPState):
        return state.params

    def _metrics(self, params, out, y, stats) -> dict:
        dtype = self.energy.param_dtype(params)
        target = prepare_target(self.cost, y, out)
        return {
            "error": classification_error(logits(self.cost, out, params), y),
            "cost": jnp.mean(apply_cost(self.cost, out, target, params)),
            "energy": stats.energy,
            "steps": stats.steps.astype(dtype),
            "residual": stats.residual,
            "converged_fraction": stats.converged_fraction.astype(dtype),
        }

    def train_step(self, state: EPState, x, y, idx, key):
        """One batch: free phase (from the particles), nudged phase(s), optax update."""
        if self.preprocess is not None:
            x, y = self.preprocess.train(x, y, key)
        if self.persistent:
            state0 = jax.tree.map(lambda p: self.rows.take(p, idx), state.particles)
        else:
            state0 = self.state_init
        grads, res = self.rule_fn(
            self.energy, state.params, x, y, state0, phases=self.phases, key=key
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        particles = state.particles
        if self.persistent:
            particles = jax.tree.map(lambda p, s: self.rows.put(p, idx, s), particles,
                                     res.free_state)
        out = self.energy.output(res.free_state)
        metrics = self._metrics(state.params, out, y, res.free_stats)
        dtype = self.energy.param_dtype(state.params)
        metrics.update(
            nudged_steps=res.nudged_stats.steps.astype(dtype),
            nudged_residual=res.nudged_stats.residual,
            unbounded=(res.nudged_stats.unbounded | res.second_stats.unbounded
                       | res.free_stats.unbounded).astype(dtype),
        )
        return EPState(params, opt_state, particles), metrics

    def evaluate(self, state: EPState, x, y) -> dict:
        """Relaxes the free phase from ``state_init`` with ``eval_solver``; prediction = argmax."""
        params = state.params
        if self.preprocess is not None:
            x = self.preprocess.eval(x)
        s0 = self.energy.init_state(params, x, self.state_init)
        s, stats = relax(self.energy, params, x, s0, solver=self.eval_solver, cost=self.cost)
        metrics = self._metrics(params, self.energy.output(s), y, stats)
        dtype = self.energy.param_dtype(params)
        metrics["converged"] = stats.converged.astype(dtype)
        return metrics

    def diagnostics(self, state: EPState, x, y, key):
        """``diagnostics_fn`` on preprocessed (evaluation) inputs; ``None`` without one."""
        if self.diagnostics_fn is None:
            return None
        if self.preprocess is not None:
            x = self.preprocess.eval(x)
        return self.diagnostics_fn(state.params, x, y, key)

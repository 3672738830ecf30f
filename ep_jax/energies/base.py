"""The energy protocol: a per-example energy over any state pytree, plus optional fast paths.

An energy is a small immutable object (hashable, so it can be a static argument of ``jax.jit``)::

    E(params, state, x) -> (batch,)        per-example energies
    init_params(key, dtype) -> params      any pytree (Flax variables included)
    state_shapes(batch, dtype) -> pytree of jax.ShapeDtypeStruct, every leaf (batch, ...)
    init_state(params, x, how) -> state    "zeros" | "feedforward" | a given state (particles)
    output(state) -> array                 what the cost reads (the output layer)

Everything else has a default built on autodiff, which an energy may override with a closed form:
``state_grad`` (dE/ds), ``param_grad_difference`` (the learning rules' dE/dtheta contrast),
``input_drive`` (the loop-invariant part of a relaxation, hoisted out of the loop) and
``with_output`` (hold the output at a value: CHL's clamped phase). Adding an energy is one
subclass in one file; nothing in the solvers or rules dispatches on its type.
"""

from __future__ import annotations

import abc
from typing import Any, Union

import jax
import jax.numpy as jnp

State = Any  # a pytree whose leaves are (batch, ...) arrays
Params = Any  # any pytree of arrays
StateInit = Union[str, Any]  # "zeros" | "feedforward" | a state (persistent particles)

# Activations that extend to holomorphic functions of a complex state (the hard sigmoid and relu
# do not: they clip), as holomorphic EP's complex relaxations need (``Energy.holomorphic``).
HOLOMORPHIC_ACTIVATIONS = frozenset({"sigmoid", "tanh", "identity"})


def is_complex_tree(tree) -> bool:
    """True when any leaf of ``tree`` is complex (a holomorphic EP state)."""
    return any(jnp.iscomplexobj(v) for v in jax.tree.leaves(tree))


def batch_sum(a: jax.Array) -> jax.Array:
    """Sum over every axis but the first (the batch): a per-example reduction of any leaf."""
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def tree_sq_norm(tree) -> jax.Array:
    """Per-example squared norm ``sum_leaves sum_units |v|^2`` of a state-shaped pytree: (batch,)."""
    return sum(batch_sum(jnp.real(v * jnp.conj(v))) for v in jax.tree.leaves(tree))


class Energy(abc.ABC):
    """Base class of every energy. Subclasses are frozen dataclasses."""

    # ---- the protocol ------------------------------------------------------------------
    @abc.abstractmethod
    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        """Per-example energies, shape ``(batch,)``."""

    @abc.abstractmethod
    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Initial parameters."""

    @abc.abstractmethod
    def state_shapes(self, batch: int, dtype) -> State:
        """The state's structure: a pytree of ``jax.ShapeDtypeStruct`` with leading ``batch``."""

    def output(self, state: State) -> jax.Array:
        """The array the cost reads (default: the last leaf, e.g. the output layer)."""
        return jax.tree.leaves(state)[-1]

    def with_output(self, state: State, value: jax.Array) -> State:
        """``state`` with its output replaced by ``value`` (default: the last leaf)."""
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, leaves[:-1] + [value])

    # ---- checks --------------------------------------------------------------------------
    def check_params(self, params: Params) -> None:
        """Raises ``ValueError`` naming what is wrong with ``params`` (default: nothing checked)."""

    def param_dtype(self, params: Params):
        return jnp.result_type(jax.tree.leaves(params)[0])

    def check_x(self, params: Params, x: jax.Array) -> None:
        """Raises ``ValueError`` if ``x`` is not a batch of inputs in the params' dtype."""
        dtype = self.param_dtype(params)
        if jnp.ndim(x) < 1:
            raise ValueError(f"x: expected a batch of inputs (batch, ...), received shape {jnp.shape(x)}")
        if jnp.result_type(x) != dtype:
            raise ValueError(f"x: expected dtype {dtype} (the params' dtype), received {jnp.result_type(x)}")

    def check_inputs(self, params: Params, state: State | None, x: jax.Array) -> None:
        """Validates params, ``x`` and (if given) the state against ``state_shapes``."""
        self.check_params(params)
        self.check_x(params, x)
        if state is None:
            return
        want = self.state_shapes(jnp.shape(x)[0], self.param_dtype(params))
        want_leaves, want_def = jax.tree.flatten(want)
        leaves, got_def = jax.tree.flatten(state)
        if got_def != want_def:
            raise ValueError(f"state: expected the structure {want_def}, received {got_def}")
        for i, (s, w) in enumerate(zip(leaves, want_leaves)):
            if jnp.shape(s) != w.shape or jnp.result_type(s) != w.dtype:
                raise ValueError(
                    f"state leaf {i}: expected shape {w.shape} dtype {w.dtype}, received "
                    f"{jnp.shape(s)} {jnp.result_type(s)}"
                )

    # ---- initial states -----------------------------------------------------------------
    def zeros_state(self, x: jax.Array) -> State:
        shapes = self.state_shapes(jnp.shape(x)[0], jnp.result_type(x))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        raise NotImplementedError(f"{type(self).__name__} has no feed-forward initialisation")

    def init_state(self, params: Params, x: jax.Array, init: StateInit = "zeros") -> State:
        """Initial state: ``"zeros"``, ``"feedforward"``, or a given state (persistent particles)."""
        if isinstance(init, str):
            if init == "zeros":
                return self.zeros_state(x)
            if init == "feedforward":
                return self.feedforward_state(params, x)
            raise ValueError(f"init: expected 'zeros', 'feedforward' or a state, received {init!r}")
        return init

    # ---- fast paths (defaults: autodiff) ----------------------------------------------------
    @property
    def identity_on_unit_box(self) -> bool:
        """True when a state known to lie in [0, 1] may skip its activation exactly (see
        ``LayeredEnergy``); solvers then run their later steps ``in_box``."""
        return False

    @property
    def holomorphic(self) -> bool:
        """True when E(params, s, x) extends to a holomorphic function of complex states s, so
        holomorphic EP (``ep_jax.rules.holomorphic``) may relax it at complex beta (default
        False: an energy opts in; ``LayeredEnergy`` does when every free layer's activation is
        in ``HOLOMORPHIC_ACTIVATIONS``)."""
        return False

    def input_drive(self, params: Params, x: jax.Array):
        """The loop-invariant part of a relaxation that involves the clamped input, computed once
        per training step and shared by every phase (``None``: the energy has none)."""
        return None

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """dE/ds of the batch sum of E, shaped like ``state`` (default: ``jax.grad``).

        ``drive`` is ``input_drive(params, x)`` (energies that hoist it use it), ``in_box=True``
        promises every state lies in [0, 1] (used only when ``identity_on_unit_box``). For a
        complex state (holomorphic EP) it is the complex derivative dE/ds, not its conjugate.
        """
        holomorphic = is_complex_tree(state)
        return jax.grad(lambda s: jnp.sum(self(params, s, x)), holomorphic=holomorphic)(state)

    def param_grad_difference(self, params: Params, x: jax.Array, state_a: State, state_b: State,
                              scale) -> Params:
        """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)), each averaged over the batch.

        One backward pass through mean_b E(theta, s_a) - E(theta, s_b); energies linear in theta
        override it with a closed form that shares products.
        """
        def diff(p):
            return jnp.mean(self(p, state_a, x) - self(p, state_b, x))

        if is_complex_tree((state_a, state_b)):
            # Complex states (holomorphic EP): the complex derivative with respect to the real
            # theta, d Re / dtheta + i d Im / dtheta (complex grads; the rule takes a real part).
            re = jax.grad(lambda p: jnp.real(diff(p)))(params)
            im = jax.grad(lambda p: jnp.imag(diff(p)))(params)
            g = jax.tree.map(lambda a, b: a + 1j * b, re, im)
        else:
            g = jax.grad(diff)(params)
        scale = jnp.asarray(scale, self.param_dtype(params))
        return jax.tree.map(lambda t: scale * t, g)

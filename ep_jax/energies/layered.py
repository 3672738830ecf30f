"""Layered energies (an ``Energy`` with a tuple of dense free layers): sizes, parameters, checks.

A layered network has an input layer ``x`` of size ``sizes[0]`` (always clamped) and free
layers of sizes ``sizes[1:]``; the last free layer is the output. A *state* is the tuple of
free-layer arrays ``(s_1, ..., s_L)``, each of shape ``(batch, sizes[l])``. Parameters are one
dict per connection, named like Flax's ``Dense`` so optax labels and checkpoints read naturally::

    {"layer_0": {"kernel": (sizes[0], sizes[1]), "bias": (sizes[1],)}, ..., "layer_{L-1}": ...}

``kernel`` is laid out (fan_in, fan_out) as in seeds 001/003: the energy reads ``rho(s_l) @ W_l``.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from ep_jax.activations import Activation, get_activation
from ep_jax.energies.base import HOLOMORPHIC_ACTIVATIONS, Energy

State = tuple  # tuple[Float[Array, "batch n_l"], ...], one entry per free layer
Params = dict  # {"layer_l": {"kernel": (n_l, n_{l+1}), "bias": (n_{l+1},)}}
StateInit = Union[str, State]  # "zeros" | "feedforward" | a state (persistent particles)


def layer_name(l: int) -> str:
    return f"layer_{l}"


@dataclasses.dataclass(frozen=True)
class LayeredEnergy(Energy):
    """Base class: ``sizes`` and per-layer activation names; subclasses define ``__call__``.

    Attributes:
      sizes: layer sizes ``(n_input, n_hidden..., n_output)``, at least two entries.
      activation: one activation name for every layer, or one per layer (``len(sizes)``).
    """

    sizes: tuple[int, ...]
    activation: Union[str, tuple[str, ...]] = "hard_sigmoid"

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(n) for n in self.sizes))
        if len(self.sizes) < 2 or any(n <= 0 for n in self.sizes):
            raise ValueError(
                f"sizes: expected at least two positive layer sizes, received {self.sizes}"
            )
        acts = self.activation
        if isinstance(acts, str):
            acts = (acts,) * len(self.sizes)
        acts = tuple(acts)
        if len(acts) != len(self.sizes):
            raise ValueError(
                f"activation: expected one name or {len(self.sizes)} names (one per layer), "
                f"received {len(acts)}"
            )
        for a in acts:
            get_activation(a)  # fail early on unknown names
        object.__setattr__(self, "activation", acts)

    # ---- structure ---------------------------------------------------------------------
    @property
    def num_free_layers(self) -> int:
        return len(self.sizes) - 1

    def rho(self, l: int) -> Activation:
        """Activation of layer ``l`` (0 = input)."""
        return get_activation(self.activation[l])

    # ---- parameters --------------------------------------------------------------------
    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Glorot-uniform kernels, U(-sqrt(6/(fan_in+fan_out)), +...), and zero biases."""
        keys = jax.random.split(key, len(self.sizes) - 1)
        glorot = nn.initializers.xavier_uniform()
        return {
            layer_name(l): {
                "kernel": glorot(k, (n_in, n_out), dtype),
                "bias": jnp.zeros((n_out,), dtype),
            }
            for l, (k, n_in, n_out) in enumerate(zip(keys, self.sizes[:-1], self.sizes[1:]))
        }

    def check_params(self, params: Params) -> None:
        """Raises ``ValueError`` naming the layer, expected and received shapes."""
        if not isinstance(params, dict):
            raise ValueError(f"params: expected a dict of layers, received {type(params).__name__}")
        expected = [layer_name(l) for l in range(len(self.sizes) - 1)]
        if sorted(params) != sorted(expected):
            raise ValueError(f"params: expected layers {expected}, received {sorted(params)}")
        dtypes = set()
        for l, name in enumerate(expected):
            for leaf, shape in (
                ("kernel", (self.sizes[l], self.sizes[l + 1])),
                ("bias", (self.sizes[l + 1],)),
            ):
                if leaf not in params[name]:
                    raise ValueError(f"params[{name!r}]: missing {leaf!r}")
                got = jnp.shape(params[name][leaf])
                if got != shape:
                    raise ValueError(
                        f"params[{name!r}][{leaf!r}]: expected shape {shape}, received {got}"
                    )
                dtypes.add(jnp.result_type(params[name][leaf]))
        if len(dtypes) != 1:
            raise ValueError(f"params: expected one floating dtype, received {sorted(map(str, dtypes))}")

    def param_dtype(self, params: Params):
        return jnp.result_type(params[layer_name(0)]["kernel"])

    # ---- inputs and states -------------------------------------------------------------
    def check_inputs(self, params: Params, state: State | None, x: jax.Array) -> None:
        """Validates params, ``x`` of shape ``(batch, sizes[0])`` and the state's layers."""
        self.check_params(params)
        dtype = self.param_dtype(params)
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.sizes[0]:
            raise ValueError(
                f"x: expected shape (batch, {self.sizes[0]}), received {jnp.shape(x)}"
            )
        if jnp.result_type(x) != dtype:
            raise ValueError(f"x: expected dtype {dtype} (the params' dtype), received {jnp.result_type(x)}")
        if state is None:
            return
        batch = jnp.shape(x)[0]
        if not isinstance(state, (tuple, list)) or len(state) != self.num_free_layers:
            n = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(
                f"state: expected a tuple of {self.num_free_layers} layer arrays, received {n}"
            )
        for l, s in enumerate(state, start=1):
            if jnp.shape(s) != (batch, self.sizes[l]):
                raise ValueError(
                    f"state[{l - 1}] (layer {l}): expected shape {(batch, self.sizes[l])}, "
                    f"received {jnp.shape(s)}"
                )
            if jnp.result_type(s) != dtype:
                raise ValueError(
                    f"state[{l - 1}] (layer {l}): expected dtype {dtype}, received {jnp.result_type(s)}"
                )

    def state_shapes(self, batch: int, dtype) -> State:
        return tuple(jax.ShapeDtypeStruct((batch, n), dtype) for n in self.sizes[1:])

    def init_state(self, params: Params, x: jax.Array, init: StateInit = "zeros") -> State:
        """As ``Energy.init_state``; a given state (a list or tuple of layers) becomes a tuple."""
        return super().init_state(params, x, init) if isinstance(init, str) else tuple(init)

    # ---- relaxation support ------------------------------------------------------------
    @property
    def identity_on_unit_box(self) -> bool:
        """True when every free layer's rho is the hard sigmoid: on [0, 1] it is the identity
        with derivative 1, so a state known to lie in [0, 1] (after a ``clip01`` projection or
        a fixed-point sweep) can skip rho and its derivative exactly, with the same numbers."""
        return all(a == "hard_sigmoid" for a in self.activation[1:])

    @property
    def holomorphic(self) -> bool:
        """True when every free layer's activation extends holomorphically (sigmoid, tanh,
        identity): E is then a polynomial in the states and their activations."""
        return all(a in HOLOMORPHIC_ACTIVATIONS for a in self.activation[1:])

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        return super().state_grad(params, tuple(state), x, drive=drive, in_box=in_box)

    # ---- fixed-point sweeps --------------------------------------------------------------
    def layer_field(
        self, params: Params, state: State, x: jax.Array, l: int, *, drive=None,
        in_box: bool = False,
    ) -> jax.Array:
        """-dE_int/d rho(s_l) for free layer ``l`` (1-based); only energies with a fixed-point form."""
        raise NotImplementedError(
            f"{type(self).__name__} has no fixed-point form; use the GradientDescent solver"
        )

"""The convolutional Hopfield energy (Laborieux et al. 2021; Scellier et al. 2023).

Free layers are feature maps ``s_l`` of shape ``(batch, H_l, W_l, C_l)`` (NHWC), one per conv
connection, followed by dense layers ``(batch, n)``; the input ``x`` ``(batch, H, W, C)`` is
clamped. With activities ``r_l = rho(s_l)`` (``r_0 = input_activation(x)``)::

    E(s) = 1/2 sum_{l>=1} ||r_l||^2
           - sum_{conv l}  < r_{l+1}, P_l( conv(W_l, r_l) + b_l ) >
           - sum_{dense l} < r_{l+1}, flat(r_l) W_l + b_l >

per example (box activations: see below), with ``conv`` the cross-correlation of
``jax.lax.conv_general_dilated`` (HWIO kernels, stride, symmetric zero padding), ``P_l`` a non-overlapping max-pool of window =
stride = ``pool`` (identity for ``pool=1``) and ``flat`` the NHWC flattening of a map. This is
the "activity" form of the layered ``Hopfield`` energy (the constant 1/2 ||r_0||^2 of the input
is left out); with the hard sigmoid and states in [0, 1] it equals Laborieux's
E = 1/2 sum ||s||^2 - Phi. Its fixed points s_l = rho(h_l), h_l = -dE_int/d r_l, are the
stationary points of E on the box, which is what ``FixedPoint`` iterates.

Box activations rho(s) = clip(a s, 0, 1) of slope a: the hard sigmoid (a = 1) and Laborieux's
``shifted_hard_sigmoid`` (1 + hardtanh(s - 1)) / 2 (a = 1/2). For them the state lives in the
box, r_l = clip(s_l, 0, 1), and the quadratic term is 1/(2a) ||r_l||^2 (Laborieux's primitive
function with his s <- rho(dPhi/ds) dynamics): the box-stationary points are then exactly
r_l = clip(a h_l) = rho(h_l), the fixed points of the sweeps. (The activity form
1/2 ||rho(s)||^2 - Phi(rho(s)) would make every activation of the same range the same network
up to a change of variable, and its sweeps s <- rho(h) would not be its stationary points for
a != 1.) Smooth activations keep the activity form above.

Max-pooling makes the coupling piecewise bilinear: within a region where every window's argmax
is fixed it is bilinear, and the implicit gradient / EP are exact there (random inputs have no
ties). The pool is written as a reshape + max, whose (sub)gradient routes to the argmax and
averages over exact ties (e.g. an all-zero state, where torch picks the first index); it is
differentiable to every order, which the dense Hessian of ``exact.implicit_gradient`` needs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ep_jax.activations import Activation, get_activation, hard_sigmoid
from ep_jax.energies.base import HOLOMORPHIC_ACTIVATIONS, Energy, batch_sum, is_complex_tree
from ep_jax.energies.layered import layer_name

State = tuple  # (s_1, ..., s_L): maps (batch, H_l, W_l, C_l), then dense layers (batch, n_l)
Params = dict  # {"layer_l": {"kernel", "bias"}} (+ "readout" with readout_classes)

READOUT = "readout"  # the key of the softmax readout's params (SoftmaxReadout(head="readout"))

# Box activations rho(s) = clip(a s, 0, 1) by name: their slope a (see the module docstring).
BOX_SLOPES = {"hard_sigmoid": 1.0, "shifted_hard_sigmoid": 0.5}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One conv connection into a feature-map layer.

    Attributes:
      channels: output channels C_out.
      kernel: square kernel size k (kernel shape ``(k, k, C_in, C_out)``).
      stride: convolution stride.
      padding: symmetric zero padding on each spatial side.
      pool: max-pool window = stride (1: no pooling); the map size is floor-divided by it.
    """

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1

    def __post_init__(self):
        for name, lo in (("channels", 1), ("kernel", 1), ("stride", 1), ("padding", 0), ("pool", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"ConvLayer.{name}: expected an int >= {lo}, received {v!r}")

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size after the conv, floor((H + 2p - k) / stride) + 1, then the pool (floor)."""
        conv = [(n + 2 * self.padding - self.kernel) // self.stride + 1 for n in (h, w)]
        return conv[0] // self.pool, conv[1] // self.pool


def _as_layer(spec) -> ConvLayer:
    if isinstance(spec, ConvLayer):
        return spec
    try:
        return ConvLayer(*(int(v) for v in spec))
    except TypeError:
        raise ValueError(
            f"conv: expected ConvLayer or (channels, kernel, stride, padding, pool) tuples, "
            f"received {spec!r}"
        ) from None


def conv_as_matmul(r: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The same cross-correlation as ``lax.conv_general_dilated`` (NHWC, HWIO) written as k*k
    strided slices and one product (im2col). Its autodiff transpose (the feedback of a sweep) is
    one product and k*k shifted adds, where XLA's CPU backend runs the transposed conv of an
    output map smaller than the kernel (the CIFAR-10 net's 4x4 -> 2x2 layer) on a slow path
    (~200x slower, measured in docs/CONV_BENCH.md)."""
    k, _, c_in, c_out = w.shape
    r = jnp.pad(r, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho, wo = (r.shape[1] - k) // stride + 1, (r.shape[2] - k) // stride + 1
    cols = [r[:, di:di + stride * (ho - 1) + 1:stride, dj:dj + stride * (wo - 1) + 1:stride, :]
            for di in range(k) for dj in range(k)]
    return jnp.einsum("byxpi,pio->byxo", jnp.stack(cols, axis=3), w.reshape(k * k, c_in, c_out))


def max_pool(a: jax.Array, p: int) -> jax.Array:
    """Non-overlapping max-pool of an NHWC map over p x p windows (window = stride = p); rows
    and columns past the last full window are dropped (floor division, as torch)."""
    if p == 1:
        return a
    b, h, w, c = a.shape
    ho, wo = h // p, w // p
    a = a[:, : ho * p, : wo * p, :].reshape(b, ho, p, wo, p, c)
    return jnp.max(a, axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class ConvHopfield(Energy):
    """Convolutional Hopfield energy; see the module docstring for the equation.

    Parameters (``init_params``): ``layer_l`` for l < len(conv) holds a conv ``kernel``
    ``(k, k, C_in, C_out)`` (HWIO) and ``bias`` ``(C_out,)``; the following ``layer_l`` hold dense
    ``kernel`` ``(n_in, n_out)`` and ``bias`` ``(n_out,)`` (Flax's Conv/Dense naming). They are
    initialised as in Laborieux et al. 2021 (PyTorch's default for Conv2d/Linear): kernel and
    bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k*k*C_in or n_in. With
    ``readout_classes > 0``, ``params["readout"]`` (``kernel (n_L, readout_classes)``, ``bias``)
    is the softmax readout of ``SoftmaxReadout(head="readout")``; the energy ignores it, the
    learning rules learn it through F = E + beta C(theta).

    Attributes:
      in_shape: ``(H, W, C)`` of one input; x is ``(batch, H, W, C)``.
      conv: the feature-map free layers, in order (at least one).
      dense: dense free layers after flattening the last map; ``()`` makes the (flattened)
        last map the output (e.g. under a softmax readout).
      activation: rho of the free layers (``hard_sigmoid``, ``shifted_hard_sigmoid``,
        ``sigmoid``, ...).
      input_activation: rho applied to x (Laborieux: ``identity``).
      readout_classes: classes of a softmax readout held in the params (0: none).
    """

    in_shape: tuple[int, int, int]
    conv: tuple[ConvLayer, ...]
    dense: tuple[int, ...] = (10,)
    activation: str = "hard_sigmoid"
    input_activation: str = "identity"
    readout_classes: int = 0

    def __post_init__(self):
        shape = tuple(self.in_shape)
        if len(shape) != 3 or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"in_shape: expected (H, W, C) positive ints, received {self.in_shape!r}")
        object.__setattr__(self, "in_shape", shape)
        object.__setattr__(self, "conv", tuple(_as_layer(c) for c in self.conv))
        if not self.conv:
            raise ValueError("conv: expected at least one ConvLayer (a net without maps is Hopfield)")
        dense = tuple(self.dense)
        if any(not isinstance(n, int) or n < 1 for n in dense):
            raise ValueError(f"dense: expected positive layer sizes, received {self.dense!r}")
        object.__setattr__(self, "dense", dense)
        get_activation(self.activation)
        get_activation(self.input_activation)
        if not isinstance(self.readout_classes, int) or self.readout_classes < 0:
            raise ValueError(f"readout_classes: expected an int >= 0, received {self.readout_classes!r}")
        h, w, c = shape
        for i, layer in enumerate(self.conv):
            if layer.kernel > h + 2 * layer.padding or layer.kernel > w + 2 * layer.padding:
                raise ValueError(
                    f"conv[{i}]: kernel {layer.kernel} exceeds the padded input {h}x{w} "
                    f"(padding {layer.padding})"
                )
            ho, wo = layer.out_hw(h, w)
            if ho < 1 or wo < 1:
                raise ValueError(
                    f"conv[{i}]: the map {h}x{w}x{c} becomes {ho}x{wo} after kernel {layer.kernel}, "
                    f"stride {layer.stride}, padding {layer.padding}, pool {layer.pool}: expected >= 1x1"
                )
            h, w, c = ho, wo, layer.channels

    # ---- structure ---------------------------------------------------------------------
    @property
    def map_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """``(H_l, W_l, C_l)`` of the input (first entry) and of each feature-map layer."""
        shapes = [self.in_shape]
        for layer in self.conv:
            h, w, _ = shapes[-1]
            shapes.append(layer.out_hw(h, w) + (layer.channels,))
        return tuple(shapes)

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-example shape of every free layer: maps, then dense layers."""
        return self.map_shapes[1:] + tuple((n,) for n in self.dense)

    @property
    def num_free_layers(self) -> int:
        return len(self.conv) + len(self.dense)

    @property
    def n_out(self) -> int:
        """Size of the (flattened) output layer."""
        return math.prod(self.layer_shapes[-1])

    def rho(self, l: int) -> Activation:
        """Activation of layer ``l`` (0 = input)."""
        return get_activation(self.input_activation if l == 0 else self.activation)

    def param_shapes(self) -> dict:
        """``{"layer_l": {"kernel": shape, "bias": shape}}`` (+ the readout's)."""
        shapes = {}
        maps = self.map_shapes
        for l, layer in enumerate(self.conv):
            k = layer.kernel
            shapes[layer_name(l)] = {"kernel": (k, k, maps[l][2], layer.channels),
                                     "bias": (layer.channels,)}
        n_in = math.prod(maps[-1])
        for j, n in enumerate(self.dense):
            shapes[layer_name(len(self.conv) + j)] = {"kernel": (n_in, n), "bias": (n,)}
            n_in = n
        if self.readout_classes:
            shapes[READOUT] = {"kernel": (n_in, self.readout_classes), "bias": (self.readout_classes,)}
        return shapes

    # ---- parameters and checks ---------------------------------------------------------
    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """PyTorch's default init (Laborieux et al. 2021): kernel, bias ~ U(+-1/sqrt(fan_in))."""
        shapes = self.param_shapes()
        keys = jax.random.split(key, len(shapes))
        params = {}
        for k, (name, s) in zip(keys, shapes.items()):
            fan_in = math.prod(s["kernel"][:-1])
            bound = 1.0 / math.sqrt(fan_in)
            kk, kb = jax.random.split(k)
            params[name] = {
                "kernel": jax.random.uniform(kk, s["kernel"], dtype, -bound, bound),
                "bias": jax.random.uniform(kb, s["bias"], dtype, -bound, bound),
            }
        return params

    def param_dtype(self, params: Params):
        return jnp.result_type(params[layer_name(0)]["kernel"])

    def check_params(self, params: Params) -> None:
        """Raises ``ValueError`` naming the layer, expected and received shapes."""
        if not isinstance(params, dict):
            raise ValueError(f"params: expected a dict of layers, received {type(params).__name__}")
        shapes = self.param_shapes()
        if sorted(params) != sorted(shapes):
            raise ValueError(f"params: expected layers {sorted(shapes)}, received {sorted(params)}")
        dtypes = set()
        for name, want in shapes.items():
            for leaf, shape in want.items():
                if not isinstance(params[name], dict) or leaf not in params[name]:
                    raise ValueError(f"params[{name!r}]: missing {leaf!r}")
                got = jnp.shape(params[name][leaf])
                if got != shape:
                    raise ValueError(f"params[{name!r}][{leaf!r}]: expected shape {shape}, received {got}")
                dtypes.add(jnp.result_type(params[name][leaf]))
        if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
            raise ValueError(f"params: expected one floating dtype, received {sorted(map(str, dtypes))}")

    def check_inputs(self, params: Params, state: State | None, x: jax.Array) -> None:
        """Validates params, ``x`` of shape ``(batch, H, W, C)`` and each free layer's shape."""
        self.check_params(params)
        dtype = self.param_dtype(params)
        if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != self.in_shape:
            raise ValueError(f"x: expected shape (batch, {', '.join(map(str, self.in_shape))}), "
                             f"received {jnp.shape(x)}")
        if jnp.result_type(x) != dtype:
            raise ValueError(f"x: expected dtype {dtype} (the params' dtype), received {jnp.result_type(x)}")
        if state is None:
            return
        if not isinstance(state, (tuple, list)) or len(state) != self.num_free_layers:
            n = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(f"state: expected a tuple of {self.num_free_layers} layer arrays, received {n}")
        batch = jnp.shape(x)[0]
        for l, (s, shape) in enumerate(zip(state, self.layer_shapes), start=1):
            if jnp.shape(s) != (batch,) + shape:
                raise ValueError(f"state[{l - 1}] (layer {l}): expected shape {(batch,) + shape}, "
                                 f"received {jnp.shape(s)}")
            if jnp.result_type(s) != dtype:
                raise ValueError(f"state[{l - 1}] (layer {l}): expected dtype {dtype}, "
                                 f"received {jnp.result_type(s)}")

    # ---- states ---------------------------------------------------------------------------
    def state_shapes(self, batch: int, dtype) -> State:
        return tuple(jax.ShapeDtypeStruct((batch,) + s, dtype) for s in self.layer_shapes)

    def init_state(self, params: Params, x: jax.Array, init="zeros") -> State:
        """As ``Energy.init_state``; a given state (a list or tuple of layers) becomes a tuple."""
        return super().init_state(params, x, init) if isinstance(init, str) else tuple(init)

    def output(self, state: State) -> jax.Array:
        """The last free layer, flattened to ``(batch, n)`` if it is a map."""
        s = state[-1]
        return s.reshape(s.shape[0], -1)

    def with_output(self, state: State, value: jax.Array) -> State:
        state = tuple(state)
        return state[:-1] + (jnp.reshape(value, jnp.shape(state[-1])),)

    # ---- the energy ----------------------------------------------------------------------
    def connect(self, params: Params, l: int, r: jax.Array) -> jax.Array:
        """Bottom-up input of connection ``l`` into layer l+1: P(conv(W_l, r) + b_l), or
        flat(r) W_l + b_l for a dense connection."""
        p = params[layer_name(l)]
        if l < len(self.conv):
            layer = self.conv[l]
            pad = layer.padding
            # lax's conv needs one dtype: complex activities (holomorphic EP) meet real kernels
            dtype = jnp.result_type(r, p["kernel"])
            r, w = r.astype(dtype), p["kernel"].astype(dtype)
            ho, wo = ((n + 2 * pad - layer.kernel) // layer.stride + 1 for n in r.shape[1:3])
            if ho < layer.kernel or wo < layer.kernel:  # see conv_as_matmul
                z = conv_as_matmul(r, w, layer.stride, pad)
            else:
                z = jax.lax.conv_general_dilated(
                    r, w, (layer.stride, layer.stride), ((pad, pad), (pad, pad)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
            return max_pool(z + p["bias"], layer.pool)
        return r.reshape(r.shape[0], -1) @ p["kernel"] + p["bias"]

    def input_drive(self, params: Params, x: jax.Array) -> jax.Array:
        """P(conv(W_0, rho_0(x)) + b_0): the clamped input's (loop-invariant) part of layer 1's
        field, computed once per training step and shared by the phases."""
        return self.connect(params, 0, self.rho(0)(x))

    def activities(self, state: State, in_box: bool = False) -> list[jax.Array]:
        """r_l of the free layers: clip(s_l, 0, 1) for box activations, else rho(s_l); with
        ``in_box`` (states known in [0, 1], box activations) the states themselves, which is
        exactly the same number."""
        if in_box and self.identity_on_unit_box:
            return list(state)
        act = hard_sigmoid if self.activation in BOX_SLOPES else self.rho(1)
        return [act(s) for s in state]

    def coupling(self, params: Params, r: list, drive: jax.Array) -> jax.Array:
        """Phi = sum_l <r_{l+1}, connect_l(r_l)> per example, with connect_0 = ``drive``."""
        phi = batch_sum(r[0] * drive)
        for l in range(1, len(r)):
            phi = phi + batch_sum(r[l] * self.connect(params, l, r[l - 1]))
        return phi

    def energy_from(self, params: Params, state: State, drive: jax.Array,
                    in_box: bool = False) -> jax.Array:
        """E per example with the input drive given (the relaxation's view of E)."""
        r = self.activities(tuple(state), in_box)
        half = 0.5 / BOX_SLOPES.get(self.activation, 1.0)  # 1/(2a); 1/2 for smooth activations
        return half * sum(batch_sum(a * a) for a in r) - self.coupling(params, r, drive)

    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        return self.energy_from(params, state, self.input_drive(params, x))

    # ---- relaxation support --------------------------------------------------------------
    @property
    def identity_on_unit_box(self) -> bool:
        """True for the box activations: r = clip(s, 0, 1) is exactly the identity (derivative
        1) on [0, 1], so solvers that keep states there (clip01, the sweeps) skip it."""
        return self.activation in BOX_SLOPES

    @property
    def fixed_point_refusal(self) -> str | None:
        """Why ``FixedPoint`` must not relax this energy (None: it may). The sweeps s <- rho(h)
        are the box-stationary points only for box activations; for a smooth rho the activity
        form's stationary points are rho(s) = h instead."""
        if self.activation in BOX_SLOPES:
            return None
        return (f"FixedPoint sweeps s <- rho(h) are the stationary points of ConvHopfield only for "
                f"{sorted(BOX_SLOPES)}, received activation {self.activation!r} (its stationary "
                f"points satisfy rho(s) = h)")

    @property
    def holomorphic(self) -> bool:
        """True when E extends to a holomorphic function of complex states (holomorphic EP): a
        holomorphic rho and no max-pool between free layers (a max has no complex extension;
        the first layer's pool acts on the real input only)."""
        return (self.activation in HOLOMORPHIC_ACTIVATIONS
                and all(layer.pool == 1 for layer in self.conv[1:]))

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """dE/ds by autodiff of ``energy_from`` with the hoisted drive (no input conv in the
        loop); ``in_box`` skips rho and rho' exactly (hard sigmoid, states in [0, 1]). For a
        complex state (holomorphic EP) the complex derivative dE/ds."""
        if drive is None:
            drive = self.input_drive(params, x)
        return jax.grad(lambda s: jnp.sum(self.energy_from(params, s, drive, in_box)),
                        holomorphic=is_complex_tree(state))(tuple(state))

    def layer_field(self, params: Params, state: State, x: jax.Array, l: int, *, drive=None,
                    in_box: bool = False) -> jax.Array:
        """h_l = -dE_int/d r_l = connect_{l-1}(r_{l-1}) + (d connect_l / d r_l)^T r_{l+1}.

        The input from below plus the feedback from above: the transposed conv (routed through
        the max-pool's argmax) of layer l+1, or r_{l+1} W_l^T unflattened; computed with the
        vjp of connection l only, so just this layer's field is evaluated.
        """
        r = self.activities(tuple(state), in_box)
        if l == 1:
            h = self.input_drive(params, x) if drive is None else drive
        else:
            h = self.connect(params, l - 1, r[l - 2])
        if l < len(r):
            _, back = jax.vjp(lambda a: self.connect(params, l, a), r[l - 1])
            h = h + back(r[l])[0]
        return h

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        """Bottom-up pass s_{l+1} = rho(connect_l(r_l)): a warm start, not an equilibrium."""
        s = self.rho(1)(self.input_drive(params, x))
        state = [s]
        for l in range(1, self.num_free_layers):
            s = self.rho(l + 1)(self.connect(params, l, self.activities((s,))[0]))
            state.append(s)
        return tuple(state)


def conv_hopfield(in_shape, conv, dense=(10,), activation="hard_sigmoid",
                  input_activation="identity", readout_classes=0) -> ConvHopfield:
    """A ``ConvHopfield``; ``conv`` layers may be ``ConvLayer``s or plain
    ``(channels, kernel, stride, padding, pool)`` tuples (trailing fields default).

    Works through ``make_energy("conv_hopfield", in_shape, conv=..., dense=...)``.
    """
    return ConvHopfield(
        in_shape=tuple(int(n) for n in in_shape), conv=tuple(_as_layer(c) for c in conv),
        dense=tuple(int(n) for n in dense), activation=activation,
        input_activation=input_activation, readout_classes=int(readout_classes),
    )


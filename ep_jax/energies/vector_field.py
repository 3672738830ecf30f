"""Vector-field EP: a layered net with separate forward and backward weights (no energy).

Scellier et al. 2018 ("Generalization of EP to vector field dynamics"); Laborieux et al. 2021
(section on asymmetric connections). Layer l (1..L) receives its input from below through the
forward weights W_{l-1} (``layer_{l-1}.kernel``, (n_{l-1}, n_l)) and from above through its own
backward weights B_l (``layer_l.feedback``, (n_{l+1}, n_l)); the dynamics are

    ds_l/dt = -mu_l(s),   mu_l(s) = s_l - rho'(s_l) h_l,   h_l = rho(s_{l-1}) W_{l-1} + b_{l-1} + rho(s_{l+1}) B_l

(s_0 = x clamped, no B_L). With B_l = W_l^T, mu = dE/ds of the state-quadratic Hopfield energy
(``restricted_hopfield``) and everything below is EP exactly; otherwise mu is not a gradient
and the solvers, which only call ``state_grad``, follow mu (``state_grad`` returns mu). The
nudged phase adds beta dC/ds_L as usual.

Learning (``update``), with r = rho(s), states a (nudged) and b (free, or -beta), batch means:

* ``"shared"`` (Laborieux et al. 2021's "same update for both weights"): the EP estimate of the
  coupling's gradient, applied to W_l and to B_l^T alike,
      dW_l = -(scale / B) (r^a_l^T r^a_{l+1} - r^b_l^T r^b_{l+1}),   dB_l = dW_l^T;
  W_l - B_l^T is then constant under plain SGD (and decays under weight decay): the weights
  align as they grow.
* ``"separate"`` (Scellier et al. 2018's local rule): each synapse changes with its own
  presynaptic activity times its postsynaptic change, presynaptic at the midpoint
  m = (r^a + r^b) / 2 and change D = r^a - r^b,
      dW_l = -(scale / B) m_l^T D_{l+1}    (pre l, post l+1),
      dB_l = -(scale / B) m_{l+1}^T D_l    (pre l+1, post l);
  the two add up to the shared update exactly (m_l^T D_{l+1} + (m_{l+1}^T D_l)^T =
  r^a_l^T r^a_{l+1} - r^b_l^T r^b_{l+1}), so with tied weights the pair is EP.

Biases: db_l = -(scale / B) sum_b D_{l+1} in both. ``weight_alignment`` measures the angle
between W_l and B_l^T. ``__call__`` is the energy of the symmetrised coupling (W_l + B_l^T)/2, a
Lyapunov function of the dynamics only when B_l = W_l^T: reported, never differentiated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from ep_jax.energies.layered import LayeredEnergy, Params, State, layer_name

UPDATES = ("shared", "separate")


@dataclasses.dataclass(frozen=True)
class AsymmetricHopfield(LayeredEnergy):
    """Layered net with forward kernels and backward ``feedback`` weights (module docstring).

    Attributes:
      sizes: ``(n_input, n_hidden..., n_output)``.
      activation: rho per layer (default the sigmoid).
      update: ``"shared"`` (the same EP update for W_l and B_l^T) or ``"separate"`` (each
        weight from its own pre- and postsynaptic activities).
    """

    activation: object = "sigmoid"
    update: str = "shared"

    def __post_init__(self):
        super().__post_init__()
        if self.update not in UPDATES:
            raise ValueError(f"update: expected one of {UPDATES}, received {self.update!r}")

    # ---- parameters ----------------------------------------------------------------------
    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Glorot-uniform kernels and (independent) feedback weights, zero biases."""
        k_fwd, k_back = jax.random.split(key)
        params = super().init_params(k_fwd, dtype)
        glorot = nn.initializers.xavier_uniform()
        keys = jax.random.split(k_back, max(len(self.sizes) - 2, 1))
        for l in range(1, len(self.sizes) - 1):
            params[layer_name(l)]["feedback"] = glorot(
                keys[l - 1], (self.sizes[l + 1], self.sizes[l]), dtype)
        return params

    def check_params(self, params: Params) -> None:
        """As ``LayeredEnergy``, plus ``feedback`` (n_{l+1}, n_l) in layers 1..L-1 only."""
        super().check_params(params)
        for l in range(len(self.sizes) - 1):
            p = params[layer_name(l)]
            if l == 0:
                if "feedback" in p:
                    raise ValueError(
                        "params['layer_0']: expected no 'feedback' (the input is clamped), received one")
                continue
            if "feedback" not in p:
                raise ValueError(f"params[{layer_name(l)!r}]: missing 'feedback'")
            want, got = (self.sizes[l + 1], self.sizes[l]), jnp.shape(p["feedback"])
            if got != want:
                raise ValueError(
                    f"params[{layer_name(l)!r}]['feedback']: expected shape {want}, received {got}")

    # ---- the (pseudo-)energy and the vector field -------------------------------------------
    def activities(self, state: State, x: jax.Array) -> list:
        layers = (x,) + tuple(state)
        return [self.rho(l)(s) for l, s in enumerate(layers)]

    def coupling(self, params: Params, l: int) -> jax.Array:
        """(W_l + B_l^T) / 2: the symmetric part of the connection between layers l and l+1."""
        p = params[layer_name(l)]
        return p["kernel"] if l == 0 else 0.5 * (p["kernel"] + p["feedback"].T)

    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        """1/2 sum_l ||s_l||^2 - sum_l (b_l . r_{l+1} + r_l^T (W_l + B_l^T)/2 r_{l+1}) (reported only)."""
        layers = (x,) + tuple(state)
        r = self.activities(state, x)
        e = 0.5 * sum(jnp.sum(s * s, axis=-1) for s in layers)
        for l in range(len(layers) - 1):
            p = params[layer_name(l)]
            e = e - r[l + 1] @ p["bias"] - jnp.sum((r[l] @ self.coupling(params, l)) * r[l + 1], axis=-1)
        return e

    def input_drive(self, params: Params, x: jax.Array) -> jax.Array:
        """rho_0(x) W_0 + b_0: layer 1's input from the clamped layer (loop-invariant)."""
        p = params[layer_name(0)]
        return self.rho(0)(x) @ p["kernel"] + p["bias"]

    def field(self, params: Params, r: list, drive: jax.Array, l: int) -> jax.Array:
        """h_l = rho(s_{l-1}) W_{l-1} + b_{l-1} + rho(s_{l+1}) B_l from the free activities ``r``."""
        if l == 1:
            h = drive
        else:
            below = params[layer_name(l - 1)]
            h = r[l - 2] @ below["kernel"] + below["bias"]
        if l < len(r):
            h = h + r[l] @ params[layer_name(l)]["feedback"]
        return h

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """The vector field mu_l = s_l - rho'(s_l) h_l (dE/ds when B_l = W_l^T)."""
        state = tuple(state)
        if drive is None:
            drive = self.input_drive(params, x)
        if in_box and self.identity_on_unit_box:
            r, backs = list(state), [None] * len(state)
        else:
            pairs = [jax.vjp(self.rho(l), s) for l, s in enumerate(state, start=1)]
            r, backs = [a for a, _ in pairs], [b for _, b in pairs]
        out = []
        for l, s in enumerate(state, start=1):
            h = self.field(params, r, drive, l)
            out.append(s - (h if backs[l - 1] is None else backs[l - 1](h)[0]))
        return tuple(out)

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        """Bottom-up pass s_{l+1} = rho(rho(s_l) W_l + b_l): a warm start."""
        state, s = [], x
        for l in range(len(self.sizes) - 1):
            p = params[layer_name(l)]
            s = self.rho(l + 1)(self.rho(l)(s) @ p["kernel"] + p["bias"])
            state.append(s)
        return tuple(state)

    # ---- learning ------------------------------------------------------------------------
    def param_grad_difference(self, params, x, state_a, state_b, scale):
        """The ``shared`` or ``separate`` update (module docstring), to descend."""
        ra, rb = self.activities(state_a, x), self.activities(state_b, x)
        c = -jnp.asarray(scale, x.dtype) / x.shape[0]
        grads = {}
        for l in range(len(ra) - 1):
            d_post = ra[l + 1] - rb[l + 1]
            g = {"bias": c * jnp.sum(d_post, axis=0)}
            if l == 0:  # the clamped input: r^a_0 = r^b_0, both variants agree
                g["kernel"] = c * (ra[0].T @ d_post)
            elif self.update == "shared":
                dw = ra[l].T @ ra[l + 1] - rb[l].T @ rb[l + 1]
                g["kernel"], g["feedback"] = c * dw, c * dw.T
            else:
                m_pre, m_post = 0.5 * (ra[l] + rb[l]), 0.5 * (ra[l + 1] + rb[l + 1])
                g["kernel"] = c * (m_pre.T @ d_post)
                g["feedback"] = c * (m_post.T @ (ra[l] - rb[l]))
            grads[layer_name(l)] = g
        return grads


def weight_alignment(params: Params) -> dict:
    """Angle in degrees between W_l and B_l^T for each layer with feedback weights
    (0: symmetric; about 90 for independent random matrices)."""
    angles = {}
    for name in sorted(params):
        p = params[name]
        if "feedback" not in p:
            continue
        w, bt = p["kernel"], p["feedback"].T
        cos = jnp.sum(w * bt) / (jnp.linalg.norm(w) * jnp.linalg.norm(bt))
        angles[name] = float(jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0))))
    return angles


def asymmetric_hopfield(sizes, activation="sigmoid", update="shared") -> AsymmetricHopfield:
    """Vector-field EP's net: forward kernels and separate feedback weights."""
    return AsymmetricHopfield(sizes=tuple(sizes), activation=activation, update=update)

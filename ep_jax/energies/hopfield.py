"""The layered Hopfield energy (Scellier & Bengio 2017; seeds 001, 002, 003).

One energy covers seed 001's ``hopfield`` and seed 002's ``RestrictedHopfield``; they differ
only in what the quadratic term sees (``quadratic="activity"``: 1/2 rho(s)^2, seed 001;
``quadratic="state"``: 1/2 s^2 on the raw states, seed 002)::

    E(s) = 1/2 sum_{l=0}^{L} ||q_l||^2 - sum_{l=0}^{L-1} ( b_l . rho(s_{l+1}) + rho(s_l)^T W_l rho(s_{l+1}) )

with q_l = rho_l(s_l) or s_l, s_0 = x the clamped input (its quadratic term is a constant kept so
the energy values equal the seeds'), per-layer activations rho_l. Seed 002 writes the coupling
as two symmetric halves 1/2 (r_pre W r_post + r_post W^T r_pre); that is the same number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ep_jax.energies.base import LayeredEnergy, Params, State, layer_name


@dataclasses.dataclass(frozen=True)
class Hopfield(LayeredEnergy):
    """Layered Hopfield energy; see the module docstring for the equation.

    Attributes:
      sizes: ``(n_input, n_hidden..., n_output)``.
      activation: ``rho`` per layer (default the hard sigmoid ``clip(s, 0, 1)``).
      quadratic: ``"activity"`` (1/2 rho(s)^2, seed 001) or ``"state"`` (1/2 s^2, seed 002).
    """

    quadratic: str = "activity"

    def __post_init__(self):
        super().__post_init__()
        if self.quadratic not in ("activity", "state"):
            raise ValueError(
                f"quadratic: expected 'activity' or 'state', received {self.quadratic!r}"
            )

    def activities(self, state: State, x: jax.Array) -> list[jax.Array]:
        layers = (x,) + tuple(state)
        return [self.rho(l)(s) for l, s in enumerate(layers)]

    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        layers = (x,) + tuple(state)
        r = self.activities(state, x)
        q = r if self.quadratic == "activity" else layers
        e = 0.5 * sum(jnp.sum(ql * ql, axis=-1) for ql in q)
        for l in range(len(layers) - 1):
            p = params[layer_name(l)]
            e = e - r[l + 1] @ p["bias"] - jnp.sum((r[l] @ p["kernel"]) * r[l + 1], axis=-1)
        return e

    def layer_field(self, params: Params, state: State, x: jax.Array, l: int) -> jax.Array:
        """h_l = W_{l-1}^T rho(s_{l-1}) + W_l rho(s_{l+1}) + b_{l-1} = -dE_int/d rho(s_l)."""
        if self.quadratic != "activity":
            return super().layer_field(params, state, x, l)
        layers = (x,) + tuple(state)
        below = params[layer_name(l - 1)]
        h = self.rho(l - 1)(layers[l - 1]) @ below["kernel"] + below["bias"]
        if l + 1 < len(layers):
            h = h + self.rho(l + 1)(layers[l + 1]) @ params[layer_name(l)]["kernel"].T
        return h

    def param_grad_difference(self, params, x, state_a, state_b, scale):
        """Closed form of scale * (dE/dtheta(s_a) - dE/dtheta(s_b)) (E is linear in theta):

            dW_l = -(scale / B) (r^a_l^T r^a_{l+1} - r^b_l^T r^b_{l+1}),   db_l = -(scale / B) sum_b (r^a_{l+1} - r^b_{l+1})

        and for the clamped input r^a_0 = r^b_0 = rho(x), so dW_0 = -(scale / B) rho(x)^T (r^a_1 - r^b_1)
        is a single product instead of two (the largest one in an EP step).
        """
        ra, rb = self.activities(state_a, x), self.activities(state_b, x)
        c = -jnp.asarray(scale, x.dtype) / x.shape[0]
        grads = {}
        for l in range(len(ra) - 1):
            d_post = ra[l + 1] - rb[l + 1]
            if l == 0:
                dw = ra[0].T @ d_post
            else:
                dw = ra[l].T @ ra[l + 1] - rb[l].T @ rb[l + 1]
            grads[layer_name(l)] = {"kernel": c * dw, "bias": c * jnp.sum(d_post, axis=0)}
        return grads

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        """Bottom-up pass s_{l+1} = rho(rho(s_l) W_l + b_l): a warm start, not an equilibrium."""
        state, s = [], x
        for l in range(len(self.sizes) - 1):
            p = params[layer_name(l)]
            s = self.rho(l + 1)(self.rho(l)(s) @ p["kernel"] + p["bias"])
            state.append(s)
        return tuple(state)


def hopfield(sizes, activation="hard_sigmoid", quadratic="activity") -> Hopfield:
    """Seed 001's energy: 1/2 rho(s)^2 with the hard sigmoid (states kept in [0, 1])."""
    return Hopfield(sizes=tuple(sizes), activation=activation, quadratic=quadratic)


def restricted_hopfield(sizes, activation="sigmoid") -> Hopfield:
    """Seed 002's ``RestrictedHopfield``: the same energy with 1/2 s^2 on the raw states."""
    return Hopfield(sizes=tuple(sizes), activation=activation, quadratic="state")

"""The conditional-Gaussian (predictive-coding) energy of seed 002.

    E(u) = sum_{l=0}^{L-1} || u_{l+1} - (phi_l(u_l) W_l + b_l) ||^2

(seed 002's ``mse_loss(reduction='none')`` summed over units: no factor 1/2). Its free
equilibrium is the feed-forward pass u_{l+1} = phi_l(u_l) W_l + b_l, where E = 0 exactly, so
``init_state(..., "feedforward")`` *is* the free phase.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ep_jax.energies.layered import LayeredEnergy, Params, State, layer_name


@dataclasses.dataclass(frozen=True)
class ConditionalGaussian(LayeredEnergy):
    """Sum of squared prediction errors; ``activation[l]`` is phi_l (the last one is unused)."""

    activation: tuple = "sigmoid"

    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        layers = (x,) + tuple(state)
        e = 0.0
        for l in range(len(layers) - 1):
            p = params[layer_name(l)]
            pred = self.rho(l)(layers[l]) @ p["kernel"] + p["bias"]
            e = e + jnp.sum((layers[l + 1] - pred) ** 2, axis=-1)
        return e

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        state, u = [], x
        for l in range(len(self.sizes) - 1):
            p = params[layer_name(l)]
            u = self.rho(l)(u) @ p["kernel"] + p["bias"]
            state.append(u)
        return tuple(state)


def conditional_gaussian(sizes, activation="sigmoid") -> ConditionalGaussian:
    return ConditionalGaussian(sizes=tuple(sizes), activation=activation)

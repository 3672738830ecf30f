"""Activation functions rho used by the layered energies, looked up by name.

The hard sigmoid ``rho(s) = clip(s, 0, 1)`` carries a custom derivative: ``jnp.clip``
differentiates to 1/2 at the bounds (``maximum``/``minimum`` split ties), so a unit that starts
at exactly 0 (zero initial states, the seeds' default) would feel only half its drive. PyTorch's
``clamp`` passes the full gradient on the closed interval [0, 1]; we do the same, which is what
makes the relaxation dynamics match seeds 000/001/003 step for step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


@jax.custom_jvp
def hard_sigmoid(s: jax.Array) -> jax.Array:
    """rho(s) = min(max(s, 0), 1), with rho'(s) = 1 on the closed interval [0, 1]."""
    return jnp.clip(s, 0, 1)


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    inside = (s >= 0) & (s <= 1)
    return hard_sigmoid(s), jnp.where(inside, ds, jnp.zeros_like(ds))


@jax.custom_jvp
def shifted_hard_sigmoid(s: jax.Array) -> jax.Array:
    """rho(s) = (1 + hardtanh(s - 1)) / 2 = clip(s / 2, 0, 1) (Laborieux et al. 2021's
    ``my_hard_sig``), with rho'(s) = 1/2 on the closed interval [0, 2] (as torch's hardtanh)."""
    return (1 + jnp.clip(s - 1, -1, 1)) / 2


@shifted_hard_sigmoid.defjvp
def _shifted_hard_sigmoid_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    inside = (s >= 0) & (s <= 2)
    return shifted_hard_sigmoid(s), jnp.where(inside, ds / 2, jnp.zeros_like(ds))


def identity(s: jax.Array) -> jax.Array:
    """rho(s) = s."""
    return s


ACTIVATIONS: dict[str, Activation] = {
    "hard_sigmoid": hard_sigmoid,
    "shifted_hard_sigmoid": shifted_hard_sigmoid,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": identity,
}


def get_activation(name: str) -> Activation:
    """Looks up an activation by name; raises ``ValueError`` listing the known names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation: expected one of {sorted(ACTIVATIONS)}, received {name!r}"
        ) from None

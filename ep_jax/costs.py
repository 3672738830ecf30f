"""Costs C(s_out, y) on the output layer and the total energy F = E + beta * C.

A cost maps the output-layer state ``(batch, n_out)`` and a target to per-example costs
``(batch,)``. Targets may be integer class labels ``(batch,)`` (one-hot encoded here) or
dense targets ``(batch, n_out)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Cost = Callable[[jax.Array, jax.Array], jax.Array]


def as_dense_target(target: jax.Array, n_out: int, dtype) -> jax.Array:
    """Integer labels -> one-hot rows; dense targets pass through (cast to ``dtype``)."""
    target = jnp.asarray(target)
    if jnp.issubdtype(target.dtype, jnp.integer):
        if target.ndim != 1:
            raise ValueError(
                f"target: expected integer labels of shape (batch,), received shape {target.shape}"
            )
        return jax.nn.one_hot(target, n_out, dtype=dtype)
    if target.ndim != 2 or target.shape[1] != n_out:
        raise ValueError(
            f"target: expected dense targets of shape (batch, {n_out}), received shape {target.shape}"
        )
    return target.astype(dtype)


def squared_error(output: jax.Array, target: jax.Array) -> jax.Array:
    """C = ||s_out - y||^2 summed over output units (seed 001; no factor 1/2)."""
    y = as_dense_target(target, output.shape[-1], output.dtype)
    return jnp.sum((output - y) ** 2, axis=-1)


def cross_entropy(output: jax.Array, target: jax.Array) -> jax.Array:
    """C = -sum_k y_k log softmax(s_out)_k, the output state read as logits."""
    y = as_dense_target(target, output.shape[-1], output.dtype)
    return -jnp.sum(y * jax.nn.log_softmax(output, axis=-1), axis=-1)


COSTS: dict[str, Cost] = {"squared_error": squared_error, "cross_entropy": cross_entropy}

# Upper bounds on the curvature of each cost in s_out (largest Hessian eigenvalue): 2 for
# ||s - y||^2, 1/2 for softmax cross-entropy. Fixed-point sweeps use them to majorise beta * C.
CURVATURE: dict[Cost, float] = {squared_error: 2.0, cross_entropy: 0.5}


def cost_curvature(cost: Cost) -> float:
    """The curvature bound of a registered cost, 0 for unknown costs (plain Jacobi update)."""
    return CURVATURE.get(cost, 0.0)


def get_cost(name_or_fn: str | Cost) -> Cost:
    """Returns a cost given its name (``squared_error``, ``cross_entropy``) or a callable."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return COSTS[name_or_fn]
    except KeyError:
        raise ValueError(f"cost: expected one of {sorted(COSTS)}, received {name_or_fn!r}") from None


def total_energy(energy, params, state, x, target=None, beta=0.0, cost: Cost = squared_error):
    """F(s) = E(s) + beta * C(s_out, y), per example, shape ``(batch,)``.

    With ``target=None`` the cost term is dropped (the free phase); ``beta`` may be a traced
    scalar so one compiled function serves the free and both nudged phases.
    """
    e = energy(params, state, x)
    if target is None:
        return e
    return e + jnp.asarray(beta, e.dtype) * cost(state[-1], target)

"""Costs C(s_out, y; theta) on the energy's output and the total energy F = E + beta * C.

A cost is a callable ``cost(output, target) -> (batch,)`` on the energy's output
(``energy.output(state)``); parameter-free costs (``squared_error``, ``cross_entropy``, any
two-argument function) take integer class labels ``(batch,)`` (one-hot encoded) or dense targets
``(batch, n_out)``. A cost with parameters (``SoftmaxReadout``: a linear readout inside the cost,
as seed 004's head or Laborieux et al. 2021's softmax readout) says so with ``has_params = True``
and is called ``cost(output, target, params)`` with the model's params (``apply_cost``); the
learning rules differentiate F, not E, so the readout is learnt without a special case.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from ep_jax.validate import check_finite, check_labels

Cost = Callable[..., jax.Array]  # cost(output, target[, params]) -> (batch,)


def as_dense_target(target: jax.Array, n_out: int, dtype) -> jax.Array:
    """Integer labels -> one-hot rows; dense targets pass through (cast to ``dtype``)."""
    target = jnp.asarray(target)
    if jnp.issubdtype(target.dtype, jnp.integer):
        if target.ndim != 1:
            raise ValueError(
                f"target: expected integer labels of shape (batch,), received shape {target.shape}"
            )
        # one_hot maps an out-of-range label to a zero row: a finite, wrong target.
        check_labels(target, n_out)
        return jax.nn.one_hot(target, n_out, dtype=dtype)
    if target.ndim != 2 or target.shape[1] != n_out:
        raise ValueError(
            f"target: expected dense targets of shape (batch, {n_out}), received shape {target.shape}"
        )
    check_finite(target, "target")
    return target.astype(dtype)


def squared_error(output: jax.Array, target: jax.Array) -> jax.Array:
    """C = ||s_out - y||^2 summed over output units (seed 001; no factor 1/2)."""
    y = as_dense_target(target, output.shape[-1], output.dtype)
    return jnp.sum((output - y) ** 2, axis=-1)


def cross_entropy(output: jax.Array, target: jax.Array) -> jax.Array:
    """C = -sum_k y_k log softmax(s_out)_k, the output state read as logits."""
    y = as_dense_target(target, output.shape[-1], output.dtype)
    return -jnp.sum(y * jax.nn.log_softmax(output, axis=-1), axis=-1)


@dataclasses.dataclass(frozen=True)
class SoftmaxReadout:
    """Softmax cross-entropy of a linear readout of the output: a cost with parameters.

        logits = norm(s_out) W + b,   C = -log softmax(logits)_y

    with ``norm`` an optional LayerNorm (``params[norm]``: ``scale``, ``bias``; seed 004's output
    LayerNorm) and ``W, b = params[head]["kernel"], params[head]["bias"]``. Targets are integer
    labels ``(batch,)``.

    Attributes:
      head: the key of the readout's Dense parameters in the model's params.
      norm: the key of a LayerNorm applied first, or ``None``.
      eps: the LayerNorm's epsilon (torch's default 1e-5).
    """

    head: str = "head"
    norm: Optional[str] = None
    eps: float = 1e-5
    has_params = True
    dense_target = False  # integer labels go to the cost as they are

    def logits(self, output: jax.Array, params) -> jax.Array:
        z = output
        if self.norm is not None:
            z = nn.LayerNorm(epsilon=self.eps).apply({"params": params[self.norm]}, z)
        p = params[self.head]
        return z @ p["kernel"] + p["bias"]

    def __call__(self, output: jax.Array, target: jax.Array, params) -> jax.Array:
        target = jnp.asarray(target)
        if target.ndim != 1 or not jnp.issubdtype(target.dtype, jnp.integer):
            raise ValueError(
                f"target: expected integer labels of shape (batch,), received {target.shape} "
                f"{target.dtype}"
            )
        check_labels(target, params[self.head]["kernel"].shape[-1])
        if jnp.iscomplexobj(output):
            # Holomorphic EP's complex states: log-softmax extends holomorphically (optax's
            # loss takes real logits only); LayerNorm does not (its variance reads |z|^2).
            if self.norm is not None:
                raise ValueError(
                    f"SoftmaxReadout: norm={self.norm!r} (a LayerNorm) is not holomorphic; "
                    "complex states need norm=None"
                )
            log_p = jax.nn.log_softmax(self.logits(output, params), axis=-1)
            return -jnp.take_along_axis(log_p, target[:, None], axis=-1)[:, 0]
        return optax.softmax_cross_entropy_with_integer_labels(self.logits(output, params), target)


def apply_cost(cost: Cost, output: jax.Array, target: jax.Array, params) -> jax.Array:
    """``cost(output, target)``, or ``cost(output, target, params)`` for a cost with parameters."""
    if getattr(cost, "has_params", False):
        return cost(output, target, params)
    return cost(output, target)


def logits(cost: Cost, output: jax.Array, params) -> jax.Array:
    """The class scores a cost reads off the output (the output itself for parameter-free costs)."""
    read = getattr(cost, "logits", None)
    return output if read is None else read(output, params)


def classification_error(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose argmax score is not the label."""
    return jnp.mean((jnp.argmax(scores, axis=-1) != labels).astype(scores.dtype))


def prepare_target(cost: Cost, target: jax.Array, output: jax.Array) -> jax.Array:
    """Targets as the cost takes them: dense ``(batch, n_out)`` rows for parameter-free costs
    (done once, outside relaxation loops), unchanged for costs that take labels."""
    if not getattr(cost, "dense_target", True):
        return jnp.asarray(target)
    return as_dense_target(target, output.shape[-1], output.dtype)


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
    """F(s) = E(s) + beta * C(output(s), y; theta), per example, shape ``(batch,)``.

    With ``target=None`` the cost term is dropped (the free phase); ``beta`` may be a traced
    scalar so one compiled function serves the free and both nudged phases.
    """
    e = energy(params, state, x)
    if target is None:
        return e
    return e + jnp.asarray(beta, e.dtype) * apply_cost(cost, energy.output(state), target, params)

"""Input checks that are never silent: eager when values are concrete, opt-in under ``jit``.

Shapes and dtypes are checked at trace time everywhere. *Values* (labels in range, finite
inputs) can only be checked when they are concrete: called eagerly, these functions raise a
``ValueError`` naming the argument, the expected and the received value. Inside a jitted function
they become ``checkify.debug_check``s, which cost nothing unless the caller opts in::

    err, out = checkify.checkify(jax.jit(learner.train_step), errors=checkify.user_checks)(...)
    err.throw()          # "target: expected labels in [0, 10), received 12"

(the training loop validates its data once, where it enters, instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_labels(labels, n_classes: int, name: str = "target") -> None:
    """Integer labels must lie in [0, n_classes)."""
    if _concrete(labels):
        a = np.asarray(labels)
        bad = (a < 0) | (a >= n_classes)
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(
                f"{name}: expected labels in [0, {n_classes}), received {int(a.ravel()[i])} at "
                f"index {i} ({int(bad.sum())} of {a.size} out of range)"
            )
        return
    checkify.debug_check(
        jnp.all((labels >= 0) & (labels < n_classes)),
        f"{name}: expected labels in [0, {n_classes}), received {{lo}} .. {{hi}}",
        lo=jnp.min(labels), hi=jnp.max(labels),
    )


def check_finite(a, name: str) -> None:
    """Every value of ``a`` (an array or a pytree of arrays) must be finite."""
    leaves = [v for v in jax.tree.leaves(a) if jnp.issubdtype(jnp.result_type(v), jnp.inexact)]
    if not leaves:
        return
    if all(_concrete(v) for v in leaves):
        for v in leaves:
            bad = ~np.isfinite(np.asarray(v))
            if bad.any():
                i = int(np.flatnonzero(bad.ravel())[0])
                raise ValueError(
                    f"{name}: expected finite values, received {np.asarray(v).ravel()[i]} at flat "
                    f"index {i} ({int(bad.sum())} of {bad.size} non-finite)"
                )
        return
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))
    checkify.debug_check(finite, f"{name}: expected finite values, received NaN or Inf")

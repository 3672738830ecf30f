"""Per-layer optimizers: the seeds' ``alphas`` (one learning rate per connection) via optax."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import optax

from ep_jax.energies.base import layer_name


def per_layer(make: Callable[[float], optax.GradientTransformation], rates: Sequence[float]):
    """``optax.multi_transform`` giving ``layer_l`` (kernel and bias) the optimizer ``make(rates[l])``.

    Example: ``per_layer(optax.sgd, [0.1, 0.05])`` is seed 001's W <- W - alpha_l dW.
    """
    rates = tuple(float(r) for r in rates)
    transforms = {layer_name(l): make(r) for l, r in enumerate(rates)}

    def labels(params):
        if sorted(params) != sorted(transforms):
            raise ValueError(
                f"rates: expected one learning rate per layer {sorted(params)}, "
                f"received {len(rates)} rates"
            )
        return {name: jax.tree.map(lambda _: name, sub) for name, sub in params.items()}

    return optax.multi_transform(transforms, labels)


def per_layer_sgd(rates: Sequence[float]) -> optax.GradientTransformation:
    """Plain SGD with one learning rate per layer (seeds 000, 001, 003)."""
    return per_layer(optax.sgd, rates)

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


OPTIMIZERS = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
    "adamw": optax.adamw,
}
SCHEDULES = ("constant", "cosine")


def make_optimizer(
    name: str,
    rates: Sequence[float],
    *,
    schedule: str = "constant",
    total_steps: int = 0,
    grad_clip: float | None = None,
) -> optax.GradientTransformation:
    """Per-layer ``name`` optimizer with rates ``rates[l]``, an optional schedule and clipping.

    ``schedule="cosine"`` decays every rate as eta_t = eta_l (1 + cos(pi t / T)) / 2 over
    ``T = total_steps``; ``grad_clip`` clips the whole update to that global norm first.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, received {name!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, received {schedule!r}")
    if schedule == "cosine" and total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1 with a cosine schedule, received {total_steps}")

    def make(rate):
        lr = optax.cosine_decay_schedule(rate, total_steps) if schedule == "cosine" else rate
        return OPTIMIZERS[name](lr)

    tx = per_layer(make, rates)
    if grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx

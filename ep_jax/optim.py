"""One optimizer factory: per-part learning rates, schedules, clipping and weight decay via optax.

Parameters are grouped into *parts* by their top-level key (``layer_l`` of a layered energy;
``embed``, ``block_l``, ``head`` of the residual MLP), optionally merged by ``groups`` (seed 004
trains the output LayerNorm with the head: ``groups={"out_ln": "head"}``). Each part gets its own
optimizer instance and rate (the seeds' per-layer ``alphas``; seed 004's per-part AdamW)::

    g <- g * min(1, grad_clip / ||g||)              (optional, over all parameters)
    g <- g + lambda theta                           (weight decay as an L2 term: sgd, momentum, adam)
    theta_part <- opt(g_part; eta_part(t))          eta(t) = eta (constant) or
                                                    eta (1 + cos(pi t / T)) / 2 (cosine, T steps)

Weight decay follows PyTorch: ``torch.optim.SGD(weight_decay=lambda)`` adds lambda theta to the
gradient before the momentum buffer (Laborieux et al. 2021's CIFAR-10 runs), as does ``Adam``;
``adamw`` decays decoupled from the gradient, theta <- theta - eta lambda theta.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import optax

from ep_jax.energies.layered import layer_name

OPTIMIZERS = {
    "sgd": lambda lr, wd: optax.sgd(lr),
    "momentum": lambda lr, wd: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr, wd: optax.adam(lr),
    "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
}
SCHEDULES = ("constant", "cosine")
Rates = Union[float, Sequence[float], Mapping[str, float]]


def per_part(make: Callable[[float], optax.GradientTransformation], rates: Mapping[str, float],
             groups: Optional[Mapping[str, str]] = None) -> optax.GradientTransformation:
    """``optax.multi_transform`` giving every top-level part ``k`` of the params the optimizer
    ``make(rates[groups.get(k, k)])``. Every part must have a rate; every rate a part."""
    groups = dict(groups or {})
    transforms = {name: make(float(r)) for name, r in rates.items()}

    def labels(params):
        got = {groups.get(k, k) for k in params}
        if got != set(transforms):
            raise ValueError(
                f"rates: expected one learning rate per layer (parameter part) {sorted(got)}, "
                f"received rates for {sorted(transforms)}"
            )
        return {k: jax.tree.map(lambda _, k=k: groups.get(k, k), sub) for k, sub in params.items()}

    return optax.multi_transform(transforms, labels)


def per_layer(make: Callable[[float], optax.GradientTransformation], rates: Sequence[float]):
    """``layer_l`` (kernel and bias) gets ``make(rates[l])``; e.g. ``per_layer(optax.sgd,
    [0.1, 0.05])`` is seed 001's W <- W - alpha_l dW."""
    return per_part(make, {layer_name(l): r for l, r in enumerate(rates)})


def per_layer_sgd(rates: Sequence[float]) -> optax.GradientTransformation:
    """Plain SGD with one learning rate per layer (seeds 000, 001, 003)."""
    return per_layer(optax.sgd, rates)


def make_optimizer(
    name: str,
    rates: Rates,
    *,
    schedule: str = "constant",
    total_steps: int = 0,
    grad_clip: Optional[float] = None,
    weight_decay: float = 0.0,
    groups: Optional[Mapping[str, str]] = None,
) -> optax.GradientTransformation:
    """The optimizer of every learner.

    Args:
      name: ``"sgd"``, ``"momentum"`` (0.9), ``"adam"`` or ``"adamw"``.
      rates: one rate per layer (a sequence: ``layer_l`` gets ``rates[l]``), one per part (a
        mapping, e.g. ``{"embed": 1e-3, "block_0": 1e-3, "head": 3e-3}``), or one for all.
      schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over ``total_steps``).
      grad_clip: clip the whole gradient to this global norm first (``None``: no clipping).
      weight_decay: lambda >= 0: AdamW's decoupled decay for ``adamw``; for the others an L2
        term lambda theta added to each part's gradient after clipping, before momentum or Adam's
        moments (PyTorch's ``weight_decay`` of SGD and Adam).
      groups: merges parts under one rate (``{"out_ln": "head"}``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, received {name!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, received {schedule!r}")
    if schedule == "cosine" and total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1 with a cosine schedule, received {total_steps}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
            weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a number >= 0, received {weight_decay!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip: expected None or > 0, received {grad_clip!r}")

    def make(rate):
        lr = optax.cosine_decay_schedule(rate, total_steps) if schedule == "cosine" else rate
        opt = OPTIMIZERS[name](lr, weight_decay)
        if weight_decay and name != "adamw":  # L2: lambda theta joins the gradient (torch's SGD)
            opt = optax.chain(optax.add_decayed_weights(weight_decay), opt)
        return opt

    if isinstance(rates, Mapping):
        tx = per_part(make, rates, groups)
    elif isinstance(rates, (int, float)):
        tx = make(float(rates))
    else:
        tx = per_layer(make, rates) if groups is None else per_part(
            make, {layer_name(l): r for l, r in enumerate(rates)}, groups)
    if grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx

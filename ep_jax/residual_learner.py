"""The residual-MLP learner of ``ep-jax train`` (``model="residual"``): residual EP or its BP twin.

Same interface as ``ep_jax.learner.EPLearner`` (``init``, ``train_step``, ``evaluate``,
``params``), plus ``diagnostics`` (the credit report of ``ep_jax.credit``, which the training
loop records at every evaluation). One step::

    x <- augment(x)   (random 32x32 crop of the 4-pixel zero-padded image + horizontal flip; opt.)
    x <- (x - mean) / std                                          (per channel, seed 004's)
    y <- uniform random labels                                     (--random-targets control)
    g  = residual_ep_gradient(params, x, y)   or   d(mean CE)/dtheta by backprop   ("bp")
    params <- clip + per-part AdamW (ep_jax.residual.residual_optimizer)

Prediction is the forward pass (= the free phase).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ep_jax.credit import credit_diagnostics
from ep_jax.residual import (
    ResidualEP,
    backprop_gradient,
    forward,
    init_residual_mlp,
    readout,
    residual_ep_gradient,
    residual_optimizer,
)

AUGMENTS = ("none", "crop_flip")


class ResidualState(NamedTuple):
    params: Any
    opt_state: Any


def crop_flip(x, key, image_shape: tuple, pad: int = 4):
    """torchvision's RandomCrop(H, padding=pad) + RandomHorizontalFlip() on flat HWC images."""
    B = x.shape[0]
    H, W, C = image_shape
    img = jnp.pad(x.reshape(B, H, W, C), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k_off, k_flip = jax.random.split(key)
    off = jax.random.randint(k_off, (B, 2), 0, 2 * pad + 1)
    crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (H, W, C)))(img, off)
    flip = jax.random.bernoulli(k_flip, 0.5, (B, 1, 1, 1))
    return jnp.where(flip, crop[:, :, ::-1], crop).reshape(B, H * W * C)


@dataclasses.dataclass(frozen=True)
class ResidualLearner:
    """A ``ResidualMLP`` trained by residual EP (``method="ep"``) or backprop (``"bp"``).

    Attributes:
      in_dim, d_hidden, n_classes, n_blocks: the model (``ep_jax.residual.ResidualMLP``).
      method: ``"ep"`` or ``"bp"``.
      ep: the residual-EP configuration (beta, inner optimizer, embedding gradient, scaling).
      learning_rate, weight_decay, schedule, total_steps, grad_clip: the AdamW optimizers.
      augment: ``"none"`` or ``"crop_flip"`` (needs ``image_shape`` (H, W, C)).
      image_shape: the shape of one flat input row.
      input_mean, input_std: per-channel standardisation constants (``None``: identity).
      random_targets: train on i.i.d. uniform random labels (seed 004's control run).
      credit_batch: examples used by ``diagnostics``.
    """

    in_dim: int
    d_hidden: int
    n_classes: int
    n_blocks: int
    method: str = "ep"
    ep: ResidualEP = ResidualEP()
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    total_steps: int = 0
    grad_clip: Optional[float] = 1.0
    augment: str = "none"
    image_shape: Optional[tuple] = None
    input_mean: Optional[tuple] = None
    input_std: Optional[tuple] = None
    random_targets: bool = False
    credit_batch: int = 128

    def __post_init__(self):
        if self.method not in ("ep", "bp"):
            raise ValueError(f"method: expected 'ep' or 'bp', received {self.method!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment: expected one of {AUGMENTS}, received {self.augment!r}")
        if self.augment == "crop_flip" and (self.image_shape is None or len(self.image_shape) != 3):
            raise ValueError(
                f"augment: 'crop_flip' needs (H, W, C) images, received image_shape {self.image_shape}"
            )
        self.ep.validate()

    @property
    def tx(self) -> optax.GradientTransformation:
        return residual_optimizer(
            self.n_blocks, self.learning_rate, weight_decay=self.weight_decay,
            schedule=self.schedule, total_steps=self.total_steps, grad_clip=self.grad_clip,
        )

    def init(self, key, n_train: int = 0, dtype=jnp.float32) -> ResidualState:
        params = init_residual_mlp(key, self.in_dim, self.d_hidden, self.n_classes, self.n_blocks,
                                   dtype)
        return ResidualState(params, self.tx.init(params))

    def params(self, state: ResidualState):
        return state.params

    def standardize(self, x):
        if self.input_mean is None:
            return x
        c = len(self.input_mean)
        mean = jnp.asarray(self.input_mean, x.dtype)
        std = jnp.asarray(self.input_std, x.dtype)
        return ((x.reshape(x.shape[0], -1, c) - mean) / std).reshape(x.shape)

    def train_step(self, state: ResidualState, x, y, idx, key):
        k_aug, k_y = jax.random.split(key)
        if self.augment == "crop_flip":
            x = crop_flip(x, k_aug, self.image_shape)
        x = self.standardize(x)
        if self.random_targets:
            y = jax.random.randint(k_y, y.shape, 0, self.n_classes, y.dtype)
        if self.method == "ep":
            grads, res = residual_ep_gradient(state.params, x, y, self.ep)
            logits = readout(state.params, res.free_state[-1])
            stats = res.nudged_stats
            extra = {"energy": stats.energy, "steps": stats.steps.astype(x.dtype),
                     "residual": stats.residual}
        else:
            grads = backprop_gradient(state.params, x, y)
            logits, _ = forward(state.params, x)
            extra = {}
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "error": jnp.mean((jnp.argmax(logits, -1) != y).astype(x.dtype)),
            "cost": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)),
            **extra,
        }
        return ResidualState(params, opt_state), metrics

    def evaluate(self, state: ResidualState, x, y) -> dict:
        logits, _ = forward(state.params, self.standardize(x))
        return {
            "error": jnp.mean((jnp.argmax(logits, -1) != y).astype(x.dtype)),
            "cost": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)),
        }

    def diagnostics(self, state: ResidualState, x, y, key):
        """``ep_jax.credit.credit_diagnostics`` on standardised inputs with this learner's EP."""
        return credit_diagnostics(state.params, self.standardize(x), y, key, self.ep)

"""On-device input pipeline of a training step: augmentation, standardisation, control labels.

    x <- crop_flip(x)        random H x W crop of the ``pad``-padded image + horizontal flip
    x <- (x - mean) / std    per channel (also at evaluation)
    x <- x.reshape(B, H, W, C)   images for convolutional energies (``to_images``; also at evaluation)
    y <- uniform labels      the random-targets control (seed 004)

All of it is a pure function of (x, y, key), jitted into the training step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

AUGMENTS = ("none", "crop_flip")


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
class Preprocess:
    """The input pipeline (hashable).

    Attributes:
      augment: ``"none"`` or ``"crop_flip"`` (needs ``image_shape`` (H, W, C)).
      image_shape: the shape of one flat input row.
      to_images: hand the model ``(batch, H, W, C)`` images instead of flat rows (needs
        ``image_shape`` (H, W, C)): the input of a convolutional energy.
      mean, std: per-channel standardisation constants (``None``: identity).
      random_targets: train on i.i.d. uniform labels in ``[0, n_classes)``.
      n_classes: needed by ``random_targets``.
    """

    augment: str = "none"
    image_shape: Optional[tuple] = None
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    random_targets: bool = False
    n_classes: int = 0
    to_images: bool = False

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment: expected one of {AUGMENTS}, received {self.augment!r}")
        if self.augment == "crop_flip" and (self.image_shape is None or len(self.image_shape) != 3):
            raise ValueError(
                f"augment: 'crop_flip' needs (H, W, C) images, received image_shape {self.image_shape}"
            )
        if self.to_images and (self.image_shape is None or len(self.image_shape) != 3):
            raise ValueError(
                f"to_images: needs (H, W, C) images, received image_shape {self.image_shape}"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean, std: expected both or neither, received {self.mean}, {self.std}")
        if self.random_targets and self.n_classes < 2:
            raise ValueError(f"n_classes: random targets need >= 2 classes, received {self.n_classes}")

    def standardize(self, x):
        if self.mean is None:
            return x
        c = len(self.mean)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return ((x.reshape(x.shape[0], -1, c) - mean) / std).reshape(x.shape)

    def train(self, x, y, key):
        """The training batch: augmented, standardised, labels replaced for the control."""
        k_aug, k_y = jax.random.split(key)
        if self.augment == "crop_flip":
            x = crop_flip(x, k_aug, self.image_shape)
        x = self._shape(self.standardize(x))
        if self.random_targets:
            y = jax.random.randint(k_y, y.shape, 0, self.n_classes, y.dtype)
        return x, y

    def eval(self, x):
        return self._shape(self.standardize(x))

    def _shape(self, x):
        if not self.to_images:
            return x
        if x.ndim != 2 or x.shape[1] != math.prod(self.image_shape):
            raise ValueError(
                f"x: expected flat rows of {math.prod(self.image_shape)} values (image_shape "
                f"{tuple(self.image_shape)}), received shape {x.shape}"
            )
        return x.reshape(x.shape[0], *self.image_shape)

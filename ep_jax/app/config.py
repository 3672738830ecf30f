"""Training runs as data: ``TrainConfig`` and the named presets of ``ep-jax train``.

A preset is a complete ``TrainConfig``; command-line overrides replace fields
(``dataclasses.replace``), and the resolved config is printed at the start of a run and saved as
``config.json`` in the run directory, so a run is reproducible from that file alone.

Every EP preset has a ``bp-`` twin: the same layer sizes, data split, batch size and epochs,
trained by backprop as a feed-forward MLP (``ep_jax.backprop``), so every EP number has its
baseline on the same split.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

LEARNERS = ("ep", "bp")
MODELS = ("layered", "residual")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
      preset: the preset this config came from (informational).
      description: one line saying what the preset reproduces.
      dataset: a name from ``ep_jax.data.DATASETS``.
      learner: ``"ep"`` (an energy-based net trained by a rule from ``ep_jax.rules``) or ``"bp"``.
      hidden: hidden layer sizes; input and output sizes come from the data.
      epochs, batch_size, seed: the usual; the last partial batch of an epoch is dropped.

      energy, activation: the EP energy (``ep_jax.energies``) and its per-layer activation.
      rule: the EP learning rule (``ep_jax.rules.RULES``).
      beta: nudging strength (the rule sets its sign).
      cost: ``"squared_error"`` or ``"cross_entropy"`` on the output layer.
      step_size: epsilon of the gradient-descent relaxation s <- clip(s - eps dF/ds, 0, 1).
      free_steps, nudged_steps: relaxation steps of the free and nudged phases in training.
      persistent: keep each training example's free state between epochs ("persistent
        particles") and start its next free phase there; otherwise start from ``state_init``.
      state_init: ``"zeros"`` or ``"feedforward"``: start of non-persistent and test relaxations.
      eval_max_steps, eval_tol: evaluation relaxes the free phase from ``state_init`` until the
        update norm is below ``eval_tol`` or ``eval_max_steps`` steps.
      alphas: EP learning rates, one per connection (the seeds' alphas).
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"`` (EP); the BP twin reads its
        own ``bp_*`` fields.
      schedule: ``"constant"`` or ``"cosine"`` decay of every rate over the run.
      grad_clip: clip the EP update to this global norm (``None``: no clipping).

      model: ``"layered"`` (an energy from ``ep_jax.energies`` relaxed by a solver) or
        ``"residual"`` (seed 004's feed-forward residual EP, ``ep_jax.residual``: ``hidden`` is
        ``(d,)``, the block width; ``nudged_steps`` and ``step_size`` are the inner optimizer's
        steps and rate; ``optimizer`` must be ``"adamw"``).
      n_blocks: residual blocks (``model="residual"``).
      learning_rate, weight_decay: the residual model's AdamW (EP); the BP twin reads ``bp_*``.
      inner_optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"`` on the states (residual nudged phase).
      embed_grad: ``"exact"`` or ``"seed004"`` (residual EP's embedding gradient).
      batch_scaling: ``"per-example"`` or ``"seed004"`` (see ``ep_jax.residual``).
      augment: ``"none"`` or ``"crop_flip"`` (random 4-pixel-padded crop + flip; images only).
      random_targets: train on i.i.d. random labels (seed 004's control run).
      credit_batch: test examples of the credit diagnostics (``ep_jax.credit``) recorded at every
        evaluation of a residual model (0: none).

      bp_activation, bp_optimizer, bp_learning_rate, bp_weight_decay, bp_schedule, bp_loss,
      bp_grad_clip, bp_dropout: the backprop twin's hyper-parameters (see ``ep_jax.backprop``).

      eval_every: evaluate on the test split every this many epochs (and always at the end).
      checkpoint_every: save an orbax checkpoint every this many epochs (0: never).
      log_every: host synchronisations per epoch for the progress bar (the jitted step scans
        over the batches between two of them).
    """

    preset: str = "custom"
    description: str = ""
    dataset: str = "digits"
    learner: str = "ep"
    hidden: tuple[int, ...] = (100,)
    epochs: int = 30
    batch_size: int = 20
    seed: int = 0

    energy: str = "hopfield"
    activation: str = "hard_sigmoid"
    rule: str = "ep-random-sign"
    beta: float = 0.5
    cost: str = "squared_error"
    step_size: float = 0.5
    free_steps: int = 20
    nudged_steps: int = 4
    persistent: bool = True
    state_init: str = "zeros"
    eval_max_steps: int = 100
    eval_tol: Optional[float] = 1e-4
    alphas: tuple[float, ...] = (0.1, 0.05)
    optimizer: str = "sgd"
    schedule: str = "constant"
    grad_clip: Optional[float] = None

    model: str = "layered"
    n_blocks: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    inner_optimizer: str = "sgd"
    embed_grad: str = "exact"
    batch_scaling: str = "per-example"
    augment: str = "none"
    random_targets: bool = False
    credit_batch: int = 128

    bp_activation: str = "relu"
    bp_optimizer: str = "adam"
    bp_learning_rate: float = 1e-3
    bp_weight_decay: float = 0.0
    bp_schedule: str = "constant"
    bp_loss: str = "cross_entropy"
    bp_grad_clip: Optional[float] = None
    bp_dropout: float = 0.0

    eval_every: int = 1
    checkpoint_every: int = 1
    log_every: int = 8

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(n) for n in self.hidden))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.learner not in LEARNERS:
            raise ValueError(f"learner: expected one of {LEARNERS}, received {self.learner!r}")
        for name in ("epochs", "batch_size", "free_steps", "nudged_steps", "eval_max_steps",
                     "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, received {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: expected >= 0, received {self.checkpoint_every}")
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, received {self.model!r}")
        if self.model == "residual":
            if len(self.hidden) != 1:
                raise ValueError(
                    f"hidden: expected one width (d,) for a residual model, received {self.hidden}"
                )
            if self.n_blocks < 1:
                raise ValueError(f"n_blocks: expected >= 1, received {self.n_blocks}")
            if self.learner == "ep" and self.optimizer != "adamw":
                raise ValueError(
                    f"optimizer: a residual model trains with 'adamw', received {self.optimizer!r}"
                )
        elif self.learner == "ep" and len(self.alphas) != len(self.hidden) + 1:
            raise ValueError(
                f"alphas: expected {len(self.hidden) + 1} learning rates (one per connection of a "
                f"net with hidden={self.hidden}), received {len(self.alphas)}"
            )
        if self.state_init not in ("zeros", "feedforward"):
            raise ValueError(
                f"state_init: expected 'zeros' or 'feedforward', received {self.state_init!r}"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**d)


def _twin(cfg: TrainConfig, **bp) -> TrainConfig:
    """The backprop twin of an EP preset: same data, sizes, batch size, epochs and seed."""
    return dataclasses.replace(
        cfg, preset="bp-" + cfg.preset, learner="bp",
        description="backprop twin of " + cfg.preset + (
            ": the same ResidualMLP trained by backprop" if cfg.model == "residual"
            else ": the same layer sizes as a feed-forward MLP"),
        **bp,
    )


# The BP twins' hyper-parameters were selected on a validation split carved out of the training
# set (benchmarks/tune_bp_mnist10k.py; results in benchmarks/results/bp_mnist10k_tuning.md).
_BP_MNIST = dict(bp_activation="relu", bp_optimizer="adam", bp_learning_rate=3e-3,
                 bp_weight_decay=0.0, bp_schedule="cosine", bp_loss="cross_entropy", bp_dropout=0.2)

_DIGITS = TrainConfig(
    preset="digits",
    description="scikit-learn's 8x8 digits (1437 train / 360 test), 64-100-10 Hopfield net, "
    "EP with random-sign beta and persistent particles",
    dataset="digits", hidden=(100,), epochs=30, batch_size=20,
    beta=0.5, free_steps=20, nudged_steps=4, alphas=(0.2, 0.1),
)

_XOR = TrainConfig(
    preset="xor",
    description="seed 000's XOR task (4 patterns, batch 4) on a 2-8-2 Hopfield net, symmetric EP",
    dataset="xor", hidden=(8,), epochs=300, batch_size=4, rule="ep-symmetric",
    beta=0.5, free_steps=40, nudged_steps=10, alphas=(0.5, 0.25), log_every=1,
    eval_every=50, checkpoint_every=100,
)

# Scellier & Bengio's rates (0.1, 0.05) were set for 50,000 images x 25 epochs; MNIST-10k gives
# 6.25x fewer updates. Doubled rates were selected on a validation split of the 8,000 training
# images (benchmarks/tune_ep_mnist10k.py: 2.50% vs 3.35% validation error).
_MNIST10K = TrainConfig(
    preset="mnist10k",
    description="Scellier & Bengio 2017, 1 hidden layer (784-500-10) on MNIST-10k "
    "(first 8000 of the official test set for training, last 2000 for testing); the paper's "
    "learning rates doubled (selected on validation) for the 6.25x smaller training set",
    dataset="mnist10k", hidden=(500,), epochs=25, batch_size=20,
    rule="ep-random-sign", beta=0.5, step_size=0.5, free_steps=20, nudged_steps=4,
    alphas=(0.2, 0.1), eval_max_steps=50, log_every=4,
)

# Scellier & Bengio 2017 (their train_model.py): on the official 60k/10k split via tfds.
_S1 = TrainConfig(
    preset="scellier2017-mnist-1h",
    description="Scellier & Bengio 2017, 784-500-10 on full MNIST (tensorflow-datasets)",
    dataset="mnist", hidden=(500,), epochs=25, batch_size=20, rule="ep-random-sign",
    beta=0.5, step_size=0.5, free_steps=20, nudged_steps=4, alphas=(0.1, 0.05), log_every=20,
)
_S2 = dataclasses.replace(
    _S1, preset="scellier2017-mnist-2h",
    description="Scellier & Bengio 2017, 784-500-500-10 on full MNIST (tensorflow-datasets)",
    hidden=(500, 500), epochs=60, beta=1.0, free_steps=150, nudged_steps=6, alphas=(0.4, 0.1, 0.01),
)
_S3 = dataclasses.replace(
    _S1, preset="scellier2017-mnist-3h",
    description="Scellier & Bengio 2017, 784-500-500-500-10 on full MNIST (tensorflow-datasets)",
    hidden=(500, 500, 500), epochs=500, beta=1.0, free_steps=500, nudged_steps=8,
    alphas=(0.128, 0.032, 0.008, 0.002),
)

# Seed 004: feed-forward EP on a residual MLP (ep_jax.residual). Its optimizer (per-part AdamW
# 1e-3, weight decay 0.01, cosine, clipping at 1.0) is shared by the EP run and its BP twin.
_RESIDUAL_OPT = dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.01, schedule="cosine",
                     grad_clip=1.0)
_BP_RESIDUAL = dict(bp_optimizer="adamw", bp_learning_rate=1e-3, bp_weight_decay=0.01,
                    bp_schedule="cosine", bp_grad_clip=1.0, bp_loss="cross_entropy", bp_dropout=0.0)
_RESIDUAL_CIFAR10 = TrainConfig(
    preset="residual-cifar10",
    description="seed 004: residual EP on CIFAR-10, ResidualMLP(3072, d=256, 4 blocks), 100 "
    "epochs, batch 128, random crop + flip, beta 0.5, nudged phase 20 SGD steps of 0.1",
    dataset="cifar10", model="residual", hidden=(256,), n_blocks=4, epochs=100, batch_size=128,
    beta=0.5, nudged_steps=20, step_size=0.1, augment="crop_flip", log_every=10, eval_every=5,
    checkpoint_every=5, **_RESIDUAL_OPT,
)
_RESIDUAL_MNIST10K = dataclasses.replace(
    _RESIDUAL_CIFAR10, preset="residual-mnist10k",
    description="seed 004's residual EP on MNIST-10k (flattened 784 pixels), d=256, 4 blocks, "
    "batch 128, no augmentation",
    dataset="mnist10k", epochs=30, augment="none", log_every=4, eval_every=1, checkpoint_every=5,
)

PRESETS: dict[str, TrainConfig] = {}
for _cfg in (_DIGITS, _XOR, _MNIST10K, _S1, _S2, _S3):
    PRESETS[_cfg.preset] = _cfg
    PRESETS["bp-" + _cfg.preset] = _twin(_cfg, **_BP_MNIST)
for _cfg in (_RESIDUAL_MNIST10K, _RESIDUAL_CIFAR10):
    PRESETS[_cfg.preset] = _cfg
    PRESETS["bp-" + _cfg.preset] = _twin(_cfg, **_BP_RESIDUAL)
DEFAULT_PRESET = "digits"


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, received {name!r}")
    return PRESETS[name]

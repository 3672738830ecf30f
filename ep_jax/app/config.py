"""Training runs as data: ``TrainConfig``, six frozen sections, and the presets of ``ep-jax train``.

::

    TrainConfig(preset, description,
                model=ModelConfig(kind, hidden, energy, activation, n_blocks, dropout),
                rule=RuleConfig(rule, beta, cost, step_size, free_steps, nudged_steps, ...),
                optimizer=OptimizerConfig(optimizer, alphas, learning_rate, weight_decay, ...),
                data=DataConfig(dataset, batch_size, augment, random_targets),
                loop=LoopConfig(epochs, seed, eval_every, checkpoint_every, log_every,
                                credit_batch, on_divergence),
                devices=DevicesConfig(devices, mesh))

``model.kind`` says what is trained: ``"layered"`` (an energy from ``ep_jax.energies`` relaxed by
gradient descent, trained by an EP-family rule from ``ep_jax.rules``), ``"mlp"`` (the feed-forward
net of a backprop twin, ``rule="backprop"``), ``"residual"`` (seed 004's ResidualMLP, trained by
``rule="residual-ep"`` or ``"backprop"``) or ``"conv"`` (a convolutional Hopfield net,
``ep_jax.energies.conv_hopfield``, relaxed by gradient descent or fixed-point sweeps, trained by
any rule of ``ep_jax.rules``, ``"bptt"`` included). Each field says which kinds use it; a field the kind
does not use must keep its default, so no setting is silently ignored.

Field names are unique across sections: ``cfg.with_overrides(beta=0.3, hidden=(500,))`` and the
command line's flat flags (``--beta 0.3 --hidden 500``) name a field without its section. A preset
is a complete ``TrainConfig``; the resolved config is printed at the start of a run and saved as
``config.json`` (nested JSON) in the run directory, so a run is reproducible from that file alone.

Resuming: every field of ``model``, ``rule``, ``optimizer`` and ``data`` and ``loop.seed`` change
what the saved state means (``FINGERPRINT``); the fields in ``RESUME_SAFE`` may differ when a run
is resumed (e.g. more epochs). ``loop.epochs`` is safe only under a constant schedule: a cosine
schedule decays the rates over the whole run, so its length is part of the fingerprint.

Every EP preset has a ``bp-`` twin: the same layer sizes, data split, batch size and epochs,
trained by backprop (``ep_jax.backprop``), so every EP number has its baseline on the same split;
a conv preset's twin is the same config with ``rule="bptt"`` (backprop through the relaxation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from typing import Any, Optional

LAYERED, MLP, RESIDUAL, CONV = "layered", "mlp", "residual", "conv"
KINDS = (LAYERED, MLP, RESIDUAL, CONV)
BACKPROP, RESIDUAL_EP = "backprop", "residual-ep"
COSTS = ("squared_error", "cross_entropy")
# A conv net's softmax readout (Laborieux et al. 2021): a head outside the dynamics, in the cost.
SOFTMAX_READOUT = "softmax_readout"
# Relaxation solvers of layered and conv nets: projected gradient descent (step_size) or
# fixed-point sweeps s_l <- rho(h_l), all layers at once or even layers then odd layers.
SOLVERS = ("gradient_descent", "fixed_point_sync", "fixed_point_async")
SCHEDULES = ("constant", "cosine")
STATE_INITS = ("zeros", "feedforward")
DIVERGENCE_POLICIES = ("warn", "stop")

# How a field behaves on ``--resume`` (dataclass field metadata "resume").
FINGERPRINTED, SAFE = "fingerprint", "safe"


def _field(default, *, used_by=KINDS, resume=FINGERPRINTED):
    """A config field: the model kinds that read it and whether it may change on resume."""
    return dataclasses.field(default=default, metadata={"used_by": used_by, "resume": resume})


@functools.cache
def _choice_tables() -> tuple[dict, dict]:
    """(allowed values per field, the same per model kind); registries stay live dicts."""
    from ep_jax.activations import ACTIVATIONS
    from ep_jax.backprop import OPTIMIZERS as BP_OPTIMIZERS
    from ep_jax.energies import ENERGIES
    from ep_jax.optim import OPTIMIZERS as EP_OPTIMIZERS
    from ep_jax.precision import POLICIES
    from ep_jax.preprocess import AUGMENTS
    from ep_jax.residual import BATCH_SCALINGS, EMBEDDING_GRADIENTS, INNER_OPTIMIZERS
    from ep_jax.rules import RULES

    shared = {
        "kind": KINDS, "energy": ENERGIES, "activation": ACTIVATIONS, "state_init": STATE_INITS,
        "inner_optimizer": INNER_OPTIMIZERS, "embedding_gradient": EMBEDDING_GRADIENTS,
        "batch_scaling": BATCH_SCALINGS, "schedule": SCHEDULES, "augment": AUGMENTS,
        "on_divergence": DIVERGENCE_POLICIES, "solver": SOLVERS, "input_activation": ACTIVATIONS,
        "precision": POLICIES,
    }
    per_kind = {
        "rule": {LAYERED: RULES, MLP: (BACKPROP,), RESIDUAL: (RESIDUAL_EP, BACKPROP), CONV: RULES},
        # The residual model's only loss is softmax cross-entropy, its only optimizer seed 004's
        # per-part AdamW.
        "cost": {LAYERED: COSTS, MLP: COSTS, RESIDUAL: ("cross_entropy",),
                 CONV: COSTS + (SOFTMAX_READOUT,)},
        "optimizer": {LAYERED: EP_OPTIMIZERS, MLP: BP_OPTIMIZERS, RESIDUAL: ("adamw",),
                      CONV: EP_OPTIMIZERS},
    }
    return shared, per_kind


def choices(name: str, kind: str) -> Optional[tuple]:
    """The values field ``name`` accepts for a model of ``kind``; ``None``: any of its type."""
    shared, per_kind = _choice_tables()
    allowed = per_kind[name][kind] if name in per_kind else shared.get(name)
    return None if allowed is None else tuple(allowed)


class _Section:
    """Checks of one section's own fields; ``SECTION`` prefixes every message."""

    SECTION = ""

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(
            f"{self.SECTION}.{name}: expected {expected}, received {getattr(self, name)!r}"
        )

    def _int(self, name: str, minimum: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self._fail(name, f"an int >= {minimum}")

    def _number(self, name: str, *, optional: bool = False, positive: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                positive and v <= 0):
            self._fail(name, ("a number > 0" if positive else "a finite number")
                       + (" or None" if optional else ""))
        object.__setattr__(self, name, float(v))

    def _bool(self, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            self._fail(name, "true or false")

    def _tuple(self, name: str, cast, check, what: str) -> None:
        v = getattr(self, name)
        try:
            items = tuple(cast(a) for a in v) if not isinstance(v, (str, bytes)) else ()
        except (TypeError, ValueError):
            items = ()
        if not items or not all(check(a) for a in items):
            self._fail(name, what)
        object.__setattr__(self, name, items)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """What is trained.

    Attributes:
      kind: ``"layered"``, ``"mlp"``, ``"residual"`` or ``"conv"`` (see the module docstring).
      hidden: hidden layer sizes (input and output sizes come from the data); ``(d,)``, the
        block width, for a residual model; for a conv net, the dense layers between the last
        feature map and the output (may be empty).
      energy: the energy of a layered net (``ep_jax.energies.ENERGIES``); a conv net's is
        ``conv_hopfield``.
      activation: the per-layer activation (``ep_jax.activations.ACTIVATIONS``) of a layered
        net, a conv net or an MLP.
      n_blocks: residual blocks.
      dropout: the MLP's inverted-dropout rate on its hidden layers, in [0, 1).
      channels, kernels, strides, paddings, pools: a conv net's feature-map layers, one entry
        each: output channels, square kernel size, stride, symmetric zero padding and max-pool
        window (= its stride; 1: no pooling) (``ep_jax.energies.ConvLayer``).
      input_activation: rho applied to a conv net's clamped input (Laborieux: ``identity``).
    """

    SECTION = "model"

    kind: str = _field(LAYERED)
    hidden: tuple[int, ...] = _field((100,))
    energy: str = _field("hopfield", used_by=(LAYERED,))
    activation: str = _field("hard_sigmoid", used_by=(LAYERED, MLP, CONV))
    n_blocks: int = _field(4, used_by=(RESIDUAL,))
    dropout: float = _field(0.0, used_by=(MLP,))
    channels: tuple[int, ...] = _field((32, 64), used_by=(CONV,))
    kernels: tuple[int, ...] = _field((5, 5), used_by=(CONV,))
    strides: tuple[int, ...] = _field((1, 1), used_by=(CONV,))
    paddings: tuple[int, ...] = _field((0, 0), used_by=(CONV,))
    pools: tuple[int, ...] = _field((2, 2), used_by=(CONV,))
    input_activation: str = _field("identity", used_by=(CONV,))

    def __post_init__(self):
        # A conv net may go from its last map straight to the output (or its readout).
        if not (self.kind == CONV and isinstance(self.hidden, (tuple, list)) and not self.hidden):
            self._tuple("hidden", int, lambda n: n >= 1, "a non-empty sequence of sizes >= 1")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for name in ("channels", "kernels", "strides", "pools"):
            self._tuple(name, int, lambda n: n >= 1, "a non-empty sequence of ints >= 1")
        self._tuple("paddings", int, lambda n: n >= 0, "a non-empty sequence of ints >= 0")
        self._int("n_blocks", 1)
        self._number("dropout")
        if not 0.0 <= self.dropout < 1.0:
            self._fail("dropout", "a rate in [0, 1)")


@dataclasses.dataclass(frozen=True)
class RuleConfig(_Section):
    """How the gradient is estimated.

    Attributes:
      rule: an EP-family rule (``ep_jax.rules.RULES``) for a layered net, ``"backprop"``, or
        ``"residual-ep"`` (seed 004's feed-forward EP, ``ep_jax.residual``).
      beta: nudging strength (the rule sets its sign); a residual model's credit diagnostics use
        it under backprop too, as they use every residual-EP field below.
      cost: ``"squared_error"`` or ``"cross_entropy"`` on the output layer (the BP twin's loss);
        a residual model's is cross-entropy.
      step_size: epsilon of the relaxation s <- clip(s - eps dF/ds, 0, 1) (``solver=
        "gradient_descent"``); for a residual model, the rate of the nudged phase's inner
        optimizer.
      solver: how a layered or conv net relaxes: ``"gradient_descent"`` (step_size, projected
        to [0, 1] under the hard sigmoid), ``"fixed_point_sync"`` (every layer s_l <- rho(h_l)
        from the old state, Laborieux et al. 2021) or ``"fixed_point_async"`` (even layers,
        then odd layers: Scellier et al. 2023) (``ep_jax.solvers.FixedPoint``).
      free_steps, nudged_steps: relaxation steps of the free and nudged phases in training; for
        a residual model, ``nudged_steps`` are the inner optimizer's steps.
      unroll: relaxation steps per rolled loop iteration (the solvers' ``unroll``; the same
        numbers for every value): on CPU a conv net's sweeps run several times faster unrolled
        (``unroll >= free_steps``: fully; docs/CONV_BENCH.md); compile time grows with it.
      eval_max_steps, eval_tol: evaluation relaxes the free phase from ``state_init`` until the
        update norm is below ``eval_tol`` or for ``eval_max_steps`` steps.
      persistent: keep each training example's free state between epochs ("persistent
        particles") and start its next free phase there; otherwise start from ``state_init``.
      state_init: ``"zeros"`` or ``"feedforward"``: start of non-persistent and test relaxations.
      inner_optimizer: the residual nudged phase's optimizer on the states.
      embedding_gradient: ``"exact"`` or ``"identity-path"`` (seed 004's): residual EP's
        embedding gradient (see ``ep_jax.residual``).
      batch_scaling: ``"per-example"`` or ``"batch-mean"`` (seed 004's; see ``ep_jax.residual``).
    """

    SECTION = "rule"

    rule: str = _field("ep-random-sign")
    beta: float = _field(0.5, used_by=(LAYERED, RESIDUAL, CONV))
    cost: str = _field("squared_error")
    step_size: float = _field(0.5, used_by=(LAYERED, RESIDUAL, CONV))
    free_steps: int = _field(20, used_by=(LAYERED, CONV))
    nudged_steps: int = _field(4, used_by=(LAYERED, RESIDUAL, CONV))
    eval_max_steps: int = _field(100, used_by=(LAYERED, CONV))
    eval_tol: Optional[float] = _field(1e-4, used_by=(LAYERED, CONV))
    persistent: bool = _field(True, used_by=(LAYERED, CONV))
    state_init: str = _field("zeros", used_by=(LAYERED, CONV))
    solver: str = _field("gradient_descent", used_by=(LAYERED, CONV))
    unroll: int = _field(1, used_by=(LAYERED, CONV))
    inner_optimizer: str = _field("sgd", used_by=(RESIDUAL,))
    embedding_gradient: str = _field("exact", used_by=(RESIDUAL,))
    batch_scaling: str = _field("per-example", used_by=(RESIDUAL,))

    def __post_init__(self):
        self._number("beta")
        self._number("step_size", positive=True)
        for name in ("free_steps", "nudged_steps", "eval_max_steps", "unroll"):
            self._int(name, 1)
        self._number("eval_tol", optional=True, positive=True)
        self._bool("persistent")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """How the gradient is applied.

    Attributes:
      optimizer: a layered net's per-layer optimizer (``ep_jax.optim.OPTIMIZERS``), the MLP's
        (``ep_jax.backprop.OPTIMIZERS``), or ``"adamw"`` (the residual model's per-part AdamW).
      alphas: a layered or conv net's learning rates, one per connection (the seeds' alphas;
        a conv net's last one is its output connection or its softmax readout's).
      learning_rate: the MLP's and the residual model's.
      weight_decay: lambda >= 0; AdamW's decoupled decay (``adamw``), otherwise an L2 term
        lambda theta added to the gradient (PyTorch's SGD ``weight_decay``, Laborieux et al.).
      schedule: ``"constant"`` or ``"cosine"`` decay of every rate over the run.
      grad_clip: clip the update to this global norm (``None``: no clipping).
    """

    SECTION = "optimizer"

    optimizer: str = _field("sgd")
    alphas: tuple[float, ...] = _field((0.1, 0.05), used_by=(LAYERED, CONV))
    learning_rate: float = _field(1e-3, used_by=(MLP, RESIDUAL))
    weight_decay: float = _field(0.0, used_by=(MLP, RESIDUAL, LAYERED, CONV))
    schedule: str = _field("constant")
    grad_clip: Optional[float] = _field(None)

    def __post_init__(self):
        self._tuple("alphas", float, math.isfinite, "a non-empty sequence of learning rates")
        self._number("learning_rate", positive=True)
        self._number("weight_decay")
        if self.weight_decay < 0:
            self._fail("weight_decay", "a number >= 0")
        self._number("grad_clip", optional=True, positive=True)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """What it is trained on.

    Attributes:
      dataset: a name from ``ep_jax.app.data.DATASETS`` (or any name with ``train(data=...)``).
      batch_size: examples per step; the last partial batch of an epoch is dropped.
      augment: ``"none"`` or ``"crop_flip"`` (random 4-pixel-padded crop + flip; images only;
        residual and conv models).
      random_targets: train on i.i.d. random labels (seed 004's control run).
    """

    SECTION = "data"

    dataset: str = _field("digits")
    batch_size: int = _field(20)
    augment: str = _field("none", used_by=(RESIDUAL, CONV))
    random_targets: bool = _field(False, used_by=(RESIDUAL,))

    def __post_init__(self):
        self._int("batch_size", 1)
        self._bool("random_targets")


@dataclasses.dataclass(frozen=True)
class LoopConfig(_Section):
    """How long to train and how often to evaluate, save and report.

    Attributes:
      epochs: passes over the training set.
      seed: every random number of the run is a function of it.
      eval_every: evaluate on the test split every this many epochs (and always at the end).
      checkpoint_every: save an orbax checkpoint every this many epochs (0: never).
      log_every: host synchronisations per epoch for the progress bar (the jitted step scans
        over the batches between two of them).
      credit_batch: test examples of the credit diagnostics (``ep_jax.credit``) recorded at every
        evaluation of a residual model (0: none).
      on_divergence: ``"warn"`` or ``"stop"``: what an epoch flagged as diverging (a relaxation
        ran away, or the free phase's residual grew 10x since the first epoch) does after its
        metrics row and checkpoint are written (see ``ep_jax.app.train``).
    """

    SECTION = "loop"

    # The cosine schedule exception is in TrainConfig.fingerprint.
    epochs: int = _field(30, resume=SAFE)
    seed: int = _field(0)
    eval_every: int = _field(1, resume=SAFE)
    checkpoint_every: int = _field(1, resume=SAFE)
    log_every: int = _field(8, resume=SAFE)
    credit_batch: int = _field(128, used_by=(RESIDUAL,), resume=SAFE)
    on_divergence: str = _field("warn", resume=SAFE)

    def __post_init__(self):
        for name in ("epochs", "eval_every", "log_every"):
            self._int(name, 1)
        self._int("seed", 0)
        self._int("checkpoint_every", 0)
        self._int("credit_batch", 0)


@dataclasses.dataclass(frozen=True)
class DevicesConfig(_Section):
    """Where it runs: the device mesh of data-parallel training (``ep_jax.distributed``).

    Every field but ``precision`` may change on ``--resume``: a checkpoint restores onto any
    device count (the arrays are saved whole and resharded on restore).

    Attributes:
      devices: devices of the mesh, the first ``devices`` of ``jax.devices()`` (all processes'
        devices in a multi-host run); 0: every device, or the ``mesh``'s size when one is given;
        1 (default): one device without a mesh. Training-set size and batch size must be
        multiples of the ``data`` axis size.
      mesh: the mesh layout ``"data=8"`` or ``"data=4,model=2"`` (axis ``data`` splits the
        batch, the persistent particles and the training set; axis ``model`` shards the wide
        parameters, FSDP-style); ``None``: ``"data=<devices>"``. Its sizes multiply to
        ``devices`` (when ``devices`` > 0).
      precision: the dtype of the relaxation's states and products (``ep_jax.precision``):
        ``"float32"``, ``"bfloat16"`` or ``"float16"`` (states and products in it), or
        ``"bfloat16-products"`` / ``"float16-products"`` (products in it, states float32);
        parameters, gradients and the optimizer stay float32. Fingerprinted, unlike the other
        fields: persistent particles are saved in the states' dtype, and a run's trajectory is
        that of its precision, so a checkpoint resumes in the precision it was written in.
    """

    SECTION = "devices"

    devices: int = _field(1, resume=SAFE)
    mesh: Optional[str] = _field(None, resume=SAFE)
    precision: str = _field("float32", used_by=(LAYERED, CONV))

    def __post_init__(self):
        from ep_jax.precision import POLICIES

        if self.precision not in POLICIES:
            self._fail("precision", f"one of {POLICIES}")
        self._int("devices", 0)
        if self.mesh is None:
            return
        from ep_jax.distributed import parse_mesh

        size = math.prod(parse_mesh(self.mesh, name="devices.mesh").values())
        if self.devices and size != self.devices:
            self._fail("mesh", f"axis sizes whose product is devices={self.devices} (this mesh "
                               f"has {size} devices)")


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "rule": RuleConfig, "optimizer": OptimizerConfig, "data": DataConfig,
    "loop": LoopConfig, "devices": DevicesConfig,
}

# Flat field name -> its section; unique by construction (checked at import).
FIELD_SECTION: dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        assert _f.name not in FIELD_SECTION, f"config field {_f.name!r} is in two sections"
        FIELD_SECTION[_f.name] = _section


def field_type(name: str) -> Any:
    """The annotated type of the flat field ``name`` (e.g. ``Optional[float]``)."""
    return typing.get_type_hints(SECTIONS[FIELD_SECTION[name]])[name]


def _section_fields(section: str):
    return dataclasses.fields(SECTIONS[section])


FINGERPRINT: tuple[str, ...] = tuple(
    f"{s}.{f.name}" for s in SECTIONS for f in _section_fields(s)
    if f.metadata["resume"] == FINGERPRINTED
)
"""``section.field`` paths a resumed run must share with its checkpoint."""

RESUME_SAFE: tuple[str, ...] = ("preset", "description") + tuple(
    f"{s}.{f.name}" for s in SECTIONS for f in _section_fields(s) if f.metadata["resume"] == SAFE
)
"""Paths that may change on resume (``loop.epochs`` only under a constant schedule)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: a preset's name and description plus six sections.

    Attributes:
      preset: the preset this config came from (informational).
      description: one line saying what the preset reproduces.
      model, rule, optimizer, data, loop, devices: the sections (see each class).
    """

    preset: str = "custom"
    description: str = ""
    model: ModelConfig = ModelConfig()
    rule: RuleConfig = RuleConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = DataConfig()
    loop: LoopConfig = LoopConfig()
    devices: DevicesConfig = DevicesConfig()

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"{name}: expected a {cls.__name__}, received {getattr(self, name)!r}"
                )
        kind = self.model.kind
        if kind not in KINDS:
            raise ValueError(f"model.kind: expected one of {KINDS}, received {kind!r}")
        for path, f, value in self._fields():
            if kind not in f.metadata["used_by"]:
                if value != f.default:
                    raise ValueError(
                        f"{path}: not used by model.kind={kind!r}; expected its default "
                        f"{f.default!r}, received {value!r}"
                    )
                continue
            allowed = choices(f.name, kind)
            if allowed is None or value in allowed:
                continue
            if f.name in ("cost", "optimizer") and kind == RESIDUAL:
                raise ValueError(
                    f"{path}: a residual model trains with {allowed[0]!r} "
                    f"(model.kind='residual'), received {value!r}"
                )
            raise ValueError(
                f"{path}: expected one of {allowed} for model.kind={kind!r}, received {value!r}"
            )
        hidden = self.model.hidden
        if kind == RESIDUAL and len(hidden) != 1:
            raise ValueError(
                f"model.hidden: expected one width (d,) for a residual model, received {hidden}"
            )
        if kind == LAYERED and len(self.optimizer.alphas) != len(hidden) + 1:
            raise ValueError(
                f"optimizer.alphas: expected {len(hidden) + 1} learning rates (one per connection "
                f"of a net with model.hidden={hidden}), received {len(self.optimizer.alphas)}"
            )
        if kind == CONV:
            self._check_conv()
        if kind == LAYERED and self.model.energy == "conv_hopfield":
            raise ValueError(
                "model.energy: 'conv_hopfield' is built by model.kind='conv' (from its channels, "
                "kernels, ... fields); expected a layered energy, received 'conv_hopfield'"
            )
        if kind in (LAYERED, CONV) and self.rule.solver != "gradient_descent" and (
                self.rule.step_size != RuleConfig.step_size):
            raise ValueError(
                f"rule.step_size: not used by rule.solver={self.rule.solver!r} (fixed-point sweeps "
                f"have no step); expected its default {RuleConfig.step_size!r}, received "
                f"{self.rule.step_size!r}"
            )

    def _check_conv(self) -> None:
        """A conv net: one entry per map layer in each layer field, one rate per connection."""
        m = self.model
        n = len(m.channels)
        for name in ("kernels", "strides", "paddings", "pools"):
            if len(getattr(m, name)) != n:
                raise ValueError(
                    f"model.{name}: expected {n} entries (one per conv layer of model.channels="
                    f"{m.channels}), received {getattr(m, name)}"
                )
        want = n + len(m.hidden) + 1
        if len(self.optimizer.alphas) != want:
            raise ValueError(
                f"optimizer.alphas: expected {want} learning rates ({n} conv layers, "
                f"{len(m.hidden)} dense layers of model.hidden and the output"
                f"{' readout' if self.rule.cost == SOFTMAX_READOUT else ''}), received "
                f"{len(self.optimizer.alphas)}"
            )

    def _fields(self):
        """``(section.field, dataclasses.Field, value)`` of every section field, in order."""
        for s in SECTIONS:
            section = getattr(self, s)
            for f in dataclasses.fields(section):
                yield f"{s}.{f.name}", f, getattr(section, f.name)

    def fingerprint(self) -> dict[str, Any]:
        """``{section.field: value}`` of every field that must not change on resume.

        ``FINGERPRINT``, plus ``loop.epochs`` under a non-constant schedule (its decay spans all
        the run's steps, so a longer run follows another schedule from the first step).
        """
        fp = {path: value for path, f, value in self._fields() if path in FINGERPRINT}
        if self.optimizer.schedule != "constant":
            fp["loop.epochs"] = self.loop.epochs
        return fp

    def with_overrides(self, **overrides) -> "TrainConfig":
        """This config with flat fields replaced: ``cfg.with_overrides(beta=0.3, epochs=1)``.

        ``None`` is a value (``grad_clip=None``: no clipping), not "unset".

        Raises:
          ValueError: an unknown field name, or an invalid resulting config.
        """
        top = {k: overrides.pop(k) for k in ("preset", "description") if k in overrides}
        unknown = sorted(set(overrides) - set(FIELD_SECTION))
        if unknown:
            raise ValueError(
                f"config: unknown fields {unknown}; expected names from {sorted(FIELD_SECTION)}"
            )
        per_section: dict[str, dict] = {}
        for name, value in overrides.items():
            per_section.setdefault(FIELD_SECTION[name], {})[name] = value
        sections = {s: dataclasses.replace(getattr(self, s), **kw) for s, kw in per_section.items()}
        return dataclasses.replace(self, **top, **sections)

    def flat(self) -> dict[str, Any]:
        """``{field: value}`` of every section field (the names ``with_overrides`` takes)."""
        return {path.split(".")[1]: value for path, _, value in self._fields()}

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data; fields the model kind does not use (at their defaults) are left out."""
        kind = self.model.kind
        d: dict[str, Any] = {"preset": self.preset, "description": self.description}
        for path, f, value in self._fields():
            if kind in f.metadata["used_by"]:
                section, name = path.split(".")
                d.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of a nested dict (``cfg.to_dict()``, ``config.json``); missing fields default.

        Raises:
          ValueError: an unknown section or field (named ``section.field``), or an invalid value.
        """
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a JSON object, received {type(d).__name__}")
        unknown = sorted(set(d) - {"preset", "description", *SECTIONS})
        for s, section_cls in SECTIONS.items():
            part = d.get(s, {})
            if not isinstance(part, dict):
                raise ValueError(f"{s}: expected a JSON object, received {part!r}")
            names = {f.name for f in dataclasses.fields(section_cls)}
            unknown += sorted(f"{s}.{k}" for k in set(part) - names)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        sections = {s: section_cls(**d.get(s, {})) for s, section_cls in SECTIONS.items()}
        top = {k: d[k] for k in ("preset", "description") if k in d}
        return cls(**top, **sections)


def _twin(cfg: TrainConfig, optimizer: dict, **mlp) -> TrainConfig:
    """The backprop twin of an EP preset: same data, sizes, batch size, epochs and seed.

    A layered net's twin is an MLP with its layer sizes (``mlp``: its other model fields); a
    residual model's twin is the same model, whose rule section keeps the residual-EP settings
    its credit diagnostics use.
    """
    residual = cfg.model.kind == RESIDUAL
    if residual:
        rule = dataclasses.replace(cfg.rule, rule=BACKPROP)
        model = dataclasses.replace(cfg.model, **mlp)
    else:
        rule = RuleConfig(rule=BACKPROP, cost="cross_entropy")
        model = ModelConfig(kind=MLP, hidden=cfg.model.hidden, **mlp)
    return dataclasses.replace(
        cfg, preset="bp-" + cfg.preset,
        description="backprop twin of " + cfg.preset + (
            ": the same ResidualMLP trained by backprop" if residual
            else ": the same layer sizes as a feed-forward MLP"),
        model=model, rule=rule, optimizer=OptimizerConfig(**optimizer),
    )


# The BP twins' hyper-parameters were selected on a validation split carved out of the training
# set (benchmarks/tune_bp_mnist10k.py; results in benchmarks/results/bp_mnist10k_tuning.md).
_BP_MNIST_MODEL = dict(activation="relu", dropout=0.2)
_BP_MNIST_OPT = dict(optimizer="adam", learning_rate=3e-3, weight_decay=0.0, schedule="cosine")

_DIGITS = TrainConfig(
    preset="digits",
    description="scikit-learn's 8x8 digits (1437 train / 360 test), 64-100-10 Hopfield net, "
    "EP with random-sign beta and persistent particles",
    model=ModelConfig(hidden=(100,)),
    rule=RuleConfig(beta=0.5, free_steps=20, nudged_steps=4),
    optimizer=OptimizerConfig(alphas=(0.2, 0.1)),
    data=DataConfig(dataset="digits", batch_size=20),
    loop=LoopConfig(epochs=30),
)

_XOR = TrainConfig(
    preset="xor",
    description="seed 000's XOR task (4 patterns, batch 4) on a 2-8-2 Hopfield net, symmetric EP",
    model=ModelConfig(hidden=(8,)),
    rule=RuleConfig(rule="ep-symmetric", beta=0.5, free_steps=40, nudged_steps=10),
    optimizer=OptimizerConfig(alphas=(0.5, 0.25)),
    data=DataConfig(dataset="xor", batch_size=4),
    loop=LoopConfig(epochs=300, log_every=1, eval_every=50, checkpoint_every=100),
)

# Scellier & Bengio's rates (0.1, 0.05) were set for 50,000 images x 25 epochs; MNIST-10k gives
# 6.25x fewer updates. Doubled rates were selected on a validation split of the 8,000 training
# images (benchmarks/tune_ep_mnist10k.py: 2.50% vs 3.35% validation error).
_MNIST10K = TrainConfig(
    preset="mnist10k",
    description="Scellier & Bengio 2017, 1 hidden layer (784-500-10) on MNIST-10k "
    "(first 8000 of the official test set for training, last 2000 for testing); the paper's "
    "learning rates doubled (selected on validation) for the 6.25x smaller training set",
    model=ModelConfig(hidden=(500,)),
    rule=RuleConfig(rule="ep-random-sign", beta=0.5, step_size=0.5, free_steps=20,
                    nudged_steps=4, eval_max_steps=50),
    optimizer=OptimizerConfig(alphas=(0.2, 0.1)),
    data=DataConfig(dataset="mnist10k", batch_size=20),
    loop=LoopConfig(epochs=25, log_every=4),
)

# Scellier & Bengio 2017 (their train_model.py): on the official 60k/10k split via tfds.
_S1 = TrainConfig(
    preset="scellier2017-mnist-1h",
    description="Scellier & Bengio 2017, 784-500-10 on full MNIST (tensorflow-datasets)",
    model=ModelConfig(hidden=(500,)),
    rule=RuleConfig(rule="ep-random-sign", beta=0.5, step_size=0.5, free_steps=20, nudged_steps=4),
    optimizer=OptimizerConfig(alphas=(0.1, 0.05)),
    data=DataConfig(dataset="mnist", batch_size=20),
    loop=LoopConfig(epochs=25, log_every=20),
)
_S2 = _S1.with_overrides(
    preset="scellier2017-mnist-2h",
    description="Scellier & Bengio 2017, 784-500-500-10 on full MNIST (tensorflow-datasets)",
    hidden=(500, 500), epochs=60, beta=1.0, free_steps=150, nudged_steps=6, alphas=(0.4, 0.1, 0.01),
)
_S3 = _S1.with_overrides(
    preset="scellier2017-mnist-3h",
    description="Scellier & Bengio 2017, 784-500-500-500-10 on full MNIST (tensorflow-datasets)",
    hidden=(500, 500, 500), epochs=500, beta=1.0, free_steps=500, nudged_steps=8,
    alphas=(0.128, 0.032, 0.008, 0.002),
)

# Seed 004: feed-forward EP on a residual MLP (ep_jax.residual). Its optimizer (per-part AdamW
# 1e-3, weight decay 0.01, cosine, clipping at 1.0) is shared by the EP run and its BP twin.
_RESIDUAL_OPT = dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.01, schedule="cosine",
                     grad_clip=1.0)
_RESIDUAL_CIFAR10 = TrainConfig(
    preset="residual-cifar10",
    description="seed 004: residual EP on CIFAR-10, ResidualMLP(3072, d=256, 4 blocks), 100 "
    "epochs, batch 128, random crop + flip, beta 0.5, nudged phase 20 SGD steps of 0.1",
    model=ModelConfig(kind=RESIDUAL, hidden=(256,), n_blocks=4),
    rule=RuleConfig(rule=RESIDUAL_EP, cost="cross_entropy", beta=0.5, nudged_steps=20,
                    step_size=0.1),
    optimizer=OptimizerConfig(**_RESIDUAL_OPT),
    data=DataConfig(dataset="cifar10", batch_size=128, augment="crop_flip"),
    loop=LoopConfig(epochs=100, log_every=10, eval_every=5, checkpoint_every=5),
)
_RESIDUAL_MNIST10K = _RESIDUAL_CIFAR10.with_overrides(
    preset="residual-mnist10k",
    description="seed 004's residual EP on MNIST-10k (flattened 784 pixels), d=256, 4 blocks, "
    "batch 128, no augmentation",
    dataset="mnist10k", epochs=30, augment="none", log_every=4, eval_every=1, checkpoint_every=5,
)

# Convolutional Hopfield nets (ep_jax.energies.conv_hopfield). Each bp- twin is the same config
# with rule="bptt": the same energy, relaxation, optimizer and data, the gradient taken exactly by
# backprop through the free phase's steps (Laborieux et al. 2021's BPTT baseline).
_CONV_MNIST10K = TrainConfig(
    preset="conv-mnist10k",
    description="a small convolutional Hopfield net on MNIST-10k (28x28 in [0, 1]; first 8000 "
    "test-set images for training, last 2000 for testing): conv 16 5x5 stride 2 (12x12), conv 32 "
    "5x5 stride 2 (4x4), softmax readout; symmetric EP (beta 0.5), asynchronous fixed-point "
    "sweeps (20 free / 4 per nudged phase), batch 20, SGD momentum 0.9 (rates 0.05, 0.05, 0.02), "
    "cosine decay, 5 epochs",
    # Strided convolutions instead of 2x2 max pools: the same map sizes at a quarter of the
    # work (a pool computes the convolution at full resolution first), for a 2-core CPU. Rates
    # and batch from a small search on a validation split (first 7,000 / last 1,000 training
    # images, 3 epochs, seed 0): batch 20 rates (0.05, 0.05, 0.02) 5.5%; batch 50 (0.1, 0.1,
    # 0.05) 5.8%, (0.3, 0.3, 0.1) 12.6%; batch 20 (0.1, 0.1, 0.05) unstable (31.6%). Then, 5
    # epochs: 8 free sweeps 5.3%, 20 free sweeps 3.4% (8 leave the free phase far from
    # equilibrium), 8 sweeps with channels (32, 64) 5.8%.
    model=ModelConfig(kind=CONV, hidden=(), channels=(16, 32), kernels=(5, 5), strides=(2, 2),
                      paddings=(0, 0), pools=(1, 1)),
    rule=RuleConfig(rule="ep-symmetric", beta=0.5, cost=SOFTMAX_READOUT, solver="fixed_point_async",
                    free_steps=20, nudged_steps=4, eval_max_steps=50, eval_tol=1e-4,
                    persistent=False),
    optimizer=OptimizerConfig(optimizer="momentum", alphas=(0.05, 0.05, 0.02), schedule="cosine"),
    data=DataConfig(dataset="mnist10k", batch_size=20),
    loop=LoopConfig(epochs=5, log_every=4),
)

# Laborieux et al. 2021 (their README's "cel --softmax --thirdphase" CIFAR-10 command): 11.7%
# test error. Departures: the crop pads with zeros (theirs: edge pixels); evaluation runs the same
# 250 free steps as training (theirs too) and so reports converged = 0.
_LABORIEUX_CIFAR10 = TrainConfig(
    preset="laborieux2021-cifar10",
    description="Laborieux et al. 2021, convolutional EP on CIFAR-10: conv 128-256-512-512 (3x3, "
    "paddings 1,1,1,0, 2x2 max pools), softmax readout (fc 10), shifted hard sigmoid, symmetric "
    "EP ('third phase') beta 1.0, synchronous fixed-point dynamics T1 250 / T2 25, batch 128, SGD "
    "momentum 0.9, per-layer rates 0.25 0.15 0.1 0.08 0.05, weight decay 3e-4, cosine decay, 120 "
    "epochs, random crop + flip (paper: 11.7% test error)",
    model=ModelConfig(kind=CONV, hidden=(), channels=(128, 256, 512, 512), kernels=(3, 3, 3, 3),
                      strides=(1, 1, 1, 1), paddings=(1, 1, 1, 0), pools=(2, 2, 2, 2),
                      activation="shifted_hard_sigmoid"),
    rule=RuleConfig(rule="ep-symmetric", beta=1.0, cost=SOFTMAX_READOUT, solver="fixed_point_sync",
                    free_steps=250, nudged_steps=25, eval_max_steps=250, eval_tol=None,
                    persistent=False),
    optimizer=OptimizerConfig(optimizer="momentum", alphas=(0.25, 0.15, 0.1, 0.08, 0.05),
                              weight_decay=3e-4, schedule="cosine"),
    data=DataConfig(dataset="cifar10", batch_size=128, augment="crop_flip"),
    loop=LoopConfig(epochs=120, log_every=10, eval_every=5, checkpoint_every=5),
)
# Scellier et al. 2023 (energy-based learning algorithms for analog computing): the same net
# relaxed by asynchronous (even/odd) sweeps, which converge in fewer steps.
_SCELLIER_CIFAR10 = _LABORIEUX_CIFAR10.with_overrides(
    preset="scellier2023-cifar10",
    description="Scellier et al. 2023's setting of the Laborieux et al. 2021 CIFAR-10 net: the "
    "same conv 128-256-512-512 net, optimizer, data and symmetric EP (beta 1.0), relaxed by "
    "asynchronous fixed-point sweeps (even layers, then odd) with fewer steps: 60 free / 20 "
    "nudged (evaluation: 60)",
    solver="fixed_point_async", free_steps=60, nudged_steps=20, eval_max_steps=60,
)


def _bptt_twin(cfg: TrainConfig, grad_clip: Optional[float] = None) -> TrainConfig:
    """The BPTT twin of a conv preset: the same config, ``rule="bptt"`` (beta and the nudged
    steps are kept but unused: BPTT has no nudged phase), and optionally a gradient clip."""
    clip = "" if grad_clip is None else f", gradients clipped to global norm {grad_clip:g}"
    return dataclasses.replace(
        cfg, preset="bp-" + cfg.preset,
        description="BPTT twin of " + cfg.preset + ": the same config with rule='bptt' (backprop "
        "through the free phase's fixed steps, the exact gradient EP estimates)" + clip,
        rule=dataclasses.replace(cfg.rule, rule="bptt"),
        optimizer=dataclasses.replace(cfg.optimizer, grad_clip=grad_clip),
    )


PRESETS: dict[str, TrainConfig] = {}
for _cfg in (_DIGITS, _XOR, _MNIST10K, _S1, _S2, _S3):
    PRESETS[_cfg.preset] = _cfg
    PRESETS["bp-" + _cfg.preset] = _twin(_cfg, _BP_MNIST_OPT, **_BP_MNIST_MODEL)
for _cfg in (_RESIDUAL_MNIST10K, _RESIDUAL_CIFAR10):
    PRESETS[_cfg.preset] = _cfg
    PRESETS["bp-" + _cfg.preset] = _twin(_cfg, _RESIDUAL_OPT)
for _cfg in (_CONV_MNIST10K, _LABORIEUX_CIFAR10, _SCELLIER_CIFAR10):
    PRESETS[_cfg.preset] = _cfg
    # Unclipped, BPTT diverges at conv-mnist10k's rates (90% test error on seeds 0-2, while EP
    # trains); clipped to norm 1 it trains (benchmarks/results/conv_mnist10k.md). The CIFAR-10
    # twins keep Laborieux et al.'s unclipped BPTT.
    clip = 1.0 if _cfg is _CONV_MNIST10K else None
    PRESETS["bp-" + _cfg.preset] = _bptt_twin(_cfg, grad_clip=clip)
DEFAULT_PRESET = "digits"


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, received {name!r}")
    return PRESETS[name]

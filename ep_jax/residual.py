"""Feed-forward residual EP (seed 004) on the core: a residual energy, a readout cost, an optax solver.

Model (``ResidualMLP``, Flax)::

    h_0 = embed(x) = x W_e + b_e
    h_{l+1} = h_l + F_l(h_l),   F_l(h) = Dense_2(gelu(Dense_1(LayerNorm(h))))   (l = 0..L-1)
    logits = head(LayerNorm_out(h_L))

Pre-norm blocks of width ``d`` (``d -> d -> d``, exact erf GELU, LayerNorm eps 1e-5 as torch's),
so the port of seed 004's missing ``ResidualMLP`` in ``tests/reference/seed004.py`` is the same
function. As an ``Energy`` (``ResidualEnergy``) over the state ``(h_1, ..., h_L)``::

    E(h; x) = 1/2 sum_{l=0}^{L-1} ||h_{l+1} - h_l - F_l(h_l)||^2 = 1/2 sum_l ||r_l||^2,  h_0 = embed(x)
    C(h_L, y; theta) = -log softmax(head(LayerNorm_out(h_L)))_y       (``costs.SoftmaxReadout``)

E >= 0 and E = 0 exactly at the forward pass, so the free phase is ``init_state(params, x,
"feedforward")`` checked by the ``Stationary`` solver; the nudged phase minimises E + beta C with
``OptaxSolver(optax.sgd(0.1), 20)``; the gradient is the ``ep`` rule's total-energy difference

    g = [ dF/dtheta(s^beta, beta) - dF/dtheta(s^0, 0) ] / beta
      = [ dE/dtheta(s^beta) - dE/dtheta(s^0) ] / beta + dC/dtheta_head(s^beta_L),

which yields seed 004's head update without a special case. With h_0 = embed(x; theta) inside E
the embedding's term is exact (as beta -> 0 with the nudged phase converged, g is the backprop
gradient of the mean cross-entropy). The seed's two departures stay selectable, under names that
say what they do:

* ``embedding_gradient="identity-path"``: the embedding's credit flows only through the identity
  path of r_0 = h_1 - h_0 - F_0(h_0), dropping block 0's Jacobian (the seed's -r_0 . dh_0/dtheta_e;
  cosine ~0.89 with the true embedding gradient);
* ``batch_scaling="batch-mean"``: the nudged phase minimises the batch *mean* of E + beta C (each
  example moves by lr/B per step: ``OptaxSolver(reduction="mean")``) and the energy's gradient is
  summed over the batch (``Phases(energy_grad_reduction="sum")``), the head's averaged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ep_jax.costs import SoftmaxReadout
from ep_jax.energies.base import Energy
from ep_jax import rules
from ep_jax.optim import make_optimizer
from ep_jax.rules import Phases, ep_gradient
from ep_jax.solvers import OptaxSolver, RelaxStats, Stationary, relax

LN_EPS = 1e-5  # torch's LayerNorm default; seed 004's model is a torch model


class ResidualBlock(nn.Module):
    """The residual branch F(h) = Dense(gelu(Dense(LayerNorm(h)))) of width ``d``."""

    d: int

    @nn.compact
    def __call__(self, h):
        z = nn.LayerNorm(epsilon=LN_EPS, name="ln")(h)
        z = nn.Dense(self.d, name="dense1")(z)
        z = nn.gelu(z, approximate=False)
        return nn.Dense(self.d, name="dense2")(z)


class ResidualMLP(nn.Module):
    """Embedding, ``n_blocks`` pre-norm residual blocks, output LayerNorm and a linear head.

    ``__call__(x) -> (logits, hiddens)`` with ``hiddens = (h_0, ..., h_L)``. Parameters:
    ``{"embed", "block_0", ..., "block_{L-1}", "out_ln", "head"}``.
    """

    d_hidden: int
    n_classes: int
    n_blocks: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.d_hidden, name="embed")(x)
        hiddens = [h]
        for l in range(self.n_blocks):
            h = h + ResidualBlock(self.d_hidden, name=f"block_{l}")(h)
            hiddens.append(h)
        z = nn.LayerNorm(epsilon=LN_EPS, name="out_ln")(h)
        return nn.Dense(self.n_classes, name="head")(z), tuple(hiddens)


# --- pure functions of (params, states) -------------------------------------------------------


def n_blocks(params) -> int:
    return sum(1 for k in params if k.startswith("block_"))


def init_residual_mlp(key, in_dim: int, d_hidden: int, n_classes: int, n_blocks: int,
                      dtype=jnp.float32):
    """Flax-initialised parameters (lecun-normal kernels, zero biases, unit LayerNorm scales)."""
    for name, v in (("in_dim", in_dim), ("d_hidden", d_hidden), ("n_classes", n_classes),
                    ("n_blocks", n_blocks)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name}: expected an int >= 1, received {v!r}")
    model = ResidualMLP(d_hidden, n_classes, n_blocks)
    params = model.init(key, jnp.zeros((1, in_dim), jnp.float32))["params"]
    # Plain nested dicts (not FrozenDict), so grads can be assembled part by part.
    return jax.tree.map(lambda a: a.astype(dtype), flax.core.unfreeze(params))


def embed(params, x):
    p = params["embed"]
    return x @ p["kernel"] + p["bias"]


def block(params, l: int, h):
    """The residual branch F_l(h)."""
    d = params[f"block_{l}"]["dense2"]["kernel"].shape[-1]
    return ResidualBlock(d).apply({"params": params[f"block_{l}"]}, h)


READOUT = SoftmaxReadout(head="head", norm="out_ln", eps=LN_EPS)


def readout(params, h_L):
    """Logits head(LayerNorm_out(h_L))."""
    return READOUT.logits(h_L, params)


def check_input(params, x, name: str = "x") -> None:
    want = params["embed"]["kernel"].shape[0]
    if jnp.ndim(x) != 2 or x.shape[1] != want:
        raise ValueError(f"{name}: expected shape (batch, {want}), received {jnp.shape(x)}")


def free_phase(params, x):
    """The forward pass (h_0, ..., h_L): the exact minimiser of E with h_0 = embed(x)."""
    check_input(params, x)
    h = embed(params, x)
    hiddens = [h]
    for l in range(n_blocks(params)):
        h = h + block(params, l, h)
        hiddens.append(h)
    return tuple(hiddens)


def forward(params, x):
    """``(logits, hiddens)`` of the forward pass."""
    hiddens = free_phase(params, x)
    return readout(params, hiddens[-1]), hiddens


def residuals(params, hiddens):
    """r_l = h_{l+1} - h_l - F_l(h_l), l = 0..L-1."""
    return tuple(hiddens[l + 1] - hiddens[l] - block(params, l, hiddens[l])
                 for l in range(len(hiddens) - 1))


def residual_energy(params, hiddens):
    """E = 1/2 sum_l ||h_{l+1} - h_l - F_l(h_l)||^2 per example, shape ``(batch,)``."""
    return sum(0.5 * jnp.sum(r * r, axis=-1) for r in residuals(params, hiddens))


def output_cost(params, h_L, y):
    """Softmax cross-entropy of the readout of h_L against integer labels ``y``: ``(batch,)``."""
    return READOUT(h_L, y, params)


# --- the energy -----------------------------------------------------------------------------

EMBEDDING_GRADIENTS = ("exact", "identity-path")
BATCH_SCALINGS = ("per-example", "batch-mean")


@dataclasses.dataclass(frozen=True)
class ResidualEnergy(Energy):
    """The residual energy over the state ``(h_1, ..., h_L)`` with h_0 = embed(x) (module docstring).

    Attributes:
      in_dim, d_hidden, n_classes, n_blocks: the ``ResidualMLP``.
      embedding_gradient: ``"exact"`` or ``"identity-path"`` (seed 004's, block 0's Jacobian
        dropped from the embedding's gradient; the energy's value is the same).
    """

    in_dim: int
    d_hidden: int
    n_classes: int
    n_blocks: int
    embedding_gradient: str = "exact"

    def __post_init__(self):
        for name in ("in_dim", "d_hidden", "n_classes", "n_blocks"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}: expected an int >= 1, received {v!r}")
        if self.embedding_gradient not in EMBEDDING_GRADIENTS:
            raise ValueError(
                f"embedding_gradient: expected one of {EMBEDDING_GRADIENTS}, received "
                f"{self.embedding_gradient!r}"
            )

    def init_params(self, key, dtype=jnp.float32):
        return init_residual_mlp(key, self.in_dim, self.d_hidden, self.n_classes, self.n_blocks,
                                 dtype)

    def state_shapes(self, batch: int, dtype):
        return tuple(jax.ShapeDtypeStruct((batch, self.d_hidden), dtype)
                     for _ in range(self.n_blocks))

    def check_params(self, params) -> None:
        want = {"embed", "out_ln", "head", *(f"block_{l}" for l in range(self.n_blocks))}
        if not isinstance(params, dict) or set(params) != want:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params: expected parts {sorted(want)}, received {got}")
        shape = jnp.shape(params["embed"]["kernel"])
        if shape != (self.in_dim, self.d_hidden):
            raise ValueError(
                f"params['embed']['kernel']: expected shape {(self.in_dim, self.d_hidden)}, "
                f"received {shape}"
            )

    def param_dtype(self, params):
        return jnp.result_type(params["embed"]["kernel"])

    def check_x(self, params, x) -> None:
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.in_dim:
            raise ValueError(f"x: expected shape (batch, {self.in_dim}), received {jnp.shape(x)}")
        super().check_x(params, x)

    def _embedded(self, params, h0):
        """E as a function of h_0 (for ``identity-path``, h_0 reaches block 0 without gradient)."""
        def energy(p, state):
            hs = (h0,) + tuple(state)
            r0_input = h0 if self.embedding_gradient == "exact" else jax.lax.stop_gradient(h0)
            r = [hs[1] - h0 - block(p, 0, r0_input)]
            r += [hs[l + 1] - hs[l] - block(p, l, hs[l]) for l in range(1, len(hs) - 1)]
            return sum(0.5 * jnp.sum(v * v, axis=-1) for v in r)

        return energy

    def __call__(self, params, state, x):
        return self._embedded(params, embed(params, x))(params, state)

    def input_drive(self, params, x):
        """h_0 = embed(x): computed once per training step, not once per nudged step."""
        return embed(params, x)

    def state_grad(self, params, state, x, *, drive=None, in_box=False):
        h0 = embed(params, x) if drive is None else drive
        energy = self._embedded(params, h0)
        return jax.grad(lambda s: jnp.sum(energy(params, s)))(tuple(state))

    def feedforward_state(self, params, x):
        """The forward pass (h_1, ..., h_L): the exact minimiser of E (E = 0)."""
        return free_phase(params, x)[1:]


INNER_OPTIMIZERS = {"sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
                    "adam": optax.adam}


@functools.lru_cache(maxsize=None)
def inner_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """One optax object per (name, rate), so equal configurations give equal (hashable) solvers."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(INNER_OPTIMIZERS)}, received {name!r}")
    return INNER_OPTIMIZERS[name](learning_rate)


class ResidualEP(NamedTuple):
    """Residual EP's settings, turned into the core's energy and phases (hashable).

    Attributes:
      beta: nudging strength (seed 004: 0.5).
      steps: inner-optimizer steps of the nudged phase (seed 004: 20), or the cap with ``tol``.
      learning_rate: the inner optimizer's rate (seed 004: SGD, 0.1).
      optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"`` (optax) on the states.
      tol: stop when the update norm ``max_b ||h_{t+1} - h_t||`` is ``<= tol``; ``None``: fixed
        ``steps``.
      embedding_gradient: ``"exact"`` or ``"identity-path"`` (see the module docstring).
      batch_scaling: ``"per-example"`` or ``"batch-mean"`` (see the module docstring).
      free_tol: the stationarity check of the free phase (the forward pass).
    """

    beta: float = 0.5
    steps: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    tol: Optional[float] = None
    embedding_gradient: str = "exact"
    batch_scaling: str = "per-example"
    free_tol: float = 1e-4

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta: expected > 0, received {self.beta}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps: expected an int >= 1, received {self.steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, received {self.learning_rate}")
        for name, allowed in (("embedding_gradient", EMBEDDING_GRADIENTS),
                              ("batch_scaling", BATCH_SCALINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, received {getattr(self, name)!r}")
        inner_optimizer(self.optimizer, self.learning_rate)

    def energy(self, in_dim: int, d_hidden: int, n_classes: int, n_blocks: int) -> ResidualEnergy:
        self.validate()
        return ResidualEnergy(in_dim, d_hidden, n_classes, n_blocks, self.embedding_gradient)

    def energy_of(self, params) -> ResidualEnergy:
        """The energy whose parameters ``params`` are."""
        d_in, d = params["embed"]["kernel"].shape
        return self.energy(int(d_in), int(d), int(params["head"]["kernel"].shape[1]),
                           n_blocks(params))

    def phases(self) -> Phases:
        """``Stationary`` free phase, ``OptaxSolver`` nudged phase, the readout cost."""
        self.validate()
        mean = self.batch_scaling == "batch-mean"
        nudged = OptaxSolver(inner_optimizer(self.optimizer, self.learning_rate), self.steps,
                             self.tol, reduction="mean" if mean else "sum")
        return Phases(self.beta, Stationary(self.free_tol), nudged, READOUT,
                      energy_grad_reduction="sum" if mean else "mean")


def _check_labels(y, batch: int) -> None:
    if jnp.ndim(y) != 1 or y.shape[0] != batch or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"y: expected integer labels of shape ({batch},), received {jnp.shape(y)} {y.dtype}"
        )


def nudged_phase(params, x, y, h_free, cfg: ResidualEP = ResidualEP()):
    """Minimises E + beta C over h_1..h_L from the free state ``h_free = (h_0, ..., h_L)``.

    Returns ``(hiddens, RelaxStats)`` with ``hiddens[0] is h_free[0]``.
    """
    h_free = tuple(h_free)
    _check_labels(y, h_free[0].shape[0])
    phases = cfg.phases()
    state, stats = relax(cfg.energy_of(params), params, x, h_free[1:], target=y, beta=cfg.beta,
                         cost=phases.cost, solver=phases.nudged, drive=h_free[0])
    return (h_free[0],) + tuple(state), stats


class ResidualEPResult(NamedTuple):
    """The phases behind a residual EP gradient (hiddens include h_0)."""

    free_state: tuple
    nudged_state: tuple
    nudged_stats: RelaxStats


def residual_ep_gradient(params, x, y, cfg: ResidualEP = ResidualEP()):
    """The ``ep`` rule on ``ResidualEnergy`` with ``cfg.phases()``: ``(grads, ResidualEPResult)``.

    ``grads`` has the tree of ``params`` and estimates d(mean CE)/dtheta.
    """
    energy = cfg.energy_of(params)
    energy.check_inputs(params, None, x)
    _check_labels(y, x.shape[0])
    grads, res = ep_gradient(energy, params, x, y, "feedforward", phases=cfg.phases())
    h0 = embed(params, x)
    return grads, ResidualEPResult((h0,) + res.free_state, (h0,) + res.nudged_state,
                                   res.nudged_stats)


def backprop_gradient(params, x, y):
    """d(mean CE)/dtheta by backprop through the forward pass (the ``backprop`` rule)."""
    energy = ResidualEP().energy_of(params)
    grads, _ = rules.backprop_gradient(energy, params, x, y, phases=ResidualEP().phases())
    return grads


def residual_part_rates(n_blocks: int, learning_rate: float,
                        overrides: Optional[dict] = None) -> dict:
    """Seed 004's parts ``embed``, ``block_l``, ``head`` (with the output LayerNorm) at one rate,
    ``overrides`` replacing any of them (e.g. ``{"head": 3e-3}``)."""
    rates = dict.fromkeys(["embed", "head"] + [f"block_{l}" for l in range(n_blocks)],
                          float(learning_rate))
    for k, v in (overrides or {}).items():
        if k not in rates:
            raise ValueError(f"part_rates: expected keys among {sorted(rates)}, received {k!r}")
        rates[k] = float(v)
    return rates


PART_GROUPS = {"out_ln": "head"}  # seed 004 trains the output LayerNorm with the head


def residual_optimizer(
    n_blocks: int,
    learning_rate: float = 1e-3,
    *,
    weight_decay: float = 0.01,
    schedule: str = "cosine",
    total_steps: int = 0,
    grad_clip: Optional[float] = 1.0,
    part_rates: Optional[dict] = None,
) -> optax.GradientTransformation:
    """Seed 004's optimizers (``make_optimizer``): global-norm clipping, then one AdamW per part

        g <- g * min(1, grad_clip / ||g||);   theta_part <- AdamW(g_part; eta_t, weight_decay)

    for part in embed, block_l, head (+ output LayerNorm); ``part_rates`` overrides eta per part.
    The seed steps torch's CosineAnnealingLR once per epoch, a staircase of the same curve.
    """
    return make_optimizer("adamw", residual_part_rates(n_blocks, learning_rate, part_rates),
                          schedule=schedule, total_steps=total_steps, grad_clip=grad_clip,
                          weight_decay=weight_decay, groups=PART_GROUPS)


def residual_learner(
    in_dim: int,
    d_hidden: int,
    n_classes: int,
    n_blocks: int,
    *,
    method: str = "ep",
    ep: ResidualEP = ResidualEP(),
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    schedule: str = "cosine",
    total_steps: int = 0,
    grad_clip: Optional[float] = 1.0,
    preprocess=None,
    credit: bool = True,
):
    """Residual EP (``method="ep"``) or its BP twin (``"bp"``) as an ``EPLearner``:

        energy = ResidualEnergy, phases = ep.phases() (Stationary free phase, OptaxSolver
        nudged phase, SoftmaxReadout cost), rule = "ep" | backprop_gradient,
        tx = residual_optimizer (clip + AdamW per part), credit diagnostics at every evaluation.
    """
    from ep_jax.credit import credit_diagnostics
    from ep_jax.learner import EPLearner

    if method not in ("ep", "bp"):
        raise ValueError(f"method: expected 'ep' or 'bp', received {method!r}")
    phases = ep.phases()
    tx = residual_optimizer(n_blocks, learning_rate, weight_decay=weight_decay, schedule=schedule,
                            total_steps=total_steps, grad_clip=grad_clip)
    diagnostics = None
    if credit:
        diagnostics = functools.partial(_credit, cfg=ep, credit_diagnostics=credit_diagnostics)
    return EPLearner(
        energy=ep.energy(in_dim, d_hidden, n_classes, n_blocks),
        rule="ep" if method == "ep" else rules.backprop_gradient,
        phases=phases, tx=tx, eval_solver=phases.free, persistent=False,
        state_init="feedforward", preprocess=preprocess, diagnostics_fn=diagnostics,
    )


def _credit(params, x, y, key, *, cfg, credit_diagnostics):
    return credit_diagnostics(params, x, y, key, cfg)

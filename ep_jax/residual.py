"""Feed-forward residual EP (seed 004): a residual MLP whose free phase is its forward pass.

Model (``ResidualMLP``, Flax)::

    h_0 = embed(x) = x W_e + b_e
    h_{l+1} = h_l + F_l(h_l),   F_l(h) = Dense_2(gelu(Dense_1(LayerNorm(h))))   (l = 0..L-1)
    logits = head(LayerNorm_out(h_L))

Pre-norm blocks of width ``d`` (``d -> d -> d``, exact erf GELU, LayerNorm eps 1e-5 as torch's),
so the port of seed 004's missing ``ResidualMLP`` in ``tests/reference/seed004.py`` is the same
function. Energy and cost::

    E(h) = 1/2 sum_{l=0}^{L-1} ||h_{l+1} - h_l - F_l(h_l)||^2 = 1/2 sum_l ||r_l||^2,
    C(h_L, y) = -log softmax(head(LayerNorm_out(h_L)))_y.

E >= 0 and E = 0 exactly at the forward pass, so the free phase is the forward pass. The nudged
phase minimises ``E + beta C`` over ``h_1 .. h_L`` (``h_0`` fixed) with an optax optimizer inside
a ``lax.fori_loop`` (or a ``while_loop`` with a tolerance), warm-started at the free state.

Gradient (``residual_ep_gradient``), with s^beta the nudged and s^0 the free states:

    g = [ dE/dtheta(s^beta) - dE/dtheta(s^0) ] / beta + dC/dtheta_out(s^beta_L)

For a block, dE/dtheta_l = -r_l . dF_l/dtheta_l. For the embedding there are two options:

* ``embed_grad="exact"`` (default): E seen as a function of theta_e through h_0 = embed(x), so
  dE/dtheta_e = (dE/dh_0) dh_0/dtheta_e with dE/dh_0 = -(I + dF_0/dh_0)^T r_0. This is the EP
  estimator of the whole parameter vector; as beta -> 0 (with the nudged phase converged) g is
  exactly the backprop gradient of the mean cross-entropy (``tests/test_residual.py``). It costs
  one extra VJP through block 0.
* ``embed_grad="seed004"``: the seed's approximation -r_0 . dh_0/dtheta_e, which drops the
  Jacobian of the first block.

Batch scaling: ``batch_scaling="per-example"`` (default) minimises the *sum* over the batch of
E + beta C in the nudged phase (each example's state takes steps of ``learning_rate``,
independent of the batch size) and averages the gradient over the batch.
``batch_scaling="seed004"`` reproduces the seed: the inner objective is the batch *mean* (each
example moves by ``learning_rate / B`` per step, so 20 steps at B = 128 barely leave the free
state, and the signal reaches block l only as (lr/B)^(L-l)), while the block and embedding
gradients are *summed* over the batch; the head gradient is the batch mean in both modes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ep_jax.solvers import RelaxStats, iterate

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


def readout(params, h_L):
    """Logits head(LayerNorm_out(h_L))."""
    z = nn.LayerNorm(epsilon=LN_EPS).apply({"params": params["out_ln"]}, h_L)
    p = params["head"]
    return z @ p["kernel"] + p["bias"]


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
    logits = readout(params, h_L)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


# --- phases -----------------------------------------------------------------------------------

INNER_OPTIMIZERS = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
EMBED_GRADS = ("exact", "seed004")
BATCH_SCALINGS = ("per-example", "seed004")


class ResidualEP(NamedTuple):
    """Configuration of residual EP (hashable: a static argument of ``jax.jit``).

    Attributes:
      beta: nudging strength (seed 004: 0.5).
      steps: inner-optimizer steps of the nudged phase (seed 004: 20), or the cap with ``tol``.
      learning_rate: the inner optimizer's rate (seed 004: SGD, 0.1).
      optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"`` (optax) on the states.
      tol: stop when the update norm ``max_b ||h_{t+1} - h_t||`` is ``<= tol``; ``None``: fixed
        ``steps``.
      embed_grad: ``"exact"`` or ``"seed004"`` (see the module docstring).
      batch_scaling: ``"per-example"`` or ``"seed004"`` (see the module docstring).
    """

    beta: float = 0.5
    steps: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    tol: Optional[float] = None
    embed_grad: str = "exact"
    batch_scaling: str = "per-example"

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta: expected > 0, received {self.beta}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps: expected an int >= 1, received {self.steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, received {self.learning_rate}")
        for name, allowed in (("optimizer", tuple(INNER_OPTIMIZERS)), ("embed_grad", EMBED_GRADS),
                              ("batch_scaling", BATCH_SCALINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, received {getattr(self, name)!r}")


def _check_labels(params, y, batch: int) -> None:
    if jnp.ndim(y) != 1 or y.shape[0] != batch or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"y: expected integer labels of shape ({batch},), received {jnp.shape(y)} {y.dtype}"
        )


def nudged_phase(params, y, h_free, cfg: ResidualEP = ResidualEP()):
    """Minimises E + beta C over h_1..h_L (h_0 fixed) from the free state with an optax optimizer.

    Returns ``(hiddens, RelaxStats)``: ``hiddens[0] is h_free[0]``; ``stats.energy`` is the batch
    mean of E + beta C at the returned state, ``stats.residual`` the last update norm.
    """
    cfg.validate()
    h_free = tuple(h_free)
    _check_labels(params, y, h_free[0].shape[0])
    h0, dtype = h_free[0], h_free[0].dtype
    beta = jnp.asarray(cfg.beta, dtype)
    mean = cfg.batch_scaling == "seed004"

    def per_example(upper):
        full = (h0,) + upper
        return residual_energy(params, full) + beta * output_cost(params, upper[-1], y)

    def objective(upper):
        f = per_example(upper)
        return jnp.mean(f) if mean else jnp.sum(f)

    tx = INNER_OPTIMIZERS[cfg.optimizer](cfg.learning_rate)
    grad = jax.grad(objective)

    def step(carry):
        hs, opt_state = carry
        updates, opt_state = tx.update(grad(hs), opt_state, hs)
        return optax.apply_updates(hs, updates), opt_state

    upper0 = h_free[1:]
    (upper, _), steps, residual, nonfinite, converged = iterate(
        step, (upper0, tx.init(upper0)), cfg.steps, cfg.tol, state_of=lambda c: c[0]
    )
    stats = RelaxStats(steps, residual, jnp.mean(per_example(upper)), converged, nonfinite)
    return (h0,) + tuple(upper), stats


class ResidualEPResult(NamedTuple):
    """The phases behind a residual EP gradient."""

    free_state: tuple
    nudged_state: tuple
    nudged_stats: RelaxStats


def _energy_with_embedding(params, x, upper):
    """sum_b E with h_0 = embed(x): E as a function of every parameter, embedding included."""
    return jnp.sum(residual_energy(params, (embed(params, x),) + tuple(upper)))


def _energy_fixed_h0(params, h0, upper):
    return jnp.sum(residual_energy(params, (h0,) + tuple(upper)))


def residual_ep_gradient(params, x, y, cfg: ResidualEP = ResidualEP()):
    """EP gradient of residual EP: free phase = forward pass, nudged phase, EP difference.

    Returns ``(grads, ResidualEPResult)``; ``grads`` has the tree of ``params`` and is what
    optax descends (it estimates d(mean CE)/dtheta). See the module docstring for the equations.
    """
    cfg.validate()
    check_input(params, x)
    _check_labels(params, y, x.shape[0])
    h_free = free_phase(params, x)
    h_nudged, stats = nudged_phase(params, y, h_free, cfg)
    dtype = x.dtype
    beta = jnp.asarray(cfg.beta, dtype)
    # Block (and exact embedding) terms: one gradient of the energy difference.
    scale = (1.0 if cfg.batch_scaling == "seed004" else 1.0 / x.shape[0]) / beta
    if cfg.embed_grad == "exact":
        diff = lambda p: (_energy_with_embedding(p, x, h_nudged[1:])
                          - _energy_with_embedding(p, x, h_free[1:]))
    else:
        diff = lambda p: (_energy_fixed_h0(p, h_free[0], h_nudged[1:])
                          - _energy_fixed_h0(p, h_free[0], h_free[1:]))
    grads = jax.tree.map(lambda g: scale * g, jax.grad(diff)(params))
    if cfg.embed_grad == "seed004":
        # The seed's -r_0 . dh_0/dtheta_e (the Jacobian of block 0 dropped).
        r0_n = residuals(params, h_nudged)[0]
        r0_f = residuals(params, h_free)[0]
        _, vjp = jax.vjp(lambda pe: embed({"embed": pe}, x), params["embed"])
        (grads["embed"],) = jax.tree.map(lambda g: scale * g, vjp(-(r0_n - r0_f)))
    # Head and output LayerNorm: dE/dtheta_out = 0, so the EP difference is dC/dtheta_out at s^beta.
    head = jax.grad(lambda p: jnp.mean(output_cost(p, h_nudged[-1], y)))(
        {"out_ln": params["out_ln"], "head": params["head"]}
    )
    grads["out_ln"], grads["head"] = head["out_ln"], head["head"]
    return grads, ResidualEPResult(h_free, h_nudged, stats)


def backprop_gradient(params, x, y):
    """d(mean CE)/dtheta by backprop through the forward pass (the BP twin and the reference)."""
    def loss(p):
        logits, _ = forward(p, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return jax.grad(loss)(params)


# --- optimizer ---------------------------------------------------------------------------------


def part_labels(params) -> dict:
    """``embed``, ``block_l`` and ``head`` (the head with the output LayerNorm): seed 004's parts."""
    return {k: jax.tree.map(lambda _, k=k: "head" if k == "out_ln" else k, v)
            for k, v in params.items()}


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
    """Seed 004's optimizers: global-norm clipping, then one AdamW per part.

        g <- g * min(1, grad_clip / ||g||)       (over all parameters, torch's clip_grad_norm_)
        theta_part <- AdamW(g_part; eta_t, weight_decay)  for part in embed, block_l, head

    ``eta_t = eta (1 + cos(pi t / T)) / 2`` over ``T = total_steps`` optimizer steps
    (``schedule="cosine"``; the seed steps torch's CosineAnnealingLR once per epoch, a
    staircase of the same curve). ``part_rates`` overrides eta per part (e.g. ``{"head": 3e-3}``).
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule: expected 'constant' or 'cosine', received {schedule!r}")
    if schedule == "cosine" and total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1 with a cosine schedule, received {total_steps}")
    parts = ["embed", "head"] + [f"block_{l}" for l in range(n_blocks)]
    rates = dict.fromkeys(parts, float(learning_rate))
    for k, v in (part_rates or {}).items():
        if k not in rates:
            raise ValueError(f"part_rates: expected keys among {parts}, received {k!r}")
        rates[k] = float(v)

    def make(rate):
        lr = optax.cosine_decay_schedule(rate, total_steps) if schedule == "cosine" else rate
        return optax.adamw(lr, weight_decay=weight_decay)

    tx = optax.multi_transform({k: make(r) for k, r in rates.items()}, part_labels)
    if grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx

"""Credit diagnostics of residual EP (seed 004): does the nudged phase carry the backprop signal?

With r_l = h_{l+1} - h_l - F_l(h_l) the residuals at the nudged state, stationarity of
E + beta C gives r_{L-1} = -beta dC/dh_L and r_{l-1} = (I + dF_l/dh_l)^T r_l: the residuals
are beta times the backprop adjoints along the nudged states. So the library's EP credit is

    a_l = -r_{l-1} / beta   (l = 1..L),      a_0 = (I + dF_0/dh_0)^T a_1 = (dE/dh_0) / beta,

which equals delta_l = dL/dh_l (per example) as beta -> 0 once the nudged phase has converged.
Seed 004 instead takes the state displacement -(h^beta_l - h^0_l) / beta as the credit. The
displacement accumulates every credit below it pushed forward through the blocks
(h^beta_{l} - h^0_{l} ~ sum_{k<l} J_{l-1}...J_{k+1} r_k), so it is *not* delta_l beyond the first
block (for a linear chain it is -(I + J J^T) delta_2 at layer 2), and it is zero at h_0. Both are
reported:

* ``gamma[l]``: mean over the batch of cos(a_l, dL/dh_l), l = 0..L;
* ``gamma_batch[l]``: the cosine of the whole batch's credit with the batch's backprop gradient
  (the (B, d) arrays flattened), i.e. examples weighted by their gradient norm, as they weigh in
  the parameter update. On a trained net in float32 the per-example mean ``gamma`` is dragged down
  by confident examples: their nudge beta * dC/dh (|dC/dh_L| < ~1e-5) is below the float32
  resolution of states of size ~1, so their per-example cosines are rounding noise, while
  ``gamma_batch`` is the same in float32 and float64 (benchmarks/results/residual_mnist10k.md);
* ``gamma_displacement[l]``: the seed's Gamma, cos(-(h^beta_l - h^0_l)/beta, dL/dh_l), l = 0..L-1;
* ``rho[l]`` / ``rho_displacement[l]``: perturbation correlation of the credit: for M random
  perturbations delta of norm epsilon at h_l (forward pass), the Pearson correlation over the M
  draws between the predicted change <a_l, delta> and the actual change of the example's loss
  (forwarded through blocks l..L-1), averaged over the batch;
  the loss change is computed without cancellation (``cross_entropy_change``);
* ``naive_state_error``: seed 004's mean_b ||h_{L//2} - h_L|| / ||h_L|| on the forward pass (as
  intended; see ``naive_state_error``).

``dL/dh_l`` is the backprop adjoint of the batch-mean cross-entropy (seed 004's ``loss``); the
cosines and correlations do not see its 1/B factor.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ep_jax.residual import (
    ResidualEP,
    block,
    check_input,
    embed,
    free_phase,
    nudged_phase,
    readout,
    residuals,
)
from ep_jax.solvers import RelaxStats


def cosine_similarity_batch(a, b, eps: float = 1e-8):
    """Mean over the batch of a_b . b_b / (max(||a_b||, eps) max(||b_b||, eps))."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return jnp.mean(jnp.sum(a * b, axis=-1) / (na * nb))


def _logits_from(params, l: int):
    """Logits as a function of h_l (forwarded through blocks l..L-1)."""
    L = sum(1 for k in params if k.startswith("block_"))

    def f(h):
        for i in range(l, L):
            h = h + block(params, i, h)
        return readout(params, h)

    return f


def _loss_from(params, l: int, y):
    """Per-example cross-entropy as a function of h_l."""
    logits = _logits_from(params, l)
    return lambda h: optax.softmax_cross_entropy_with_integer_labels(logits(h), y)


def cross_entropy_change(logits_fn, y):
    """``(h, h') -> CE(h') - CE(h)`` per example, without cancellation.

    With z = logits(h), dz = logits(h') - z and p = softmax(z):
    CE(h') - CE(h) = log1p(sum_k p_k expm1(dz_k)) - dz_y. Subtracting two cross-entropies
    instead loses everything in float32 once the net is confident (CE ~ 1e-6 is computed as
    logsumexp(z) - z_y with z ~ 10, an absolute error ~ 1e-6, while an epsilon = 1e-3
    perturbation changes it by ~ 1e-9).
    """
    def change(h, h_new):
        z = logits_fn(h)
        dz = logits_fn(h_new) - z
        p = jax.nn.softmax(z, axis=-1)
        lse = jnp.log1p(jnp.sum(p * jnp.expm1(dz), axis=-1))
        return lse - jnp.take_along_axis(dz, y[:, None], axis=-1)[:, 0]

    return change


def state_gradients(params, x, y):
    """dL/dh_l, l = 0..L, L = mean cross-entropy, along the forward pass (backprop adjoints)."""
    check_input(params, x)
    L = sum(1 for k in params if k.startswith("block_"))

    def loss(zs):
        # h_l + z_l with z = 0: the gradient in z_l is the adjoint of h_l.
        h = embed(params, x) + zs[0]
        for l in range(L):
            h = h + block(params, l, h) + zs[l + 1]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(readout(params, h), y))

    d = params["embed"]["kernel"].shape[1]
    zeros = tuple(jnp.zeros((x.shape[0], d), x.dtype) for _ in range(L + 1))
    return tuple(jax.grad(loss)(zeros))


def displacement_credits(h_free, h_nudged, beta):
    """Seed 004's credit -(h^beta_l - h^0_l) / beta, l = 0..L (layer 0 is zero: h_0 is fixed)."""
    return tuple(-(n - f) / beta for f, n in zip(h_free, h_nudged))


def residual_credits(params, h_nudged, beta):
    """The library's credit a_l = -r_{l-1}/beta (l >= 1) and a_0 = (I + dF_0/dh_0)^T a_1."""
    a = [-r / beta for r in residuals(params, h_nudged)]
    _, vjp = jax.vjp(lambda h: h + block(params, 0, h), h_nudged[0])
    return (vjp(a[0])[0], *a)


def perturbation_correlation(
    h, a, loss_fn: Optional[Callable], key, *, epsilon: float = 1e-3, M: int = 16,
    deltas: Optional[jax.Array] = None, loss_change: Optional[Callable] = None,
):
    """Mean over the batch of corr_m(<a, delta_m>, loss(h + delta_m) - loss(h)).

    ``delta_m = epsilon u_m / ||u_m||`` per example with ``u_m ~ N(0, I)`` (or the given
    ``deltas``, shape ``(M, batch, d)``); Pearson correlation over the M draws. The change is
    ``loss_fn(h + delta) - loss_fn(h)`` (seed 004), or ``loss_change(h, h + delta)`` when given
    (e.g. ``cross_entropy_change``, accurate in float32).
    """
    if deltas is None:
        u = jax.random.normal(key, (M,) + h.shape, h.dtype)
        deltas = epsilon * u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    pred = jnp.sum(a[None] * deltas, axis=-1)  # (M, B)
    if loss_change is not None:
        actual = jax.vmap(lambda d: loss_change(h, h + d))(deltas)
    else:
        actual = jax.vmap(loss_fn)(h[None] + deltas) - loss_fn(h)[None]
    pc, qc = pred - pred.mean(0), actual - actual.mean(0)
    # No additive guard: the changes are ~ epsilon * |dL/dh| / B, far below any fixed floor.
    denom = jnp.sqrt(jnp.sum(pc * pc, 0) * jnp.sum(qc * qc, 0))
    corr = jnp.where(denom > 0, jnp.sum(pc * qc, 0) / jnp.where(denom > 0, denom, 1), 0)
    return jnp.mean(corr)


def naive_state_error(hiddens):
    """Seed 004's naive state error as intended: mean_b ||h_{L//2} - h_L|| / max(||h_L||, 1e-8).

    The seed writes ``.norm(-1)``, which torch reads as the order p = -1 over the whole tensor,
    not a per-example norm along the last axis; the library computes the per-example formula
    (``tests/test_seed004.py`` pins both).
    """
    L = len(hiddens) - 1
    num = jnp.linalg.norm(hiddens[L // 2] - hiddens[-1], axis=-1)
    return jnp.mean(num / jnp.maximum(jnp.linalg.norm(hiddens[-1], axis=-1), 1e-8))


class CreditReport(NamedTuple):
    """Per-layer credit diagnostics (see the module docstring)."""

    gamma: jax.Array  # (L+1,)
    gamma_batch: jax.Array  # (L+1,)
    rho: jax.Array  # (L+1,)
    gamma_displacement: jax.Array  # (L,), seed 004's Gamma
    rho_displacement: jax.Array  # (L,), seed 004's rho
    naive_state_error: jax.Array  # ()
    nudged_stats: RelaxStats

    def to_dict(self) -> dict:
        """JSON-ready floats and lists (``Gamma``/``rho`` are the layer means, as in seed 004)."""
        f = lambda a: [float(v) for v in a]
        return {
            "Gamma": float(jnp.mean(self.gamma)), "rho": float(jnp.mean(self.rho)),
            "gamma_per_layer": f(self.gamma), "rho_per_layer": f(self.rho),
            "gamma_batch_per_layer": f(self.gamma_batch),
            "Gamma_displacement": float(jnp.mean(self.gamma_displacement)),
            "rho_displacement": float(jnp.mean(self.rho_displacement)),
            "gamma_displacement_per_layer": f(self.gamma_displacement),
            "rho_displacement_per_layer": f(self.rho_displacement),
            "naive_state_error": float(self.naive_state_error),
            "nudged_steps": int(self.nudged_stats.steps),
            "nudged_residual": float(self.nudged_stats.residual),
        }


def credit_diagnostics(
    params, x, y, key, cfg: ResidualEP = ResidualEP(), *, M: int = 16, epsilon: float = 1e-3,
    accurate_loss_change: bool = True,
) -> CreditReport:
    """Gamma, rho (library and seed-004 credits) and the naive state error on one batch.

    ``accurate_loss_change=False`` measures rho's loss change as seed 004 does, by subtracting
    two cross-entropies (noise-dominated in float32 on a trained net; see
    ``cross_entropy_change``).
    """
    h_free = free_phase(params, x)
    h_nudged, stats = nudged_phase(params, x, y, h_free, cfg)
    bp = state_gradients(params, x, y)
    beta = jnp.asarray(cfg.beta, x.dtype)
    res = residual_credits(params, h_nudged, beta)
    disp = displacement_credits(h_free, h_nudged, beta)[:-1]
    L = len(h_free) - 1
    gamma = jnp.stack([cosine_similarity_batch(a, b) for a, b in zip(res, bp)])
    gamma_b = jnp.stack([cosine_similarity_batch(a.reshape(1, -1), b.reshape(1, -1))
                         for a, b in zip(res, bp)])
    gamma_d = jnp.stack([cosine_similarity_batch(a, b) for a, b in zip(disp, bp)])
    keys = jax.random.split(key, L + 1)
    # The same perturbations for both credits of a layer, so their rho differ only by the credit.
    def rho_of(credits, l):
        change = cross_entropy_change(_logits_from(params, l), y) if accurate_loss_change else None
        return perturbation_correlation(h_free[l], credits[l], _loss_from(params, l, y), keys[l],
                                        epsilon=epsilon, M=M, loss_change=change)

    rho = jnp.stack([rho_of(res, l) for l in range(L + 1)])
    rho_d = jnp.stack([rho_of(disp, l) for l in range(L)])
    return CreditReport(gamma, gamma_b, rho, gamma_d, rho_d, naive_state_error(h_free), stats)

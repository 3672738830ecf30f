"""Residual EP (seed 004): energy, phases, exactness of the gradient and of the credit, learner.

Exactness is checked in float64 against backprop (the forward pass is the free equilibrium, so
BP through it is the exact gradient of the mean cross-entropy). Parity with the seed's PyTorch
code is in tests/test_seed004.py.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.credit import credit_diagnostics, state_gradients
from ep_jax.residual import (
    ResidualEP,
    backprop_gradient,
    forward,
    free_phase,
    init_residual_mlp,
    nudged_phase,
    output_cost,
    residual_energy,
    residual_ep_gradient,
    residual_optimizer,
)
from ep_jax.preprocess import crop_flip
from ep_jax.residual import residual_learner

# Converged nudged phase: heavy-ball SGD on the states to a tight tolerance (plain SGD at 0.1
# needs ~4000 steps on these nets, momentum ~500).
CONVERGED = dict(steps=20000, learning_rate=0.05, optimizer="momentum", tol=1e-13)


def _net(dtype=jnp.float64, d=16, L=3, in_dim=12, n_classes=5, B=8, seed=0):
    params = init_residual_mlp(jax.random.PRNGKey(seed), in_dim, d, n_classes, L, dtype)
    x = jax.random.normal(jax.random.PRNGKey(seed + 100), (B, in_dim), dtype)
    y = jnp.arange(B, dtype=jnp.int32) % n_classes
    return params, x, y


def _flat(tree):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])


def _rel(a, b):
    fa, fb = _flat(a), _flat(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def test_free_phase_is_the_forward_pass_and_the_energy_minimum():
    params, x, y = _net()
    logits, hiddens = jax.jit(forward)(params, x)
    assert len(hiddens) == 4 and logits.shape == (8, 5)
    assert float(jnp.max(residual_energy(params, hiddens))) < 1e-28
    # Any other state has a higher energy.
    moved = hiddens[:2] + (hiddens[2] + 0.1,) + hiddens[3:]
    assert float(jnp.min(residual_energy(params, moved))) > 0


def test_nudged_phase_lowers_the_total_energy_and_keeps_h0():
    params, x, y = _net()
    h_free = jax.jit(free_phase)(params, x)
    cfg = ResidualEP(beta=0.5)
    h_n, stats = jax.jit(nudged_phase, static_argnums=4)(params, x, y, h_free, cfg)
    assert bool(jnp.array_equal(h_n[0], h_free[0]))
    f_free = jnp.mean(0.5 * output_cost(params, h_free[-1], y))
    assert float(stats.energy) < float(f_free)
    # A fixed number of steps checks no tolerance: not "converged" (only finite and bounded).
    assert int(stats.steps) == 20 and not bool(stats.converged) and not bool(stats.nonfinite)
    assert not bool(stats.unbounded)
    # With a tolerance the loop stops early and reports convergence.
    h_c, st = jax.jit(nudged_phase, static_argnums=4)(params, x, y, h_free,
                                                      ResidualEP(beta=0.5, **CONVERGED))
    assert bool(st.converged) and int(st.steps) < 20000 and float(st.residual) <= 1e-13


def test_nudged_phase_reports_divergence():
    params, x, y = _net()
    _, stats = jax.jit(nudged_phase, static_argnums=4)(
        params, x, y, free_phase(params, x), ResidualEP(learning_rate=1e6, steps=50))
    assert bool(stats.nonfinite) and not bool(stats.converged)


@pytest.mark.parametrize("seed,L", [(0, 3), (1, 4)])
def test_ep_gradient_is_the_backprop_gradient_as_beta_vanishes(seed, L):
    params, x, y = _net(seed=seed, L=L)
    exact = backprop_gradient(params, x, y)
    errs = []
    for beta in (1e-2, 1e-3):
        g, res = jax.jit(lambda p, x, y, b=beta: residual_ep_gradient(
            p, x, y, ResidualEP(beta=b, **CONVERGED)))(params, x, y)
        assert bool(res.nudged_stats.converged)
        errs.append(_rel(g, exact))
    assert errs[1] < 5e-3, errs  # first order in beta
    assert errs[1] < errs[0] / 5, errs


def test_seed004_embedding_gradient_is_an_approximation():
    """The seed drops the first block's Jacobian in the embedding update; the blocks agree."""
    params, x, y = _net()
    exact = backprop_gradient(params, x, y)
    cfg = ResidualEP(beta=1e-3, **CONVERGED)
    grad = jax.jit(residual_ep_gradient, static_argnums=3)
    g_exact, _ = grad(params, x, y, cfg)
    g_seed, _ = grad(params, x, y, cfg._replace(embedding_gradient="identity-path"))
    assert _rel(g_exact["embed"], exact["embed"]) < 5e-3
    assert _rel(g_seed["embed"], exact["embed"]) > 0.1
    for k in params:
        if k != "embed":
            assert _rel(g_seed[k], g_exact[k]) < 1e-12, k


def test_gamma_and_rho_reach_one_at_small_beta_for_every_layer():
    """Issue 5's target: Gamma_l > 0.99 for every layer on a random net (beta 1e-3, float64)."""
    for seed, L in ((0, 3), (1, 4)):
        params, x, y = _net(seed=seed, L=L, d=32)
        rep = jax.jit(credit_diagnostics, static_argnums=4)(
            params, x, y, jax.random.PRNGKey(3), ResidualEP(beta=1e-3, **CONVERGED))
        assert rep.gamma.shape == (L + 1,) and rep.rho.shape == (L + 1,)
        assert float(jnp.min(rep.gamma)) > 0.99, rep.gamma
        assert float(jnp.min(rep.rho)) > 0.99, rep.rho
        assert float(jnp.min(rep.gamma_batch)) > 0.99, rep.gamma_batch
        # Seed 004's displacement credit is exact only at h_1 (and zero at h_0): it accumulates
        # the credits of the layers below. Documented difference.
        assert float(rep.gamma_displacement[0]) == 0.0
        assert float(rep.gamma_displacement[1]) > 0.999
        assert float(jnp.min(rep.gamma_displacement[2:])) < 0.99, rep.gamma_displacement


def test_state_gradients_are_backprop_adjoints():
    params, x, y = _net()
    bp = state_gradients(params, x, y)
    hs = free_phase(params, x)
    # Finite difference of the loss along a random direction at h_2.
    from ep_jax.credit import _loss_from

    v = jax.random.normal(jax.random.PRNGKey(5), hs[2].shape, hs[2].dtype)
    f = lambda t: jnp.mean(_loss_from(params, 2, y)(hs[2] + t * v))
    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    assert abs(float(fd - jnp.sum(bp[2] * v))) < 1e-8


def test_per_example_scaling_does_not_depend_on_the_batch():
    params, x, y = _net()
    grad = jax.jit(residual_ep_gradient)  # default ResidualEP(): per-example scaling
    _, r1 = grad(params, x[:4], y[:4])
    g2, r2 = grad(params, x, y)
    assert max(float(jnp.max(jnp.abs(a - b[:4])))
               for a, b in zip(r1.nudged_state, r2.nudged_state)) < 1e-12
    g1, _ = grad(params, jnp.tile(x, (2, 1)), jnp.tile(y, 2))
    assert _rel(g1, g2) < 1e-12  # a duplicated batch is the same batch


def test_bad_inputs_name_the_argument():
    params, x, y = _net()
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 12\)"):
        residual_ep_gradient(params, x[:, :5], y)
    with pytest.raises(ValueError, match="y: expected integer labels"):
        residual_ep_gradient(params, x, y.astype(jnp.float64))
    with pytest.raises(ValueError, match="beta: expected > 0"):
        residual_ep_gradient(params, x, y, ResidualEP(beta=0.0))
    with pytest.raises(ValueError, match="embedding_gradient: expected one of"):
        residual_ep_gradient(params, x, y, ResidualEP(embedding_gradient="bogus"))
    with pytest.raises(ValueError, match="n_blocks: expected an int >= 1"):
        init_residual_mlp(jax.random.PRNGKey(0), 4, 4, 2, 0)


def test_float32_strict_promotion_and_jit():
    params, x, y = _net(dtype=jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        g, res = jax.jit(residual_ep_gradient)(params, x, y)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_residual_optimizer_is_seed004s_clip_then_adamw_per_part():
    params, x, y = _net(dtype=jnp.float32)
    g = backprop_gradient(params, x, y)
    g = jax.tree.map(lambda a: 50 * a, g)  # large enough to be clipped
    def first_update(tx):
        return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(g, params)

    u = first_update(residual_optimizer(3, 1e-3, weight_decay=0.01, schedule="constant"))
    r = first_update(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.01)))
    assert _rel(u, r) < 1e-6
    u2 = first_update(residual_optimizer(3, 1e-3, weight_decay=0.01, schedule="constant",
                                         part_rates={"head": 2e-3}))
    assert _rel(u2["head"], jax.tree.map(lambda a: 2 * a, u["head"])) < 1e-5
    assert _rel(u2["out_ln"], jax.tree.map(lambda a: 2 * a, u["out_ln"])) < 1e-5
    assert _rel(u2["block_0"], u["block_0"]) == 0.0
    with pytest.raises(ValueError, match="part_rates"):
        residual_optimizer(3, schedule="constant", part_rates={"block_9": 1.0})


def test_crop_flip_is_a_padded_crop_or_its_mirror():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((6, 8 * 8 * 3)), jnp.float32)
    out = np.asarray(crop_flip(x, jax.random.PRNGKey(1), (8, 8, 3), pad=2))
    imgs = np.pad(np.asarray(x).reshape(6, 8, 8, 3), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for b in range(6):
        o = out[b].reshape(8, 8, 3)
        cands = [imgs[b, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(np.array_equal(o, c) or np.array_equal(o[:, ::-1], c) for c in cands)


def _small_cfg(**kw):
    from ep_jax.app.config import get_preset

    base = dict(dataset="digits", epochs=2, hidden=(32,), n_blocks=2, batch_size=32,
                credit_batch=16, log_every=2, checkpoint_every=1)
    base.update(kw)
    return get_preset("residual-mnist10k").with_overrides(**base)


def test_learner_step_is_deterministic_and_trains():
    learner = residual_learner(in_dim=12, d_hidden=16, n_classes=5, n_blocks=2, total_steps=100)
    params, x, y = _net(dtype=jnp.float32)
    state = learner.init(jax.random.PRNGKey(0), 0)
    step = jax.jit(learner.train_step)
    key = jax.random.PRNGKey(1)
    s1, m1 = step(state, x, y, None, key)
    s2, m2 = step(state, x, y, None, key)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)))
    s = state
    for i in range(60):
        s, m = step(s, x, y, None, jax.random.fold_in(key, i))
    assert float(m["cost"]) < 0.5 * float(m1["cost"])


def test_train_writes_credit_block_and_cli_credit(tmp_path, capsys):
    from ep_jax.app.cli import main
    from ep_jax.app.train import train

    out = tmp_path / "run"
    summary = train(_small_cfg(), out_dir=out, quiet=True)
    credit = summary["credit"]
    assert len(credit["gamma_per_layer"]) == 3 and len(credit["rho_per_layer"]) == 3
    assert len(credit["gamma_displacement_per_layer"]) == 2
    assert summary["rule"] == "residual-ep" and 0 <= summary["test_error"] < 0.5
    saved = json.loads((out / "summary.json").read_text())
    assert saved["credit"] == credit
    assert (out / "credit.png").exists() and (out / "weights.png").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("credit" in r for r in rows)

    assert main(["credit", "--checkpoint", str(out), "--batch", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["batch"] == 8 and len(printed["gamma_per_layer"]) == 3
    assert main(["credit", "--checkpoint", str(out), "--random-targets"]) == 0
    assert json.loads(capsys.readouterr().out)["random_targets"] is True


def test_bp_twin_and_random_targets_control(tmp_path):
    from ep_jax.app.config import get_preset
    from ep_jax.app.train import train

    bp = get_preset("bp-residual-mnist10k")
    assert (bp.model.kind == "residual" and bp.optimizer.optimizer == "adamw"
            and bp.optimizer.grad_clip == 1.0)
    s_bp = train(_small_cfg(rule="backprop", learning_rate=1e-3, weight_decay=0.01,
                            schedule="cosine", grad_clip=1.0, dropout=0.0,
                            credit_batch=0), quiet=True)
    s_rt = train(_small_cfg(random_targets=True, epochs=1, credit_batch=0), quiet=True)
    assert s_bp["rule"] == "backprop" and s_bp["test_error"] < 0.5
    assert s_rt["test_error"] > 0.5  # random labels teach nothing about the test labels
    assert s_bp["credit"] is None


def test_residual_config_errors():
    with pytest.raises(ValueError, match="hidden: expected one width"):
        _small_cfg(hidden=(32, 32))
    with pytest.raises(ValueError, match="optimizer: a residual model trains with 'adamw'"):
        _small_cfg(optimizer="sgd")
    with pytest.raises(ValueError, match="model.kind: expected one of"):
        _small_cfg(kind="transformer")


def test_residual_cifar10_preset_runs_offline_from_binary_batches(tmp_path, capsys):
    """``ep-jax train --preset residual-cifar10 --data-dir D`` on generated CIFAR-10 binary files
    (10 training images), with the preset's augmentation and seed 004's hyper-parameters except
    the width, depth, epochs and batch size."""
    from ep_jax.app.cli import main
    from ep_jax.app.config import get_preset
    from tests.test_data import write_cifar

    cfg = get_preset("residual-cifar10")
    assert (cfg.model.hidden, cfg.model.n_blocks, cfg.loop.epochs, cfg.data.batch_size,
            cfg.data.augment) == ((256,), 4, 100, 128, "crop_flip")
    assert (cfg.rule.beta, cfg.rule.nudged_steps, cfg.rule.step_size, cfg.optimizer.learning_rate,
            cfg.optimizer.weight_decay, cfg.optimizer.grad_clip) == (0.5, 20, 0.1, 1e-3, 0.01, 1.0)
    assert get_preset("bp-residual-cifar10").data.augment == "crop_flip"
    data_dir = write_cifar(tmp_path / "data", "tar")
    out = tmp_path / "run"
    argv = ["train", "--preset", "residual-cifar10", "--data-dir", str(data_dir), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--hidden", "16", "--n-blocks", "2",
            "--credit-batch", "3", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dataset"] == "cifar10" and summary["n_train"] == 10
    assert len(summary["credit"]["gamma_per_layer"]) == 3

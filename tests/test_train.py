"""The training loop: persistent particles, one compile, checkpoints and resume, run outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.app import checkpoint
from ep_jax.app.config import (
    PRESETS,
    ModelConfig,
    OptimizerConfig,
    RuleConfig,
    TrainConfig,
    get_preset,
)
from ep_jax.app.data import Dataset
from ep_jax.app.train import Run, chunk_layout, evaluate_checkpoint, train


def tiny_data(n_train=60, n_test=20, d=12, classes=3, seed=0) -> Dataset:
    """Three Gaussian blobs in [0, 1]^d: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.1, 0.9, (classes, d))
    y = rng.integers(0, classes, n_train + n_test).astype(np.int32)
    x = np.clip(centers[y] + 0.08 * rng.standard_normal((len(y), d)), 0, 1).astype(np.float32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "blobs", None, classes)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(preset="tiny", dataset="blobs", hidden=(8,), epochs=3, batch_size=10,
                free_steps=10, nudged_steps=4, alphas=(0.2, 0.1), log_every=2, eval_max_steps=30)
    base.update(kw)
    return TrainConfig().with_overrides(**base)


def test_chunk_layout_covers_every_batch_once():
    for n_batches in (1, 7, 71, 400):
        for log_every in (1, 3, 8, 500):
            length, n_chunks = chunk_layout(n_batches, log_every)
            assert length * n_chunks >= n_batches > length * (n_chunks - 1)
            assert n_chunks <= min(log_every, n_batches)


def test_persistent_particles_hold_each_examples_free_state():
    run = Run(tiny_cfg(), data=tiny_data())
    ts = run.init_state()
    ts1, _ = run.train_epoch(ts)
    idx, valid = run.batches(run.data_key, jnp.asarray(0, jnp.int32))
    seen = np.unique(np.asarray(idx)[np.asarray(valid)])
    assert len(seen) == run.n_batches * run.cfg.data.batch_size  # no example twice in an epoch
    parts = ts1.learner.particles
    assert [p.shape for p in parts] == [(60, 8), (60, 3)]
    # Every example was relaxed once, from zeros, so its particle is its free state: non-zero
    # output rows (clip01 keeps [0, 1]) and exactly reproducible by relaxing it again from zeros
    # with the parameters it was relaxed with (those of its own step), checked for the first batch.
    assert np.all(np.asarray(parts[1]).max(axis=1) > 0)
    first = np.asarray(idx[0, 0])
    from ep_jax.solvers import relax

    params0 = run.init_state().learner.params
    s, _ = relax(run.learner.energy, params0, run.X[first], run.learner.energy.zeros_state(run.X[first]),
                 solver=run.learner.phases.free)
    np.testing.assert_allclose(np.asarray(parts[1])[first], np.asarray(s[-1]), rtol=1e-6, atol=1e-7)


def test_the_step_compiles_once():
    calls = []
    run = Run(tiny_cfg(epochs=4), data=tiny_data())
    inner = run.learner.train_step

    def counting(*a):
        calls.append(1)
        return inner(*a)

    object.__setattr__(run.learner, "train_step", counting)
    ts = run.init_state()
    ts, _ = run.train_epoch(ts)
    after_first = len(calls)
    for _ in range(3):
        ts, _ = run.train_epoch(ts)
    assert after_first > 0 and len(calls) == after_first


def test_padded_chunks_match_one_chunk_per_epoch():
    data = tiny_data()
    a = train(tiny_cfg(log_every=1), data=data, quiet=True)
    b = train(tiny_cfg(log_every=4), data=data, quiet=True)  # 6 batches: chunks of 2, no pad
    c = train(tiny_cfg(log_every=5), data=data, quiet=True)  # chunks of 2, the last one padded
    for other in (b, c):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7),
                     a["state"].learner.params, other["state"].learner.params)
        assert int(other["state"].step) == int(a["state"].step) == 18


def test_ep_learns_blobs_and_writes_the_run_directory(tmp_path):
    s = train(tiny_cfg(epochs=8), data=tiny_data(), out_dir=tmp_path, quiet=True)
    assert s["test_error"] <= 0.1, s
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    for key in ("train_error", "train_energy", "train_cost", "train_steps", "train_residual",
                "test_error", "test_energy", "test_cost", "test_steps", "test_residual",
                "epoch_wall_s", "samples_per_s"):
        assert key in rows[-1], key
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.0 <= summary["test_error"] <= 1.0 and summary["epochs"] == 8
    assert summary["best_test_error"] <= summary["test_error"]
    assert (tmp_path / "network.png").exists()  # 12-8-3: small enough for the graph
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == tiny_cfg(epochs=8)


def test_bp_twin_runs_through_the_same_loop(tmp_path):
    cfg = dataclasses.replace(
        tiny_cfg(epochs=10), model=ModelConfig(kind="mlp", hidden=(8,), activation="relu"),
        rule=RuleConfig(rule="backprop", cost="cross_entropy"),
        optimizer=OptimizerConfig(optimizer="adam", learning_rate=1e-2),
    )
    s = train(cfg, data=tiny_data(), out_dir=tmp_path, quiet=True)
    assert s["test_error"] <= 0.1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "test_cost" in rows[-1] and "train_energy" not in rows[-1]


def test_every_ep_preset_has_its_bp_twin():
    for name, cfg in PRESETS.items():
        if not name.startswith("bp-"):
            twin = PRESETS["bp-" + name]
            assert twin.rule.rule in ("backprop", "bptt"), name
            assert (twin.data.dataset, twin.model.hidden, twin.model.channels, twin.data.batch_size,
                    twin.loop.epochs) == (cfg.data.dataset, cfg.model.hidden, cfg.model.channels,
                                          cfg.data.batch_size, cfg.loop.epochs)
    assert all(name[3:] in PRESETS for name in PRESETS if name.startswith("bp-"))
    assert get_preset("mnist10k").model.hidden == (500,)
    with pytest.raises(ValueError, match="preset: expected one of"):
        get_preset("mnist")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"alphas: expected 3 learning rates .* received 2"):
        TrainConfig().with_overrides(hidden=(5, 5), alphas=(0.1, 0.1))
    with pytest.raises(ValueError, match="rule.rule: expected one of"):
        TrainConfig().with_overrides(rule="hebb")
    with pytest.raises(ValueError, match="batch_size: expected <= the 60 training examples"):
        Run(tiny_cfg(batch_size=100), data=tiny_data())


def test_checkpoint_mismatch_and_corruption_are_clear(tmp_path):
    data = tiny_data()
    train(tiny_cfg(epochs=2), data=data, out_dir=tmp_path, quiet=True, plots=False)
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        train(tiny_cfg(epochs=2), data=data, out_dir=tmp_path, quiet=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"hidden is \(8,\) there, \(9,\) in this run"):
        train(tiny_cfg(epochs=3, hidden=(9,)), data=data, out_dir=tmp_path, resume=True, quiet=True)
    # Corrupt every stored array file of the latest checkpoint.
    latest = tmp_path / "checkpoints" / str(checkpoint.latest_epoch(tmp_path))
    files = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name]
    assert files
    for p in files:
        p.write_bytes(b"\0garbage")
    with pytest.raises(checkpoint.CheckpointError, match="could not be restored"):
        train(tiny_cfg(epochs=3), data=data, out_dir=tmp_path, resume=True, quiet=True)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        train(tiny_cfg(epochs=3), data=data, out_dir=tmp_path / "empty", resume=True, quiet=True)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ep_jax.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    """Run 2 epochs, kill -9 in the 3rd, resume: the same numbers as a straight 4-epoch run."""
    common = ["train", "--preset", "digits", "--epochs", "4", "--free-steps", "60", "--quiet"]
    straight = _cli(*common, "--out", str(tmp_path / "straight"))

    killed_dir = tmp_path / "killed"
    proc = _cli(*common, "--out", str(killed_dir))
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            os.kill(proc.pid, signal.SIGKILL)  # the row of epoch 2 is written: we are in epoch 3
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert checkpoint.latest_epoch(killed_dir) == 2
    assert not (killed_dir / "summary.json").exists()

    resumed = _cli(*common, "--out", str(killed_dir), "--resume")
    out_r, err_r = resumed.communicate(timeout=300)
    out_s, err_s = straight.communicate(timeout=300)
    assert resumed.returncode == 0, err_r
    assert straight.returncode == 0, err_s
    sum_r, sum_s = json.loads(out_r), json.loads(out_s)
    assert sum_r["resumed_from_epoch"] == 2
    assert sum_r["test_error"] == sum_s["test_error"] and sum_r["steps"] == sum_s["steps"]

    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (tmp_path / "straight", killed_dir)]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("epoch_wall_s", "samples_per_s")}
    assert [strip(r) for r in rows[0]] == [strip(r) for r in rows[1]]

    cfg = TrainConfig.from_dict(json.loads((killed_dir / "config.json").read_text()))
    like = Run(cfg).init_state()
    a = checkpoint.restore(tmp_path / "straight", 4, like)
    b = checkpoint.restore(killed_dir, 4, like)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
    ev = evaluate_checkpoint(killed_dir)
    assert ev["epoch"] == 4 and ev["test_error"] == sum_s["test_error"]


def test_default_preset_is_digits_and_learns_in_a_few_epochs(tmp_path):
    from ep_jax.app.config import DEFAULT_PRESET

    assert DEFAULT_PRESET == "digits"
    cfg = get_preset("digits").with_overrides(epochs=10)
    s = train(cfg, out_dir=tmp_path, quiet=True)
    assert s["test_error"] < 0.08, s  # 30 epochs: 2.8% (README)
    assert (tmp_path / "weights.png").exists()  # 8x8 first-layer tiles


@pytest.mark.parametrize("preset", ["scellier2017-mnist-2h", "bp-scellier2017-mnist-1h"])
def test_full_mnist_presets_run_from_raw_files_in_data_dir(tmp_path, preset):
    """The full-MNIST presets read tfds' raw idx files from --data-dir (tiny generated ones)."""
    from tests.test_data import write_idx

    rng = np.random.default_rng(0)
    (tmp_path / "mnist").mkdir()
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / "mnist" / f"{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / "mnist" / f"{split}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n, dtype=np.uint8))
    # The free phase exists only in the EP preset (the BP twin refuses a free_steps override).
    cfg = get_preset(preset).with_overrides(
        epochs=1, **({} if preset.startswith("bp-") else {"free_steps": 5}))
    s = train(cfg, data_dir=tmp_path, out_dir=tmp_path / "run", quiet=True)
    assert (s["n_train"], s["n_test"], s["epochs"]) == (40, 20, 1)
    assert s["sizes"][0] == 784 and (tmp_path / "run" / "weights.png").exists()


def test_cli_bench_hands_its_arguments_to_ep_jax_bench(capsys):
    from ep_jax.app.cli import main

    assert main(["bench", "--suite", "smoke", "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows and all(r.endswith(" smoke") for r in rows)

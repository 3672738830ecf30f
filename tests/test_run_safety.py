"""Run directories lose nothing and say everything: refusal of foreign directories, atomic names,
the run lock, resume provenance, checkpoint digests and retention, data checks at entry, and the
divergence policy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.app import checkpoint
from ep_jax.app.cli import main
from ep_jax.app.config import TrainConfig
from ep_jax.app.data import Dataset
from ep_jax.app.train import (
    DivergenceError,
    Run,
    RunDirError,
    evaluate_checkpoint,
    new_run_dir,
    run_dir_lock,
    train,
)
from tests.test_train import tiny_cfg, tiny_data


def digits_cfg(**kw) -> TrainConfig:
    """A tiny run on a dataset ``ep-jax eval`` can load by name (~1 s per epoch)."""
    base = dict(preset="tiny-digits", dataset="digits", hidden=(8,), alphas=(0.2, 0.1), epochs=2,
                batch_size=200, free_steps=5, nudged_steps=2, eval_max_steps=10, log_every=1)
    base.update(kw)
    return TrainConfig().with_overrides(**base)


def test_a_non_empty_directory_without_checkpoints_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"mine: not empty and holds no checkpoint.*notes\.txt"):
        train(tiny_cfg(epochs=1), data=tiny_data(), out_dir=foreign, quiet=True, plots=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # A finished run without checkpoints is not resumable: it is not overwritten either.
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1, checkpoint_every=0), data=tiny_data(), out_dir=run, quiet=True,
          plots=False)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match=r"config\.json, metrics\.jsonl, summary\.json"):
        train(tiny_cfg(epochs=1), data=tiny_data(), out_dir=run, quiet=True, plots=False)
    assert (run / "metrics.jsonl").read_text() == before
    # Empty and new directories are fine.
    (tmp_path / "empty").mkdir()
    train(tiny_cfg(epochs=1), data=tiny_data(), out_dir=tmp_path / "empty", quiet=True, plots=False)


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")  # all in one second
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path / "runs", "digits"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert all(d.name.startswith(f"digits-20260101-000000-{os.getpid()}") for d in dirs)


def test_the_lock_refuses_a_second_process_and_is_released(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_dir_lock(out):
        proc = subprocess.run(
            [sys.executable, "-m", "ep_jax.app.cli", "train", "--out", str(out), "--quiet"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert f"{out} is in use by another ep-jax process (pid {os.getpid()})" in proc.stderr
        assert "Traceback" not in proc.stderr
    # Released on exit, also when the block raises.
    with pytest.raises(KeyError):
        with run_dir_lock(out):
            raise KeyError
    with run_dir_lock(out):
        pass


def test_resume_appends_provenance_and_keeps_config_json(tmp_path):
    data = tiny_data()
    train(tiny_cfg(epochs=2), data=data, out_dir=tmp_path, quiet=True, plots=False)
    original = (tmp_path / "config.json").read_text()
    train(tiny_cfg(epochs=3), data=data, out_dir=tmp_path, resume=True, quiet=True, plots=False)
    train(tiny_cfg(epochs=4, eval_every=2), data=data, out_dir=tmp_path, resume=True, quiet=True,
          plots=False)
    assert (tmp_path / "config.json").read_text() == original
    records = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert [r["resumed_from_epoch"] for r in records] == [2, 3]
    assert records[0]["changed"] == {"loop.epochs": [2, 3]}
    assert records[1]["changed"] == {"loop.epochs": [3, 4], "loop.eval_every": [1, 2]}
    assert records[0]["pid"] == os.getpid() and records[0]["ep_jax"] and records[0]["host"]
    assert checkpoint.effective_config(tmp_path) == tiny_cfg(epochs=4, eval_every=2)


def test_a_resume_whose_arrays_have_another_shape_names_the_leaf(tmp_path):
    data = tiny_data()
    train(tiny_cfg(epochs=1), data=data, out_dir=tmp_path, quiet=True, plots=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["hidden"] = [9]  # hand-edited: the fingerprint now matches a 9-unit run
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"leaf \.learner\.params\['layer_0'\]\['bias'\] was saved as "
                             r"\(8,\) float32, this run expects \(9,\) float32") as err:
        train(tiny_cfg(epochs=2, hidden=(9,)), data=data, out_dir=tmp_path, resume=True,
              quiet=True, plots=False)
    assert "orbax" not in str(err.value).lower()


def _array_files(step_dir):
    """The chunk files of the saved arrays (``default/<leaf>/<chunk>``), not orbax's metadata."""
    return [p for p in (step_dir / "default").glob("*/*")
            if p.name[0] != "." and (p.parent / ".zarray").is_file()]


def _flip_a_byte_of_the_largest_array_file(step_dir):
    big = max(_array_files(step_dir), key=lambda p: p.stat().st_size)
    b = bytearray(big.read_bytes())
    b[len(b) // 2] ^= 0x55
    big.write_bytes(bytes(b))


def test_a_flipped_byte_is_detected_on_eval_and_on_resume(tmp_path, capsys):
    cfg = digits_cfg()
    train(cfg, out_dir=tmp_path, quiet=True, plots=False)
    step = tmp_path / "checkpoints" / "2"
    assert (step / "digests.json").is_file()
    _flip_a_byte_of_the_largest_array_file(step)
    leaf = (r"checkpoint .*checkpoints/2: leaf learner\.particles\.\d \(file \S+\) does not "
            r"match its sha256 digest")
    with pytest.raises(checkpoint.CheckpointError, match=leaf):
        evaluate_checkpoint(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=leaf):
        train(digits_cfg(epochs=3), out_dir=tmp_path, resume=True, quiet=True, plots=False)
    assert main(["credit", "--checkpoint", str(tmp_path)]) == 2  # every restore path verifies
    assert "does not match its sha256 digest" in capsys.readouterr().err
    # Files orbax could not decode never reach it: one clean line, no orbax/asyncio internals.
    for p in _array_files(step):
        p.write_bytes(b"\0garbage")
    proc = subprocess.run([sys.executable, "-m", "ep_jax.app.cli", "eval", "--checkpoint",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert re.fullmatch(r"ep-jax eval: error: checkpoint .*checkpoints/2: leaf \S+ \(file \S+\) "
                        r"does not match its sha256 digest; the checkpoint is corrupt", line)


def test_the_best_checkpoint_survives_pruning_and_missing_epochs_are_listed(
        tmp_path, monkeypatch, capsys):
    errors = iter([0.5, 0.1, 0.3, 0.4, 0.6])
    real = Run.test_metrics
    monkeypatch.setattr(Run, "test_metrics", lambda self, ts: {**real(self, ts),
                                                               "error": next(errors)})
    s = train(digits_cfg(epochs=5), out_dir=tmp_path, quiet=True, plots=False)
    monkeypatch.undo()
    assert s["best_epoch"] == 2
    assert checkpoint.epochs(tmp_path) == [2, 4, 5]  # the last KEEP_LAST = 2, and the best
    assert evaluate_checkpoint(tmp_path, epoch=2)["epoch"] == 2
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"epoch 3 has no checkpoint in .*; available: 2, 4, 5$"):
        evaluate_checkpoint(tmp_path, epoch=3)
    assert main(["eval", "--checkpoint", str(tmp_path), "--epoch", "3"]) == 2
    err = capsys.readouterr().err
    assert "available: 2, 4, 5" in err and "Traceback" not in err


def _with(data: Dataset, **arrays) -> Dataset:
    return data._replace(**arrays)


def test_bad_labels_and_non_finite_inputs_are_refused_at_entry():
    data = tiny_data()
    y = data.y_train.copy()
    y[[5, 7]] = [3, -1]
    with pytest.raises(ValueError, match=r"y_train: expected labels in \[0, 3\), received 2 "
                                         r"outside it; the first is y_train\[5\] = 3"):
        Run(tiny_cfg(), data=_with(data, y_train=y))
    with pytest.raises(ValueError, match=r"y_test: expected integer labels .* dtype float32"):
        Run(tiny_cfg(), data=_with(data, y_test=data.y_test.astype(np.float32)))
    x = data.x_test.copy()
    x[2, 3] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"x_test: expected finite inputs, received 2 non-finite "
                                         r"values; the first is x_test\[2, 3\] = nan"):
        Run(tiny_cfg(), data=_with(data, x_test=x))


def test_inputs_the_hard_sigmoid_clips_are_warned_about_with_their_fraction():
    data = tiny_data()  # (60 + 20) x 12 = 960 input values in [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Run(tiny_cfg(), data=data)
    x = data.x_train.copy()
    x[:4] = -0.5  # 48 values: 5%
    with pytest.warns(UserWarning, match=r"5\.00% of the input values .* outside \[0, 1\]"):
        Run(tiny_cfg(), data=_with(data, x_train=x))


def _diverging_from_epoch_2(monkeypatch):
    real = Run.train_epoch

    def train_epoch(self, ts, on_chunk=None):
        ts, means = real(self, ts, on_chunk)
        if int(ts.epoch) >= 2:
            means = {**means, "unbounded": 0.25, "residual": means["residual"] * 100 + 1.0}
        return ts, means

    monkeypatch.setattr(Run, "train_epoch", train_epoch)


def test_divergence_warn_writes_flags_and_stop_raises(tmp_path, monkeypatch, capsys):
    _diverging_from_epoch_2(monkeypatch)
    data = tiny_data()
    train(tiny_cfg(epochs=3), data=data, out_dir=tmp_path / "warn", quiet=True, plots=False)
    rows = [json.loads(r) for r in (tmp_path / "warn" / "metrics.jsonl").read_text().splitlines()]
    assert "flags" not in rows[0]
    for row in rows[1:]:
        assert [f.split("=")[0] for f in row["flags"]] == ["train_unbounded", "train_residual"]
    assert "epoch 2: diverging: train_unbounded=0.25" in capsys.readouterr().err
    assert (tmp_path / "warn" / "summary.json").exists()

    stop = tmp_path / "stop"
    with pytest.raises(DivergenceError, match=r"epoch 2 diverged \(train_unbounded=0\.25.*"
                                              r"on_divergence is 'stop'"):
        train(tiny_cfg(epochs=3, on_divergence="stop"), data=data, out_dir=stop, quiet=True,
              plots=False)
    rows = [json.loads(r) for r in (stop / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "flags" in rows[1]
    assert checkpoint.latest_epoch(stop) == 2
    with run_dir_lock(stop):  # released by the exception
        pass


def test_non_finite_metrics_name_the_likely_causes_in_order():
    run = Run(tiny_cfg(), data=tiny_data())
    ls = run.init_state().learner
    nan = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan)
                       if jnp.issubdtype(a.dtype, jnp.floating) else a, ls)
    msg = run._nonfinite_message(nan, 3, ["cost"])
    assert msg.startswith("training diverged in epoch 3: non-finite ['cost']")
    order = ["(1) non-finite inputs in the data: no", "(2) non-finite parameters: yes, in ",
             "(3) step size too large: rule.step_size=0.5", "(4) beta too large: rule.beta=0.5"]
    assert all(part in msg for part in order)
    assert [msg.index(p) for p in order] == sorted(msg.index(p) for p in order)
    assert "(2) non-finite parameters: no" in run._nonfinite_message(ls, 3, ["cost"])

"""The JAX-only benchmark harness ``ep_jax.bench`` (``ep-jax bench``): the grid, the FLOP count,
the timing functions on any energy and solver, its data loader, and the suite run end to end
with its refusal to replace results. Times are recorded, never asserted."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ep_jax import bench
from ep_jax.energies import make_energy
from ep_jax.optim import per_layer_sgd
from ep_jax.rules import Phases
from ep_jax.solvers import FixedPoint, GradientDescent

ROOT = Path(__file__).resolve().parents[1]


def test_flop_count_of_the_target_row():
    f = bench.flops((784, 500, 10), 256, 24)
    assert f["input_product"] == 2 * 256 * 784 * 500
    assert f["per_relaxation_step"] == 2 * 2 * 256 * 500 * 10
    assert f["weight_gradient"] == 2 * 256 * 784 * 500 + 2 * 2 * 256 * 500 * 10
    assert 0.52e9 < f["training_step"] < 0.54e9  # "about 0.52 GFLOP"


def test_row_ids_are_those_of_the_committed_cpu_results():
    """--only patterns written against earlier results keep selecting the same rows."""
    doc = json.loads((ROOT / "benchmarks" / "results" / "cpu-2core.json").read_text())
    assert doc["suite"] == "cpu"
    assert [r["id"] for r in doc["rows"]] == [r.id for r in bench.suite_rows("cpu")]
    assert [r.id for r in bench.suite_rows("smoke")] == [
        "64-32-10/B8/T3+2/gd/float32", "64-32-32-10/B8/T3+2/fp-async/float32"]
    gpu = bench.suite_rows("gpu")
    assert any(r.sizes == (784,) + (4096,) * 4 + (10,) and r.batch == 4096 for r in gpu)
    ids = {r.id for r in bench.suite_rows("quick")}
    assert bench.DEMO.id in ids and bench.CENTER.id in ids
    with pytest.raises(ValueError, match="suite: expected one of"):
        bench.suite_rows("huge")


@pytest.mark.parametrize("energy_name, solver, rule", [
    ("hopfield", FixedPoint(4, order="asynchronous"), "ep-symmetric"),
    ("restricted_hopfield", GradientDescent(0.5, 4), "ep"),
])
def test_time_functions_on_any_energy_and_solver(energy_name, solver, rule):
    sizes, batch = (12, 9, 7, 4), 6
    energy = make_energy(energy_name, sizes)
    x, y = bench.random_batch(sizes, batch)
    timing = dict(repeats=2, warmup=1, min_sample_s=0.0)
    step = bench.time_training_step(energy, rule, Phases(0.5, free=solver, nudged=solver), x, y,
                                    optimizer=per_layer_sgd([0.1, 0.05, 0.02]), hlo=True, **timing)
    assert step["steps_taken"] == [4, 4]
    assert len(step["samples_ms"]) == 2 and step["min_ms"] <= step["median_ms"]
    assert step["first_call_s_incl_compile"] > 0
    assert step["example_steps_per_s"] == pytest.approx(batch * 8 / (step["median_ms"] / 1e3))
    assert step["hlo_check"]["while_bodies"] >= 1, step["hlo_check"]  # the diagnostic ran
    free = bench.time_free_phase(energy, solver, x, **timing)
    assert free["steps_taken"] == 4
    assert free["example_steps_per_s"] == pytest.approx(batch * 4 / (free["median_ms"] / 1e3))


def _write_idx(path, magic, array):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_load_batch_reads_mnist_files_else_random(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / bench.MNIST_TEST_FILES[0], 2051, images)
    _write_idx(tmp_path / "mnist" / bench.MNIST_TEST_FILES[1], 2049, labels)
    x, y, source = bench.load_batch(3, data_dir=tmp_path)
    np.testing.assert_allclose(x, images[:3].reshape(3, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[:3])
    assert source.startswith("MNIST t10k, first 3 images")
    with pytest.raises(ValueError, match="expected at least 6 items, received 5"):
        bench.load_batch(6, data_dir=tmp_path)
    x, y, source = bench.load_batch(3, data_dir=tmp_path / "elsewhere")
    assert x.shape == (3, 784) and source.startswith("RANDOM data") and "elsewhere" in source
    x, y, source = bench.load_batch(3, 64, 10, data_dir=tmp_path)  # not a 784-...-10 net
    assert x.shape == (3, 64) and source == "random data, uniform [0, 1)"


def test_list_and_only(capsys):
    assert bench.main(["--suite", "quick", "--list", "--only", r"B256/T20\+4/gd/"]) == 0
    ids = capsys.readouterr().out.split("\n")
    ids = [line.split()[0] for line in ids if line]
    assert bench.CENTER.id in ids and all("B256/T20+4/gd/" in i for i in ids)
    assert bench.main(["--suite", "smoke", "--list", "--only", "B9999"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "'B9999'" in err and len(err.strip().splitlines()) == 1
    assert bench.main(["--suite", "smoke", "--list", "--only", "("]) == 2
    assert "expected a regular expression" in capsys.readouterr().err


def test_smoke_suite_writes_results_and_never_replaces_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--suite", "smoke"]) == 0
    slug = bench.device_slug()
    out_json, out_md = tmp_path / f"bench-{slug}.json", tmp_path / f"bench-{slug}.md"
    doc = json.loads(out_json.read_text())
    env = doc["environment"]
    for key in ("device_kind", "jax_platform", "jax", "jaxlib", "date", "cpu", "os_cpu_count"):
        assert env[key] is not None, key
    assert "torch" not in env
    assert doc["limits"]["peak"]["float32"]["gflops"] > 0
    assert doc["limits"]["bandwidth"]["gbps"] > 0
    rows = doc["rows"]
    assert [r["id"] for r in rows] == [r.id for r in bench.suite_rows("smoke")]
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        for key in ("gflops", "peak_gflops", "peak_fraction", "bound", "shapes", "dtype", "batch",
                    "t_free", "t_nudged", "solver", "median_ms", "min_ms", "example_steps_per_s",
                    "floor_ms", "arithmetic_intensity", "machine_balance", "steps_taken"):
            assert key in r, key
        assert r["steps_taken"] == [3, 2] and r["bound"] in ("compute", "memory")
        assert r["jax"]["step"]["first_call_s_incl_compile"] > 0
    md = out_md.read_text()
    assert "| 64-32-10/B8/T3+2/gd/float32 | 3+2 |" in md and slug in md

    capsys.readouterr()
    before = out_json.read_text()
    assert bench.main(["--suite", "smoke"]) == 2  # refused before anything runs
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--json" in err and "--overwrite" in err, err
    assert out_json.read_text() == before
    other = tmp_path / "other.json"
    assert bench.main(["--suite", "smoke", "--json", str(other)]) == 2  # the markdown exists
    assert "--markdown" in capsys.readouterr().err and not other.exists()
    assert bench.main(["--suite", "smoke", "--only", "fp-async", "--overwrite"]) == 0
    assert [r["id"] for r in json.loads(out_json.read_text())["rows"]] == [
        "64-32-32-10/B8/T3+2/fp-async/float32"]


def test_gpu_suite_on_a_cpu_writes_skipped_rows(tmp_path):
    if jax.devices()[0].platform != "cpu":
        pytest.skip("an accelerator is present")
    out_json, out_md = tmp_path / "g.json", tmp_path / "g.md"
    assert bench.main(["--suite", "gpu", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["rows"] and all(r["status"] == "skipped" for r in doc["rows"])
    assert "accelerators" in doc["rows"][0]["skip_reason"]
    assert "## Skipped" in out_md.read_text()


def test_the_harness_imports_neither_torch_nor_the_source_tree(tmp_path):
    code = ("import sys, ep_jax.bench; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'benchmarks', 'tests')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""The throughput suite (``benchmarks/suite.py``): its PyTorch references compute the JAX step's
numbers, and a tiny suite runs end to end and writes its JSON, Markdown and plots. Times are
recorded, never asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")


def test_references_agree_with_the_jax_step():
    from benchmarks.suite import check_references

    checks = check_references()
    # torch_best (every solver) and seed 002's style: the same update as the JAX step
    for solver in ("gd", "gd-tol", "fp-sync", "fp-async"):
        assert checks[f"torch_best/{solver}/weight_update"] <= 1e-4, checks
        assert checks[f"torch_best/{solver}/bias"] <= 1e-5, checks
    assert checks["seed002/gd/weight_update"] <= 1e-4, checks
    assert checks["seed002/gd/bias"] <= 1e-5, checks
    # seed 001: the same relaxations (its update differs by the seed's design)
    assert checks["seed001/gd/free_state"] <= 1e-5, checks
    assert checks["seed001/gd/nudged_from_zeros_state"] <= 1e-5, checks


def test_torch_best_tolerance_loop_stops_like_jax():
    """gd-tol: the plain-PyTorch loop stops at the same step as ep_jax's while loop."""
    import jax.numpy as jnp

    from benchmarks import torch_refs
    from benchmarks.suite import init_params, jax_params, make_solver
    from ep_jax.energies import make_energy
    from ep_jax.solvers import GradientDescent, relax

    sizes, batch = (12, 9, 4), 6
    weights, biases = init_params(sizes)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (batch, sizes[0])).astype(np.float32)
    energy = make_energy("hopfield", sizes)
    p = jax_params(weights, biases, "float32")
    xj = jnp.asarray(x)
    solver = GradientDescent(0.5, 200, tol=1e-4, project="clip01")
    s, stats = relax(energy, p, xj, energy.zeros_state(xj), solver=solver)
    ref = torch_refs.TorchBest(weights, biases, t_free=200, t_nudged=1, alphas=[0.1, 0.05],
                               solver="gd-tol", tol=1e-4)
    s_t = ref.free(ref.inputs(x, np.zeros(batch, int))[0])
    assert 1 < ref.last_steps[0] < 200
    assert abs(ref.last_steps[0] - int(stats.steps)) <= 1
    for a, b in zip(s, s_t):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-4)
    assert make_solver("gd-tol", 5).tol is not None


def test_flop_count_of_the_target_row():
    from benchmarks.suite import flops

    f = flops((784, 500, 10), 256, 24)
    assert f["input_product"] == 2 * 256 * 784 * 500
    assert f["per_relaxation_step"] == 2 * 2 * 256 * 500 * 10
    assert f["weight_gradient"] == 2 * 256 * 784 * 500 + 2 * 2 * 256 * 500 * 10
    assert 0.52e9 < f["training_step"] < 0.54e9  # "about 0.52 GFLOP"


def test_smoke_suite_runs_and_writes_results(tmp_path):
    out_json, out_md, plots = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "plots"
    # Through the CLI (`ep-jax bench` hands its arguments to benchmarks/suite.py), from another
    # working directory: the suite is found next to the installed package's source tree.
    proc = subprocess.run(
        [sys.executable, "-m", "ep_jax.cli", "bench", "--suite", "smoke", "--json", str(out_json),
         "--markdown", str(out_md), "--plots-dir", str(plots)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    env = doc["environment"]
    for key in ("device_kind", "jax", "jaxlib", "torch", "date", "cpu", "os_cpu_count",
                "torch_num_threads"):
        assert key in env
    assert doc["limits"]["peak"]["float32"]["gflops"] > 0
    assert doc["limits"]["bandwidth"]["gbps"] > 0
    assert max(doc["reference_checks"].values()) < 1e-4
    rows = doc["rows"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        for key in ("speedup_vs_seed001", "speedup_vs_seed002", "speedup_vs_torch_best", "gflops",
                    "peak_gflops", "peak_fraction", "bound", "shapes", "dtype", "batch", "t_free",
                    "t_nudged", "solver", "median_ms", "min_ms", "example_steps_per_s",
                    "floor_ms", "arithmetic_intensity", "machine_balance", "steps_taken"):
            assert key in r, key
        assert r["median_ms"] > 0 and r["gflops"] > 0 and r["bound"] in ("compute", "memory")
    gd, fp = rows
    assert gd["solver"] == "gd" and gd["speedup_vs_seed001"] > 0 and gd["speedup_vs_seed002"] > 0
    assert fp["solver"] == "fp-async" and fp["speedup_vs_seed001"] is None
    assert fp["speedup_vs_torch_best"] > 0
    md = out_md.read_text()
    assert "## Targets" in md and "| 64-32-10/B8/T3+2/gd/float32 |" in md


def test_gpu_suite_skips_gracefully_on_cpu(tmp_path):
    import jax

    if jax.devices()[0].platform != "cpu":
        pytest.skip("an accelerator is present")
    from benchmarks import suite

    rows = suite.suite_rows("gpu")
    assert any(r.sizes == (784,) + (4096,) * 4 + (10,) and r.batch == 4096 for r in rows)
    ids = {r.id for r in suite.suite_rows("quick")}
    assert suite.DEMO.id in ids and suite.CENTER.id in ids


def test_gpu_suite_on_a_cpu_writes_skipped_rows(tmp_path):
    import jax

    if jax.devices()[0].platform != "cpu":
        pytest.skip("an accelerator is present")
    from benchmarks import suite

    out_json, out_md = tmp_path / "g.json", tmp_path / "g.md"
    assert suite.main(["--suite", "gpu", "--json", str(out_json), "--markdown", str(out_md),
                       "--plots-dir", str(tmp_path / "p")]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["rows"] and all(r["status"] == "skipped" for r in doc["rows"])
    assert "accelerators" in doc["rows"][0]["skip_reason"]
    assert "## Skipped" in out_md.read_text()

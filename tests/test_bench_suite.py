"""The throughput suite's PyTorch side: its references (``tests/reference/torch_refs.py``)
compute the JAX step's numbers, and ``benchmarks/suite.py`` runs end to end as a script and
writes its JSON, Markdown and plots. Times are recorded, never asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ep_jax import bench

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")

from tests.reference import torch_refs  # noqa: E402 -- needs torch


def test_references_agree_with_the_jax_step():
    checks = torch_refs.check_references()
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

    from ep_jax.energies import make_energy
    from ep_jax.solvers import GradientDescent, relax

    sizes, batch = (12, 9, 4), 6
    weights, biases = bench.init_params(sizes)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (batch, sizes[0])).astype(np.float32)
    energy = make_energy("hopfield", sizes)
    p = bench.jax_params(weights, biases, "float32")
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
    assert bench.make_solver("gd-tol", 5).tol is not None


def _suite(tmp_path, *args):
    # As a script from another working directory: it finds the repository by its own path.
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


def test_smoke_suite_runs_and_writes_results(tmp_path):
    out_json, out_md, plots = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "plots"
    paths = ["--json", str(out_json), "--markdown", str(out_md), "--plots-dir", str(plots)]
    proc = _suite(tmp_path, "--suite", "smoke", *paths)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    env = doc["environment"]
    for key in ("device_kind", "jax", "jaxlib", "torch", "date", "cpu", "os_cpu_count",
                "torch_num_threads"):
        assert key in env
    assert doc["limits"]["peak"]["float32"]["gflops"] > 0
    assert doc["limits"]["bandwidth"]["gbps"] > 0
    assert max(doc["reference_checks"].values()) < 1e-4
    for key in ("settings", "targets", "exponents", "plots", "notes"):
        assert key in doc, key
    rows = doc["rows"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        for key in ("speedup_vs_seed001", "speedup_vs_seed002", "speedup_vs_torch_best", "gflops",
                    "peak_gflops", "peak_fraction", "bound", "shapes", "dtype", "batch", "t_free",
                    "t_nudged", "solver", "median_ms", "min_ms", "example_steps_per_s",
                    "floor_ms", "arithmetic_intensity", "machine_balance", "steps_taken",
                    "torch_best_example_steps_per_s", "row_wall_s"):
            assert key in r, key
        assert r["median_ms"] > 0 and r["gflops"] > 0 and r["bound"] in ("compute", "memory")
    gd, fp = rows
    assert gd["solver"] == "gd" and gd["speedup_vs_seed001"] > 0 and gd["speedup_vs_seed002"] > 0
    assert fp["solver"] == "fp-async" and fp["speedup_vs_seed001"] is None
    assert fp["speedup_vs_torch_best"] > 0
    md = out_md.read_text()
    assert "## Targets" in md and "| 64-32-10/B8/T3+2/gd/float32 |" in md

    before = out_json.read_text()
    proc = _suite(tmp_path, "--suite", "smoke", *paths)  # refused: the results exist
    assert proc.returncode == 2 and "--json" in proc.stderr and "--overwrite" in proc.stderr
    assert out_json.read_text() == before

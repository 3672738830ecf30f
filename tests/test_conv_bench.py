"""The conv rows of the throughput harness (``ep_jax.bench_conv``, ``ep-jax bench --suite conv-*``)
and their plain-PyTorch side (``tests/reference/torch_conv.py``): the torch step computes the
JAX step's numbers (which is what makes the speed comparison honest), the FLOP count, and the
harness running end to end on tiny shapes. Times are recorded, never asserted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ep_jax import bench, bench_conv

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")

from tests.reference import torch_conv  # noqa: E402 -- needs torch

# float32: the gradient is a difference of two phases' sums (ep_jax takes it by autodiff of
# E(s+) - E(s-)), relative rounding ~1e-5; a layout, tie or sign error gives > 1e-3
STATE_TOL, GRAD_TOL, AUTOGRAD_TOL = 1e-5, 1e-4, 1e-4


def test_torch_conv_step_matches_jax_synchronous_readout():
    """Free, +beta and -beta states and the symmetric-EP gradient (conv kernels, biases and the
    readout) of the torch step equal ep_jax's from the same params and batch; both torch
    update paths (hand-derived products, autograd of E)."""
    d = torch_conv.compare_with_jax()
    for what in ("free_state", "plus_state", "minus_state"):
        assert d[f"hand/{what}"] <= STATE_TOL, d
        assert d[f"autograd/{what}"] <= STATE_TOL, d
    assert d["hand/gradient"] <= GRAD_TOL, d
    assert d["autograd/gradient"] <= AUTOGRAD_TOL, d


def test_torch_conv_step_matches_jax_asynchronous_dense_output():
    """Even/odd sweeps (the first one from zeros hits max-pool ties in the feedback through
    connection 1: both sides take the averaged subgradient; torch's first-index argmax would
    differ by ~6e-4 here), a dense output layer, the squared error with FixedPoint's
    majoriser, a stride-2 conv without pooling, odd map sizes (floor pooling)."""
    d = torch_conv.compare_with_jax(
        in_shape=(9, 7, 2), conv=((3, 3, 1, 1, 2), (5, 3, 1, 1, 2), (4, 3, 2, 1, 1)),
        dense=(6, 10), readout_classes=0, batch=3, t_free=5, t_nudged=2, order="asynchronous",
        updates=("hand",))
    for what in ("free_state", "plus_state", "minus_state"):
        assert d[f"hand/{what}"] <= STATE_TOL, d
    assert d["hand/gradient"] <= GRAD_TOL, d


def test_hand_derived_fields_are_minus_the_energy_gradient():
    """Torch alone: each layer's field from ``_update_layers`` equals s_l - dE/ds_l of the
    autograd energy at a random state inside the box (h = -dE_int/d rho(s_l))."""
    conv = torch_conv.conv_layers(((4, 3, 1, 1, 2), (6, 3, 1, 0, 2)))
    shapes, _ = torch_conv.layer_shapes((8, 8, 3), conv, (5,))
    rng = np.random.default_rng(3)
    params = {}
    c_in = 3
    for l, cv in enumerate(conv):
        params[f"layer_{l}"] = {"kernel": rng.normal(0, 0.3, (cv.kernel, cv.kernel, c_in, cv.channels)),
                                "bias": rng.normal(0, 0.1, cv.channels)}
        c_in = cv.channels
    params["layer_2"] = {"kernel": rng.normal(0, 0.3, (int(np.prod(shapes[2])), 5)),
                         "bias": rng.normal(0, 0.1, 5)}
    ref = torch_conv.TorchConvEP((8, 8, 3), conv, (5,), params, cost="squared_error",
                                 dtype=torch.float64)
    x = torch.tensor(rng.uniform(0, 1, (2, 3, 8, 8)))
    s = [torch.tensor(rng.uniform(0.05, 0.95, (2,) + shp)) for shp in shapes[1:]]
    drive, _ = ref.input_drive(x)
    sv = [v.clone().requires_grad_(True) for v in s]
    grads = torch.autograd.grad(ref.energy(ref.W, ref.b, sv, x), sv)
    for l in range(1, ref.L + 1):
        h_expected = s[l - 1] - grads[l - 1]
        ref_h = _field(ref, s, drive, l)
        assert torch.allclose(ref_h, h_expected, atol=1e-10), l


def _field(ref, s, drive, l):
    """Layer l's field h_l: the sweep's update with rho replaced by the identity."""
    ref.rho = lambda h: h
    try:
        new, _ = ref._update_layers(s, drive, [l], None, 0.0)
    finally:
        del ref.rho
    return new[l - 1]


def test_flop_count_of_the_cifar_architecture():
    row = bench_conv.cifar_row(2, 10, 3)
    m, r = bench_conv.products(row)
    # multiply-adds per example of one product: 32x32x128x27, 16x16x256x(9x128),
    # 8x8x512x(9x256), 2x2x512x(9x512) (pad 0: 4x4 -> 2x2, pooled to 1x1); readout 512x10
    assert m == [2 * 32 * 32 * 128 * 27, 2 * 16 * 16 * 256 * 1152, 2 * 8 * 8 * 512 * 2304,
                 2 * 2 * 2 * 512 * 4608]
    assert r == 2 * 512 * 10
    f = bench_conv.flops(row)
    assert f["per_sweep"] == 4 * sum(m[1:])
    assert f["training_step"] == (2 * m[0] + 16 * f["per_sweep"] + 6 * 4 * r
                                  + 2 * m[0] + 8 * sum(m[1:]) + 8 * r)
    assert [row.energy().map_shapes[i] for i in range(5)] == [
        (32, 32, 3), (16, 16, 128), (8, 8, 256), (4, 4, 512), (1, 1, 512)]


def test_conv_suites_list_and_refuse_existing_results(tmp_path, capsys):
    assert bench.main(["--suite", "conv-gpu", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "conv:cifar10-128-256-512-512/B128/T250+2x25/fp-sync/float32" in listed
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert bench.main(["--suite", "conv-smoke", "--json", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="suite: expected one of"):
        bench_conv.conv_suite_rows("conv-huge")
    # conv-cpu relaxes fully unrolled (XLA CPU's rolled-loop convs are slow), conv-gpu rolled
    assert {r.unrolls() for r in bench_conv.conv_suite_rows("conv-cpu")} == {(10, 3)}
    assert {r.unrolls() for r in bench_conv.conv_suite_rows("conv-gpu")} == {(1, 1)}
    energy, phases, _ = bench_conv.row_setup(bench_conv.conv_suite_rows("conv-cpu")[0])
    assert (phases.free.unroll, phases.nudged.unroll) == (10, 3)


@pytest.mark.slow
def test_conv_smoke_suite_with_torch_runs_and_writes_results(tmp_path):
    """``python -m benchmarks.suite --suite conv-smoke``: parity check, JAX and torch variants,
    JSON and Markdown (no timing asserts)."""
    js, md = tmp_path / "c.json", tmp_path / "c.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--suite", "conv-smoke",
                           "--only", "fp-sync", "--json", str(js), "--markdown", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(js.read_text())
    assert max(doc["reference_checks"].values()) <= AUTOGRAD_TOL
    (row,) = doc["rows"]
    assert row["status"] == "ok" and row["steps_taken"] == [3, 2]
    assert row["flops"]["training_step"] == bench_conv.flops(bench_conv.conv_suite_rows("conv-smoke")[0])["training_step"]
    assert row["torch"]["variants"]["eager_nchw_hand"]["status"] == "ok"
    assert row["speedup_vs_torch_best"] > 0 and doc["environment"]["torch_num_threads"] >= 1
    assert "torch / JAX" in md.read_text()

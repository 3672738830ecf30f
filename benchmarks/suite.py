"""Relaxation-throughput benchmark suite (GitHub issue 6): ep_jax against PyTorch, and against
the machine's own limits.

The JAX side -- the grid of rows, the timing, the FLOP and byte counts, the device's measured
matmul peak and bandwidth, the roofline -- is ``ep_jax.bench`` (also ``ep-jax bench``, JAX only,
from an installed package). This script adds what needs PyTorch, for every row, in the same
process, after warm-up, as the median (and min) of several samples (torch: ``cuda.synchronize``
on a GPU):

* the PyTorch references of ``tests/reference/torch_refs.py`` on the same shapes and step
  counts: seed 001 as written, seed 002's library style, and the fastest plain PyTorch (eager,
  and ``torch.compile`` where the suite asks for it and it works), with their agreement with
  the JAX step checked first (``torch_refs.check_references``);
* the speed-ups against them, the issue's targets, and PNG plots of the cost growth with width,
  depth and batch (log-log, fitted exponents).

It writes JSON (rows + environment), Markdown (targets, headline, full table, notes) and the
plots, by default to ``benchmarks/results/<device>.*``; existing results are never replaced
unless ``--overwrite`` is given.

Usage (from the repository root)::

    python -m benchmarks.suite --suite quick            # a few minutes on 2 CPU cores, incl. torch
    python benchmarks/suite.py --suite cpu               # the fuller CPU grid (~15 min)
    python benchmarks/suite.py --suite gpu               # the large grid (accelerators only)
    python benchmarks/suite.py --suite smoke --json /tmp/s.json --markdown /tmp/s.md --plots-dir /tmp/p
    python -m benchmarks.suite --suite conv-cpu          # conv EP rows vs tests/reference/torch_conv.py
    python -m benchmarks.suite --suite conv-gpu          # the issue's full CIFAR-10 step (accelerators)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ep_jax import bench, bench_conv  # noqa: E402
from ep_jax.bench import CENTER, DEMO, TOL, Row, Settings, flops, fmt, ms  # noqa: E402
from tests.reference import torch_refs  # noqa: E402

REF_BUDGET_S = 60.0  # a reference is skipped only when measuring it would take longer
DATA_DIR = REPO.parent / "shared" / "data"  # the offline MNIST t10k files (see its README)


# ------------------------------------------------------------------------------------------
# The torch side
# ------------------------------------------------------------------------------------------
def available_memory_bytes(device: str) -> float:
    """Free memory of torch's device (``cuda``: its allocator's view) or of the host."""
    if device == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info()
            return float(free)
        except Exception:  # noqa: BLE001
            return 16.0 * 2**30
    return bench.available_memory_bytes("cpu")


def _estimate_ref_s(name: str, row: Row, torch_gflops: float) -> float:
    """Seconds of one reference step from FLOPs at the measured torch matmul rate, times a
    work factor (seed 001 redoes the input product per step and back-propagates the unrolled
    graph; seed 002 recomputes the energy with both coupling halves per step)."""
    f = flops(row.sizes, row.batch, row.t_free + row.t_nudged)
    per_step_full = f["per_relaxation_step"] + f["input_product"]
    work = {"seed001": 6.0 * (row.t_free + row.t_nudged) * per_step_full,
            "seed002": 4.0 * (row.t_free + row.t_nudged) * per_step_full,
            "torch_best": f["training_step"]}[name]
    return work / max(torch_gflops, 1e-3) / 1e9


_TORCH_RATE: dict = {}  # torch's matmul rate per (device, dtype), measured once


def torch_matmul_gflops(device: str, dtype: str) -> float:
    """torch's rate on a 1024^2 matmul (for the references' time estimates), best of 5."""
    k = ("torch", device, dtype)
    if k not in _TORCH_RATE:
        n = 1024
        dt = torch_refs.TORCH_DTYPES[dtype]
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        a @ b
        torch_refs.sync(device)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            torch_refs.sync(device)
            ts.append(time.perf_counter() - t0)
        _TORCH_RATE[k] = 2 * n**3 / min(ts) / 1e9
    return _TORCH_RATE[k]


def _memory_ok_seed001(row: Row) -> tuple:
    """Seed 001 keeps every step of both phases in the autograd graph."""
    item = 2 if row.dtype == "bfloat16" else 4
    per_step = row.batch * sum(row.sizes[1:]) * item * 8 + row.batch * row.sizes[0] * item
    need = per_step * (row.t_free + row.t_nudged)
    avail = available_memory_bytes(torch_refs.torch_device())
    return need < 0.4 * avail, need


def bench_ref(name: str, row: Row, weights, biases, x_np, y_np, settings: Settings,
              compile: bool = False) -> dict:
    device = torch_refs.torch_device()
    label = name + ("_compile" if compile else "")
    est = _estimate_ref_s(name, row, torch_matmul_gflops(device, row.dtype))
    base = {"name": label, "device": device, "estimated_step_s": est}
    if est > REF_BUDGET_S:  # not even one step to measure it by
        return {**base, "status": "skipped",
                "reason": f"estimated {est:.0f} s per step (its FLOPs at this device's torch "
                          f"matmul rate): one step alone > {REF_BUDGET_S:.0f} s"}
    if name == "seed001":
        ok, need = _memory_ok_seed001(row)
        if not ok:
            return {**base, "status": "skipped",
                    "reason": f"its unrolled autograd graph needs ~{need / 2**30:.1f} GiB"}
    kw = torch_refs.ref_kwargs(row)
    try:
        if name == "torch_best":
            ref, why = torch_refs.make_torch_best(weights, biases, solver=row.solver, tol=TOL,
                                                  compile=compile, **kw)
            if why is not None:
                return {**base, "status": "failed", "reason": f"torch.compile: {why}"}
        elif name == "seed002":
            ref = torch_refs.Seed002Ref(weights, biases, batch_size=row.batch, **kw)
        else:
            ref = torch_refs.Seed001Ref(weights, biases, **kw)
        x, y = ref.inputs(x_np, y_np)
        t0 = time.perf_counter()
        ref.step(x, y)  # the first step (torch.compile compiles here)
        ref.sync()
        one_s = first_s = time.perf_counter() - t0
        if compile:
            t0 = time.perf_counter()
            ref.step(x, y)
            ref.sync()
            one_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 -- a reference failure must not stop the suite
        return {**base, "status": "failed",
                "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                "traceback": traceback.format_exc(limit=3)}
    base["first_step_s"] = first_s
    n_more = settings.warmup - 1 + settings.torch_repeats
    if n_more * one_s > REF_BUDGET_S:
        return {**base, "status": "skipped", "one_step_s": one_s,
                "reason": f"one step took {one_s:.1f} s: measuring it ({n_more} more steps) "
                          f"would take {n_more * one_s:.0f} s > {REF_BUDGET_S:.0f} s"}
    for _ in range(max(0, settings.warmup - 1)):
        ref.step(x, y)
    ref.sync()
    ticks0 = bench.cpu_ticks()
    samples, inner = bench.time_samples(lambda: ref.step(x, y), ref.sync, settings.torch_repeats,
                                        settings.min_sample_s, one_s)
    out = {**base, "status": "ok", **bench.summary(samples, inner),
           "cpu_during_timing": bench.cpu_usage(ticks0, bench.cpu_ticks())}
    if hasattr(ref, "last_steps"):
        out["steps_taken"] = list(ref.last_steps)
    if name == "torch_best" and not compile:
        # the free phase alone, for the relaxation-throughput comparison
        ref.free(x)
        ref.sync()
        fs, finner = bench.time_samples(lambda: ref.free(x), ref.sync, settings.torch_repeats,
                                        settings.min_sample_s,
                                        one_s * row.t_free / (row.t_free + row.t_nudged))
        out["free"] = bench.summary(fs, finner)
        out["free"]["example_steps_per_s"] = (row.batch * ref.last_steps[0]
                                              / (out["free"]["median_ms"] / 1e3))
    return out


# ------------------------------------------------------------------------------------------
# One row: the JAX measurement of ep_jax.bench, then the references on the same inputs
# ------------------------------------------------------------------------------------------
def run_row(row: Row, settings: Settings, limits: dict, data_dir=DATA_DIR) -> dict:
    out = bench.run_row(row, settings, limits, data_dir)
    if out["status"] != "ok":
        return out
    t0 = time.perf_counter()
    weights, biases, x_np, y_np, _ = bench.row_inputs(row, data_dir)  # the JAX side's inputs
    median_ms = out["median_ms"]
    refs = {}
    for name in row.refs:
        print(f"    {name} ...", flush=True)
        refs[name] = bench_ref(name, row, weights, biases, x_np, y_np, settings)
    if row.compile and "torch_best" in row.refs:
        print("    torch_best (torch.compile) ...", flush=True)
        refs["torch_best_compile"] = bench_ref("torch_best", row, weights, biases, x_np, y_np,
                                               settings, compile=True)
    out["refs"] = refs
    for name in ("seed001", "seed002"):
        r = refs.get(name)
        out[f"{name}_ms"] = r["median_ms"] if r and r["status"] == "ok" else None
        out[f"speedup_vs_{name}"] = (r["median_ms"] / median_ms) if r and r["status"] == "ok" else None
    best = [r for k, r in refs.items() if k.startswith("torch_best") and r["status"] == "ok"]
    if best:
        b = min(best, key=lambda r: r["median_ms"])
        out["torch_best_ms"] = b["median_ms"]
        out["torch_best_variant"] = "torch.compile" if b["name"].endswith("_compile") else "eager"
        out["speedup_vs_torch_best"] = b["median_ms"] / median_ms
    else:
        out["torch_best_ms"] = out["torch_best_variant"] = out["speedup_vs_torch_best"] = None
    tb = refs.get("torch_best")
    out["torch_best_example_steps_per_s"] = (tb["free"]["example_steps_per_s"]
                                             if tb and tb["status"] == "ok" else None)
    out["row_wall_s"] += time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------
# Environment, reporting
# ------------------------------------------------------------------------------------------
def environment(suite: str) -> dict:
    env = bench.environment(suite)
    env.update({"torch_device": torch_refs.torch_device(),
                "torch_num_threads": torch.get_num_threads(),
                "torch_num_interop_threads": torch.get_num_interop_threads(),
                "torch": torch.__version__})
    if torch.cuda.is_available():
        env["torch_cuda_device"] = torch.cuda.get_device_name(0)
        env["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return env


def _ref_cell(row, name):
    r = row.get("refs", {}).get(name)
    if r is None:
        return "—"
    if r["status"] != "ok":
        return f"{r['status']}"
    return ms(r["median_ms"])


def targets(rows, limits) -> list:
    """(description, reached, detail) for the issue's targets."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for row, goal in ((DEMO, 50.0), (CENTER, 20.0)):
        r = by_id.get(row.id)
        s = r.get("speedup_vs_seed001") if r else None
        out.append((f">= {goal:.0f}x seed 001 at {row.id}", None if s is None else s >= goal,
                    "not measured" if s is None else
                    f"{s:.1f}x (JAX {r['median_ms']:.3f} ms, seed 001 {r['seed001_ms']:.1f} ms)"))
    big = [r for r in rows if r.get("status") == "ok" and r["batch"] >= 256
           and r.get("speedup_vs_torch_best") is not None]
    slower = [r for r in big if r["speedup_vs_torch_best"] < 1.0]
    out.append(("faster than the best plain PyTorch at every row with B >= 256",
                None if not big else not slower,
                f"{len(big) - len(slower)}/{len(big)} rows" +
                ("" if not slower else "; slower at: " + ", ".join(
                    f"{r['id']} ({r['speedup_vs_torch_best']:.2f}x)" for r in slower))))
    r = by_id.get(CENTER.id)
    if r and r.get("status") == "ok":
        out.append((f"<= 2x the FLOP floor at {CENTER.id}", r["floor_ratio"] <= 2.0,
                    f"{r['median_ms']:.2f} ms = {r['floor_ratio']:.2f}x the floor "
                    f"({r['flops']['training_step'] / 1e9:.3f} GFLOP at the measured "
                    f"{r['device_peak_gflops']:.0f} GFLOP/s = {r['floor_ms']:.2f} ms); "
                    f"issue's fixed bound 4.2 ms: {'met' if r['median_ms'] <= 4.2 else 'missed'}"))
    else:
        out.append((f"<= 2x the FLOP floor at {CENTER.id}", None, "not measured"))
    return out


TORCH_NOTES = [
    "PyTorch references: timed like the JAX step (median (min) of the samples, each sample "
    "enough steps back to back to last the suite's minimum sample time, then a sync: "
    "`cuda.synchronize` on a GPU), from the same parameters and batch, on the same shapes and "
    "step counts, in the same process after the JAX side.",
    "seed001 = `tests/reference/seed001.py` (faithful port) running the body of the seed's "
    "training loop: autograd with create_graph=True at every step, nudged phase restarted "
    "from zeros, update back-propagated through the unrolled trajectory (the seed's math: the "
    "relaxation equals ep_jax's, the update does not). seed002 = seed 002's library style "
    "(`u_relax`, one backward() and one host sync per step, contrastive update through "
    "torch.optim.SGD), adapted to the same math: hard-sigmoid phi, clamp_(0, 1) after each "
    "Euler step, cost beta ||u - y||^2, states from zeros, tol = 0 (see "
    "`tests/reference/torch_refs.py`). torch_best = hand-derived gradients, no autograd, input "
    "product once per training step, in-place fused updates, input-layer weight gradient as one "
    "product; `torch_best_compile` = the same with torch.compile on the per-step kernels; "
    "`speedup_vs_torch_best` uses the faster of the two.",
    "Numerical agreement (tiny net, fixed +beta, float32; `check_references` in "
    "tests/reference/torch_refs.py, also run by tests/test_bench_suite.py): torch_best (every "
    "solver) and seed002 give the JAX step's update; seed 001 gives its free and "
    "nudged-from-zeros states.",
    "Seeds 001/002 implement fixed-step gradient descent only: they are run on `gd` rows; "
    "the other solvers are compared with torch_best, which implements them all "
    "(gd-tol: the same max_b ||s_{t+1} - s_t|| <= tol test, a host sync per step; fp-sync / "
    "fp-async: ep_jax's FixedPoint sweeps incl. its nudged-output majoriser).",
    f"A reference is skipped when its estimated (from FLOPs, or from one measured step) "
    f"measurement exceeds {REF_BUDGET_S:.0f} s; the reason is recorded.",
]
NOTES = bench.NOTES + TORCH_NOTES


def write_markdown(path, env, rows, limits, checks, wall_s):
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    L = [f"# EP relaxation throughput: {env['device_slug']} (suite `{env['suite']}`)", ""]
    L += [f"- date: {env['date']}; {bench.git_line(env['git'])}",
          f"- device: {env['device_kind']} ({env['jax_platform']}); CPU: {env['cpu']} "
          f"({env['os_cpu_count']} logical cores, {env['affinity_cpus']} usable); torch on "
          f"{env['torch_device']} ({env['torch_num_threads']} threads)",
          f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, torch {env['torch']}, "
          f"optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
          bench.limits_line(limits),
          f"- load average at start / end: {env.get('loadavg_start')} / {env.get('loadavg_end')}; "
          f"machine busy share over the run: {env.get('cpu_during_run')}",
          f"- wall time: {wall_s:.1f} s; rows: {len(ok)} measured, {len(skipped)} skipped", ""]
    L += ["## Targets", "", "| target | reached? | measured |", "|---|---|---|"]
    for desc, reached, detail in targets(rows, limits):
        L.append(f"| {desc} | {'—' if reached is None else ('yes' if reached else '**no**')} | {detail} |")
    if checks:
        L += ["", "Reference agreement with the JAX step (relative difference, float32): " +
              ", ".join(f"{k} {v:.1e}" for k, v in checks.items())]
    L += [""]
    head = [r for r in ok if r["tag"].startswith("target")]
    L += ["## Headline", "",
          "| row | JAX ms/step (median / min) | seed001 ms | seed002 ms | torch best ms | "
          "× seed001 | × seed002 | × torch best | GFLOP/s | % of row peak | floor ratio | bound |",
          "|" + "---|" * 12]
    for r in head:
        L.append(f"| {r['id']} | {ms(r['median_ms'])} / {ms(r['min_ms'])} | {_ref_cell(r, 'seed001')} "
                 f"| {_ref_cell(r, 'seed002')} | {ms(r['torch_best_ms'])} ({r['torch_best_variant'] or '—'}) "
                 f"| {fmt(r['speedup_vs_seed001'], '.1f')} | {fmt(r['speedup_vs_seed002'], '.1f')} "
                 f"| {fmt(r['speedup_vs_torch_best'], '.2f')} | {r['gflops']:.1f} "
                 f"| {100 * r['peak_fraction']:.0f}% | {r['floor_ratio']:.2f} | {r['bound']} |")
    L += ["", "## All rows", "",
          "| row | steps | JAX ms (med / min) | free phase ms | example·steps/s (JAX / torch best) "
          "| seed001 ms | seed002 ms | torch best ms | compile ms | × s001 | × s002 | × best "
          "| GFLOP/s | row peak | % peak | floor ratio | AI (FLOP/B) | bound |",
          "|" + "---|" * 18]
    for r in ok:
        tbc = r["refs"].get("torch_best_compile")
        comp = "—" if tbc is None else (ms(tbc["median_ms"]) if tbc["status"] == "ok" else tbc["status"])
        L.append(
            f"| {r['id']} | {'+'.join(map(str, r['steps_taken']))} | {ms(r['median_ms'])} / {ms(r['min_ms'])} "
            f"| {ms(r['free_median_ms'])} | {r['example_steps_per_s']:.3g} / "
            f"{fmt(r['torch_best_example_steps_per_s'], '.3g')} | {_ref_cell(r, 'seed001')} "
            f"| {_ref_cell(r, 'seed002')} | {_ref_cell(r, 'torch_best')} | {comp} "
            f"| {fmt(r['speedup_vs_seed001'], '.1f')} | {fmt(r['speedup_vs_seed002'], '.1f')} "
            f"| {fmt(r['speedup_vs_torch_best'], '.2f')} | {r['gflops']:.1f} | {r['peak_gflops']:.1f} "
            f"| {100 * r['peak_fraction']:.0f}% | {r['floor_ratio']:.1f} | {r['arithmetic_intensity']:.1f} "
            f"| {r['bound']} |")
    ref_skips = [(r["id"], k, v) for r in ok for k, v in r["refs"].items() if v["status"] != "ok"]
    if skipped or ref_skips:
        L += ["", "## Skipped", "", "| row | what | reason |", "|---|---|---|"]
        for r in skipped:
            L.append(f"| {r['id']} | whole row | {r.get('skip_reason', '')} |")
        for rid, k, v in ref_skips:
            L.append(f"| {rid} | {k} ({v['status']}) | {v.get('reason', '')} |")
    L += bench.hlo_lines(rows)
    L += ["", "## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    Path(path).write_text("\n".join(L))


# ------------------------------------------------------------------------------------------
# Plots: cost growth with width, depth and batch
# ------------------------------------------------------------------------------------------
AXES = {
    "width": lambda r: r["depth"] == 1 and r["batch"] == 256,
    "depth": lambda r: r["width"] == 500 and r["batch"] == 256,
    "batch": lambda r: r["depth"] == 1 and r["width"] == 500,
}


def _axis_rows(rows, axis):
    sel = [r for r in rows if r.get("status") == "ok" and r["solver"] == "gd"
           and r["dtype"] == "float32" and r["t_free"] == 20 and r["t_nudged"] == 4
           and AXES[axis](r)]
    return sorted(sel, key=lambda r: r[axis])


def fit_exponent(xs, ys):
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def write_plots(rows, plots_dir, title) -> list:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    series = (("JAX (ep_jax)", lambda r: r["median_ms"]),
              ("torch best", lambda r: r.get("torch_best_ms")),
              ("seed 002 style", lambda r: r.get("seed002_ms")),
              ("seed 001", lambda r: r.get("seed001_ms")))
    for axis in AXES:
        sel = _axis_rows(rows, axis)
        if len(sel) < 2:
            continue
        fig = Figure(figsize=(6, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for label, get in series:
            pts = [(r[axis], get(r)) for r in sel if get(r) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            k = fit_exponent(xs, ys)
            ax.plot(xs, ys, marker="o", label=f"{label}" + ("" if k is None else f" (∝ {axis}^{k:.2f})"))
        fixed = {"width": "1 hidden layer, B = 256", "depth": "width 500, B = 256",
                 "batch": "784-500-10"}[axis]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel({"width": "hidden width", "depth": "hidden layers", "batch": "batch"}[axis])
        ax.set_ylabel("ms per training step")
        ax.set_title(f"{title}: {fixed}, T = 20+4, gd, float32", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots_dir / f"cost_vs_{axis}.png"
        fig.savefig(path, format="png", dpi=100, facecolor="white")
        fig.clear()
        written.append(str(path))
    return written


def exponents(rows) -> dict:
    out = {}
    for axis in AXES:
        sel = _axis_rows(rows, axis)
        for name, key in (("jax", "median_ms"), ("torch_best", "torch_best_ms"),
                          ("seed002", "seed002_ms"), ("seed001", "seed001_ms")):
            pts = [(r[axis], r[key]) for r in sel if r.get(key) is not None]
            if len(pts) >= 2:
                out[f"{name}_vs_{axis}"] = fit_exponent(*zip(*pts))
    return out


# ------------------------------------------------------------------------------------------
# Conv rows (ep_jax/bench_conv.py) side by side with tests/reference/torch_conv.py
# ------------------------------------------------------------------------------------------
# The plain-PyTorch variants timed per row; the torch.compile one takes the fastest eager one's
# layout and update path. Their fastest is "torch best".
TORCH_CONV_EAGER = (
    ("eager_nchw_hand", {"update": "hand", "channels_last": False}),
    ("eager_channels_last_hand", {"update": "hand", "channels_last": True}),
    ("eager_channels_last_autograd", {"update": "autograd", "channels_last": True}),
)


def torch_conv_peak(light: bool = False) -> dict:
    """torch's GFLOP/s on the chain of ``bench_conv.conv_peak`` (same shape, 3x3 'same' convs),
    NCHW and channels-last, the better one, best of 5."""
    import torch.nn.functional as F

    B, H, W, C = bench_conv.PEAK_SHAPE["light" if light else ("cpu" if torch_refs.torch_device() == "cpu"
                                                               else "accelerator")]
    k = 4 if torch_refs.torch_device() == "cpu" else 16
    best = {}
    for fmt_name, mf in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        a = torch.randn(B, C, H, W, device=torch_refs.torch_device()).contiguous(memory_format=mf)
        w = (torch.randn(C, C, 3, 3, device=a.device) / (9 * C) ** 0.5).contiguous(memory_format=mf)

        def chain():
            v = a
            for _ in range(k):
                v = F.conv2d(v, w, padding=1)
            return v

        with torch.no_grad():
            chain()
            torch_refs.sync(torch_refs.torch_device())
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                chain()
                torch_refs.sync(torch_refs.torch_device())
                ts.append(time.perf_counter() - t0)
        best[fmt_name] = 2 * B * H * W * C * 9 * C * k / min(ts) / 1e9
    fmt_best = max(best, key=best.get)
    return {"float32": {"gflops": best[fmt_best], "layout": fmt_best, "by_layout": best,
                        "shape_nchw": [B, C, H, W], "convs": k}}


def bench_torch_conv(row, name, kw, params, x_np, y_np, settings: Settings) -> dict:
    """One torch variant of a conv row, timed like the JAX step (first step incl. any
    compilation, then ``warmup`` steps, then the samples); skipped if measuring it would exceed
    the suite's per-row budget."""
    from tests.reference import torch_conv

    base = {"name": name, **kw}
    try:
        ref, why = torch_conv.make(row.in_shape, torch_conv.conv_layers(row.conv), (), params,
                                   cost="readout", t_free=row.t_free, t_nudged=row.t_nudged,
                                   beta=bench_conv.BETA, order=row.order, lrs=row.rates(),
                                   dtype=torch_refs.TORCH_DTYPES[row.dtype],
                                   device=torch_refs.torch_device(), **kw)
        if why is not None:
            return {**base, "status": "failed", "reason": f"torch.compile: {why}"}
        x, y = ref.inputs(x_np, y_np)
        t0 = time.perf_counter()
        ref.step(x, y)  # torch.compile compiles here
        ref.sync()
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref.step(x, y)
        ref.sync()
        one_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 -- a failing variant (e.g. torch.compile) is recorded
        return {**base, "status": "failed",
                "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                "traceback": traceback.format_exc(limit=3)}
    n_more = max(0, settings.warmup - 1) + settings.torch_repeats
    if n_more * one_s > settings.row_budget_s:
        return {**base, "status": "skipped", "first_step_s": first_s, "one_step_s": one_s,
                "reason": f"one step took {one_s:.1f} s: {n_more} more would exceed the "
                          f"{settings.row_budget_s:.0f} s row budget"}
    for _ in range(max(0, settings.warmup - 1)):
        ref.step(x, y)
    ref.sync()
    ticks0 = bench.cpu_ticks()
    samples, inner = bench.time_samples(lambda: ref.step(x, y), ref.sync, settings.torch_repeats,
                                        settings.min_sample_s, one_s)
    return {**base, "status": "ok", "first_step_s_incl_compile": first_s,
            **bench.summary(samples, inner),
            "cpu_during_timing": bench.cpu_usage(ticks0, bench.cpu_ticks())}


def run_conv_row(row, settings: Settings, limits: dict) -> dict:
    """The JAX row of ep_jax.bench_conv, then the torch variants on the same inputs."""
    out = bench_conv.run_conv_row(row, settings, limits)
    if out["status"] != "ok":
        return out
    t0 = time.perf_counter()
    params, x, y = bench_conv.row_inputs(row)  # exactly the JAX side's
    variants = {}
    for name, kw in TORCH_CONV_EAGER:
        print(f"    torch {name} ...", flush=True)
        variants[name] = bench_torch_conv(row, name, kw, params, x, y, settings)
    ok = {k: v for k, v in variants.items() if v["status"] == "ok"}
    if row.compile and ok:
        best_eager = min(ok, key=lambda k: ok[k]["median_ms"])
        kw = {**dict(TORCH_CONV_EAGER)[best_eager], "compile": True}
        print(f"    torch compile ({best_eager}'s layout and update) ...", flush=True)
        variants["compile"] = bench_torch_conv(row, "compile", kw, params, x, y, settings)
    ok = {k: v for k, v in variants.items() if v["status"] == "ok"}
    eager = {k: v for k, v in ok.items() if k != "compile"}
    out["torch"] = {"variants": variants,
                    "eager": min(eager.values(), key=lambda v: v["median_ms"]) if eager else None,
                    "compile": variants.get("compile")}
    if ok:
        best = min(ok, key=lambda k: ok[k]["median_ms"])
        out["torch_best_variant"] = best
        out["torch_best_ms"] = ok[best]["median_ms"]
        out["speedup_vs_torch_best"] = ok[best]["median_ms"] / out["median_ms"]
        out["torch_best_gflops"] = out["flops"]["training_step"] / (ok[best]["median_ms"] / 1e3) / 1e9
        out["torch_best_peak_fraction"] = out["torch_best_gflops"] / out["peak_gflops"]
    else:
        out["torch_best_variant"] = out["torch_best_ms"] = out["speedup_vs_torch_best"] = None
    out["row_wall_s"] += time.perf_counter() - t0
    return out


CONV_TORCH_NOTES = [
    "PyTorch: `tests/reference/torch_conv.py` (`TorchConvEP`), the same energy, sweeps and "
    "symmetric-EP update derived by hand (no autograd in the relaxation, `torch.no_grad`, input "
    "drive once per step, forward conv + `max_unpool2d` + `conv_transpose2d` per connection and "
    "sweep, states never re-clamped); variants: NCHW or channels-last maps, the parameter "
    "gradient by hand (`conv2d_weight`) or by autograd of E once per phase, and `torch.compile` "
    "of the sweep on the fastest eager variant; torch best = the fastest; torch / JAX = its "
    "median / JAX's median (> 1: JAX faster). Same parameters, batch, step counts and process, "
    "timed after the JAX side; torch intra-op threads = the cores JAX uses.",
    "Agreement (checked before timing; tiny net, float32): free, +beta and -beta states and "
    "the gradient of torch and JAX, both sweep orders, readout and squared-error costs "
    "(`reference_checks` in the JSON).",
]


def conv_environment(suite: str) -> dict:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from tests.reference import torch_conv

    torch_conv.set_threads(n)  # the same cores as XLA's CPU client uses
    return environment(suite)


def conv_main(args) -> int:
    """``--suite conv-*``: ep_jax/bench_conv.py's rows with the torch variants."""
    from tests.reference import torch_conv

    try:
        rows_spec = bench_conv.select_conv_rows(args.suite, args.only)
        if args.list:
            for row in rows_spec:
                print(row.id, row.tag)
            return 0
        results = REPO / "benchmarks" / "results"
        stem = args.suite.replace("-", "_")
        json_path = Path(args.json) if args.json else results / f"{stem}.json"
        md_path = Path(args.markdown) if args.markdown else results / f"{stem}.md"
        bench.refuse_existing({"--json": json_path, "--markdown": md_path}, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"python -m benchmarks.suite: error: {err}", file=sys.stderr)
        return 2
    t_start, ticks_start = time.perf_counter(), bench.cpu_ticks()
    settings = bench_conv.CONV_SUITES[args.suite]
    env = conv_environment(args.suite)
    print(f"suite {args.suite} on {env['device_slug']} ({env['device_kind']}); torch on "
          f"{env['torch_device']} ({env['torch_num_threads']} threads)", flush=True)
    skip = bench.accelerator_skip(args.suite, settings, args.force)
    checks = {}
    if skip is not None:
        limits = {}
    else:
        print("measuring the device: conv and matmul peaks (JAX, torch) ...", flush=True)
        limits = bench_conv.measure_conv_limits(settings)
        limits["torch_conv_peak"] = torch_conv_peak(settings.light_limits)
        print("checking the torch reference against the JAX step ...", flush=True)
        checks = torch_conv.check_conv_references(quick=args.suite == "conv-smoke")
        print(f"  worst relative difference {max(checks.values()):.2e}", flush=True)
    rows = bench.run_rows(rows_spec, lambda row: run_conv_row(row, settings, limits),
                          _describe_conv, skip)
    wall_s = time.perf_counter() - t_start
    bench.finish_environment(env, ticks_start)
    notes = bench_conv.NOTES + CONV_TORCH_NOTES
    doc = {"environment": env, "suite": args.suite, "settings": dataclasses.asdict(settings),
           "wall_s": wall_s, "limits": limits, "reference_checks": checks, "notes": notes,
           "rows": rows}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    bench.write_json(json_path, doc)
    bench_conv.write_markdown(md_path, env, rows, limits, wall_s, CONV_TORCH_NOTES, checks)
    print(f"wall time {wall_s:.1f} s; wrote {json_path}, {md_path}", flush=True)
    return 0


def _describe_conv(r: dict) -> str:
    return (f"JAX {r['median_ms']:.1f} ms/step ({r['gflops']:.1f} GFLOP/s, "
            f"{100 * r['peak_fraction']:.0f}% of peak); torch best {fmt(r.get('torch_best_ms'), '.1f')} "
            f"ms ({r.get('torch_best_variant')}); torch / JAX {fmt(r.get('speedup_vs_torch_best'), '.2f')} "
            f"({r['row_wall_s']:.1f} s)")


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------
def _describe(r: dict) -> str:
    return (f"JAX {r['median_ms']:.3f} ms/step ({r['gflops']:.1f} GFLOP/s, "
            f"{100 * r['peak_fraction']:.0f}% of row peak, floor ratio {r['floor_ratio']:.2f}); "
            f"x seed001 {fmt(r['speedup_vs_seed001'], '.1f')}, x seed002 "
            f"{fmt(r['speedup_vs_seed002'], '.1f')}, x torch best "
            f"{fmt(r['speedup_vs_torch_best'], '.2f')} ({r['row_wall_s']:.1f} s)")


def main(argv=None) -> int:
    p = bench.parser("python -m benchmarks.suite",
                     "The rows of ep-jax bench side by side with the PyTorch references of "
                     "tests/reference/torch_refs.py: speed-ups, the issue's targets, scaling plots.",
                     outputs="benchmarks/results/<device>")
    p.set_defaults(data_dir=os.environ.get(bench.DATA_DIR_ENV) or str(DATA_DIR))
    p.add_argument("--plots-dir", default=None, help="default: benchmarks/results/<device>_plots")
    args = bench.parse_args(p, argv)
    if args.suite in bench.CONV_SUITE_NAMES:
        return conv_main(args)
    try:
        rows_spec = bench.select_rows(args.suite, args.only)
        if args.list:
            for row in rows_spec:
                print(row.id, row.tag)
            return 0
        slug = bench.device_slug()
        results = REPO / "benchmarks" / "results"
        json_path = Path(args.json) if args.json else results / f"{slug}.json"
        md_path = Path(args.markdown) if args.markdown else results / f"{slug}.md"
        plots_dir = Path(args.plots_dir) if args.plots_dir else results / f"{slug}_plots"
        bench.refuse_existing({"--json": json_path, "--markdown": md_path,
                               "--plots-dir": plots_dir}, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2

    t_start, ticks_start = time.perf_counter(), bench.cpu_ticks()
    settings = bench.SUITES[args.suite]
    env = environment(args.suite)
    if torch.cuda.is_available():
        # XLA's default float32 matmul on recent GPUs uses TF32; let torch do the same
        torch.backends.cuda.matmul.allow_tf32 = True
        env["torch_allow_tf32"] = True
    print(f"suite {args.suite} on {slug} ({env['device_kind']}); torch on {env['torch_device']}",
          flush=True)

    skip = bench.accelerator_skip(args.suite, settings, args.force)
    if skip is not None:  # nothing to measure: no probes either
        limits, checks = {"peak": {}, "bandwidth": {}, "memory_bytes": None}, {}
    else:
        print("measuring the device: matmul peak, memory bandwidth ...", flush=True)
        limits = bench.measure_limits(settings)
        print(f"  peak {limits['peak']['float32']['gflops']:.0f} GFLOP/s f32, "
              f"{limits['peak']['bfloat16']['gflops']:.0f} bf16; "
              f"{limits['bandwidth']['gbps']:.1f} GB/s", flush=True)
        print("checking the references against the JAX step ...", flush=True)
        checks = torch_refs.check_references()
        print(f"  worst relative difference {max(checks.values()):.2e}", flush=True)

    rows = bench.run_rows(rows_spec, lambda row: run_row(row, settings, limits, args.data_dir),
                          _describe, skip)
    wall_s = time.perf_counter() - t_start
    bench.finish_environment(env, ticks_start)
    plots = []
    try:
        plots = write_plots(rows, plots_dir, slug)
    except Exception as e:  # noqa: BLE001 -- plots are a convenience
        print(f"plots failed: {type(e).__name__}: {e}", flush=True)
    doc = {"environment": env, "suite": args.suite, "settings": dataclasses.asdict(settings),
           "wall_s": wall_s, "limits": limits, "reference_checks": checks,
           "targets": [{"target": d, "reached": ok, "measured": m} for d, ok, m in targets(rows, limits)],
           "exponents": exponents(rows), "plots": plots, "notes": NOTES, "rows": rows}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    bench.write_json(json_path, doc)
    write_markdown(md_path, env, rows, limits, checks, wall_s)
    print(f"wall time {wall_s:.1f} s; wrote {json_path}, {md_path}"
          + (f", {len(plots)} plots in {plots_dir}" if plots else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

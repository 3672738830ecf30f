"""Conv rows of the throughput harness (``ep-jax bench --suite conv-cpu``): one symmetric-EP
training step of a convolutional Hopfield net (``ConvHopfield``, fixed-point sweeps, softmax
readout), its FLOP floor and its fraction of this device's measured conv peak.

Built on ``ep_jax.bench`` (timing, environment, JSON / Markdown writers, the refusal to
overwrite results); JAX only, so it runs from an installed wheel. The side-by-side plain PyTorch
step (``tests/reference/torch_conv.py``) is added by the source tree's ``benchmarks/suite.py``
(``python -m benchmarks.suite --suite conv-cpu``).

The issue's architecture (Laborieux et al. 2021, CIFAR-10): input 32x32x3, conv layers of
128-256-512-512 channels, 3x3 kernels, paddings 1 1 1 0, each followed by a 2x2 max-pool
(maps 16x16, 8x8, 4x4, 1x1), a 10-way softmax readout of the last map, symmetric EP, beta 0.5,
T1 = 250 free and T2 = 25 nudged sweeps per phase (``conv-gpu``; ``conv-cpu`` runs reduced step
counts and batch, stated in the row id).

FLOP count of one training step (``flops``; multiply-adds count 2; only the conv /
transposed-conv / dense products: pooling, unpooling and the elementwise work are O(state),
against O(state x k^2 x C_in) for a product). With m_l the multiply-adds of one product of
connection l (conv: B H'_l W'_l C_out k^2 C_in over the pre-pool map H'_l x W'_l), r those of
the readout (B n_L K), T = T1 + 2 T2 sweeps:

* the input drive P(conv(W_0, x) + b_0): loop-invariant, once per step: 2 m_0;
* per sweep, for every connection l >= 1 between free layers: the forward conv (field from
  below, and the pool's argmax) and the transposed conv of the unpooled feedback: 2 x 2 m_l;
  per nudged sweep the readout's logits and its gradient back to s_L: 2 x 2 r;
* the update: the input layer's weight gradient as one product of x with the unpooled
  difference s^+_1 - s^-_1: 2 m_0; per nudged phase and connection l >= 1 the forward conv at
  the final state (the argmax) and the weight-gradient product: 2 x 2 x 2 m_l; the readout's
  logits and weight gradient per phase: 2 x 2 x 2 r.

The floor (``floor_ms``) is that count at the best rate measured in the same run on this device
(a chain of large convolutions in JAX, ``conv_peak``; the torch side adds its own conv chain);
``peak_fraction`` = achieved GFLOP/s / that rate.

Usage::

    ep-jax bench --suite conv-smoke                  # seconds
    ep-jax bench --suite conv-cpu --json out.json --markdown out.md
    ep-jax bench --suite conv-gpu --list             # the full-size rows (accelerators)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ep_jax import bench
from ep_jax.costs import SoftmaxReadout
from ep_jax.energies import ConvHopfield, conv_hopfield
from ep_jax.optim import per_part
from ep_jax.rules import Phases
from ep_jax.solvers import FixedPoint

RULE = "ep-symmetric"
BETA = 0.5
READOUT = "readout"

CIFAR_CONV = ((128, 3, 1, 1, 2), (256, 3, 1, 1, 2), (512, 3, 1, 1, 2), (512, 3, 1, 0, 2))
MNIST_CONV = ((32, 5, 1, 0, 2), (64, 5, 1, 0, 2))
# Laborieux et al. 2021's per-layer rates (CIFAR-10); the small net takes 0.1 throughout
CIFAR_LRS = (0.25, 0.15, 0.1, 0.08, 0.05)


@dataclasses.dataclass(frozen=True)
class ConvRow:
    """One conv benchmark point: the net (``in_shape``, ``conv`` as ``(channels, kernel, stride,
    padding, pool)`` tuples, a ``readout_classes``-way softmax readout of the last map), the batch,
    the free / per-nudged-phase sweep counts, the sweep order and the dtype."""

    name: str
    in_shape: tuple
    conv: tuple
    batch: int
    t_free: int
    t_nudged: int
    readout_classes: int = 10
    order: str = "synchronous"
    dtype: str = "float32"
    lrs: tuple = ()
    compile: bool = True  # also time the torch.compile variant of the reference
    tag: str = ""
    # sweeps per rolled loop iteration (FixedPoint.unroll); 0: fully unrolled (= the step
    # count: the fast form on XLA's CPU backend, docs/CONV_BENCH.md); 1: a rolled loop
    unroll: int = 1

    @property
    def id(self) -> str:
        return (f"conv:{self.name}/B{self.batch}/T{self.t_free}+2x{self.t_nudged}"
                f"/fp-{'sync' if self.order == 'synchronous' else 'async'}/{self.dtype}")

    def unrolls(self) -> tuple:
        """``(free, nudged)`` sweeps per rolled loop iteration of the two phases."""
        return ((self.unroll or self.t_free), (self.unroll or self.t_nudged))

    def energy(self) -> ConvHopfield:
        return conv_hopfield(self.in_shape, self.conv, dense=(), readout_classes=self.readout_classes)

    def rates(self) -> dict:
        n = len(self.conv)
        lrs = self.lrs or (0.1,) * (n + 1)
        return {**{f"layer_{l}": lrs[l] for l in range(n)}, READOUT: lrs[n]}


def cifar_row(batch, t_free, t_nudged, **kw) -> ConvRow:
    return ConvRow("cifar10-128-256-512-512", (32, 32, 3), CIFAR_CONV, batch, t_free, t_nudged,
                   lrs=CIFAR_LRS, **kw)


def mnist_row(batch, t_free, t_nudged, **kw) -> ConvRow:
    return ConvRow("mnist-32-64-5x5", (28, 28, 1), MNIST_CONV, batch, t_free, t_nudged, **kw)


def conv_suite_rows(name: str) -> list:
    """The rows of conv suite ``name`` (``conv-smoke``, ``conv-cpu``, ``conv-gpu``)."""
    if name == "conv-smoke":
        return [ConvRow("tiny-4-8", (8, 8, 3), ((4, 3, 1, 1, 2), (8, 3, 1, 0, 2)), 4, 3, 2,
                        compile=False, tag="smoke"),
                ConvRow("tiny-4-8", (8, 8, 3), ((4, 3, 1, 1, 2), (8, 3, 1, 0, 2)), 4, 3, 2,
                        order="asynchronous", compile=False, tag="smoke")]
    if name == "conv-cpu":
        return [cifar_row(16, 10, 3, unroll=0,
                          tag="target: CIFAR-10 architecture (CPU: B16, T 10+2x3, unrolled)"),
                mnist_row(64, 10, 3, unroll=0, tag="small net (MNIST architecture), unrolled"),
                mnist_row(64, 10, 3, order="asynchronous", compile=False, unroll=0,
                          tag="small net, async, unrolled")]
    if name == "conv-gpu":
        return [cifar_row(128, 250, 25, tag="target: the issue's CIFAR-10 step (B128, T 250+2x25)"),
                cifar_row(128, 250, 25, order="asynchronous", compile=False),
                cifar_row(128, 250, 25, dtype="bfloat16", compile=False),
                mnist_row(128, 250, 25)]
    raise ValueError(f"suite: expected one of {list(CONV_SUITES)}, received {name!r}")


def select_conv_rows(suite: str, only: str | None = None) -> list:
    """The rows of conv ``suite`` whose id matches the regular expression ``only`` (all if None)."""
    return bench.filter_rows(conv_suite_rows(suite), suite, only)


CONV_SUITES = {
    "conv-smoke": bench.Settings(2, 2, 1, 0.0, 60.0, light_limits=True),
    "conv-cpu": bench.Settings(5, 5, 1, 0.0, 900.0),
    "conv-gpu": bench.Settings(7, 5, 3, 0.05, 600.0, accelerator_only=True),
}


# ------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------
def products(row: ConvRow) -> tuple:
    """(multiply-adds of one product per connection, of one readout product)."""
    energy = row.energy()
    maps = energy.map_shapes
    B, out = row.batch, []
    for l, layer in enumerate(energy.conv):
        h, w, c_in = maps[l]
        ph = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
        pw = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
        out.append(B * ph * pw * layer.channels * layer.kernel ** 2 * c_in)
    return out, B * math.prod(maps[-1]) * row.readout_classes


def flops(row: ConvRow, sweeps=None) -> dict:
    """FLOPs of one training step (see the module docstring); ``sweeps``: (free, nudged per
    phase) actually run (default: the row's)."""
    t_free, t_nudged = sweeps or (row.t_free, row.t_nudged)
    m, r = products(row)
    drive = 2 * m[0]
    per_sweep = sum(2 * 2 * v for v in m[1:])
    nudged_extra = 2 * 2 * r
    update = 2 * m[0] + sum(2 * 2 * 2 * v for v in m[1:]) + 2 * 2 * 2 * r
    total = drive + (t_free + 2 * t_nudged) * per_sweep + 2 * t_nudged * nudged_extra + update
    return {"input_drive": drive, "per_sweep": per_sweep, "readout_per_nudged_sweep": nudged_extra,
            "update": update, "training_step": total}


# ------------------------------------------------------------------------------------------
# Device: a conv peak measured the same way as bench.device_peak
# ------------------------------------------------------------------------------------------
PEAK_SHAPE = {"light": (4, 8, 8, 32), "cpu": (16, 16, 16, 256), "accelerator": (128, 16, 16, 512)}


def conv_peak(dtype: str = "float32", light: bool = False) -> dict:
    """GFLOP/s of a jitted chain of 4 (CPU) / 16 3x3 'same' convolutions C -> C on a
    (B, H, W, C) NHWC map, best of 5 (the shape: ``PEAK_SHAPE``)."""
    key = ("conv_peak", dtype, light)
    if key in bench._CACHE:
        return bench._CACHE[key]
    cpu = bench.platform_name() == "cpu"
    shape = PEAK_SHAPE["light" if light else ("cpu" if cpu else "accelerator")]
    k = 4 if cpu else 16
    B, H, W, C = shape
    dt = bench.DTYPES[dtype]
    a = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32).astype(dt)
    w = (jax.random.normal(jax.random.PRNGKey(1), (3, 3, C, C)) / math.sqrt(9 * C)).astype(dt)
    conv = lambda v, w: jax.lax.conv_general_dilated(  # noqa: E731
        v, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    f = jax.jit(lambda a, w: jax.lax.fori_loop(0, k, lambda _, v: conv(v, w), a))
    jax.block_until_ready(f(a, w))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, w))
        ts.append(time.perf_counter() - t0)
    res = {"shape_nhwc": list(shape), "kernel": 3, "convs": k,
           "gflops": 2 * B * H * W * C * 9 * C * k / min(ts) / 1e9}
    bench._CACHE[key] = res
    return res


def measure_conv_limits(settings: bench.Settings) -> dict:
    """The conv peak (JAX) per dtype and the matmul peak of ``bench.device_peak``."""
    light = settings.light_limits
    return {"conv_peak": {dt: conv_peak(dt, light) for dt in bench.DTYPES},
            "peak": {dt: bench.device_peak(dt, light) for dt in bench.DTYPES}}


# ------------------------------------------------------------------------------------------
# The JAX step of a row
# ------------------------------------------------------------------------------------------
def row_setup(row: ConvRow):
    """``(energy, phases, optimizer)``: ConvHopfield with a softmax readout, FixedPoint sweeps
    of the row's order and unroll in both phases, beta 0.5, per-layer SGD."""
    energy = row.energy()
    u_free, u_nudged = row.unrolls()
    phases = Phases(BETA, free=FixedPoint(row.t_free, order=row.order, unroll=u_free),
                    nudged=FixedPoint(row.t_nudged, order=row.order, unroll=u_nudged),
                    cost=SoftmaxReadout(head=READOUT))
    return energy, phases, per_part(optax.sgd, row.rates())


def row_inputs(row: ConvRow, seed: int = 0):
    """``(params, x, y)`` as numpy (ep_jax layouts): the energy's init from PRNGKey(seed),
    inputs uniform in [0, 1) ``(batch, H, W, C)``, random labels. The torch side starts from
    exactly these."""
    energy = row.energy()
    params = jax.tree.map(np.asarray, energy.init_params(jax.random.PRNGKey(seed), jnp.float32))
    rng = np.random.default_rng(seed)
    x = rng.random((row.batch,) + tuple(row.in_shape), dtype=np.float32)
    y = rng.integers(0, row.readout_classes, row.batch)
    return params, x, y


def bench_jax(row: ConvRow, params, x_np, y_np, settings: bench.Settings) -> dict:
    energy, phases, tx = row_setup(row)
    dt = bench.DTYPES[row.dtype]
    x = jnp.asarray(x_np, dt)
    y = jnp.asarray(y_np.astype(np.int32))
    p = jax.tree.map(lambda a: jnp.asarray(a, dt), params)
    ticks0 = bench.cpu_ticks()
    step = bench.time_training_step(energy, RULE, phases, x, y, optimizer=tx, params=p,
                                    **settings.timing)
    return {"step": step, "steps_taken": step.pop("steps_taken"),
            "cpu_during_timing": bench.cpu_usage(ticks0, bench.cpu_ticks())}


def best_peak(limits: dict, dtype: str) -> float:
    """The best rate measured for ``dtype`` in this run: JAX conv / matmul chains (and the torch
    conv chain, when the torch side measured one)."""
    rates = [limits["conv_peak"][dtype]["gflops"], limits["peak"][dtype]["gflops"]]
    if limits.get("torch_conv_peak", {}).get(dtype):
        rates.append(limits["torch_conv_peak"][dtype]["gflops"])
    return max(rates)


def row_meta(row: ConvRow) -> dict:
    energy = row.energy()
    return {"id": row.id, "tag": row.tag, "net": row.name, "in_shape": list(row.in_shape),
            "conv": [list(c) for c in row.conv], "map_shapes": [list(s) for s in energy.map_shapes],
            "readout_classes": row.readout_classes, "batch": row.batch, "t_free": row.t_free,
            "t_nudged": row.t_nudged, "unroll": list(row.unrolls()), "order": row.order,
            "dtype": row.dtype, "rule": RULE,
            "beta": BETA, "rates": row.rates(), "layouts": "JAX NHWC / HWIO"}


def run_conv_row(row: ConvRow, settings: bench.Settings, limits: dict) -> dict:
    """One row: skipped (estimated over the suite's per-row budget) or the JAX step timed, with
    its FLOPs, GFLOP/s, fraction of the best measured peak and the FLOP floor."""
    out = row_meta(row)
    fl = flops(row)
    peak = best_peak(limits, row.dtype)
    est_step_s = fl["training_step"] / (peak * 1e9) * 3  # at ~1/3 of the peak
    n_calls = 2 + settings.warmup + settings.jax_repeats
    if est_step_s * n_calls > settings.row_budget_s:
        return {**out, "status": "skipped",
                "skip_reason": f"estimated {est_step_s:.1f} s per step ({fl['training_step'] / 1e9:.0f} "
                               f"GFLOP at 1/3 of {peak:.0f} GFLOP/s): over the suite's "
                               f"{settings.row_budget_s:.0f} s per row"}
    t0 = time.perf_counter()
    params, x, y = row_inputs(row)
    jres = bench_jax(row, params, x, y, settings)
    free, nudged = jres["steps_taken"]
    fl = flops(row, (free, nudged))
    med = jres["step"]["median_ms"]
    gflops = fl["training_step"] / (med / 1e3) / 1e9
    out.update({"status": "ok", "median_ms": med, "min_ms": jres["step"]["min_ms"],
                "steps_taken": jres["steps_taken"], "flops": fl, "gflops": gflops,
                "peak_gflops": peak, "peak_fraction": gflops / peak,
                "floor_ms": fl["training_step"] / (peak * 1e9) * 1e3,
                "floor_ratio": med / (fl["training_step"] / (peak * 1e9) * 1e3),
                "jax": jres, "row_wall_s": time.perf_counter() - t0})
    return out


# ------------------------------------------------------------------------------------------
# Reporting and the command
# ------------------------------------------------------------------------------------------
NOTES = [
    "One training step = input drive once, free phase from zeros (T1 fixed-point sweeps), nudged "
    "phases at +beta and -beta from the free state (T2 sweeps each), the symmetric-EP update "
    "(ep_jax rule `ep-symmetric`: 1/(2 beta) [dF/dtheta(s+) - dF/dtheta(s-)], F = E + beta C, "
    "softmax readout learnt through C) and per-layer SGD; ConvHopfield with the hard sigmoid, "
    "identity on the input, beta = 0.5, one jitted function per step, nothing donated. Times: "
    "median (min) of the samples, each one or more steps back to back then a sync.",
    "Row ids: net/B batch/T free + 2 x nudged sweeps/sweep order/dtype; unroll f/n: sweeps per "
    "rolled loop iteration of the free / nudged phase (`FixedPoint.unroll`; equal to the sweep "
    "count: fully unrolled, the fast form on XLA's CPU backend; 1: a rolled loop).",
    "FLOPs: conv, transposed-conv and dense products only (module docstring of "
    "ep_jax/bench_conv.py). peak = the best rate measured in the same run (a jitted chain of "
    "3x3 'same' convolutions in JAX, the matmul chain of ep_jax.bench, and torch's conv chain "
    "when the torch side runs); floor_ms = FLOPs / peak; floor ratio = step / floor; % peak = "
    "achieved GFLOP/s / peak.",
]


def write_markdown(path, env, rows, limits, wall_s, extra_notes=(), checks=None) -> None:
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    L = [f"# Conv EP training-step throughput (ep_jax): {env['device_slug']} (suite `{env['suite']}`)", ""]
    L += [f"- date: {env['date']}; {bench.git_line(env['git'])}",
          f"- device: {env['device_kind']} ({env['jax_platform']}); CPU: {env['cpu']} "
          f"({env['os_cpu_count']} logical cores, {env['affinity_cpus']} usable)",
          f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, numpy {env['numpy']}"
          + (f", torch {env['torch']} ({env['torch_num_threads']} threads)" if "torch" in env else ""),
          "- measured peaks (GFLOP/s, float32): " + ", ".join(
              f"{k} {v['float32']['gflops']:.0f}" for k, v in limits.items()
              if isinstance(v, dict) and "float32" in v),
          f"- load average at start / end: {env.get('loadavg_start')} / {env.get('loadavg_end')}; "
          f"machine busy share over the run: {env.get('cpu_during_run')}",
          f"- wall time: {wall_s:.1f} s; rows: {len(ok)} measured, {len(skipped)} skipped"]
    if checks:
        L.append(f"- torch reference vs JAX (states and gradient, float32, tiny nets): worst "
                 f"relative difference {max(checks.values()):.1e} over {len(checks)} checks")
    L.append("")
    torch_cols = any("torch" in r for r in ok)
    head = "| row | sweeps | JAX ms/step (med / min) |"
    if torch_cols:
        head += " torch eager ms (best layout) | torch.compile ms | torch best | torch / JAX |"
    head += " GFLOP (step) | JAX GFLOP/s | % peak | floor ms | floor ratio |"
    L += ["## Rows", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in ok:
        unroll = r.get("unroll")
        line = (f"| {r['id']} | {r['steps_taken'][0]}+2x{r['steps_taken'][1]}"
                + ("" if unroll is None else f" (unroll {unroll[0]}/{unroll[1]})") + " "
                f"| {bench.ms(r['median_ms'])} / {bench.ms(r['min_ms'])} |")
        if torch_cols:
            t = r.get("torch", {})
            cells = []
            for k in ("eager", "compile"):
                v = t.get(k)
                cells.append("—" if v is None else (f"{bench.ms(v['median_ms'])} / {bench.ms(v['min_ms'])}"
                                                    if v["status"] == "ok" else v["status"]))
            eager = t.get("eager")
            cells[0] += "" if eager is None else f" ({eager['name'].replace('eager_', '')})"
            line += (f" {cells[0]} | {cells[1]} | {r.get('torch_best_variant') or '—'} "
                     f"| {bench.fmt(r.get('speedup_vs_torch_best'), '.2f')} |")
        line += (f" {r['flops']['training_step'] / 1e9:.3g} | {r['gflops']:.3g} "
                 f"| {100 * r['peak_fraction']:.0f}% | {bench.ms(r['floor_ms'])} | {r['floor_ratio']:.2f} |")
        L.append(line)
    if skipped:
        L += ["", "## Skipped", "", "| row | reason |", "|---|---|"]
        L += [f"| {r['id']} | {r.get('skip_reason', '')} |" for r in skipped]
    L += ["", "## Notes", ""] + [f"- {n}" for n in NOTES + list(extra_notes)] + [""]
    Path(path).write_text("\n".join(L))


def _describe(r: dict) -> str:
    return (f"JAX {r['median_ms']:.1f} ms/step ({r['gflops']:.1f} GFLOP/s, "
            f"{100 * r['peak_fraction']:.0f}% of peak, floor ratio {r['floor_ratio']:.2f}; "
            f"{r['row_wall_s']:.1f} s)")


def main_from_args(args) -> int:
    """``ep-jax bench --suite conv-*`` (called by ``ep_jax.bench.main`` with its parsed args)."""
    try:
        rows_spec = select_conv_rows(args.suite, args.only)
        if args.list:
            for row in rows_spec:
                print(row.id, row.tag)
            return 0
        slug = bench.device_slug()
        json_path = Path(args.json or f"bench-conv-{slug}.json")
        md_path = Path(args.markdown or f"bench-conv-{slug}.md")
        bench.refuse_existing({"--json": json_path, "--markdown": md_path}, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"ep-jax bench: error: {err}", file=sys.stderr)
        return 2
    t_start, ticks = time.perf_counter(), bench.cpu_ticks()
    settings = CONV_SUITES[args.suite]
    env = bench.environment(args.suite)
    skip = bench.accelerator_skip(args.suite, settings, args.force)
    limits = {} if skip is not None else measure_conv_limits(settings)
    rows = bench.run_rows(rows_spec, lambda row: run_conv_row(row, settings, limits), _describe, skip)
    wall_s = time.perf_counter() - t_start
    bench.finish_environment(env, ticks)
    doc = {"environment": env, "suite": args.suite, "settings": dataclasses.asdict(settings),
           "wall_s": wall_s, "limits": limits, "notes": NOTES, "rows": rows}
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    bench.write_json(json_path, doc)
    write_markdown(md_path, env, rows, limits, wall_s)
    print(f"wall time {wall_s:.1f} s; wrote {json_path}, {md_path}", flush=True)
    return 0


__all__ = ["CONV_SUITES", "ConvRow", "conv_peak", "conv_suite_rows", "flops",
           "main_from_args", "run_conv_row"]

"""Relaxation-throughput benchmark suite (GitHub issue 6): ep_jax against PyTorch, and against
the machine's own limits.

For every row of a grid (layer sizes, batch, free + nudged step counts, solver, dtype) it
measures, in one process, after warm-up, as the median (and min) of several samples, each ended
by ``block_until_ready`` (torch: ``cuda.synchronize`` on a GPU):

* ``ep_jax``: one jitted EP training step (rule ``ep-random-sign``, Hopfield energy with the
  hard sigmoid, free phase from zeros, nudged phase from the free state, beta = 0.5, per-layer
  SGD) and, separately, the jitted free phase alone (example-steps per second);
* the PyTorch references of ``benchmarks/torch_refs.py`` on the same shapes and step counts:
  seed 001 as written, seed 002's library style, and the fastest plain PyTorch (eager, and
  ``torch.compile`` where the suite asks for it and it works);
* the physical limit: the FLOPs a training step must do (counted below), this device's matmul
  rate on a chain of exactly the row's products (and on one large square matmul), its memory
  bandwidth (a jitted add of large arrays), the row's bytes moved, arithmetic intensity and
  roofline bound.

It writes JSON (rows + environment), Markdown (targets, headline, full table, notes) and PNG
plots of the cost growth with width, depth and batch (log-log, fitted exponents).

Usage (from the repository root; also ``ep-jax bench``)::

    python -m benchmarks.suite --suite quick            # < 5 min on 2 CPU cores, incl. torch
    python benchmarks/suite.py --suite cpu               # the fuller CPU grid (~15 min)
    python benchmarks/suite.py --suite gpu               # the large grid (accelerators only)
    python benchmarks/suite.py --suite smoke --json /tmp/s.json --markdown /tmp/s.md

FLOP count (multiply-adds count 2; only matrix products are counted -- the elementwise work is
O(B n) per layer against O(B n n') for the products): sizes n_0 (input), n_1 ... n_L (free
layers), batch B, T = T_free + T_nudged relaxation steps, *actually taken* for ``gd-tol``:

* the clamped input's product rho(x) W_0: loop-invariant, once per training step: 2 B n_0 n_1;
* per relaxation step (every solver), for each connection between free layers l, l+1: the
  forward rho(s_l) W_l and the backward rho(s_{l+1}) W_l^T: 2 x 2 B n_l n_{l+1};
* the EP weight gradient: the input layer as one product rho(x)^T (s^beta_1 - s^0_1):
  2 B n_0 n_1; every other connection two products: 2 x 2 B n_l n_{l+1}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from benchmarks import torch_refs  # noqa: E402
from benchmarks.relax_throughput import (  # noqa: E402
    _cpu_ticks, cpu_model, cpu_usage, input_product_in_loop, load_batch,
)
from ep_jax.energies import make_energy  # noqa: E402
from ep_jax.optim import per_layer_sgd  # noqa: E402
from ep_jax.rules import Phases, get_rule  # noqa: E402
from ep_jax.solvers import FixedPoint, GradientDescent, relax  # noqa: E402

EPSILON = 0.5
BETA = 0.5
TOL = 1e-3  # gd-tol: max_b ||s_{t+1} - s_t|| <= TOL, capped at the row's step counts
RULE = "ep-random-sign"
SOLVERS = ("gd", "gd-tol", "fp-sync", "fp-async")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REF_NAMES = ("seed001", "seed002", "torch_best")
REF_BUDGET_S = 60.0  # a reference is skipped only when measuring it would take longer
N_IN, N_OUT = 784, 10


# ------------------------------------------------------------------------------------------
# Rows and suites
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark point. ``refs``: the torch references to run; ``compile``: also time
    ``torch.compile`` of the plain-PyTorch step; ``hlo``: inspect the optimised HLO."""

    sizes: tuple
    batch: int
    t_free: int = 20
    t_nudged: int = 4
    solver: str = "gd"
    dtype: str = "float32"
    refs: tuple = REF_NAMES
    compile: bool = False
    hlo: bool = False
    tag: str = ""

    @property
    def id(self) -> str:
        return (f"{'-'.join(map(str, self.sizes))}/B{self.batch}/T{self.t_free}+{self.t_nudged}"
                f"/{self.solver}/{self.dtype}")

    @property
    def hidden(self) -> tuple:
        return tuple(self.sizes[1:-1])


def net(width: int, depth: int) -> tuple:
    return (N_IN,) + (width,) * depth + (N_OUT,)


DEMO = Row(net(100, 1), 20, 10, 4, tag="target: seed001 demo (>= 50x seed 001)", hlo=True)
CENTER = Row(net(500, 1), 256, 20, 4, compile=True, hlo=True,
             tag="target: Scellier 1h, B=256 (>= 20x seed 001; <= 2x the FLOP floor)")


def _dedup(rows):
    seen, out = set(), []
    for r in rows:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out


def _with(row: Row, **kw) -> Row:
    return dataclasses.replace(row, **kw)


def _compile_at(rows, points):
    """Also time torch.compile at these rows (same ids)."""
    ids = {r.id for r in points}
    return [_with(r, compile=True) if r.id in ids else r for r in rows]


def suite_rows(name: str) -> list:
    """The rows of suite ``name`` (``smoke``, ``quick``, ``cpu``, ``gpu``, ``full``)."""
    base = Row(net(500, 1), 256)
    if name == "smoke":
        return [Row((64, 32, 10), 8, 3, 2, tag="smoke"),
                Row((64, 32, 32, 10), 8, 3, 2, solver="fp-async", refs=("torch_best",),
                    tag="smoke")]
    if name == "quick":
        rows = [DEMO, CENTER]
        rows += [_with(base, sizes=net(w, 1)) for w in (100, 1024)]
        rows += [_with(base, sizes=net(500, d)) for d in (2, 3)]
        rows += [_with(base, batch=b) for b in (20, 1024)]
        rows += [_with(base, solver=s, refs=("torch_best",)) for s in SOLVERS[1:]]
        rows += [_with(base, dtype="bfloat16", refs=("torch_best",)),
                 _with(DEMO, dtype="bfloat16", refs=("torch_best",), tag="", hlo=False)]
        return _dedup(rows)
    if name == "cpu":
        rows = [DEMO, CENTER]
        for b in (20, 256, 4096):
            rows += [_with(base, sizes=net(w, 1), batch=b) for w in (100, 500, 1024, 4096)]
            rows += [_with(base, sizes=net(500, d), batch=b) for d in (2, 3, 5)]
        for pt in (base, _with(base, batch=4096), _with(base, sizes=net(500, 3))):
            rows += [_with(pt, solver=s, refs=("torch_best",)) for s in SOLVERS[1:]]
        rows += [_with(base, sizes=net(w, 1), dtype="bfloat16", refs=("torch_best",))
                 for w in (100, 500, 1024, 4096)]
        rows += [_with(base, batch=4096, dtype="bfloat16", refs=("torch_best",)),
                 _with(base, sizes=net(500, 3), dtype="bfloat16", refs=("torch_best",)),
                 _with(DEMO, dtype="bfloat16", refs=("torch_best",), tag="", hlo=False)]
        return _compile_at(_dedup(rows), (_with(base, batch=4096), _with(base, sizes=net(1024, 1))))
    if name == "gpu":
        rows = [DEMO, CENTER]
        for b in (20, 256, 4096):
            for w in (100, 500, 1024, 4096):
                for d in (1, 2, 3, 5):
                    rows.append(_with(base, sizes=net(w, d), batch=b))
        rows.append(_with(base, sizes=net(4096, 4), batch=4096, tag="4 hidden layers x 4096"))
        for pt in (base, _with(base, batch=4096), _with(base, sizes=net(4096, 4), batch=4096)):
            rows += [_with(pt, solver=s, refs=("torch_best",)) for s in SOLVERS[1:]]
        for b in (256, 4096):
            for w in (500, 1024, 4096):
                rows.append(_with(base, sizes=net(w, 3), batch=b, dtype="bfloat16",
                                  refs=("torch_best",)))
        rows.append(_with(base, sizes=net(4096, 4), batch=4096, dtype="bfloat16",
                          refs=("torch_best",)))
        return _compile_at(_dedup(rows), (_with(base, batch=4096),
                                          _with(base, sizes=net(4096, 4), batch=4096)))
    if name == "full":
        return _dedup(suite_rows("cpu") + suite_rows("gpu"))
    raise ValueError(f"suite: expected one of {list(SUITES)}, received {name!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    jax_repeats: int
    torch_repeats: int
    warmup: int
    min_sample_s: float  # each timed sample runs enough steps back to back to last this long
    row_budget_s: float  # estimated JAX time of a row above this: the row is skipped
    accelerator_only: bool = False
    light_limits: bool = False  # small peak / bandwidth probes (the smoke suite)


SUITES = {
    "smoke": Settings(2, 2, 1, 0.0, 20.0, light_limits=True),
    "quick": Settings(5, 3, 2, 0.02, 30.0),
    "cpu": Settings(7, 5, 2, 0.05, 60.0),
    "gpu": Settings(7, 5, 3, 0.05, 60.0, accelerator_only=True),
    "full": Settings(7, 5, 3, 0.05, 120.0),
}


# ------------------------------------------------------------------------------------------
# Counting: FLOPs and bytes of one training step (the model of the module docstring)
# ------------------------------------------------------------------------------------------
def _pairs(sizes):
    """(n_l, n_{l+1}) of the connections between free layers."""
    free = sizes[1:]
    return list(zip(free[:-1], free[1:]))


def flops(sizes, batch, steps) -> dict:
    n0, n1 = sizes[0], sizes[1]
    inner = sum(a * b for a, b in _pairs(sizes))
    per_step = 4 * batch * inner
    input_product = 2 * batch * n0 * n1
    weight_grad = 2 * batch * n0 * n1 + 4 * batch * inner
    return {"input_product": input_product, "per_relaxation_step": per_step,
            "weight_gradient": weight_grad,
            "training_step": input_product + steps * per_step + weight_grad}


def bytes_moved(sizes, batch, steps, itemsize) -> dict:
    """Kernel-level traffic with ideal fusion: every product reads its operands and writes its
    result once; each layer's update is one elementwise pass (state, its fields, new state)."""
    B, free = batch, sizes[1:]
    n0, n1 = sizes[0], sizes[1]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    inp = B * n0 + n0 * n1 + B * n1
    per_step = 0
    for a, b in _pairs(sizes):
        per_step += 2 * (a * b + B * (a + b))
    for l, n in enumerate(free):
        # its fields: the input drive (first layer) or the product from below, and the
        # product from above if there is a layer above
        fields = 1 + (1 if l + 1 < len(free) else 0)
        per_step += B * n * (2 + fields)
    wgrad = (B * n0 + 2 * B * n1 + n0 * n1) + sum(2 * (2 * B * (a + b) + a * b) for a, b in _pairs(sizes))
    update = 3 * params
    total = inp + steps * per_step + wgrad + update
    return {"training_step": total * itemsize, "per_relaxation_step": per_step * itemsize}


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
def _time_samples(call, sync, repeats, min_sample_s, first_s):
    """``repeats`` samples; each runs ``inner`` calls back to back then syncs; per-call ms."""
    inner = 1 if first_s <= 0 else max(1, min(200, math.ceil(min_sample_s / max(first_s, 1e-6))))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            call()
        sync()
        out.append((time.perf_counter() - t0) * 1e3 / inner)
    return out, inner


def _summary(samples, inner):
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": [round(s, 5) for s in samples], "inner": inner}


class JaxTimer:
    """Times ``state <- fn(*state)`` (a jitted call whose outputs are the next inputs, so calls
    chain), syncing on the whole state: the compile, ``warmup`` calls, then the samples."""

    def __init__(self, fn, state, settings: Settings):
        self.fn, self.state, self.settings = fn, tuple(state), settings

    def _call(self):
        self.state = tuple(self.fn(*self.state))

    def _sync(self):
        jax.block_until_ready(self.state)

    def run(self):
        s = self.settings
        t0 = time.perf_counter()
        self._call()
        self._sync()
        compile_s = time.perf_counter() - t0
        first = None
        for _ in range(max(1, s.warmup)):
            t0 = time.perf_counter()
            self._call()
            self._sync()
            first = time.perf_counter() - t0
        samples, inner = _time_samples(self._call, self._sync, s.jax_repeats, s.min_sample_s, first)
        return {**_summary(samples, inner), "first_call_s_incl_compile": compile_s}


# ------------------------------------------------------------------------------------------
# Device limits, measured in the same run
# ------------------------------------------------------------------------------------------
def platform_name() -> str:
    return jax.devices()[0].platform


_CACHE: dict = {}  # device probes, measured once per process


def device_peak(dtype: str, light: bool = False) -> dict:
    """GFLOP/s of a chain of large square matmuls (jitted fori_loop), best of 5."""
    if ("peak", dtype, light) in _CACHE:
        return _CACHE[("peak", dtype, light)]
    n = 512 if light else (2048 if platform_name() == "cpu" else 8192)
    k = 4 if platform_name() == "cpu" else 16
    dt = DTYPES[dtype]
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dt)
    w = (jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32) / math.sqrt(n)).astype(dt)
    f = jax.jit(lambda a, w: jax.lax.fori_loop(0, k, lambda _, c: c @ w, a))
    jax.block_until_ready(f(a, w))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, w))
        ts.append(time.perf_counter() - t0)
    res = {"n": n, "matmuls": k, "gflops": 2 * n**3 * k / min(ts) / 1e9}
    _CACHE[("peak", dtype, light)] = res
    return res


def memory_bandwidth(light: bool = False) -> dict:
    """GB/s of a jitted ``a <- a + b`` of large float32 arrays (2 reads + 1 write; ``a`` donated,
    so the output reuses its buffer and no fresh pages are touched), best of 7."""
    if ("bw", light) in _CACHE:
        return _CACHE[("bw", light)]
    n = (4 if light else (64 if platform_name() == "cpu" else 256)) * 2**20
    a = jnp.ones((n,), jnp.float32)
    b = jnp.full((n,), 2.0, jnp.float32)
    f = jax.jit(lambda a, b: a + b, donate_argnums=0)
    a = jax.block_until_ready(f(a, b))
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        a = jax.block_until_ready(f(a, b))
        ts.append(time.perf_counter() - t0)
    res = {"bytes": 3 * 4 * n, "gbps": 3 * 4 * n / min(ts) / 1e9}
    _CACHE[("bw", light)] = res
    del a, b
    return res


def chain_peak(row: Row, steps: int, settings: Settings) -> dict:
    """This device's rate on exactly the row's matrix products, in the same dependency order
    (input product, ``steps`` relaxation steps of forward + backward products per connection,
    weight-gradient products), jitted, nothing else but the adds that join two fields."""
    sizes, B, dt = row.sizes, row.batch, DTYPES[row.dtype]
    free = sizes[1:]
    L = len(free)
    key = jax.random.PRNGKey(7)
    ks = jax.random.split(key, 2 * len(sizes))
    x = jax.random.uniform(ks[0], (B, sizes[0]), jnp.float32).astype(dt)
    w0 = (jax.random.normal(ks[1], (sizes[0], sizes[1])) / math.sqrt(sizes[0])).astype(dt)
    wf = [(jax.random.normal(ks[2 + i], (a, b)) / math.sqrt(a)).astype(dt)
          for i, (a, b) in enumerate(_pairs(sizes))]
    wb = [(jax.random.normal(ks[2 + L + i], (a, b)) / math.sqrt(b)).astype(dt)
          for i, (a, b) in enumerate(_pairs(sizes))]

    def chain(x, w0, wf, wb):
        d = x @ w0
        s0 = tuple([d] + [jnp.zeros((B, n), dt) for n in free[1:]])

        def body(_, s):
            new = []
            for l in range(L):
                h = d if l == 0 else s[l - 1] @ wf[l - 1]
                if l + 1 < L:
                    h = h + s[l + 1] @ wb[l].T
                new.append(h)
            return tuple(new)

        mid = jax.lax.fori_loop(0, max(steps - 1, 0), body, s0)
        end = body(0, mid)
        grads = [x.T @ (end[0] - mid[0])]
        for l in range(1, L):
            grads.append(end[l - 1].T @ end[l] - mid[l - 1].T @ mid[l])
        return grads

    f = jax.jit(chain)
    # the inputs ride along with the result: every call redoes the whole chain
    res = JaxTimer(lambda x, w0, wf, wb, _: (x, w0, wf, wb, f(x, w0, wf, wb)),
                   (x, w0, wf, wb, None), settings).run()
    fl = flops(sizes, B, steps)["training_step"]
    return {"gflops": fl / (res["median_ms"] / 1e3) / 1e9, "median_ms": res["median_ms"],
            "min_ms": res["min_ms"]}


# ------------------------------------------------------------------------------------------
# The JAX side
# ------------------------------------------------------------------------------------------
def make_solver(kind: str, steps: int):
    if kind == "gd":
        return GradientDescent(EPSILON, steps, project="clip01")
    if kind == "gd-tol":
        return GradientDescent(EPSILON, steps, tol=TOL, project="clip01")
    if kind == "fp-sync":
        return FixedPoint(steps)
    if kind == "fp-async":
        return FixedPoint(steps, order="asynchronous")
    raise ValueError(f"solver: expected one of {SOLVERS}, received {kind!r}")


def alphas_for(sizes):
    """Seed 001's per-layer rates for one hidden layer (0.1, 0.05), halving per layer."""
    return [0.1 * 0.5**l for l in range(len(sizes) - 1)]


def init_params(sizes, seed=0):
    """Glorot-uniform kernels (fan_in, fan_out), zero biases, as float32 numpy arrays."""
    energy = make_energy("hopfield", sizes)
    p = energy.init_params(jax.random.PRNGKey(seed), jnp.float32)
    return ([np.asarray(p[f"layer_{l}"]["kernel"]) for l in range(len(sizes) - 1)],
            [np.asarray(p[f"layer_{l}"]["bias"]) for l in range(len(sizes) - 1)])


def jax_params(weights, biases, dtype):
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return {f"layer_{l}": {"kernel": jnp.asarray(w, dt), "bias": jnp.asarray(b, dt)}
            for l, (w, b) in enumerate(zip(weights, biases))}


def make_jax_fns(row: Row, rule: str = RULE):
    """``(step, free, tx)``: the jitted training step ``(params, opt_state, key, x, y) ->
    (params, opt_state, key, steps)`` and the jitted free phase ``(params, x) -> (state, steps)``.

    Nothing is donated: with one dispatch per step, donating params and optimizer state cost
    ~1 ms per step at 784-500-10, B=256 on the 2-core CPU (the next step's dispatch then waits
    for the previous one); ``ep-jax train`` scans over many steps inside one call instead."""
    energy = make_energy("hopfield", row.sizes)
    phases = Phases(BETA, free=make_solver(row.solver, row.t_free),
                    nudged=make_solver(row.solver, row.t_nudged))
    tx = per_layer_sgd(alphas_for(row.sizes))
    rule_fn = get_rule(rule)

    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        grads, res = rule_fn(energy, params, x, y, "zeros", phases=phases, key=sub)
        updates, opt_state = tx.update(grads, opt_state, params)
        steps = jnp.stack([res.free_stats.steps, res.nudged_stats.steps])
        return optax.apply_updates(params, updates), opt_state, key, steps

    def free(params, x):
        state, stats = relax(energy, params, x, energy.zeros_state(x), solver=phases.free,
                             cost=phases.cost)
        return state, stats.steps

    return jax.jit(step), jax.jit(free), tx


def bench_jax(row: Row, weights, biases, x_np, y_np, settings: Settings) -> dict:
    """The training step (params, optimizer state and key carried from call to call, as in
    training) and the free phase alone, each timed by ``JaxTimer``."""
    step, free, tx = make_jax_fns(row)
    dt = DTYPES[row.dtype]
    x = jnp.asarray(x_np, dt)
    y = jnp.asarray(y_np.astype(np.int32))
    params = jax_params(weights, biases, row.dtype)
    ticks0 = _cpu_ticks()

    def call_step(p, o, k, x_, y_, _n):
        p, o, k, n = step(p, o, k, x_, y_)
        return p, o, k, x_, y_, n

    timer = JaxTimer(call_step, (params, tx.init(params), jax.random.PRNGKey(0), x, y, None),
                     settings)
    out = {"step": timer.run(), "steps_taken": [int(v) for v in np.asarray(timer.state[5])]}

    def call_free(p, x_, _s, _n):
        state, n = free(p, x_)
        return p, x_, state, n

    timer = JaxTimer(call_free, (jax_params(weights, biases, row.dtype), x, None, None), settings)
    fres = timer.run()
    fres["steps_taken"] = int(timer.state[3])
    fres["example_steps_per_s"] = row.batch * fres["steps_taken"] / (fres["median_ms"] / 1e3)
    out["free"] = fres
    out["cpu_during_timing"] = cpu_usage(ticks0, _cpu_ticks())

    if row.hlo:
        try:
            p0 = jax_params(weights, biases, row.dtype)
            out["hlo_check"] = input_product_in_loop(
                step, (p0, tx.init(p0), jax.random.PRNGKey(0), x, y), row.sizes[0])
        except Exception as e:  # noqa: BLE001 -- a diagnostic, never fatal
            out["hlo_check"] = {"error": f"{type(e).__name__}: {e}"}
    return out


# ------------------------------------------------------------------------------------------
# The torch side
# ------------------------------------------------------------------------------------------
def _ref_kwargs(row: Row):
    return dict(t_free=row.t_free, t_nudged=row.t_nudged, epsilon=EPSILON, beta=BETA,
                alphas=alphas_for(row.sizes), dtype=row.dtype)


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


def torch_matmul_gflops(device: str, dtype: str) -> float:
    """torch's rate on a 1024^2 matmul (for the references' time estimates), best of 5."""
    k = ("torch", device, dtype)
    if k not in _CACHE:
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
        _CACHE[k] = 2 * n**3 / min(ts) / 1e9
    return _CACHE[k]


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
    kw = _ref_kwargs(row)
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
    ticks0 = _cpu_ticks()
    samples, inner = _time_samples(lambda: ref.step(x, y), ref.sync, settings.torch_repeats,
                                   settings.min_sample_s, one_s)
    out = {**base, "status": "ok", **_summary(samples, inner),
           "cpu_during_timing": cpu_usage(ticks0, _cpu_ticks())}
    if hasattr(ref, "last_steps"):
        out["steps_taken"] = list(ref.last_steps)
    if name == "torch_best" and not compile:
        # the free phase alone, for the relaxation-throughput comparison
        ref.free(x)
        ref.sync()
        fs, finner = _time_samples(lambda: ref.free(x), ref.sync, settings.torch_repeats,
                                   settings.min_sample_s, one_s * row.t_free / (row.t_free + row.t_nudged))
        out["free"] = _summary(fs, finner)
        out["free"]["example_steps_per_s"] = (row.batch * ref.last_steps[0]
                                              / (out["free"]["median_ms"] / 1e3))
    return out


# ------------------------------------------------------------------------------------------
# Numerical agreement of the references with the JAX step (also run by the tests)
# ------------------------------------------------------------------------------------------
def check_references(sizes=(12, 9, 7, 4), batch=5, t_free=6, t_nudged=3, seed=0) -> dict:
    """One training step from the same params and batch with a fixed +beta (rule ``ep``): the
    updated parameters of ``torch_best`` (every solver) and ``seed002`` must equal the JAX
    step's; seed 001 (its update differentiates through the trajectory and restarts the
    nudged phase from zeros, by design of the seed) must give the same free and
    nudged-from-zeros states. Returns the worst relative differences, float32."""
    rng = np.random.default_rng(seed)
    weights, _ = init_params(sizes, seed)
    biases = [rng.uniform(-0.1, 0.3, n).astype(np.float32) for n in sizes[1:]]
    x = rng.uniform(0, 1, (batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    out = {}

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    for solver in SOLVERS:
        row = Row(tuple(sizes), batch, t_free, t_nudged, solver=solver)
        step, _, tx = make_jax_fns(row, rule="ep")
        p = jax_params(weights, biases, "float32")
        new, _, _, _ = step(p, tx.init(p), jax.random.PRNGKey(0), jnp.asarray(x),
                            jnp.asarray(y, jnp.int32))
        dj = [np.asarray(new[f"layer_{l}"]["kernel"]) - weights[l] for l in range(len(weights))]
        bj = [np.asarray(new[f"layer_{l}"]["bias"]) for l in range(len(weights))]
        names = ("torch_best", "seed002") if solver == "gd" else ("torch_best",)
        for name in names:
            kw = dict(_ref_kwargs(row), random_sign=False)
            ref = (torch_refs.TorchBest(weights, biases, solver=solver, tol=TOL, **kw)
                   if name == "torch_best" else
                   torch_refs.Seed002Ref(weights, biases, batch_size=batch, **kw))
            ref.step(*ref.inputs(x, y))
            w_t, b_t = ref.params()
            out[f"{name}/{solver}/weight_update"] = max(
                rel(w_t[l] - weights[l], dj[l]) for l in range(len(weights)))
            out[f"{name}/{solver}/bias"] = max(rel(b_t[l], bj[l]) for l in range(len(weights)))
    # seed 001: the relaxations
    energy = make_energy("hopfield", sizes)
    p = jax_params(weights, biases, "float32")
    xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    s_free, _ = relax(energy, p, xj, energy.zeros_state(xj),
                      solver=make_solver("gd", t_free))
    s_nz, _ = relax(energy, p, xj, energy.zeros_state(xj), target=yj, beta=BETA,
                    solver=make_solver("gd", t_nudged))
    ref = torch_refs.Seed001Ref(weights, biases, **dict(_ref_kwargs(Row(tuple(sizes), batch,
                                                                        t_free, t_nudged)),
                                                        random_sign=False))
    xt, yt = ref.inputs(x, y)
    free_t = ref.net.free_phase(xt, t_free, EPSILON)[1:]
    nudged_t = ref.net.weakly_clamped_phase(xt, yt, t_nudged, EPSILON, BETA)[1:]
    out["seed001/gd/free_state"] = max(rel(a.detach().numpy(), b) for a, b in zip(free_t, s_free))
    out["seed001/gd/nudged_from_zeros_state"] = max(
        rel(a.detach().numpy(), b) for a, b in zip(nudged_t, s_nz))
    return out


# ------------------------------------------------------------------------------------------
# One row
# ------------------------------------------------------------------------------------------
def available_memory_bytes(device: str) -> float:
    if device != "cpu":
        try:
            if device == "cuda":
                free, _ = torch.cuda.mem_get_info()
                return float(free)
            stats = jax.devices()[0].memory_stats() or {}
            return float(stats.get("bytes_limit", 16 * 2**30) - stats.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001
            return 16.0 * 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 2**30


def jax_memory_need(row: Row) -> float:
    item = 2 if row.dtype == "bfloat16" else 4
    params = sum(a * b + b for a, b in zip(row.sizes[:-1], row.sizes[1:]))
    states = row.batch * sum(row.sizes[1:])
    return item * (4 * params + row.batch * row.sizes[0] + 8 * states)


def run_row(row: Row, settings: Settings, limits: dict) -> dict:
    steps_model = row.t_free + row.t_nudged
    item = 2 if row.dtype == "bfloat16" else 4
    fl = flops(row.sizes, row.batch, steps_model)
    peak_dev = limits["peak"][row.dtype]["gflops"]
    est_step_s = fl["training_step"] / (peak_dev * 1e9) * 3  # ~1/3 of the device peak
    out = {"id": row.id, "tag": row.tag, "shapes": list(row.sizes), "hidden": list(row.hidden),
           "depth": len(row.hidden), "width": row.hidden[0] if row.hidden else None,
           "batch": row.batch, "t_free": row.t_free, "t_nudged": row.t_nudged,
           "solver": row.solver, "solver_spec": repr(make_solver(row.solver, row.t_free)),
           "tol": TOL if row.solver == "gd-tol" else None, "dtype": row.dtype, "rule": RULE,
           "epsilon": EPSILON, "beta": BETA, "alphas": alphas_for(row.sizes)}
    need = jax_memory_need(row)
    avail = limits["memory_bytes"]
    n_calls = 3 + settings.warmup + settings.jax_repeats * 3
    if need > 0.5 * avail:
        return {**out, "status": "skipped",
                "skip_reason": f"needs ~{need / 2**30:.1f} GiB of {avail / 2**30:.1f} GiB"}
    if est_step_s * n_calls > settings.row_budget_s:
        return {**out, "status": "skipped",
                "skip_reason": f"estimated {est_step_s * 1e3:.0f} ms per step ({fl['training_step'] / 1e9:.1f} "
                               f"GFLOP at 1/3 of the measured peak): over the suite's "
                               f"{settings.row_budget_s:.0f} s per row"}
    t_row = time.perf_counter()
    weights, biases = init_params(row.sizes)
    x_np, y_np, source = load_batch(row.batch)
    if row.sizes[0] != 784:
        rng = np.random.default_rng(0)
        x_np = rng.random((row.batch, row.sizes[0]), dtype=np.float32)
        y_np = rng.integers(0, row.sizes[-1], row.batch)
        source = "random data, uniform [0, 1)"
    out["data"] = source
    jres = bench_jax(row, weights, biases, x_np, y_np, settings)
    steps_taken = sum(jres["steps_taken"])
    fl = flops(row.sizes, row.batch, steps_taken)
    by = bytes_moved(row.sizes, row.batch, steps_taken, item)
    chain = chain_peak(row, steps_taken, settings)
    median_ms, min_ms = jres["step"]["median_ms"], jres["step"]["min_ms"]
    gflops = fl["training_step"] / (median_ms / 1e3) / 1e9
    bw = limits["bandwidth"]["gbps"]
    ai = fl["training_step"] / by["training_step"]
    balance = peak_dev / bw
    floor_ms = fl["training_step"] / (peak_dev * 1e9) * 1e3
    mem_ms = by["training_step"] / (bw * 1e9) * 1e3
    out.update({
        "status": "ok",
        "median_ms": median_ms, "min_ms": min_ms,
        "steps_taken": jres["steps_taken"],
        "free_median_ms": jres["free"]["median_ms"], "free_min_ms": jres["free"]["min_ms"],
        "example_steps_per_s": jres["free"]["example_steps_per_s"],
        "flops": fl, "gflops": gflops,
        "peak_gflops": chain["gflops"], "peak_fraction": gflops / chain["gflops"],
        "peak_chain_ms": chain["median_ms"],
        "device_peak_gflops": peak_dev, "device_peak_fraction": gflops / peak_dev,
        "floor_ms": floor_ms, "floor_ratio": median_ms / floor_ms,
        "bytes": by["training_step"], "arithmetic_intensity": ai, "machine_balance": balance,
        "bound": "compute" if ai >= balance else "memory",
        "roofline_ms": max(floor_ms, mem_ms), "roofline_fraction": max(floor_ms, mem_ms) / median_ms,
        "jax": jres,
    })
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
    out["row_wall_s"] = time.perf_counter() - t_row
    return out


# ------------------------------------------------------------------------------------------
# Environment, reporting
# ------------------------------------------------------------------------------------------
def device_slug() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"cpu-{n}core"
    kind = d.device_kind.lower()
    kind = re.sub(r"^(nvidia|amd|google)\s+", "", kind)
    kind = re.sub(r"[^a-z0-9]+", "-", kind).strip("-")
    return kind or d.platform


def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "ep_jax", "benchmarks"))}


def environment(suite: str) -> dict:
    d = jax.devices()[0]
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite, "device_slug": device_slug(), "jax_platform": d.platform,
        "device_kind": d.device_kind, "jax_devices": [str(v) for v in jax.devices()],
        "cpu": cpu_model(), "os_cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_device": torch_refs.torch_device(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "torch": torch.__version__, "optax": optax.__version__, "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git": git_state(),
    }
    if torch.cuda.is_available():
        env["torch_cuda_device"] = torch.cuda.get_device_name(0)
        env["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return env


def _fmt(v, spec=".2f", none="—"):
    return none if v is None else format(v, spec)


def _ms(v):
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _ref_cell(row, name):
    r = row.get("refs", {}).get(name)
    if r is None:
        return "—"
    if r["status"] != "ok":
        return f"{r['status']}"
    return _ms(r["median_ms"])


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


NOTES = [
    "One training step = free phase from zeros + nudged phase + EP update + per-layer SGD "
    "(ep_jax: rule `ep-random-sign`, one jitted function per step, nothing donated; "
    "beta = 0.5, eps = 0.5, alphas 0.1 * 0.5^l). Times are per step: median (min) of the "
    "samples; each sample runs enough steps back to back to last the suite's minimum sample "
    "time, then syncs (JAX `block_until_ready`, torch `cuda.synchronize` on a GPU).",
    "seed001 = `tests/reference/seed001.py` (faithful port) running the body of the seed's "
    "training loop: autograd with create_graph=True at every step, nudged phase restarted "
    "from zeros, update back-propagated through the unrolled trajectory (the seed's math: the "
    "relaxation equals ep_jax's, the update does not). seed002 = seed 002's library style "
    "(`u_relax`, one backward() and one host sync per step, contrastive update through "
    "torch.optim.SGD), adapted to the same math: hard-sigmoid phi, clamp_(0, 1) after each "
    "Euler step, cost beta ||u - y||^2, states from zeros, tol = 0 (see `benchmarks/torch_refs.py`). "
    "torch_best = hand-derived gradients, no autograd, input product once per training step, "
    "in-place fused updates, input-layer weight gradient as one product; `torch_best_compile` "
    "= the same with torch.compile on the per-step kernels; `speedup_vs_torch_best` uses the "
    "faster of the two.",
    "Numerical agreement (tiny net, fixed +beta, float32; `check_references`, also in "
    "tests/test_bench_suite.py): torch_best (every solver) and seed002 give the JAX step's "
    "update; seed 001 gives its free and nudged-from-zeros states.",
    "Seeds 001/002 implement fixed-step gradient descent only: they are run on `gd` rows; "
    "the other solvers are compared with torch_best, which implements them all "
    "(gd-tol: the same max_b ||s_{t+1} - s_t|| <= tol test, a host sync per step; fp-sync / "
    "fp-async: ep_jax's FixedPoint sweeps incl. its nudged-output majoriser).",
    f"gd-tol uses tol = {TOL:g} capped at the row's step counts; from zeros with Glorot weights "
    "the free phase does not reach it within 20 steps, so these rows run to the caps "
    "(`steps_taken` in the JSON) and measure the cost of the tolerance loop itself.",
    "FLOPs: matrix products only (see the module docstring of benchmarks/suite.py): the input "
    "product and the input layer's weight gradient once per training step, 2 products per "
    "connection between free layers per relaxation step, 2 per such connection for the "
    "weight gradient. GFLOP/s = that count / the median step time.",
    "peak_gflops: this device's rate on a jitted chain of exactly the row's products (same "
    "shapes, dtype and count, nothing else but the adds joining two fields), measured in the "
    "same run; peak_fraction = achieved / that (it can exceed 100%: the chain is timed on its "
    "own and XLA may schedule the step's products better, or noise). device_peak_gflops: one "
    "chain of large square matmuls; floor_ms = FLOPs / device peak (the FLOP floor); "
    "floor_ratio = step / floor.",
    "Bytes: per kernel with ideal fusion (each product reads its operands and writes its "
    "result once, one elementwise pass per layer and step, params read/written by the "
    "update); bandwidth: a jitted add of two 256 MiB float32 arrays (CPU) / 1 GiB (GPU). "
    "bound = compute if FLOPs/bytes >= peak/bandwidth, else memory; roofline_fraction = "
    "max(compute, memory time) / step time. On a CPU the working set of small rows sits in "
    "cache, so the DRAM roofline is pessimistic there and per-kernel overheads dominate.",
    "A row is skipped when its estimated JAX time exceeds the suite's per-row budget or its "
    "memory need half of what is available; a reference when its estimated (from FLOPs, or "
    "from one measured step) measurement exceeds 60 s; the reason is recorded.",
    "`cpu_during_timing` (JSON, CPU only): machine-wide busy and steal shares from /proc/stat; "
    "a busy share near 1.0 with the suite using fewer cores means other work was running.",
]


def write_markdown(path, env, rows, limits, checks, wall_s):
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    L = [f"# EP relaxation throughput: {env['device_slug']} (suite `{env['suite']}`)", ""]
    L += [f"- date: {env['date']}; git {env['git']['commit'][:10]}{' (dirty)' if env['git']['dirty'] else ''}",
          f"- device: {env['device_kind']} ({env['jax_platform']}); CPU: {env['cpu']} "
          f"({env['os_cpu_count']} logical cores, {env['affinity_cpus']} usable); torch on "
          f"{env['torch_device']} ({env['torch_num_threads']} threads)",
          f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, torch {env['torch']}, "
          f"optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
          (f"- measured in this run: matmul peak {limits['peak']['float32']['gflops']:.0f} GFLOP/s "
           f"float32, {limits['peak']['bfloat16']['gflops']:.0f} GFLOP/s bfloat16 "
           f"({limits['peak']['float32']['n']}^2 matmul chain); memory bandwidth "
           f"{limits['bandwidth']['gbps']:.1f} GB/s; machine balance "
           f"{limits['peak']['float32']['gflops'] / limits['bandwidth']['gbps']:.1f} FLOP/byte (float32)")
          if limits["peak"] else "- device limits: not measured (every row skipped)",
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
        L.append(f"| {r['id']} | {_ms(r['median_ms'])} / {_ms(r['min_ms'])} | {_ref_cell(r, 'seed001')} "
                 f"| {_ref_cell(r, 'seed002')} | {_ms(r['torch_best_ms'])} ({r['torch_best_variant'] or '—'}) "
                 f"| {_fmt(r['speedup_vs_seed001'], '.1f')} | {_fmt(r['speedup_vs_seed002'], '.1f')} "
                 f"| {_fmt(r['speedup_vs_torch_best'], '.2f')} | {r['gflops']:.1f} "
                 f"| {100 * r['peak_fraction']:.0f}% | {r['floor_ratio']:.2f} | {r['bound']} |")
    L += ["", "## All rows", "",
          "| row | steps | JAX ms (med / min) | free phase ms | example·steps/s (JAX / torch best) "
          "| seed001 ms | seed002 ms | torch best ms | compile ms | × s001 | × s002 | × best "
          "| GFLOP/s | row peak | % peak | floor ratio | AI (FLOP/B) | bound |",
          "|" + "---|" * 18]
    for r in ok:
        tbc = r["refs"].get("torch_best_compile")
        comp = "—" if tbc is None else (_ms(tbc["median_ms"]) if tbc["status"] == "ok" else tbc["status"])
        L.append(
            f"| {r['id']} | {'+'.join(map(str, r['steps_taken']))} | {_ms(r['median_ms'])} / {_ms(r['min_ms'])} "
            f"| {_ms(r['free_median_ms'])} | {r['example_steps_per_s']:.3g} / "
            f"{_fmt(r['torch_best_example_steps_per_s'], '.3g')} | {_ref_cell(r, 'seed001')} "
            f"| {_ref_cell(r, 'seed002')} | {_ref_cell(r, 'torch_best')} | {comp} "
            f"| {_fmt(r['speedup_vs_seed001'], '.1f')} | {_fmt(r['speedup_vs_seed002'], '.1f')} "
            f"| {_fmt(r['speedup_vs_torch_best'], '.2f')} | {r['gflops']:.1f} | {r['peak_gflops']:.1f} "
            f"| {100 * r['peak_fraction']:.0f}% | {r['floor_ratio']:.1f} | {r['arithmetic_intensity']:.1f} "
            f"| {r['bound']} |")
    ref_skips = [(r["id"], k, v) for r in ok for k, v in r["refs"].items() if v["status"] != "ok"]
    if skipped or ref_skips:
        L += ["", "## Skipped", "", "| row | what | reason |", "|---|---|---|"]
        for r in skipped:
            L.append(f"| {r['id']} | whole row | {r.get('skip_reason', '')} |")
        for rid, k, v in ref_skips:
            L.append(f"| {rid} | {k} ({v['status']}) | {v.get('reason', '')} |")
    hlo = [(r["id"], r["jax"]["hlo_check"]) for r in ok if "hlo_check" in r["jax"]]
    if hlo:
        L += ["", "## Compiled structure (optimised HLO of the JAX step)", "",
              "| row | while loops | dots reachable from loops | input-sized ops in loops | input product hoisted |",
              "|---|---|---|---|---|"]
        for rid, h in hlo:
            if "error" in h:
                L.append(f"| {rid} | error: {h['error']} | | | |")
            else:
                L.append(f"| {rid} | {h['while_bodies']} | {h['dots_reachable_from_loops']} "
                         f"| {len(h['input_sized_ops_in_loops'])} | {h['input_product_hoisted']} |")
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
# Main
# ------------------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ep-jax bench", description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="quick", choices=list(SUITES),
                   help="smoke (seconds), quick (< 5 min on 2 CPU cores), cpu (~15 min), "
                        "gpu (accelerators), full")
    p.add_argument("--json", default=None, help="default: benchmarks/results/<device>.json")
    p.add_argument("--markdown", default=None, help="default: benchmarks/results/<device>.md")
    p.add_argument("--plots-dir", default=None, help="default: benchmarks/results/<device>_plots")
    p.add_argument("--force", action="store_true",
                   help="run an accelerator-only suite (gpu) on a CPU anyway")
    p.add_argument("--only", default=None, metavar="REGEX",
                   help="run only the rows whose id matches (e.g. 'B256/T20\\+4/gd/')")
    p.add_argument("--list", action="store_true", help="print the suite's row ids and exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # ``ep-jax bench -- --suite quick``
        argv = argv[1:]
    args = p.parse_args(argv)
    if args.list:
        for row in suite_rows(args.suite):
            print(row.id, row.tag)
        return 0

    t_start = time.perf_counter()
    ticks_start = _cpu_ticks()
    settings = SUITES[args.suite]
    slug = device_slug()
    results = REPO / "benchmarks" / "results"
    json_path = Path(args.json) if args.json else results / f"{slug}.json"
    md_path = Path(args.markdown) if args.markdown else results / f"{slug}.md"
    plots_dir = Path(args.plots_dir) if args.plots_dir else results / f"{slug}_plots"
    env = environment(args.suite)
    if torch.cuda.is_available():
        # XLA's default float32 matmul on recent GPUs uses TF32; let torch do the same
        torch.backends.cuda.matmul.allow_tf32 = True
        env["torch_allow_tf32"] = True
    print(f"suite {args.suite} on {slug} ({env['device_kind']}); torch on {env['torch_device']}",
          flush=True)

    rows_spec = suite_rows(args.suite)
    if args.only:
        rows_spec = [r for r in rows_spec if re.search(args.only, r.id)]
    skip_all = settings.accelerator_only and platform_name() == "cpu" and not args.force
    if skip_all:  # nothing to measure: no probes either
        limits, checks = {"peak": {}, "bandwidth": {}, "memory_bytes": None}, {}
    else:
        print("measuring the device: matmul peak, memory bandwidth ...", flush=True)
        light = settings.light_limits
        limits = {"peak": {dt: device_peak(dt, light) for dt in DTYPES},
                  "bandwidth": memory_bandwidth(light),
                  "memory_bytes": available_memory_bytes(platform_name())}
        print(f"  peak {limits['peak']['float32']['gflops']:.0f} GFLOP/s f32, "
              f"{limits['peak']['bfloat16']['gflops']:.0f} bf16; "
              f"{limits['bandwidth']['gbps']:.1f} GB/s", flush=True)
        print("checking the references against the JAX step ...", flush=True)
        checks = check_references()
        print(f"  worst relative difference {max(checks.values()):.2e}", flush=True)

    rows = []
    for i, row in enumerate(rows_spec, 1):
        print(f"[{i}/{len(rows_spec)}] {row.id} {row.tag}", flush=True)
        if skip_all:
            rows.append({"id": row.id, "tag": row.tag, "shapes": list(row.sizes),
                         "batch": row.batch, "t_free": row.t_free, "t_nudged": row.t_nudged,
                         "solver": row.solver, "dtype": row.dtype, "status": "skipped",
                         "skip_reason": f"suite {args.suite} is for accelerators; jax runs on "
                                        f"{platform_name()} here (use --suite cpu, or --force)"})
            continue
        try:
            r = run_row(row, settings, limits)
        except Exception as e:  # noqa: BLE001 -- one failing row must not lose the others
            r = {"id": row.id, "tag": row.tag, "status": "failed",
                 "skip_reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rows.append(r)
        if r.get("status") == "ok":
            print(f"    JAX {r['median_ms']:.3f} ms/step ({r['gflops']:.1f} GFLOP/s, "
                  f"{100 * r['peak_fraction']:.0f}% of row peak, floor ratio {r['floor_ratio']:.2f}); "
                  f"x seed001 {_fmt(r['speedup_vs_seed001'], '.1f')}, x seed002 "
                  f"{_fmt(r['speedup_vs_seed002'], '.1f')}, x torch best "
                  f"{_fmt(r['speedup_vs_torch_best'], '.2f')} ({r['row_wall_s']:.1f} s)", flush=True)
        else:
            print(f"    {r['status']}: {r.get('skip_reason')}", flush=True)

    wall_s = time.perf_counter() - t_start
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env["cpu_during_run"] = cpu_usage(ticks_start, _cpu_ticks())
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
    json_path.write_text(json.dumps(doc, indent=2, default=_json_default))
    write_markdown(md_path, env, rows, limits, checks, wall_s)
    print(f"wall time {wall_s:.1f} s; wrote {json_path}, {md_path}"
          + (f", {len(plots)} plots in {plots_dir}" if plots else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

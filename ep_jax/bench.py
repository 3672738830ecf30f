"""Relaxation-throughput harness (``ep-jax bench``): times an EP training step and a free phase
of any energy and solver, counts a Hopfield EP step's FLOPs and bytes, measures this device's
matmul peak and memory bandwidth, and runs the benchmark grid.

It imports only jax, numpy, optax, the standard library and the ep_jax core, so it works from
an installed wheel. The side-by-side PyTorch references, their agreement checks, the speed-up
tables and the plots live in the source tree's ``benchmarks/suite.py``, which builds on this
module.

Timing (every function here): a compile call, ``warmup`` calls, then ``repeats`` samples; each
sample runs enough calls back to back to last ``min_sample_s`` and ends with
``jax.block_until_ready``; the result is per call, median and min over the samples. Nothing is
donated and every call's outputs feed the next call, so calls chain as in training.

Usage::

    ep-jax bench --suite smoke                       # seconds; writes ./bench-<device>.{json,md}
    ep-jax bench --suite quick --only 'B256/T20\\+4/gd/'
    ep-jax bench --suite cpu --json out.json --markdown out.md --overwrite
    ep-jax bench --suite gpu --list                  # the row ids of a suite

    from ep_jax.bench import random_batch, time_training_step
    x, y = random_batch((784, 500, 10), 256)
    time_training_step(make_energy("hopfield", (784, 500, 10)), "ep", Phases(), x, y,
                       optimizer=per_layer_sgd([0.1, 0.05]))

FLOP count of one Hopfield EP training step (``flops``; multiply-adds count 2; only matrix
products are counted -- the elementwise work is O(B n) per layer against O(B n n') for the
products): sizes n_0 (input), n_1 ... n_L (free layers), batch B, T = T_free + T_nudged
relaxation steps, *actually taken* for ``gd-tol``:

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
import gzip
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

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ep_jax.energies import make_energy
from ep_jax.optim import per_layer_sgd
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent, relax

EPSILON = 0.5
BETA = 0.5
TOL = 1e-3  # gd-tol: max_b ||s_{t+1} - s_t|| <= TOL, capped at the row's step counts
RULE = "ep-random-sign"
SOLVERS = ("gd", "gd-tol", "fp-sync", "fp-async")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REF_NAMES = ("seed001", "seed002", "torch_best")
N_IN, N_OUT = 784, 10
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIR_ENV = "EP_JAX_DATA_DIR"


# ------------------------------------------------------------------------------------------
# Rows and suites
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark point: a Hopfield net ``sizes``, ``batch``, the free and nudged step caps,
    the solver and the dtype. ``refs`` and ``compile`` are read only by the source tree's
    ``benchmarks/suite.py`` (which PyTorch references to run; also ``torch.compile``);
    ``hlo``: inspect the optimised HLO of the JAX step."""

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


def select_rows(suite: str, only: str | None = None) -> list:
    """The rows of ``suite`` whose id matches the regular expression ``only`` (all if None)."""
    return filter_rows(suite_rows(suite), suite, only)


def filter_rows(rows: list, suite: str, only: str | None = None) -> list:
    """The ``rows`` (of ``suite``) whose ``id`` matches the regular expression ``only``."""
    if only is None:
        return rows
    try:
        pattern = re.compile(only)
    except re.error as e:
        raise ValueError(f"--only: expected a regular expression, received {only!r} ({e})") from None
    picked = [r for r in rows if pattern.search(r.id)]
    if not picked:
        raise ValueError(f"--only: expected a pattern matching a row id of suite {suite!r} "
                         f"(see --list), received {only!r}")
    return picked


@dataclasses.dataclass(frozen=True)
class Settings:
    jax_repeats: int
    torch_repeats: int  # the PyTorch references' samples (benchmarks/suite.py)
    warmup: int
    min_sample_s: float  # each timed sample runs enough steps back to back to last this long
    row_budget_s: float  # estimated JAX time of a row above this: the row is skipped
    accelerator_only: bool = False
    light_limits: bool = False  # small peak / bandwidth probes (the smoke suite)

    @property
    def timing(self) -> dict:
        """The keyword arguments of ``JaxTimer`` and the ``time_*`` functions."""
        return {"repeats": self.jax_repeats, "warmup": self.warmup,
                "min_sample_s": self.min_sample_s}


SUITES = {
    "smoke": Settings(2, 2, 1, 0.0, 20.0, light_limits=True),
    "quick": Settings(5, 3, 2, 0.02, 30.0),
    "cpu": Settings(7, 5, 2, 0.05, 60.0),
    "gpu": Settings(7, 5, 3, 0.05, 60.0, accelerator_only=True),
    "full": Settings(7, 5, 3, 0.05, 120.0),
}
# Convolutional Hopfield rows: a separate grid and report (ep_jax/bench_conv.py)
CONV_SUITE_NAMES = ("conv-smoke", "conv-cpu", "conv-gpu")


# ------------------------------------------------------------------------------------------
# Counting: FLOPs and bytes of one Hopfield EP training step (the model of the docstring)
# ------------------------------------------------------------------------------------------
def _pairs(sizes):
    """(n_l, n_{l+1}) of the connections between free layers."""
    free = sizes[1:]
    return list(zip(free[:-1], free[1:]))


def flops(sizes, batch, steps) -> dict:
    """FLOPs of one training step with ``steps`` relaxation steps in all (both phases)."""
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
def time_samples(call, sync, repeats, min_sample_s, first_s):
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


def summary(samples, inner) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": [round(s, 5) for s in samples], "inner": inner}


class JaxTimer:
    """Times ``state <- fn(*state)`` (a jitted call whose outputs are the next inputs, so calls
    chain), syncing on the whole state: the compile, ``warmup`` calls, then the samples."""

    def __init__(self, fn, state, *, repeats=5, warmup=2, min_sample_s=0.02):
        self.fn, self.state = fn, tuple(state)
        self.repeats, self.warmup, self.min_sample_s = repeats, warmup, min_sample_s

    def _call(self):
        self.state = tuple(self.fn(*self.state))

    def _sync(self):
        jax.block_until_ready(self.state)

    def run(self) -> dict:
        t0 = time.perf_counter()
        self._call()
        self._sync()
        compile_s = time.perf_counter() - t0
        first = None
        for _ in range(max(1, self.warmup)):
            t0 = time.perf_counter()
            self._call()
            self._sync()
            first = time.perf_counter() - t0
        samples, inner = time_samples(self._call, self._sync, self.repeats, self.min_sample_s, first)
        return {**summary(samples, inner), "first_call_s_incl_compile": compile_s}


# ------------------------------------------------------------------------------------------
# Any energy, rule and solver
# ------------------------------------------------------------------------------------------
def random_batch(sizes, batch: int, dtype="float32", seed: int = 0):
    """``(x, y)``: inputs uniform in [0, 1) ``(batch, sizes[0])`` and labels ``(batch,)`` int32."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return jnp.asarray(x, DTYPES.get(dtype, dtype)), jnp.asarray(y, jnp.int32)


def make_training_step(energy, rule, phases: Phases, optimizer):
    """The jitted training step ``(params, opt_state, key, x, y) -> (params, opt_state, key,
    steps)`` (``steps``: the free and nudged phases' step counts); ``rule``: a name of
    ``ep_jax.rules.RULES`` or a rule function.

    Nothing is donated: with one dispatch per step, donating params and optimizer state cost
    ~1 ms per step at 784-500-10, B=256 on the 2-core CPU (the next step's dispatch then waits
    for the previous one); ``ep-jax train`` scans over many steps inside one call instead."""
    rule_fn = get_rule(rule) if isinstance(rule, str) else rule

    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        grads, res = rule_fn(energy, params, x, y, "zeros", phases=phases, key=sub)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        steps = jnp.stack([res.free_stats.steps, res.nudged_stats.steps])
        return optax.apply_updates(params, updates), opt_state, key, steps

    return jax.jit(step)


def make_free_phase(energy, solver, cost=None):
    """The jitted free phase from zeros ``(params, x) -> (state, steps)``."""
    kw = {} if cost is None else {"cost": cost}

    def free(params, x):
        state, stats = relax(energy, params, x, energy.zeros_state(x), solver=solver, **kw)
        return state, stats.steps

    return jax.jit(free)


def _rate(batch, steps, ms):
    """Example-steps per second: ``batch`` examples each relaxed ``steps`` steps in ``ms``."""
    return batch * steps / (ms / 1e3)


def time_training_step(energy, rule, phases: Phases, x, y, *, optimizer, params=None, key=None,
                       hlo=False, repeats=5, warmup=2, min_sample_s=0.02) -> dict:
    """Times one jitted training step (``make_training_step``) on the batch ``x, y``, params
    (default: ``energy.init_params`` in ``x``'s dtype), optimizer state and key carried from
    call to call as in training.

    Returns ``median_ms``, ``min_ms``, ``samples_ms``, ``inner`` (calls per sample),
    ``first_call_s_incl_compile``, ``steps_taken`` ([free, nudged] of the last call),
    ``example_steps_per_s`` (batch x both phases' steps / median) and, with ``hlo=True``,
    ``hlo_check`` (``input_product_in_loop`` of the compiled step)."""
    key = jax.random.PRNGKey(0) if key is None else key
    if params is None:
        params = energy.init_params(jax.random.PRNGKey(0), x.dtype)
    step = make_training_step(energy, rule, phases, optimizer)

    def call(p, o, k, x_, y_, _n):
        p, o, k, n = step(p, o, k, x_, y_)
        return p, o, k, x_, y_, n

    timer = JaxTimer(call, (params, optimizer.init(params), key, x, y, None), repeats=repeats,
                     warmup=warmup, min_sample_s=min_sample_s)
    out = timer.run()
    out["steps_taken"] = [int(v) for v in np.asarray(timer.state[5])]
    out["example_steps_per_s"] = _rate(x.shape[0], sum(out["steps_taken"]), out["median_ms"])
    if hlo:
        try:
            out["hlo_check"] = input_product_in_loop(
                step, (params, optimizer.init(params), key, x, y), x.shape[-1])
        except Exception as e:  # noqa: BLE001 -- a diagnostic, never fatal
            out["hlo_check"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def time_free_phase(energy, solver, x, *, params=None, cost=None, repeats=5, warmup=2,
                    min_sample_s=0.02) -> dict:
    """Times the jitted free phase from zeros (``make_free_phase``) on ``x``. Returns
    ``median_ms``, ``min_ms``, ``samples_ms``, ``inner``, ``first_call_s_incl_compile``,
    ``steps_taken`` and ``example_steps_per_s`` (batch x steps / median)."""
    if params is None:
        params = energy.init_params(jax.random.PRNGKey(0), x.dtype)
    free = make_free_phase(energy, solver, cost)

    def call(p, x_, _s, _n):
        state, n = free(p, x_)
        return p, x_, state, n

    timer = JaxTimer(call, (params, x, None, None), repeats=repeats, warmup=warmup,
                     min_sample_s=min_sample_s)
    out = timer.run()
    out["steps_taken"] = int(timer.state[3])
    out["example_steps_per_s"] = _rate(x.shape[0], out["steps_taken"], out["median_ms"])
    return out


def input_product_in_loop(step, args, n_in: int) -> dict:
    """Looks at the optimised HLO: does any while-loop body touch an ``n_in``-sized operand?

    The input drive rho(x) @ W_0 is loop-invariant; XLA should hoist it out of the relaxation
    loops (then no computation reachable from a while body has a dimension of size ``n_in``).
    """
    text = step.lower(*args).compile().as_text()
    comps, name = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            head = line.split("(")[0].split()
            name = head[-1].lstrip("%")
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    callees = lambda lines: set(re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)",
                                            "\n".join(lines)))
    bodies = set()
    for lines in comps.values():
        bodies |= set(re.findall(r"body=%([\w.\-]+)", "\n".join(lines)))
    seen, todo = set(), list(bodies)
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        todo.extend(callees(comps[c]))
    pat = re.compile(rf"[\[,]{n_in}[\],]")
    hits = sorted(c for c in seen if any(pat.search(l) for l in comps[c]))
    n_dots = sum(1 for c in seen for l in comps[c] if " dot(" in l or "__ynn_fusion" in l)
    return {"while_bodies": len(bodies), "dots_reachable_from_loops": n_dots,
            "input_sized_ops_in_loops": hits, "input_product_hoisted": not hits}


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


def available_memory_bytes(platform_: str) -> float:
    """Free memory of the JAX device (accelerators) or of the host (``cpu``)."""
    if platform_ != "cpu":
        try:
            stats = jax.devices()[0].memory_stats() or {}
            return float(stats.get("bytes_limit", 16 * 2**30) - stats.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001 -- a backend without memory stats
            return 16.0 * 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 2**30


def measure_limits(settings: Settings) -> dict:
    """Matmul peak per dtype, memory bandwidth and free memory of this device."""
    light = settings.light_limits
    return {"peak": {dt: device_peak(dt, light) for dt in DTYPES},
            "bandwidth": memory_bandwidth(light),
            "memory_bytes": available_memory_bytes(platform_name())}


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
                   (x, w0, wf, wb, None), **settings.timing).run()
    fl = flops(sizes, B, steps)["training_step"]
    return {"gflops": fl / (res["median_ms"] / 1e3) / 1e9, "median_ms": res["median_ms"],
            "min_ms": res["min_ms"]}


# ------------------------------------------------------------------------------------------
# A suite row: the Hopfield EP step of the grid
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


def row_setup(row: Row):
    """``(energy, phases, optimizer)`` of a row: Hopfield with the hard sigmoid, beta 0.5, the
    row's solver for both phases, per-layer SGD."""
    energy = make_energy("hopfield", row.sizes)
    phases = Phases(BETA, free=make_solver(row.solver, row.t_free),
                    nudged=make_solver(row.solver, row.t_nudged))
    return energy, phases, per_layer_sgd(alphas_for(row.sizes))


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


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """The first ``count`` items of a gzipped idx file (MNIST's format)."""
    with gzip.open(path, "rb") as f:
        header = np.frombuffer(f.read(4), dtype=">u4")
        if int(header[0]) != magic:
            raise ValueError(f"{path}: expected idx magic {magic}, received {int(header[0])}")
        ndim = magic & 0xFF
        dims = [int(v) for v in np.frombuffer(f.read(4 * ndim), dtype=">u4")]
        if dims[0] < count:
            raise ValueError(f"{path}: expected at least {count} items, received {dims[0]}")
        per_item = int(np.prod(dims[1:], dtype=np.int64))
        return np.frombuffer(f.read(count * per_item), dtype=np.uint8).reshape(count, per_item)


def load_batch(batch: int, n_in: int = N_IN, n_out: int = N_OUT, data_dir=None, seed: int = 0):
    """``(x, y, source)``: the first ``batch`` MNIST test images in [0, 1] (float32, 784) and
    their labels when the net is 784-...-10 and ``data_dir`` (or ``data_dir/mnist``) holds
    MNIST's t10k files; else random inputs uniform in [0, 1) and random labels."""
    reason = "no data directory"
    if data_dir is not None and (n_in, n_out) == (N_IN, N_OUT):
        dirs = [Path(data_dir) / "mnist", Path(data_dir)]
        found = next((d for d in dirs if all((d / f).exists() for f in MNIST_TEST_FILES)), None)
        if found is not None:
            images, labels = (found / f for f in MNIST_TEST_FILES)
            x = _read_idx(images, 2051, batch).astype(np.float32) / 255.0
            y = _read_idx(labels, 2049, batch)[:, 0].astype(np.int64)
            return x, y, f"MNIST t10k, first {batch} images ({images})"
        reason = f"no MNIST t10k files in {dirs[0]} or {dirs[1]}"
    rng = np.random.default_rng(seed)
    x = rng.random((batch, n_in), dtype=np.float32)
    y = rng.integers(0, n_out, batch)
    return x, y, ("random data, uniform [0, 1)" if (n_in, n_out) != (N_IN, N_OUT)
                  else f"RANDOM data, uniform [0, 1) ({reason})")


def row_inputs(row: Row, data_dir=None):
    """``(weights, biases, x, y, source)`` of a row as numpy arrays (the same for every caller:
    the torch references of benchmarks/suite.py start from exactly these)."""
    weights, biases = init_params(row.sizes)
    return (weights, biases) + load_batch(row.batch, row.sizes[0], row.sizes[-1], data_dir)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_ticks():
    """Aggregate CPU ticks from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        return dict(zip(names, (int(v) for v in fields[1:9])))
    except (OSError, ValueError):
        return None


def cpu_usage(before, after) -> dict | None:
    """Share of machine CPU time spent busy / stolen by the hypervisor between two samples.

    A large ``steal`` (or a ``busy`` share far from what the process alone explains) marks a
    sample disturbed by the host: treat its timings with care.
    """
    if before is None or after is None:
        return None
    d = {k: after[k] - before[k] for k in before}
    total = sum(d.values()) or 1
    busy = d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]
    return {"busy_share": round(busy / total, 3), "steal_share": round(d["steal"] / total, 3),
            "ticks": total}


def bench_jax(row: Row, weights, biases, x_np, y_np, settings: Settings) -> dict:
    """The row's training step and its free phase alone, each timed by ``JaxTimer``."""
    energy, phases, tx = row_setup(row)
    dt = DTYPES[row.dtype]
    x = jnp.asarray(x_np, dt)
    y = jnp.asarray(y_np.astype(np.int32))
    params = jax_params(weights, biases, row.dtype)
    ticks0 = cpu_ticks()
    step = time_training_step(energy, RULE, phases, x, y, optimizer=tx, params=params,
                              hlo=row.hlo, **settings.timing)
    out = {"step": step, "steps_taken": step.pop("steps_taken")}
    if "hlo_check" in step:
        out["hlo_check"] = step.pop("hlo_check")
    out["free"] = time_free_phase(energy, phases.free, x, params=params, cost=phases.cost,
                                  **settings.timing)
    out["cpu_during_timing"] = cpu_usage(ticks0, cpu_ticks())
    return out


def jax_memory_need(row: Row) -> float:
    item = 2 if row.dtype == "bfloat16" else 4
    params = sum(a * b + b for a, b in zip(row.sizes[:-1], row.sizes[1:]))
    states = row.batch * sum(row.sizes[1:])
    return item * (4 * params + row.batch * row.sizes[0] + 8 * states)


def run_row(row: Row, settings: Settings, limits: dict, data_dir=None) -> dict:
    """One row: skipped (memory, time budget; the reason recorded) or measured: the step and
    free-phase times, FLOPs, GFLOP/s, the row's chain peak, the FLOP floor and roofline."""
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
    weights, biases, x_np, y_np, source = row_inputs(row, data_dir)
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
        "row_wall_s": time.perf_counter() - t_row,
    })
    return out


def skipped_row(row: Row, reason: str) -> dict:
    return {"id": row.id, "tag": row.tag, "shapes": list(row.sizes), "batch": row.batch,
            "t_free": row.t_free, "t_nudged": row.t_nudged, "solver": row.solver,
            "dtype": row.dtype, "status": "skipped", "skip_reason": reason}


def accelerator_skip(suite: str, settings: Settings, force: bool) -> str | None:
    """Why every row of an accelerator-only suite is skipped here (None: run them)."""
    if settings.accelerator_only and platform_name() == "cpu" and not force:
        return (f"suite {suite} is for accelerators; jax runs on {platform_name()} here "
                f"(use --suite cpu, or --force)")
    return None


def run_rows(rows_spec, run_one, describe, skip_reason=None) -> list:
    """Runs ``run_one(row)`` for every row, printing progress and ``describe(result)``; a row
    that raises is recorded as failed (with its traceback) and the others still run."""
    rows = []
    for i, row in enumerate(rows_spec, 1):
        print(f"[{i}/{len(rows_spec)}] {row.id} {row.tag}", flush=True)
        if skip_reason is not None:
            rows.append(skipped_row(row, skip_reason))
            continue
        try:
            r = run_one(row)
        except Exception as e:  # noqa: BLE001 -- one failing row must not lose the others
            r = {"id": row.id, "tag": row.tag, "status": "failed",
                 "skip_reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rows.append(r)
        print(f"    {describe(r)}" if r.get("status") == "ok"
              else f"    {r['status']}: {r.get('skip_reason')}", flush=True)
    return rows


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
    """Commit and dirtiness of the source checkout ep_jax runs from; None for an installed
    package (its directory is not the top of a git work tree)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != root:
        return {"commit": None, "dirty": None}
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "ep_jax", "benchmarks"))}


def git_line(git: dict) -> str:
    if not git["commit"]:
        return "git: not a source checkout"
    return f"git {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}"


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(suite: str) -> dict:
    d = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite, "device_slug": device_slug(), "jax_platform": d.platform,
        "device_kind": d.device_kind, "jax_devices": [str(v) for v in jax.devices()],
        "cpu": cpu_model(), "os_cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": _version("jaxlib"),
        "optax": optax.__version__, "numpy": np.__version__, "ep_jax": _version("ep_jax"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git": git_state(),
    }


def finish_environment(env: dict, ticks_start) -> None:
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env["cpu_during_run"] = cpu_usage(ticks_start, cpu_ticks())


def fmt(v, spec=".2f", none="—"):
    return none if v is None else format(v, spec)


def ms(v):
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def limits_line(limits: dict) -> str:
    if not limits["peak"]:
        return "- device limits: not measured (every row skipped)"
    p32, p16, bw = limits["peak"]["float32"], limits["peak"]["bfloat16"], limits["bandwidth"]
    return (f"- measured in this run: matmul peak {p32['gflops']:.0f} GFLOP/s float32, "
            f"{p16['gflops']:.0f} GFLOP/s bfloat16 ({p32['n']}^2 matmul chain); memory bandwidth "
            f"{bw['gbps']:.1f} GB/s; machine balance {p32['gflops'] / bw['gbps']:.1f} FLOP/byte "
            f"(float32)")


def hlo_lines(rows) -> list:
    hlo = [(r["id"], r["jax"]["hlo_check"]) for r in rows
           if r.get("status") == "ok" and "hlo_check" in r["jax"]]
    if not hlo:
        return []
    out = ["", "## Compiled structure (optimised HLO of the JAX step)", "",
           "| row | while loops | dots reachable from loops | input-sized ops in loops | input product hoisted |",
           "|---|---|---|---|---|"]
    for rid, h in hlo:
        if "error" in h:
            out.append(f"| {rid} | error: {h['error']} | | | |")
        else:
            out.append(f"| {rid} | {h['while_bodies']} | {h['dots_reachable_from_loops']} "
                       f"| {len(h['input_sized_ops_in_loops'])} | {h['input_product_hoisted']} |")
    return out


NOTES = [
    "One training step = free phase from zeros + nudged phase + EP update + per-layer SGD "
    "(ep_jax: rule `ep-random-sign`, Hopfield energy with the hard sigmoid, one jitted function "
    "per step, nothing donated; beta = 0.5, eps = 0.5, alphas 0.1 * 0.5^l). Times are per step: "
    "median (min) of the samples; each sample runs enough steps back to back to last the "
    "suite's minimum sample time, then syncs (JAX `block_until_ready`). The free phase alone is "
    "timed the same way; example·steps/s = batch x its steps / its median time.",
    "Row ids: sizes/B batch/T free + nudged step caps/solver/dtype; `steps_taken` = the steps "
    "actually run (gd-tol stops early when it converges).",
    f"gd-tol uses tol = {TOL:g} capped at the row's step counts; from zeros with Glorot weights "
    "the free phase does not reach it within 20 steps, so these rows run to the caps "
    "(`steps_taken` in the JSON) and measure the cost of the tolerance loop itself.",
    "FLOPs: matrix products only (see the module docstring of ep_jax/bench.py): the input "
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
    "memory need half of what is available; the reason is recorded.",
    "`cpu_during_timing` (JSON, CPU only): machine-wide busy and steal shares from /proc/stat; "
    "a busy share near 1.0 with the suite using fewer cores means other work was running.",
]


def write_markdown(path, env, rows, limits, wall_s) -> None:
    ok = [r for r in rows if r.get("status") == "ok"]
    skipped = [r for r in rows if r.get("status") != "ok"]
    L = [f"# EP relaxation throughput (ep_jax): {env['device_slug']} (suite `{env['suite']}`)", ""]
    L += [f"- date: {env['date']}; {git_line(env['git'])}",
          f"- device: {env['device_kind']} ({env['jax_platform']}); CPU: {env['cpu']} "
          f"({env['os_cpu_count']} logical cores, {env['affinity_cpus']} usable)",
          f"- versions: ep_jax {env['ep_jax']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
          f"optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
          limits_line(limits),
          f"- load average at start / end: {env.get('loadavg_start')} / {env.get('loadavg_end')}; "
          f"machine busy share over the run: {env.get('cpu_during_run')}",
          f"- wall time: {wall_s:.1f} s; rows: {len(ok)} measured, {len(skipped)} skipped", ""]
    L += ["## Rows", "",
          "| row | steps | ms/step (med / min) | compile + first call s | free phase ms "
          "| example·steps/s | GFLOP/s | row peak | % peak | floor ratio | AI (FLOP/B) | bound |",
          "|" + "---|" * 12]
    for r in ok:
        L.append(
            f"| {r['id']} | {'+'.join(map(str, r['steps_taken']))} | {ms(r['median_ms'])} / "
            f"{ms(r['min_ms'])} | {r['jax']['step']['first_call_s_incl_compile']:.2f} "
            f"| {ms(r['free_median_ms'])} | {r['example_steps_per_s']:.3g} | {r['gflops']:.1f} "
            f"| {r['peak_gflops']:.1f} | {100 * r['peak_fraction']:.0f}% | {r['floor_ratio']:.1f} "
            f"| {r['arithmetic_intensity']:.1f} | {r['bound']} |")
    if skipped:
        L += ["", "## Skipped", "", "| row | reason |", "|---|---|"]
        L += [f"| {r['id']} | {r.get('skip_reason', '')} |" for r in skipped]
    L += hlo_lines(rows)
    L += ["", "## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    Path(path).write_text("\n".join(L))


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def write_json(path, doc) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, default=json_default))


def refuse_existing(paths: dict, overwrite: bool) -> None:
    """Raises FileExistsError naming the option of the first existing output (unless
    ``overwrite``): a results file is never replaced unless asked."""
    if overwrite:
        return
    for option, path in paths.items():
        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise FileExistsError(f"{option}: {p} exists; pass --overwrite to replace it, or "
                                  f"choose another path")


DESCRIPTION = ("Times one EP training step and the free phase alone over a grid of Hopfield nets, "
               "solvers and dtypes (JAX only), with FLOPs, the device's measured matmul peak and "
               "bandwidth, and the roofline; writes JSON and Markdown.")


def parser(prog: str = "ep-jax bench", description: str | None = None,
           outputs: str = "./bench-<device>") -> argparse.ArgumentParser:
    """The options shared with benchmarks/suite.py (which adds --plots-dir); ``outputs``: the
    default results path without its extension (for the help)."""
    p = argparse.ArgumentParser(prog=prog, description=description or DESCRIPTION)
    p.add_argument("--suite", default="quick", choices=list(SUITES) + list(CONV_SUITE_NAMES),
                   help="smoke (seconds), quick (about a minute on 2 CPU cores), cpu (~15 min), "
                        "gpu (accelerators), full; conv-smoke, conv-cpu, conv-gpu: convolutional "
                        "Hopfield nets (ep_jax/bench_conv.py)")
    p.add_argument("--json", default=None, help=f"default: {outputs}.json")
    p.add_argument("--markdown", default=None, help=f"default: {outputs}.md")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results files (otherwise refused)")
    p.add_argument("--force", action="store_true",
                   help="run an accelerator-only suite (gpu) on a CPU anyway")
    p.add_argument("--only", default=None, metavar="REGEX",
                   help="run only the rows whose id matches (e.g. 'B256/T20\\+4/gd/')")
    p.add_argument("--list", action="store_true", help="print the suite's row ids and exit")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV) or None,
                   help=f"MNIST t10k files for the 784-...-10 rows' batches (in DIR/mnist or DIR; "
                        f"default ${DATA_DIR_ENV}); without them, random inputs")
    return p


def parse_args(p: argparse.ArgumentParser, argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # ``ep-jax bench -- --suite quick``
        argv = argv[1:]
    return p.parse_args(argv)


def _describe(r: dict) -> str:
    return (f"JAX {r['median_ms']:.3f} ms/step ({r['gflops']:.1f} GFLOP/s, "
            f"{100 * r['peak_fraction']:.0f}% of row peak, floor ratio {r['floor_ratio']:.2f}); "
            f"free phase {r['example_steps_per_s']:.3g} example·steps/s ({r['row_wall_s']:.1f} s)")


def main(argv=None) -> int:
    """``ep-jax bench``: runs a suite's rows (JAX only) and writes JSON and Markdown."""
    args = parse_args(parser(), argv)
    if args.suite in CONV_SUITE_NAMES:
        from ep_jax import bench_conv  # it builds on this module

        return bench_conv.main_from_args(args)
    try:
        rows_spec = select_rows(args.suite, args.only)
        if args.list:
            for row in rows_spec:
                print(row.id, row.tag)
            return 0
        slug = device_slug()
        json_path = Path(args.json or f"bench-{slug}.json")
        md_path = Path(args.markdown or f"bench-{slug}.md")
        refuse_existing({"--json": json_path, "--markdown": md_path}, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"ep-jax bench: error: {err}", file=sys.stderr)
        return 2

    t_start, ticks_start = time.perf_counter(), cpu_ticks()
    settings = SUITES[args.suite]
    env = environment(args.suite)
    print(f"suite {args.suite} on {slug} ({env['device_kind']})", flush=True)
    skip = accelerator_skip(args.suite, settings, args.force)
    if skip is not None:  # nothing to measure: no probes either
        limits = {"peak": {}, "bandwidth": {}, "memory_bytes": None}
    else:
        print("measuring the device: matmul peak, memory bandwidth ...", flush=True)
        limits = measure_limits(settings)
    rows = run_rows(rows_spec, lambda row: run_row(row, settings, limits, args.data_dir),
                    _describe, skip)
    wall_s = time.perf_counter() - t_start
    finish_environment(env, ticks_start)
    doc = {"environment": env, "suite": args.suite, "settings": dataclasses.asdict(settings),
           "wall_s": wall_s, "limits": limits, "notes": NOTES, "rows": rows}
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, doc)
    write_markdown(md_path, env, rows, limits, wall_s)
    print(f"wall time {wall_s:.1f} s; wrote {json_path}, {md_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

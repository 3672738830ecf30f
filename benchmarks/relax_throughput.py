"""Throughput of one EP training step: ep_jax (one jitted step) vs the seed 001 PyTorch loop body.

One step = free relaxation + nudged relaxation + parameter update.

* ep_jax: a single ``jax.jit``-ed ``step(params, opt_state, key, x, y) -> (params, opt_state, key)``
  with the ``ep-random-sign`` rule, ``GradientDescent(0.5, T, project="clip01")`` for both phases,
  beta = 0.5, ``per_layer_sgd(alphas)``, float32.
* seed 001 (``tests/reference/seed001.py``, a faithful PyTorch port): exactly the body of the
  seed's training loop -- ``free_phase``, random sign of beta, ``weakly_clamped_phase``,
  ``compute_gradients``, ``update_parameters`` -- torch float32 on the CPU, default threads.
  The seed's extra ``net.measure(...)`` call (a second, 20-step free phase used only for the
  progress bar) is NOT part of the timed body.

Both sides start from the same Glorot parameters and the same batch (the first B images of the
offline MNIST test file, or random data if it is missing) and run in the same process, one after
the other. Times are reported, never asserted.

Usage::

    python benchmarks/relax_throughput.py                    # both configs, full repeats
    python benchmarks/relax_throughput.py --quick            # fewer repeats
    python benchmarks/relax_throughput.py --configs seed001-demo
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
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

from ep_jax.bench import cpu_model, cpu_ticks, cpu_usage, input_product_in_loop  # noqa: E402
from ep_jax.bench import load_batch as _load_batch  # noqa: E402
from ep_jax.energies import make_energy  # noqa: E402
from ep_jax.optim import per_layer_sgd  # noqa: E402
from ep_jax.rules import Phases, get_rule  # noqa: E402
from ep_jax.solvers import GradientDescent  # noqa: E402

# The offline MNIST test set lives in ../shared/data beside the repository (see its README).
MNIST_DIR = Path(os.environ.get("EP_JAX_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))

EPSILON = 0.5  # relaxation step size (seed 001)
BETA = 0.5

CONFIGS = {
    "seed001-demo": dict(sizes=(784, 100, 10), batch=20, t_free=10, t_nudged=4,
                         alphas=(0.1, 0.05), target=50.0),
    "scellier-1h-b256": dict(sizes=(784, 500, 10), batch=256, t_free=20, t_nudged=4,
                             alphas=(0.1, 0.05), target=20.0),
}


# ---------------------------------------------------------------------------------------------
# Setup: reference import, data, parameters, device description
# ---------------------------------------------------------------------------------------------
def import_reference():
    try:
        from tests.reference.seed001 import EquilibriumPropagationNetwork
    except ImportError:
        path = REPO / "tests" / "reference" / "seed001.py"
        spec = importlib.util.spec_from_file_location("seed001_reference", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        EquilibriumPropagationNetwork = mod.EquilibriumPropagationNetwork
    return EquilibriumPropagationNetwork


def load_batch(batch: int):
    """First ``batch`` MNIST test images in [0, 1] (float32, flattened 784) and their labels,
    from ``MNIST_DIR``; ``(x, y, source)``, random data when the files are missing."""
    return _load_batch(batch, data_dir=MNIST_DIR)


def glorot_params(sizes, seed: int = 0):
    """Glorot-uniform kernels (fan_in, fan_out) and zero biases, as numpy float32."""
    energy = make_energy("hopfield", sizes)
    params = energy.init_params(jax.random.PRNGKey(seed), jnp.float32)
    weights = [np.asarray(params[f"layer_{l}"]["kernel"]) for l in range(len(sizes) - 1)]
    biases = [np.asarray(params[f"layer_{l}"]["bias"]) for l in range(len(sizes) - 1)]
    return weights, biases


# ---------------------------------------------------------------------------------------------
# The two steps
# ---------------------------------------------------------------------------------------------
def make_jax_step(sizes, t_free, t_nudged, alphas, rule_name="ep-random-sign"):
    """Returns ``(step, tx, energy, counter)``; ``counter[0]`` counts Python traces of ``step``."""
    energy = make_energy("hopfield", sizes)
    phases = Phases(
        BETA,
        free=GradientDescent(EPSILON, t_free, project="clip01"),
        nudged=GradientDescent(EPSILON, t_nudged, project="clip01"),
    )
    tx = per_layer_sgd(alphas)
    rule = get_rule(rule_name)
    counter = [0]

    def step(params, opt_state, key, x, y):
        counter[0] += 1  # runs only while tracing
        key, sub = jax.random.split(key)
        grads, _ = rule(energy, params, x, y, "zeros", phases=phases, key=sub)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, key

    return jax.jit(step), tx, energy, counter


def to_jax_params(weights, biases):
    return {
        f"layer_{l}": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
        for l, (w, b) in enumerate(zip(weights, biases))
    }


def torch_step(net, x, y, t_free, t_nudged, alphas, rng):
    """The body of seed 001's training loop, minus ``net.measure``."""
    layers_free = net.free_phase(x, t_free, EPSILON)
    sign = 2 * rng.randint(0, 2) - 1  # seed: np.random.randint(0, 2)
    beta_signed = sign * BETA
    layers_clamped = net.weakly_clamped_phase(x, y, t_nudged, EPSILON, beta_signed)
    weight_grads, bias_grads = net.compute_gradients(layers_free, layers_clamped, beta_signed)
    net.update_parameters(weight_grads, bias_grads, alphas)


# ---------------------------------------------------------------------------------------------
# Benchmark of one config
# ---------------------------------------------------------------------------------------------
def sanity_check(cfg, weights, biases, x, y):
    """Not timed: one step with a fixed +beta sign (rule ``ep``); the JAX params must be finite."""
    step, tx, _, _ = make_jax_step(cfg["sizes"], cfg["t_free"], cfg["t_nudged"], cfg["alphas"],
                                   rule_name="ep")
    params = to_jax_params(weights, biases)
    new_params, _, _ = step(params, tx.init(params), jax.random.PRNGKey(1), x, y)
    finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(new_params))
    changed = any(bool(jnp.any(a != b)) for a, b in
                  zip(jax.tree.leaves(new_params), jax.tree.leaves(params)))
    return {"jax_params_finite_after_fixed_sign_step": finite, "jax_params_changed": changed}


def bench_jax(cfg, weights, biases, x_np, y_np, repeats, inner):
    step, tx, _, counter = make_jax_step(cfg["sizes"], cfg["t_free"], cfg["t_nudged"], cfg["alphas"])
    params = to_jax_params(weights, biases)
    opt_state = tx.init(params)
    key = jax.random.PRNGKey(0)
    x = jnp.asarray(x_np, jnp.float32)
    y = jnp.asarray(y_np.astype(np.int32))

    t0 = time.perf_counter()
    compiled_out = step(params, opt_state, key, x, y)
    jax.block_until_ready(compiled_out)
    compile_s = time.perf_counter() - t0
    params, opt_state, key = compiled_out
    for _ in range(3):
        params, opt_state, key = step(params, opt_state, key, x, y)
    jax.block_until_ready(params)

    samples = []
    ticks0 = cpu_ticks()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):  # no host sync inside: only dispatches
            params, opt_state, key = step(params, opt_state, key, x, y)
        jax.block_until_ready((params, opt_state, key))
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    cpu = cpu_usage(ticks0, cpu_ticks())

    finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))
    traces, cache_size = counter[0], step._cache_size()  # before lowering for the HLO check
    hlo = input_product_in_loop(step, (params, opt_state, key, x, y), cfg["sizes"][0])
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "samples_ms": samples,
        "first_call_s_incl_compile": compile_s,
        "hlo_check": hlo,
        "cpu_during_timing": cpu,
        "traces": traces,
        "cache_size": cache_size,
        "traces_after_hlo_check": counter[0],
        "params_finite_after_timing": finite,
    }


def bench_torch(cfg, weights, biases, x_np, y_np, repeats, Net):
    net = Net.from_params(weights, biases, dtype=torch.float32)
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.long)
    rng = np.random.RandomState(0)
    args = (cfg["t_free"], cfg["t_nudged"], list(cfg["alphas"]), rng)
    for _ in range(2):
        torch_step(net, x, y, *args)
    samples = []
    ticks0 = cpu_ticks()
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch_step(net, x, y, *args)
        samples.append((time.perf_counter() - t0) * 1e3)
    cpu = cpu_usage(ticks0, cpu_ticks())
    finite = all(bool(torch.isfinite(p).all()) for p in list(net.weights) + list(net.biases))
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "samples_ms": samples,
        "params_finite_after_timing": finite,
        "cpu_during_timing": cpu,
    }


def run_config(name, args, Net):
    cfg = CONFIGS[name]
    x_np, y_np, source = load_batch(cfg["batch"])
    weights, biases = glorot_params(cfg["sizes"])
    sanity = sanity_check(cfg, weights, biases, jnp.asarray(x_np), jnp.asarray(y_np.astype(np.int32)))
    jres = bench_jax(cfg, weights, biases, x_np, y_np, args.jax_repeats, args.inner)
    tres = bench_torch(cfg, weights, biases, x_np, y_np, args.torch_repeats, Net)
    speedup = tres["median_ms"] / jres["median_ms"]
    return {
        "config": name,
        "shapes": list(cfg["sizes"]),
        "batch": cfg["batch"],
        "t_free": cfg["t_free"],
        "t_nudged": cfg["t_nudged"],
        "epsilon": EPSILON,
        "beta": BETA,
        "alphas": list(cfg["alphas"]),
        "dtype": "float32",
        "data": source,
        "jax_repeats": args.jax_repeats,
        "jax_inner": args.inner,
        "torch_repeats": args.torch_repeats,
        "jax": jres,
        "jax_traces": jres["traces"],
        "seed001": tres,
        "speedup": speedup,
        "target_speedup": cfg["target"],
        "target_met": bool(speedup >= cfg["target"]),
        "sanity": sanity,
    }


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def markdown_table(rows) -> str:
    head = ("| config | shapes | B | T_free+T_nudged | dtype | JAX ms/step (median / min) "
            "| seed001 ms/step (median / min) | speed-up | target | met? |")
    sep = "|" + "---|" * 10
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r['config']} | {'-'.join(map(str, r['shapes']))} | {r['batch']} "
            f"| {r['t_free']}+{r['t_nudged']} | {r['dtype']} "
            f"| {r['jax']['median_ms']:.3f} / {r['jax']['min_ms']:.3f} "
            f"| {r['seed001']['median_ms']:.2f} / {r['seed001']['min_ms']:.2f} "
            f"| {r['speedup']:.1f}x | >= {r['target_speedup']:.0f}x "
            f"| {'yes' if r['target_met'] else 'NO'} |"
        )
    return "\n".join(lines)


NOTES = [
    "One step = free relaxation + nudged relaxation + parameter update, from zero states.",
    "seed001 side: exactly the seed's training-loop body (free_phase, random sign of beta drawn "
    "with numpy, weakly_clamped_phase, compute_gradients, update_parameters); the seed's extra "
    "`net.measure(data, target)` call (a second 20-step free phase for the progress bar) is NOT "
    "included.",
    "seed001 keeps the whole unrolled trajectory in autograd (create_graph=True) and "
    "compute_gradients back-propagates through it; its nudged phase restarts from zeros. ep_jax "
    "computes the EP estimate dE/dtheta at the two fixed states (one backward pass through E only) "
    "and warm-starts the nudged phase from the free state. The iteration counts are the same on "
    "both sides; the work per step is not (that is part of what is measured).",
    "JAX: one `jax.jit`-ed function (params, opt_state, key, x, y) -> (params, opt_state, key); "
    "warm-up = compile + 3 runs; each timed sample runs `--inner` steps back to back (no host sync "
    "between them) and ends with `jax.block_until_ready`; the sample is divided by `--inner` to "
    "amortise dispatch. `jax_traces` counts Python traces of the step (must be 1).",
    "torch: warm-up 2 steps; each timed sample is one step (synchronous on the CPU).",
    "`cpu_during_timing` (JSON): machine-wide busy and hypervisor-steal shares of CPU time during "
    "each side's timed section, from /proc/stat; on a small shared VM, occasional runs are "
    "disturbed (seen while writing this script: a torch seed001-demo run at ~300 ms/step instead "
    "of ~12 ms); rerun when the samples' spread is large.",
    "Both sides start from the same Glorot parameters and the same batch, in the same process, "
    "JAX first then torch. Speed-up = torch median / JAX median.",
    "HLO check (not timed): the optimised HLO of the JAX step is searched for any operand of "
    "input size (784) inside the relaxation while-loop bodies; `input_product_hoisted` = true "
    "means XLA computed the loop-invariant rho(x) @ W0 once, outside the loops.",
    "Sanity check (not timed): one JAX step with a fixed +beta (rule `ep`) from the same params and "
    "batch; the updated params must be finite. No parity check here (tested elsewhere).",
]


def environment(args):
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "platform_processor": platform.processor(),
        "machine": platform.machine(),
        "os_cpu_count": os.cpu_count(),
        "jax_devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "torch": torch.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "quick": args.quick,
    }


def write_markdown(path, env, rows, wall_s):
    lines = ["# EP training-step throughput: ep_jax vs seed 001 (CPU)", ""]
    lines += [f"- date: {env['date']}",
              f"- CPU: {env['cpu']} ({env['os_cpu_count']} logical cores); jax devices: "
              f"{', '.join(env['jax_devices'])}",
              f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, torch {env['torch']}, "
              f"optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
              f"- torch threads: {env['torch_num_threads']} intra-op, "
              f"{env['torch_num_interop_threads']} inter-op",
              f"- benchmark wall time: {wall_s:.1f} s", ""]
    lines += [markdown_table(rows), ""]
    lines += ["| config | data | repeats (JAX x inner / torch) | jax_traces | compile+first call (s) "
              "| x@W0 hoisted out of the loops | sanity: JAX params finite |", "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['data']} | {r['jax_repeats']} x {r['jax_inner']} / "
            f"{r['torch_repeats']} | {r['jax_traces']} | {r['jax']['first_call_s_incl_compile']:.2f} "
            f"| {r['jax']['hlo_check']['input_product_hoisted']} "
            f"| {r['sanity']['jax_params_finite_after_fixed_sign_step']} |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    Path(path).write_text("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples for both sides (default: 7 JAX, 5 torch)")
    p.add_argument("--inner", type=int, default=10, help="JAX steps per timed sample")
    p.add_argument("--quick", action="store_true", help="fewer repeats (3 JAX, 2 torch, inner 3)")
    p.add_argument("--json", default=str(REPO / "benchmarks/results/relax_throughput_cpu.json"))
    p.add_argument("--markdown", default=str(REPO / "benchmarks/results/relax_throughput_cpu.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.jax_repeats, args.torch_repeats, args.inner = 3, 2, min(args.inner, 3)
    else:
        args.jax_repeats, args.torch_repeats = 7, 5
    if args.repeats is not None:
        args.jax_repeats = args.torch_repeats = args.repeats

    t_start = time.perf_counter()
    Net = import_reference()
    env = environment(args)
    rows = []
    for name in args.configs:
        print(f"[{name}] running ...", flush=True)
        rows.append(run_config(name, args, Net))
        r = rows[-1]
        print(f"[{name}] JAX {r['jax']['median_ms']:.3f} ms/step, seed001 "
              f"{r['seed001']['median_ms']:.2f} ms/step, speed-up {r['speedup']:.1f}x, "
              f"jax_traces={r['jax_traces']}, x@W0 hoisted="
              f"{r['jax']['hlo_check']['input_product_hoisted']}, sanity finite="
              f"{r['sanity']['jax_params_finite_after_fixed_sign_step']}; data: {r['data']}",
              flush=True)
    wall_s = time.perf_counter() - t_start

    print()
    print(f"CPU: {env['cpu']} | jax {env['jax']} {env['jax_devices']} | torch {env['torch']} "
          f"({env['torch_num_threads']} threads)")
    print(markdown_table(rows))
    print()
    for n in NOTES:
        print(f"- {n}")
    print(f"\nwall time: {wall_s:.1f} s")

    for path in (args.json, args.markdown):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"environment": env, "wall_s": wall_s, "notes": NOTES, "rows": rows}, f, indent=2)
    write_markdown(args.markdown, env, rows, wall_s)
    print(f"wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    main()

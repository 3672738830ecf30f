"""Scaling of one data-parallel training step (``ep_jax.distributed``) over 1, 2, 4, 8 devices.

For each device count D, a fresh process with D host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=D``) builds ``ep_jax.app.train.Run`` for two
models on MNIST-10k (8000 training images; random data of that shape if the offline file is
missing):

* ``mnist10k``: the preset's 784-500-10 Hopfield net, EP with random-sign beta and persistent
  particles (20 free / 4 nudged steps), batch 64;
* ``residual-mnist10k``: seed 004's residual EP, ResidualMLP(784, d=256, 4 blocks), batch 128;

and times one jitted chunk of ``--steps`` training steps (after a compiling call), best of
``--repeats``. It also trains the same chunk on one device with the D-device batch order
(``batch_shards=D``) and records the normwise relative error of the parameters (and particles)
between the two: the correctness of the sharded step on real sizes.

**The CPU numbers measure correctness and overhead only**: host devices are threads of the same
process sharing the machine's cores (2 here), so D devices do the same work on the same cores,
plus the partitioning and the all-reduces. Speed-ups need real accelerators (one device each).

Writes ``benchmarks/results/scaling_<platform>.{json,md}`` (refused if they exist, unless
``--overwrite``).

Usage::

    nice -n 10 python benchmarks/scaling.py [--devices 1,2,4,8] [--steps 5] [--repeats 3]
        [--overwrite]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = {
    "mnist10k": dict(batch_size=64),
    "residual-mnist10k": dict(batch_size=128, credit_batch=0),
}


def worker(devices: int, steps: int, repeats: int) -> dict:
    """In a process with ``devices`` host devices: time a chunk, compare with one device."""
    sys.path.insert(0, str(REPO))
    import jax
    import numpy as np

    from ep_jax import distributed
    from ep_jax.app.config import get_preset
    from ep_jax.app.data import Dataset, load_dataset
    from ep_jax.app.train import Run

    try:
        data, source = load_dataset("mnist10k"), "MNIST-10k (offline file)"
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (10000, 784)).astype(np.float32)
        y = rng.integers(0, 10, 10000).astype(np.int32)
        data = Dataset(x[:8000], y[:8000], x[8000:], y[8000:], "mnist10k", (28, 28, 1), 10)
        source = "random data of MNIST-10k's shape (offline file missing)"
    out = {"devices": devices, "data": source, "models": {}, "load_before": os.getloadavg()[0]}
    for name, overrides in MODELS.items():
        n_batches = data.x_train.shape[0] // overrides["batch_size"]
        cfg = get_preset(name).with_overrides(
            **overrides, epochs=1, log_every=max(1, n_batches // steps))
        runs = {}
        labels = [("sharded", dict(devices=devices)), ("single", dict(devices=1))]
        if devices == 1:  # the noise floor: the same batches, each in reverse order
            labels.append(("reversed", dict(devices=1)))
        for label, kw in labels:
            run = Run(cfg.with_overrides(**kw), data=data,
                      batch_shards=devices if label != "sharded" else None)
            ts = run.init_state()
            idx, valid = run.batches(run.data_key, ts.epoch)
            if label == "reversed":
                idx = idx[..., ::-1]
            ls, step = ts.learner, ts.step
            times = []
            for r in range(repeats + 1):  # the first call compiles
                t0 = time.perf_counter()
                ls, step, m = run.run_chunk(ls, step, run.X, run.Y, idx[r], valid[r], ts.key)
                jax.block_until_ready((ls, m))
                times.append(time.perf_counter() - t0)
            runs[label] = (run, ls, times)
        run, ls, times = runs["sharded"]
        _, ref, ref_times = runs["single"]
        per_step = min(times[1:]) / run.chunk_len

        def rel(a, b):
            u = np.concatenate([distributed.host_value(v).ravel().astype(np.float64)
                                for v in jax.tree.leaves(a)] or [np.zeros(0)])
            v = np.concatenate([np.asarray(v).ravel().astype(np.float64)
                                for v in jax.tree.leaves(b)] or [np.zeros(0)])
            return float(np.linalg.norm(u - v) / max(np.linalg.norm(v), 1e-30)) if v.size else 0.0

        out["models"][name] = {
            "sizes": run.sizes, "batch_size": cfg.data.batch_size, "dtype": "float32",
            "steps_per_chunk": run.chunk_len, "steps_compared": run.chunk_len * (repeats + 1),
            "mesh": dict(run.mesh.shape) if run.mesh is not None else {"data": 1},
            "step_ms": 1e3 * per_step, "samples_per_s": cfg.data.batch_size / per_step,
            "compile_s": times[0] - min(times[1:]),
            "single_device_step_ms": 1e3 * min(ref_times[1:]) / run.chunk_len,
            "params_rel_error": rel(ls.params, ref.params),
            "particles_rel_error": rel(getattr(ls, "particles", ()), getattr(ref, "particles", ())),
        }
        if "reversed" in runs:
            rev = runs["reversed"][1]
            out["models"][name].update(
                order_params_rel_error=rel(rev.params, ref.params),
                order_particles_rel_error=rel(getattr(rev, "particles", ()),
                                              getattr(ref, "particles", ())))
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="1,2,4,8", help="device counts (default 1,2,4,8)")
    p.add_argument("--steps", type=int, default=5, help="training steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks (best is kept)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--markdown", action="store_true",
                   help="only rewrite the .md from the existing .json")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.markdown:
        saved = json.loads((RESULTS / "scaling_cpu.json").read_text())
        (RESULTS / "scaling_cpu.md").write_text(markdown(saved["meta"], saved["results"]))
        return 0
    if args.worker is not None:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.repeats)))
        return 0
    counts = [int(d) for d in args.devices.split(",")]
    paths = [RESULTS / "scaling_cpu.json", RESULTS / "scaling_cpu.md"]
    if not args.overwrite and any(q.exists() for q in paths):
        print(f"error: {', '.join(str(q) for q in paths if q.exists())} exist; pass --overwrite "
              "to replace them", file=sys.stderr)
        return 2
    rows = []
    for d in counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
               "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, __file__, "--worker", str(d), "--steps",
                               str(args.steps), "--repeats", str(args.repeats)], env=env,
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{d} devices done", file=sys.stderr)
    import jax

    from ep_jax.bench import cpu_model

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": "cpu (host devices: threads sharing the machine's cores)",
            "cpu": cpu_model(), "cores": os.cpu_count(), "jax": jax.__version__,
            "python": platform.python_version(), "steps_per_chunk_target": args.steps,
            "repeats": args.repeats}
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    paths[1].write_text(markdown(meta, rows))
    print(paths[1].read_text())
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Data-parallel scaling of one training step (CPU host devices)",
        "",
        f"{meta['date']}, {meta['cpu']} ({meta['cores']} cores), jax {meta['jax']}; "
        f"data: {rows[0]['data']}. Produced by `benchmarks/scaling.py`.",
        "",
        "**Correctness and overhead only**: the D host devices are threads sharing the same "
        f"{meta['cores']} cores, so D devices do the same arithmetic on the same cores plus the "
        "partitioning and the all-reduces; no speed-up is expected (or possible) here. "
        "`rel. error` is the normwise relative difference of the parameters (and particles) "
        "after the timed steps against one device trained on the same global batches "
        "(`batch_shards=D`); the target is <= 1e-6 (after 10 steps; these are 20 and 24), to be "
        "read against the noise floor below. The timings come from a machine shared with other "
        "jobs (1-minute load average per worker below, on "
        f"{meta['cores']} cores): compare the two columns of one row (same process, same "
        "moment) rather than rows.",
        "",
        "| model | devices | mesh | batch | ms / step | samples / s | vs 1 device | "
        "1-device ms / step (same run) | params rel. error | particles rel. error | steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {m: r for m, r in rows[0]["models"].items()} if rows[0]["devices"] == 1 else {}
    for row in rows:
        for name, r in row["models"].items():
            ratio = (f"{base[name]['step_ms'] / r['step_ms']:.2f}x" if name in base else "-")
            lines.append(
                f"| {name} {'-'.join(map(str, r['sizes'][:2]))}... | {row['devices']} | "
                f"{r['mesh']} | {r['batch_size']} | {r['step_ms']:.1f} | "
                f"{r['samples_per_s']:.0f} | {ratio} | {r['single_device_step_ms']:.1f} | "
                f"{r['params_rel_error']:.1e} | {r['particles_rel_error']:.1e} | "
                f"{r['steps_compared']} |")
    lines += ["", "`vs 1 device`: the 1-device row's ms / step over this row's (> 1 is faster). "
              "Load average (before, after) per device count: " + ", ".join(
                  f"{r['devices']}: ({r['load_before']:.1f}, {r['load_after']:.1f})"
                  if "load_before" in r else f"{r['devices']}: not recorded" for r in rows) + ".",
              "", "Noise floor of float32 training itself (one device, the same steps, the "
              "examples of every batch in reverse order, so only the order of the sums "
              "differs):", ""]
    for name, r in base.items():
        if "order_params_rel_error" in r:
            lines.append(f"- {name}: params rel. error {r['order_params_rel_error']:.1e}, "
                         f"particles rel. error {r['order_particles_rel_error']:.1e}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end training benchmark: ``ep-jax train --preset mnist10k`` and its ``bp-`` twin.

What is measured, side by side in one script on the same machine:

* ep_jax: ``ep-jax train --preset mnist10k`` as a fresh process (25 epochs of 8,000 MNIST-10k
  images, batch 20, 20 free / 4 nudged steps, evaluation of the 2,000 test images after every
  epoch, metrics, checkpoints and plots). Wall time = the run's own ``wall_s`` (data loading,
  compilation, training, evaluation, checkpoints, plots; not the Python/JAX import) and the
  process wall time.
* reference: the body of seed 001's PyTorch training loop (``tests/reference/seed001.py``, a
  faithful port; free phase, random-sign nudged phase, update) on the same shapes, timed over
  ``--torch-batches`` batches and extrapolated to the 10,000 steps of the run (training only:
  no evaluation, no checkpoints), so the ratio is a lower bound of the real one.
* the bp twin (``bp-mnist10k``) on the same split, and EP test errors over ``--seeds``.

Usage::

    python benchmarks/train_mnist10k.py                 # seeds 0-4, writes results/train_mnist10k_<device>.{json,md}
    python benchmarks/train_mnist10k.py --seeds 0 --torch-batches 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import relax_throughput as rt  # noqa: E402

DATA_DIR = REPO.parent / "shared" / "data"


def run_cli(preset: str, seed: int, extra=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ep_jax.app.cli", "train", "--preset", preset, "--seed", str(seed),
               "--data-dir", str(DATA_DIR), "--out", str(Path(tmp) / "run"), "--quiet", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["process_wall_s"] = wall
    return summary


def torch_reference(n_batches: int) -> dict:
    import torch

    Net = rt.import_reference()
    sizes, batch = (784, 500, 10), 20
    x_np, y_np, source = rt.load_batch(batch)
    weights, biases = rt.glorot_params(sizes)
    net = Net.from_params(weights, biases, dtype=torch.float32)
    x, y = torch.tensor(x_np), torch.tensor(y_np, dtype=torch.long)
    rng = np.random.RandomState(0)
    rt.torch_step(net, x, y, 20, 4, [0.1, 0.05], rng)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n_batches):
        rt.torch_step(net, x, y, 20, 4, [0.1, 0.05], rng)
    per_step = (time.perf_counter() - t0) / n_batches
    return {"per_step_ms": 1e3 * per_step, "batches_timed": n_batches,
            "extrapolated_25_epochs_s": per_step * 10_000, "data": source,
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--torch-batches", type=int, default=100)
    p.add_argument("--out", default=None, help="results stem (default results/train_mnist10k_<device>)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    import jax

    device = jax.devices()[0].platform
    env = rt.environment(argparse.Namespace(quick=False))
    ep = [run_cli("mnist10k", s) for s in seeds]
    bp = [run_cli("bp-mnist10k", s) for s in seeds]
    ref = torch_reference(args.torch_batches)

    def stats(runs, key):
        vals = [r[key] for r in runs]
        return {"mean": statistics.mean(vals), "std": statistics.pstdev(vals), "values": vals}

    result = {
        "benchmark": "train_mnist10k",
        "environment": env,
        "shapes": {"sizes": [784, 500, 10], "batch": 20, "n_train": 8000, "n_test": 2000,
                   "epochs": 25, "steps": 10_000, "free_steps": 20, "nudged_steps": 4,
                   "dtype": "float32"},
        "seeds": seeds,
        "ep": {"test_error": stats(ep, "test_error"), "wall_s": stats(ep, "wall_s"),
               "train_wall_s": stats(ep, "train_wall_s"),
               "process_wall_s": stats(ep, "process_wall_s"), "runs": ep},
        "bp": {"test_error": stats(bp, "test_error"), "wall_s": stats(bp, "wall_s"), "runs": bp},
        "torch_seed001_reference": ref,
        "speedup_vs_torch": ref["extrapolated_25_epochs_s"] / ep[0]["wall_s"],
    }
    stem = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"train_mnist10k_{device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    e, b = result["ep"], result["bp"]
    lines = [
        "# `ep-jax train --preset mnist10k` (EP) and `bp-mnist10k` (backprop twin)",
        "",
        f"{env['date']}, {env['cpu']}, {env['os_cpu_count']} cores, jax {env['jax']}, torch {env['torch']}. "
        "784-500-10, batch 20, 25 epochs (10,000 steps), 20 free / 4 nudged steps, float32; "
        "train = first 8,000 images of the official MNIST test file, test = last 2,000.",
        "",
        "| run | test error % (mean ± std over seeds) | per seed | 25 epochs s (compile, eval, checkpoints incl.) | whole run s |",
        "| --- | --- | --- | --- | --- |",
        f"| EP `mnist10k` | {100 * e['test_error']['mean']:.2f} ± {100 * e['test_error']['std']:.2f} | "
        + ", ".join(f"{100 * v:.2f}" for v in e["test_error"]["values"])
        + f" | {e['train_wall_s']['mean']:.1f} (min {min(e['train_wall_s']['values']):.1f})"
        + f" | {e['wall_s']['mean']:.1f} (process {e['process_wall_s']['mean']:.1f}) |",
        f"| BP `bp-mnist10k` | {100 * b['test_error']['mean']:.2f} ± {100 * b['test_error']['std']:.2f} | "
        + ", ".join(f"{100 * v:.2f}" for v in b["test_error"]["values"])
        + f" | {statistics.mean(r['train_wall_s'] for r in bp):.1f} | {b['wall_s']['mean']:.1f} |",
        f"| seed 001 PyTorch loop body, extrapolated from {ref['batches_timed']} steps | – | – | "
        f"{ref['extrapolated_25_epochs_s']:.0f} (training only) | – |",
        "",
        f"EP minus BP: {100 * (e['test_error']['mean'] - b['test_error']['mean']):+.2f} points. "
        f"Speed-up of the whole EP run over the PyTorch training loop alone: {result['speedup_vs_torch']:.0f}x. "
        "'Whole run' adds data loading, parameter init, the final plots and the summary; 'process' "
        "adds the Python and JAX imports.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

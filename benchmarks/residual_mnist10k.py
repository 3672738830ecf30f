"""Residual EP (seed 004) on MNIST-10k: test error vs the BP twin, and the credit diagnostics.

Runs, each with ``ep-jax train``'s code path (``ep_jax.app.train.train``) in this process:

* ``residual-mnist10k`` (the preset: per-example batch scaling, exact embedding gradient);
* ``bp-residual-mnist10k`` (the same ResidualMLP by backprop, same optimizer);
* the preset with ``--random-targets`` (seed 004's control);
* variants: seed 004's batch scaling and embedding approximation.

Writes ``benchmarks/results/residual_mnist10k.{json,md}`` and ``residual_credit_mnist10k.png``
(Gamma_l and rho_l per epoch, real run vs random-targets control).

Usage::

    python benchmarks/residual_mnist10k.py [--epochs N] [--seeds 0,1] [--runs ep,bp,control,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from ep_jax.app import plots  # noqa: E402
from ep_jax.app.config import get_preset  # noqa: E402
from ep_jax.app.train import train  # noqa: E402

RUNS = {
    "ep": ("residual-mnist10k", {}),
    "bp": ("bp-residual-mnist10k", {}),
    "control": ("residual-mnist10k", {"random_targets": True}),
    "ep-seed004-scaling": ("residual-mnist10k", {"batch_scaling": "batch-mean"}),
    "ep-seed004-embed": ("residual-mnist10k", {"embedding_gradient": "identity-path"}),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--seeds", default="0")
    p.add_argument("--runs", default="ep,bp,control,ep-seed004-scaling,ep-seed004-embed")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default="/tmp/residual_mnist10k_runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results, rows_by_run = {}, {}
    for name in args.runs.split(","):
        preset, overrides = RUNS[name]
        # The twins are compared over every seed; the control and the variants use the first.
        run_seeds = seeds if name in ("ep", "bp") else seeds[:1]
        cfg = get_preset(preset).with_overrides(**overrides)
        if args.epochs:
            cfg = cfg.with_overrides(epochs=args.epochs)
        per_seed = []
        for seed in run_seeds:
            run_dir = Path(args.work) / f"{name}-s{seed}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            s = train(cfg.with_overrides(seed=seed), out_dir=run_dir, quiet=True, plots=False)
            s.pop("state")
            rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            rows_by_run.setdefault(name, rows)
            per_seed.append({"seed": seed, "test_error": s["test_error"],
                             "best_test_error": s["best_test_error"], "wall_s": s["wall_s"],
                             "train_wall_s": s["train_wall_s"], "credit": s.get("credit")})
            print(f"{name} seed {seed}: test error {100 * s['test_error']:.2f}% "
                  f"in {s['wall_s']:.1f} s", flush=True)
        errs = [r["test_error"] for r in per_seed]
        results[name] = {
            "preset": preset, "overrides": overrides, "epochs": cfg.loop.epochs, "runs": per_seed,
            "test_error_mean": statistics.mean(errs),
            "test_error_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
            "wall_s_mean": statistics.mean(r["wall_s"] for r in per_seed),
        }
    png = None
    if "ep" in rows_by_run and "control" in rows_by_run:
        png = plots.plot_credit(
            {"real labels": rows_by_run["ep"], "random targets": rows_by_run["control"]},
            out / "residual_credit_mnist10k.png",
            title="residual EP on MNIST-10k: credit diagnostics, real run vs random-targets control",
        )
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": str(jax.devices()[0]), "jax": jax.__version__, "seeds": seeds}
    payload = {"environment": env, "results": results,
               "credit_curves": {k: [r.get("credit") for r in v] for k, v in rows_by_run.items()}}
    (out / "residual_mnist10k.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "residual_mnist10k.md").write_text(markdown(env, results, png))
    return 0


def markdown(env, results, png) -> str:
    lines = [
        "# Residual EP (seed 004) on MNIST-10k",
        "",
        f"- date: {env['date']}; device: {env['device']}; jax {env['jax']}; seeds {env['seeds']}",
        "- model: ResidualMLP(784, d=256, 4 blocks), batch 128, AdamW 1e-3 (wd 0.01, cosine, "
        "clip 1.0); EP: beta 0.5, nudged phase 20 SGD steps of 0.1",
        "- credit: on the first 128 test images after the last epoch (Gamma/rho = layer means)",
        "",
        "| run | seeds | epochs | test error (mean ± std) | wall s | Γ per layer (h_0..h_L) | "
        "Γ over the batch | ρ per layer | seed-004 Γ (displacement, h_0..h_{L-1}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    for name, r in results.items():
        c = r["runs"][0]["credit"] or {}
        lines.append(
            f"| {name} | {len(r['runs'])} | {r['epochs']} | {100 * r['test_error_mean']:.2f} ± "
            f"{100 * r['test_error_std']:.2f}% | {r['wall_s_mean']:.0f} | "
            f"{f(c.get('gamma_per_layer', []))} | {f(c.get('gamma_batch_per_layer', []))} | "
            f"{f(c.get('rho_per_layer', []))} | "
            f"{f(c.get('gamma_displacement_per_layer', []))} |"
        )
    if png is not None:
        lines += ["", f"![credit]({Path(png).name})"]
    lines += ["", "## Notes", "", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "- Wall times include compilation, per-epoch evaluation, credit diagnostics and checkpoints; "
    "they were measured while other jobs shared the 2 cores (EP 75-108 s, BP 32-34 s per run).",
    "- Γ (per-example mean) and ρ fall from ~0.97 to ~0.3 during the real run while Γ over the "
    "batch stays at 0.93-0.98. This is float32 resolution, not the credit: confident examples have "
    "|dC/dh_L| < ~2e-5, so their nudge is below the rounding of states of size ~1 and their "
    "per-example cosines are noise. On the final seed-0 checkpoint, the same diagnostics in float64 "
    "give Γ = [0.911, 0.888, 0.852, 0.837, 0.834] (20 steps) and [0.937, 0.923, 0.904, 0.881, "
    "0.857] with the nudged phase converged; Γ over the batch is the same in float32 and float64.",
    "- The random-targets control never becomes confident (90% test error), so its per-example "
    "gradients stay large and Γ, ρ stay at ~1: Γ measures whether the nudged phase carries the "
    "backprop signal, not whether the net learns.",
    "- Seed 004's batch scaling (the batch-mean inner objective) moves each example by lr/B per "
    "step: the nudge reaching h_0..h_2 is (lr/B)^k small and rounds away (Γ ≈ 0 there), so only "
    "the top block and the head learn: 9.40% test error vs 2.52%.",
    "- Seed 004's embedding approximation: 3.05% (seed 0) vs 2.55% with the exact term.",
]


if __name__ == "__main__":
    sys.exit(main())

"""Selects the EP learning rates of the ``mnist10k`` preset on a validation split (never the test set).

Scellier & Bengio's rates (alpha = 0.1, 0.05) were set for 50,000 training images x 25 epochs;
MNIST-10k has 8,000, i.e. 6.25x fewer updates in 25 epochs. This script scales both rates by
k in ``--scales``, trains on the first 7,000 of the 8,000 training images and measures the error on
the last 1,000 (seeds ``--seeds``), everything else as the preset. Results:
``benchmarks/results/ep_mnist10k_tuning.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ep_jax.app.config import get_preset  # noqa: E402
from ep_jax.app.data import load_dataset  # noqa: E402
from ep_jax.app.train import train  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scales", default="1,2,3,4")
    p.add_argument("--seeds", default="0,1")
    args = p.parse_args(argv)
    d = load_dataset("mnist10k")
    val = d._replace(x_train=d.x_train[:7000], y_train=d.y_train[:7000],
                     x_test=d.x_train[7000:], y_test=d.y_train[7000:])
    base = get_preset("mnist10k")
    paper = (0.1, 0.05)
    rows = []
    for k in (float(s) for s in args.scales.split(",")):
        alphas = tuple(k * a for a in paper)
        errs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = base.with_overrides(alphas=alphas, seed=seed, eval_every=base.loop.epochs)
            errs.append(train(cfg, data=val, quiet=True, plots=False)["test_error"])
        rows.append({"scale": k, "alphas": alphas, "val_errors": errs, "val_error_mean": statistics.mean(errs)})
        print(rows[-1], flush=True)
    best = min(rows, key=lambda r: r["val_error_mean"])
    out = REPO / "benchmarks" / "results" / "ep_mnist10k_tuning"
    meta = {"split": "train = first 7,000 of the 8,000 MNIST-10k training images, validation = last 1,000",
            "fixed": {k: v for k, v in base.flat().items() if k not in ("alphas", "seed")}}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "best": best}, indent=2) + "\n")
    lines = ["# EP learning rates for `mnist10k`, selected on validation", "", meta["split"] + ".",
             "Everything else as the preset (784-500-10, 20/4 steps, eps 0.5, beta 0.5 random sign, batch 20, 25 epochs).", "",
             "| alphas | validation error % per seed | mean |", "| --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['alphas'][0]:g}, {r['alphas'][1]:g} | "
                     + ", ".join(f"{100 * e:.1f}" for e in r["val_errors"]) + f" | {100 * r['val_error_mean']:.2f} |")
    lines += ["", f"Selected: alphas = {best['alphas'][0]:g}, {best['alphas'][1]:g}.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convolutional EP on MNIST-10k: ``conv-mnist10k`` (symmetric EP) vs its BPTT twin.

Runs ``ep-jax train``'s code path (``ep_jax.app.train.train``) in this process for each seed:

* ``ep``: the ``conv-mnist10k`` preset (conv 16 5x5/2, conv 32 5x5/2, softmax readout,
  asynchronous fixed-point sweeps 20 free / 4 nudged, symmetric EP beta 0.5);
* ``bp``: ``bp-conv-mnist10k``, the same config with ``rule="bptt"`` (backprop through the 20
  free sweeps) and the update clipped to global norm 1; ``bp-unclipped``: without the clip.

Reports per run the final test error (mean ± sample std and the min-max spread over seeds), the
training time per epoch (the jitted epochs only: compilation, evaluation and checkpoints are left
out), and the machine (CPU model, cores, load average before and after: the 2 cores may be
shared). Reference: the MLP ``mnist10k`` preset's 3.74 ± 0.28% (5 seeds,
``benchmarks/results/train_mnist10k_cpu.md``).

Writes ``benchmarks/results/conv_mnist10k.{json,md}`` after every run (a partial study is saved as
such); refuses to overwrite committed results without ``--overwrite``. Parts of a study run as
separate processes (e.g. the slower BPTT runs beside the EP runs) are combined with ``--merge``.

Usage::

    nice -n 10 python benchmarks/conv_mnist10k.py [--seeds 0,1,2] [--runs ep,bp] [--overwrite]
    python benchmarks/conv_mnist10k.py --merge PART_DIR PART_DIR ... [--note TEXT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from ep_jax.app.config import get_preset  # noqa: E402
from ep_jax.app.train import train  # noqa: E402

# name -> (preset, overrides). The twin bp-conv-mnist10k clips the update to global norm 1 (the
# unclipped twin, "bp-unclipped", diverged at the EP preset's rates: see the results' notes).
RUNS = {"ep": ("conv-mnist10k", {}), "bp": ("bp-conv-mnist10k", {}),
        "bp-unclipped": ("bp-conv-mnist10k", {"grad_clip": None})}
MLP_REFERENCE = {"preset": "mnist10k", "test_error_mean": 0.0374, "test_error_std": 0.0028,
                 "seeds": 5, "source": "benchmarks/results/train_mnist10k_cpu.md"}
NAME = "conv_mnist10k"


def machine() -> dict:
    """CPU model, core count, load average and this process's nice value."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "device": str(jax.devices()[0]), "jax": jax.__version__, "nice": os.nice(0),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def summarize(per_seed: list[dict]) -> dict:
    errs = [r["test_error"] for r in per_seed]
    per_epoch = [r["train_s_per_epoch"] for r in per_seed]
    return {
        "seeds": [r["seed"] for r in per_seed],
        "test_error_mean": statistics.mean(errs),
        "test_error_std": statistics.stdev(errs) if len(errs) > 1 else None,
        "test_error_min": min(errs), "test_error_max": max(errs),
        "train_s_per_epoch_mean": statistics.mean(per_epoch),
        "wall_s_mean": statistics.mean(r["wall_s"] for r in per_seed),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", default="ep,bp", help="comma-separated from " + ",".join(RUNS))
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--data-dir", default=None, help="default: $EP_JAX_DATA_DIR or ../shared/data")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work", default="/tmp/conv_mnist10k_runs", help="the runs' directories")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="combine the results of parts run separately (their --out directories)")
    p.add_argument("--note", action="append", default=[], help="a line for the notes (--merge)")
    args = p.parse_args(argv)
    out = Path(args.out)
    paths = [out / f"{NAME}.json", out / f"{NAME}.md"]
    if any(q.exists() for q in paths) and not args.overwrite:
        print(f"{paths[0]} exists: pass --overwrite to replace it", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge([Path(d) / f"{NAME}.json" for d in args.merge], paths, args.note)
    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        p.error(f"--runs: expected names from {sorted(RUNS)}, received {unknown}")
    seeds = [int(s) for s in args.seeds.split(",")]
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine_at_start": machine(), "seeds": seeds, "runs": runs}
    results: dict = {}
    # Seeds outer, runs inner: a study cut short still pairs EP and BPTT on the same seeds.
    for seed in seeds:
        for name in runs:
            preset, overrides = RUNS[name]
            cfg = get_preset(preset).with_overrides(**overrides)
            if args.epochs:
                cfg = cfg.with_overrides(epochs=args.epochs)
            run_dir = Path(args.work) / f"{name}-s{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            s = train(cfg.with_overrides(seed=seed), out_dir=run_dir, data_dir=args.data_dir,
                      quiet=True, plots=False)
            s.pop("state")
            entry = results.setdefault(name, {"preset": cfg.preset, "overrides": overrides,
                                              "config": cfg.to_dict(), "runs": []})
            entry["runs"].append({
                "seed": seed, "test_error": s["test_error"], "best_test_error": s["best_test_error"],
                "train_error": s["train_error"], "epochs": s["epochs"], "wall_s": s["wall_s"],
                "train_wall_s": s["train_wall_s"], "train_s_per_epoch": s["train_wall_s"] / s["epochs"],
                "samples_per_s": s["samples_per_s"], "load_average_after": list(os.getloadavg()),
            })
            entry.update(summarize(entry["runs"]))
            print(f"{name} seed {seed}: test error {100 * s['test_error']:.2f}%, "
                  f"{s['train_wall_s'] / s['epochs']:.1f} s per epoch", flush=True)
            env["machine_at_end"] = machine()
            write(paths, env, results)
    return 0


def merge(parts: list[Path], paths, notes) -> int:
    """One study from parts: their runs per name (in part order), the parts' environments kept."""
    loaded = [json.loads(q.read_text()) for q in parts]
    results: dict = {}
    for part in loaded:
        for name, r in part["results"].items():
            entry = results.setdefault(
                name, {k: r[k] for k in ("preset", "overrides", "config") if k in r} | {"runs": []})
            entry["runs"] += r["runs"]
            entry.update(summarize(entry["runs"]))
    envs = [part["environment"] for part in loaded]
    env = {"date": min(e["date"] for e in envs), "machine_at_start": envs[0]["machine_at_start"],
           "machine_at_end": envs[-1].get("machine_at_end", envs[-1]["machine_at_start"]),
           "seeds": sorted({s for e in envs for s in e["seeds"]}), "parts": envs, "notes": notes}
    write(paths, env, results)
    print(paths[1].read_text())
    return 0


def write(paths, env, results) -> None:
    verdict = {}
    if "ep" in results:
        verdict["ep_beats_mlp_mnist10k"] = results["ep"]["test_error_mean"] < MLP_REFERENCE["test_error_mean"]
    for bp in ("bp", "bp-unclipped"):
        if "ep" in results and bp in results:
            gap = results["ep"]["test_error_mean"] - results[bp]["test_error_mean"]
            verdict[f"ep_minus_{bp}_points"] = 100 * gap
            verdict[f"ep_within_half_a_point_of_{bp}"] = abs(gap) <= 0.005
    payload = {"environment": env, "mlp_reference": MLP_REFERENCE, "results": results,
               "verdict": verdict}
    paths[0].write_text(json.dumps(payload, indent=2) + "\n")
    paths[1].write_text(markdown(env, results, verdict))


def markdown(env, results, verdict) -> str:
    m0, m1 = env["machine_at_start"], env.get("machine_at_end", env["machine_at_start"])
    cfg = get_preset("conv-mnist10k")
    lines = [
        "# Convolutional EP on MNIST-10k: `conv-mnist10k` vs `bp-conv-mnist10k` (BPTT)",
        "",
        f"- date: {env['date']}; {m0['device']}, {m0['cpu']} ({m0['cores']} cores), "
        f"{m0['platform']}; jax {m0['jax']}; nice {m0['nice']}",
        f"- load average (1, 5, 15 min) at start {m0['load_average']}, at end "
        f"{m1['load_average']}: the cores were shared with other jobs, so times are upper bounds",
        "- data: MNIST-10k (first 8,000 images of the official test file for training, last "
        "2,000 for testing), 28x28 in [0, 1]",
        f"- model: {cfg.description}",
        f"- twin: the same config with rule='bptt' (backprop through the {cfg.rule.free_steps} "
        "free sweeps), the update clipped to global norm 1",
        "",
        "| run | seeds | epochs | test error % (mean ± std) | min - max | train s / epoch | "
        "wall s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        std = "n/a" if r["test_error_std"] is None else f"{100 * r['test_error_std']:.2f}"
        label = r["preset"] + "".join(f" --{k.replace('_', '-')} {v}"
                                      for k, v in r.get("overrides", {}).items())
        lines.append(
            f"| {label} | {', '.join(map(str, r['seeds']))} | {r['runs'][0]['epochs']} | "
            f"{100 * r['test_error_mean']:.2f} ± {std} | {100 * r['test_error_min']:.2f} - "
            f"{100 * r['test_error_max']:.2f} | {r['train_s_per_epoch_mean']:.1f} | "
            f"{r['wall_s_mean']:.0f} |"
        )
    ref = MLP_REFERENCE
    lines.append(f"| mnist10k (MLP EP, reference) | 5 | 25 | {100 * ref['test_error_mean']:.2f} ± "
                 f"{100 * ref['test_error_std']:.2f} | | | |")
    lines += ["", "## Verdict", ""]
    if "ep_beats_mlp_mnist10k" in verdict:
        lines.append(f"- conv EP beats the MLP preset's 3.74%: {verdict['ep_beats_mlp_mnist10k']}")
    for bp in ("bp", "bp-unclipped"):
        if f"ep_minus_{bp}_points" in verdict:
            lines.append(f"- EP minus {results[bp]['preset']}"
                         f"{' (unclipped)' if bp == 'bp-unclipped' else ''}: "
                         f"{verdict[f'ep_minus_{bp}_points']:+.2f} points (within 0.5: "
                         f"{verdict[f'ep_within_half_a_point_of_{bp}']})")
    lines += ["", "Per seed:", ""]
    for name, r in results.items():
        label = r["preset"] + "".join(f" --{k.replace('_', '-')} {v}"
                                      for k, v in r.get("overrides", {}).items())
        lines.append(f"- {label}: " + ", ".join(
            f"seed {x['seed']} {100 * x['test_error']:.2f}% ({x['train_s_per_epoch']:.1f} s/epoch)"
            for x in r["runs"]))
    if len(env.get("parts", ())) > 1:
        lines += ["", f"Run as {len(env['parts'])} concurrent processes (nice "
                  f"{env['parts'][0]['machine_at_start']['nice']}), merged with --merge."]
    if env.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in env["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

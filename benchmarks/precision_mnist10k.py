"""bfloat16 vs float32 relaxation on MNIST-10k (``ep_jax.precision``): gradients and test error.

Two measurements on the ``mnist10k`` preset's net (784-500-10 Hopfield, hard sigmoid, 20 free / 4
nudged steps of eps 0.5, beta 0.5, batch 20):

* **gradient agreement**: for every rule that relaxes through the energy (``ep_jax.rules.RULES``
  but seed 000's schemes), the estimate with bfloat16 (and float16) states against the float32
  one on the same params and batch: cosine and relative error, over ``--batches`` real training
  batches, at the Glorot initialisation, after one float32 epoch and at the params the float32
  run of the first seed ends with (free phases from zeros, the preset's beta);
* **training**: ``ep-jax train --preset mnist10k`` (``ep_jax.app.train.train``, this process) in
  float32 and with ``--precision bfloat16`` (and ``float16``, ``--precisions``) for each seed;
  test error at the last epoch. Reduced-precision runs evaluate with ``--eval-tol`` set to the
  smallest tolerance their states resolve (``Precision.resolution``: 2^-7 in bfloat16, 2^-10 in
  float16; the preset's 1e-4 is refused there, see ``docs/PRECISION.md``).

Targets (the issue): cosine >= 0.999 against float32 at the preset beta; test error within 0.3
points of float32 (mean over 3 seeds). Writes ``benchmarks/results/precision_mnist10k.{json,md}``
(refused if they exist, unless ``--overwrite`` or ``--append``).

``--append`` adds policies to existing results (e.g. ``--grad-precisions bfloat16-products,
float16-products --precisions bfloat16-products``): their gradient rows and training runs are
added, the rows already there are kept; the float32 runs are not repeated (their stored test
errors are the reference), except the first seed's, retrained for the trained-params point (same
seed, same numbers: its test error is recorded next to the stored one as a check).

Usage::

    python benchmarks/precision_mnist10k.py [--epochs N] [--seeds 0,1,2] [--batches 5]
        [--precisions bfloat16,float16] [--grad-precisions bfloat16,float16]
        [--overwrite | --append]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ep_jax import EPState, compare, hopfield  # noqa: E402
from ep_jax.app.build import build_learner  # noqa: E402
from ep_jax.app.config import get_preset  # noqa: E402
from ep_jax.app.data import load_dataset  # noqa: E402
from ep_jax.app.train import train  # noqa: E402
from ep_jax.precision import POLICIES, Precision  # noqa: E402
from ep_jax.rules import RULES, get_rule  # noqa: E402
from ep_jax.rules.seed000 import SEED000_RULES  # noqa: E402

PRESET = "mnist10k"
REDUCED = POLICIES[1:]
POINTS = {"init": "Glorot init", "epoch1_f32": "after 1 float32 epoch",
          "trained_f32": "after the float32 run"}


def _f(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def gradient_agreement(params_by_point: dict, batches: list, phases, rules,
                       policies=("bfloat16", "float16")) -> list[dict]:
    """Per rule, precision and params point: cosine / rel. error vs float32 over the batches."""
    energy = hopfield((784, 500, 10))
    rows = []
    for name in rules:
        fn = get_rule(name)

        def grads(en):
            return jax.jit(lambda p, x, y: fn(en, p, x, y, "zeros", phases=phases,
                                              key=jax.random.PRNGKey(1))[0])

        g32 = grads(energy)
        try:
            jax.block_until_ready(g32(params_by_point["init"], *batches[0]))
        except ValueError as err:  # a rule this energy does not support (e.g. holomorphic EP)
            rows.append({"rule": name, "skipped": str(err)})
            print(f"  {name}: skipped ({err})", flush=True)
            continue
        low = {prec: grads(Precision.parse(prec).wrap(energy)) for prec in policies}
        for point, params in params_by_point.items():
            ref = [g32(params, x, y) for x, y in batches]
            for prec, g_low in low.items():
                est = [g_low(params, x, y) for x, y in batches]
                cs = [compare(e, r) for e, r in zip(est, ref)]
                # Batches whose float32 estimate is exactly zero too (every output already on
                # its target: the nudge moves nothing) agree trivially and are left out; a
                # reduced estimate that is exactly zero where float32's is not (the nudge moved
                # no state by a representable amount) has no direction: cosine 0.
                both = [c["norm_estimate"] == 0.0 and c["norm_reference"] == 0.0 for c in cs]
                kept = [c for c, z in zip(cs, both) if not z]
                zero = sum(c["norm_estimate"] == 0.0 for c in kept)
                cos = [0.0 if c["norm_estimate"] == 0.0 else c["cosine"] for c in kept]
                rel = [c["rel_error"] for c in kept]
                # The batches' mean gradient (one estimate over all their examples).
                pooled = compare(jax.tree.map(lambda *g: sum(g), *est),
                                 jax.tree.map(lambda *g: sum(g), *ref))
                row = {"rule": name, "params": point, "precision": prec,
                       "cosine_min": min(cos) if cos else None,
                       "cosine_mean": statistics.mean(cos) if cos else None,
                       "cosine_pooled": pooled["cosine"],
                       "rel_error_max": max(rel) if rel else None,
                       "rel_error_mean": statistics.mean(rel) if rel else None,
                       "batches_compared": len(kept), "both_zero": sum(both),
                       "zero_estimates": zero,
                       "norm_float32_mean": statistics.mean(c["norm_reference"] for c in cs),
                       "norm_reduced_mean": statistics.mean(c["norm_estimate"] for c in cs)}
                rows.append(row)
                print(f"  {name:15s} {point:12s} {prec:17s} cosine min {_f(row['cosine_min'], 6)} "
                      f"pooled {row['cosine_pooled']:.6f} rel.err max {_f(row['rel_error_max'], 4)} "
                      f"|g| f32 {row['norm_float32_mean']:.3g} {prec} "
                      f"{row['norm_reduced_mean']:.3g} zero {zero} both zero {sum(both)}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's (25)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batches", type=int, default=5, help="batches of the gradient agreement")
    p.add_argument("--precisions", default="bfloat16,float16",
                   help="reduced precision policies trained besides float32")
    p.add_argument("--grad-precisions", default="bfloat16,float16",
                   help="reduced precision policies of the gradient agreement")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--append", action="store_true",
                   help="add these policies' rows to the existing results (module docstring)")
    args = p.parse_args(argv)
    out = Path(args.out)
    paths = [out / "precision_mnist10k.json", out / "precision_mnist10k.md"]
    old = None
    if args.append:
        if args.overwrite or not paths[0].exists():
            p.error("--append: expected existing results and no --overwrite")
        old = json.loads(paths[0].read_text())
    elif not args.overwrite and any(q.exists() for q in paths):
        print(f"error: {', '.join(str(q) for q in paths if q.exists())} exist; pass --overwrite "
              "to replace them", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    trained = ["float32"] + [q for q in args.precisions.split(",") if q]
    grad_policies = [q for q in args.grad_precisions.split(",") if q]
    for q in trained[1:] + grad_policies:
        if q not in REDUCED:
            p.error(f"--precisions: expected names from {REDUCED}, received {q!r}")
    if old is not None:
        done = {r["precision"] for r in old["runs"]} | {r.get("precision") for r in old["gradients"]}
        if done & set(trained[1:] + grad_policies):
            p.error(f"--append: {sorted(done & set(trained[1:] + grad_policies))} already in the "
                    "results")
    base = get_preset(PRESET)
    if args.epochs is not None:
        base = base.with_overrides(epochs=args.epochs)
    t_start = time.time()

    # ---- training: float32 and each reduced precision per seed ----------------------------
    ds = load_dataset(PRESET, data_dir=args.data_dir)
    learner32 = build_learner(base, 784, 10, total_steps=1)
    x_test, y_test = jnp.asarray(ds.x_test, jnp.float32), jnp.asarray(ds.y_test)
    evaluate32 = jax.jit(lambda params: learner32.evaluate(EPState(params, (), ()), x_test,
                                                           y_test)["error"])

    def eval32(params):
        return evaluate32(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))

    runs = []
    final_params = None
    work = Path(tempfile.mkdtemp(prefix="precision_mnist10k_"))
    for seed in seeds:
        for prec in trained:
            if old is not None and prec == "float32" and seed != seeds[0]:
                continue  # the stored float32 runs are the reference; only seed 0's params needed
            over = {"seed": seed, "precision": prec}
            if prec != "float32":
                over["eval_tol"] = Precision.parse(prec).resolution
            cfg = base.with_overrides(**over)
            t0 = time.time()
            s = train(cfg, out_dir=work / f"{prec}-{seed}", data_dir=args.data_dir, quiet=True,
                      plots=False)
            row = {"seed": seed, "precision": prec, "eval_tol": cfg.rule.eval_tol,
                   "test_error": s["test_error"], "best_test_error": s["best_test_error"],
                   "train_error": s["train_error"], "seconds": round(time.time() - t0, 1)}
            if prec != "float32":
                # The same params evaluated by the float32 relaxation (the preset's tolerance):
                # separates what training in reduced precision did from evaluating in it.
                row["test_error_eval_float32"] = float(eval32(s["state"].learner.params))
            runs.append(row)
            print(f"{prec:9s} seed {seed}: test error {100 * row['test_error']:.2f}% "
                  f"(train {100 * row['train_error']:.2f}%), {row['seconds']} s", flush=True)
            if prec == "float32" and final_params is None:
                final_params = s["state"].learner.params

    rerun32 = None
    if old is not None:
        # Reproducibility check of the retrained float32 seed, then the stored float32 runs.
        rerun32 = next(r for r in runs if r["precision"] == "float32")
        stored = next(r for r in old["runs"] if r["precision"] == "float32"
                      and r["seed"] == seeds[0])
        rerun32 = {"seed": seeds[0], "test_error_rerun": rerun32["test_error"],
                   "test_error_stored": stored["test_error"]}
        print(f"float32 seed {seeds[0]} rerun: {rerun32}", flush=True)
        runs = old["runs"] + [r for r in runs if r["precision"] != "float32"]
    mean = {prec: statistics.mean(r["test_error"] for r in runs if r["precision"] == prec)
            for prec in {r["precision"] for r in runs}}
    mean_eval32 = {prec: statistics.mean(r["test_error_eval_float32"] for r in runs
                                         if r["precision"] == prec) for prec in mean
                   if prec != "float32"}

    # ---- gradient agreement ------------------------------------------------------------------
    b = base.data.batch_size
    batches = [(jnp.asarray(ds.x_train[i * b:(i + 1) * b], jnp.float32),
                jnp.asarray(ds.y_train[i * b:(i + 1) * b])) for i in range(args.batches)]
    init = learner32.energy.init_params(jax.random.PRNGKey(base.loop.seed))
    rules = [r for r in RULES if r not in SEED000_RULES]
    # Mid-training params: one float32 epoch of the first seed (train error ~20%, not ~0%).
    s1 = train(base.with_overrides(seed=seeds[0], epochs=1), out_dir=work / "float32-epoch1",
               data_dir=args.data_dir, quiet=True, plots=False)
    points = {"init": init, "epoch1_f32": s1["state"].learner.params, "trained_f32": final_params}
    print("gradient agreement (vs float32):", flush=True)
    grad_rows = gradient_agreement(points, batches, learner32.phases, rules, grad_policies)
    if old is not None:
        grad_rows = old["gradients"] + grad_rows

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": str(jax.devices()[0]), "jax": jax.__version__,
           "cpu_count": os.cpu_count(), "seconds": round(time.time() - t_start, 1),
           "note": "2-core CPU shared with other jobs (run with nice -n 10): timings are not "
                   "comparable; bfloat16 on CPU is emulated (converts), slower than float32"}
    setup = {"preset": PRESET, "sizes": [784, 500, 10], "activation": "hard_sigmoid",
             "free_steps": base.rule.free_steps, "nudged_steps": base.rule.nudged_steps,
             "step_size": base.rule.step_size, "beta": base.rule.beta, "rule": base.rule.rule,
             "batch_size": b, "epochs": base.loop.epochs, "seeds": seeds,
             "eval_tol": {q: base.rule.eval_tol if q == "float32"
                          else Precision.parse(q).resolution for q in sorted(mean)},
             "gradient_batches": args.batches, "seeded_skipped": sorted(SEED000_RULES)}
    if old is not None:
        env = {**old["env"], "appended": old["env"].get("appended", []) + [
            {**env, "policies": grad_policies, "trained": trained[1:], "float32_rerun": rerun32}]}
        setup = {**old["setup"], "eval_tol": {**old["setup"]["eval_tol"], **setup["eval_tol"]}}
    targets = {}
    for q in REDUCED:
        rows = [r for r in grad_rows if r.get("precision") == q]
        if not rows:
            continue
        for point in POINTS:
            at = [r for r in rows if r["params"] == point]
            targets[f"cosine_min_{q}_{point}"] = min(r["cosine_min"] for r in at
                                                     if r["cosine_min"] is not None)
            preset = next(r for r in at if r["rule"] == base.rule.rule)
            targets[f"cosine_min_{q}_{point}_preset_rule"] = preset["cosine_min"]
            targets[f"cosine_pooled_{q}_{point}_preset_rule"] = preset["cosine_pooled"]
        if q in mean:
            gap = 100 * (mean[q] - mean["float32"])
            targets[f"test_error_{q}_mean"] = mean[q]
            targets[f"test_error_gap_points_{q}"] = gap
            targets[f"test_error_met_{q}"] = abs(gap) <= 0.3
            targets[f"test_error_{q}_trained_eval_float32_mean"] = mean_eval32[q]
    targets.update(cosine_target=0.999, test_error_float32_mean=mean["float32"],
                   test_error_target_points=0.3)
    result = {"env": env, "setup": setup, "targets": targets, "runs": runs,
              "gradients": grad_rows}
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def markdown(r: dict) -> str:
    env, setup, t = r["env"], r["setup"], r["targets"]
    lines = [
        "# bfloat16 vs float32 relaxation on MNIST-10k",
        "",
        f"`python benchmarks/precision_mnist10k.py` ({env['date']}; {env['device']}; jax "
        f"{env['jax']}; {env['note']}).",
        "",
        f"Net: {setup['sizes']} Hopfield, {setup['activation']}, {setup['free_steps']} free / "
        f"{setup['nudged_steps']} nudged steps of eps {setup['step_size']}, beta {setup['beta']}, "
        f"batch {setup['batch_size']}; states in the compute dtype (`bfloat16`, `float16`) or "
        "in float32 with only the products in the compute dtype (`*-products`); params, "
        "gradients and optimizer in float32 (`ep_jax.precision`).",
        "",
    ]
    for a in env.get("appended", []):
        lines += [f"Appended with `--append` ({a['date']}; {a['device']}; jax {a['jax']}): "
                  f"gradients of {', '.join(a['policies'])}, training of "
                  f"{', '.join(a['trained']) or 'none'}; float32 seed "
                  f"{a['float32_rerun']['seed']} retrained for its params: test error "
                  f"{100 * a['float32_rerun']['test_error_rerun']:.2f}% (stored: "
                  f"{100 * a['float32_rerun']['test_error_stored']:.2f}%).", ""]
    lines += [
        "## Targets",
        "",
        "| target | precision | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for q in REDUCED:
        if f"cosine_min_{q}_init" not in t:
            continue
        for point, what in POINTS.items():
            c = t[f"cosine_min_{q}_{point}"]
            lines.append(f"| gradient cosine vs float32 >= 0.999, every rule and batch, {what} "
                         f"(minimum) | {q} | {c:.5f} | {'yes' if c >= 0.999 else 'no'} |")
            c = t[f"cosine_min_{q}_{point}_preset_rule"]
            c2 = t[f"cosine_pooled_{q}_{point}_preset_rule"]
            lines.append(f"| the same, the preset's rule `{setup['rule']}` only (minimum; "
                         f"pooled over the batches) | {q} | {c:.5f}; {c2:.5f} | "
                         f"{'yes' if c >= 0.999 else 'no'}; {'yes' if c2 >= 0.999 else 'no'} |")
        if f"test_error_{q}_mean" in t:
            gap = t[f"test_error_gap_points_{q}"]
            lines.append(
                f"| mnist10k test error within 0.3 points of float32 (mean of "
                f"{len(setup['seeds'])} seeds) | {q} | {100 * t[f'test_error_{q}_mean']:.2f}% vs "
                f"{100 * t['test_error_float32_mean']:.2f}% ({gap:+.2f} points) | "
                f"{'yes' if abs(gap) <= 0.3 else 'no'} |")
            e32 = t[f"test_error_{q}_trained_eval_float32_mean"]
            gap = 100 * (e32 - t["test_error_float32_mean"])
            lines.append(
                f"| the same params evaluated in float32 (tolerance {setup['eval_tol']['float32']}) "
                f"| {q} | {100 * e32:.2f}% ({gap:+.2f} points) | {'yes' if abs(gap) <= 0.3 else 'no'} |")
    lines += [
        "",
        f"## Training ({setup['epochs']} epochs, `{setup['rule']}`; evaluation tolerance: "
        + ", ".join(f"{v:.3g} in {k}" for k, v in setup["eval_tol"].items()) + ")",
        "",
        "| precision | seed | test error | same params, float32 evaluation | best test error | "
        "train error | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in r["runs"]:
        e32 = run.get("test_error_eval_float32")
        lines.append(f"| {run['precision']} | {run['seed']} | {100 * run['test_error']:.2f}% | "
                     f"{'-' if e32 is None else f'{100 * e32:.2f}%'} | "
                     f"{100 * run['best_test_error']:.2f}% | {100 * run['train_error']:.2f}% | "
                     f"{run['seconds']} |")
    lines += [
        "",
        f"## Gradient agreement with float32 ({setup['gradient_batches']} real batches of "
        f"{setup['batch_size']}; params at the Glorot init, after one float32 epoch and at the end "
        f"of the float32 run of seed {setup['seeds'][0]}; free phase from zeros; batches where both "
        "estimates are exactly zero are left out, a reduced estimate that alone is zero counts as "
        "cosine 0; pooled: the cosine of the batches' summed gradients)",
        "",
        "| rule | params | precision | cosine (min) | cosine (mean) | cosine (pooled) | "
        "rel. error (max) | rel. error (mean) | mean norm f32 / reduced | batches compared | "
        "reduced zero | both zero |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in r["gradients"]:
        if "skipped" in g:
            lines.append(f"| {g['rule']} | - | - | skipped: {g['skipped'][:90]} | | | | | | | | |")
            continue
        lines.append(f"| {g['rule']} | {g['params']} | {g['precision']} | {_f(g['cosine_min'], 6)} | "
                     f"{_f(g['cosine_mean'], 6)} | {g['cosine_pooled']:.6f} | "
                     f"{_f(g['rel_error_max'], 4)} | {_f(g['rel_error_mean'], 4)} | "
                     f"{g['norm_float32_mean']:.3g} / {g['norm_reduced_mean']:.3g} | "
                     f"{g['batches_compared']} | {g['zero_estimates']} | {g['both_zero']} |")
    lines += ["", f"Seed 000's schemes ({', '.join(setup['seeded_skipped'])}) sweep the float32 "
              "parameters themselves and are refused in reduced precision.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

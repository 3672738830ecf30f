"""Every registered learning rule on MNIST-10k with one architecture and one budget.

784-500-10, batch 20, 20 free / 4 nudged steps (eps 0.5), beta 0.5, persistent particles, the same
number of epochs for every rule, per-layer SGD at the ``mnist10k`` preset's rates (0.2, 0.1) times
a per-rule scale. Energies: ``hopfield`` with the hard sigmoid for every rule except ``pc`` and
``pc-nudge``, which run on ``conditional_gaussian`` (sigmoid) with every free phase starting from
the feed-forward pass (their free equilibrium; no particles).

The scale is selected per rule on a validation split of the 8,000 training images (train on the
first 7,000, measure on the last 1,000; never the test set), then the rule is trained on all 8,000
and tested on the 2,000 test images. For each rule the gradient of its first training step (the
training phases, float64, from the initial params and the first 20 training images) is compared
with the exact gradient of the mean cost at the free equilibrium (implicit differentiation,
relaxation to an update norm of 1e-12), as ``ep-jax gradcheck`` does.

``seed000-*`` rules train with the seed's own sweeps (they never relax the energy); their test
error is reported both as ``ep-jax train`` measures it (a relaxation of the Hopfield energy from
zeros) and with the seed's own free sweep (``chl_neg``, with its per-batch ``normalize``, batches of
20, from zeros); the scale is selected on the latter.

Run (1 core): ``taskset -c 0 python benchmarks/rule_comparison_mnist10k.py``; ``--quick`` is a smoke
run (a 32-unit net on 400 images, one epoch, no selection).
Results: ``benchmarks/results/rule_comparison_mnist10k.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ep_jax.app.config import get_preset  # noqa: E402
from ep_jax.app.data import load_dataset  # noqa: E402
from ep_jax.app.train import train  # noqa: E402
from ep_jax.rules import RULES  # noqa: E402

PC_RULES = ("pc", "pc-nudge")


def registered_rules() -> tuple[list[str], list[str]]:
    """Names in ``RULES``; seed 000's schemes are registered in this process if not there yet."""
    added = []
    try:
        from ep_jax.rules.seed000 import SEED000_RULES
    except ImportError:  # pragma: no cover
        SEED000_RULES = {}
    for name, fn in SEED000_RULES.items():
        if name not in RULES:
            RULES[name] = fn
            added.append(name)
    return list(RULES), added


def rule_config(base, rule: str, epochs: int, hidden, scale: float, seed: int = 0):
    kw = dict(rule=rule, epochs=epochs, hidden=tuple(hidden), seed=seed, eval_every=epochs,
              checkpoint_every=0, log_every=1,
              alphas=tuple(scale * a for a in base.optimizer.alphas), preset="rule-comparison")
    if rule in PC_RULES:
        kw.update(energy="conditional_gaussian", activation="sigmoid", state_init="feedforward",
                  persistent=False)
    else:
        kw.update(energy="hopfield", activation="hard_sigmoid", state_init="zeros", persistent=True)
    return base.with_overrides(**kw)


def seed_sweep_error(cfg, params, x, y, batch: int, n_out: int = 10) -> float:
    """Error with seed 000's own free dynamics: ``chl_neg`` sweeps from zeros, per batch of ``batch``."""
    from ep_jax.energies import make_energy
    from ep_jax.rules.seed000 import negative_sweep

    m = cfg.model
    energy = make_energy(m.energy, (x.shape[1], *m.hidden, n_out), activation=m.activation)
    n = (x.shape[0] // batch) * batch
    xb = jnp.asarray(x[:n]).reshape(-1, batch, x.shape[1])

    @jax.jit
    def predict(xs):
        def one(xi):
            dummy = jnp.zeros((batch, energy.sizes[-1]), xi.dtype)
            state = jax.lax.fori_loop(
                0, cfg.rule.free_steps,
                lambda _, s: tuple(negative_sweep(energy, params, xi, dummy, s, 0.0, "chl")),
                energy.zeros_state(xi))
            return jnp.argmax(state[-1], -1)

        return jax.lax.map(one, xs)

    pred = np.asarray(predict(xb)).reshape(-1)
    return float(np.mean(pred != np.asarray(y[:n])))


def run(cfg, data, measure_seed: bool, metrics_dir=None) -> dict:
    """Trains ``cfg``; returns errors, steps, wall times (or ``diverged``)."""
    t0 = time.perf_counter()
    try:
        s = train(cfg, data=data, quiet=True, plots=False, out_dir=metrics_dir)
    except FloatingPointError as err:
        return {"diverged": str(err), "wall_s": time.perf_counter() - t0}
    except ValueError as err:  # the rule refuses the configuration (raised when the step is traced)
        return {"na": str(err).split("\n")[0], "wall_s": time.perf_counter() - t0}
    out = {"test_error": s["test_error"], "train_error": s["train_error"], "steps": s["steps"],
           "train_wall_s": s["train_wall_s"], "wall_s": time.perf_counter() - t0,
           "steps_per_s": s["steps"] / s["train_wall_s"]}
    if metrics_dir is not None:
        rows = [json.loads(r) for r in (Path(metrics_dir) / "metrics.jsonl").read_text().splitlines() if r]
        later = [r for r in rows if r["epoch"] > 1]
        if later:
            steps_per_epoch = s["steps"] / len(rows)
            out["steady_steps_per_s"] = steps_per_epoch * len(later) / sum(r["epoch_wall_s"] for r in later)
    if not math.isfinite(out["test_error"]):
        out["diverged"] = "non-finite test error"
    if measure_seed:
        params = jax.device_get(s["state"].learner.params)
        out["seed_sweep_error"] = seed_sweep_error(cfg, params, data.x_test, data.y_test,
                                                   cfg.data.batch_size, data.num_classes)
    return out


_EXACT: dict = {}


def exact_gradient(cfg, data, n_batch: int):
    """(params, x, y, implicit gradient, info) in float64 at the initial params (cached per energy)."""
    from ep_jax.costs import get_cost
    from ep_jax.energies import make_energy
    from ep_jax.exact import implicit_gradient
    from ep_jax.solvers import GradientDescent, check_stats, relax

    jax.config.update("jax_enable_x64", True)
    m, r, seed = cfg.model, cfg.rule, cfg.loop.seed
    memo = (m.energy, m.activation, m.hidden, r.state_init, r.cost, seed, r.step_size, n_batch)
    if memo in _EXACT:
        return _EXACT[memo]
    sizes = (data.x_train.shape[1], *m.hidden, data.num_classes)
    energy = make_energy(m.energy, sizes, activation=m.activation)
    init_key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]  # as ep_jax.app.train.Run
    params = jax.tree.map(lambda t: jnp.asarray(t, jnp.float64), energy.init_params(init_key, jnp.float32))
    x = jnp.asarray(data.x_train[:n_batch], jnp.float64)
    y = jnp.asarray(data.y_train[:n_batch], jnp.int32)
    hard = m.activation == "hard_sigmoid"
    cost = get_cost(r.cost)
    tight = GradientDescent(r.step_size, 20000, tol=1e-12, project="clip01" if hard else None)
    s_star, stats = jax.jit(lambda p: relax(energy, p, x, energy.init_state(p, x, r.state_init),
                                            solver=tight, cost=cost))(params)
    check_stats(stats, require_converged=True, where="free phase of the exact gradient")
    g_imp, info = jax.jit(lambda p, s: implicit_gradient(
        energy, p, x, y, s, cost=cost, bounds=(0.0, 1.0) if hard else None))(params, s_star)
    info = {"exact_free_steps": int(stats.steps), "exact_free_residual": float(stats.residual),
            "stationarity": float(info.stationarity), "active_fraction": float(info.active_fraction),
            "hessian_min_eigenvalue": float(info.min_eigenvalue)}
    _EXACT[memo] = (energy, params, x, y, g_imp, info)
    return _EXACT[memo]


def gradient_check(cfg, data, n_batch: int = 20) -> dict:
    """The rule's first training step vs the implicit gradient, float64, initial params."""
    from ep_jax.costs import get_cost
    from ep_jax.exact import compare
    from ep_jax.rules import Phases, get_rule
    from ep_jax.solvers import GradientDescent

    energy, params, x, y, g_imp, info = exact_gradient(cfg, data, n_batch)
    r = cfg.rule
    project = "clip01" if cfg.model.activation == "hard_sigmoid" else None
    # the training phases, exactly as ep_jax.app.build.build_learner makes them
    phases = Phases(r.beta, GradientDescent(r.step_size, r.free_steps, project=project),
                    GradientDescent(r.step_size, r.nudged_steps, project=project), get_cost(r.cost))
    state0 = "zeros" if r.persistent else r.state_init  # the particles start at zeros
    step_key = jax.random.split(jax.random.PRNGKey(cfg.loop.seed), 3)[1]
    key = jax.random.fold_in(step_key, 0)  # the key of training step 0
    grads, res = jax.jit(lambda p: get_rule(r.rule)(energy, p, x, y, state0, phases=phases, key=key))(params)
    c = compare(grads, g_imp)
    return {"cosine": c["cosine"], "rel_error": c["rel_error"], "norm_rule": c["norm_estimate"],
            "norm_exact": c["norm_reference"], "batch": int(x.shape[0]), "dtype": "float64", **info,
            "rule_free_residual": float(res.free_stats.residual), "beta_used": float(res.beta)}


def fmt_pct(e) -> str:
    return f"{100 * e:.2f}"


def to_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Every rule on MNIST-10k: one architecture, one budget",
        "",
        f"{'-'.join(map(str, m['sizes']))}, batch {m['batch_size']}, {m['free_steps']} free / {m['nudged_steps']} "
        f"nudged steps (gradient descent, eps {m['step_size']}), beta {m['beta']}, {m['epochs']} epochs for every rule, "
        f"seed {m['seed']}, float32, {m['n_train']} training / {m['n_test']} test images. Rates = scale x "
        f"({', '.join(f'{a:g}' for a in m['preset_alphas'])}) (the `mnist10k` preset), the scale picked from "
        f"{{{', '.join(f'{s:g}' for s in m['scales'])}}} on validation ({m['split']}). "
        "`hopfield` (hard sigmoid, persistent particles) for every rule except `pc`/`pc-nudge` "
        "(`conditional_gaussian`, sigmoid, free phase = the feed-forward pass).",
        "",
        "| rule | energy | test error % | steps/s | cosine vs exact | rel. error vs exact | lr scale | validation error % per scale |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rule, e in res["rules"].items():
        if "na" in e:
            reason = e["na"].split(";")[0].split(". ")[0]
            lines.append(f"| `{rule}` | {e['energy']} | n/a ({reason}) | n/a | n/a | n/a | n/a | |")
            continue
        f = e["final"]
        if "diverged" in f:
            err = "diverged"
        else:
            err = fmt_pct(f["test_error"])
            if "seed_sweep_error" in f:
                err = f"{fmt_pct(f['seed_sweep_error'])} (seed's sweeps); {fmt_pct(f['test_error'])} (energy relaxation)"
        sps = f"{f['steps_per_s']:.0f}" if "steps_per_s" in f else "-"
        if "steady_steps_per_s" in f:
            sps += f" ({f['steady_steps_per_s']:.0f})"
        g = e.get("gradcheck", {})
        cos = f"{g['cosine']:.4f}" if "cosine" in g else g.get("error", "-")
        rel = f"{g['rel_error']:.3g}" if "rel_error" in g else "-"
        val = ", ".join(
            f"{v['scale']:g}: " + ("div." if "diverged" in v else fmt_pct(v["val_error"])) for v in e["validation"])
        lines.append(f"| `{rule}` | {e['energy']} | {err} | {sps} | {cos} | {rel} | {e['scale']:g} | {val} |")
    lines += [
        "",
        f"* **test error**: the {m['n_test']} test images, argmax of the output after a free relaxation from zeros to an update "
        f"norm of {m['eval_tol']:g} (at most {m['eval_max_steps']} steps), as `ep-jax train` reports it "
        "(`pc`/`pc-nudge`: from the feed-forward pass). `seed000-*` rules never minimise the energy, so their first "
        "number uses the seed's own free sweep (`chl_neg`, batch-wise `normalize` over batches of 20, "
        f"{m['free_steps']} sweeps from zeros) and the second the Hopfield relaxation; their scale is selected on the "
        "first.",
        "* **steps/s**: training steps (batches of 20) per second, `summary['steps'] / summary['train_wall_s']`, which "
        "includes the compilation in the first epoch and the final test evaluation; in parentheses the same over "
        f"epochs 2..{m['epochs']} only. {m['cores']}.",
        "* **cosine / rel. error vs exact**: the rule's gradient at its first training step (initial params of seed "
        f"{m['seed']}, the first {m['gradcheck_batch']} training images, the training phases: {m['free_steps']}/{m['nudged_steps']} steps, "
        "beta, the first step's random sign, starting from zeros = the initial particles) in float64, against the "
        "exact gradient of the mean cost at the free equilibrium (relaxed to an update norm of 1e-12; implicit "
        "differentiation on the units strictly inside [0, 1] for the hard sigmoid). rel. error = ||g - g*|| / ||g*||; "
        "both norms are in the JSON (a rule without EP's 1/beta, e.g. `chl`, differs by a scale the lr scale absorbs).",
        "* **lr scale**: the validation error per scale is in the last column (`div.`: training diverged).",
        "",
    ]
    hop = [e["gradcheck"] for r, e in res["rules"].items()
           if "cosine" in e.get("gradcheck", {}) and r not in PC_RULES and not r.startswith("seed000-")]
    if hop:
        lines += [
            f"The exact free equilibrium of the initial Hopfield net takes {hop[0]['exact_free_steps']} gradient "
            f"steps from zeros to reach an update norm of 1e-12; training's free phase takes {m['free_steps']} "
            f"(its last update norm: {hop[0]['rule_free_residual']:.3g}), so at the first step every Hopfield rule "
            "contrasts states far from equilibrium: the cosines measure the training phases, not the estimators' "
            "bias at equilibrium (`ep-jax gradcheck` does that). Later steps start from the persistent particles, "
            "closer to equilibrium.",
            "",
        ]
    pcs = {r: e["scale"] for r, e in res["rules"].items() if r in PC_RULES and "scale" in e}
    if pcs:
        lines += [
            "`pc`/`pc-nudge`: with one activation name, `conditional_gaussian` also applies phi_0 = sigmoid to the "
            "clamped pixels (squashed into [0.5, 0.73]) and its output units are linear, so only small rates are "
            "stable (selected scales: " + ", ".join(f"`{r}` {v:g}" for r, v in pcs.items())
            + f"; the grid's smallest is {min(m['scales']):g}); compare their test errors after {m['epochs']} "
            "epochs with their gradient cosines.",
            "",
        ]
    lines += [
        f"Runtime: {m['wall_s']:.0f} s ({m['train_s']:.0f} s training, {m['gradcheck_s']:.0f} s gradient checks).",
    ]
    if res.get("registered_in_process"):
        lines += ["", "Registered in this process from `ep_jax.rules.seed000.SEED000_RULES`: "
                  + ", ".join(f"`{r}`" for r in res["registered_in_process"]) + "."]
    return "\n".join(lines) + "\n"


def jsonable(x):
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--scales", default="0.0625,0.25,0.5,1,2,4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", default=None, help="comma-separated subset (default: every registered rule)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 784-32-10 on 400/200 images, 1 epoch, scale 1 only, gradient check on 2 images")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only re-write the markdown (next to --out) from a JSON this script wrote")
    args = p.parse_args(argv)
    if args.render:
        md = to_markdown(json.loads(Path(args.render).read_text()))
        (Path(args.out) / "rule_comparison_mnist10k.md").write_text(md)
        print(md)
        return 0
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    names, added = registered_rules()
    if args.rules:
        names = [r for r in names if r in args.rules.split(",")]
    base = get_preset("mnist10k")
    d = load_dataset("mnist10k")
    hidden = base.model.hidden
    epochs = args.epochs
    scales = [float(s) for s in args.scales.split(",")]
    n_check = 20
    if args.quick:
        d = d._replace(x_train=d.x_train[:400], y_train=d.y_train[:400], x_test=d.x_test[:200], y_test=d.y_test[:200])
        hidden, epochs, scales, n_check = (32,), 1, [1.0], 2
    n_val = len(d.y_train) // 8
    val = d._replace(x_train=d.x_train[:-n_val], y_train=d.y_train[:-n_val],
                     x_test=d.x_train[-n_val:], y_test=d.y_train[-n_val:])
    n_in, n_out = d.x_train.shape[1], d.num_classes

    results = {}
    for rule in names:
        cfg1 = rule_config(base, rule, epochs, hidden, 1.0, args.seed)
        e: dict = {"energy": f"{cfg1.model.energy} ({cfg1.model.activation})",
                   "config": json.loads(cfg1.to_json())}
        seedrule = rule.startswith("seed000-")
        e["validation"] = []
        if len(scales) > 1:
            for sc in scales:
                r = run(rule_config(base, rule, epochs, hidden, sc, args.seed), val, seedrule)
                if "na" in r:
                    break
                r["scale"] = sc
                if "diverged" not in r:
                    r["val_error"] = r["seed_sweep_error"] if seedrule else r["test_error"]
                e["validation"].append(r)
                log(f"{rule:20s} scale {sc:g}: validation error "
                    + (r["diverged"][:60] if "diverged" in r else f"{100 * r['val_error']:.2f}%")
                    + f" ({r['wall_s']:.1f} s)")
            ok = [v for v in e["validation"] if "diverged" not in v and "na" not in v]
            # ties: the scale closest to 1 (the preset's rates)
            best = min(ok, key=lambda v: (v["val_error"], abs(math.log(v["scale"])))) if ok else None
            e["scale"] = best["scale"] if best else min(scales)
        else:
            e["scale"] = scales[0]
        cfg = rule_config(base, rule, epochs, hidden, e["scale"], args.seed)
        e["config"] = json.loads(cfg.to_json())
        if e["validation"] and "na" in e["validation"][-1]:
            f = e["validation"].pop()
        else:
            with tempfile.TemporaryDirectory() as tmp:
                f = run(cfg, d, seedrule, metrics_dir=tmp)
        if "na" in f:
            e["na"] = f["na"]
            log(f"{rule:20s} n/a: {f['na'][:100]}")
            results[rule] = e
            continue
        e["final"] = f
        log(f"{rule:20s} scale {e['scale']:g}: test error "
            + (f["diverged"][:60] if "diverged" in f else f"{100 * f['test_error']:.2f}%"
               + (f" (seed's sweeps {100 * f['seed_sweep_error']:.2f}%)" if seedrule else "")
               + f", {f['steps_per_s']:.0f} steps/s") + f" ({f['wall_s']:.1f} s)")
        results[rule] = e
    t_train = time.perf_counter() - t_start

    # Gradient checks last: they switch on float64 for the rest of the process.
    t0 = time.perf_counter()
    for rule, e in results.items():
        if "na" in e:
            continue
        cfg = rule_config(base, rule, epochs, hidden, e["scale"], args.seed)
        try:
            e["gradcheck"] = gradient_check(cfg, d, n_check)
        except Exception as err:  # report, never hide: the table shows the error
            e["gradcheck"] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
        g = e["gradcheck"]
        log(f"{rule:20s} gradient check: " + (f"cosine {g['cosine']:.4f}, rel. error {g['rel_error']:.3g}"
                                              if "cosine" in g else g["error"]))
    t_check = time.perf_counter() - t0

    br = base.rule
    meta = {
        "sizes": [n_in, *hidden, n_out], "batch_size": base.data.batch_size, "free_steps": br.free_steps,
        "nudged_steps": br.nudged_steps, "step_size": br.step_size, "beta": br.beta, "epochs": epochs,
        "seed": args.seed, "gradcheck_batch": n_check, "preset_alphas": list(base.optimizer.alphas),
        "scales": scales, "n_train": len(d.y_train),
        "n_test": len(d.y_test), "eval_tol": br.eval_tol, "eval_max_steps": br.eval_max_steps,
        "split": (f"train on the first {len(val.y_train)} of the {len(d.y_train)} training images, validate on the "
                  f"last {n_val}") if len(scales) > 1 else "none (a single scale)",
        "quick": args.quick, "jax": jax.__version__, "device": jax.devices()[0].platform,
        "cores": f"{len(os.sched_getaffinity(0))} CPU core(s) available to the process",
        "train_s": t_train, "gradcheck_s": t_check, "wall_s": time.perf_counter() - t_start,
    }
    res = {"meta": meta, "registered_in_process": added, "rules": results}
    md = to_markdown(res)
    (out / "rule_comparison_mnist10k.json").write_text(json.dumps(jsonable(res), indent=1) + "\n")
    (out / "rule_comparison_mnist10k.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

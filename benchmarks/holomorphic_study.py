"""Holomorphic EP against real EP: exactness, noise robustness, cost; vector-field EP's alignment.

Four parts, one JSON + one markdown + PNG figures under ``benchmarks/results/holomorphic_*``:

1. ``exactness``: the gradcheck net (restricted_hopfield 6-5-4-3, sigmoid, batch 5, seed 0,
   float64, relaxations to an update norm of 1e-12): relative error of ep-holomorphic against
   the implicit gradient for N in NS and |beta| in RADII, for squared error and cross-entropy,
   with real one-sided and symmetric EP at the same beta; the slope of log10(error) against N
   (fitted over the errors above the float64 floor of 1e-10) per radius. Figure
   ``holomorphic_error_vs_points.png``.
2. ``noise``: MNIST-10k (8,000 train / 2,000 test), restricted_hopfield 784-256-10 (identity
   input, sigmoid hidden, identity output read as logits),
   cross-entropy, batch 50, SGD, no particles (every free phase from zeros): Gaussian noise of
   std sigma added to every state unit after every relaxation step of training (free and nudged
   phases; complex states get it on the real and on the imaginary part), evaluation noise-free.
   Real symmetric EP at beta 0.1 and 0.5 against ep-holomorphic at |beta| = 0.5, N = 8, for each
   sigma. The noise is a benchmark-local solver (``NoisyGradientDescent``), seeded from the batch
   and beta: the same seed gives the same numbers. Figure ``holomorphic_noise.png``.
3. ``timing``: one jitted training step (784-256-10, batch 50, float32) of ep-symmetric against
   ep-holomorphic with N = 2, 4, 8 (median of repeated runs, after compilation), as ratios.
4. ``vector_field``: asymmetric_hopfield 784-256-10 (independent random feedback weights), both
   updates (shared, separate), symmetric EP at beta 0.5: test error and the angle between W_1
   and B_1^T after every epoch.

The CPU of the machine this ran on was shared with other jobs (run with ``nice -n 10``): the
timings are ratios measured in the same process, not absolute speeds.

Run: ``nice -n 10 python benchmarks/holomorphic_study.py`` (``--quick``: a smoke run on 400
images, results not written unless ``--out``). Refuses to overwrite committed results without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ep_jax.app.data import load_dataset  # noqa: E402
from ep_jax.costs import cross_entropy, get_cost  # noqa: E402
from ep_jax.energies import asymmetric_hopfield, restricted_hopfield, weight_alignment  # noqa: E402
from ep_jax.exact import compare, implicit_gradient  # noqa: E402
from ep_jax.gradcheck import random_problem  # noqa: E402
from ep_jax.learner import EPLearner  # noqa: E402
from ep_jax.rules import Phases, ep_gradient, holomorphic_gradient  # noqa: E402
from ep_jax.solvers import GradientDescent, relax  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NS = (2, 3, 4, 6, 8, 10, 12, 16)
RADII = (0.125, 0.25, 0.5, 1.0)
SIGMAS = (0.0, 0.1, 0.3)
# Pixels enter as they are, sigmoid hidden units, linear output units read as logits by the
# cross-entropy (all three extend holomorphically).
ACTIVATIONS = ("identity", "sigmoid", "identity")
FLOOR = 1e-10  # float64 relaxations to 1e-12: errors below this are rounding, not truncation


# ---- 1. exactness ------------------------------------------------------------------------

def exactness() -> dict:
    with jax.enable_x64(True):
        energy = restricted_hopfield((6, 5, 4, 3))
        params, x, y = random_problem(energy, jax.random.split(jax.random.PRNGKey(0))[0],
                                      bias_range=(-0.2, 0.2))
        tight = GradientDescent(0.5, 20000, tol=1e-12)
        out = {"net": "restricted_hopfield 6-5-4-3 sigmoid, batch 5, seed 0, float64, tol 1e-12",
               "points": list(NS), "radii": list(RADII), "costs": {}}
        for cname in ("squared_error", "cross_entropy"):
            cost = get_cost(cname)
            s, _ = relax(energy, params, x, energy.zeros_state(x), solver=tight, cost=cost)
            g, _ = implicit_gradient(energy, params, x, y, s, cost=cost)
            rows = {"holomorphic": {}, "converged": {}, "ep_symmetric": [], "ep_one_sided": [],
                    "slope_log10_per_point": []}
            for r in RADII:
                ph = Phases(beta=r, free=tight, nudged=tight, cost=cost)
                for variant, key in (("symmetric", "ep_symmetric"), ("one-sided", "ep_one_sided")):
                    est, _ = ep_gradient(energy, params, x, y, phases=ph, variant=variant)
                    rows[key].append(compare(est, g)["rel_error"])
            for n in NS:
                f = jax.jit(lambda b, n=n, cost=cost: holomorphic_gradient(
                    energy, params, x, y, phases=Phases(free=tight, nudged=tight, cost=cost),
                    points=n, beta=b))
                errs, conv = [], []
                for r in RADII:
                    est, res = f(r)
                    errs.append(compare(est, g)["rel_error"])
                    conv.append(bool(res.nudged_stats.converged))
                rows["holomorphic"][str(n)] = errs
                rows["converged"][str(n)] = conv
                print(f"  {cname} N={n}: " + " ".join(f"{e:.1e}" for e in errs), flush=True)
            for i, _ in enumerate(RADII):
                pts = [(n, rows["holomorphic"][str(n)][i]) for n in NS
                       if rows["holomorphic"][str(n)][i] > FLOOR and rows["converged"][str(n)][i]]
                slope = (float(np.polyfit([p[0] for p in pts], np.log10([p[1] for p in pts]), 1)[0])
                         if len(pts) >= 3 else None)
                rows["slope_log10_per_point"].append(slope)
            out["costs"][cname] = rows
        return out


# ---- 2. noise robustness -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NoisyGradientDescent(GradientDescent):
    """Gradient descent with N(0, sigma^2) added to every state unit after every step.

    The PRNG key lives in the solver state, seeded from (seed, the batch's input bits, beta, the
    phase), so a run is reproducible and the points of holomorphic EP get independent noise.
    (Its ``unbounded`` flag compares noisy update norms; this study does not read it.)
    """

    sigma: float = 0.0
    seed: int = 0

    def init(self, problem, state):
        bits = jax.lax.bitcast_convert_type(problem.x.astype(jnp.float32), jnp.uint32)
        weights = jnp.arange(1, bits.shape[-1] + 1, dtype=jnp.uint32)
        h = jnp.sum(bits * weights[None, :] * (1 + jnp.arange(bits.shape[0], dtype=jnp.uint32))[:, None])
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), h)
        beta = jnp.asarray(problem.beta)
        for part in (jnp.real(beta), jnp.imag(beta)):
            key = jax.random.fold_in(key, jnp.round(part * 1e6).astype(jnp.int32))
        return jax.random.fold_in(key, int(problem.target is not None))

    def step(self, problem, state, key, *, in_box: bool = False):
        new, _ = super().step(problem, state, (), in_box=in_box)
        leaves, treedef = jax.tree.flatten(new)
        key, *keys = jax.random.split(key, 2 * len(leaves) + 1)
        noisy = []
        for i, v in enumerate(leaves):
            real = jnp.real(v).dtype
            n = self.sigma * jax.random.normal(keys[2 * i], v.shape, real)
            if jnp.iscomplexobj(v):
                n = n + 1j * self.sigma * jax.random.normal(keys[2 * i + 1], v.shape, real)
            noisy.append(v + n.astype(v.dtype))
        return jax.tree.unflatten(treedef, noisy), key


def make_learner(energy, rule, beta, sigma, lr, free_steps=30, nudged_steps=15, seed=0):
    free = NoisyGradientDescent(0.5, free_steps, sigma=sigma, seed=seed)
    nudged = NoisyGradientDescent(0.5, nudged_steps, sigma=sigma, seed=seed + 1)
    phases = Phases(beta=beta, free=free, nudged=nudged, cost=cross_entropy)
    return EPLearner(energy, rule, phases, optax.sgd(lr),
                     eval_solver=GradientDescent(0.5, 60), persistent=False)


def train_run(learner, data, epochs, batch, seed=0) -> dict:
    """Plain epochs of jitted steps (one lax.scan per epoch); test error after every epoch."""
    x_tr, y_tr, x_te, y_te = data
    n = (x_tr.shape[0] // batch) * batch
    state = learner.init(jax.random.PRNGKey(seed), x_tr.shape[0])

    @jax.jit
    def epoch(state, key):
        perm = jax.random.permutation(key, x_tr.shape[0])[:n].reshape(-1, batch)

        def body(st, idx_k):
            idx, k = idx_k
            st, m = learner.train_step(st, x_tr[idx], y_tr[idx], idx, k)
            return st, (m["error"], m["cost"])

        keys = jax.random.split(jax.random.fold_in(key, 1), perm.shape[0])
        state, (err, cost) = jax.lax.scan(body, state, (perm, keys))
        return state, jnp.mean(err), jnp.mean(cost)

    evaluate = jax.jit(learner.evaluate)
    curve = []
    t0 = time.perf_counter()
    for e in range(epochs):
        state, tr_err, tr_cost = epoch(state, jax.random.fold_in(jax.random.PRNGKey(seed), e))
        ev = evaluate(state, x_te, y_te)
        row = {"epoch": e + 1, "train_error": float(tr_err), "train_cost": float(tr_cost),
               "test_error": float(ev["error"])}
        if "feedback" in learner.params(state).get("layer_1", {}):
            row["alignment_deg"] = weight_alignment(learner.params(state))
        curve.append(row)
    params = learner.params(state)
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))
    return {"curve": curve, "final_test_error": curve[-1]["test_error"], "finite_params": finite,
            "seconds": time.perf_counter() - t0}


def load(quick: bool):
    """MNIST-10k as device arrays (first 8,000 train / last 2,000 test); 400/200 with ``quick``."""
    ds = load_dataset("mnist10k")
    arrays = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    if quick:
        arrays = (ds.x_train[:400], ds.y_train[:400], ds.x_test[:200], ds.y_test[:200])
    return tuple(jnp.asarray(a) for a in arrays)


RULES = {  # name -> (rule, beta)
    "ep-symmetric beta=0.1": ("ep-symmetric", 0.1),
    "ep-symmetric beta=0.5": ("ep-symmetric", 0.5),
    "ep-holomorphic |beta|=0.5 N=8": (functools.partial(holomorphic_gradient, points=8), 0.5),
}


def noise(data, sizes, epochs, lr, batch, sigmas=SIGMAS) -> dict:
    energy = restricted_hopfield(sizes, activation=ACTIVATIONS)
    out = {"sizes": list(sizes), "epochs": epochs, "batch": batch, "lr": lr, "sigmas": list(sigmas),
           "runs": {}}
    for sigma in sigmas:
        for name, (rule, beta) in RULES.items():
            res = train_run(make_learner(energy, rule, beta, sigma, lr), data, epochs, batch)
            out["runs"][f"{name} sigma={sigma}"] = {"rule": name, "sigma": sigma, **res}
            print(f"  sigma={sigma} {name}: test error {res['final_test_error']:.4f} "
                  f"({res['seconds']:.0f} s)", flush=True)
    return out


def vector_field(data, sizes, epochs, lr, batch) -> dict:
    out = {"sizes": list(sizes), "epochs": epochs, "rule": "ep-symmetric beta=0.5", "runs": {}}
    for update in ("shared", "separate"):
        energy = asymmetric_hopfield(sizes, activation=ACTIVATIONS, update=update)
        learner = make_learner(energy, "ep-symmetric", 0.5, 0.0, lr)
        init = weight_alignment(energy.init_params(jax.random.PRNGKey(0)))
        res = train_run(learner, data, epochs, batch)
        out["runs"][update] = {"initial_alignment_deg": init, **res}
        print(f"  vector field {update}: test error {res['final_test_error']:.4f}, angle "
              f"{init['layer_1']:.1f} -> {res['curve'][-1]['alignment_deg']['layer_1']:.1f} deg",
              flush=True)
    return out


# ---- 3. timing ---------------------------------------------------------------------------

def timing(data, sizes, batch, repeats=30) -> dict:
    energy = restricted_hopfield(sizes, activation=ACTIVATIONS)
    x, y = data[0][:batch], data[1][:batch]
    cases = {"ep-symmetric": ("ep-symmetric", 0.5)}
    for n in (2, 4, 8):
        cases[f"ep-holomorphic N={n}"] = (functools.partial(holomorphic_gradient, points=n), 0.5)
    out = {"sizes": list(sizes), "batch": batch, "dtype": "float32", "free_steps": 30,
           "nudged_steps": 15, "repeats": repeats, "median_ms": {}}
    for name, (rule, beta) in cases.items():
        learner = make_learner(energy, rule, beta, 0.0, 0.1)
        state = learner.init(jax.random.PRNGKey(0), batch)
        step = jax.jit(learner.train_step)
        idx = jnp.arange(batch)
        jax.block_until_ready(step(state, x, y, idx, jax.random.PRNGKey(0)))
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(step(state, x, y, idx, jax.random.PRNGKey(i)))
            times.append(time.perf_counter() - t0)
        out["median_ms"][name] = 1e3 * float(np.median(times))
    base = out["median_ms"]["ep-symmetric"]
    out["ratio_to_ep_symmetric"] = {k: v / base for k, v in out["median_ms"].items()}
    return out


# ---- report --------------------------------------------------------------------------------

def plots(res: dict, out: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    ex = res.get("exactness", {"costs": {}})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (cname, rows) in zip(axes, ex["costs"].items()):
        for i, r in enumerate(ex["radii"]):
            errs = [rows["holomorphic"][str(n)][i] for n in ex["points"]]
            line, = ax.semilogy(ex["points"], errs, "o-", label=f"holomorphic r = {r}")
            ax.axhline(rows["ep_symmetric"][i], color=line.get_color(), ls=":", lw=1)
        ax.set_title(f"{cname}: error vs N\n(dotted: real symmetric EP at beta = r)")
        ax.set_xlabel("points N on the circle")
        ax.set_ylabel("relative error vs implicit gradient")
        ax.legend(fontsize=7)
    fig.tight_layout()
    if ex["costs"]:
        files.append(f"{prefix}_error_vs_points.png")
        fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)

    nz = res.get("noise")
    if nz:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in RULES:
            finals = [nz["runs"][f"{name} sigma={s}"]["final_test_error"] for s in nz["sigmas"]]
            axes[0].plot(nz["sigmas"], [100 * f for f in finals], "o-", label=name.replace("|beta|", "r"))
        axes[0].set_xlabel("state noise sigma (per unit, per step)")
        axes[0].set_ylabel(f"test error after {nz['epochs']} epochs (%)")
        axes[0].set_title("MNIST-10k: final test error vs noise")
        axes[0].legend(fontsize=7)
        s = max(nz["sigmas"])
        for name in RULES:
            curve = nz["runs"][f"{name} sigma={s}"]["curve"]
            axes[1].plot([c["epoch"] for c in curve], [100 * c["test_error"] for c in curve], "o-", label=name.replace("|beta|", "r"))
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("test error (%)")
        axes[1].set_title(f"curves at sigma = {s}")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        files.append(f"{prefix}_noise.png")
        fig.savefig(out / files[-1], dpi=110)
        plt.close(fig)
    return files


def markdown(res: dict) -> str:
    ex = res.get("exactness", {"net": "(not run)", "costs": {}})
    lines = ["# Holomorphic EP and vector-field EP (`benchmarks/holomorphic_study.py`)", "",
             f"Device: {res['device']}; {res['note']}", "", "## 1. Exactness", "", ex["net"], ""]
    for cname, rows in ex["costs"].items():
        lines += [f"### {cname}", "", "| N | " + " | ".join(f"r = {r}" for r in ex["radii"]) + " |",
                  "|---|" + "---|" * len(ex["radii"])]
        for n in ex["points"]:
            cells = [f"{e:.1e}" + ("" if c else " (not converged)")
                     for e, c in zip(rows["holomorphic"][str(n)], rows["converged"][str(n)])]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("| real EP symmetric | " + " | ".join(f"{e:.1e}" for e in rows["ep_symmetric"]) + " |")
        lines.append("| real EP one-sided | " + " | ".join(f"{e:.1e}" for e in rows["ep_one_sided"]) + " |")
        lines.append("| slope log10/point | " + " | ".join(
            "n/a" if s is None else f"{s:.2f}" for s in rows["slope_log10_per_point"]) + " |")
        lines.append("")
    nz = res.get("noise")
    if nz:
        lines += ["## 2. Noise robustness (MNIST-10k)", "",
                  f"restricted_hopfield {'-'.join(map(str, nz['sizes']))} (activations {ACTIVATIONS}: "
                  f"linear outputs read as logits), cross-entropy, batch "
                  f"{nz['batch']}, SGD lr {nz['lr']}, {nz['epochs']} epochs, 30 free / 15 nudged steps "
                  "(eps 0.5), no particles; noise N(0, sigma^2) on every unit after every step of "
                  "the training relaxations (real and imaginary parts), evaluation noise-free. "
                  "r = |beta|.", "",
                  "| rule | " + " | ".join(f"sigma={s}" for s in nz["sigmas"]) + " |",
                  "|---|" + "---|" * len(nz["sigmas"])]
        for name in RULES:
            cells = []
            for s in nz["sigmas"]:
                run = nz["runs"][f"{name} sigma={s}"]
                cells.append(f"{100 * run['final_test_error']:.2f}%" + ("" if run["finite_params"] else " (NaN)"))
            lines.append(f"| {name.replace('|beta|', 'r')} | " + " | ".join(cells) + " |")
        lines += ["", "Test error per epoch:", ""]
        for key, run in nz["runs"].items():
            lines.append(f"- {key.replace('|beta|', 'r')}: " + ", ".join(f"{100 * c['test_error']:.1f}" for c in run["curve"]))
        lines.append("")
    tm = res.get("timing")
    if tm:
        lines += ["## 3. Cost of N points", "",
                  f"One jitted train step, {'-'.join(map(str, tm['sizes']))}, batch {tm['batch']}, "
                  f"{tm['dtype']}, median of {tm['repeats']}.", "", "| rule | ms | ratio |", "|---|---|---|"]
        for k, v in tm["median_ms"].items():
            lines.append(f"| {k} | {v:.2f} | {tm['ratio_to_ep_symmetric'][k]:.2f} |")
        lines.append("")
    vf = res.get("vector_field")
    if vf:
        lines += ["## 4. Vector-field EP (asymmetric weights)", "",
                  f"asymmetric_hopfield {'-'.join(map(str, vf['sizes']))}, {vf['rule']}, "
                  f"{vf['epochs']} epochs; angle between W_1 and B_1^T.", "",
                  "| update | initial angle | angle per epoch | test error per epoch |", "|---|---|---|---|"]
        for upd, run in vf["runs"].items():
            angles = ", ".join(f"{c['alignment_deg']['layer_1']:.1f}" for c in run["curve"])
            errs = ", ".join(f"{100 * c['test_error']:.1f}%" for c in run["curve"])
            lines.append(f"| {upd} | {run['initial_alignment_deg']['layer_1']:.1f} | {angles} | {errs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 400 images, 1 epoch, small net")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--parts", default="exactness,noise,timing,vector_field")
    p.add_argument("--sigmas", type=lambda s: tuple(float(v) for v in s.split(",")), default=SIGMAS)
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the markdown from the committed JSON (no runs)")
    args = p.parse_args(argv)
    if args.report_only:
        res = json.loads((RESULTS / "holomorphic_study.json").read_text())
        (RESULTS / "holomorphic_study.md").write_text(markdown(res))
        plots(res, RESULTS, "holomorphic_study")
        return 0
    out = Path(args.out) if args.out else (None if args.quick else RESULTS)
    prefix = "holomorphic_study"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{prefix}.json"
        if target.exists() and not args.overwrite:
            print(f"refusing to overwrite {target} (pass --overwrite)", file=sys.stderr)
            return 2
    parts = set(args.parts.split(","))
    epochs = 1 if args.quick else args.epochs
    sizes = (784, 32 if args.quick else args.hidden, 10)
    res = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), "
                     f"{platform.processor() or platform.machine()}",
           "note": "CPU shared with other jobs, run with nice -n 10; timings are same-process ratios",
           "jax": jax.__version__}
    t0 = time.perf_counter()
    if "exactness" in parts:
        print("exactness", flush=True)
        res["exactness"] = exactness()
    data = load(args.quick) if parts & {"noise", "timing", "vector_field"} else None
    if "noise" in parts:
        print("noise", flush=True)
        res["noise"] = noise(data, sizes, epochs, args.lr, args.batch, args.sigmas)
    if "timing" in parts:
        print("timing", flush=True)
        res["timing"] = timing(data, sizes, args.batch, repeats=5 if args.quick else 30)
    if "vector_field" in parts:
        print("vector field", flush=True)
        res["vector_field"] = vector_field(data, sizes, epochs, args.lr, args.batch)
    res["seconds"] = time.perf_counter() - t0
    if out is None:
        print(markdown(res))
        return 0
    res["figures"] = plots(res, out, prefix)
    (out / f"{prefix}.json").write_text(json.dumps(res, indent=1))
    (out / f"{prefix}.md").write_text(markdown(res))
    print(f"wrote {out}/{prefix}.{{json,md}} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Honest tuning of the backprop twin (:class:`ep_jax.backprop.BackpropLearner`).

Protocol (the test set is never looked at until a configuration has been selected):

* MNIST-10k = the official MNIST test file (10,000 real images): train = first 8,000, test = last
  2,000; pixels / 255, float32, flattened to 784.
* Tuning split: the 8,000 training images -> first 7,000 tune-train / last 1,000 validation.
* 784-500-10, batch 20, 25 epochs (last partial batch dropped; per-epoch permutation
  ``jax.random.permutation(jax.random.fold_in(data_key, epoch), n)``).
* Stage A: cross-entropy, cosine schedule, no weight decay; hidden activation x {adam,
  sgd+momentum} x a log grid of learning rates.
* Stage B: squared error on sigmoid outputs (EP's cost), same activations/optimizers.
* Edge extension ("A+"/"B+"): wherever the best rate of a group (same configuration but the
  learning rate) sits at an edge of its grid, the next 1-3-10 grid value beyond it is tried (twice
  at most), so no selected rate lies on the boundary of the search.
* Stage C: around the 4 best (activation, optimizer, loss, lr) of A+B: constant schedule, two
  weight decays, dropout 0.2.
* Stage D: the 5 best single-seed configurations get a second seed; the winner has the lowest
  validation error averaged over seeds 0 and 1.
* Final: the winner retrained on all 8,000 images, test error on the 2,000 for seeds 0..4.
* Reference row: the "same activation as EP" MLP (hard-sigmoid hidden and output units, squared
  error, plain SGD, constant rate), its learning rate picked on the same validation split.

Also (same protocol, smaller grids): sklearn 8x8 digits (64-h-10) and 784-500-500-10 on MNIST-10k.
Results go to ``benchmarks/results/bp_mnist10k_tuning.{json,md}``; finished runs are cached in the
JSON, so an interrupted tuning resumes where it stopped.

Usage::

    taskset -c 1 python benchmarks/tune_bp_mnist10k.py                 # everything
    taskset -c 1 python benchmarks/tune_bp_mnist10k.py --only mnist1   # 784-500-10 only
    python benchmarks/tune_bp_mnist10k.py --quick --out /tmp/x.json    # smoke run (2 epochs, tiny grid)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gzip
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ep_jax.backprop import BackpropLearner  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "mnist"
RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzip'ed idx file (ubyte data) into a numpy array of its declared shape."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: expected an unsigned-byte idx file, received magic {raw[:4]!r}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(shape)


def mnist10k():
    """(x_train 8000x784, y_train, x_test 2000x784, y_test), float32 pixels in [0, 1]."""
    x = read_idx(DATA / "t10k-images-idx3-ubyte.gz").reshape(10000, 784).astype(np.float32) / 255.0
    y = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int32)
    return x[:8000], y[:8000], x[8000:], y[8000:]


def digits():
    """sklearn 8x8 digits /16; permutation from default_rng(0); last 360 are the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:-360], y[:-360], x[-360:], y[-360:]


# ----------------------------------------------------------------------------- training


@functools.partial(jax.jit, static_argnames=("learner", "batch"))
def run_epoch(learner, batch, state, x, y, x_ev, y_ev, data_key, drop_key, epoch):
    """One epoch as a ``lax.scan`` over batches of the device-resident train set, then evaluation."""
    n = x.shape[0]
    nb = n // batch
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    batches = perm[: nb * batch].reshape(nb, batch)
    ekey = jax.random.fold_in(drop_key, epoch)

    def body(s, inp):
        i, idx = inp
        return learner.train_step(s, x[idx], y[idx], idx, jax.random.fold_in(ekey, i))

    state, ms = jax.lax.scan(body, state, (jnp.arange(nb), batches))
    ev = learner.evaluate(state, x_ev, y_ev)
    return state, {
        "train_error": ms["error"].mean(), "train_cost": ms["cost"].mean(),
        "eval_error": ev["error"], "eval_cost": ev["cost"],
    }


def train_eval(sizes, cfg, x, y, x_ev, y_ev, seed, epochs, batch):
    """Trains ``BackpropLearner(sizes, **cfg)`` for ``epochs`` and evaluates after each epoch."""
    nb = x.shape[0] // batch
    learner = BackpropLearner(sizes=tuple(sizes), total_steps=epochs * nb, **cfg)
    k_init, k_data, k_drop = jax.random.split(jax.random.PRNGKey(seed), 3)
    state = learner.init(k_init, x.shape[0])
    curve = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        state, m = run_epoch(learner, batch, state, x, y, x_ev, y_ev, k_data, k_drop, epoch)
        curve.append(float(m["eval_error"]))
    wall = time.perf_counter() - t0
    m = {k: float(v) for k, v in m.items()}
    if not np.isfinite(m["eval_cost"]):
        m["eval_error"] = 1.0 if not np.isfinite(m["eval_error"]) else m["eval_error"]
    dtypes = sorted({str(l.dtype) for l in jax.tree.leaves(state.params)})
    return {**m, "eval_curve": [round(c, 4) for c in curve], "wall_s": round(wall, 2), "param_dtypes": dtypes}


def cfg_name(cfg: dict) -> str:
    """Short readable name of a configuration."""
    c = dict(cfg)
    parts = [c.pop("activation"), c.pop("optimizer"), f"lr={c.pop('learning_rate'):g}",
             c.pop("loss").replace("cross_entropy", "CE").replace("squared_error", "SE"),
             c.pop("schedule")]
    if c.get("output_activation"):
        parts.append(f"out={c.pop('output_activation')}")
    c.pop("output_activation", None)
    if c.get("weight_decay"):
        parts.append(f"wd={c.pop('weight_decay'):g}")
    c.pop("weight_decay", None)
    if c.get("dropout"):
        parts.append(f"drop={c.pop('dropout'):g}")
    c.pop("dropout", None)
    parts += [f"{k}={v}" for k, v in sorted(c.items())]
    return " ".join(parts)


def base_cfg(**kw):
    cfg = dict(activation="relu", optimizer="adam", learning_rate=1e-3, loss="cross_entropy",
               schedule="cosine", weight_decay=0.0, dropout=0.0)
    cfg.update(kw)
    return cfg


class Study:
    """One tuning study (dataset + architecture) with a run cache stored in the results JSON."""

    def __init__(self, key, results, sizes, data, epochs, batch, log):
        self.key, self.sizes, self.epochs, self.batch, self.log = key, tuple(sizes), epochs, batch, log
        self.rec = results.setdefault(key, {})
        self.rec.update(sizes=list(sizes), epochs=epochs, batch_size=batch)
        self.rec.setdefault("tried", [])
        self.x8, self.y8, self.xt, self.yt, n_val = data
        self.xtr, self.ytr = self.x8[:-n_val], self.y8[:-n_val]
        self.xva, self.yva = self.x8[-n_val:], self.y8[-n_val:]
        self.rec["split"] = {
            "tune_train": list(self.xtr.shape), "validation": list(self.xva.shape),
            "train": list(self.x8.shape), "test": list(self.xt.shape),
            "x_dtype": str(self.x8.dtype), "y_dtype": str(self.y8.dtype),
        }
        self.dev = {k: jnp.asarray(v) for k, v in dict(
            xtr=self.xtr, ytr=self.ytr, xva=self.xva, yva=self.yva, x8=self.x8, y8=self.y8,
            xt=self.xt, yt=self.yt).items()}

    def _find(self, table, cfg, seed, sizes):
        for r in self.rec.get(table, []):
            if r["config"] == cfg and r["seed"] == seed and r["sizes"] == list(sizes):
                return r
        return None

    def val(self, cfg, seed=0, stage="", sizes=None):
        """Validation error of ``cfg`` (tune-train -> validation), cached."""
        sizes = tuple(sizes or self.sizes)
        r = self._find("tried", cfg, seed, sizes)
        if r is None:
            d = self.dev
            out = train_eval(sizes, cfg, d["xtr"], d["ytr"], d["xva"], d["yva"], seed, self.epochs, self.batch)
            r = {"stage": stage, "name": cfg_name(cfg), "config": cfg, "seed": seed, "sizes": list(sizes),
                 "val_error": out["eval_error"], "val_cost": out["eval_cost"],
                 "train_error": out["train_error"], "val_curve": out["eval_curve"],
                 "wall_s": out["wall_s"], "param_dtypes": out["param_dtypes"]}
            self.rec["tried"].append(r)
            self.log(f"  [{self.key} {stage}] {r['name']} seed={seed} h={sizes[1:-1]}: "
                     f"val {100 * r['val_error']:.2f}% ({r['wall_s']:.1f} s)")
            self.save()
        return r["val_error"]

    def test(self, cfg, seeds=(0, 1, 2, 3, 4), sizes=None, label="final"):
        """Retrains ``cfg`` on the full train split and reports test error per seed (cached)."""
        sizes = tuple(sizes or self.sizes)
        self.rec.setdefault("test_runs", [])
        errs, walls = [], []
        for s in seeds:
            r = self._find("test_runs", cfg, s, sizes)
            if r is None:
                d = self.dev
                out = train_eval(sizes, cfg, d["x8"], d["y8"], d["xt"], d["yt"], s, self.epochs, self.batch)
                r = {"label": label, "name": cfg_name(cfg), "config": cfg, "seed": s, "sizes": list(sizes),
                     "test_error": out["eval_error"], "test_cost": out["eval_cost"],
                     "train_error_last_epoch": out["train_error"], "test_curve": out["eval_curve"],
                     "wall_s": out["wall_s"], "param_dtypes": out["param_dtypes"]}
                self.rec["test_runs"].append(r)
                self.log(f"  [{self.key} {label}] {r['name']} seed={s} h={sizes[1:-1]}: "
                         f"test {100 * r['test_error']:.2f}% ({r['wall_s']:.1f} s)")
                self.save()
            errs.append(r["test_error"])
            walls.append(r["wall_s"])
        e = np.asarray(errs)
        return {"name": cfg_name(cfg), "config": cfg, "sizes": list(sizes), "seeds": list(seeds),
                "test_errors": errs, "mean": float(e.mean()), "std": float(e.std(ddof=1)) if len(e) > 1 else 0.0,
                "wall_s_per_run": float(np.mean(walls)), "trained_on": list(self.x8.shape),
                "tested_on": list(self.xt.shape)}

    def ranked(self, stages=None, sizes=None, seed=0):
        sizes = list(sizes or self.sizes)
        rows = [r for r in self.rec["tried"] if r["seed"] == seed and r["sizes"] == sizes
                and (stages is None or r["stage"] in stages)]
        return sorted(rows, key=lambda r: (r["val_error"], r["val_cost"]))

    def seed_average(self, cfgs, seeds=(0, 1), sizes=None, stage="D"):
        rows = []
        for cfg in cfgs:
            v = [self.val(cfg, s, stage, sizes) for s in seeds]
            rows.append({"name": cfg_name(cfg), "config": cfg, "sizes": list(sizes or self.sizes),
                         "val_errors": v, "mean_val_error": float(np.mean(v))})
        rows.sort(key=lambda r: r["mean_val_error"])
        return rows

    def save(self):
        self.save_fn()


# ----------------------------------------------------------------------------- studies


def unique_cfgs(rows, n):
    out = []
    for r in rows:
        if r["config"] not in out:
            out.append(r["config"])
        if len(out) == n:
            break
    return out


def lr_up(lr: float) -> float:
    """Next value of the 1-3-10 log grid above ``lr``."""
    return float(f"{lr * 3.2:.0e}")


def lr_down(lr: float) -> float:
    """Next value of the 1-3-10 log grid below ``lr``."""
    return float(f"{lr / 3:.0e}")


def extend_lr_edges(st: Study, stages, sizes=None, max_ext=2):
    """For every group of configurations differing only in the learning rate: if the best rate
    (seed 0, validation) is at an edge of the rates tried, try the next rate beyond it (up to
    ``max_ext`` times), so that no selected rate sits on the boundary of its grid."""
    ext_stages = set(stages) | {f"{s}+" for s in stages}
    key = lambda c: json.dumps({k: v for k, v in c.items() if k != "learning_rate"}, sort_keys=True)
    groups = {}
    for r in st.ranked(set(stages), sizes):
        groups.setdefault(key(r["config"]), (r["stage"], r["config"]))
    for g, (stage, _) in groups.items():
        for _ in range(max_ext):
            rows = [r for r in st.ranked(ext_stages, sizes) if key(r["config"]) == g]
            lrs = sorted({r["config"]["learning_rate"] for r in rows})
            if len(lrs) < 2:
                break
            best = rows[0]["config"]
            if best["learning_rate"] == lrs[-1]:
                new = lr_up(best["learning_rate"])
            elif best["learning_rate"] == lrs[0]:
                new = lr_down(best["learning_rate"])
            else:
                break
            if new in lrs:
                break
            st.val({**best, "learning_rate": new}, 0, f"{stage}+", sizes)


def study_mnist1(st: Study, quick: bool):
    acts = ["relu", "tanh", "sigmoid", "hard_sigmoid"]
    lrs = {"adam": [3e-4, 1e-3, 3e-3], "momentum": [0.01, 0.03, 0.1]}
    lrs_se = {"adam": [1e-3, 3e-3], "momentum": [0.03, 0.1, 0.3]}
    if quick:
        acts, lrs, lrs_se = ["relu", "hard_sigmoid"], {"adam": [1e-3]}, {"momentum": [0.1]}
    for act in acts:  # stage A
        for opt, grid in lrs.items():
            for lr in grid:
                st.val(base_cfg(activation=act, optimizer=opt, learning_rate=lr), 0, "A")
    for act in acts:  # stage B
        for opt, grid in lrs_se.items():
            for lr in grid:
                st.val(base_cfg(activation=act, optimizer=opt, learning_rate=lr, loss="squared_error"), 0, "B")
    extend_lr_edges(st, ["A", "B"])
    top = unique_cfgs(st.ranked({"A", "B", "A+", "B+"}), 2 if quick else 4)
    for cfg in top:  # stage C
        st.val({**cfg, "schedule": "constant"}, 0, "C")
        wds = [1e-4, 5e-4] if cfg["optimizer"] == "momentum" else [1e-4, 1e-3]
        for wd in wds[: 1 if quick else 2]:
            st.val({**cfg, "weight_decay": wd}, 0, "C")
        st.val({**cfg, "dropout": 0.2}, 0, "C")
    cands = unique_cfgs(st.ranked({"A", "B", "A+", "B+", "C"}), 2 if quick else 5)
    avg = st.seed_average(cands)
    st.rec["seed_average"] = avg
    winner = avg[0]["config"]
    st.rec["winner"] = {"name": cfg_name(winner), "config": winner, "val_errors": avg[0]["val_errors"],
                        "mean_val_error": avg[0]["mean_val_error"]}
    st.log(f"  winner: {cfg_name(winner)}  mean val {100 * avg[0]['mean_val_error']:.2f}%")
    st.rec["final"] = st.test(winner, (0, 1) if quick else (0, 1, 2, 3, 4))
    # Reference rows: the same hidden activation as EP, plain SGD on squared error, constant rate;
    # the rate is picked on validation averaged over seeds 0 and 1, like the winner.
    ref_lrs = [0.1] if quick else [0.003, 0.01, 0.03, 0.1, 0.3]
    variants = {
        "hard_sigmoid_outputs": ("hard-sigmoid hidden and output units (EP's units), squared error "
                                 "||o - onehot(y)||^2, plain SGD, constant rate", "hard_sigmoid"),
        "sigmoid_outputs": ("hard-sigmoid hidden units, logistic-sigmoid outputs, squared error, "
                            "plain SGD, constant rate", "sigmoid"),
    }
    st.rec["ep_reference"] = {}
    for name, (desc, out) in variants.items():
        ref = [dict(activation="hard_sigmoid", optimizer="sgd", learning_rate=lr, loss="squared_error",
                    schedule="constant", weight_decay=0.0, dropout=0.0, output_activation=out)
               for lr in ref_lrs]
        avg = st.seed_average(ref, stage="ref")
        for _ in range(0 if quick else 2):  # edge extension, as for stages A/B
            rates = sorted(c["learning_rate"] for c in ref)
            best = avg[0]["config"]["learning_rate"]
            if best not in (rates[0], rates[-1]):
                break
            new = lr_up(best) if best == rates[-1] else lr_down(best)
            ref.append({**ref[0], "learning_rate": new})
            avg = st.seed_average(ref, stage="ref")
        st.rec["ep_reference"][name] = {
            "description": desc + " (rate picked on validation, mean of seeds 0 and 1)",
            "seed_average": avg,
            "final": st.test(avg[0]["config"], (0, 1) if quick else (0, 1, 2, 3, 4), label="ep_reference"),
        }


def study_mnist2(st: Study, quick: bool, winner1: dict | None):
    """784-500-500-10: re-tune lr around the one-hidden-layer top configurations."""
    one = st.parent_rows
    seeds_cfgs = unique_cfgs(one, 1 if quick else 3)
    if winner1 is not None and winner1 not in seeds_cfgs:
        seeds_cfgs = [winner1] + seeds_cfgs[:-1]
    for cfg in seeds_cfgs:
        lr = cfg["learning_rate"]
        for f in ([1.0] if quick else [1 / 3, 1.0, 3.0]):
            st.val({**cfg, "learning_rate": float(f"{lr * f:.3g}")}, 0, "A2")
    extend_lr_edges(st, ["A2"])
    cands = unique_cfgs(st.ranked({"A2", "A2+"}), 2 if quick else 3)
    avg = st.seed_average(cands, stage="D2")
    st.rec["seed_average"] = avg
    winner = avg[0]["config"]
    st.rec["winner"] = {"name": cfg_name(winner), "config": winner, "val_errors": avg[0]["val_errors"],
                        "mean_val_error": avg[0]["mean_val_error"]}
    st.log(f"  winner: {cfg_name(winner)}  mean val {100 * avg[0]['mean_val_error']:.2f}%")
    st.rec["final"] = st.test(winner, (0, 1) if quick else (0, 1, 2, 3, 4))


def study_digits(st: Study, quick: bool):
    """sklearn digits 64-h-10: per hidden size, a small grid, seed-averaged selection, test."""
    hiddens = [64] if quick else [32, 64, 128]
    acts = ["relu", "tanh", "sigmoid", "hard_sigmoid"]
    grid = [("adam", 1e-3, "cross_entropy"), ("adam", 3e-3, "cross_entropy"), ("adam", 1e-2, "cross_entropy"),
            ("momentum", 0.03, "cross_entropy"), ("momentum", 0.1, "cross_entropy"),
            ("adam", 3e-3, "squared_error"), ("momentum", 0.3, "squared_error")]
    if quick:
        acts, grid = ["relu"], grid[:2]
    st.rec["by_hidden"] = {}
    for h in hiddens:
        sizes = (64, h, 10)
        for act in acts:
            for opt, lr, loss in grid:
                st.val(base_cfg(activation=act, optimizer=opt, learning_rate=lr, loss=loss), 0, "A", sizes)
        extend_lr_edges(st, ["A"], sizes)
        top = unique_cfgs(st.ranked({"A", "A+"}, sizes), 2 if quick else 3)
        for cfg in top:
            st.val({**cfg, "schedule": "constant"}, 0, "C", sizes)
            st.val({**cfg, "weight_decay": 1e-3}, 0, "C", sizes)
            st.val({**cfg, "dropout": 0.2}, 0, "C", sizes)
        cands = unique_cfgs(st.ranked({"A", "A+", "C"}, sizes), 2 if quick else 4)
        avg = st.seed_average(cands, seeds=(0, 1, 2), sizes=sizes)
        winner = avg[0]["config"]
        st.log(f"  digits h={h} winner: {cfg_name(winner)}  mean val {100 * avg[0]['mean_val_error']:.2f}%")
        st.rec["by_hidden"][str(h)] = {
            "seed_average": avg,
            "winner": {"name": cfg_name(winner), "config": winner, "mean_val_error": avg[0]["mean_val_error"]},
            "final": st.test(winner, (0, 1) if quick else (0, 1, 2, 3, 4), sizes=sizes),
        }


# ----------------------------------------------------------------------------- report


def fmt_pct(e):
    return f"{100 * e:.2f}"


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [
        "# Backprop twin: honest tuning on MNIST-10k (and digits)",
        "",
        f"Generated by `benchmarks/tune_bp_mnist10k.py` on {m['date']} ({m['platform']}, jax {m['jax']}, "
        f"{m['device']}, float32 params and inputs, one CPU core; {m.get('runs', '?')} training runs, "
        f"{m.get('sum_of_run_wall_s', 0) / 60:.1f} min of training in all).",
        "",
        "MNIST-10k = the official MNIST test file: train = first 8,000 images, test = last 2,000. "
        "Tuning uses only the 8,000: first 7,000 tune-train / last 1,000 validation. "
        "Selection = lowest validation error averaged over seeds 0 and 1 among the 5 best single-seed "
        "configurations; the test set is used only for the final runs (seeds 0-4, retrained on all 8,000).",
        "",
    ]
    r1 = results.get("mnist10k_784-500-10")
    if r1 and "final" in r1:
        f = r1["final"]
        lines += [
            "## 784-500-10, batch 20, 25 epochs",
            "",
            f"**Winner:** `{r1['winner']['name']}` (mean validation error "
            f"{fmt_pct(r1['winner']['mean_val_error'])}% over seeds 0, 1).",
            "",
            f"**Test error (2,000 images), seeds 0-4: {fmt_pct(f['mean'])} ± {fmt_pct(f['std'])}%** "
            f"(per seed: {', '.join(fmt_pct(e) for e in f['test_errors'])}; std with ddof=1; "
            f"{f['wall_s_per_run']:.1f} s per 25-epoch run on one core).",
            "",
        ]
        for name, ref in r1.get("ep_reference", {}).items():
            rf = ref["final"]
            lines += [
                f"Reference ({name}), same hidden activation as EP, `{rf['name']}`: {ref['description']}. "
                f"Test {fmt_pct(rf['mean'])} ± {fmt_pct(rf['std'])}% "
                f"(per seed: {', '.join(fmt_pct(e) for e in rf['test_errors'])}); validation (mean of seeds 0, 1) "
                f"by rate: " + ", ".join(f"{r['config']['learning_rate']:g}: {fmt_pct(r['mean_val_error'])}%"
                                        for r in sorted(ref["seed_average"], key=lambda r: r["config"]["learning_rate"]))
                + ".",
                "",
            ]
        lines += ["Seed-averaged candidates (validation error, %):", "",
                  "| configuration | seed 0 | seed 1 | mean |", "| --- | --- | --- | --- |"]
        for r in r1["seed_average"]:
            lines.append(f"| `{r['name']}` | {fmt_pct(r['val_errors'][0])} | {fmt_pct(r['val_errors'][1])} | "
                         f"{fmt_pct(r['mean_val_error'])} |")
        lines += ["", "Every configuration tried (seed 0, validation error %, sorted):", "",
                  "| stage | configuration | val error | val cost | last-epoch train error |",
                  "| --- | --- | --- | --- | --- |"]
        rows = sorted([r for r in r1["tried"] if r["seed"] == 0], key=lambda r: r["val_error"])
        for r in rows:
            lines.append(f"| {r['stage']} | `{r['name']}` | {fmt_pct(r['val_error'])} | {r['val_cost']:.4f} | "
                         f"{fmt_pct(r['train_error'])} |")
        lines += ["", "Stages: A = cross-entropy, cosine, no decay; B = squared error on sigmoid outputs; "
                  "A+/B+ = learning rates beyond the edge of the A/B grids; "
                  "C = schedule / weight decay / dropout variants of the 4 best of A+B; "
                  "ref = EP-like reference.", ""]
    r2 = results.get("mnist10k_784-500-500-10")
    if r2 and "final" in r2:
        f = r2["final"]
        lines += ["## 784-500-500-10, batch 20, 25 epochs", "",
                  f"Learning rate re-tuned (x1/3, x1, x3) around the 3 best one-hidden-layer configurations. "
                  f"**Winner:** `{r2['winner']['name']}` (mean val {fmt_pct(r2['winner']['mean_val_error'])}%). "
                  f"**Test: {fmt_pct(f['mean'])} ± {fmt_pct(f['std'])}%** "
                  f"(per seed: {', '.join(fmt_pct(e) for e in f['test_errors'])}; "
                  f"{f['wall_s_per_run']:.1f} s per run).", "",
                  "| configuration | val error (seed 0) |", "| --- | --- |"]
        for r in sorted([r for r in r2["tried"] if r["seed"] == 0], key=lambda r: r["val_error"]):
            lines.append(f"| `{r['name']}` | {fmt_pct(r['val_error'])} |")
        lines.append("")
    rd = results.get("digits_64-h-10")
    if rd and rd.get("by_hidden"):
        lines += [f"## sklearn digits 64-h-10, batch {rd['batch_size']}, {rd['epochs']} epochs", "",
                  "Split: permutation from `np.random.default_rng(0)`, last 360 = test, "
                  f"train = {rd['split']['train'][0]} (tune-train {rd['split']['tune_train'][0]} / "
                  f"validation {rd['split']['validation'][0]}). Selection on validation averaged over seeds 0-2.",
                  "", "| hidden | winner | mean val error | test error (seeds 0-4) |", "| --- | --- | --- | --- |"]
        for h, r in rd["by_hidden"].items():
            f = r["final"]
            lines.append(f"| {h} | `{r['winner']['name']}` | {fmt_pct(r['winner']['mean_val_error'])} | "
                         f"{fmt_pct(f['mean'])} ± {fmt_pct(f['std'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=["mnist1", "digits", "mnist2"],
                   default=["mnist1", "digits", "mnist2"])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, tiny grids")
    p.add_argument("--out", type=Path, default=RESULTS / "bp_mnist10k_tuning.json")
    args = p.parse_args(argv)
    md_path = args.out.with_suffix(".md")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["meta"] = {
        "date": datetime.date.today().isoformat(), "jax": jax.__version__,
        "platform": platform.platform(), "device": str(jax.devices()[0]),
        "python": platform.python_version(), "quick": args.quick,
        "protocol": __doc__.split("Usage::")[0].strip(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        walls = [r["wall_s"] for k, v in results.items() if k != "meta"
                 for r in v.get("tried", []) + v.get("test_runs", [])]
        results["meta"]["runs"] = len(walls)
        results["meta"]["sum_of_run_wall_s"] = round(float(sum(walls)), 1)
        text = json.dumps(results, indent=1)
        # one line per list of numbers (learning curves, per-seed errors, shapes)
        text = re.sub(r"\[\s*([-+\d.eE]+(?:,\s*[-+\d.eE]+)*)\s*\]",
                      lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
        args.out.write_text(text)
        md_path.write_text(markdown(results))

    log = lambda s: print(s, flush=True)
    epochs = 2 if args.quick else 25
    t0 = time.perf_counter()
    if "mnist1" in args.only or "mnist2" in args.only:
        x8, y8, xt, yt = mnist10k()
    if "mnist1" in args.only:
        st = Study("mnist10k_784-500-10", results, (784, 500, 10), (x8, y8, xt, yt, 1000), epochs, 20, log)
        st.save_fn = save
        study_mnist1(st, args.quick)
    if "digits" in args.only:
        xd, yd, xdt, ydt = digits()
        st = Study("digits_64-h-10", results, (64, 64, 10), (xd, yd, xdt, ydt, 287),
                   5 if args.quick else 50, 20, log)
        st.save_fn = save
        study_digits(st, args.quick)
    if "mnist2" in args.only:
        r1 = results.get("mnist10k_784-500-10", {})
        st = Study("mnist10k_784-500-500-10", results, (784, 500, 500, 10), (x8, y8, xt, yt, 1000), epochs, 20, log)
        st.save_fn = save
        rows1 = sorted([r for r in r1.get("tried", []) if r["seed"] == 0 and r["stage"] in ("A", "B", "A+", "B+", "C")],
                       key=lambda r: r["val_error"])
        if not rows1:
            raise SystemExit("mnist2 needs the mnist1 study in the results JSON (run --only mnist1 first)")
        st.parent_rows = rows1
        study_mnist2(st, args.quick, r1.get("winner", {}).get("config"))
    results["meta"]["last_invocation_wall_s"] = round(time.perf_counter() - t0, 1)
    save()
    log(f"done in {time.perf_counter() - t0:.0f} s -> {args.out}, {md_path}")


if __name__ == "__main__":
    main()

"""Mutation testing of ep_jax: inject realistic defects and check that the test suite catches them.

Not run in CI (it takes tens of minutes). Each mutant is a ``(file, exact original snippet,
replacement)`` triple. For every mutant the script

1. checks that the snippet occurs exactly once in the file (and fails loudly otherwise, so the
   list cannot rot silently when the code changes),
2. copies the repository (tracked + untracked, non-ignored files; no ``.venv``/``.git``) into
   ``/tmp/mut/<id>/`` and applies the mutant there -- the working tree is never touched,
3. runs ``pytest -x -q -p no:cacheprovider`` on the mutant's related test files first and, only if
   they all pass, on the rest of the suite (``-x``), with the same interpreter, ``cwd`` and
   ``PYTHONPATH`` set to the copy (a sanity check verifies that ``ep_jax`` imports from the copy),
4. records caught / survived, the first failing test and the time.

Before any mutant, the unmutated copy must pass the related test files of every mutant (the
baseline); otherwise the script aborts.

    python benchmarks/mutation.py              # every mutant, writes benchmarks/results/mutation.{md,json}
    python benchmarks/mutation.py --list       # ids and defects
    python benchmarks/mutation.py --only ID    # one mutant (repeatable); results are merged into the json
    python benchmarks/mutation.py --check      # only verify that every snippet occurs exactly once

``--jobs`` (default 1) runs mutants in parallel; keep 1 on a small shared machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/mut")
RESULTS = REPO / "benchmarks" / "results"
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

# Test files. Related tests run in the listed order: the fastest existing file that exercises the
# code first, then the focused test of tests/test_mutation_killers.py; for the app and the exact
# gradients (slow files that run training or dense solves) the focused test comes first.
T_ENERGIES = "tests/test_energies.py"
T_SOLVERS = "tests/test_solvers.py"
T_CORE = "tests/test_core_protocols.py"
T_FAST = "tests/test_relax_fast_path.py"
T_ZOO = "tests/test_rule_zoo.py"
T_EXACT = "tests/test_exactness.py"
T_PARITY = "tests/test_parity_torch.py"
T_SEED000 = "tests/test_seed000.py"
T_SEED004 = "tests/test_seed004.py"
T_RESIDUAL = "tests/test_residual.py"
T_RULES = "tests/test_rules_and_training.py"
T_TRAIN = "tests/test_train.py"
T_CONFIG = "tests/test_config.py"
T_KILLERS = "tests/test_mutation_killers.py"


def K(test: str) -> str:
    """A test of tests/test_mutation_killers.py (added for mutants the suite missed)."""
    return f"{T_KILLERS}::{test}"


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    defect: str
    old: str
    new: str
    related: tuple[str, ...]


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # ---- energies ------------------------------------------------------------------------------
    M("hopfield-coupling-sign", "ep_jax/energies/hopfield.py",
      "sign flip of the Hopfield coupling rho(s_l)^T W_l rho(s_l+1) in E",
      'e = e - r[l + 1] @ p["bias"] - jnp.sum((r[l] @ p["kernel"]) * r[l + 1], axis=-1)',
      'e = e - r[l + 1] @ p["bias"] + jnp.sum((r[l] @ p["kernel"]) * r[l + 1], axis=-1)',
      (T_ENERGIES, K('test_hopfield_energy_matches_numpy'))),
    M("hopfield-state-grad-factor", "ep_jax/energies/hopfield.py",
      "closed-form dE/ds (activity quadratic) off by a factor 2",
      "                g = r[l - 1] - h\n",
      "                g = 2.0 * (r[l - 1] - h)\n",
      (T_ENERGIES, K('test_closed_form_state_grad_matches_finite_differences'))),
    M("hopfield-quadratic-state", "ep_jax/energies/hopfield.py",
      "activity quadratic 1/2 rho(s)^2 computed on s instead of rho(s)",
      'q = r if self.quadratic == "activity" else layers',
      "q = layers",
      (T_ENERGIES, K('test_hopfield_energy_matches_numpy'))),
    M("hopfield-param-grad-input", "ep_jax/energies/hopfield.py",
      "closed-form dE/dW_0 drops the second state's term (rho(x)^T r^a_1 only)",
      "dw = ra[0].T @ d_post",
      "dw = ra[0].T @ ra[1]",
      (T_ENERGIES, K('test_hopfield_param_grad_difference_matches_numpy'))),
    M("hopfield-input-drive-bias", "ep_jax/energies/hopfield.py",
      "input drive rho(x) W_0 + b_0 loses the bias b_0",
      'return self.rho(0)(x) @ p["kernel"] + p["bias"]',
      'return self.rho(0)(x) @ p["kernel"]',
      (T_ENERGIES, K('test_closed_form_state_grad_matches_finite_differences'))),
    M("cg-energy-half", "ep_jax/energies/conditional_gaussian.py",
      "conditional-Gaussian energy with a factor 1/2 the seed does not have",
      "e = e + jnp.sum((layers[l + 1] - pred) ** 2, axis=-1)",
      "e = e + 0.5 * jnp.sum((layers[l + 1] - pred) ** 2, axis=-1)",
      (T_ENERGIES, K('test_conditional_gaussian_energy_matches_numpy'))),
    # ---- costs ---------------------------------------------------------------------------------
    M("squared-error-no-square", "ep_jax/costs.py",
      "squared error without the square",
      "return jnp.sum((output - y) ** 2, axis=-1)",
      "return jnp.sum(output - y, axis=-1)",
      (T_ENERGIES, K('test_costs_match_numpy'))),
    M("one-hot-wrong-class", "ep_jax/costs.py",
      "integer labels one-hot encoded as the next class",
      "return jax.nn.one_hot(target, n_out, dtype=dtype)",
      "return jax.nn.one_hot((target + 1) % n_out, n_out, dtype=dtype)",
      (T_ENERGIES, K('test_costs_match_numpy'))),
    M("cost-grad-abs-beta", "ep_jax/solvers/base.py",
      "nudging force uses abs(beta) (the -beta phase nudges towards the target)",
      "b = jnp.asarray(self.beta, output.dtype)",
      "b = jnp.abs(jnp.asarray(self.beta, output.dtype))",
      (T_SOLVERS, K('test_problem_grad_matches_finite_differences_for_both_signs_of_beta'))),
    # ---- solvers -------------------------------------------------------------------------------
    M("gd-step-size-after-first", "ep_jax/solvers/gradient_descent.py",
      "step size ignored (1.0) after the first step (the in-box fast path)",
      "return jax.tree.map(self._descend, state, grads), solver_state",
      "return jax.tree.map(self._replace(step_size=1.0)._descend if in_box else self._descend, "
      "state, grads), solver_state",
      (T_SOLVERS, K('test_projected_gradient_descent_matches_a_numpy_loop'))),
    M("gd-projection-dropped", "ep_jax/solvers/gradient_descent.py",
      "projection onto [0, 1] dropped",
      "return new if proj is None else proj(new)",
      "return new",
      (T_SOLVERS, K('test_unprojected_descent_leaves_the_box_when_the_gradient_says_so'))),
    M("tol-wrong-inequality", "ep_jax/solvers/base.py",
      "tolerance compared with the wrong inequality (residual >= tol)",
      "return residual <= jnp.asarray(self.tol, residual.dtype)",
      "return residual >= jnp.asarray(self.tol, residual.dtype)",
      (T_SOLVERS, K('test_tolerance_run_converges_below_tol_and_fixed_steps_do_not_claim_convergence'))),
    M("converged-fixed-steps", "ep_jax/solvers/base.py",
      "converged reported True for a fixed number of steps",
      "jnp.asarray(False), unbounded & ~nonfinite,",
      "jnp.asarray(True), unbounded & ~nonfinite,",
      (T_SOLVERS, K('test_tolerance_run_converges_below_tol_and_fixed_steps_do_not_claim_convergence'))),
    M("unbounded-check-disabled", "ep_jax/solvers/base.py",
      "runaway (unbounded) detection disabled for every solver",
      "detect_growth=not self.bounds_states(problem.energy),",
      "detect_growth=False,",
      (T_SOLVERS, K('test_runaway_relaxation_is_flagged_unbounded'))),
    M("optax-mean-ignored", "ep_jax/solvers/optax_solver.py",
      "OptaxSolver's reduction='mean' ignored (always the sum)",
      "grads = jax.tree.map(lambda g: g / jnp.asarray(n, g.dtype), grads)",
      "grads = grads",
      (T_CORE, K('test_optax_solver_mean_reduction_divides_by_the_batch'))),
    M("fixed-point-majoriser-unnormalised", "ep_jax/solvers/fixed_point.py",
      "fixed-point output update forgets the majoriser's 1 / (1 + k)",
      "h = (h - beta * dcost + k * out) / (1 + k)",
      "h = h - beta * dcost + k * out",
      (T_SOLVERS, K('test_fixed_point_nudged_equilibrium_is_stationary_for_F'))),
    M("stationary-always-converged", "ep_jax/solvers/stationary.py",
      "Stationary reports converged without checking the gradient norm",
      "converged = self.terminate(residual) & ~nonfinite",
      "converged = ~nonfinite",
      (T_CORE, K('test_stationary_solver_checks_the_gradient'))),
    # ---- rules ---------------------------------------------------------------------------------
    M("ep-scale-dropped", "ep_jax/rules/ep.py",
      "one-sided EP's 1/beta scale dropped",
      "energy, params, x, target, (s_plus, beta), (s0, 0), 1.0 / beta, phases)",
      "energy, params, x, target, (s_plus, beta), (s0, 0), 1.0, phases)",
      (T_ZOO, K('test_ep_variants_scale_their_contrast_and_nudge_both_ways'))),
    M("ep-symmetric-scale-doubled", "ep_jax/rules/ep.py",
      "symmetric EP scaled by 1/beta instead of 1/(2 beta)",
      "(s_plus, beta), (s_minus, -beta), 0.5 / beta, phases)",
      "(s_plus, beta), (s_minus, -beta), 1.0 / beta, phases)",
      (T_ZOO, K('test_ep_variants_scale_their_contrast_and_nudge_both_ways'))),
    M("ep-symmetric-plus-twice", "ep_jax/rules/ep.py",
      "symmetric EP relaxes the second phase with +beta",
      "s_minus, minus_stats = nudged_phase(energy, params, x, target, s0, -beta, phases, drive)",
      "s_minus, minus_stats = nudged_phase(energy, params, x, target, s0, beta, phases, drive)",
      (T_ZOO, K('test_ep_variants_scale_their_contrast_and_nudge_both_ways'))),
    M("ep-random-sign-ignores-key", "ep_jax/rules/ep.py",
      "random-sign EP ignores its key (always the same sign)",
      "beta = beta * jax.random.rademacher(key, (), dtype=dtype)",
      "beta = beta * jax.random.rademacher(jax.random.PRNGKey(0), (), dtype=dtype)",
      (T_ZOO, K('test_random_sign_depends_on_the_key'))),
    M("total-grad-cost-term-dropped", "ep_jax/rules/base.py",
      "total_energy_grad_difference drops the cost-parameter (readout) term",
      "return jax.tree.map(lambda g, c: g + c_scale * c, grads, jax.grad(cost_term)(params))",
      "return grads",
      (T_CORE, K('test_total_energy_grad_difference_includes_the_readout_term'))),
    M("energy-grad-sum-reduction-ignored", "ep_jax/rules/base.py",
      "energy_grad_reduction='sum' ignored (energy term stays a batch mean)",
      "e_scale = e_scale * jnp.shape(x)[0]",
      "e_scale = e_scale",
      (T_CORE, K('test_energy_grad_sum_reduction_multiplies_the_energy_term_by_the_batch'))),
    M("coupled-scale-dropped", "ep_jax/rules/base.py",
      "clamped contrast (coupled learning) drops its 1/eta scale",
      "grads = energy_grad_difference(energy, params, x, sc, s0, 1.0 / eta)",
      "grads = energy_grad_difference(energy, params, x, sc, s0, 1.0)",
      (T_ZOO, K('test_coupled_learning_scales_by_one_over_eta'))),
    # ---- exact gradients -----------------------------------------------------------------------
    M("implicit-active-set-dropped", "ep_jax/exact.py",
      "implicit gradient ignores the active set (saturated units kept in the solve)",
      "mask = _active_mask(state, bounds)",
      "mask = _active_mask(state, None)",
      (K('test_implicit_gradient_matches_finite_differences_with_saturated_units'), T_EXACT)),
    M("implicit-sign-flip", "ep_jax/exact.py",
      "implicit gradient with the wrong sign",
      "grads = jax.tree.map(jnp.negative, jax.grad(coupling)(params))",
      "grads = jax.grad(coupling)(params)",
      (K('test_implicit_gradient_matches_finite_differences_with_saturated_units'), T_EXACT)),
    # ---- learner -------------------------------------------------------------------------------
    M("particles-not-written", "ep_jax/learner.py",
      "persistent particles not written back after a step",
      "lambda p, s: self.rows.put(p, idx, s)",
      "lambda p, s: p",
      (T_SEED000, K('test_learner_writes_the_free_state_back_and_reports_its_metrics'))),
    M("metrics-on-nudged", "ep_jax/learner.py",
      "training metrics computed on the nudged instead of the free state",
      "out = self.energy.output(res.free_state)",
      "out = self.energy.output(res.nudged_state)",
      (T_SEED000, K('test_learner_writes_the_free_state_back_and_reports_its_metrics'))),
    # ---- training loop -------------------------------------------------------------------------
    M("perm-ignores-epoch", "ep_jax/app/train.py",
      "epoch permutation does not depend on the epoch",
      "distributed.batch_order(jax.random.fold_in(data_key, epoch)",
      "distributed.batch_order(jax.random.fold_in(data_key, 0)",
      (K('test_epoch_batches_depend_on_the_epoch_and_padded_steps_are_skipped'), T_TRAIN)),
    M("padded-step-not-skipped", "ep_jax/app/train.py",
      "padded steps of the last chunk are trained on (not skipped)",
      "ls, metrics = jax.lax.cond(ok, do, skip, ls) if pad else do(ls)",
      "ls, metrics = do(ls)",
      (K('test_epoch_batches_depend_on_the_epoch_and_padded_steps_are_skipped'), T_TRAIN)),
    # ---- checkpoints ---------------------------------------------------------------------------
    M("fingerprint-skips-field", "ep_jax/app/config.py",
      "config fingerprint skips a field (rule.beta)",
      "fp = {path: value for path, f, value in self._fields() if path in FINGERPRINT}",
      'fp = {path: value for path, f, value in self._fields() if path in FINGERPRINT '
      'and path != "rule.beta"}',
      (K('test_fingerprint_has_every_fingerprinted_field'), T_CONFIG)),
    M("restore-no-shape-check", "ep_jax/app/checkpoint.py",
      "checkpoint restore does not check shapes and dtypes",
      'if tuple(saved["shape"]) != want.shape or saved["dtype"] != str(want.dtype):',
      "if False:",
      (K('test_restore_rejects_a_tree_of_other_shapes'), T_TRAIN)),
)
BY_ID = {m.id: m for m in MUTANTS}
assert len(BY_ID) == len(MUTANTS), "duplicate mutant ids"


def check_snippet(m: Mutant, root: Path = REPO) -> str:
    """The file's text; raises if the snippet does not occur exactly once."""
    path = root / m.file
    if not path.exists():
        raise SystemExit(f"mutant {m.id}: {m.file} does not exist (update the mutant list)")
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(
            f"mutant {m.id}: the snippet occurs {n} times in {m.file}, expected exactly once "
            f"(the code changed; update the mutant list):\n{m.old}"
        )
    return text


def repo_files() -> list[str]:
    """Tracked and untracked, non-ignored files of the working tree (as git sees them)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout.decode()
    files = []
    for f in out.split("\0"):
        if not f or f.startswith((".venv/", ".git/")):
            continue
        if (REPO / f).is_file():  # tracked files deleted in the working tree are skipped
            files.append(f)
    return sorted(set(files))


def make_copy(name: str) -> Path:
    """A fresh copy of the working tree in /tmp/mut/<name>/; ../shared points at the real one."""
    dest = WORK / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in repo_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    shared = REPO.parent / "shared"
    link = WORK / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared)
    return dest


def env_for(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def sanity_check(copy: Path) -> None:
    """``ep_jax`` must import from the copy, not from the editable install."""
    out = subprocess.run(
        [str(PYTHON), "-c", "import ep_jax, ep_jax.app; print(ep_jax.__file__)"],
        cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=120)
    got = out.stdout.strip()
    if out.returncode != 0 or not Path(got).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"sanity check failed: ep_jax imports from {got!r}, not {copy}\n{out.stderr}")


_FAIL = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def run_pytest(copy: Path, files: list[str], timeout: float) -> dict:
    """``pytest -x -q`` on ``files`` in ``copy``: {"status": pass|fail|timeout, "first": test, "s"}."""
    files = [f for f in files if (copy / f.split("::")[0]).exists()]
    if not files:
        return {"status": "pass", "first": None, "seconds": 0.0, "files": []}
    cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return {"status": "timeout", "first": None, "seconds": time.perf_counter() - t0,
                "files": files, "tail": out[-2000:]}
    dt = time.perf_counter() - t0
    if proc.returncode == 0:
        return {"status": "pass", "first": None, "seconds": dt, "files": files}
    if proc.returncode == 5:  # no tests collected
        return {"status": "pass", "first": None, "seconds": dt, "files": files}
    m = _FAIL.search(out)
    first = m.group(2) if m else f"pytest exit {proc.returncode}"
    why = next((line[2:].strip() for line in out.splitlines() if line.startswith("E ")), "")
    return {"status": "fail", "first": first, "reason": why[:200], "seconds": dt, "files": files,
            "tail": out[-2000:]}


def all_test_files(copy: Path) -> list[str]:
    return sorted(str(p.relative_to(copy)) for p in (copy / "tests").glob("test_*.py"))


def run_mutant(m: Mutant, timeout: float, rest: bool, keep: bool) -> dict:
    try:  # checked again here: others may edit the code while the run goes on
        text = check_snippet(m)
    except SystemExit as err:
        print(err, file=sys.stderr, flush=True)
        return {"id": m.id, "file": m.file, "defect": m.defect, "caught": False,
                "caught_by": None, "stage": None, "status": "snippet-missing", "seconds": 0.0}
    t0 = time.perf_counter()
    copy = make_copy(m.id)
    (copy / m.file).write_text(text.replace(m.old, m.new, 1))
    sanity_check(copy)
    stages = [list(m.related)]
    if rest:
        stages.append([f for f in all_test_files(copy) if f not in m.related])
    result = {"id": m.id, "file": m.file, "defect": m.defect, "caught": False, "caught_by": None,
              "stage": None, "status": "survived"}
    for i, files in enumerate(stages):
        left = timeout - (time.perf_counter() - t0)
        r = run_pytest(copy, files, left)
        if r["status"] == "fail":
            result.update(caught=True, caught_by=r["first"], stage="related" if i == 0 else "rest",
                          status="caught", reason=r.get("reason", ""))
            break
        if r["status"] == "timeout":
            result.update(status="timeout", tail=r.get("tail", "")[-500:])
            break
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if not keep:
        shutil.rmtree(copy, ignore_errors=True)
    return result


def baseline(mutants, timeout: float) -> dict:
    copy = make_copy("baseline")
    sanity_check(copy)
    files = list(dict.fromkeys(f for m in mutants for f in m.related))
    r = run_pytest(copy, files, timeout)
    if r["status"] != "pass":
        raise SystemExit(
            f"baseline: the unmutated copy does not pass {files} ({r['status']}: {r['first']})\n"
            f"{r.get('tail', '')}")
    shutil.rmtree(copy, ignore_errors=True)
    return {"files": files, "seconds": round(r["seconds"], 1)}


def write_results(results: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path_json = RESULTS / "mutation.json"
    merged = {}
    if meta.get("merge") and path_json.exists():
        old = json.loads(path_json.read_text())
        merged = {r["id"]: r for r in old.get("results", [])}
        rerun = {"ids": [r["id"] for r in results], "date": meta["date"],
                 "total_seconds": meta.get("total_seconds")}
        meta = dict(old.get("meta", {}), merge=True)
        meta["reruns"] = meta.get("reruns", []) + [rerun]
    for r in results:
        merged[r["id"]] = r
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    rows = sorted(merged.values(), key=lambda r: order.get(r["id"], len(order)))
    meta = {k: v for k, v in meta.items() if k != "merge"}
    path_json.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    caught = sum(r["caught"] for r in rows)
    lines = [
        "# Mutation testing",
        "",
        f"`python benchmarks/mutation.py` ({meta['date']}, {meta['machine']}): "
        f"**{caught} of {len(rows)} mutants caught**. Each mutant is applied in a fresh copy of the "
        "working tree; `pytest -x` runs its related test files first, then (only if they pass) "
        "the rest of the suite. Seconds include copying the tree and the import check.",
        "",
        f"Baseline (unmutated copy, related files): {meta.get('baseline_seconds', '-')} s. "
        f"Total: {meta.get('total_seconds', '-')} s."
        + "".join(f" Rerun ({', '.join(r['ids'])}): {r['total_seconds']} s." for r in meta.get("reruns", [])),
        "",
        "| id | file | defect | caught by | seconds |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        by = f"`{r['caught_by']}`" if r["caught"] else f"**{r['status'].upper()}**"
        if r["caught"] and r.get("stage") == "rest":
            by += " (rest of suite)"
        defect = r["defect"].replace("|", "\\|")
        lines.append(f"| {r['id']} | `{r['file']}` | {defect} | {by} | {r['seconds']} |")
    lines += [
        "",
        "`tests/test_mutation_killers.py` holds the focused tests added for the mutants that the "
        "pre-existing related test files let through (independent references: numpy, float64 "
        "finite differences, hand-built values); a mutant caught by one of them was missed by the "
        "related pre-existing files listed for it in `benchmarks/mutation.py` (the rest of the "
        "suite was then not run for it). The first failure's `E` line is in the json (`reason`).",
    ]
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true", help="only check that every snippet occurs once")
    ap.add_argument("--only", action="append", default=[], metavar="ID", help="run only this mutant")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    ap.add_argument("--no-rest", action="store_true",
                    help="run only the related test files (a survivor there is reported as such)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    ap.add_argument("--keep", action="store_true", help="keep the mutant copies in /tmp/mut")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    args = ap.parse_args(argv)

    if args.list:
        for m in MUTANTS:
            print(f"{m.id:38s} {m.file:40s} {m.defect}")
        return 0
    unknown = [i for i in args.only if i not in BY_ID]
    if unknown:
        raise SystemExit(f"--only: unknown ids {unknown}; see --list")
    mutants = [BY_ID[i] for i in args.only] if args.only else list(MUTANTS)
    for m in mutants:
        check_snippet(m)
    if args.check:
        print(f"all {len(mutants)} snippets occur exactly once")
        return 0

    t0 = time.perf_counter()
    meta = {"date": datetime.date.today().isoformat(),
            "machine": f"{os.cpu_count()} CPU cores", "jobs": args.jobs,
            "timeout": args.timeout, "merge": bool(args.only)}
    if not args.no_baseline:
        b = baseline(mutants, args.timeout)
        meta["baseline_seconds"] = b["seconds"]
        print(f"baseline ok: {len(b['files'])} files in {b['seconds']} s", flush=True)

    results = []

    def report(r):
        results.append(r)
        what = f"caught by {r['caught_by']} ({r['stage']})" if r["caught"] else r["status"].upper()
        print(f"{r['id']:38s} {what}  [{r['seconds']} s]", flush=True)

    if args.jobs <= 1:
        for m in mutants:
            report(run_mutant(m, args.timeout, not args.no_rest, args.keep))
    else:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futs = [pool.submit(run_mutant, m, args.timeout, not args.no_rest, args.keep)
                    for m in mutants]
            for f in concurrent.futures.as_completed(futs):
                report(f.result())
    meta["total_seconds"] = round(time.perf_counter() - t0, 1)
    caught = sum(r["caught"] for r in results)
    print(f"{caught} of {len(results)} caught in {meta['total_seconds']} s")
    if not args.no_write:
        write_results(results, meta)
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

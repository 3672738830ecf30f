"""The open core: an energy and a solver defined here, in the test file, relax, are checked
against an exact gradient and train through the public learner; solver semantics (converged
means a tolerance was met, unbounded phases are reported); a traced beta compiles once."""

from __future__ import annotations

import dataclasses
from typing import Optional

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from ep_jax import (
    EPLearner,
    Energy,
    FixedPoint,
    GradientDescent,
    OptaxSolver,
    Phases,
    RelaxationError,
    SoftmaxReadout,
    Solver,
    Stationary,
    check_stats,
    compare,
    conditional_gaussian,
    ep_gradient,
    get_rule,
    implicit_gradient,
    make_optimizer,
    relax,
    restricted_hopfield,
)
from ep_jax.solvers import GROWTH_STEPS


# --- a user's energy: a dict state, a readout cost with its own parameters -------------------
@dataclasses.dataclass(frozen=True)
class TwoLayerTanh(Energy):
    """E = 1/2 |h|^2 + 1/2 |o|^2 - tanh(x) W . tanh(h) - tanh(h) V . tanh(o) - b . h,
    over the state {"hidden": (B, n_h), "out": (B, n_o)}; params also hold a readout "head"
    that only the cost reads."""

    n_in: int
    n_hidden: int
    n_out: int
    n_classes: int

    def __call__(self, params, state, x):
        h, o = state["hidden"], state["out"]
        e = 0.5 * jnp.sum(h * h, -1) + 0.5 * jnp.sum(o * o, -1) - h @ params["b"]
        e = e - jnp.sum((jnp.tanh(x) @ params["W"]) * jnp.tanh(h), -1)
        return e - jnp.sum((jnp.tanh(h) @ params["V"]) * jnp.tanh(o), -1)

    def init_params(self, key, dtype=jnp.float32):
        k = jax.random.split(key, 3)
        return {
            "W": 0.5 * jax.random.normal(k[0], (self.n_in, self.n_hidden), dtype) / self.n_in ** 0.5,
            "V": 0.5 * jax.random.normal(k[1], (self.n_hidden, self.n_out), dtype) / self.n_hidden ** 0.5,
            "b": jnp.zeros((self.n_hidden,), dtype),
            "head": {"kernel": jax.random.normal(k[2], (self.n_out, self.n_classes), dtype)
                     / self.n_out ** 0.5, "bias": jnp.zeros((self.n_classes,), dtype)},
        }

    def state_shapes(self, batch, dtype):
        return {"hidden": jax.ShapeDtypeStruct((batch, self.n_hidden), dtype),
                "out": jax.ShapeDtypeStruct((batch, self.n_out), dtype)}

    def output(self, state):
        return state["out"]

    def with_output(self, state, value):
        return {**state, "out": value}


# --- a user's solver: heavy-ball gradient descent with its velocity as the solver state --------
@dataclasses.dataclass(frozen=True)
class HeavyBall(Solver):
    step_size: float = 0.2
    momentum: float = 0.5
    max_steps: int = 100
    tol: Optional[float] = None

    def init(self, problem, state):
        return jax.tree.map(jnp.zeros_like, state)

    def step(self, problem, state, velocity, *, in_box=False):
        g = problem.grad(state)
        velocity = jax.tree.map(lambda v, d: self.momentum * v - self.step_size * d, velocity, g)
        return jax.tree.map(jnp.add, state, velocity), velocity


ENERGY = TwoLayerTanh(6, 5, 4, 3)
COST = SoftmaxReadout(head="head")


def _data(n=8, dtype=jnp.float64, seed=1):
    x = jax.random.normal(jax.random.PRNGKey(seed), (n, ENERGY.n_in), dtype)
    y = jnp.arange(n, dtype=jnp.int32) % ENERGY.n_classes
    return x, y


def test_user_energy_and_solver_relax_to_an_equilibrium():
    params = ENERGY.init_params(jax.random.PRNGKey(0), jnp.float64)
    x, _ = _data()
    s, st = jax.jit(lambda p: relax(ENERGY, p, x, "zeros", solver=HeavyBall(tol=1e-12, max_steps=5000)))(params)
    assert bool(st.converged) and not bool(st.unbounded) and int(st.steps) < 5000
    g = jax.grad(lambda s: jnp.sum(ENERGY(params, s, x)))(s)
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g)) < 1e-10
    with pytest.raises(ValueError, match=r"state leaf 1: expected shape \(8, 4\)"):
        relax(ENERGY, params, x, {"hidden": s["hidden"], "out": s["out"][:, :3]}, solver=HeavyBall())
    with pytest.raises(ValueError, match="FixedPoint needs a layered energy"):
        relax(ENERGY, params, x, "zeros", solver=FixedPoint(5))


def test_user_energy_ep_gradient_with_readout_is_exact():
    """Symmetric EP on the user's energy, readout inside the cost: the total-energy difference
    gives the readout's gradient too, and the whole estimate matches implicit differentiation."""
    params = ENERGY.init_params(jax.random.PRNGKey(0), jnp.float64)
    x, y = _data()
    tight = HeavyBall(tol=1e-13, max_steps=20000)
    phases = Phases(1e-3, tight, tight, COST)
    g, res = jax.jit(lambda p: ep_gradient(ENERGY, p, x, y, "zeros", phases=phases,
                                           variant="symmetric"))(params)
    assert bool(res.free_stats.converged) and bool(res.nudged_stats.converged)
    exact, info = implicit_gradient(ENERGY, params, x, y, res.free_state, cost=COST)
    assert float(info.min_eigenvalue) > 0
    cmp = compare(g, exact)
    assert cmp["rel_error"] < 1e-5, cmp
    head = compare(g["head"], exact["head"])
    assert head["rel_error"] < 1e-5 and float(jnp.linalg.norm(exact["head"]["kernel"])) > 1e-3


def test_user_energy_trains_through_the_learner_with_persistent_particles():
    x, y = _data(n=48, dtype=jnp.float32, seed=2)
    y = (jnp.argmax(x[:, :3], axis=-1)).astype(jnp.int32)  # a learnable rule
    solver = HeavyBall(max_steps=30)
    learner = EPLearner(
        energy=ENERGY, rule="ep-symmetric", phases=Phases(0.2, solver, HeavyBall(max_steps=10), COST),
        tx=make_optimizer("adam", 3e-2), eval_solver=HeavyBall(max_steps=200, tol=1e-5),
        persistent=True,
    )
    state = learner.init(jax.random.PRNGKey(0), 48)
    assert set(state.particles) == {"hidden", "out"} and state.particles["out"].shape == (48, 4)
    step = jax.jit(learner.train_step)
    before = jax.jit(learner.evaluate)(state, x, y)
    for i in range(150):
        idx = jnp.arange(16) + 16 * (i % 3)
        state, m = step(state, x[idx], y[idx], idx, jax.random.PRNGKey(i))
    after = jax.jit(learner.evaluate)(state, x, y)
    assert float(after["cost"]) < 0.5 * float(before["cost"]), (before, after)
    assert float(after["error"]) < float(before["error"])
    assert float(jnp.max(jnp.abs(state.particles["out"]))) > 0  # particles were written back


def test_fixed_steps_never_report_converged_tolerance_does():
    energy = restricted_hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    _, st = relax(energy, params, x, "zeros", solver=GradientDescent(0.5, 200))
    assert not bool(st.converged) and float(st.residual) < 1e-5 and not bool(st.unbounded)
    _, st = relax(energy, params, x, "zeros", solver=GradientDescent(0.5, 200, tol=1e-5))
    assert bool(st.converged) and int(st.steps) < 200


@pytest.mark.parametrize("tol", [None, 1e-6])
def test_unbounded_minus_beta_phase_is_reported(tol):
    """Symmetric EP, restricted_hopfield, squared error: with beta = 1 the -beta phase's F has
    no minimum (1/2 s^2 - beta ||s - y||^2), its states run away; the stats say so."""
    energy = restricted_hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    solver = GradientDescent(0.5, 40, tol=tol)
    _, res = jax.jit(lambda p: get_rule("ep-symmetric")(
        energy, p, x, y, "zeros", phases=Phases(1.0, solver, solver)))(params)
    minus = res.second_stats
    assert not bool(minus.converged)
    assert bool(minus.unbounded) or bool(minus.nonfinite)
    assert not bool(res.nudged_stats.unbounded) and not bool(res.nudged_stats.nonfinite)
    with pytest.raises(RelaxationError, match="unbounded|diverged"):
        check_stats(minus)
    # beta = 0.2 is bounded: nothing flagged
    _, ok = jax.jit(lambda p: get_rule("ep-symmetric")(
        energy, p, x, y, "zeros", phases=Phases(0.2, solver, solver)))(params)
    assert not bool(ok.second_stats.unbounded) and not bool(ok.second_stats.nonfinite)
    check_stats(ok.second_stats)


def test_growth_window_constant():
    assert GROWTH_STEPS >= 3  # two consecutive growth ratios at least


def test_traced_beta_sweep_compiles_once():
    energy = restricted_hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    phases = Phases(0.5, GradientDescent(0.5, 30), GradientDescent(0.5, 10))
    f = jax.jit(lambda p, b: ep_gradient(energy, p, x, y, "zeros", phases=phases, beta=b)[0])
    outs = [f(params, jnp.float32(b)) for b in (0.1, 0.2, 0.4)]
    assert f._cache_size() == 1
    ref = ep_gradient(energy, params, x, y, "zeros", phases=phases._replace(beta=0.2))[0]
    chex.assert_trees_all_close(outs[1], ref, rtol=1e-5, atol=1e-7)


def test_optax_sgd_solver_is_gradient_descent():
    energy = restricted_hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    a, sa = relax(energy, params, x, "zeros", target=y, beta=0.3, solver=GradientDescent(0.2, 25))
    b, sb = relax(energy, params, x, "zeros", target=y, beta=0.3, solver=OptaxSolver(optax.sgd(0.2), 25))
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(sa.residual, sb.residual, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        relax(energy, params, x, "zeros", solver=OptaxSolver(optax.sgd(0.2), 5, reduction="max"))
    with pytest.raises(ValueError, match="transform: expected an optax.GradientTransformation"):
        relax(energy, params, x, "zeros", solver=OptaxSolver("adam", 5))


def test_stationary_checks_the_feedforward_equilibrium():
    energy = conditional_gaussian((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    s, st = relax(energy, params, x, "feedforward", solver=Stationary(1e-5))
    assert bool(st.converged) and int(st.steps) == 0 and float(st.residual) < 1e-5
    _, st0 = relax(energy, params, x, "zeros", solver=Stationary(1e-5))
    assert not bool(st0.converged) and float(st0.residual) > 1e-3  # zeros is not an equilibrium


class SolverJitVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_user_solver_and_optax_solver_same_with_and_without_jit(self):
        params = ENERGY.init_params(jax.random.PRNGKey(0), jnp.float64)
        x, y = _data()
        for solver in (HeavyBall(max_steps=40), OptaxSolver(optax.adam(0.05), 40)):
            fn = self.variant(lambda p: relax(ENERGY, p, x, "zeros", target=y, beta=0.3,
                                              cost=COST, solver=solver))
            s, st = fn(params)
            s_ref, _ = jax.jit(lambda p: relax(ENERGY, p, x, "zeros", target=y, beta=0.3,
                                               cost=COST, solver=solver))(params)
            chex.assert_trees_all_close(s, s_ref, rtol=1e-10, atol=1e-12)
            chex.assert_tree_all_finite(s)


def test_extending_example_trains(tmp_path):
    """docs/EXTENDING.md's worked example: a new energy in one file, trained by the public API."""
    import subprocess
    import sys
    from pathlib import Path

    import os

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(root / "docs" / "examples" / "tanh_hopfield.py"),
                          "--epochs", "3"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    test_error = float(last.split("test error ")[1].split(",")[0])
    assert test_error < 0.5, out.stdout  # 10 classes: chance is 0.9

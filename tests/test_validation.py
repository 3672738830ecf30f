"""Bad values never pass silently: labels out of range, NaN inputs and targets (eager errors,
opt-in checkify under jit), per-example convergence, divergence causes named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import checkify

from ep_jax import (
    EPLearner,
    GradientDescent,
    Phases,
    RelaxationError,
    Stationary,
    check_stats,
    conditional_gaussian,
    get_rule,
    hopfield,
    make_optimizer,
    relax,
    restricted_hopfield,
)
from ep_jax.costs import SoftmaxReadout, squared_error


def _net(dtype=jnp.float32):
    energy = hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0), dtype)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), dtype)
    return energy, params, x


def test_out_of_range_labels_are_refused_eagerly():
    energy, params, x = _net()
    with pytest.raises(ValueError, match=r"target: expected labels in \[0, 3\), received 3 at index 1"):
        relax(energy, params, x, "zeros", target=jnp.array([0, 3, 1, 2]), beta=0.5)
    with pytest.raises(ValueError, match=r"target: expected labels in \[0, 3\), received -1"):
        squared_error(jnp.zeros((2, 3)), jnp.array([-1, 0]))
    cost = SoftmaxReadout()
    head = {"head": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}
    with pytest.raises(ValueError, match=r"labels in \[0, 4\), received 7"):
        cost(jnp.zeros((2, 3)), jnp.array([7, 0]), head)


def test_nonfinite_inputs_and_targets_are_refused_eagerly():
    energy, params, x = _net()
    with pytest.raises(ValueError, match="x: expected finite values, received nan"):
        relax(energy, params, x.at[2, 3].set(jnp.nan), "zeros")
    dense = jnp.zeros((4, 3)).at[0, 0].set(jnp.inf)
    with pytest.raises(ValueError, match="target: expected finite values, received inf"):
        relax(energy, params, x, "zeros", target=dense, beta=0.5)


def test_bad_labels_under_jit_are_caught_with_checkify():
    energy, params, x = _net()
    gd = GradientDescent(0.5, 5, project="clip01")
    learner = EPLearner(energy, "ep", Phases(0.5, gd, gd), make_optimizer("sgd", [0.1, 0.1]),
                        eval_solver=gd, persistent=False)
    state = learner.init(jax.random.PRNGKey(0), 4)
    step = checkify.checkify(jax.jit(learner.train_step), errors=checkify.user_checks)
    err, _ = step(state, x, jnp.array([0, 1, 2, 0]), None, jax.random.PRNGKey(1))
    err.throw()  # good labels: no error
    err, _ = step(state, x, jnp.array([0, 9, 2, 0]), None, jax.random.PRNGKey(1))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels in \[0, 3\), received 0 .. 9"):
        err.throw()
    err, _ = step(state, x.at[0, 0].set(jnp.nan), jnp.array([0, 1, 2, 0]), None, jax.random.PRNGKey(1))
    with pytest.raises(checkify.JaxRuntimeError, match="x: expected finite values"):
        err.throw()


def test_convergence_is_reported_per_example():
    energy = conditional_gaussian((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    s = energy.feedforward_state(params, x)
    s = (s[0].at[:2].add(1.0), s[1])  # examples 0 and 1 moved off their equilibrium
    _, st = relax(energy, params, x, s, solver=Stationary(1e-5))
    assert not bool(st.converged) and float(st.converged_fraction) == 0.5
    _, st = relax(energy, params, x, "zeros", solver=GradientDescent(0.2, 3))
    assert float(st.converged_fraction) == 0.0  # a fixed step count checks no tolerance
    _, st = relax(energy, params, x, "zeros", solver=GradientDescent(0.2, 5000, tol=1e-5))
    assert bool(st.converged) and float(st.converged_fraction) == 1.0
    with pytest.raises(RelaxationError, match=r"50.0% of the examples did"):
        check_stats(relax(energy, params, x, s, solver=Stationary(1e-5))[1], require_converged=True)


def test_divergence_names_its_likely_cause():
    energy = restricted_hopfield((6, 5, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    _, st = relax(energy, params, x, "zeros", solver=GradientDescent(50.0, 200))
    assert bool(st.nonfinite)
    with pytest.raises(RelaxationError, match="x and params are finite: a step size or beta too large"):
        check_stats(st, x=x, params=params)
    bad = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)
    _, st = jax.jit(lambda p: relax(energy, p, x, "zeros", solver=GradientDescent(0.5, 10)))(bad)
    with pytest.raises(RelaxationError, match="the parameters holds? NaN"):
        check_stats(st, x=x, params=bad)
    with pytest.raises(RelaxationError, match="non-finite inputs or parameters, or a step size"):
        check_stats(st)


def test_rules_refuse_bad_labels_before_relaxing():
    energy, params, x = _net()
    for name in ("ep", "ep-symmetric", "chl", "first-step"):
        with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
            get_rule(name)(energy, params, x, jnp.array([0, 1, 5, 0]), "zeros",
                           phases=Phases(0.5), key=jax.random.PRNGKey(0))


def test_training_and_evaluation_metrics_report_the_converged_fraction():
    energy, params, x = _net()
    free = GradientDescent(0.5, 500, tol=1e-6, project="clip01")
    fixed = GradientDescent(0.5, 4, project="clip01")
    learner = EPLearner(energy, "ep", Phases(0.5, free, fixed), make_optimizer("sgd", [0.1, 0.1]),
                        eval_solver=GradientDescent(0.5, 2, tol=1e-6, project="clip01"),
                        persistent=False)
    state = learner.init(jax.random.PRNGKey(0), 4)
    _, m = jax.jit(learner.train_step)(state, x, jnp.array([0, 1, 2, 0]), None, jax.random.PRNGKey(1))
    assert float(m["converged_fraction"]) == 1.0
    ev = jax.jit(learner.evaluate)(state, x, jnp.array([0, 1, 2, 0]))
    assert float(ev["converged_fraction"]) < 1.0 and float(ev["converged"]) == 0.0  # 2 steps

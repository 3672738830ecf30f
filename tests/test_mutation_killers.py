"""Focused checks against independent references (numpy, float64 finite differences, hand-built
values) that catch the defects ``benchmarks/mutation.py`` injects. Each test is fast (< ~2 s)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.costs import SoftmaxReadout, cross_entropy, squared_error
from ep_jax.energies import conditional_gaussian, hopfield, restricted_hopfield
from ep_jax.energies.base import Energy
from ep_jax.energies.hopfield import Hopfield
from ep_jax.exact import implicit_gradient
from ep_jax.rules import Phases, get_rule
from ep_jax.rules.base import total_energy_grad_difference
from ep_jax.solvers import FixedPoint, GradientDescent, OptaxSolver, relax
from ep_jax.solvers.base import Problem
from ep_jax.solvers.stationary import Stationary
from tests.conftest import random_net

SIZES = (5, 4, 3, 2)


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np_params(params, n):
    return [(np.asarray(params[f"layer_{l}"]["kernel"]), np.asarray(params[f"layer_{l}"]["bias"]))
            for l in range(n)]


def _np_hopfield(params, state, x, rho, quadratic):
    layers = [np.asarray(x)] + [np.asarray(s) for s in state]
    r = [rho(a) for a in layers]
    q = r if quadratic == "activity" else layers
    e = 0.5 * sum((a * a).sum(-1) for a in q)
    for l, (w, b) in enumerate(_np_params(params, len(layers) - 1)):
        e = e - r[l + 1] @ b - ((r[l] @ w) * r[l + 1]).sum(-1)
    return e


def _random_state(energy, batch, key, lo=-0.5, hi=1.5):
    keys = jax.random.split(key, len(energy.sizes) - 1)
    return tuple(jax.random.uniform(k, (batch, n), jnp.float64, lo, hi)
                 for k, n in zip(keys, energy.sizes[1:]))


# ---- energies ------------------------------------------------------------------------------------
@pytest.mark.parametrize("quadratic", ["activity", "state"])
def test_hopfield_energy_matches_numpy(quadratic):
    energy = Hopfield(sizes=SIZES, activation="sigmoid", quadratic=quadratic)
    params, x, _ = random_net(energy, batch=3)
    state = _random_state(energy, 3, jax.random.PRNGKey(1))
    np.testing.assert_allclose(energy(params, state, x),
                               _np_hopfield(params, state, x, _sig, quadratic), rtol=1e-12)


def test_hard_sigmoid_hopfield_energy_outside_the_box_matches_numpy():
    energy = hopfield(SIZES)
    params, x, _ = random_net(energy, batch=3)
    state = _random_state(energy, 3, jax.random.PRNGKey(2))
    np.testing.assert_allclose(energy(params, state, x),
                               _np_hopfield(params, state, x, lambda a: np.clip(a, 0, 1), "activity"),
                               rtol=1e-12)


def _fd_state_grad(f, state, h=1e-6):
    """Central finite differences of sum_b f(state) over every state entry (float64 numpy)."""
    out = []
    for i, s in enumerate(state):
        s = np.asarray(s)
        g = np.zeros_like(s)
        for idx in np.ndindex(s.shape):
            for sign in (1, -1):
                t = s.copy()
                t[idx] += sign * h
                st = tuple(jnp.asarray(t) if j == i else state[j] for j in range(len(state)))
                g[idx] += sign * float(np.sum(f(st))) / (2 * h)
        out.append(g)
    return out


@pytest.mark.parametrize("quadratic,activation,lo,hi,in_box", [
    ("activity", "sigmoid", -1.0, 2.0, False),
    ("state", "sigmoid", -1.0, 2.0, False),
    ("activity", "hard_sigmoid", 0.05, 0.95, False),
    ("activity", "hard_sigmoid", 0.05, 0.95, True),
])
def test_closed_form_state_grad_matches_finite_differences(quadratic, activation, lo, hi, in_box):
    energy = Hopfield(sizes=SIZES, activation=activation, quadratic=quadratic)
    params, x, _ = random_net(energy, batch=2)
    state = _random_state(energy, 2, jax.random.PRNGKey(3), lo, hi)
    got = energy.state_grad(params, state, x, in_box=in_box)
    want = _fd_state_grad(lambda s: _np_hopfield(params, s, x, _sig if activation == "sigmoid"
                                                 else (lambda a: np.clip(a, 0, 1)), quadratic), state)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8)


def test_hopfield_param_grad_difference_matches_numpy():
    energy = Hopfield(sizes=SIZES, activation="sigmoid")
    params, x, _ = random_net(energy, batch=4)
    sa = _random_state(energy, 4, jax.random.PRNGKey(4))
    sb = _random_state(energy, 4, jax.random.PRNGKey(5))
    scale = 2.5
    got = energy.param_grad_difference(params, x, sa, sb, scale)
    ra = [_sig(np.asarray(a)) for a in (x,) + sa]
    rb = [_sig(np.asarray(a)) for a in (x,) + sb]
    for l in range(len(SIZES) - 1):
        # E is linear in theta: dE/dW_l = -mean_b r_l^T r_l+1, dE/db_l = -mean_b r_l+1
        dw = -(ra[l].T @ ra[l + 1] - rb[l].T @ rb[l + 1]) / 4
        db = -(ra[l + 1] - rb[l + 1]).sum(0) / 4
        np.testing.assert_allclose(got[f"layer_{l}"]["kernel"], scale * dw, rtol=1e-12)
        np.testing.assert_allclose(got[f"layer_{l}"]["bias"], scale * db, rtol=1e-12)


def test_conditional_gaussian_energy_matches_numpy():
    energy = conditional_gaussian(SIZES)
    params, x, _ = random_net(energy, batch=3)
    state = _random_state(energy, 3, jax.random.PRNGKey(6))
    layers = [np.asarray(x)] + [np.asarray(s) for s in state]
    want = 0.0
    for l, (w, b) in enumerate(_np_params(params, len(SIZES) - 1)):
        want = want + ((layers[l + 1] - (_sig(layers[l]) @ w + b)) ** 2).sum(-1)
    np.testing.assert_allclose(energy(params, state, x), want, rtol=1e-12)


# ---- costs ---------------------------------------------------------------------------------------
def test_costs_match_numpy():
    out = np.array([[0.2, 0.9, -0.3], [1.5, 0.1, 0.4]])
    labels = np.array([1, 2])
    y = np.eye(3)[labels]
    np.testing.assert_allclose(squared_error(jnp.asarray(out), jnp.asarray(labels)),
                               ((out - y) ** 2).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(squared_error(jnp.asarray(out), jnp.asarray(y)),
                               ((out - y) ** 2).sum(-1), rtol=1e-12)
    logp = out - np.log(np.exp(out).sum(-1, keepdims=True))
    np.testing.assert_allclose(cross_entropy(jnp.asarray(out), jnp.asarray(labels)),
                               -logp[np.arange(2), labels], rtol=1e-12)


@pytest.mark.parametrize("beta", [0.7, -0.7])
def test_problem_grad_matches_finite_differences_for_both_signs_of_beta(beta):
    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=2)
    state = _random_state(energy, 2, jax.random.PRNGKey(7), 0.05, 0.95)
    target = jnp.asarray(np.eye(SIZES[-1])[np.asarray(y)])
    problem = Problem(energy, params, x, target, beta, squared_error)
    want = _fd_state_grad(
        lambda s: _np_hopfield(params, s, x, lambda a: np.clip(a, 0, 1), "activity")
        + beta * ((np.asarray(s[-1]) - np.asarray(target)) ** 2).sum(-1), state)
    for g, w in zip(problem.grad(state), want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8)


# ---- solvers -------------------------------------------------------------------------------------
def _np_field_grad(params, state, x):
    """dE/ds of the hard-sigmoid activity Hopfield energy for states inside (0, 1), numpy."""
    f = lambda s: _np_hopfield(params, s, x, lambda a: np.clip(a, 0, 1), "activity")  # noqa: E731
    return _fd_state_grad(f, state)


def test_projected_gradient_descent_matches_a_numpy_loop():
    energy = hopfield(SIZES)
    params, x, _ = random_net(energy, batch=2)
    eps, steps = 0.3, 4
    s = tuple(jnp.full((2, n), 0.5, jnp.float64) for n in SIZES[1:])
    got, _ = relax(energy, params, x, s, solver=GradientDescent(eps, steps, project="clip01"))
    for _ in range(steps):  # autodiff of E (not the closed form) in a plain loop
        g = jax.grad(lambda t: jnp.sum(energy(params, t, x)))(s)
        s = tuple(jnp.clip(a - eps * b, 0, 1) for a, b in zip(s, g))
    for a, b in zip(got, s):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_unprojected_descent_leaves_the_box_when_the_gradient_says_so():
    energy = hopfield((2, 2))
    params = {"layer_0": {"kernel": jnp.zeros((2, 2), jnp.float64),
                          "bias": jnp.asarray([3.0, -3.0], jnp.float64)}}
    x = jnp.zeros((1, 2), jnp.float64)
    s0 = (jnp.full((1, 2), 0.5, jnp.float64),)
    proj, _ = relax(energy, params, x, s0, solver=GradientDescent(0.5, 3, project="clip01"))
    np.testing.assert_allclose(proj[0], [[1.0, 0.0]])


def test_tolerance_run_converges_below_tol_and_fixed_steps_do_not_claim_convergence():
    energy = hopfield(SIZES)
    params, x, _ = random_net(energy, batch=3)
    s0 = energy.zeros_state(x)
    _, st = relax(energy, params, x, s0, solver=GradientDescent(0.5, 2000, tol=1e-10, project="clip01"))
    assert bool(st.converged) and float(st.residual) <= 1e-10 and 2 < int(st.steps) < 2000
    _, st = relax(energy, params, x, s0, solver=GradientDescent(0.5, 2000, project="clip01"))
    assert not bool(st.converged) and int(st.steps) == 2000


def test_runaway_relaxation_is_flagged_unbounded():
    """State quadratic, beta = -1 on squared error: F = 1/2 s^2 - (s - y)^2 + ... has no minimum."""
    energy = restricted_hopfield((3, 2))
    params, x, y = random_net(energy, batch=2)
    _, st = relax(energy, params, x, energy.zeros_state(x), target=y, beta=-1.0,
                  solver=GradientDescent(0.1, 60))
    assert bool(st.unbounded)
    _, st = relax(energy, params, x, energy.zeros_state(x), target=y, beta=-1.0,
                  solver=GradientDescent(0.1, 500, tol=1e-9))
    assert bool(st.unbounded)


def test_optax_solver_mean_reduction_divides_by_the_batch():
    energy = restricted_hopfield(SIZES)
    params, x, _ = random_net(energy, batch=4)
    s0 = _random_state(energy, 4, jax.random.PRNGKey(8), 0.0, 1.0)
    g = jax.grad(lambda s: jnp.sum(energy(params, s, x)))(s0)
    for reduction, div in (("sum", 1.0), ("mean", 4.0)):
        got, _ = relax(energy, params, x, s0,
                       solver=OptaxSolver(optax.sgd(0.1), 1, reduction=reduction))
        for a, s, gi in zip(got, s0, g):
            np.testing.assert_allclose(a, s - 0.1 * gi / div, rtol=1e-12, atol=1e-14)


def test_fixed_point_nudged_equilibrium_is_stationary_for_F():
    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=3)
    beta = 0.5
    s, st = relax(energy, params, x, energy.zeros_state(x), target=y, beta=beta,
                  solver=FixedPoint(3000, tol=1e-13))
    assert bool(st.converged)
    target = jax.nn.one_hot(y, SIZES[-1], dtype=jnp.float64)
    g = jax.grad(lambda t: jnp.sum(energy(params, t, x))
                 + beta * jnp.sum((t[-1] - target) ** 2))(s)
    for si, gi in zip(s, g):  # projected stationarity on the box
        inside = (si > 0) & (si < 1)
        assert float(jnp.max(jnp.abs(jnp.where(inside, gi, 0.0)))) < 1e-9


def test_stationary_solver_checks_the_gradient():
    energy = conditional_gaussian(SIZES)
    params, x, _ = random_net(energy, batch=3)
    _, st = relax(energy, params, x, "feedforward", solver=Stationary(tol=1e-8))
    assert bool(st.converged)
    _, st = relax(energy, params, x, energy.zeros_state(x), solver=Stationary(tol=1e-8))
    assert not bool(st.converged) and float(st.residual) > 1e-3


# ---- rules ---------------------------------------------------------------------------------------
PHASES = Phases(beta=0.3, free=GradientDescent(0.5, 30, project="clip01"),
                nudged=GradientDescent(0.5, 10, project="clip01"))


def _dE(energy, params, x, s):
    return jax.grad(lambda p: jnp.mean(energy(p, s, x)))(params)


def _combine(a, b, scale):
    return jax.tree.map(lambda u, v: scale * (u - v), a, b)


def _assert_tree(a, b, rtol=1e-10):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-13)


def test_ep_variants_scale_their_contrast_and_nudge_both_ways():
    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=3)
    b = PHASES.beta
    g, res = get_rule("ep")(energy, params, x, y, "zeros", phases=PHASES, key=None)
    _assert_tree(g, _combine(_dE(energy, params, x, res.nudged_state),
                             _dE(energy, params, x, res.free_state), 1 / b))
    g, res = get_rule("ep-symmetric")(energy, params, x, y, "zeros", phases=PHASES, key=None)
    _assert_tree(g, _combine(_dE(energy, params, x, res.nudged_state),
                             _dE(energy, params, x, res.second_state), 0.5 / b))
    minus, _ = relax(energy, params, x, res.free_state, target=y, beta=-b,
                     solver=PHASES.nudged)
    _assert_tree(res.second_state, minus)


def test_random_sign_depends_on_the_key():
    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=2)
    rule = get_rule("ep-random-sign")
    beta = jax.jit(lambda k: rule(energy, params, x, y, "zeros", phases=PHASES, key=k)[1].beta)
    signs = {float(jnp.sign(beta(jax.random.PRNGKey(i)))) for i in range(12)}
    assert signs == {-1.0, 1.0}


def test_coupled_learning_scales_by_one_over_eta():
    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=3)
    g, res = get_rule("coupled")(energy, params, x, y, "zeros", phases=PHASES, key=None)
    eta = float(res.beta)
    assert 0 < eta < 1
    _assert_tree(g, _combine(_dE(energy, params, x, res.nudged_state),
                             _dE(energy, params, x, res.free_state), 1 / eta))


def test_energy_grad_sum_reduction_multiplies_the_energy_term_by_the_batch():
    energy = hopfield(SIZES)
    params, x, _ = random_net(energy, batch=4)
    sa = _random_state(energy, 4, jax.random.PRNGKey(9), 0, 1)
    sb = _random_state(energy, 4, jax.random.PRNGKey(10), 0, 1)
    mean = total_energy_grad_difference(energy, params, x, None, (sa, 0.2), (sb, 0), 2.0, PHASES)
    total = total_energy_grad_difference(energy, params, x, None, (sa, 0.2), (sb, 0), 2.0,
                                         PHASES._replace(energy_grad_reduction="sum"))
    _assert_tree(total, jax.tree.map(lambda a: 4 * a, mean))


@dataclasses.dataclass(frozen=True)
class _Quadratic(Energy):
    """E = 1/2 ||s||^2 - s . (x W + b): a minimal autodiff energy with a readout cost."""

    n_in: int = 3
    n: int = 4

    def __call__(self, params, state, x):
        return 0.5 * jnp.sum(state * state, -1) - jnp.sum(state * (x @ params["w"] + params["b"]), -1)

    def init_params(self, key, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return {"w": jax.random.normal(k1, (self.n_in, self.n), dtype),
                "b": jnp.zeros((self.n,), dtype),
                "head": {"kernel": jax.random.normal(k2, (self.n, 2), dtype),
                         "bias": jnp.asarray([0.1, -0.2], dtype)}}

    def state_shapes(self, batch, dtype):
        return jax.ShapeDtypeStruct((batch, self.n), dtype)


def test_total_energy_grad_difference_includes_the_readout_term():
    energy, cost = _Quadratic(), SoftmaxReadout(head="head")
    params = energy.init_params(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 3), jnp.float64)
    y = jnp.asarray([0, 1, 1])
    sa = jax.random.normal(jax.random.PRNGKey(2), (3, 4), jnp.float64)
    sb = jax.random.normal(jax.random.PRNGKey(3), (3, 4), jnp.float64)
    beta = 0.4
    got = total_energy_grad_difference(energy, params, x, y, (sa, beta), (sb, 0), 1 / beta,
                                       Phases(cost=cost))

    def f(p, s, b):
        return jnp.mean(energy(p, s, x) + b * cost(s, y, p))

    want = jax.tree.map(lambda u, v: (u - v) / beta, jax.grad(f)(params, sa, beta),
                        jax.grad(f)(params, sb, 0.0))
    _assert_tree(got, want)
    assert float(jnp.max(jnp.abs(got["head"]["kernel"]))) > 1e-3


# ---- exact gradients -----------------------------------------------------------------------------
def test_implicit_gradient_matches_finite_differences_with_saturated_units():
    energy = hopfield((4, 5, 3))
    params, x, y = random_net(energy, batch=2, weight_scale=1.0, bias_range=(-0.6, 1.6))
    tight = FixedPoint(5000, tol=1e-14, order="asynchronous")

    run = jax.jit(lambda p: relax(energy, p, x, energy.zeros_state(x), solver=tight))

    def loss(p):
        s, st = run(p)
        assert bool(st.converged)
        return float(jnp.mean(squared_error(energy.output(s), y))), s

    l0, s = loss(params)
    masks = [((a > 0) & (a < 1)) for a in s]
    frac = float(sum(jnp.sum(m) for m in masks) / sum(m.size for m in masks))
    assert 0.2 < frac < 0.95, frac  # some units saturate, some do not
    g = jax.jit(lambda p, s: implicit_gradient(energy, p, x, y, s, bounds=(0.0, 1.0))[0])(params, s)
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape, a.dtype), params)
    h = 1e-5
    lp = loss(jax.tree.map(lambda p, d: p + h * d, params, v))[0]
    lm = loss(jax.tree.map(lambda p, d: p - h * d, params, v))[0]
    fd = (lp - lm) / (2 * h)
    dot = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
    np.testing.assert_allclose(dot, fd, rtol=1e-4, atol=1e-9)


# ---- learner -------------------------------------------------------------------------------------
def test_learner_writes_the_free_state_back_and_reports_its_metrics():
    from ep_jax.learner import EPLearner

    energy = hopfield(SIZES)
    params, x, y = random_net(energy, batch=3)
    learner = EPLearner(energy, "ep", PHASES, optax.sgd(0.1), GradientDescent(0.5, 30, project="clip01"))
    state = learner.init(jax.random.PRNGKey(0), 6, jnp.float64)._replace(params=params)
    idx = jnp.asarray([4, 1, 2])
    new, metrics = learner.train_step(state, x, y, idx, jax.random.PRNGKey(1))
    free, _ = relax(energy, params, x, energy.zeros_state(x), solver=PHASES.free)
    for p, f in zip(new.particles, free):
        np.testing.assert_allclose(p[np.asarray(idx)], f, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(p[np.asarray([0, 3, 5])], 0.0)
    out, labels = np.asarray(free[-1]), np.asarray(y)
    np.testing.assert_allclose(metrics["cost"], np.mean(((out - np.eye(SIZES[-1])[labels]) ** 2).sum(-1)),
                               rtol=1e-10)
    np.testing.assert_allclose(metrics["error"], np.mean(out.argmax(-1) != labels))


# ---- training loop -------------------------------------------------------------------------------
class _Counter:
    """A learner stub: the state counts the steps taken, the metrics count them too."""

    def train_step(self, state, x, y, idx, key):
        return state + 1, {"n": jnp.ones((), jnp.float32), "x": jnp.sum(x)}


def test_epoch_batches_depend_on_the_epoch_and_padded_steps_are_skipped():
    from ep_jax.app.train import make_epoch_fns

    n_train, batch = 20, 4  # 5 batches in chunks of 3: one padded step
    batches, run_chunk, n_batches, length, n_chunks = make_epoch_fns(_Counter(), n_train, batch, 2)
    assert (n_batches, length * n_chunks) == (5, 6)
    key = jax.random.PRNGKey(0)
    idx0, valid = batches(key, 0)
    idx1, _ = batches(key, 1)
    assert not np.array_equal(np.asarray(idx0), np.asarray(idx1))
    for idx in (idx0, idx1):  # each epoch visits n_batches * batch distinct examples
        assert len(set(np.asarray(idx).reshape(-1, batch)[np.asarray(valid).reshape(-1)].ravel())) == 20
    X = jnp.arange(n_train, dtype=jnp.float32)[:, None]
    Y = jnp.zeros((n_train,), jnp.int32)
    ls, step, n = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), 0.0
    for c in range(n_chunks):
        ls, step, m = run_chunk(ls, step, X, Y, idx0[c], valid[c], key)
        n += float(m["n"])
    assert int(ls) == 5 and int(step) == 5 and n == 5.0


# ---- checkpoints ---------------------------------------------------------------------------------
def test_fingerprint_has_every_fingerprinted_field():
    from ep_jax.app.config import DEFAULT_PRESET, FINGERPRINT, get_preset

    fp = get_preset(DEFAULT_PRESET).fingerprint()
    assert set(FINGERPRINT) <= set(fp)
    assert "rule.beta" in fp


def test_restore_rejects_a_tree_of_other_shapes(tmp_path):
    from ep_jax.app import checkpoint

    tree = {"a": jnp.zeros((3,), jnp.float32), "b": jnp.ones((2, 2), jnp.float32)}
    checkpoint.save(tmp_path, 0, tree)
    got = checkpoint.restore(tmp_path, 0, tree)
    np.testing.assert_array_equal(got["b"], 1.0)
    # the check happens before orbax reads anything, and the message names the leaf and shapes
    # (without it orbax or the digest check would fail later, with a less useful message)
    with pytest.raises(checkpoint.CheckpointError, match=r"'a'.*\(3,\).*\(4,\)"):
        checkpoint.restore(tmp_path, 0, {"a": jnp.zeros((4,), jnp.float32), "b": tree["b"]})
    with pytest.raises(checkpoint.CheckpointError, match=r"'b'.*float32.*int32"):
        checkpoint.restore(tmp_path, 0, {"a": tree["a"], "b": jnp.ones((2, 2), jnp.int32)})

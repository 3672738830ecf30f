"""Holomorphic EP (exact gradients at finite |beta|) and vector-field EP (asymmetric weights)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.costs import SoftmaxReadout, cross_entropy, squared_error
from ep_jax.energies import (
    Hopfield, asymmetric_hopfield, conditional_gaussian, hopfield, restricted_hopfield,
    weight_alignment,
)
from ep_jax.exact import compare, implicit_gradient
from ep_jax.gradcheck import random_problem
from ep_jax.rules import RULES, Phases, ep_gradient, holomorphic_gradient
from ep_jax.solvers import GradientDescent, relax

SIZES = (6, 5, 4, 3)
TIGHT = GradientDescent(0.5, 20000, tol=1e-12)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _problem(energy, dtype=jnp.float64, seed=0):
    key = jax.random.split(jax.random.PRNGKey(seed))[0]
    return random_problem(energy, key, dtype=dtype, bias_range=(-0.2, 0.2))


def _exact(energy, params, x, y, cost):
    def exact(p):
        s, _ = relax(energy, p, x, energy.zeros_state(x), solver=TIGHT, cost=cost)
        return implicit_gradient(energy, p, x, y, s, cost=cost)[0]

    return jax.jit(exact)(params)


@pytest.fixture(scope="module")
def net():
    with jax.enable_x64(True):
        energy = restricted_hopfield(SIZES)
        params, x, y = _problem(energy)
        return energy, params, x, y, _exact(energy, params, x, y, cross_entropy)


_ERRORS = {}  # (points, radius) -> (rel_error, estimate): each compiled once per module


def _holo_error(net, points, radius):
    if (points, radius) not in _ERRORS:
        _ERRORS[points, radius] = _holo_run(net, points, radius)
    return _ERRORS[points, radius]


def _holo_run(net, points, radius):
    energy, params, x, y, g = net
    phases = Phases(beta=radius, free=TIGHT, nudged=TIGHT, cost=cross_entropy)
    est, res = jax.jit(lambda p: holomorphic_gradient(energy, p, x, y, phases=phases,
                                                      points=points))(params)
    assert bool(res.nudged_stats.converged), "every complex relaxation must meet the tolerance"
    return compare(est, g)["rel_error"], est


def test_exact_at_finite_beta_and_symmetric_ep_is_not(net):
    """|beta| = 0.5: 12 points reach 1e-6 of the implicit gradient; symmetric EP stays ~5e-3."""
    err, _ = _holo_error(net, 12, 0.5)
    assert err <= 1e-6
    energy, params, x, y, g = net
    phases = Phases(beta=0.5, free=TIGHT, nudged=TIGHT, cost=cross_entropy)
    sym, _ = ep_gradient(energy, params, x, y, phases=phases, variant="symmetric")
    assert compare(sym, g)["rel_error"] > 1000 * err


def test_error_falls_geometrically_with_points(net):
    """log10 error against N at |beta| = 0.5: a fitted slope well below zero; N = 2 is symmetric EP."""
    ns = [2, 4, 8, 12]
    errs = [_holo_error(net, n, 0.5)[0] for n in ns]
    slope = np.polyfit(ns, np.log10(errs), 1)[0]
    assert slope < -0.3, (slope, errs)
    energy, params, x, y, _ = net
    phases = Phases(beta=0.5, free=TIGHT, nudged=TIGHT, cost=cross_entropy)
    sym, _ = ep_gradient(energy, params, x, y, phases=phases, variant="symmetric")
    _, two = _holo_error(net, 2, 0.5)
    assert compare(two, sym)["rel_error"] < 1e-9


def test_jit_and_schedules_agree(net):
    energy, params, x, y, _ = net
    phases = Phases(beta=0.25, free=TIGHT, nudged=TIGHT, cost=cross_entropy)
    eager, res = holomorphic_gradient(energy, params, x, y, phases=phases, points=4)
    jitted, _ = jax.jit(lambda p: holomorphic_gradient(energy, p, x, y, phases=phases, points=4))(params)
    seq, _ = holomorphic_gradient(energy, params, x, y, phases=phases, points=4, schedule="sequential")
    assert compare(jitted, eager)["rel_error"] < 1e-12
    assert compare(seq, eager)["rel_error"] < 1e-9
    # The real nudged states handed back: beta = +r and (N even) -r, real-typed like the free state.
    assert all(v.dtype == jnp.float64 for v in jax.tree.leaves((res.nudged_state, res.second_state)))
    plus, _ = relax(energy, params, x, res.free_state, target=y, beta=0.25, cost=cross_entropy, solver=TIGHT)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(plus, res.nudged_state)) < 1e-10


def test_float32(net):
    energy, params64, x64, y, g = net
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params64)
    solver = GradientDescent(0.5, 5000, tol=1e-6)
    phases = Phases(beta=0.5, free=solver, nudged=solver, cost=cross_entropy)
    est, res = jax.jit(lambda p: holomorphic_gradient(
        energy, p, x64.astype(jnp.float32), y, phases=phases, points=8))(params)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(est))
    assert compare(jax.tree.map(lambda a: a.astype(jnp.float64), est), g)["rel_error"] < 1e-3


def test_squared_error_and_autodiff_energy():
    """Squared error (a small radius: with C = ||s - y||^2 the equilibrium's singularity sits near
    |beta| = 1/2) on an energy without closed forms (the complex autodiff defaults)."""
    for energy, radius, tol in ((conditional_gaussian(SIZES), 0.125, 1e-5),):
        params, x, y = _problem(energy)
        g = _exact(energy, params, x, y, squared_error)
        phases = Phases(beta=radius, free=TIGHT, nudged=TIGHT, cost=squared_error)
        est, _ = jax.jit(lambda p: holomorphic_gradient(energy, p, x, y, phases=phases, points=12))(params)
        assert compare(est, g)["rel_error"] < tol, type(energy).__name__


def test_complex_state_grad_is_the_holomorphic_derivative(net):
    energy, params, x, _, _ = net
    s = tuple(jax.random.normal(k, (5, n)) * (1 + 0.3j)
              for k, n in zip(jax.random.split(jax.random.PRNGKey(3), 3), SIZES[1:]))
    closed = jax.jit(lambda t: energy.state_grad(params, t, x))(s)
    auto = jax.jit(jax.grad(lambda t: jnp.sum(energy(params, t, x)), holomorphic=True))(s)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(closed, auto)) < 1e-12


@dataclasses.dataclass(frozen=True)
class _HeadHopfield(Hopfield):
    """A Hopfield net whose params also hold a readout ``head`` (read by the cost, not by E)."""

    def check_params(self, params):
        super().check_params({k: v for k, v in params.items() if k != "head"})

    def param_grad_difference(self, params, x, state_a, state_b, scale):
        g = super().param_grad_difference(params, x, state_a, state_b, scale)
        return {**g, "head": jax.tree.map(jnp.zeros_like, params["head"])}


def test_readout_cost_parameters():
    energy = _HeadHopfield(sizes=SIZES, activation="sigmoid", quadratic="state")
    params, x, y = _problem(energy)
    params["head"] = {"kernel": 0.5 * jax.random.normal(jax.random.PRNGKey(7), (3, 3)),
                      "bias": jnp.zeros(3)}
    cost = SoftmaxReadout(head="head")
    g = _exact(energy, params, x, y, cost)
    # The readout's scale brings the singularity closer than without it: |beta| = 0.25.
    phases = Phases(beta=0.25, free=TIGHT, nudged=TIGHT, cost=cost)
    est, _ = jax.jit(lambda p: holomorphic_gradient(energy, p, x, y, phases=phases, points=12))(params)
    assert compare(est["head"], g["head"])["rel_error"] < 1e-6
    assert compare(est, g)["rel_error"] < 1e-6


def test_refusals(net):
    energy, params, x, y, _ = net
    phases = Phases(beta=0.5, free=TIGHT, nudged=TIGHT, cost=cross_entropy)
    hard = hopfield(SIZES)
    assert energy.holomorphic and not hard.holomorphic
    with pytest.raises(ValueError, match="energy: ep-holomorphic needs a holomorphic energy"):
        holomorphic_gradient(hard, params, x, y, phases=phases)
    clip = phases._replace(nudged=TIGHT._replace(project="clip01"))
    with pytest.raises(ValueError, match="phases.nudged"):
        holomorphic_gradient(energy, params, x, y, phases=clip)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="points: expected an int >= 2"):
            holomorphic_gradient(energy, params, x, y, phases=phases, points=bad)
    with pytest.raises(ValueError, match="schedule"):
        holomorphic_gradient(energy, params, x, y, phases=phases, schedule="rotating")
    with pytest.raises(ValueError, match="beta: expected the radius"):
        holomorphic_gradient(energy, params, x, y, phases=phases, beta=0.0)
    with pytest.raises(ValueError, match="norm='out_ln'"):
        SoftmaxReadout(norm="out_ln")(jnp.ones((2, 3), jnp.complex128), jnp.zeros(2, jnp.int32),
                                      {"head": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}})
    assert RULES["ep-holomorphic"] is holomorphic_gradient


# ---- vector-field EP -----------------------------------------------------------------------

def _tied(params):
    out = {k: dict(v) for k, v in params.items()}
    for v in out.values():
        if "feedback" in v:
            v["feedback"] = v["kernel"].T
    return out


@pytest.mark.parametrize("update", ["shared", "separate"])
def test_vector_field_reduces_to_ep_with_tied_weights(update):
    vf, ep = asymmetric_hopfield(SIZES, update=update), restricted_hopfield(SIZES)
    params = _tied(vf.init_params(jax.random.PRNGKey(0), jnp.float64))
    plain = {k: {"kernel": v["kernel"], "bias": v["bias"]} for k, v in params.items()}
    _, x, y = _problem(ep)
    s = ep.feedforward_state(plain, x)
    assert all(bool(jnp.all(a == b)) for a, b in zip(vf.state_grad(params, s, x), ep.state_grad(plain, s, x)))
    assert float(jnp.max(jnp.abs(vf(params, s, x) - ep(plain, s, x)))) < 1e-12
    phases = Phases(beta=0.1, free=GradientDescent(0.5, 100), nudged=GradientDescent(0.5, 50))
    g_vf, _ = ep_gradient(vf, params, x, y, phases=phases, variant="symmetric")
    g_ep, _ = ep_gradient(ep, plain, x, y, phases=phases, variant="symmetric")
    for name, g in g_ep.items():
        np.testing.assert_allclose(g_vf[name]["bias"], g["bias"], atol=1e-14)
        if name == "layer_0":
            np.testing.assert_allclose(g_vf[name]["kernel"], g["kernel"], atol=1e-14)
        elif update == "shared":  # the same EP update on W and B^T
            np.testing.assert_allclose(g_vf[name]["kernel"], g["kernel"], atol=1e-14)
            np.testing.assert_allclose(g_vf[name]["feedback"], g["kernel"].T, atol=1e-14)
        else:  # each synapse its own share; the two add up to EP's update exactly
            total = g_vf[name]["kernel"] + g_vf[name]["feedback"].T
            np.testing.assert_allclose(total, g["kernel"], atol=1e-14)
            assert float(jnp.max(jnp.abs(g_vf[name]["kernel"] - g["kernel"]))) > 1e-6


def test_vector_field_dynamics_differ_when_asymmetric():
    vf = asymmetric_hopfield(SIZES)
    params = vf.init_params(jax.random.PRNGKey(0), jnp.float64)
    tied = _tied(params)
    _, x, _ = _problem(vf)
    s = vf.feedforward_state(params, x)
    diff = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(vf.state_grad(params, s, x), vf.state_grad(tied, s, x))]
    assert diff[0] > 1e-3 and diff[1] > 1e-3 and diff[2] == 0.0  # the output layer has no feedback
    # Not a gradient: the Jacobian of the field is not symmetric.
    flat = lambda t: jnp.concatenate([v[0] for v in t])  # noqa: E731
    unflat = lambda v: (v[None, :5], v[None, 5:9], v[None, 9:])  # noqa: E731
    jac = jax.jacobian(lambda v: flat(vf.state_grad(params, unflat(v), x[:1])))(flat(s))
    assert float(jnp.max(jnp.abs(jac - jac.T))) > 1e-3
    assert float(jnp.max(jnp.abs(jac - jac.T))) > 0
    bad = dict(params)
    bad["layer_1"] = {k: v for k, v in params["layer_1"].items() if k != "feedback"}
    with pytest.raises(ValueError, match="missing 'feedback'"):
        vf.check_params(bad)
    with pytest.raises(ValueError, match="update: expected one of"):
        asymmetric_hopfield(SIZES, update="kolen-pollack")


@pytest.mark.parametrize("update", ["shared", "separate"])
def test_vector_field_trains_and_aligns(update):
    """A few SGD steps on one batch: the cost falls and the measured angle between W and B^T
    shrinks (shared: W - B^T is invariant while both grow along the same updates)."""
    import optax

    from ep_jax.learner import EPLearner

    vf = asymmetric_hopfield((8, 16, 4), update=update)
    key = jax.random.PRNGKey(1)
    x = jax.random.uniform(key, (32, 8), jnp.float64)
    y = (jnp.arange(32) % 4).astype(jnp.int32)
    solver = GradientDescent(0.5, 60)
    learner = EPLearner(vf, "ep-symmetric", Phases(beta=0.2, free=solver, nudged=solver, cost=squared_error),
                        optax.sgd(0.5), eval_solver=solver, persistent=False)
    st = learner.init(jax.random.PRNGKey(0), 32, jnp.float64)
    params0 = learner.params(st)
    before = weight_alignment(params0)["layer_1"]
    step = jax.jit(learner.train_step)
    costs = []
    for i in range(60):
        st, metrics = step(st, x, y, jnp.arange(32), jax.random.PRNGKey(i))
        costs.append(float(metrics["cost"]))
    after = weight_alignment(learner.params(st))["layer_1"]
    assert costs[-1] < 0.8 * costs[0], costs[::10]
    assert after < before - 1.0, (before, after)

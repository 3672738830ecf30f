"""EP estimates against exact gradients (implicit differentiation and BPTT), float64."""

import json

import jax
import numpy as np
import pytest

from ep_jax.app.cli import main
from ep_jax.energies import conditional_gaussian, hopfield, restricted_hopfield
from ep_jax.exact import bptt_gradient, compare, implicit_gradient
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import GradientDescent, relax
from tests.conftest import assert_tree_close, random_net

TOL = 1e-12  # the relaxations are taken to this update norm (<= 1e-10 as required)


def tight(project):
    return GradientDescent(0.5, 20000, tol=TOL, project=project)


def setup_hopfield():
    energy = hopfield((6, 5, 4, 3))
    params, x, y = random_net(energy)
    return energy, params, x, y, "clip01", (0.0, 1.0)


def setup_restricted():
    energy = restricted_hopfield((6, 5, 4, 3), activation="sigmoid")
    params, x, y = random_net(energy, bias_range=(-0.2, 0.2))
    return energy, params, x, y, None, None


def exact(energy, params, x, y, project, bounds):
    s, st = relax(energy, params, x, energy.zeros_state(x), solver=tight(project))
    assert bool(st.converged)
    g, info = implicit_gradient(energy, params, x, y, s, bounds=bounds)
    assert float(info.stationarity) < 1e-10 and float(info.min_eigenvalue) > 0
    return g, info


def ep(energy, params, x, y, project, beta, rule, key=None):
    g, res = get_rule(rule)(energy, params, x, y, "zeros", phases=Phases(beta, tight(project), tight(project)), key=key)
    assert bool(res.free_stats.converged) and bool(res.nudged_stats.converged)
    return g, res


def test_symmetric_ep_matches_implicit_gradient_on_seed_energy():
    energy, params, x, y, project, bounds = setup_hopfield()
    g_exact, info = exact(energy, params, x, y, project, bounds)
    assert 0.3 < float(info.active_fraction) < 1.0  # some units saturated: the active set matters
    g_sym, _ = ep(energy, params, x, y, project, 1e-3, "ep-symmetric")
    g_one, _ = ep(energy, params, x, y, project, 1e-3, "ep")
    sym, one = compare(g_sym, g_exact), compare(g_one, g_exact)
    assert sym["rel_error"] <= 1e-4 and sym["cosine"] > 1 - 1e-8
    assert one["rel_error"] >= 10 * sym["rel_error"]


@pytest.mark.parametrize("setup", [setup_hopfield, setup_restricted])
def test_implicit_gradient_equals_bptt(setup):
    energy, params, x, y, project, bounds = setup()
    g_exact, _ = exact(energy, params, x, y, project, bounds)
    g_bptt = jax.jit(
        lambda p: bptt_gradient(energy, p, x, y, energy.zeros_state(x), solver=GradientDescent(0.5, 600, project=project))
    )(params)
    assert compare(g_bptt, g_exact)["rel_error"] < 1e-9


def test_bptt_approaches_implicit_as_steps_grow():
    energy, params, x, y, project, bounds = setup_restricted()
    g_exact, _ = exact(energy, params, x, y, project, bounds)
    errs = [
        compare(bptt_gradient(energy, params, x, y, energy.zeros_state(x), solver=GradientDescent(0.5, n)), g_exact)["rel_error"]
        for n in (5, 20, 80)
    ]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-6


@pytest.mark.slow
def test_error_slopes_one_sided_linear_symmetric_quadratic():
    """Over beta in [1e-3, 1e-1] the one-sided bias is O(beta), the symmetric one O(beta^2)."""
    energy, params, x, y, project, bounds = setup_restricted()
    g_exact, _ = exact(energy, params, x, y, project, bounds)
    betas = np.array([1e-1, 3e-2, 1e-2, 3e-3, 1e-3])
    err = {r: [] for r in ("ep", "ep-symmetric")}
    for beta in betas:
        for r in err:
            err[r].append(compare(ep(energy, params, x, y, project, float(beta), r)[0], g_exact)["rel_error"])
    slope_one = np.polyfit(np.log(betas), np.log(err["ep"]), 1)[0]
    slope_sym = np.polyfit(np.log(betas), np.log(err["ep-symmetric"]), 1)[0]
    assert 0.9 < slope_one < 1.1, (slope_one, err)
    assert 1.8 < slope_sym < 2.2, (slope_sym, err)


def test_random_sign_uses_the_drawn_sign():
    energy, params, x, y, project, _ = setup_restricted()
    signs = set()
    for i in range(6):
        key = jax.random.PRNGKey(i)
        g, res = ep(energy, params, x, y, project, 1e-2, "ep-random-sign", key=key)
        b = float(res.beta)
        signs.add(np.sign(b))
        g_ref, _ = get_rule("ep")(energy, params, x, y, "zeros", phases=Phases(abs(b), tight(project), tight(project)))
        if b > 0:
            assert_tree_close(g, g_ref, rtol=1e-9, atol=1e-12)
        else:  # -beta one-sided: bias of opposite sign, same gradient to first order
            assert compare(g, g_ref)["cosine"] > 0.999
    assert signs == {-1.0, 1.0}


def test_conditional_gaussian_ep_matches_implicit():
    energy = conditional_gaussian((6, 5, 3), activation="tanh")
    params, x, y = random_net(energy, bias_range=(-0.2, 0.2))
    s0 = energy.init_state(params, x, "feedforward")
    g_exact, info = implicit_gradient(energy, params, x, y, s0)
    solver = GradientDescent(0.2, 20000, tol=TOL)
    g, _ = get_rule("ep-symmetric")(energy, params, x, y, "feedforward", phases=Phases(1e-3, solver, solver))
    assert compare(g, g_exact)["rel_error"] < 1e-4


@pytest.mark.parametrize("rule,bound", [("ep-symmetric", 1e-4), ("ep", None)])
def test_gradcheck_cli(capsys, rule, bound):
    assert main(["gradcheck", "--energy", "hopfield", "--rule", rule, "--beta", "1e-3", "--x64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dtype"] == "float64" and out["rule"] == rule
    assert out["bptt_vs_implicit_rel_error"] < 1e-8
    if bound is not None:
        assert out["rel_error"] <= bound and out["rel_error_bptt"] <= bound and out["cosine"] > 0.9999
    else:  # one-sided: at least 10x the symmetric error (~5e-6 here)
        assert out["rel_error"] > 1e-4 and out["cosine"] > 0.999

"""Solvers' ``unroll``: k steps per rolled loop iteration give the same states and the same
``RelaxStats`` (every field) as unroll=1, with and without a tolerance, for dense and conv
energies; bad values are refused; a full unroll leaves no loop in the compiled relaxation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.energies import conv_hopfield, hopfield
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent, OptaxSolver, iterate, relax
from tests.conftest import random_net

UNROLLS = (1, 3, 7)
MAX_STEPS = 11  # not a multiple of 3 or 7


def run_all(energy, params, x, y, make_solver):
    """``(state, stats)`` for every unroll in UNROLLS (one jit each), free and nudged."""
    out = []
    for u in UNROLLS:
        solver = make_solver(u)
        out.append(jax.jit(lambda p: relax(energy, p, x, "zeros", target=y, beta=0.5,
                                            solver=solver))(params))
    return out


# XLA may contract a multiply-add into an FMA differently in an unrolled body: float64 values
# agree to a few ulps, not bit for bit; the counts and flags are equal.
FLOAT_RTOL = 1e-13


def assert_identical(runs):
    (s1, st1), rest = runs[0], runs[1:]
    for u, (s, st) in zip(UNROLLS[1:], rest):
        for field in st1._fields:
            a, b = np.asarray(getattr(st, field)), np.asarray(getattr(st1, field))
            if field in ("residual", "energy"):
                np.testing.assert_allclose(a, b, rtol=FLOAT_RTOL, err_msg=f"unroll={u}: {field}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"unroll={u}: RelaxStats.{field}")
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s1)):
            np.testing.assert_allclose(a, b, rtol=FLOAT_RTOL, atol=1e-15, err_msg=f"unroll={u}: state")


def dense():
    energy = hopfield((6, 9, 7, 4))
    params, x, y = random_net(energy, batch=5)
    return energy, params, x, y


def conv():
    energy = conv_hopfield((8, 8, 3), [(4, 3, 1, 1, 2), (6, 3, 1, 0, 2)], dense=(4,))
    params, x, y = random_net(energy, batch=3)
    return energy, params, x, y


@pytest.mark.parametrize("net,kind", [(dense, "fixed-point-sync"), (dense, "gradient-descent"),
                                      (conv, "fixed-point-async")])
def test_unroll_gives_the_same_states_and_stats(net, kind):
    energy, params, x, y = net()
    if kind == "gradient-descent":  # no box: no first step outside the loop, growth detected
        make = lambda u, tol, n: GradientDescent(0.2, n, tol=tol, unroll=u)  # noqa: E731
    else:  # in-box: the first sweep runs outside the loop
        order = "asynchronous" if kind.endswith("async") else "synchronous"
        make = lambda u, tol, n: FixedPoint(n, tol=tol, order=order, unroll=u)  # noqa: E731
    # fixed steps
    assert_identical(run_all(energy, params, x, y, lambda u: make(u, None, MAX_STEPS)))
    # a tolerance met inside an unrolled block (not at a multiple of 3 or 7)
    runs = run_all(energy, params, x, y, lambda u: make(u, 1e-4, 200))
    steps = int(runs[0][1].steps)
    assert runs[0][1].converged and steps < 200, (steps, runs[0][1].residual)
    assert_identical(runs)


def test_unroll_keeps_divergence_flags_and_optax_state():
    energy, params, x, y = dense()
    # too large a step without projection: the update norm grows on every step; the loop runs
    # to its cap (61, not a multiple of 3 or 7: the last block is cut short) and flags it
    runs = run_all(energy, params, x, y, lambda u: GradientDescent(9.0, 61, tol=1e-8, unroll=u))
    st = runs[0][1]
    assert bool(st.unbounded) and int(st.steps) == 61 and not st.converged, st
    assert_identical(runs)
    sgd = optax.sgd(0.3, momentum=0.5)  # a solver state (the momentum) carried through the block
    assert_identical(run_all(energy, params, x, y,
                             lambda u: OptaxSolver(sgd, 40, tol=1e-5, unroll=u)))


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, None])
def test_bad_unroll_is_refused(bad):
    energy, params, x, _ = dense()
    for solver in (FixedPoint(5, unroll=bad), GradientDescent(0.5, 5, unroll=bad)):
        with pytest.raises(ValueError, match=r"unroll: expected an int >= 1.*received"):
            relax(energy, params, x, "zeros", solver=solver)
    with pytest.raises(ValueError, match="unroll"):
        iterate(lambda c: c, jnp.zeros((2, 3)), 4, unroll=bad)


def test_full_unroll_leaves_no_loop_and_the_same_ep_gradient():
    energy, params, x, y = dense()

    def lowered(u, tol=None):
        solver = FixedPoint(6, tol=tol, unroll=u)
        return jax.jit(lambda p: relax(energy, p, x, "zeros", solver=solver)).lower(params).as_text()

    assert "while" in lowered(1)
    assert "while" not in lowered(6)
    assert "while" in lowered(6, tol=1e-6)  # a tolerance keeps its while_loop (k steps a turn)
    rule = get_rule("ep-symmetric")
    grads = [rule(energy, params, x, y, "zeros",
                  phases=Phases(0.5, free=FixedPoint(12, unroll=u), nudged=FixedPoint(4, unroll=u)))[0]
             for u in (1, 12)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=FLOAT_RTOL, atol=1e-15)


def test_seed000_rules_refuse_a_non_layered_energy():
    energy = conv_hopfield((8, 8, 3), [(4, 3, 1, 1, 2)], dense=(4,))
    params, x, y = {}, jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)  # refused before use
    for name in ("seed000-ep", "seed000-chl", "seed000-first-step", "seed000-pc-nudge"):
        with pytest.raises(ValueError, match=r"energy: seed 000's rules .*LayeredEnergy.*ConvHopfield"):
            get_rule(name)(energy, params, x, y, "zeros", phases=Phases(0.5))

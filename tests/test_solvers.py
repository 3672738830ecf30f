import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.energies import conditional_gaussian, hopfield, restricted_hopfield
from ep_jax.solvers import FixedPoint, GradientDescent, RelaxationError, check_stats, relax
from tests.conftest import assert_tree_close, random_net

TIGHT = GradientDescent(0.5, 5000, tol=1e-13, project="clip01")


@pytest.fixture
def net():
    energy = hopfield((6, 5, 4, 3))
    params, x, y = random_net(energy)
    return energy, params, x, y


def test_tolerance_stopping_and_stats(net):
    energy, params, x, y = net
    s, st = relax(energy, params, x, energy.zeros_state(x), solver=TIGHT)
    assert bool(st.converged) and not bool(st.nonfinite)
    assert 10 < int(st.steps) < 5000 and float(st.residual) <= 1e-13
    grads = jax.grad(lambda s: jnp.sum(energy(params, s, x)))(s)
    for si, gi in zip(s, grads):  # stationary on units strictly inside the box
        inside = (si > 0) & (si < 1)
        assert float(jnp.max(jnp.abs(jnp.where(inside, gi, 0.0)))) < 1e-11
    np.testing.assert_allclose(st.energy, jnp.mean(energy(params, s, x)), rtol=1e-14)
    # a cap that is too small is reported, not hidden
    _, st2 = relax(energy, params, x, energy.zeros_state(x), solver=TIGHT._replace(max_steps=3))
    assert int(st2.steps) == 3 and not bool(st2.converged)
    with pytest.raises(RelaxationError, match="did not reach its tolerance"):
        check_stats(st2, require_converged=True)


def test_fixed_steps_match_manual_loop(net):
    energy, params, x, _ = net
    solver = GradientDescent(0.3, 7, project="clip01")
    s, st = relax(energy, params, x, energy.zeros_state(x), solver=solver)
    m = energy.zeros_state(x)
    for _ in range(7):
        g = jax.grad(lambda v: jnp.sum(energy(params, v, x)))(m)
        m = tuple(jnp.clip(a - 0.3 * b, 0, 1) for a, b in zip(m, g))
    assert_tree_close(s, m, rtol=1e-13, atol=1e-15)
    assert int(st.steps) == 7


@pytest.mark.parametrize("order", ["synchronous", "asynchronous"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_fixed_point_sweeps_reach_the_gradient_descent_equilibrium(net, order, beta):
    energy, params, x, y = net
    target = y if beta else None
    s_gd, _ = relax(energy, params, x, energy.zeros_state(x), target=target, beta=beta, solver=TIGHT)
    s_fp, st = relax(
        energy, params, x, energy.zeros_state(x), target=target, beta=beta,
        solver=FixedPoint(2000, tol=1e-13, order=order),
    )
    assert bool(st.converged)
    assert_tree_close(s_fp, s_gd, rtol=0, atol=1e-10)


def test_asynchronous_sweep_converges_in_fewer_steps(net):
    energy, params, x, _ = net
    s0 = energy.zeros_state(x)
    _, sync = relax(energy, params, x, s0, solver=FixedPoint(2000, tol=1e-12))
    _, asyn = relax(energy, params, x, s0, solver=FixedPoint(2000, tol=1e-12, order="asynchronous"))
    assert int(asyn.steps) < int(sync.steps)


def test_fixed_point_requires_a_fixed_point_form():
    energy = restricted_hopfield((4, 3, 2))
    params, x, _ = random_net(energy)
    with pytest.raises(NotImplementedError, match="no fixed-point form"):
        relax(energy, params, x, energy.zeros_state(x), solver=FixedPoint(3))


def test_conditional_gaussian_feedforward_init_is_the_free_equilibrium():
    energy = conditional_gaussian((6, 5, 3))
    params, x, _ = random_net(energy, bias_range=(-0.2, 0.2))
    s0 = energy.init_state(params, x, "feedforward")
    s, st = relax(energy, params, x, s0, solver=GradientDescent(0.1, 100, tol=1e-14))
    assert int(st.steps) == 1 and float(st.residual) == 0.0
    assert_tree_close(s, s0, rtol=0, atol=0)


@pytest.mark.parametrize("fixed", [True, False])
def test_divergence_is_reported(fixed):
    energy = restricted_hopfield((6, 5, 3), activation="sigmoid")
    params, x, _ = random_net(energy)
    solver = GradientDescent(50.0, 500, tol=None if fixed else 1e-8)
    s, st = relax(energy, params, x, energy.zeros_state(x) , solver=solver)
    assert bool(st.nonfinite) and not bool(st.converged)
    if not fixed:
        assert int(st.steps) < 500  # the loop stopped at the first non-finite step
    with pytest.raises(RelaxationError, match="diverged"):
        check_stats(st)


def test_bad_solver_arguments(net):
    energy, params, x, y = net
    s0 = energy.zeros_state(x)
    with pytest.raises(ValueError, match="step_size: expected > 0, received -1"):
        relax(energy, params, x, s0, solver=GradientDescent(-1.0))
    with pytest.raises(ValueError, match="project: expected one of"):
        relax(energy, params, x, s0, solver=GradientDescent(project="clip"))
    with pytest.raises(ValueError, match="order: expected 'synchronous' or 'asynchronous'"):
        relax(energy, params, x, s0, solver=FixedPoint(order="random"))
    with pytest.raises(ValueError, match=r"target: expected batch size 5 \(as x\), received 4"):
        relax(energy, params, x, s0, target=y[:4], beta=0.1)
    with pytest.raises(ValueError, match=r"state\[0\] \(layer 1\): expected shape \(5, 5\)"):
        relax(energy, params, x, (s0[0][:, :4],) + s0[1:])


class JitVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_relax_same_with_and_without_jit(self):
        energy = hopfield((6, 5, 4, 3))
        params, x, y = random_net(energy)
        for solver in (TIGHT, GradientDescent(0.5, 12, project="clip01"), FixedPoint(30, order="asynchronous")):
            fn = self.variant(lambda p, x, y: relax(energy, p, x, energy.zeros_state(x), target=y, beta=0.2, solver=solver))
            s, st = fn(params, x, y)
            s_ref, st_ref = relax(energy, params, x, energy.zeros_state(x), target=y, beta=0.2, solver=solver)
            assert_tree_close(s, s_ref, rtol=1e-12, atol=1e-14)
            assert int(st.steps) == int(st_ref.steps)


def test_vmap_per_example_equals_batched(net):
    energy, params, x, y = net
    solver = GradientDescent(0.5, 15, project="clip01")
    s_b, _ = relax(energy, params, x, energy.zeros_state(x), target=y, beta=0.5, solver=solver)

    def one(xi, yi):
        s, st = relax(energy, params, xi[None], energy.zeros_state(xi[None]), target=yi[None], beta=0.5, solver=solver)
        return tuple(v[0] for v in s), st

    s_v, st_v = jax.vmap(one)(x, y)
    assert st_v.steps.shape == (5,)
    assert_tree_close(s_v, s_b, rtol=1e-12, atol=1e-14)
    # tolerance-stopped relaxation under vmap: each example stops on its own criterion
    s_t, st_t = jax.vmap(lambda xi: relax(energy, params, xi[None], energy.zeros_state(xi[None]), solver=TIGHT))(x)
    s_tb, _ = relax(energy, params, x, energy.zeros_state(x), solver=TIGHT)
    assert bool(jnp.all(st_t.converged))
    assert_tree_close(tuple(v[:, 0] for v in s_t), s_tb, rtol=0, atol=1e-11)


def test_same_seed_same_numbers():
    def run():
        energy = hopfield((8, 6, 3))
        params = energy.init_params(jax.random.PRNGKey(7))
        x = jax.random.uniform(jax.random.PRNGKey(8), (4, 8), jnp.float32)
        return relax(energy, params, x, energy.zeros_state(x), solver=GradientDescent(0.5, 20, project="clip01"))[0]

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_float32_stays_float32_under_strict_promotion():
    energy = hopfield((6, 5, 3))
    params, x, y = random_net(energy, dtype=jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        for solver in (GradientDescent(0.5, 5, project="clip01"), GradientDescent(0.5, 50, tol=1e-5), FixedPoint(5, order="asynchronous")):
            s, st = relax(energy, params, x, energy.zeros_state(x), target=y, beta=0.5, solver=solver)
            assert all(v.dtype == jnp.float32 for v in s)
            assert st.energy.dtype == jnp.float32 and st.residual.dtype == jnp.float32

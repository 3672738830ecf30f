"""Property-based tests (hypothesis) of energies, costs and solvers on random small nets:
F = E + beta C exactly (F = E at beta = 0); a small gradient step lowers F; the fixed points of
the fixed-point sweep are stationary points of F on the box [0, 1]; costs are non-negative and
vanish exactly at the target; the update norm is a norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ep_jax import (
    FixedPoint,
    GradientDescent,
    SoftmaxReadout,
    conditional_gaussian,
    cross_entropy,
    hopfield,
    relax,
    restricted_hopfield,
    squared_error,
    total_energy,
)
from ep_jax.solvers import update_norm

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
sizes = st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple)
seeds = st.integers(0, 2**16)
energies = st.sampled_from(["hopfield", "restricted", "gaussian"])


def _problem(kind, sz, seed, batch=3):
    energy = {"hopfield": lambda s: hopfield(s), "restricted": lambda s: restricted_hopfield(s),
              "gaussian": lambda s: conditional_gaussian(s)}[kind](sz)
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = energy.init_params(k[0], jnp.float64)
    x = jax.random.uniform(k[1], (batch, sz[0]), jnp.float64)
    state = tuple(jax.random.uniform(kk, (batch, n), jnp.float64)
                  for kk, n in zip(jax.random.split(k[2], len(sz) - 1), sz[1:]))
    y = jax.random.randint(k[3], (batch,), 0, sz[-1])
    return energy, params, x, state, y


@SETTINGS
@given(energies, sizes, seeds, st.floats(-2.0, 2.0))
def test_total_energy_is_energy_plus_beta_cost(kind, sz, seed, beta):
    energy, params, x, state, y = _problem(kind, sz, seed)
    e = energy(params, state, x)
    np.testing.assert_array_equal(total_energy(energy, params, state, x, y, 0.0), e)
    f = total_energy(energy, params, state, x, y, beta)
    np.testing.assert_allclose(f, e + beta * squared_error(state[-1], y), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.sampled_from(["restricted", "gaussian"]), sizes, seeds, st.floats(0.0, 1.0))
def test_a_small_gradient_step_lowers_the_total_energy(kind, sz, seed, beta):
    energy, params, x, state, y = _problem(kind, sz, seed)
    f0 = jnp.sum(total_energy(energy, params, state, x, y, beta))
    s1, _ = relax(energy, params, x, state, target=y, beta=beta, solver=GradientDescent(1e-3, 1))
    f1 = jnp.sum(total_energy(energy, params, s1, x, y, beta))
    g = jax.grad(lambda s: jnp.sum(total_energy(energy, params, s, x, y, beta)))(state)
    gnorm2 = sum(float(jnp.sum(v * v)) for v in g)
    # first-order decrease: F(s - eps g) = F(s) - eps |g|^2 + O(eps^2)
    assert float(f1) <= float(f0) - 0.5e-3 * gnorm2 + 1e-12


@SETTINGS
@given(sizes, seeds, st.floats(0.0, 1.0), st.sampled_from(["synchronous", "asynchronous"]))
def test_fixed_points_of_the_sweep_are_stationary_on_the_box(sz, seed, beta, order):
    energy, params, x, _, y = _problem("hopfield", sz, seed)
    params = jax.tree.map(lambda a: 0.3 * a, params)  # contractive sweep
    s, stats = relax(energy, params, x, "zeros", target=y, beta=beta,
                     solver=FixedPoint(2000, tol=1e-13, order=order))
    assert bool(stats.converged)
    g = jax.grad(lambda s: jnp.sum(total_energy(energy, params, s, x, y, beta)))(s)
    for sl, gl in zip(s, g):
        sl, gl = np.asarray(sl), np.asarray(gl)
        inside = (sl > 1e-9) & (sl < 1 - 1e-9)
        assert np.all(np.abs(gl[inside]) < 1e-8)          # interior: dF/ds = 0
        assert np.all(gl[sl <= 1e-9] >= -1e-8)             # at 0: F grows inward
        assert np.all(gl[sl >= 1 - 1e-9] <= 1e-8)          # at 1: F grows inward


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 5), seeds)
def test_costs_are_nonnegative_and_vanish_at_the_target(batch, n, seed):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    out = jax.random.normal(k1, (batch, n), jnp.float64)
    y = jax.random.randint(k2, (batch,), 0, n)
    assert bool(jnp.all(squared_error(out, y) >= 0)) and bool(jnp.all(cross_entropy(out, y) >= 0))
    np.testing.assert_array_equal(squared_error(jax.nn.one_hot(y, n, dtype=jnp.float64), y), 0.0)
    head = {"head": {"kernel": jax.random.normal(k3, (n, n), jnp.float64),
                     "bias": jnp.zeros((n,), jnp.float64)}}
    logits = out @ head["head"]["kernel"]
    np.testing.assert_allclose(SoftmaxReadout()(out, y, head), cross_entropy(logits, y), rtol=1e-12)


@SETTINGS
@given(energies, sizes, seeds)
def test_update_norm_is_a_norm_of_the_difference(kind, sz, seed):
    energy, params, x, a, _ = _problem(kind, sz, seed)
    b = energy.zeros_state(x)
    assert float(update_norm(a, a)) == 0.0
    assert float(update_norm(a, b)) == float(update_norm(b, a))
    per_example = np.sqrt(sum(np.sum(np.asarray(u) ** 2, axis=-1) for u in a))
    np.testing.assert_allclose(float(update_norm(a, b)), per_example.max(), rtol=1e-12)

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.activations import hard_sigmoid
from ep_jax.costs import cross_entropy, squared_error, total_energy
from ep_jax.energies import conditional_gaussian, hopfield, make_energy, restricted_hopfield
from tests.conftest import random_net


def numpy_hopfield(params, state, x, quadratic, rho):
    layers = [np.asarray(x)] + [np.asarray(s) for s in state]
    r = [rho(l) for l in layers]
    q = r if quadratic == "activity" else layers
    e = 0.5 * sum((v**2).sum(1) for v in q)
    for l in range(len(layers) - 1):
        W = np.asarray(params[f"layer_{l}"]["kernel"])
        b = np.asarray(params[f"layer_{l}"]["bias"])
        e -= r[l + 1] @ b + ((r[l] @ W) * r[l + 1]).sum(1)
    return e


def test_hard_sigmoid_passes_full_gradient_on_closed_interval():
    g = jax.vmap(jax.grad(hard_sigmoid))(jnp.array([-0.5, 0.0, 0.5, 1.0, 1.5]))
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("quadratic", ["activity", "state"])
def test_hopfield_matches_equation(quadratic):
    energy = hopfield((7, 5, 4, 3), quadratic=quadratic)
    params, x, _ = random_net(energy, weight_scale=1.0)
    state = tuple(
        jax.random.uniform(jax.random.PRNGKey(i), (5, n), jnp.float64, -0.3, 1.3)
        for i, n in enumerate(energy.sizes[1:])
    )
    got = energy(params, state, x)
    assert got.shape == (5,)
    want = numpy_hopfield(params, state, x, quadratic, lambda s: np.clip(s, 0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_restricted_hopfield_is_hopfield_with_state_quadratic():
    a = restricted_hopfield((4, 3, 2), activation="tanh")
    assert a.quadratic == "state" and a.activation == ("tanh",) * 3


def test_conditional_gaussian_is_zero_at_feedforward_state():
    energy = conditional_gaussian((6, 5, 3))
    params, x, _ = random_net(energy, bias_range=(-0.2, 0.2))
    s = energy.init_state(params, x, "feedforward")
    np.testing.assert_allclose(energy(params, s, x), 0.0, atol=1e-14)
    perturbed = (s[0] + 0.1, s[1])
    assert np.all(energy(params, perturbed, x) > 0)


def test_costs_and_total_energy():
    out = jnp.array([[0.2, 0.9], [0.6, 0.1]])
    y = jnp.array([1, 0])
    np.testing.assert_allclose(squared_error(out, y), [0.04 + 0.01, 0.16 + 0.01])
    np.testing.assert_allclose(squared_error(out, jax.nn.one_hot(y, 2, dtype=out.dtype)), squared_error(out, y))
    np.testing.assert_allclose(cross_entropy(out, y), -jax.nn.log_softmax(out)[jnp.arange(2), y])
    energy = hopfield((3, 2))
    params, x, _ = random_net(energy, batch=2)
    f = total_energy(energy, params, (out,), x, y, 0.5)
    np.testing.assert_allclose(f, energy(params, (out,), x) + 0.5 * squared_error(out, y))


def test_init_params_glorot_and_deterministic():
    energy = hopfield((784, 500, 10))
    p1 = energy.init_params(jax.random.PRNGKey(3))
    p2 = energy.init_params(jax.random.PRNGKey(3))
    for l, (a, b) in enumerate([(784, 500), (500, 10)]):
        k = p1[f"layer_{l}"]["kernel"]
        assert k.shape == (a, b) and k.dtype == jnp.float32
        bound = np.sqrt(6 / (a + b))
        assert float(jnp.max(jnp.abs(k))) <= bound and float(jnp.max(jnp.abs(k))) > 0.95 * bound
        np.testing.assert_array_equal(p1[f"layer_{l}"]["bias"], 0.0)
        np.testing.assert_array_equal(k, p2[f"layer_{l}"]["kernel"])


def test_wrong_shapes_name_layer_expected_and_received():
    energy = hopfield((6, 5, 3))
    params, x, _ = random_net(energy)
    bad = {**params, "layer_1": {**params["layer_1"], "kernel": jnp.zeros((4, 3))}}
    with pytest.raises(ValueError, match=r"layer_1.*kernel.*expected shape \(5, 3\), received \(4, 3\)"):
        energy.check_params(bad)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 6\), received \(5, 7\)"):
        energy.check_inputs(params, None, jnp.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"state\[1\] \(layer 2\): expected shape \(5, 3\), received \(5, 4\)"):
        energy.check_inputs(params, (jnp.zeros((5, 5)), jnp.zeros((5, 4))), x)
    with pytest.raises(ValueError, match=r"x: expected dtype float64.*received float32"):
        energy.check_inputs(params, None, x.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"expected layers \['layer_0', 'layer_1'\]"):
        energy.check_params({"layer_0": params["layer_0"]})


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation: expected one of"):
        hopfield((3, 2), activation="softsign")
    with pytest.raises(ValueError, match="sizes"):
        hopfield((3,))
    with pytest.raises(ValueError, match="energy: expected one of"):
        make_energy("boltzmann", (3, 2))
    with pytest.raises(ValueError, match="activation: expected one name or 3 names"):
        hopfield((3, 2, 2), activation=("sigmoid", "tanh"))


def test_bad_target_shape():
    out = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"target: expected dense targets of shape \(batch, 3\), received shape \(4, 2\)"):
        squared_error(out, jnp.zeros((4, 2)))


@pytest.mark.parametrize(
    "energy",
    [hopfield((6, 5, 4, 3)), hopfield((6, 5, 4, 3), quadratic="state", activation="tanh"), conditional_gaussian((6, 5, 3))],
    ids=["hopfield", "restricted", "conditional_gaussian"],
)
def test_param_grad_difference_equals_autodiff(energy):
    from ep_jax.energies.layered import LayeredEnergy

    params, x, _ = random_net(energy)
    sa = tuple(jax.random.uniform(jax.random.PRNGKey(i), (5, n), jnp.float64) for i, n in enumerate(energy.sizes[1:]))
    sb = tuple(jax.random.uniform(jax.random.PRNGKey(10 + i), (5, n), jnp.float64) for i, n in enumerate(energy.sizes[1:]))
    got = energy.param_grad_difference(params, x, sa, sb, 2.5)
    want = LayeredEnergy.param_grad_difference(energy, params, x, sa, sb, 2.5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert jax.tree.structure(got) == jax.tree.structure(params)

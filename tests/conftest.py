"""Test set-up: float64 available everywhere (tests pick the dtype explicitly), shared nets."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


def random_net(energy, seed=0, dtype=jnp.float64, batch=5, weight_scale=0.5, bias_range=(0.3, 0.7)):
    """Params, inputs in [0, 1] and labels for ``energy`` with units mostly unsaturated."""
    k_p, k_b, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = energy.init_params(k_p, dtype)
    keys = jax.random.split(k_b, len(params))
    params = {
        name: {
            "kernel": weight_scale * p["kernel"],
            "bias": jax.random.uniform(k, p["bias"].shape, dtype, *bias_range),
        }
        for k, (name, p) in zip(keys, sorted(params.items()))
    }
    x = jax.random.uniform(k_x, (batch, energy.sizes[0]), dtype)
    y = jax.random.randint(k_y, (batch,), 0, energy.sizes[-1])
    return params, x, y


def assert_tree_close(a, b, rtol, atol=0.0):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

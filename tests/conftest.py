"""Test set-up: float64 available everywhere (tests pick the dtype explicitly), shared nets."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.gradcheck import random_problem

jax.config.update("jax_enable_x64", True)


def random_net(energy, seed=0, dtype=jnp.float64, batch=5, weight_scale=0.5, bias_range=(0.3, 0.7)):
    """Params, inputs in [0, 1] and labels for ``energy`` with units mostly unsaturated."""
    return random_problem(
        energy, jax.random.PRNGKey(seed), batch=batch, dtype=dtype, weight_scale=weight_scale,
        bias_range=bias_range,
    )


def assert_tree_close(a, b, rtol, atol=0.0):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

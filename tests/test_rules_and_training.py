import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.app.cli import main
from ep_jax.energies import hopfield
from ep_jax.optim import per_layer_sgd
from ep_jax.rules import RULES, Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent
from ep_jax.app.config import get_preset
from ep_jax.app.train import train
from tests.conftest import assert_tree_close, random_net


@pytest.fixture
def net():
    energy = hopfield((6, 5, 4, 3))
    params, x, y = random_net(energy)
    return energy, params, x, y


class RuleJitVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_rules_same_with_and_without_jit(self):
        energy = hopfield((6, 5, 4, 3))
        params, x, y = random_net(energy)
        phases = Phases(0.5, GradientDescent(0.5, 20, project="clip01"), FixedPoint(4, order="asynchronous"))
        key = jax.random.PRNGKey(0)
        for name, rule in RULES.items():
            if name in ("seed000-first-step", "ep-holomorphic"):  # equal layer sizes; a holomorphic
                continue  # energy (ep-holomorphic's jit check: tests/test_holomorphic.py)
            g, res = self.variant(lambda p: rule(energy, p, x, y, "zeros", phases=phases, key=key))(params)
            g_ref, res_ref = rule(energy, params, x, y, "zeros", phases=phases, key=key)
            assert_tree_close(g, g_ref, rtol=1e-10, atol=1e-13)
            chex.assert_trees_all_equal_shapes(g, params)
            assert float(res.beta) == float(res_ref.beta)


def test_persistent_state_is_used(net):
    energy, params, x, y = net
    phases = Phases(0.5, GradientDescent(0.5, 1, project="clip01"), GradientDescent(0.5, 1, project="clip01"))
    particles = tuple(jnp.full_like(s, 0.5) for s in energy.zeros_state(x))
    _, a = get_rule("ep")(energy, params, x, y, particles, phases=phases)
    _, b = get_rule("ep")(energy, params, x, y, "zeros", phases=phases)
    assert not np.allclose(a.free_state[0], b.free_state[0])


def test_rule_argument_errors(net):
    energy, params, x, y = net
    with pytest.raises(ValueError, match="key: expected a PRNG key"):
        get_rule("ep-random-sign")(energy, params, x, y)
    with pytest.raises(ValueError, match=r"beta: expected > 0 .* received -0.1"):
        get_rule("ep")(energy, params, x, y, phases=Phases(beta=-0.1))
    with pytest.raises(ValueError, match="rule: expected one of"):
        get_rule("backprop")
    with pytest.raises(ValueError, match="init: expected 'zeros', 'feedforward' or a state"):
        get_rule("ep")(energy, params, x, y, "ones")


def test_per_layer_learning_rates(net):
    _, params, _, _ = net
    grads = jax.tree.map(jnp.ones_like, params)
    tx = per_layer_sgd([0.1, 0.05, 0.01])
    updates, _ = tx.update(grads, tx.init(params), params)
    for l, a in enumerate([0.1, 0.05, 0.01]):
        np.testing.assert_allclose(updates[f"layer_{l}"]["kernel"], -a)
        np.testing.assert_allclose(updates[f"layer_{l}"]["bias"], -a)
    with pytest.raises(ValueError, match="rates: expected one learning rate per layer"):
        bad = per_layer_sgd([0.1])
        bad.init(params)


def test_ep_descends_the_cost(net):
    """A few EP steps with optax lower the mean cost at the free equilibrium."""
    energy, params, x, y = net
    solver = GradientDescent(0.5, 200, tol=1e-10, project="clip01")
    phases = Phases(0.05, solver, solver)
    from ep_jax.costs import squared_error
    from ep_jax.solvers import relax

    def loss(p):
        s, _ = relax(energy, p, x, energy.zeros_state(x), solver=solver)
        return float(jnp.mean(squared_error(s[-1], y)))

    tx = optax.sgd(0.2)
    opt = tx.init(params)
    before = loss(params)
    step = jax.jit(lambda p, o: (lambda g: tx.update(g, o, p))(get_rule("ep-symmetric")(energy, p, x, y, phases=phases)[0]))
    for _ in range(10):
        upd, opt = step(params, opt)
        params = optax.apply_updates(params, upd)
    assert loss(params) < 0.8 * before


def test_xor_preset_solves_xor_and_is_deterministic():
    cfg = get_preset("xor")
    a, b = train(cfg, quiet=True), train(cfg, quiet=True)
    assert a["test_error"] == 0.0
    for u, v in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])):
        np.testing.assert_array_equal(u, v)


def test_cli_train_prints_the_final_error_and_the_plots(capsys, tmp_path):
    assert main(["train", "--preset", "xor", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "xor: test error 0.00%" in out
    assert f"plot: {tmp_path / 'curves.png'}" in out

"""The relaxation's fast path: closed-form state gradients, the shared input drive, the in-box
loop body, and what XLA makes of them (one input product per training step, none in loops)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.costs import squared_error, total_energy
from ep_jax.energies import hopfield
from ep_jax.energies.hopfield import Hopfield
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent, relax


@dataclasses.dataclass(frozen=True)
class GenericHopfield(Hopfield):
    """The same energy on the generic path: jax.grad of E, rho applied at every step."""

    @property
    def identity_on_unit_box(self):
        return False

    def input_drive(self, params, x):
        return None

    def state_grad(self, params, state, x, *, drive=None, in_box=False):
        return jax.grad(lambda s: jnp.sum(self(params, s, x)))(tuple(state))

    def layer_field(self, params, state, x, l, *, drive=None, in_box=False):
        """The formula before the fast path: rho of both neighbours, the input product here."""
        layers = (x,) + tuple(state)
        below = params[f"layer_{l - 1}"]
        h = self.rho(l - 1)(layers[l - 1]) @ below["kernel"] + below["bias"]
        if l + 1 < len(layers):
            h = h + self.rho(l + 1)(layers[l + 1]) @ params[f"layer_{l}"]["kernel"].T
        return h


def _problem(sizes, activation="hard_sigmoid", quadratic="activity", batch=6, seed=0,
             spread=1.5):
    energy = Hopfield(sizes=sizes, activation=activation, quadratic=quadratic)
    params = energy.init_params(jax.random.PRNGKey(seed), jnp.float64)
    params = jax.tree.map(lambda a: a + 0.1, params)
    ks = jax.random.split(jax.random.PRNGKey(seed + 1), len(sizes) + 1)
    x = jax.random.uniform(ks[0], (batch, sizes[0]), jnp.float64)
    state = tuple(spread * jax.random.normal(k, (batch, n), jnp.float64) + 0.5
                  for k, n in zip(ks[1:], sizes[1:]))  # many units outside [0, 1]
    return energy, params, x, state


@pytest.mark.parametrize("activation,quadratic", [("hard_sigmoid", "activity"),
                                                  ("sigmoid", "state"),
                                                  ("hard_sigmoid", "state"),
                                                  ("tanh", "activity")])
@pytest.mark.parametrize("sizes", [(7, 5, 3), (7, 6, 5, 4, 3)])
def test_closed_form_state_gradient_is_jax_grad(sizes, activation, quadratic):
    energy, params, x, state = _problem(sizes, activation, quadratic)
    want = jax.grad(lambda s: jnp.sum(energy(params, s, x)))(state)
    got = energy.state_grad(params, state, x)
    got_drive = energy.state_grad(params, state, x, drive=energy.input_drive(params, x))
    for a, b, c in zip(got, got_drive, want):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b, c, rtol=1e-12, atol=1e-12)


def test_in_box_gradient_is_exactly_the_general_one_inside_the_box():
    energy, params, x, _ = _problem((7, 6, 5, 3))
    ks = jax.random.split(jax.random.PRNGKey(5), 3)
    state = tuple(jax.random.uniform(k, (6, n), jnp.float64) for k, n in zip(ks, (6, 5, 3)))
    state = (state[0].at[0, 0].set(0.0).at[1, 1].set(1.0),) + state[1:]  # the closed bounds too
    drive = energy.input_drive(params, x)
    general = energy.state_grad(params, state, x, drive=drive)
    boxed = energy.state_grad(params, state, x, drive=drive, in_box=True)
    for a, b in zip(general, boxed):
        np.testing.assert_array_equal(a, b)
    for l in (1, 2, 3):
        np.testing.assert_array_equal(energy.layer_field(params, state, x, l, drive=drive),
                                      energy.layer_field(params, state, x, l, in_box=True))
    assert energy.identity_on_unit_box
    assert not Hopfield(sizes=(7, 6, 3), activation="sigmoid").identity_on_unit_box


SOLVERS = [GradientDescent(0.5, 9, project="clip01"),
           GradientDescent(0.5, 1, project="clip01"),
           GradientDescent(0.5, 2, project="clip01"),
           GradientDescent(0.5, 300, tol=1e-6, project="clip01"),
           GradientDescent(0.2, 7),
           FixedPoint(8),
           FixedPoint(8, order="asynchronous"),
           FixedPoint(200, tol=1e-7, order="asynchronous")]


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
@pytest.mark.parametrize("start", ["zeros", "outside"])
def test_fast_relaxation_equals_the_generic_one(solver, start):
    """Same states, steps and stats as jax.grad of E with rho at every step (float64)."""
    sizes = (7, 6, 5, 3)
    energy, params, x, outside = _problem(sizes)
    generic = GenericHopfield(sizes=sizes)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    s0 = energy.zeros_state(x) if start == "zeros" else outside
    for target, beta in ((None, 0.0), (y, 0.4)):
        a, sa = relax(energy, params, x, s0, target=target, beta=beta, solver=solver)
        b, sb = relax(generic, params, x, s0, target=target, beta=beta, solver=solver)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
        assert int(sa.steps) == int(sb.steps)
        np.testing.assert_allclose(sa.residual, sb.residual, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(sa.energy, sb.energy, rtol=1e-12)


def test_clamped_output_outside_the_box_uses_the_general_step():
    sizes = (7, 6, 3)
    energy, params, x, _ = _problem(sizes)
    generic = GenericHopfield(sizes=sizes)
    clamp = jnp.full((6, 3), 1.7)  # a held output outside [0, 1]: rho(1.7) = 1, rho' = 0
    solver = GradientDescent(0.5, 6, project="clip01")
    a, _ = relax(energy, params, x, energy.zeros_state(x), solver=solver, clamp_output=clamp)
    b, _ = relax(generic, params, x, energy.zeros_state(x), solver=solver, clamp_output=clamp)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def _dots_touching(hlo: str, n: int) -> list:
    """Names of the dot instructions of an optimised HLO module with an operand of dim ``n``."""
    shapes = dict(re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo))
    out = []
    for name, a, b in re.findall(r"%([\w.\-]+) = \w+\[[\d,]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo):
        dims = shapes.get(a, "").split(",") + shapes.get(b, "").split(",")
        if str(n) in dims:
            out.append(name)
    return out


def test_one_input_product_per_training_step_outside_the_loops():
    """The EP step's optimised HLO: the clamped input enters exactly two products (rho(x) W_0,
    shared by both phases and the energy statistics, and the input layer's weight gradient),
    and no while-loop body touches an input-sized array."""
    from ep_jax.bench import input_product_in_loop

    n0 = 37  # a size no other layer has
    energy = hopfield((n0, 11, 3))
    params = energy.init_params(jax.random.PRNGKey(0), jnp.float32)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, n0), jnp.float32)
    y = jnp.array([0, 1, 2, 0, 1])
    for rule in ("ep", "ep-symmetric"):
        for solver in (GradientDescent(0.5, 6, project="clip01"),
                       GradientDescent(0.5, 6, tol=1e-4, project="clip01"), FixedPoint(6)):
            phases = Phases(0.5, free=solver, nudged=solver)

            def step(p, x, y, rule=rule, phases=phases):
                g, res = get_rule(rule)(energy, p, x, y, "zeros", phases=phases)
                return g, res.free_stats.energy, res.nudged_stats.energy

            jitted = jax.jit(step)
            hlo = jitted.lower(params, x, y).compile().as_text()
            assert len(_dots_touching(hlo, n0)) == 2, (rule, solver)
            check = input_product_in_loop(jitted, (params, x, y), n0)
            assert check["while_bodies"] >= 2 and check["input_product_hoisted"], check


def test_ep_gradient_unchanged_by_the_shared_drive():
    """The rule's gradient equals the energy-difference formula at its own states."""
    energy, params, x, _ = _problem((7, 6, 3))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    g, res = get_rule("ep")(energy, params, x, y, "zeros", phases=Phases())
    want = jax.grad(lambda p: jnp.mean(energy(p, res.nudged_state, x) - energy(p, res.free_state, x)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b / 0.5, rtol=1e-10, atol=1e-12)
    e = total_energy(energy, params, res.free_state, x)
    np.testing.assert_allclose(res.free_stats.energy, jnp.mean(e), rtol=1e-12)
    assert squared_error is Phases().cost

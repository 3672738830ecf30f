"""The convolutional Hopfield energy: equation (against a numpy loop reference), shapes and
checks, fixed-point form, solvers (sync/async sweeps, gradient descent), jit/vmap, and EP's
exactness in float64 against the implicit gradient and BPTT, with and without a softmax readout."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import SoftmaxReadout, compare, get_activation
from ep_jax.app.cli import main
from ep_jax.energies import ConvHopfield, ConvLayer, conv_hopfield, make_energy
from ep_jax.exact import bptt_gradient, implicit_gradient
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent, relax
from tests.conftest import assert_tree_close, random_net

TOL = 1e-12


def small():
    """6x6x1 input, one conv (3 channels, 3x3, padding 1) with a 2x2 pool, one dense layer."""
    return conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2)], dense=(4,))


def two_maps(activation="hard_sigmoid"):
    """Stride 2 + padding, a second conv with a floor-dividing pool, then a dense output."""
    return conv_hopfield((7, 7, 2), [(3, 3, 2, 1, 1), (4, 2, 1, 0, 2)], dense=(3,), activation=activation)


def readout_net():
    """No dense layer: the flattened last map is the output, read by a softmax readout."""
    return conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2), (2, 2, 1, 0, 1)], dense=(), readout_classes=3)


def random_state(energy, x, seed=1):
    shapes = energy.state_shapes(x.shape[0], x.dtype)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return tuple(jax.random.uniform(k, s.shape, s.dtype, 0.05, 0.95) for k, s in zip(keys, shapes))


# ---- the equation ------------------------------------------------------------------------
def np_conv(r, w, b, stride, pad):
    r = np.pad(r, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    ho, wo = (r.shape[1] - k) // stride + 1, (r.shape[2] - k) // stride + 1
    out = np.zeros((r.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = r[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("bijc,ijco->bo", patch, w)
    return out + b


def np_pool(z, p):
    ho, wo = z.shape[1] // p, z.shape[2] // p
    out = np.zeros((z.shape[0], ho, wo, z.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j, :] = z[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].max(axis=(1, 2))
    return out


def np_energy(energy, params, state, x):
    """Box activations: r = clip(s, 0, 1) and 1/(2a) ||r||^2, a the slope of rho."""
    rho = lambda a: np.clip(a, 0, 1)  # noqa: E731
    half = {"hard_sigmoid": 0.5, "shifted_hard_sigmoid": 1.0}[energy.activation]
    r = [np.asarray(x)] + [rho(np.asarray(s)) for s in state]
    e = half * sum((a ** 2).reshape(len(a), -1).sum(1) for a in r[1:])
    for l in range(len(r) - 1):
        p = {k: np.asarray(v) for k, v in params[f"layer_{l}"].items()}
        if l < len(energy.conv):
            c = energy.conv[l]
            h = np_pool(np_conv(r[l], p["kernel"], p["bias"], c.stride, c.padding), c.pool)
        else:
            h = r[l].reshape(len(r[l]), -1) @ p["kernel"] + p["bias"]
        e = e - (r[l + 1] * h).reshape(len(h), -1).sum(1)
    return e


@pytest.mark.parametrize("activation", ["hard_sigmoid", "shifted_hard_sigmoid"])
def test_energy_matches_numpy_loop_reference(activation):
    energy = two_maps(activation)
    assert energy.layer_shapes == ((4, 4, 3), (1, 1, 4), (3,))
    params, x, _ = random_net(energy)
    state = tuple(1.4 * s - 0.2 for s in random_state(energy, x))  # some states outside [0, 1]
    np.testing.assert_allclose(energy(params, state, x), np_energy(energy, params, state, x), rtol=1e-12)


def test_small_output_maps_take_the_matmul_conv_with_the_same_numbers():
    """A conv whose output map is smaller than its kernel (the CIFAR-10 net's 4x4 -> 2x2 layer)
    is computed as im2col + one product (fast transpose on XLA CPU): same energy as the numpy
    loops, same value and vjp as lax's conv."""
    energy = conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], dense=(2,))
    assert energy.layer_shapes[1] == (1, 1, 4)
    params, x, _ = random_net(energy)
    state = random_state(energy, x)
    np.testing.assert_allclose(energy(params, state, x), np_energy(energy, params, state, x), rtol=1e-12)
    r, w = state[0], params["layer_1"]["kernel"]
    lax_conv = lambda r, w: jax.lax.conv_general_dilated(  # noqa: E731
        r, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mine = lambda r, w: energy.connect(params | {"layer_1": {"kernel": w, "bias": 0 * params["layer_1"]["bias"]}}, 1, r)  # noqa: E731
    u = state[1]
    for a, b in zip(jax.vjp(mine, r, w)[1](u), jax.vjp(lax_conv, r, w)[1](u)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(mine(r, w), lax_conv(r, w), rtol=1e-12, atol=1e-13)


def test_layer_field_and_state_grad_are_the_gradient_of_the_energy():
    """-dE/d r_l = h_l - r_l: the fixed-point form is the energy's gradient (in and out of the box)."""
    energy = two_maps()
    params, x, _ = random_net(energy)
    state = random_state(energy, x)
    g = jax.grad(lambda s: jnp.sum(energy(params, s, x)))(state)
    drive = energy.input_drive(params, x)
    for in_box in (False, True):
        assert_tree_close(energy.state_grad(params, state, x, drive=drive, in_box=in_box), g, 1e-12, 1e-14)
    for l in range(1, energy.num_free_layers + 1):
        h = energy.layer_field(params, state, x, l)
        np.testing.assert_allclose(state[l - 1] - h, g[l - 1], rtol=1e-12, atol=1e-14)
    # outside the box the hard sigmoid's derivative vanishes: the autodiff default agrees
    out = tuple(3 * s - 1 for s in state)
    g_out = jax.grad(lambda s: jnp.sum(energy(params, s, x)))(out)
    assert_tree_close(energy.state_grad(params, out, x), g_out, 1e-12, 1e-14)


def test_jit_and_vmap_agree_with_the_batch():
    energy = small()
    params, x, _ = random_net(energy)
    state = random_state(energy, x)
    e = energy(params, state, x)
    one = lambda s, xb: energy(params, tuple(a[None] for a in s), xb[None])[0]  # noqa: E731
    np.testing.assert_allclose(jax.vmap(one)(state, x), e, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(energy)(params, state, x), e, rtol=1e-13)


def test_feedforward_state_is_the_bottom_up_pass():
    energy = two_maps()
    params, x, _ = random_net(energy)
    s = energy.init_state(params, x, "feedforward")
    rho = lambda a: np.clip(a, 0, 1)  # noqa: E731
    p = {n: {k: np.asarray(v) for k, v in d.items()} for n, d in params.items()}
    s1 = rho(np_conv(np.asarray(x), p["layer_0"]["kernel"], p["layer_0"]["bias"], 2, 1))
    s2 = rho(np_pool(np_conv(s1, p["layer_1"]["kernel"], p["layer_1"]["bias"], 1, 0), 2))
    s3 = rho(s2.reshape(5, -1) @ p["layer_2"]["kernel"] + p["layer_2"]["bias"])
    assert_tree_close(s, (s1, s2, s3), 1e-12, 1e-14)


# ---- shapes, checks ------------------------------------------------------------------------
def test_laborieux_cifar10_shapes_without_allocating():
    energy = make_energy("conv_hopfield", (32, 32, 3),
                         conv=[(128, 3, 1, 1, 2), (256, 3, 1, 1, 2), (512, 3, 1, 1, 2), (512, 3, 1, 0, 2)],
                         dense=(10,))
    shapes = energy.state_shapes(64, jnp.float32)
    assert [s.shape for s in shapes] == [(64, 16, 16, 128), (64, 8, 8, 256), (64, 4, 4, 512),
                                         (64, 1, 1, 512), (64, 10)]
    params = jax.eval_shape(energy.init_params, jax.random.PRNGKey(0))
    assert params["layer_3"]["kernel"].shape == (3, 3, 512, 512)
    assert params["layer_4"]["kernel"].shape == (512, 10)
    x = jax.ShapeDtypeStruct((64, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(energy, params, shapes, x).shape == (64,)
    field = jax.eval_shape(lambda p, s, x: energy.layer_field(p, s, x, 2), params, shapes, x)
    assert field.shape == (64, 8, 8, 256)


def test_construction_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"conv\[1\].*becomes 0x0.*expected >= 1x1"):
        conv_hopfield((4, 4, 1), [(2, 3, 1, 1, 2), (2, 2, 1, 0, 2)])
    with pytest.raises(ValueError, match=r"conv\[0\]: kernel 5 exceeds the padded input 3x3"):
        conv_hopfield((3, 3, 1), [(2, 5)])
    with pytest.raises(ValueError, match=r"ConvLayer.pool: expected an int >= 1, received 0"):
        ConvLayer(2, 3, 1, 0, 0)
    with pytest.raises(ValueError, match="conv: expected ConvLayer or"):
        conv_hopfield((4, 4, 1), [(2, 3, 1, 0, 1, 7)])
    with pytest.raises(ValueError, match="conv: expected at least one"):
        conv_hopfield((4, 4, 1), [])
    with pytest.raises(ValueError, match="in_shape"):
        conv_hopfield((4, 4), [(2, 3)])
    with pytest.raises(ValueError, match="activation: expected one of"):
        conv_hopfield((4, 4, 1), [(2, 3)], activation="nope")
    assert isinstance(make_energy("conv_hopfield", (4, 4, 1), conv=[ConvLayer(2, 3)]), ConvHopfield)


def test_input_checks_name_argument_expected_and_received():
    energy = small()
    params, x, _ = random_net(energy)
    state = energy.zeros_state(x)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 6, 6, 1\), received \(5, 36\)"):
        energy.check_inputs(params, None, x.reshape(5, 36))
    with pytest.raises(ValueError, match="x: expected dtype float64"):
        energy.check_inputs(params, None, x.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"state\[0\] \(layer 1\): expected shape \(5, 3, 3, 3\)"):
        energy.check_inputs(params, (state[0][:, :2], state[1]), x)
    with pytest.raises(ValueError, match="state: expected a tuple of 2 layer arrays, received 1"):
        energy.check_inputs(params, state[:1], x)
    bad = {**params, "layer_0": {**params["layer_0"], "kernel": params["layer_0"]["kernel"][:2]}}
    with pytest.raises(ValueError, match=r"params\['layer_0'\]\['kernel'\]: expected shape \(3, 3, 1, 3\)"):
        energy.check_inputs(bad, None, x)
    with pytest.raises(ValueError, match="params: expected layers"):
        readout_net().check_params(params)
    with pytest.raises(ValueError, match="x: expected shape"):  # relax checks before tracing
        relax(energy, params, x[..., 0], "zeros", solver=FixedPoint(3))
    smooth = conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2)], dense=(4,), activation="sigmoid")
    with pytest.raises(ValueError, match="FixedPoint sweeps s <- rho.h. are the stationary points of "
                       "ConvHopfield only for .*received activation 'sigmoid'"):
        relax(smooth, params, x, "zeros", solver=FixedPoint(3))


def test_shifted_hard_sigmoid():
    rho = get_activation("shifted_hard_sigmoid")
    s = jnp.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(rho(s), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(jax.vmap(jax.grad(rho))(s), [0, 0.5, 0.5, 0.5, 0])  # closed [0, 2]


# ---- solvers -------------------------------------------------------------------------------
def relax_three_ways(energy, params, x):
    states = {}
    for name, solver in (("sync", FixedPoint(300, tol=TOL)),
                         ("async", FixedPoint(300, tol=TOL, order="asynchronous")),
                         ("gd", GradientDescent(0.5, 5000, tol=TOL, project="clip01"))):
        s, st = jax.jit(lambda p, solver=solver: relax(energy, p, x, "zeros", solver=solver))(params)
        assert bool(st.converged), name
        g = energy.state_grad(params, s, x)  # stationary on the box: the projected gradient vanishes
        for a, b in zip(s, g):
            np.testing.assert_allclose(np.clip(a - b, 0, 1), a, atol=1e-10)
        states[name] = s
    return states


def test_sync_async_and_gradient_descent_reach_the_same_equilibrium():
    """With the only pool on the input, E is quadratic in the state: one minimum, found by all."""
    energy = small()
    params, x, _ = random_net(energy)
    states = relax_three_ways(energy, params, x)
    assert_tree_close(states["async"], states["sync"], 0, 1e-10)
    assert_tree_close(states["gd"], states["sync"], 0, 1e-10)
    assert float(np.mean([np.mean((a > 0) & (a < 1)) for a in states["sync"]])) > 0.2  # not all saturated


def test_shifted_hard_sigmoid_sweeps_are_laborieux_dynamics_and_stationary_points():
    """One sweep is s_l <- (1 + hardtanh(h_l(s) - 1)) / 2 on the raw states (Laborieux's
    my_hard_sig dynamics), and its fixed points are E's box-stationary points (E with ||r||^2)."""
    energy = small_shifted = conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2)], dense=(4,),
                                           activation="shifted_hard_sigmoid")
    params, x, _ = random_net(small_shifted, weight_scale=2.0)
    state = random_state(energy, x)
    new, _ = relax(energy, params, x, state, solver=FixedPoint(1))
    p = {n: {k: np.asarray(v) for k, v in d.items()} for n, d in params.items()}
    s1, s2 = (np.asarray(s) for s in state)
    rho = lambda h: (1 + np.clip(h - 1, -1, 1)) / 2  # noqa: E731
    drive = np_pool(np_conv(np.asarray(x), p["layer_0"]["kernel"], p["layer_0"]["bias"], 1, 1), 2)
    back = (s2 @ p["layer_1"]["kernel"].T).reshape(s1.shape)
    np.testing.assert_allclose(new[0], rho(drive + back), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new[1], rho(s1.reshape(5, -1) @ p["layer_1"]["kernel"] + p["layer_1"]["bias"]),
                               rtol=1e-12, atol=1e-14)
    states = relax_three_ways(energy, params, x)
    assert_tree_close(states["async"], states["sync"], 0, 1e-10)
    assert_tree_close(states["gd"], states["sync"], 0, 1e-10)


def test_pools_between_free_layers_make_several_stationary_points():
    """-<r_2, maxpool(conv(W, r_1))> is concave in r_1: each solver ends at a stationary point on
    the box (checked in ``relax_three_ways``), not necessarily the same one."""
    energy = two_maps()
    params, x, _ = random_net(energy)
    states = relax_three_ways(energy, params, x)
    assert_tree_close(states["gd"], states["sync"], 0, 1e-10)
    e = {k: float(jnp.sum(energy(params, s, x))) for k, s in states.items()}
    assert e["async"] < e["sync"] - 1e-4  # the even/odd sweep found a lower minimum here


def test_fixed_point_nudges_a_flattened_map_output_through_a_readout():
    energy = readout_net()
    params, x, _ = random_net(energy)
    y = jnp.array([0, 1, 2, 1, 0])
    cost = SoftmaxReadout(head="readout")
    out = {}
    for name, solver in (("fp", FixedPoint(400, tol=TOL)),
                         ("gd", GradientDescent(0.5, 5000, tol=TOL, project="clip01"))):
        s, st = relax(energy, params, x, "zeros", target=y, beta=0.3, cost=cost, solver=solver)
        assert bool(st.converged), name
        out[name] = s
    assert energy.output(out["fp"]).shape == (5, 2 * 2 * 2)
    assert_tree_close(out["fp"], out["gd"], 0, 1e-10)
    free, _ = relax(energy, params, x, "zeros", solver=FixedPoint(400, tol=TOL))
    assert float(jnp.max(jnp.abs(out["fp"][-1] - free[-1]))) > 1e-3  # the nudge did move it


# ---- exactness (float64) -------------------------------------------------------------------
def tight():
    return GradientDescent(0.5, 20000, tol=TOL, project="clip01")


@pytest.mark.parametrize("readout", [False, True], ids=["squared-error", "softmax-readout"])
def test_ep_matches_implicit_gradient_and_bptt(readout):
    energy = readout_net() if readout else small()
    params, x, y = random_net(energy, weight_scale=1.0)  # strong enough to saturate some units
    if readout:
        y = jnp.array([0, 1, 2, 1, 0])
    cost = SoftmaxReadout(head="readout") if readout else None
    kw = {"cost": cost} if readout else {}
    s, st = relax(energy, params, x, "zeros", solver=tight(), **kw)
    assert bool(st.converged)
    g_exact, info = implicit_gradient(energy, params, x, y, s, bounds=(0.0, 1.0), **kw)
    assert float(info.stationarity) < 1e-10 and float(info.min_eigenvalue) > 0
    assert 0.3 < float(info.active_fraction) < 1.0  # some units saturated: the active set matters

    phases = Phases(1e-3, tight(), tight(), **kw)
    # beta traced: one compilation per rule serves both values
    rules = {r: jax.jit(lambda p, b, r=r: get_rule(r)(energy, p, x, y, "zeros", phases=phases, beta=b))
             for r in ("ep", "ep-symmetric")}

    def ep(rule, beta):
        g, res = rules[rule](params, beta)
        assert bool(res.free_stats.converged) and bool(res.nudged_stats.converged)
        return compare(g, g_exact)["rel_error"]

    # beta / 3.3: the bias falls ~11x (symmetric, O(beta^2)) and ~3.3x (one-sided, O(beta)); at
    # beta = 1e-2 a unit would cross a bound of the box and change the active set.
    sym, sym_small = ep("ep-symmetric", 1e-3), ep("ep-symmetric", 3e-4)
    one, one_small = ep("ep", 1e-3), ep("ep", 3e-4)
    assert sym <= 1e-4
    assert 8 < sym / sym_small < 14, (sym, sym_small)
    assert 2.5 < one / one_small < 4.5, (one, one_small)
    assert one >= 10 * sym
    g_bptt = jax.jit(lambda p: bptt_gradient(energy, p, x, y, energy.zeros_state(x),
                                             solver=GradientDescent(0.5, 600, project="clip01"), **kw))(params)
    assert compare(g_bptt, g_exact)["rel_error"] < 1e-9
    if readout:  # the readout is learnt by the rule, and its gradient is not zero
        assert float(jnp.linalg.norm(g_exact["readout"]["kernel"])) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["hard_sigmoid", "shifted_hard_sigmoid"])
def test_gradcheck_cli_conv_hopfield(capsys, activation):
    argv = ["gradcheck", "--energy", "conv_hopfield", "--rule", "ep-symmetric", "--beta", "1e-3", "--x64",
            "--activation", activation]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["in_shape"] == [6, 6, 1] and out["conv"] == [[3, 3, 1, 1, 2]]
    assert out["rel_error"] <= 1e-4 and out["rel_error_bptt"] <= 1e-4
    assert out["bptt_vs_implicit_rel_error"] < 1e-9


@pytest.mark.slow
def test_smooth_activation_sigmoid_is_exact_unprojected():
    """A smooth rho (issue 15's holomorphic EP needs one) runs unprojected. With 1/2 rho(s)^2 a
    stationary point needs every field inside (0, 1) (rho(s) = h): small kernels, biases near
    1/2. The Hessian is flat (its eigenvalues are <= rho'^2 <= 1/16), so the O(beta^2) bias of
    symmetric EP has a large constant: 1.4e-2 at beta = 1e-3, 1.3e-6 at beta = 1e-5."""
    energy = conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2)], dense=(4,), activation="sigmoid")
    params, x, y = random_net(energy, weight_scale=0.2, bias_range=(0.3, 0.7))
    solver = GradientDescent(0.5, 20000, tol=TOL)
    s, st = relax(energy, params, x, "zeros", solver=solver)
    assert bool(st.converged)
    g_exact, info = implicit_gradient(energy, params, x, y, s)
    assert float(info.min_eigenvalue) > 0
    rule = jax.jit(lambda p, b: get_rule("ep-symmetric")(energy, p, x, y, "zeros",
                                                         phases=Phases(1e-3, solver, solver), beta=b))
    err = [compare(rule(params, b)[0], g_exact)["rel_error"] for b in (1e-4, 1e-5)]
    assert err[1] <= 1e-4 and 50 < err[0] / err[1] < 200, err  # O(beta^2)


@pytest.mark.slow
def test_holomorphic_ep_on_a_conv_net_without_inner_pools():
    """Complex states through the conv (issue 15): with sigmoid and no pool between free maps the
    energy is holomorphic, and holomorphic EP (8 points, |beta| = 1e-3) is exact where symmetric
    EP still carries its O(beta^2) bias; a pool between free maps is refused (max is not
    holomorphic)."""
    assert not conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2), (2, 2, 1, 0, 2)], activation="sigmoid").holomorphic
    assert not small().holomorphic  # the hard sigmoid clips
    energy = conv_hopfield((6, 6, 1), [(3, 3, 1, 1, 2), (2, 2, 1, 0, 1)], dense=(4,), activation="sigmoid")
    assert energy.holomorphic
    params, x, y = random_net(energy, weight_scale=0.2, bias_range=(0.3, 0.7))
    solver = GradientDescent(0.5, 20000, tol=TOL)
    s, st = relax(energy, params, x, "zeros", solver=solver)
    assert bool(st.converged)
    g_exact, _ = implicit_gradient(energy, params, x, y, s)
    phases = Phases(1e-3, solver, solver)
    g, res = jax.jit(lambda p: get_rule("ep-holomorphic")(energy, p, x, y, "zeros", phases=phases, points=8))(params)
    assert bool(res.nudged_stats.converged)
    g_sym, _ = jax.jit(lambda p: get_rule("ep-symmetric")(energy, p, x, y, "zeros", phases=phases))(params)
    holo, sym = compare(g, g_exact)["rel_error"], compare(g_sym, g_exact)["rel_error"]
    assert holo < 1e-7 and sym > 100 * holo, (holo, sym)

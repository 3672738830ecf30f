"""Parity of ``ep_jax.rules.seed000`` with the PyTorch port of seed 000 (``tests/reference/seed000.py``).

Same weights, biases, persistent states and batch on both sides; the states after the negative
and positive phases, the parameter increments and the new parameters agree to rtol 1e-5 in
float32 (1e-12 in float64), also over several training steps with persistent states carried
(through ``EPLearner`` inside ``lax.scan``). ``normalize`` puts many state entries near 0, so
element-wise comparisons carry a small ``atol`` (1e-6 on O(1) states and parameters, 1e-7 on the
increments); the norm-wise relative differences measured are <= 5e-6 in float32 and <= 4e-15 in
float64 (rounding only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from ep_jax import rules as rules_pkg
from ep_jax.energies import hopfield
from ep_jax.learner import EPLearner, EPState
from ep_jax.optim import per_layer_sgd
from ep_jax.rules.base import Phases
from ep_jax.rules.seed000 import SEED000_RULES, UNROLL, seed000_error
from ep_jax.solvers import GradientDescent
from tests.reference import seed000 as ref

SCHEMES = ["chl", "ep", "first-step", "pc-nudge"]
RTOL, ATOL = 1e-5, 1e-6           # float32 states / parameters
ATOL_UPD = 1e-7                   # float32 increments (alpha-scaled, smaller)
RTOL64, ATOL64 = 1e-12, 1e-14


def t2n(t):
    return t.detach().cpu().numpy()


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def to_params(ws, bs, dtype=jnp.float32):
    return {f"layer_{l}": {"kernel": jnp.asarray(w, dtype), "bias": jnp.asarray(b, dtype)}
            for l, (w, b) in enumerate(zip(ws, bs))}


def random_problem(sizes, batch, seed, n_batches=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    ws = [rng.uniform(-np.sqrt(6 / (a + b)), np.sqrt(6 / (a + b)), (a, b)).astype(dtype)
          for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.uniform(-0.3, 0.3, b).astype(dtype) for b in sizes[1:]]
    n = batch * n_batches
    x = rng.uniform(0, 1, (n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    states = [rng.uniform(-0.5, 1.0, (n, k)).astype(dtype) for k in sizes[1:]]
    return ws, bs, x, y, states


def hyper(sizes, batch, n_neg, n_pos, beta, alphas, n_epochs=1):
    return {"hidden_sizes": list(sizes[1:-1]), "output_size": sizes[-1], "batch_size": batch,
            "n_epochs": n_epochs, "n_it_neg": n_neg, "n_it_pos": n_pos, "alphas": list(alphas),
            "beta": beta}


def phases(n_neg, n_pos, beta):
    return Phases(beta, GradientDescent(0.5, n_neg), GradientDescent(0.5, n_pos))


def run_both(scheme, sizes, ws, bs, x, y, states, n_neg, n_pos, beta, alphas, dtype=np.float32, jit=False):
    """One step of ``scheme`` on both sides from the same numbers; returns (torch net, jax out).

    ``jit``: the JAX step (rule + optax update) under ``jax.jit``, else eager."""
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    batch = x.shape[0]
    neg, pos = ref.SCHEMES[scheme]
    world = ref.ExternalWorld(x, y, dtype=tdtype)
    net = ref.Network.from_params(world, hyper(sizes, batch, n_neg, n_pos, beta, alphas), neg, pos,
                                  ws, bs, persistent=states, dtype=tdtype)
    net.update_mini_batch_index(0)
    neg(net, n_neg)
    free_ref = [t2n(l).copy() for l in net.layers[1:]]
    pos(net, n_pos, *alphas)

    energy = hopfield(sizes, activation="sigmoid")
    params = to_params(ws, bs, dtype)
    rule = SEED000_RULES[f"seed000-{scheme}"]
    s0 = tuple(jnp.asarray(s) for s in states)
    tx = per_layer_sgd(alphas)

    def step(params, x, y, s0):
        grads, res = rule(energy, params, x, y, s0, phases=phases(n_neg, n_pos, beta))
        updates, _ = tx.update(grads, tx.init(params), params)
        return grads, res, updates, optax.apply_updates(params, updates)

    return net, free_ref, (jax.jit(step) if jit else step)(params, jnp.asarray(x), jnp.asarray(y), s0)


def check_step(scheme, net, free_ref, out, sizes, rtol=RTOL, atol=ATOL, atol_upd=ATOL_UPD):
    _, res, updates, new = out
    L = len(sizes) - 1
    for a, b in zip(res.free_state, free_ref):
        close(a, b, rtol, atol)
    if scheme == "first-step":
        close(res.nudged_state[-1], t2n(net.last_nudged_output), rtol, atol)
    else:
        for a, b in zip(res.nudged_state, net.last_clamped[1:]):
            close(a, t2n(b), rtol, atol)
    for l in range(L):
        dw, db = t2n(net.last_updates["weights"][l]), t2n(net.last_updates["biases"][l])
        close(updates[f"layer_{l}"]["kernel"], np.broadcast_to(dw, (sizes[l], sizes[l + 1])), rtol, atol_upd)
        close(updates[f"layer_{l}"]["bias"], np.broadcast_to(db, (sizes[l + 1],)), rtol, atol_upd)
        close(new[f"layer_{l}"]["kernel"], t2n(net.weights[l]), rtol, atol)
        close(new[f"layer_{l}"]["bias"], t2n(net.biases[l + 1]), rtol, atol)
    assert np.all(t2n(net.biases[0]) == 0)  # the seed's input bias: never used nor updated
    for st in (res.free_stats, res.nudged_stats):
        # fixed sweeps check no tolerance: finite, never "converged"
        assert not bool(st.nonfinite) and not bool(st.converged) and np.isfinite(float(st.energy))


def xor_init(seed=0):
    """The seed's own XOR net (Glorot weights from torch's RNG, zero biases and states)."""
    torch.manual_seed(seed)
    net = ref.Network("xor", ref.xor_world, {**ref.XOR_HYPER}, ref.ep_neg, ref.ep_pos)
    ws = [t2n(w) for w in net.weights]
    bs = [t2n(b) for b in net.biases[1:]]
    states = [t2n(p) for p in net.persistent]
    return ws, bs, states


XOR_SIZES = (2, 2, 1, 2)
XOR_ARGS = {"n_neg": 1, "n_pos": 1, "beta": 0.1, "alphas": [0.1, 0.1, 0.01]}


# ------------------------------------------------------------------ one step -------------
@pytest.mark.parametrize("scheme", ["chl", "ep", "pc-nudge"])
def test_xor_one_step(scheme):
    ws, bs, states = xor_init()
    # zero states make PC-Nudge's hidden layers stay 0; start from random states as well
    rng = np.random.default_rng(5)
    for st in (states, [rng.uniform(-0.5, 1, s.shape).astype(np.float32) for s in states]):
        net, free_ref, out = run_both(scheme, XOR_SIZES, ws, bs, ref.xor_x, ref.xor_y, st, **XOR_ARGS)
        check_step(scheme, net, free_ref, out, XOR_SIZES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_random_one_step(scheme):
    """6-5-4-3 (first-step: 6-4-4-4), batch 7, 3 negative and 2 positive sweeps (eager; the
    jitted rules are compared with the seed in ``test_training_steps_match``)."""
    sizes = (6, 4, 4, 4) if scheme == "first-step" else (6, 5, 4, 3)
    ws, bs, x, y, states = random_problem(sizes, 7, seed=10 * SCHEMES.index(scheme))
    net, free_ref, out = run_both(scheme, sizes, ws, bs, x, y, states, 3, 2, beta=0.3, alphas=[0.2, 0.1, 0.05])
    check_step(scheme, net, free_ref, out, sizes)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_random_one_step_float64(scheme):
    sizes = (6, 4, 4, 4) if scheme == "first-step" else (6, 5, 4, 3)
    ws, bs, x, y, states = random_problem(sizes, 7, seed=11, dtype=np.float64)
    net, free_ref, out = run_both(scheme, sizes, ws, bs, x, y, states, 2, 2, beta=0.3,
                                  alphas=[0.2, 0.1, 0.05], dtype=np.float64)
    assert out[1].free_state[0].dtype == jnp.float64
    check_step(scheme, net, free_ref, out, sizes, RTOL64, ATOL64, ATOL64)


def test_first_step_broadcast_single_output():
    """n_out == 1: torch broadcasts the one output delta over every unit; so does the rule."""
    sizes = (4, 3, 1)
    ws, bs, x, y, states = random_problem(sizes, 5, seed=3)
    y = np.zeros_like(y)
    net, free_ref, out = run_both("first-step", sizes, ws, bs, x, y, states, 2, 1, beta=0.5, alphas=[0.1, 0.1], jit=True)
    check_step("first-step", net, free_ref, out, sizes)


def test_first_step_unequal_sizes_raise():
    energy = hopfield((6, 5, 4, 3), activation="sigmoid")
    ws, bs, x, y, _ = random_problem(energy.sizes, 7, seed=0)
    with pytest.raises(ValueError, match=r"seed000-first-step: .*n_out=3.*sizes \(6, 5, 4, 3\)"):
        SEED000_RULES["seed000-first-step"](energy, to_params(ws, bs), jnp.asarray(x), jnp.asarray(y),
                                            phases=phases(1, 1, 0.1))
    # the seed itself fails on its own XOR net (hidden sizes [2, 1], output 2), after a partial update
    ws, bs, states = xor_init()
    net = ref.Network.from_params(ref.xor_world, dict(ref.XOR_HYPER), ref.chl_neg, ref.first_step_pos,
                                  ws, bs, persistent=states)
    net.update_mini_batch_index(0)
    ref.chl_neg(net, 1)
    with pytest.raises(RuntimeError):
        ref.first_step_pos(net, 1, *ref.XOR_HYPER["alphas"])
    energy = hopfield(XOR_SIZES, activation="sigmoid")
    with pytest.raises(ValueError, match=r"sizes \(2, 2, 1, 2\)"):
        SEED000_RULES["seed000-first-step"](energy, to_params(ws, bs), jnp.asarray(ref.xor_x),
                                            jnp.asarray(ref.xor_y), phases=phases(1, 1, 0.1))


def test_seed_quirks_on_both_sides():
    sizes = (6, 5, 4, 3)
    ws, bs, x, y, states = random_problem(sizes, 7, seed=4)
    energy, params = hopfield(sizes, activation="sigmoid"), to_params(ws, bs)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    # CHL's backward sweep reads the free lower layers: 1 sweep == 3 sweeps
    _, a = SEED000_RULES["seed000-chl"](energy, params, xj, yj, tuple(map(jnp.asarray, states)), phases=phases(2, 1, 0.1))
    _, b = SEED000_RULES["seed000-chl"](energy, params, xj, yj, tuple(map(jnp.asarray, states)), phases=phases(2, 3, 0.1))
    for u, v in zip(a.nudged_state, b.nudged_state):
        np.testing.assert_array_equal(u, v)
    assert float(b.nudged_stats.residual) == 0.0 and float(a.nudged_stats.residual) > 0
    # PC-Nudge from zero states: the hidden layers stay exactly 0 (the prediction cancels)
    _, r = SEED000_RULES["seed000-pc-nudge"](energy, params, xj, yj, "zeros", phases=phases(3, 1, 0.1))
    assert all(float(jnp.max(jnp.abs(s))) == 0.0 for s in r.free_state[:-1])
    world = ref.ExternalWorld(x, y)
    net = ref.Network.from_params(world, hyper(sizes, 7, 3, 1, 0.1, [0.1] * 3), ref.pcnudge_neg, ref.pcnudge_pos, ws, bs)
    net.update_mini_batch_index(0)
    ref.pcnudge_neg(net, 3)
    assert all(float(l.abs().max()) == 0.0 for l in net.layers[1:-1])
    close(r.free_state[-1], t2n(net.layers[-1]))
    # zero positive sweeps: EP learns nothing, CHL only from the output
    g, _ = SEED000_RULES["seed000-ep"](energy, params, xj, yj, "zeros", phases=phases(1, 0, 0.1))
    assert all(float(jnp.max(jnp.abs(t))) == 0.0 for t in jax.tree.leaves(g))
    # the seed's measure error (top-2 margin)
    net.layers[-1][:] = torch.tensor(np.array(r.free_state[-1]))
    _, _, err = net.measure()
    assert float(seed000_error(r.free_state[-1], yj)) == pytest.approx(err)
    tie = jnp.asarray([[0.5, 0.5, 0.1], [0.9, 0.1, 0.0]], jnp.float32)
    assert float(seed000_error(tie, jnp.asarray([0, 0]))) == 0.5


def test_argument_errors():
    sizes = (6, 5, 4, 3)
    ws, bs, x, y, _ = random_problem(sizes, 7, seed=0)
    energy, params = hopfield(sizes, activation="sigmoid"), to_params(ws, bs)
    rule = SEED000_RULES["seed000-ep"]
    with pytest.raises(ValueError, match=r"phases.free.tol: expected None"):
        rule(energy, params, jnp.asarray(x), jnp.asarray(y), phases=Phases(0.1, GradientDescent(0.5, 5, tol=1e-3), GradientDescent(0.5, 1)))
    with pytest.raises(ValueError, match=r"phases.nudged.max_steps: expected an int >= 0"):
        rule(energy, params, jnp.asarray(x), jnp.asarray(y), phases=phases(1, -1, 0.1))
    with pytest.raises(ValueError, match=r"state\[0\] \(layer 1\): expected shape"):
        rule(energy, params, jnp.asarray(x), jnp.asarray(y), (jnp.zeros((7, 4), jnp.float32),) * 3, phases=phases(1, 1, 0.1))


# ------------------------------------------------------------------ training ------------
def jax_train(scheme, sizes, ws, bs, x, y, states, hyp, monkeypatch):
    """The seed's ``train`` loop (batches in order, persistent states) via ``EPLearner`` in a scan."""
    name = f"seed000-{scheme}"
    monkeypatch.setitem(rules_pkg.RULES, name, SEED000_RULES[name])
    energy = hopfield(sizes, activation="sigmoid")
    tx = per_layer_sgd(hyp["alphas"])
    learner = EPLearner(energy, name, phases(hyp["n_it_neg"], hyp["n_it_pos"], hyp["beta"]), tx,
                        eval_solver=GradientDescent(0.5, 1), persistent=True)
    params = to_params(ws, bs)
    state = EPState(params, tx.init(params), tuple(jnp.asarray(s) for s in states))
    B, n = hyp["batch_size"], x.shape[0]
    idx = jnp.arange(hyp["n_epochs"] * (n // B) * B).reshape(-1, B) % n
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def run(state):
        def body(st, i):
            st, m = learner.train_step(st, xj[i], yj[i], i, jax.random.PRNGKey(0))
            return st, m["error"]
        return jax.lax.scan(body, state, idx)

    return run(state)


def check_trained(net, state, sizes, rtol, atol):
    for l in range(len(sizes) - 1):
        close(state.params[f"layer_{l}"]["kernel"], t2n(net.weights[l]), rtol, atol)
        close(state.params[f"layer_{l}"]["bias"], t2n(net.biases[l + 1]), rtol, atol)
    for a, b in zip(state.particles, net.persistent):
        close(a, t2n(b), rtol, atol)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_training_steps_match(scheme, monkeypatch):
    """3 epochs x 3 mini-batches of 7, persistent states carried, on both sides; the JAX side is
    ``EPLearner.train_step`` (particles gathered / scattered) in a jitted ``lax.scan``, with
    6 negative sweeps (a ``fori_loop``: more than ``UNROLL``) and 2 positive ones (unrolled)."""
    sizes = (6, 4, 4, 4) if scheme == "first-step" else (6, 5, 4, 3)
    ws, bs, x, y, states = random_problem(sizes, 7, seed=21, n_batches=3)
    assert UNROLL < 6
    hyp = hyper(sizes, 7, 6, 2, 0.3, [0.2, 0.1, 0.05], n_epochs=3)
    neg, pos = ref.SCHEMES[scheme]
    net = ref.Network.from_params(ref.ExternalWorld(x, y), hyp, neg, pos, ws, bs, persistent=states)
    net.train()
    state, _ = jax_train(scheme, sizes, ws, bs, x, y, states, hyp, monkeypatch)
    check_trained(net, state, sizes, RTOL, ATOL)


def test_xor_experiment(monkeypatch):
    """The notebook's run_xor_trial (EP, 20 epochs, the seed's init and sliders) on both sides."""
    sliders = (0.5, -1.0, 1.5, 0.3, 1.0, 1.0)
    torch.manual_seed(7)
    err_ref, net = ref.run_xor_trial(*sliders)
    ws, bs, states = xor_init(7)  # the same draw of the random weights[2]
    ws[0] = np.asarray(sliders[:4], np.float32).reshape(2, 2)
    ws[1] = np.asarray(sliders[4:], np.float32).reshape(2, 1)
    state, _ = jax_train("ep", XOR_SIZES, ws, bs, ref.xor_x, ref.xor_y, states, dict(ref.XOR_HYPER), monkeypatch)
    check_trained(net, state, XOR_SIZES, RTOL, ATOL)
    close(state.particles[-1], t2n(net.layers[-1]))
    # the seed's train() error: measure() after each epoch (one batch per epoch), last 4 epochs
    out = [float(seed000_error(state.particles[-1], jnp.asarray(ref.xor_y)))]
    assert net.hist["Error"][-1] == pytest.approx(100 * out[0])
    assert err_ref == pytest.approx(np.mean(net.hist["Error"][-4:]))

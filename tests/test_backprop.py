"""The backprop twin: learning, exact gradients, layout, validation, dtypes, no retracing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax.backprop import BackpropLearner, BPState


def blobs(n=64, n_in=6, n_out=3, seed=0, dtype=np.float32):
    """Linearly separable-ish Gaussian blobs: ``x`` (n, n_in), integer labels (n,)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (n_out, n_in))
    y = rng.integers(0, n_out, n)
    x = centers[y] + rng.normal(0, 0.5, (n, n_in))
    return jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32)


def run_steps(learner, state, x, y, steps, key=0):
    step = jax.jit(learner.train_step)
    idx = jnp.arange(x.shape[0])
    for t in range(steps):
        state, m = step(state, x, y, idx, jax.random.PRNGKey(key + t))
    return state, m


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(activation="hard_sigmoid", optimizer="sgd", learning_rate=0.5, loss="squared_error",
             schedule="constant"),
        dict(activation="tanh", optimizer="momentum", learning_rate=0.05, weight_decay=1e-4,
             grad_clip=1.0, dropout=0.1),
    ],
)
def test_training_reduces_loss_and_evaluate_keys(kw):
    x, y = blobs()
    learner = BackpropLearner((6, 16, 3), total_steps=50, **{"learning_rate": 1e-2, **kw})
    state = learner.init(jax.random.PRNGKey(0), x.shape[0])
    before = learner.evaluate(state, x, y)
    assert set(before) == {"error", "cost"}
    state, m = run_steps(learner, state, x, y, 50)
    assert set(m) == {"error", "cost"}
    after = learner.evaluate(state, x, y)
    assert float(after["cost"]) < 0.5 * float(before["cost"])
    for d in (before, after, m):
        assert 0.0 <= float(d["error"]) <= 1.0
        assert d["error"].shape == () and d["cost"].shape == ()
    assert float(after["error"]) <= 0.1
    np.testing.assert_array_equal(learner.predict(state, x), jnp.argmax(learner.apply(state.params, x), -1))
    assert learner.params(state) is state.params


def reference_loss(params, x, y, activation, loss):
    """The loss of the module docstring, written out independently of the learner."""
    h = x
    n = len(params)
    for l in range(n):
        a = h @ params[f"layer_{l}"]["kernel"] + params[f"layer_{l}"]["bias"]
        h = activation(a) if l < n - 1 else a
    t = jax.nn.one_hot(y, h.shape[-1], dtype=h.dtype)
    if loss == "cross_entropy":
        per = jax.scipy.special.logsumexp(h, axis=-1) - jnp.sum(t * h, axis=-1)
    else:
        per = jnp.sum((jax.nn.sigmoid(h) - t) ** 2, axis=-1)
    return jnp.mean(per)


@pytest.mark.parametrize(
    "activation,fn,loss",
    [("tanh", jnp.tanh, "cross_entropy"), ("sigmoid", jax.nn.sigmoid, "squared_error"),
     ("relu", jax.nn.relu, "cross_entropy")],
)
def test_update_is_exact_gradient_float64(activation, fn, loss):
    x, y = blobs(n=10, dtype=np.float64)
    learner = BackpropLearner((6, 5, 4, 3), activation=activation, optimizer="sgd", learning_rate=1.0,
                              schedule="constant", loss=loss, dropout=0.0, param_dtype="float64")
    state = learner.init(jax.random.PRNGKey(1), 10)
    # non-zero biases so they enter the gradient nontrivially
    params = jax.tree.map(lambda p: p + 0.1 * jnp.ones_like(p), state.params)
    state = BPState(params, learner.tx().init(params))
    g_ref = jax.grad(reference_loss)(params, x, y, fn, loss)
    new, m = learner.train_step(state, x, y, jnp.arange(10), jax.random.PRNGKey(0))
    diff = jax.tree.map(lambda a, b: a - b, params, new.params)
    for a, b in zip(jax.tree.leaves(diff), jax.tree.leaves(g_ref)):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(m["cost"]), float(reference_loss(params, x, y, fn, loss)), rtol=1e-12)


def test_momentum_and_weight_decay_follow_the_documented_update():
    x, y = blobs(n=8, dtype=np.float64)
    lr, mu, wd = 0.1, 0.9, 0.01
    learner = BackpropLearner((6, 4, 3), activation="tanh", optimizer="momentum", learning_rate=lr,
                              momentum=mu, weight_decay=wd, schedule="constant", dropout=0.0,
                              param_dtype="float64")
    state = learner.init(jax.random.PRNGKey(2), 8)
    p0 = state.params
    m_buf = jax.tree.map(jnp.zeros_like, p0)
    p = p0
    for t in range(2):
        g = jax.grad(reference_loss)(p, x, y, jnp.tanh, "cross_entropy")
        g = {k: {"kernel": v["kernel"] + wd * p[k]["kernel"], "bias": v["bias"]} for k, v in g.items()}
        m_buf = jax.tree.map(lambda m, gg: mu * m + gg, m_buf, g)
        p = jax.tree.map(lambda pp, m: pp - lr * m, p, m_buf)
        state, _ = learner.train_step(state, x, y, jnp.arange(8), jax.random.PRNGKey(t))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13)


def test_cosine_schedule_decays_to_zero():
    x, y = blobs(n=8)
    learner = BackpropLearner((6, 4, 3), optimizer="sgd", learning_rate=0.1, schedule="cosine", total_steps=3,
                              dropout=0.0)
    state = learner.init(jax.random.PRNGKey(0), 8)
    state, _ = run_steps(learner, state, x, y, 3)
    before = state.params
    state, _ = run_steps(learner, state, x, y, 1)  # step 4 > total_steps: rate 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="total_steps"):
        BackpropLearner((6, 4, 3), schedule="cosine").init(jax.random.PRNGKey(0), 8)


def test_param_layout_and_shapes():
    sizes = (7, 5, 4, 2)
    learner = BackpropLearner(sizes, total_steps=10)
    params = learner.init(jax.random.PRNGKey(0), 3).params
    assert list(params) == ["layer_0", "layer_1", "layer_2"]
    for l, (n0, n1) in enumerate(zip(sizes[:-1], sizes[1:])):
        assert set(params[f"layer_{l}"]) == {"kernel", "bias"}
        assert params[f"layer_{l}"]["kernel"].shape == (n0, n1)
        assert params[f"layer_{l}"]["bias"].shape == (n1,)
        assert not np.any(np.asarray(params[f"layer_{l}"]["bias"]))
    assert BackpropLearner([2, 2]).sizes == (2, 2)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(activation="swish"), "activation"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(loss="hinge"), "loss"),
        (dict(schedule="linear"), "schedule"),
        (dict(sizes=(784,)), "sizes"),
        (dict(sizes=(784, 0, 10)), "sizes"),
        (dict(sizes=(784, 5.0, 10)), "sizes"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(dropout=1.0), "dropout"),
        (dict(param_dtype="int32"), "param_dtype"),
        (dict(loss="cross_entropy", output_activation="sigmoid"), "output_activation"),
    ],
)
def test_bad_constructor_args_raise(kw, name):
    with pytest.raises(ValueError, match=name) as e:
        BackpropLearner(**{"sizes": (4, 3, 2), **kw})
    bad = kw[name] if name in kw else kw["sizes"]
    assert repr(bad) in str(e.value)
    if name in ("activation", "optimizer", "loss", "schedule"):
        assert "expected one of" in str(e.value)


@pytest.mark.parametrize("opt", ["adam", "adamw", "momentum", "sgd"])
def test_float32_preserved_under_x64(opt):
    assert jax.config.jax_enable_x64  # conftest enables it globally
    x, y = blobs(n=8, dtype=np.float32)
    learner = BackpropLearner((6, 4, 3), optimizer=opt, weight_decay=1e-3, total_steps=5)
    state = learner.init(jax.random.PRNGKey(0), 8)
    state, m = run_steps(learner, state, x, y, 2)
    for leaf in jax.tree.leaves(state.params):
        assert leaf.dtype == jnp.float32
    for leaf in jax.tree.leaves(state.opt_state):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    ev = learner.evaluate(state, x, y)
    assert {v.dtype for v in (*m.values(), *ev.values())} == {jnp.dtype(jnp.float32)}


def test_jitted_train_step_compiles_once():
    x, y = blobs(n=60)
    learner = BackpropLearner((6, 8, 3), dropout=0.1, total_steps=3)
    traces = []

    def step(state, xb, yb, idx, key):
        traces.append(1)
        return learner.train_step(state, xb, yb, idx, key)

    jstep = jax.jit(step)
    state = learner.init(jax.random.PRNGKey(0), 60)
    for b in range(3):
        sl = slice(20 * b, 20 * (b + 1))
        state, _ = jstep(state, x[sl], y[sl], jnp.arange(20 * b, 20 * (b + 1)), jax.random.PRNGKey(b))
    assert len(traces) == 1
    # the learner is hashable, so it can also be a static argument
    assert hash(learner) == hash(dataclasses.replace(learner))
    f = jax.jit(lambda lrn, s, xb, yb: lrn.evaluate(s, xb, yb), static_argnums=0)
    f(learner, state, x, y)
    f(dataclasses.replace(learner), state, x, y)
    assert f._cache_size() == 1

"""Conv nets in the app: the bptt rule, weight decay, image inputs, the conv config and presets."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.app.build import build_learner
from ep_jax.app.config import PRESETS, TrainConfig, get_preset
from ep_jax.app.data import Dataset
from ep_jax.app.train import train
from ep_jax.costs import SoftmaxReadout, as_dense_target, squared_error
from ep_jax.energies import conv_hopfield, hopfield
from ep_jax.optim import make_optimizer
from ep_jax.preprocess import Preprocess
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import FixedPoint, GradientDescent
from tests.conftest import assert_tree_close, random_net

# ---- the bptt rule ---------------------------------------------------------------------------


def unrolled_loss(energy, x, y, steps, eps, cost):
    """L(theta) = mean C(s_T) with s_{t+1} = clip(s_t - eps dE/ds(s_t), 0, 1) written out by
    hand (autodiff of the energy itself, no solver), for ``jax.grad`` to differentiate."""
    def loss(p):
        def step(_, s):
            d = jax.grad(lambda s: jnp.sum(energy(p, s, x)))(s)
            return tuple(jnp.clip(a - eps * b, 0.0, 1.0) for a, b in zip(s, d))

        out = energy.output(jax.lax.fori_loop(0, steps, step, energy.zeros_state(x)))
        if isinstance(cost, SoftmaxReadout):
            return jnp.mean(cost(out, y, p))
        return jnp.mean(cost(out, as_dense_target(y, out.shape[-1], out.dtype)))
    return loss


def test_bptt_is_the_gradient_of_the_unrolled_free_phase():
    energy = hopfield((6, 5, 4, 3))
    params, x, y = random_net(energy)
    steps, eps = 12, 0.5
    solver = GradientDescent(eps, steps, project="clip01")
    phases = Phases(0.5, solver, GradientDescent(eps, 2, project="clip01"))
    grads, res = jax.jit(lambda p: get_rule("bptt")(energy, p, x, y, "zeros", phases=phases))(params)
    want = jax.jit(jax.grad(unrolled_loss(energy, x, y, steps, eps, squared_error)))(params)
    assert_tree_close(grads, want, rtol=1e-9, atol=1e-12)
    assert int(res.free_stats.steps) == steps and float(res.beta) == 0.0
    jax.tree.map(np.testing.assert_array_equal, res.nudged_state, res.free_state)


def test_bptt_learns_a_softmax_readout_on_a_conv_net():
    energy = conv_hopfield((6, 6, 1), conv=((3, 3, 1, 0, 2),), dense=(), readout_classes=3)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    params = energy.init_params(k1, jnp.float64)
    x = jax.random.uniform(k2, (4, 6, 6, 1), jnp.float64)
    y = jax.random.randint(k3, (4,), 0, 3)
    cost = SoftmaxReadout(head="readout")
    steps, eps = 6, 0.3
    phases = Phases(0.5, GradientDescent(eps, steps, project="clip01"),
                    GradientDescent(eps, 2, project="clip01"), cost)
    grads, _ = jax.jit(lambda p: get_rule("bptt")(energy, p, x, y, "zeros", phases=phases))(params)
    want = jax.jit(jax.grad(unrolled_loss(energy, x, y, steps, eps, cost)))(params)
    assert_tree_close(grads, want, rtol=1e-9, atol=1e-12)
    assert float(jnp.abs(grads["readout"]["kernel"]).max()) > 0 and float(
        jnp.abs(grads["layer_0"]["kernel"]).max()) > 0


def test_bptt_refuses_a_tolerance_free_phase():
    energy = hopfield((4, 3, 2))
    params, x, y = random_net(energy)
    phases = Phases(0.5, FixedPoint(10, tol=1e-6), FixedPoint(2))
    with pytest.raises(ValueError, match=re.escape("phases.free.tol: BPTT differentiates a fixed "
                                                   "number of free steps, expected None, received 1e-06")):
        get_rule("bptt")(energy, params, x, y, "zeros", phases=phases)


# ---- optimizer and input pipeline ------------------------------------------------------------


def test_weight_decay_is_torch_sgd_l2_before_momentum_and_decoupled_for_adamw():
    params = {"layer_0": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])},
              "layer_1": {"kernel": jnp.array([3.0]), "bias": jnp.array([-1.0])}}
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    lr, mu, wd = (0.2, 0.1), 0.9, 0.01
    tx = make_optimizer("momentum", lr, weight_decay=wd)
    state, p, buf = tx.init(params), params, jax.tree.map(jnp.zeros_like, params)
    want = params
    for _ in range(3):  # torch.optim.SGD: b <- mu b + (g + wd p); p <- p - lr b
        upd, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, upd)
        buf = jax.tree.map(lambda b, g, q: mu * b + g + wd * q, buf, grads, want)
        want = {k: jax.tree.map(lambda q, b, k=k: q - lr[int(k[-1])] * b, want[k], buf[k]) for k in want}
    assert_tree_close(p, want, rtol=1e-6)
    adamw = make_optimizer("adamw", 0.1, weight_decay=wd)
    upd, _ = adamw.update(jax.tree.map(jnp.zeros_like, params), adamw.init(params), params)
    assert_tree_close(upd, jax.tree.map(lambda q: -0.1 * wd * q, params), rtol=1e-6)
    with pytest.raises(ValueError, match=re.escape("weight_decay: expected a number >= 0, received -0.1")):
        make_optimizer("sgd", 0.1, weight_decay=-0.1)


def test_preprocess_hands_images_to_conv_nets():
    pre = Preprocess(image_shape=(4, 4, 2), mean=(0.5, 0.0), std=(2.0, 1.0), to_images=True)
    x = jnp.arange(2 * 32, dtype=jnp.float32).reshape(2, 32)
    img = pre.eval(x)
    assert img.shape == (2, 4, 4, 2)
    np.testing.assert_allclose(img[1, 3, 2], [(x[1, 28] - 0.5) / 2.0, x[1, 29]])
    assert pre.train(x, jnp.zeros(2, jnp.int32), jax.random.PRNGKey(0))[0].shape == (2, 4, 4, 2)
    with pytest.raises(ValueError, match=re.escape("to_images: needs (H, W, C) images, received "
                                                   "image_shape (16,)")):
        Preprocess(image_shape=(16,), to_images=True)
    with pytest.raises(ValueError, match=re.escape("x: expected flat rows of 32 values")):
        pre.eval(jnp.zeros((2, 30)))


# ---- config and presets ----------------------------------------------------------------------


def test_conv_presets_state_the_papers_settings_and_their_bptt_twins_differ_in_the_rule():
    lab = get_preset("laborieux2021-cifar10")
    assert (lab.model.channels, lab.model.kernels, lab.model.paddings, lab.model.pools,
            lab.model.hidden, lab.model.activation) == (
        (128, 256, 512, 512), (3, 3, 3, 3), (1, 1, 1, 0), (2, 2, 2, 2), (), "shifted_hard_sigmoid")
    assert (lab.rule.rule, lab.rule.beta, lab.rule.cost, lab.rule.solver, lab.rule.free_steps,
            lab.rule.nudged_steps) == ("ep-symmetric", 1.0, "softmax_readout", "fixed_point_sync", 250, 25)
    assert (lab.optimizer.optimizer, lab.optimizer.alphas, lab.optimizer.weight_decay,
            lab.optimizer.schedule) == ("momentum", (0.25, 0.15, 0.1, 0.08, 0.05), 3e-4, "cosine")
    assert (lab.data.dataset, lab.data.batch_size, lab.data.augment, lab.loop.epochs) == (
        "cifar10", 128, "crop_flip", 120)
    sc = get_preset("scellier2023-cifar10")
    assert (sc.rule.solver, sc.rule.free_steps, sc.rule.nudged_steps) == ("fixed_point_async", 60, 20)
    assert sc.model == lab.model and sc.optimizer == lab.optimizer and sc.data == lab.data
    for name in ("conv-mnist10k", "laborieux2021-cifar10", "scellier2023-cifar10"):
        ep, bp = PRESETS[name], PRESETS["bp-" + name]
        assert bp.rule.rule == "bptt" and "rule='bptt'" in bp.description
        # The MNIST twin also clips its update (unclipped BPTT diverges at that preset's rates).
        assert bp.optimizer.grad_clip == (1.0 if name == "conv-mnist10k" else None)
        assert bp.with_overrides(rule=ep.rule.rule, preset=ep.preset, description=ep.description,
                                 grad_clip=ep.optimizer.grad_clip) == ep


@pytest.mark.parametrize("overrides, message", [
    (dict(kernels=(5,)), "model.kernels: expected 2 entries (one per conv layer of "
                         "model.channels=(16, 32)), received (5,)"),
    (dict(alphas=(0.1, 0.1)), "optimizer.alphas: expected 3 learning rates (2 conv layers, 0 dense "
                              "layers of model.hidden and the output readout), received 2"),
    (dict(step_size=0.2), "rule.step_size: not used by rule.solver='fixed_point_async'"),
    (dict(paddings=(-1, 0)), "model.paddings: expected a non-empty sequence of ints >= 0"),
    (dict(weight_decay=-1e-4), "optimizer.weight_decay: expected a number >= 0, received -0.0001"),
    (dict(cost="hinge"), "rule.cost: expected one of ('squared_error', 'cross_entropy', "
                         "'softmax_readout') for model.kind='conv', received 'hinge'"),
])
def test_conv_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_preset("conv-mnist10k").with_overrides(**overrides)


def test_conv_fields_are_refused_by_other_kinds_and_conv_hopfield_needs_the_conv_kind():
    with pytest.raises(ValueError, match=re.escape("model.channels: not used by model.kind='layered'")):
        TrainConfig().with_overrides(channels=(8,))
    with pytest.raises(ValueError, match=re.escape("model.energy: 'conv_hopfield' is built by "
                                                   "model.kind='conv'")):
        TrainConfig().with_overrides(energy="conv_hopfield")


def image_blobs(n_train=40, n_test=20, side=6, classes=3, seed=0) -> Dataset:
    """Three classes of noisy 6x6 grey images (a bright square in a class-dependent corner)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n_train + n_test).astype(np.int32)
    x = 0.1 * rng.uniform(size=(len(y), side, side)).astype(np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 3 * r: 3 * r + 3, 3 * q: 3 * q + 3] += 0.8
    x = np.clip(x, 0, 1).reshape(len(y), -1)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "images", (side, side), classes)


@pytest.mark.parametrize("rule", ["ep-symmetric", "bptt"])
def test_a_small_conv_net_learns_images_with_ep_and_its_bptt_twin(rule):
    cfg = get_preset("conv-mnist10k").with_overrides(
        dataset="images", rule=rule, channels=(4,), kernels=(3,), strides=(1,), paddings=(1,),
        pools=(2,), alphas=(0.1, 0.1), batch_size=10, epochs=6, log_every=1, checkpoint_every=0)
    out = train(cfg, data=image_blobs(), quiet=True, plots=False)
    assert out["model"] == "conv" and out["rule"] == rule
    assert out["test_error"] <= 0.1, out["test_error"]  # chance: 2/3


def test_build_refuses_conv_nets_on_flat_data():
    cfg = get_preset("conv-mnist10k").with_overrides(dataset="blobs")
    with pytest.raises(ValueError, match=re.escape("model.kind: 'conv' needs image data ((H, W) or "
                                                   "(H, W, C) rows), received dataset 'blobs'")):
        build_learner(cfg, 12, 3, 10, None)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["laborieux2021-cifar10", "bp-scellier2023-cifar10"])
def test_cifar10_conv_presets_train_end_to_end_on_generated_cifar_files(preset, tmp_path, capsys):
    """``ep-jax train --preset P --data-dir D`` on generated CIFAR-10 binary batches (10 training
    images), the preset's pipeline (crop + flip, softmax readout, fixed-point dynamics, momentum,
    weight decay, cosine, plots) with narrow maps, 2 steps per phase and one epoch."""
    from ep_jax.app.cli import main
    from tests.test_data import write_cifar

    data_dir = write_cifar(tmp_path / "data", "dir")
    out = tmp_path / "run"
    argv = ["train", "--preset", preset, "--data-dir", str(data_dir), "--out", str(out),
            "--channels", "2,2,4,4", "--free-steps", "2", "--nudged-steps", "2",
            "--eval-max-steps", "2", "--epochs", "1", "--batch-size", "5", "--checkpoint-every", "0",
            "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["n_train"] == 10 and summary["epochs"] == 1
    assert 0.0 <= summary["test_error"] <= 1.0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["kind"] == "conv" and saved["data"]["augment"] == "crop_flip"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rule"] == saved["rule"]["rule"]

"""The learner a ``TrainConfig`` describes, for the training loop (``ep_jax.app.train``).

A conv net (``model.kind="conv"``) is a ``ConvHopfield`` (``ep_jax.energies.conv_hopfield``)::

    x (flat rows)  -> crop_flip (optional) -> CONV_INPUT_STATS standardisation -> (batch, H, W, C)
    maps           model.channels / kernels / strides / paddings / pools, rho = model.activation
    dense layers   model.hidden, then the output: n_classes units with an in-dynamics cost
                   (squared_error, cross_entropy), or none with rule.cost="softmax_readout"
                   (a readout W s_L + b of the last layer inside the cost, params["readout"])
    optimizer      one rate per connection (alphas; the last one the output's or the readout's),
                   weight decay as torch's SGD (L2 in the gradient), optional cosine decay
"""

from __future__ import annotations

from ep_jax.app.config import BACKPROP, CONV, MLP, RESIDUAL, SOFTMAX_READOUT, TrainConfig
from ep_jax.backprop import BackpropLearner
from ep_jax.costs import SoftmaxReadout, get_cost
from ep_jax.energies import conv_hopfield, layer_name, make_energy
from ep_jax.energies.conv_hopfield import READOUT
from ep_jax.learner import EPLearner
from ep_jax.optim import make_optimizer
from ep_jax.precision import Precision
from ep_jax.preprocess import Preprocess
from ep_jax.residual import ResidualEP, residual_learner
from ep_jax.rules import Phases
from ep_jax.solvers import FixedPoint, GradientDescent

# Per-channel standardisation of the residual and conv models' inputs (seed 004's CIFAR-10
# constants; the usual MNIST ones).
INPUT_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist10k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
# A conv net's inputs follow Laborieux et al. 2021: CIFAR-10 centred and divided by 3x its
# per-channel std (their torchvision Normalize), so the input drive suits the hard sigmoid's
# [0, 1] range; grey-scale images stay in [0, 1] (their MNIST runs: ToTensor only).
CONV_INPUT_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)),
}


def build_learner(cfg: TrainConfig, n_in: int, n_out: int, total_steps: int, image_shape=None):
    """The learner of ``cfg`` for inputs of size ``n_in`` and ``n_out`` classes.

    Args:
      cfg: the run's config.
      n_in: input size (from the data).
      n_out: number of classes (from the data).
      total_steps: optimizer steps of the whole run (the length of a cosine schedule).
      image_shape: the shape of one flat input row (a residual model's augmentation; a conv
        net's input maps: ``(H, W)`` or ``(H, W, C)``).

    Returns:
      A ``BackpropLearner`` (``model.kind="mlp"``) or an ``EPLearner`` (``"layered"`` and
      ``"conv"``; the residual model's, with its input pipeline and credit diagnostics, for
      ``"residual"``).

    Raises:
      ValueError: a conv net on data without an image shape, or whose maps do not fit it.
    """
    model, rule, opt = cfg.model, cfg.rule, cfg.optimizer
    if model.kind == MLP:
        return BackpropLearner(
            sizes=(n_in, *model.hidden, n_out), activation=model.activation,
            optimizer=opt.optimizer, learning_rate=opt.learning_rate,
            weight_decay=opt.weight_decay, schedule=opt.schedule, total_steps=total_steps,
            grad_clip=opt.grad_clip, loss=rule.cost, dropout=model.dropout,
        )
    if model.kind == RESIDUAL:
        ep = ResidualEP(
            beta=rule.beta, steps=rule.nudged_steps, learning_rate=rule.step_size,
            optimizer=rule.inner_optimizer, embedding_gradient=rule.embedding_gradient,
            batch_scaling=rule.batch_scaling,
        )
        mean, std = INPUT_STATS.get(cfg.data.dataset, (None, None))
        preprocess = Preprocess(
            augment=cfg.data.augment,
            image_shape=tuple(image_shape) if image_shape is not None else None,
            mean=mean, std=std, random_targets=cfg.data.random_targets, n_classes=n_out,
        )
        return residual_learner(
            n_in, model.hidden[0], n_out, model.n_blocks,
            method="bp" if rule.rule == BACKPROP else "ep", ep=ep,
            learning_rate=opt.learning_rate, weight_decay=opt.weight_decay,
            schedule=opt.schedule, total_steps=total_steps, grad_clip=opt.grad_clip,
            preprocess=preprocess,
        )
    project = "clip01" if model.activation == "hard_sigmoid" else None

    def solver(steps, tol=None):
        if rule.solver == "gradient_descent":
            return GradientDescent(rule.step_size, steps, tol=tol, project=project,
                                   unroll=rule.unroll)
        order = "synchronous" if rule.solver == "fixed_point_sync" else "asynchronous"
        return FixedPoint(steps, tol=tol, order=order, unroll=rule.unroll)

    if model.kind == CONV:
        energy, cost, rates, preprocess = _conv_model(cfg, n_out, image_shape)
    else:
        energy = make_energy(model.energy, (n_in, *model.hidden, n_out),
                             activation=model.activation)
        cost, rates, preprocess = get_cost(rule.cost), opt.alphas, None
    energy = _with_precision(cfg, energy)
    return EPLearner(
        energy=energy,
        rule=rule.rule,
        phases=Phases(rule.beta, solver(rule.free_steps), solver(rule.nudged_steps), cost),
        tx=make_optimizer(opt.optimizer, rates, schedule=opt.schedule,
                          total_steps=total_steps, grad_clip=opt.grad_clip,
                          weight_decay=opt.weight_decay),
        eval_solver=solver(rule.eval_max_steps, rule.eval_tol), persistent=rule.persistent,
        state_init=rule.state_init, preprocess=preprocess,
    )


def _with_precision(cfg: TrainConfig, energy):
    """``energy`` relaxed in ``devices.precision`` (``ep_jax.precision``; float32: itself), after
    checking the settings a reduced precision cannot honour."""
    policy = Precision.parse(cfg.devices.precision)
    if policy.reduced:
        try:
            policy.check_rule(cfg.rule.rule, "rule.rule")
            policy.check_tolerance(cfg.rule.eval_tol, "rule.eval_tol")
        except ValueError as e:
            raise ValueError(f"{e} (with devices.precision={policy.name!r})") from None
    return policy.wrap(energy)


def _conv_model(cfg: TrainConfig, n_out: int, image_shape):
    """(energy, cost, per-part rates, input pipeline) of a conv net (see the module docstring)."""
    model, rule, opt = cfg.model, cfg.rule, cfg.optimizer
    if image_shape is None or len(image_shape) not in (2, 3):
        raise ValueError(
            f"model.kind: 'conv' needs image data ((H, W) or (H, W, C) rows), received dataset "
            f"{cfg.data.dataset!r} with image_shape {image_shape}"
        )
    shape = tuple(int(n) for n in image_shape)
    shape = shape + (1,) if len(shape) == 2 else shape
    readout = rule.cost == SOFTMAX_READOUT
    layers = tuple(zip(model.channels, model.kernels, model.strides, model.paddings, model.pools))
    energy = conv_hopfield(
        shape, conv=layers, dense=model.hidden if readout else (*model.hidden, n_out),
        activation=model.activation, input_activation=model.input_activation,
        readout_classes=n_out if readout else 0,
    )
    cost = SoftmaxReadout(head=READOUT) if readout else get_cost(rule.cost)
    n_conn = len(layers) + len(model.hidden) + (0 if readout else 1)
    rates = {layer_name(l): a for l, a in enumerate(opt.alphas[:n_conn])}
    if readout:
        rates[READOUT] = opt.alphas[-1]
    mean, std = CONV_INPUT_STATS.get(cfg.data.dataset, (None, None))
    preprocess = Preprocess(augment=cfg.data.augment, image_shape=shape, mean=mean, std=std,
                            to_images=True)
    return energy, cost, rates, preprocess

"""The learner a ``TrainConfig`` describes, for the training loop (``ep_jax.app.train``)."""

from __future__ import annotations

from ep_jax.app.config import BACKPROP, MLP, RESIDUAL, TrainConfig
from ep_jax.backprop import BackpropLearner
from ep_jax.costs import get_cost
from ep_jax.energies import make_energy
from ep_jax.learner import EPLearner
from ep_jax.optim import make_optimizer
from ep_jax.precision import Precision
from ep_jax.preprocess import Preprocess
from ep_jax.residual import ResidualEP, residual_learner
from ep_jax.rules import Phases
from ep_jax.solvers import GradientDescent

# Per-channel standardisation of the residual models' inputs (seed 004's CIFAR-10 constants;
# the usual MNIST ones).
INPUT_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist10k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def build_learner(cfg: TrainConfig, n_in: int, n_out: int, total_steps: int, image_shape=None):
    """The learner of ``cfg`` for inputs of size ``n_in`` and ``n_out`` classes.

    Args:
      cfg: the run's config.
      n_in, n_out: input size and number of classes (from the data).
      total_steps: optimizer steps of the whole run (the length of a cosine schedule).
      image_shape: the shape of one flat input row (a residual model's augmentation).

    Returns:
      A ``BackpropLearner`` (``model.kind="mlp"``) or an ``EPLearner`` (``"layered"``; the
      residual model's, with its input pipeline and credit diagnostics, for ``"residual"``).
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
        return GradientDescent(rule.step_size, steps, tol=tol, project=project)

    return EPLearner(
        energy=_with_precision(cfg, make_energy(model.energy, (n_in, *model.hidden, n_out),
                                                activation=model.activation)),
        rule=rule.rule,
        phases=Phases(rule.beta, solver(rule.free_steps), solver(rule.nudged_steps),
                      get_cost(rule.cost)),
        tx=make_optimizer(opt.optimizer, opt.alphas, schedule=opt.schedule,
                          total_steps=total_steps, grad_clip=opt.grad_clip),
        eval_solver=solver(rule.eval_max_steps, rule.eval_tol), persistent=rule.persistent,
        state_init=rule.state_init,
    )


def _with_precision(cfg: TrainConfig, energy):
    """``energy`` relaxed in ``devices.precision`` (``ep_jax.precision``; float32: itself), after
    checking the settings a reduced precision cannot honour."""
    policy = Precision(cfg.devices.precision)
    if policy.reduced:
        try:
            policy.check_rule(cfg.rule.rule, "rule.rule")
            policy.check_tolerance(cfg.rule.eval_tol, "rule.eval_tol")
        except ValueError as e:
            raise ValueError(f"{e} (with devices.precision={policy.compute!r})") from None
    return policy.wrap(energy)

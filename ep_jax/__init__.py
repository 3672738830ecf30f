"""ep_jax: Equilibrium Propagation and energy-based learning in JAX.

Energies are pure functions ``E(params, state, x) -> (batch,)`` over any state pytree
(``ep_jax.energies.Energy``); ``relax`` minimises ``F = E + beta * C`` with any solver
(``ep_jax.solvers.Solver``: gradient descent, fixed-point sweeps, any optax optimizer); learning
rules turn relaxed states into optax-ready gradients as differences of dF/dtheta; ``exact``
provides the gradients they are checked against; ``EPLearner`` trains any energy x rule x
optimizer. The application layer (data, presets, the training loop, checkpoints, plots, CLI) is
``ep_jax.app``; its main entry points are re-exported here on first use.
"""

from ep_jax.activations import ACTIVATIONS, get_activation, hard_sigmoid
from ep_jax.costs import (
    COSTS,
    SoftmaxReadout,
    classification_error,
    cross_entropy,
    get_cost,
    squared_error,
    total_energy,
)
from ep_jax.energies import (
    ENERGIES,
    AsymmetricHopfield,
    asymmetric_hopfield,
    weight_alignment,
    ConditionalGaussian,
    ConvHopfield,
    ConvLayer,
    Energy,
    Hopfield,
    LayeredEnergy,
    conditional_gaussian,
    conv_hopfield,
    hopfield,
    make_energy,
    restricted_hopfield,
)
from ep_jax.exact import bptt_gradient, compare, implicit_gradient
from ep_jax.backprop import BackpropLearner
from ep_jax.learner import EPLearner, EPState, Learner
from ep_jax.optim import make_optimizer, per_layer, per_layer_sgd
from ep_jax.precision import MixedPrecision, Precision
from ep_jax.preprocess import Preprocess
from ep_jax.rules import (
    RULES,
    Phases,
    RuleResult,
    energy_grad_difference,
    ep_gradient,
    free_phase,
    get_rule,
    holomorphic_gradient,
    nudged_phase,
    total_energy_grad_difference,
)
from ep_jax.solvers import (
    FixedPoint,
    GradientDescent,
    OptaxSolver,
    Problem,
    RelaxationError,
    RelaxStats,
    Solver,
    Stationary,
    check_stats,
    relax,
)
from ep_jax.residual import ResidualEnergy, ResidualEP, ResidualMLP, residual_ep_gradient, residual_optimizer
from ep_jax.credit import CreditReport, credit_diagnostics
from ep_jax.distributed import DataParallel, ShardedRows, batch_order, make_mesh

__version__ = "0.1.0"

# The application layer, imported on first use (it pulls in matplotlib, orbax, tfds, sklearn).
_APP = {
    "DATASETS": "ep_jax.app.data", "Dataset": "ep_jax.app.data", "load_dataset": "ep_jax.app.data",
    "PRESETS": "ep_jax.app.config", "TrainConfig": "ep_jax.app.config",
    "get_preset": "ep_jax.app.config",
    "train": "ep_jax.app.train", "evaluate_checkpoint": "ep_jax.app.train",
}


def __getattr__(name):
    if name in _APP:
        import importlib

        return getattr(importlib.import_module(_APP[name]), name)
    raise AttributeError(f"module 'ep_jax' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS", "COSTS", "ENERGIES", "RULES", *_APP,
    "AsymmetricHopfield", "asymmetric_hopfield", "holomorphic_gradient", "weight_alignment",
    "BackpropLearner", "CreditReport", "DataParallel", "ShardedRows", "batch_order", "make_mesh", "ConditionalGaussian", "ConvHopfield", "ConvLayer", "EPLearner", "EPState", "Energy",
    "FixedPoint", "GradientDescent", "Hopfield", "LayeredEnergy", "Learner", "OptaxSolver",
    "MixedPrecision", "Phases", "Precision", "Preprocess", "Problem", "RelaxStats", "RelaxationError", "ResidualEP",
    "ResidualEnergy", "ResidualMLP", "RuleResult", "SoftmaxReadout", "Solver", "Stationary",
    "bptt_gradient", "check_stats", "classification_error", "compare", "conditional_gaussian",
    "conv_hopfield", "credit_diagnostics", "cross_entropy", "energy_grad_difference", "ep_gradient", "free_phase",
    "get_activation", "get_cost", "get_rule", "hard_sigmoid", "hopfield", "implicit_gradient",
    "make_energy", "make_optimizer", "nudged_phase", "per_layer", "per_layer_sgd", "relax",
    "residual_ep_gradient", "residual_optimizer", "restricted_hopfield", "squared_error",
    "total_energy", "total_energy_grad_difference",
]

"""ep_jax: Equilibrium Propagation and energy-based learning in JAX.

Energies are pure functions ``E(params, state, x) -> (batch,)``; ``relax`` minimises
``F = E + beta * C`` with a jitted solver; learning rules turn relaxed states into optax-ready
gradients; ``exact`` provides the gradients they are checked against. ``residual`` and
``credit`` hold seed 004's feed-forward EP on a residual MLP and its credit diagnostics.
"""

from ep_jax.activations import ACTIVATIONS, get_activation, hard_sigmoid
from ep_jax.costs import COSTS, cross_entropy, get_cost, squared_error, total_energy
from ep_jax.energies import (
    ENERGIES,
    ConditionalGaussian,
    Hopfield,
    LayeredEnergy,
    conditional_gaussian,
    hopfield,
    make_energy,
    restricted_hopfield,
)
from ep_jax.exact import bptt_gradient, compare, implicit_gradient
from ep_jax.backprop import BackpropLearner
from ep_jax.config import PRESETS, TrainConfig, get_preset
from ep_jax.data import DATASETS, Dataset, load_dataset
from ep_jax.learner import EPLearner
from ep_jax.optim import make_optimizer, per_layer, per_layer_sgd
from ep_jax.rules import RULES, Phases, RuleResult, energy_grad_difference, ep_gradient, free_phase, get_rule, nudged_phase
from ep_jax.solvers import (
    FixedPoint,
    GradientDescent,
    RelaxationError,
    RelaxStats,
    check_stats,
    relax,
)

from ep_jax.residual import ResidualEP, ResidualMLP, residual_ep_gradient, residual_optimizer
from ep_jax.credit import CreditReport, credit_diagnostics
from ep_jax.residual_learner import ResidualLearner
from ep_jax.train import evaluate_checkpoint, train

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "COSTS", "DATASETS", "ENERGIES", "PRESETS", "RULES",
    "BackpropLearner", "Dataset", "EPLearner", "TrainConfig", "evaluate_checkpoint", "get_preset",
    "load_dataset", "make_optimizer", "train",
    "CreditReport", "ResidualEP", "ResidualLearner", "ResidualMLP", "credit_diagnostics",
    "residual_ep_gradient", "residual_optimizer",
    "ConditionalGaussian", "FixedPoint", "GradientDescent", "Hopfield", "LayeredEnergy", "Phases",
    "RelaxStats", "RelaxationError", "RuleResult",
    "bptt_gradient", "check_stats", "compare", "conditional_gaussian", "cross_entropy",
    "energy_grad_difference", "ep_gradient", "free_phase", "get_activation", "get_cost", "get_rule",
    "hard_sigmoid", "hopfield", "implicit_gradient", "make_energy", "nudged_phase", "per_layer",
    "per_layer_sgd", "relax", "restricted_hopfield", "squared_error", "total_energy",
]

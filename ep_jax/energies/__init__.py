"""Energies: pure functions ``E(params, state, x) -> (batch,)`` over any state pytree.

Adding an energy: one file defining an ``Energy`` subclass (``ep_jax.energies.base``) and, to
make it available by name, one line in ``ENERGIES``.
"""

from ep_jax.energies.base import Energy, Params, State, StateInit
from ep_jax.energies.layered import LayeredEnergy, layer_name
from ep_jax.energies.conditional_gaussian import ConditionalGaussian, conditional_gaussian
from ep_jax.energies.hopfield import Hopfield, hopfield, restricted_hopfield
from ep_jax.energies.vector_field import AsymmetricHopfield, asymmetric_hopfield, weight_alignment
from ep_jax.energies.conv_hopfield import ConvHopfield, ConvLayer, conv_hopfield

ENERGIES = {
    "hopfield": hopfield,
    "restricted_hopfield": restricted_hopfield,
    "conditional_gaussian": conditional_gaussian,
    "asymmetric_hopfield": asymmetric_hopfield,  # vector-field EP (forward + feedback weights)
    "conv_hopfield": conv_hopfield,
}


def make_energy(name: str, sizes, **kwargs) -> Energy:
    """Builds a registered energy by name, e.g. ``make_energy("hopfield", (784, 500, 10))``.

    ``sizes`` is the factory's first argument: layer sizes for layered energies, the input
    shape ``(H, W, C)`` for ``make_energy("conv_hopfield", (32, 32, 3), conv=..., dense=...)``.
    """
    try:
        factory = ENERGIES[name]
    except KeyError:
        raise ValueError(f"energy: expected one of {sorted(ENERGIES)}, received {name!r}") from None
    return factory(sizes, **kwargs)

__all__ = [
    "AsymmetricHopfield", "asymmetric_hopfield", "weight_alignment",
    "ENERGIES", "ConditionalGaussian", "ConvHopfield", "ConvLayer", "Energy", "Hopfield", "LayeredEnergy", "Params", "State", "StateInit",
    "conditional_gaussian", "conv_hopfield", "hopfield", "layer_name", "make_energy", "restricted_hopfield",
]

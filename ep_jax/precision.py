"""Reduced precision: relax in bfloat16 or float16, learn in float32.

A ``Precision`` policy names the *compute* dtype of the relaxation. ``Precision.wrap(energy)``
returns the energy itself for ``"float32"`` and otherwise a ``MixedPrecision`` energy, which every
solver, rule and learner takes unchanged (it is an ``Energy``). The dtypes of one EP step::

    params theta, x, grads, optimizer state         float32 (the caller's params dtype)
    theta_c, x_c = cast(theta), cast(x)             compute dtype, once per step (``input_drive``)
    states s, particles, dE/ds, solver updates      compute dtype: s <- s - eps dE/ds(theta_c, s, x_c)
    products inside dE/ds (rho(s) @ W_c)            compute-dtype operands, float32 accumulation by
                                                    XLA on CPU and GPU, the result rounded once
    output(s), the cost C and beta dC/ds_out        float32 (``output`` casts up); the nudge is added
                                                    to dE/ds_out in float32 and rounded once
    learning rule dE/dtheta(s_a) - dE/dtheta(s_b)   float32, on the states cast up (exact: every
                                                    compute-dtype number is a float32 number)

so parameters, gradients and the optimizer never lose precision; what changes is where the
relaxation lands (the states carry 8 significant bits in bfloat16, 11 in float16) and half the
memory and bandwidth of the states: persistent particles are stored in the compute dtype.

Tolerances. A state component s changes only by multiples of its ulp, so a solver update below
half an ulp rounds to no change: in the compute dtype the update norm can reach 0 while dF/ds is
far from 0. An update-norm tolerance under the dtype's resolution (``Precision.resolution``, the
spacing of unit-scale states: 2^-7 for bfloat16, 2^-10 for float16) would call that stagnation
"converged"; ``check_tolerance`` refuses such a tolerance, naming the setting.

Not covered: states with complex leaves (bfloat16 and float16 have no complex type: refused), and
rules that bypass the energy's relaxation methods (seed 000's schemes run their own sweeps on the
float32 parameters: ``MixedPrecision.check_inputs`` cannot see them, see ``docs/PRECISION.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ep_jax.energies.base import Energy, Params, State, StateInit

PRECISIONS = ("float32", "bfloat16", "float16")


def _cast_floats(tree, dtype):
    """Casts every real floating leaf of ``tree`` to ``dtype`` (integer leaves are kept)."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A precision policy: the dtype states and products are computed in.

    Attributes:
      compute: ``"float32"`` (no change), ``"bfloat16"`` or ``"float16"``; parameters, gradients
        and the optimizer keep the params' own dtype (float32 in training) in every case.
    """

    compute: str = "float32"

    def __post_init__(self):
        if self.compute not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, received {self.compute!r}")

    @property
    def dtype(self):
        return jnp.dtype(self.compute)

    @property
    def reduced(self) -> bool:
        return self.compute != "float32"

    @property
    def resolution(self) -> float:
        """The spacing of unit-scale numbers in the compute dtype (``finfo.eps``): 2^-7 for
        bfloat16, 2^-10 for float16, 2^-23 for float32."""
        return float(jnp.finfo(self.dtype).eps)

    def check_tolerance(self, tol: Optional[float], name: str = "tol") -> None:
        """Raises ``ValueError`` if an update-norm tolerance is below ``resolution`` (see the
        module docstring: below it the update norm measures rounding, not distance)."""
        if tol is not None and self.reduced and tol < self.resolution:
            raise ValueError(
                f"{name}: expected None or >= {self.resolution:.3g} (the resolution of "
                f"{self.compute} states: smaller updates round to no change, so a smaller "
                f"update-norm tolerance would report stagnation as convergence), received {tol!r}"
            )

    def check_rule(self, rule, name: str = "rule") -> None:
        """Raises ``ValueError`` for a rule the policy cannot reach: seed 000's schemes run their
        own sweeps on the parameters, not the energy's relaxation methods."""
        from ep_jax.rules.seed000 import SEED000_RULES

        named = isinstance(rule, str) and rule in SEED000_RULES
        if self.reduced and (named or any(rule is r for r in SEED000_RULES.values())):
            raise ValueError(
                f"{name}: {self.compute} relaxation supports the rules that relax through the "
                f"energy (every rule but seed 000's schemes, which sweep the float32 parameters "
                f"themselves), received {rule!r}; use precision float32 for it"
            )

    def wrap(self, energy: Energy) -> Energy:
        """``energy`` relaxed in this precision: itself for float32, else ``MixedPrecision``."""
        if not self.reduced:
            return energy
        if isinstance(energy, MixedPrecision):
            raise ValueError(
                f"energy: already wrapped in {energy.policy.compute}; wrap the plain energy"
            )
        return MixedPrecision(energy, self)


class CastDrive(NamedTuple):
    """What ``MixedPrecision.input_drive`` hoists out of the relaxation loop: the wrapped energy's
    own drive and the params and input cast once to the compute dtype (a pytree)."""

    inner: Any
    params: Params
    x: jax.Array


@dataclasses.dataclass(frozen=True)
class MixedPrecision(Energy):
    """``energy`` relaxed in ``policy.compute``, learnt in the params' dtype (module docstring).

    Relaxation-side methods (``__call__``, ``state_grad``, ``input_drive``, ``layer_field``,
    ``state_shapes``, ``init_state``, ``feedforward_state``) run the wrapped energy on the params
    and input cast to the compute dtype, with states stored in it; ``param_grad_difference`` (the
    learning rules' contrast) runs the wrapped energy in the params' dtype on the states cast
    up; ``output`` casts the output layer up, so costs, targets and metrics are in the params'
    dtype. Any other attribute (``sizes``, ``rho``, ...) is the wrapped energy's.

    Attributes:
      energy: the wrapped energy (its params and inputs are float32 as usual).
      policy: the ``Precision`` (a reduced one).
    """

    energy: Energy
    policy: Precision

    def __post_init__(self):
        if not isinstance(self.energy, Energy) or isinstance(self.energy, MixedPrecision):
            raise ValueError(
                f"energy: expected an unwrapped ep_jax Energy, received {type(self.energy).__name__}"
            )
        if not self.policy.reduced:
            raise ValueError(
                f"policy: expected a reduced precision {PRECISIONS[1:]}, received "
                f"{self.policy.compute!r} (use the energy itself)"
            )

    def __getattr__(self, name: str) -> Any:
        # Only reached for names MixedPrecision does not define: the wrapped energy's structure.
        if name.startswith("__") or name in ("energy", "policy"):
            raise AttributeError(name)
        return getattr(self.energy, name)

    # ---- dtypes ---------------------------------------------------------------------------
    @property
    def compute_dtype(self):
        return self.policy.dtype

    def _low(self, tree):
        return _cast_floats(tree, self.compute_dtype)

    def _drive(self, params: Params, x: jax.Array, drive) -> tuple:
        """(inner drive, params_c, x_c): from the hoisted drive, else cast here."""
        if isinstance(drive, CastDrive):
            return drive.inner, drive.params, drive.x
        params_c, x_c = self._low(params), self._low(x)
        return self.energy.input_drive(params_c, x_c), params_c, x_c

    # ---- the protocol ----------------------------------------------------------------------
    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        """E in the compute dtype, returned in the params' dtype (per example, ``(batch,)``)."""
        e = self.energy(self._low(params), state, self._low(x))
        return e.astype(self.energy.param_dtype(params))

    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        return self.energy.init_params(key, dtype)

    def state_shapes(self, batch: int, dtype=None) -> State:
        """The wrapped energy's state structure in the compute dtype (whatever ``dtype`` says:
        the caller passes the params' dtype)."""
        return self.energy.state_shapes(batch, self.compute_dtype)

    def output(self, state: State) -> jax.Array:
        """The output layer cast up to float32: the cost, its gradient and metrics in float32."""
        return self.energy.output(state).astype(jnp.float32)

    def with_output(self, state: State, value: jax.Array) -> State:
        """The output replaced by ``value`` rounded to the compute dtype (the nudged output
        gradient dE/ds_out + beta dC/ds_out is summed in float32 and rounded once here)."""
        return self.energy.with_output(state, value.astype(self.compute_dtype))

    # ---- checks -------------------------------------------------------------------------------
    def check_params(self, params: Params) -> None:
        self.energy.check_params(params)

    def param_dtype(self, params: Params):
        return self.energy.param_dtype(params)

    def check_x(self, params: Params, x: jax.Array) -> None:
        self.energy.check_x(params, x)

    def check_inputs(self, params: Params, state: State | None, x: jax.Array) -> None:
        """The wrapped energy's checks: params and ``x`` in the params' dtype, the state in the
        compute dtype; complex states are refused (no complex bfloat16 / float16)."""
        self.energy.check_params(params)
        self.energy.check_x(params, x)
        if state is not None:
            for leaf in jax.tree.leaves(state):
                if jnp.iscomplexobj(leaf):
                    raise ValueError(
                        f"state: {self.policy.compute} has no complex type, received a "
                        f"{jnp.result_type(leaf)} leaf; relax complex states in float32"
                    )
        self.energy.check_inputs(self._low(params), state, self._low(x))

    # ---- initial states ------------------------------------------------------------------
    def zeros_state(self, x: jax.Array) -> State:
        return self.energy.zeros_state(self._low(x))

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        return self.energy.feedforward_state(self._low(params), self._low(x))

    def init_state(self, params: Params, x: jax.Array, init: StateInit = "zeros") -> State:
        """As ``Energy.init_state``, in the compute dtype (a given state is rounded to it)."""
        return self._low(self.energy.init_state(self._low(params), self._low(x), init))

    # ---- relaxation ---------------------------------------------------------------------
    @property
    def identity_on_unit_box(self) -> bool:
        return self.energy.identity_on_unit_box

    @property
    def holomorphic(self) -> bool:
        """False: the compute dtypes have no complex type (holomorphic EP runs in float32)."""
        return False

    def input_drive(self, params: Params, x: jax.Array):
        """The wrapped energy's drive on the cast params and input, with the cast params and
        input themselves: the casts are loop-invariant, done once per step with the drive."""
        params_c, x_c = self._low(params), self._low(x)
        return CastDrive(self.energy.input_drive(params_c, x_c), params_c, x_c)

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """dE/ds in the compute dtype (the wrapped energy's closed form or autodiff)."""
        inner, params_c, x_c = self._drive(params, x, drive)
        return self.energy.state_grad(params_c, state, x_c, drive=inner, in_box=in_box)

    def layer_field(self, params: Params, state: State, x: jax.Array, l: int, *, drive=None,
                    in_box: bool = False) -> jax.Array:
        """The wrapped energy's fixed-point field (``FixedPoint`` sweeps) in the compute dtype."""
        field = getattr(self.energy, "layer_field", None)
        if not callable(field):
            raise ValueError(
                f"energy: FixedPoint needs a layered energy with a fixed-point form "
                f"(layer_field), received {type(self.energy).__name__}; use GradientDescent"
            )
        inner, params_c, x_c = self._drive(params, x, drive)
        return field(params_c, state, x_c, l, drive=inner, in_box=in_box)

    # ---- learning ------------------------------------------------------------------------
    def param_grad_difference(self, params: Params, x: jax.Array, state_a: State, state_b: State,
                              scale) -> Params:
        """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)) in the params' dtype: the wrapped energy's
        rule on the states cast up (exactly), so gradients and updates stay float32."""
        dtype = self.energy.param_dtype(params)
        up = lambda s: _cast_floats(s, dtype)  # noqa: E731
        return self.energy.param_grad_difference(params, x, up(state_a), up(state_b), scale)


def mixed_precision(energy: Energy, precision: str) -> Energy:
    """``Precision(precision).wrap(energy)``: ``energy`` itself for ``"float32"``."""
    return Precision(precision).wrap(energy)

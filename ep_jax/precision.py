"""Reduced precision: relax in bfloat16 or float16, learn in float32.

A ``Precision`` policy names the *compute* dtype of the relaxation's products and the dtype its
*states* are stored in (by default the compute dtype; ``states="float32"`` is the mixed-precision
remedy below, named ``"bfloat16-products"`` / ``"float16-products"`` in ``POLICIES``).
``Precision.wrap(energy)`` returns the energy itself for ``"float32"`` and otherwise a
``MixedPrecision`` energy, which every solver, rule and learner takes unchanged (it is an
``Energy``). The dtypes of one EP step with states in the compute dtype::

    params theta, x, grads, optimizer state         float32 (the caller's params dtype)
    theta_c, x_c = cast(theta), cast(x)             compute dtype, once per step (``input_drive``)
    states s, particles, dE/ds, solver updates      compute dtype: s <- s - eps dE/ds(theta_c, s, x_c)
    products inside dE/ds (rho(s) @ W_c)            compute-dtype operands, float32 accumulation by
                                                    XLA on CPU and GPU, the result rounded once
    output(s), the cost C and beta dC/ds_out        float32 (``output`` casts up); the nudge is added
                                                    to dE/ds_out in float32 and rounded once
    learning rule dE/dtheta(s_a) - dE/dtheta(s_b)   float32, on the states cast up (exact: every
                                                    compute-dtype number is a float32 number)

With ``states="float32"`` (policy ``"bfloat16-products"``) the states, particles, dE/ds, the
solver updates s <- s - eps dE/ds and the update norms are float32; only the products run on
compute-dtype operands. For the layered Hopfield energy with the activity quadratic (``Hopfield``)
the wrapper computes its field form itself::

    h_l = rho(s_{l-1})_c W_{l-1,c} + b_{l-1} + rho(s_{l+1})_c W_{l,c}^T  compute-dtype operands (the
                                                  states rounded), float32 accumulation AND result
                                                  (``preferred_element_type``), float32 bias
    dE/ds_l = rho'(s_l) (rho(s_l) - h_l)          float32, on the float32 state

so a small update (a nudge below the compute dtype's ulp of the states) accumulates in float32
instead of rounding away, the self term s_l (the one the nudge moves) is never rounded, and a
field change below h's ulp is kept. Measured on mnist10k (``docs/PRECISION.md``): rounding the
whole dE/ds instead gives gradient cosine 0.9975 after one epoch (0.99993 here), rounding the
fields' result 0.9984 at the end of training (0.99960 here). Other energies run their own
``state_grad`` / ``layer_field`` on the cast states and params, the result cast up to float32.

In both, parameters, gradients and the optimizer never lose precision; what changes is where the
relaxation lands (the states carry 8 significant bits in bfloat16, 11 in float16) and half the
memory and bandwidth of the states: persistent particles are stored in the compute dtype.

Tolerances. A state component s changes only by multiples of its ulp, so a solver update below
half an ulp rounds to no change: in the compute dtype the update norm can reach 0 while dF/ds is
far from 0. An update-norm tolerance under the dtype's resolution (``Precision.resolution``, the
spacing of unit-scale states: 2^-7 for bfloat16, 2^-10 for float16) would call that stagnation
"converged"; ``check_tolerance`` refuses such a tolerance, naming the setting. With float32
states nothing stagnates: the update norm is eps ||dE/ds|| as computed, and the relaxation does
reach a fixed point of the computed map (s = h_c(round(s)) for the Hopfield energy). But dE/ds is
computed from states and fields rounded to the compute dtype, so at that point the exact dE/ds
is known only to the compute dtype's resolution: a smaller tolerance would certify an accuracy
the products do not have. The same bound (the compute dtype's ``resolution``) is refused.

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
# The named policies (``Precision.parse``; the app's ``devices.precision``): a compute dtype alone
# stores the states in it; ``<dtype>-products`` stores them in float32 (products only reduced).
POLICIES = PRECISIONS + ("bfloat16-products", "float16-products")
PRODUCTS_SUFFIX = "-products"


def _cast_floats(tree, dtype):
    """Casts every real floating leaf of ``tree`` to ``dtype`` (integer leaves are kept)."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A precision policy: the dtype products are computed in and the dtype states are stored in.

    Attributes:
      compute: ``"float32"`` (no change), ``"bfloat16"`` or ``"float16"``; parameters, gradients
        and the optimizer keep the params' own dtype (float32 in training) in every case.
      states: the dtype of the states, persistent particles, dE/ds and solver updates: ``None``
        (default) the compute dtype; ``"float32"``: products in ``compute``, everything the
        solver accumulates in float32 (module docstring).
    """

    compute: str = "float32"
    states: Optional[str] = None

    def __post_init__(self):
        if self.compute not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, received {self.compute!r}")
        if self.states is not None and self.states not in (self.compute, "float32"):
            raise ValueError(
                f"states: expected None, {self.compute!r} or 'float32', received {self.states!r}"
            )

    @classmethod
    def parse(cls, name: str) -> "Precision":
        """The policy named ``name`` (one of ``POLICIES``): ``"bfloat16"`` stores the states in
        bfloat16, ``"bfloat16-products"`` in float32 (``Precision("bfloat16", "float32")``)."""
        if not isinstance(name, str) or name not in POLICIES:
            raise ValueError(f"precision: expected one of {POLICIES}, received {name!r}")
        if name.endswith(PRODUCTS_SUFFIX):
            return cls(name[: -len(PRODUCTS_SUFFIX)], "float32")
        return cls(name)

    @property
    def name(self) -> str:
        """The policy's name in ``POLICIES``: ``Precision.parse(p.name)`` relaxes as ``p``."""
        if self.reduced and self.state_dtype != self.dtype:
            return self.compute + PRODUCTS_SUFFIX
        return self.compute

    @property
    def state_dtype(self):
        return jnp.dtype(self.states or self.compute)

    @property
    def dtype(self):
        return jnp.dtype(self.compute)

    @property
    def reduced(self) -> bool:
        return self.compute != "float32"

    @property
    def resolution(self) -> float:
        """The spacing of unit-scale numbers in the compute dtype (``finfo.eps``): 2^-7 for
        bfloat16, 2^-10 for float16, 2^-23 for float32. With float32 states it still bounds what
        an update-norm tolerance certifies: dE/ds is computed from the states rounded to the
        compute dtype (module docstring)."""
        return float(jnp.finfo(self.dtype).eps)

    def check_tolerance(self, tol: Optional[float], name: str = "tol") -> None:
        """Raises ``ValueError`` if an update-norm tolerance is below ``resolution`` (see the
        module docstring: below it the update norm measures rounding, not distance)."""
        if tol is not None and self.reduced and tol < self.resolution:
            raise ValueError(
                f"{name}: expected None or >= {self.resolution:.3g} ({self._why_resolution()}), "
                f"received {tol!r}"
            )

    def _why_resolution(self) -> str:
        if self.state_dtype == self.dtype:
            return (f"the resolution of {self.compute} states: smaller updates round to no change, "
                    "so a smaller update-norm tolerance would report stagnation as convergence")
        return (f"the resolution of {self.compute} products: dE/ds is computed from states and "
                "fields rounded to it, so a smaller update-norm tolerance would certify an "
                "accuracy the products do not have")

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
                f"energy: already wrapped in {energy.policy.name}; wrap the plain energy"
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
    and input (and the states) cast to the compute dtype; states are stored in
    ``policy.state_dtype`` (the compute dtype, or float32 for ``-products``, whose dE/ds and
    fields are cast back up to it); ``param_grad_difference`` (the
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
                f"policy: expected a reduced precision {POLICIES[1:]}, received "
                f"{self.policy.name!r} (use the energy itself)"
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

    @property
    def state_dtype(self):
        return self.policy.state_dtype

    def _low(self, tree):
        return _cast_floats(tree, self.compute_dtype)

    def _store(self, tree):
        """``tree`` in the states' dtype (a no-op cast when it is the compute dtype)."""
        return _cast_floats(tree, self.state_dtype)

    def _drive(self, params: Params, x: jax.Array, drive) -> tuple:
        """(inner drive, params_c, x_c): from the hoisted drive, else computed here."""
        if not isinstance(drive, CastDrive):
            drive = self.input_drive(params, x)
        return drive.inner, drive.params, drive.x

    @property
    def _products_field_form(self) -> bool:
        """Float32 states on a field-form energy: fields computed by ``_field`` (float32 out)."""
        return self.state_dtype != self.compute_dtype and self._field_form

    def _dot(self, a, b):
        """a @ b on compute-dtype operands, accumulated and returned in the states' dtype."""
        return jnp.matmul(a, b, preferred_element_type=self.state_dtype)

    def _field(self, params: Params, params_c: Params, state: tuple, l: int, drive,
               in_box: bool) -> jax.Array:
        """The Hopfield field h_l = W_{l-1}^T rho(s_{l-1}) + b_{l-1} + W_l rho(s_{l+1}) of
        ``Hopfield._field`` with compute-dtype operands (rho of the states rounded to it, the
        cast kernels) and the products' float32 accumulation *kept* (``preferred_element_type``),
        the float32 bias added: a change of the field below the compute dtype's ulp of h (the
        nudge, late in training) is not rounded away with the product's result."""
        from ep_jax.energies.layered import layer_name

        low = self._low(state)
        if in_box and self.energy.identity_on_unit_box:
            r = list(low)
        else:
            r = [self.energy.rho(k)(s) for k, s in enumerate(low, start=1)]
        if l == 1:
            h = drive
        else:
            below = layer_name(l - 1)
            h = (self._dot(r[l - 2], params_c[below]["kernel"])
                 + params[below]["bias"].astype(self.state_dtype))
        if l < len(r):
            h = h + self._dot(r[l], params_c[layer_name(l)]["kernel"].T)
        return h

    # ---- the protocol ----------------------------------------------------------------------
    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        """E in the compute dtype, returned in the params' dtype (per example, ``(batch,)``).

        With float32 states and a field-form energy (``_field_form``) its derivative in the
        states is ``state_grad``'s field form rho'(s) (rho(s) - h_c) (a custom vjp; the value is
        E_c(round(s))): the rules that differentiate E themselves (``first-step``'s sweep) then
        see the same relaxation map as the solvers, not autodiff's rounding of the whole E.
        """
        if self.state_dtype != self.compute_dtype and self._field_form:
            return self._field_energy(params, tuple(state), x)
        e = self.energy(self._low(params), self._low(state), self._low(x))
        return e.astype(self.energy.param_dtype(params))

    def _plain_energy(self, params, state, x):
        e = self.energy(self._low(params), self._low(state), self._low(x))
        return e.astype(self.energy.param_dtype(params))

    @property
    def _field_energy(self):
        @jax.custom_vjp
        def energy(params, state, x):
            return self._plain_energy(params, state, x)

        def fwd(params, state, x):
            return self._plain_energy(params, state, x), (params, state, x)

        def bwd(res, ct):
            params, state, x = res
            _, vjp = jax.vjp(lambda p, xx: self._plain_energy(p, state, xx), params, x)
            g_params, g_x = vjp(ct)
            g_state = self.state_grad(params, state, x)
            g_state = tuple(g * ct.astype(g.dtype)[:, None] for g in g_state)
            return g_params, g_state, g_x

        energy.defvjp(fwd, bwd)
        return energy

    def init_params(self, key: jax.Array, dtype=jnp.float32) -> Params:
        return self.energy.init_params(key, dtype)

    def state_shapes(self, batch: int, dtype=None) -> State:
        """The wrapped energy's state structure in the states' dtype (whatever ``dtype`` says:
        the caller passes the params' dtype)."""
        return self.energy.state_shapes(batch, self.state_dtype)

    def output(self, state: State) -> jax.Array:
        """The output layer cast up to float32: the cost, its gradient and metrics in float32."""
        return self.energy.output(state).astype(jnp.float32)

    def with_output(self, state: State, value: jax.Array) -> State:
        """The output replaced by ``value`` in the states' dtype (the nudged output gradient
        dE/ds_out + beta dC/ds_out is summed in float32 and rounded once here, if at all)."""
        return self.energy.with_output(state, value.astype(self.state_dtype))

    # ---- checks -------------------------------------------------------------------------------
    def check_params(self, params: Params) -> None:
        self.energy.check_params(params)

    def param_dtype(self, params: Params):
        return self.energy.param_dtype(params)

    def check_x(self, params: Params, x: jax.Array) -> None:
        self.energy.check_x(params, x)

    def check_inputs(self, params: Params, state: State | None, x: jax.Array) -> None:
        """The wrapped energy's checks: params and ``x`` in the params' dtype, the state in the
        states' dtype; complex states are refused (no complex bfloat16 / float16)."""
        self.energy.check_params(params)
        self.energy.check_x(params, x)
        if state is not None:
            for leaf in jax.tree.leaves(state):
                if jnp.iscomplexobj(leaf):
                    raise ValueError(
                        f"state: {self.policy.compute} has no complex type, received a "
                        f"{jnp.result_type(leaf)} leaf; relax complex states in float32"
                    )
                if jnp.result_type(leaf) != self.state_dtype:
                    raise ValueError(
                        f"state: expected dtype {self.state_dtype} (the states of precision "
                        f"{self.policy.name!r}), received {jnp.result_type(leaf)}"
                    )
        self.energy.check_inputs(self._low(params), self._low(state), self._low(x))

    # ---- initial states ------------------------------------------------------------------
    def zeros_state(self, x: jax.Array) -> State:
        return self._store(self.energy.zeros_state(self._low(x)))

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        return self._store(self.energy.feedforward_state(self._low(params), self._low(x)))

    def init_state(self, params: Params, x: jax.Array, init: StateInit = "zeros") -> State:
        """As ``Energy.init_state``, in the states' dtype (a given state is cast to it)."""
        return self._store(self.energy.init_state(self._low(params), self._low(x), init))

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
        if self._products_field_form:  # rho_0(x) W_0 + b_0, float32 out (``_field``)
            from ep_jax.energies.layered import layer_name

            first = layer_name(0)
            inner = (self._dot(self.energy.rho(0)(x_c), params_c[first]["kernel"])
                     + params[first]["bias"].astype(self.state_dtype))
            return CastDrive(inner, params_c, x_c)
        return CastDrive(self.energy.input_drive(params_c, x_c), params_c, x_c)

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """dE/ds computed in the compute dtype on the state cast to it (the wrapped energy's closed
        form or autodiff), returned in the states' dtype (float32 for ``-products`` policies)."""
        inner, params_c, x_c = self._drive(params, x, drive)
        if self._products_field_form:
            return self._field_state_grad(params, params_c, tuple(state), inner, in_box)
        return self._store(self.energy.state_grad(params_c, self._low(state), x_c, drive=inner,
                                                  in_box=in_box))

    @property
    def _field_form(self) -> bool:
        """True for energies whose dE/ds_l is rho_l'(s_l) (rho_l(s_l) - h_l) with h_l their
        ``layer_field`` (the layered Hopfield energy with the activity quadratic)."""
        from ep_jax.energies.hopfield import Hopfield

        return isinstance(self.energy, Hopfield) and self.energy.quadratic == "activity"

    def _field_state_grad(self, params, params_c, state: tuple, inner, in_box: bool) -> State:
        """dE/ds_l = rho_l'(s_l) (rho_l(s_l) - h_l) with only the fields h_l (every product) on
        compute-dtype operands (``_field``: float32 accumulation and result); rho, rho' and the
        difference are taken in float32 on the float32 states, so the self term is not rounded."""
        grads = []
        for l, s in enumerate(state, start=1):
            h = self._field(params, params_c, state, l, inner, in_box)
            if in_box and self.energy.identity_on_unit_box:
                grads.append(s - h)
            else:
                r, back = jax.vjp(self.energy.rho(l), s)
                grads.append(back(r - h)[0])
        return tuple(grads)

    def layer_field(self, params: Params, state: State, x: jax.Array, l: int, *, drive=None,
                    in_box: bool = False) -> jax.Array:
        """The wrapped energy's fixed-point field (``FixedPoint`` sweeps), computed in the compute
        dtype on the state cast to it, returned in the states' dtype."""
        field = getattr(self.energy, "layer_field", None)
        if not callable(field):
            raise ValueError(
                f"energy: FixedPoint needs a layered energy with a fixed-point form "
                f"(layer_field), received {type(self.energy).__name__}; use GradientDescent"
            )
        inner, params_c, x_c = self._drive(params, x, drive)
        if self._products_field_form:
            return self._field(params, params_c, tuple(state), l, inner, in_box)
        return self._store(field(params_c, self._low(state), x_c, l, drive=inner, in_box=in_box))

    # ---- learning ------------------------------------------------------------------------
    def param_grad_difference(self, params: Params, x: jax.Array, state_a: State, state_b: State,
                              scale) -> Params:
        """scale * (dE/dtheta(s_a) - dE/dtheta(s_b)) in the params' dtype: the wrapped energy's
        rule on the states cast up (exactly), so gradients and updates stay float32."""
        dtype = self.energy.param_dtype(params)
        up = lambda s: _cast_floats(s, dtype)  # noqa: E731
        return self.energy.param_grad_difference(params, x, up(state_a), up(state_b), scale)


def mixed_precision(energy: Energy, precision: str) -> Energy:
    """``Precision.parse(precision).wrap(energy)``: ``energy`` itself for ``"float32"``."""
    return Precision.parse(precision).wrap(energy)

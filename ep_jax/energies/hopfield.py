"""The layered Hopfield energy (Scellier & Bengio 2017; seeds 001, 002, 003).

One energy covers seed 001's ``hopfield`` and seed 002's ``RestrictedHopfield``; they differ
only in what the quadratic term sees (``quadratic="activity"``: 1/2 rho(s)^2, seed 001;
``quadratic="state"``: 1/2 s^2 on the raw states, seed 002)::

    E(s) = 1/2 sum_{l=0}^{L} ||q_l||^2 - sum_{l=0}^{L-1} ( b_l . rho(s_{l+1}) + rho(s_l)^T W_l rho(s_{l+1}) )

with q_l = rho_l(s_l) or s_l, s_0 = x the clamped input (its quadratic term is a constant kept so
the energy values equal the seeds'), per-layer activations rho_l. Seed 002 writes the coupling
as two symmetric halves 1/2 (r_pre W r_post + r_post W^T r_pre); that is the same number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ep_jax.energies.layered import LayeredEnergy, Params, State, layer_name


@dataclasses.dataclass(frozen=True)
class Hopfield(LayeredEnergy):
    """Layered Hopfield energy; see the module docstring for the equation.

    Attributes:
      sizes: ``(n_input, n_hidden..., n_output)``.
      activation: ``rho`` per layer (default the hard sigmoid ``clip(s, 0, 1)``).
      quadratic: ``"activity"`` (1/2 rho(s)^2, seed 001) or ``"state"`` (1/2 s^2, seed 002).
    """

    quadratic: str = "activity"

    def __post_init__(self):
        super().__post_init__()
        if self.quadratic not in ("activity", "state"):
            raise ValueError(
                f"quadratic: expected 'activity' or 'state', received {self.quadratic!r}"
            )

    def activities(self, state: State, x: jax.Array) -> list[jax.Array]:
        layers = (x,) + tuple(state)
        return [self.rho(l)(s) for l, s in enumerate(layers)]

    def __call__(self, params: Params, state: State, x: jax.Array) -> jax.Array:
        layers = (x,) + tuple(state)
        r = self.activities(state, x)
        q = r if self.quadratic == "activity" else layers
        e = 0.5 * sum(jnp.sum(ql * ql, axis=-1) for ql in q)
        for l in range(len(layers) - 1):
            p = params[layer_name(l)]
            e = e - r[l + 1] @ p["bias"] - jnp.sum((r[l] @ p["kernel"]) * r[l + 1], axis=-1)
        return e

    # ---- relaxation: closed forms of the state gradient and the fields ---------------------
    def input_drive(self, params: Params, x: jax.Array) -> jax.Array:
        """rho_0(x) W_0 + b_0: the clamped input's (loop-invariant) part of layer 1's field.

        The largest product of a relaxation step; ``relax`` computes it once and the EP rules
        share it between the free and nudged phases, so it is done once per training step.
        """
        p = params[layer_name(0)]
        return self.rho(0)(x) @ p["kernel"] + p["bias"]

    def _activities(self, state: State, in_box: bool):
        """rho(s_l) of the free layers and the vjp of each rho (None where rho is the identity)."""
        if in_box and self.identity_on_unit_box:
            return list(state), [None] * len(state)
        pairs = [jax.vjp(self.rho(l), s) for l, s in enumerate(state, start=1)]
        return [r for r, _ in pairs], [back for _, back in pairs]

    def _field(self, params: Params, r: list, drive: jax.Array, l: int) -> jax.Array:
        """h_l = W_{l-1}^T r_{l-1} + b_{l-1} + W_l r_{l+1} from the free activities ``r``."""
        if l == 1:
            h = drive
        else:
            below = params[layer_name(l - 1)]
            h = r[l - 2] @ below["kernel"] + below["bias"]
        if l < len(r):
            h = h + r[l] @ params[layer_name(l)]["kernel"].T
        return h

    def state_grad(self, params: Params, state: State, x: jax.Array, *, drive=None,
                   in_box: bool = False) -> State:
        """Closed form of dE/ds_l (the same numbers as ``jax.grad`` up to float rounding):

            activity:  dE/ds_l = rho_l'(s_l) (rho_l(s_l) - h_l)        state:  s_l - rho_l'(s_l) h_l

        with h_l = W_{l-1}^T rho(s_{l-1}) + b_{l-1} + W_l rho(s_{l+1}) (``_field``), rho' applied
        as rho's vjp (for the hard sigmoid: zero outside the closed interval [0, 1], as torch).
        ``in_box=True`` (states known in [0, 1], hard sigmoids) skips rho and rho', which are
        then exactly the identity: the loop body is two products and one elementwise pass.
        """
        state = tuple(state)
        if drive is None:
            drive = self.input_drive(params, x)
        r, backs = self._activities(state, in_box)
        grads = []
        for l, s in enumerate(state, start=1):
            h = self._field(params, r, drive, l)
            back = backs[l - 1]
            if self.quadratic == "activity":
                g = r[l - 1] - h
                grads.append(g if back is None else back(g)[0])
            else:
                grads.append(s - (h if back is None else back(h)[0]))
        return tuple(grads)

    def layer_field(self, params: Params, state: State, x: jax.Array, l: int, *, drive=None,
                    in_box: bool = False) -> jax.Array:
        """h_l = W_{l-1}^T rho(s_{l-1}) + W_l rho(s_{l+1}) + b_{l-1} = -dE_int/d rho(s_l).

        ``drive``: ``input_drive(params, x)`` if already computed (layer 1's input part);
        ``in_box``: the states lie in [0, 1] and rho is the hard sigmoid (rho skipped, exactly).
        """
        if self.quadratic != "activity":
            return super().layer_field(params, state, x, l, drive=drive, in_box=in_box)
        state = tuple(state)
        if in_box and self.identity_on_unit_box:
            r = list(state)
        else:
            r = [self.rho(k)(s) for k, s in enumerate(state, start=1)]
        if l == 1 and drive is None:
            drive = self.input_drive(params, x)
        return self._field(params, r, drive, l)

    def param_grad_difference(self, params, x, state_a, state_b, scale):
        """Closed form of scale * (dE/dtheta(s_a) - dE/dtheta(s_b)) (E is linear in theta):

            dW_l = -(scale / B) (r^a_l^T r^a_{l+1} - r^b_l^T r^b_{l+1}),   db_l = -(scale / B) sum_b (r^a_{l+1} - r^b_{l+1})

        and for the clamped input r^a_0 = r^b_0 = rho(x), so dW_0 = -(scale / B) rho(x)^T (r^a_1 - r^b_1)
        is a single product instead of two (the largest one in an EP step).
        """
        ra, rb = self.activities(state_a, x), self.activities(state_b, x)
        c = -jnp.asarray(scale, x.dtype) / x.shape[0]
        grads = {}
        for l in range(len(ra) - 1):
            d_post = ra[l + 1] - rb[l + 1]
            if l == 0:
                dw = ra[0].T @ d_post
            else:
                dw = ra[l].T @ ra[l + 1] - rb[l].T @ rb[l + 1]
            grads[layer_name(l)] = {"kernel": c * dw, "bias": c * jnp.sum(d_post, axis=0)}
        return grads

    def feedforward_state(self, params: Params, x: jax.Array) -> State:
        """Bottom-up pass s_{l+1} = rho(rho(s_l) W_l + b_l): a warm start, not an equilibrium."""
        state, s = [], x
        for l in range(len(self.sizes) - 1):
            p = params[layer_name(l)]
            s = self.rho(l + 1)(self.rho(l)(s) @ p["kernel"] + p["bias"])
            state.append(s)
        return tuple(state)


def hopfield(sizes, activation="hard_sigmoid", quadratic="activity") -> Hopfield:
    """Seed 001's energy: 1/2 rho(s)^2 with the hard sigmoid (states kept in [0, 1])."""
    return Hopfield(sizes=tuple(sizes), activation=activation, quadratic=quadratic)


def restricted_hopfield(sizes, activation="sigmoid") -> Hopfield:
    """Seed 002's ``RestrictedHopfield``: the same energy with 1/2 s^2 on the raw states."""
    return Hopfield(sizes=tuple(sizes), activation=activation, quadratic="state")

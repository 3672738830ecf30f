"""Seed 000's four learning schemes, exactly as the notebook computes them (in JAX).

Seed 000 (``000_e0e19c9d96180d01.txt``, PyTorch port in ``tests/reference/seed000.py``) trains a
layered net with explicit layer-wise sweeps -- no energy is minimised -- and a delta-rule update.
These rules reproduce its numbers (float32 parity in ``tests/test_seed000.py``); they are not
the corrected rules of the library (``ep``, and the generalised ``first-step``).

Mapping of the seed's knobs:

=====================================  =====================================================
seed                                   here
=====================================  =====================================================
``hyper["n_it_neg"]``                  ``phases.free.max_steps`` (sweeps of the negative phase)
``hyper["n_it_pos"]``                  ``phases.nudged.max_steps`` (sweeps of the positive phase)
``hyper["beta"]``                      ``phases.beta`` (any sign; CHL ignores it)
``network.activation`` (sigmoid)       ``energy.rho(l)`` for layer l (build the energy with
                                       ``activation="sigmoid"`` to match the seed)
sizes ``[n_in] + hidden + [n_out]``    ``energy.sizes``
``weights[i]`` (n_i, n_{i+1})          ``params["layer_i"]["kernel"]``
``biases[k]``, k = 1..L                ``params["layer_{k-1}"]["bias"]``;  the seed's
                                       ``biases[0]`` (input layer) is never used nor updated:
                                       it has no counterpart
``persistent`` states                  ``state0`` (``EPLearner``'s particles); the returned
                                       ``free_state`` is what the seed writes back
``alphas[i]``                          the learning rate of ``layer_i`` (``per_layer_sgd``)
``hyper["batch_size"]``                ``B = x.shape[0]``
=====================================  =====================================================

The step size, projection, order and cost of ``phases``' solvers are not used (the seed has
none of them); ``tol`` must be ``None`` (the seed runs a fixed number of sweeps). ``key`` is
unused (nothing is random).

Notation: s_0 = x, s_1..s_L the free layers (s_L the output), y the one-hot target,
rho_l = ``energy.rho(l)``, W_l / b_l the kernel / bias of ``layer_l`` (b_{k-1} feeds layer k), and

    N(h) = (h - min_b h) / (max_b h - min_b h + 1e-5) - mean_b h

the seed's ``normalize``, per unit over the batch (it couples the examples of a batch; it
subtracts the mean of the raw h, not of the rescaled values).

One sweep of each phase (bottom-up Gauss-Seidel: layer k reads the *new* layer k-1 and the
*old* layer k+1; k = 1..L-1 are the hidden layers):

* free sweep (``chl_neg``; the hidden part also of ``relax``):
      s_k <- N(rho_k(s_{k-1} W_{k-1} + s_{k+1} W_k^T + b_{k-1})),    s_L <- rho_L(s_{L-1} W_{L-1} + b_{L-1})
* nudged-output free sweep (``ep_neg``): the same, then  s_L <- s_L - beta (s_L - y)
* PC-Nudge sweep (``pcnudge_neg``): p_k = rho_k(s_{k-1} W_{k-1} + b_{k-1}),  s_k <- N(p_k + (s_k - p_k))
  (the prediction cancels up to rounding: the hidden layers are the re-normalised old states),
  then the output as in ``ep_neg``
* clamped forward sweep (``relax``): the free hidden sweep, then s_L <- y (in the first sweep the
  top hidden layer still reads the old output)
* clamped backward sweep (``relax(reverse=True)``), top-down from s_L = y:
      s_k <- N(rho_k(f_{k-1} W_{k-1} + s_{k+1} W_k^T + b_{k-1})),  k = L-1..1,
  with f the *free* state (f_0 = x), so every sweep gives the same state (computed once; the
  residual of sweeps 2..n is 0).

Rules (negative phase from ``state0`` -> free state f; positive phase from f -> clamped c):

=====================  ==================  ==============================================
rule                   negative phase      positive phase
=====================  ==================  ==============================================
``seed000-chl``        free sweeps         backward sweeps from (f_1..f_{L-1}, y)
``seed000-ep``         nudged-output       forward clamped sweeps from f
``seed000-pc-nudge``   PC-Nudge            forward clamped sweeps from f
``seed000-first-step`` free sweeps          one output step (no sweeps), below
=====================  ==================  ==============================================

Update (all but first-step), with delta_{l} = c_l - f_l and the free presynaptic layer:

    W_l += alpha_l f_l^T delta_{l+1} / B,     b_l += alpha_l mean_b delta_{l+1}      (f_0 = x)

returned as the gradient to descend, ``grads[layer_l] = {kernel: -f_l^T delta_{l+1} / B,
bias: -mean_b delta_{l+1}}``, so ``per_layer_sgd(alphas)`` reproduces the seed's step.

First step (``first_step_pos``): u = f_{L-1} W_{L-1} + b_{L-1}, a = rho_L(u),
n = rho_L(u - beta (a - y)), delta = n - a (the output's delta, (B, n_out)), added to *every*
layer: W_l += alpha_l f_l^T delta / B, b_l += alpha_l mean_b delta. This only type-checks in the
seed when every free layer has the output's size, or when n_out == 1 (torch broadcasts the single
delta over every unit; reproduced here); other sizes raise ``ValueError`` at trace time (the seed
raises a torch ``RuntimeError`` after a partial update). The seed gives it no negative phase; the
free sweep (``chl_neg``) is used, so that a equals the free output f_L (``negative=`` selects
another: ``"chl"``, ``"ep"``, ``"pc-nudge"``).

``RuleResult``: ``free_state`` = the negative phase's state (the seed's new persistent state),
``nudged_state`` = the positive phase's state (first-step: f with the output replaced by n),
``second_state`` = ``free_state`` (no second phase), ``beta`` = ``phases.beta``.
``RelaxStats``: ``steps`` = sweeps run, ``residual`` = the last sweep's update norm
max_b ||s_t - s_{t-1}|| over all free layers (0 when no sweep ran; first-step: the output
change max_b ||n - f_L||), ``energy`` = mean_b of ``energy(params, state, x)`` at the returned
state (a diagnostic only: the seed's dynamics minimise no energy, and the seed itself, with
``energy_fn=None``, reports E = 0), ``converged`` = the state is finite (a fixed number of sweeps,
as ``tol=None`` in ``relax``), ``nonfinite`` = a NaN or Inf in the state.

``seed000_error`` is the seed's ``measure`` error (wrong unless argmax == y with a top-2 margin
> 1e-3), for reporting runs the way the notebook does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ep_jax.costs import as_dense_target
from ep_jax.energies.base import Params, State, StateInit
from ep_jax.energies.layered import LayeredEnergy, layer_name
from ep_jax.rules.base import Phases, RuleResult
from ep_jax.solvers import RelaxStats, all_finite, update_norm

SCHEMES = ("chl", "ep", "first-step", "pc-nudge")
NEGATIVE_PHASES = ("chl", "ep", "pc-nudge")


def normalize(h: jax.Array) -> jax.Array:
    """The seed's ``normalize``: (h - min_b h) / (max_b h - min_b h + 1e-5) - mean_b h, per unit."""
    lo, hi = jnp.min(h, axis=0), jnp.max(h, axis=0)
    return (h - lo) / (hi - lo + 1e-5) - jnp.mean(h, axis=0)


def _kernel(params, l):
    return params[layer_name(l)]["kernel"]


def _bias_of_layer(params, k):
    """The seed's ``biases[k]`` (k >= 1): the bias feeding layer k, ep_jax's ``layer_{k-1}``."""
    return params[layer_name(k - 1)]["bias"]


def _hidden_field(energy, params, below, above, k):
    """rho_k(below W_{k-1} + above W_k^T + b_k), in the seed's order of additions."""
    h = below @ _kernel(params, k - 1) + above @ _kernel(params, k).T + _bias_of_layer(params, k)
    return energy.rho(k)(h)


def _output(energy, params, top_hidden, L):
    return energy.rho(L)(top_hidden @ _kernel(params, L - 1) + _bias_of_layer(params, L))


def negative_sweep(energy, params, x, y, state, beta, kind: str) -> State:
    """One sweep of ``chl_neg`` / ``ep_neg`` / ``pcnudge_neg`` (``kind``: chl, ep, pc-nudge)."""
    layers = (x,) + tuple(state)
    L = len(state)
    new = [x]
    for k in range(1, L):
        if kind == "pc-nudge":
            pred = energy.rho(k)(new[-1] @ _kernel(params, k - 1) + _bias_of_layer(params, k))
            error = layers[k] - pred
            new.append(normalize(pred + error))
        else:
            new.append(normalize(_hidden_field(energy, params, new[-1], layers[k + 1], k)))
    out = _output(energy, params, new[-1], L)
    if kind != "chl":
        out = out - beta * (out - y)
    new.append(out)
    return tuple(new[1:])


def forward_clamped_sweep(energy, params, x, y, state) -> State:
    """One sweep of the seed's ``relax`` (forward): free hidden sweep, output clamped to y."""
    layers = (x,) + tuple(state)
    L = len(state)
    new = [x]
    for k in range(1, L):
        new.append(normalize(_hidden_field(energy, params, new[-1], layers[k + 1], k)))
    new.append(y)
    return tuple(new[1:])


def backward_clamped_sweep(energy, params, x, y, free: State) -> State:
    """One sweep of ``relax(reverse=True)``: top-down from y, lower layers read from ``free``."""
    lower = (x,) + tuple(free)
    L = len(free)
    new = [y]
    for k in range(L - 1, 0, -1):
        new.append(normalize(_hidden_field(energy, params, lower[k - 1], new[-1], k)))
    return tuple(reversed(new))


def _stats(energy, params, x, state, steps, residual) -> RelaxStats:
    bad = ~all_finite(state)
    e = jnp.mean(energy(params, tuple(state), x))
    # A fixed number of sweeps checks no tolerance: never "converged".
    return RelaxStats(
        jnp.asarray(steps, jnp.int32), jnp.asarray(residual, x.dtype), e.astype(x.dtype),
        jnp.asarray(False), bad, jnp.asarray(False), jnp.zeros((), x.dtype),
    )


UNROLL = 4  # up to this many sweeps are unrolled (the seed's n_it are 1), more use a fori_loop


def _iterate(sweep, state0: State, n: int):
    """``n`` sweeps -> (state, residual of the last sweep)."""
    state = tuple(state0)
    if n == 0:
        return state, jnp.zeros((), state[0].dtype)
    if n <= UNROLL:
        for _ in range(n - 1):
            state = tuple(sweep(state))
    else:
        state = jax.lax.fori_loop(0, n - 1, lambda _, s: tuple(sweep(s)), state)
    last = tuple(sweep(state))
    return last, update_norm(last, state)


def _sweeps(solver, which: str) -> int:
    n = getattr(solver, "max_steps", None)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"phases.{which}.max_steps: expected an int >= 0 (seed 000's n_it), received {n!r}")
    if getattr(solver, "tol", None) is not None:
        raise ValueError(
            f"phases.{which}.tol: expected None (seed 000 runs a fixed number of sweeps), "
            f"received {solver.tol!r}"
        )
    return n


def _delta_rule_grads(params, x, free: State, deltas) -> Params:
    """grads[layer_l] = {kernel: -f_l^T delta_l / B, bias: -mean_b delta_l}, broadcast to the
    layer's shape (the seed's in-place ``+=`` broadcasting)."""
    pre = (x,) + tuple(free)
    B = x.shape[0]
    grads = {}
    for l, delta in enumerate(deltas):
        p = params[layer_name(l)]
        dw = -(pre[l].T @ delta) / B
        db = -jnp.mean(delta, axis=0)
        grads[layer_name(l)] = {
            "kernel": jnp.broadcast_to(dw, p["kernel"].shape),
            "bias": jnp.broadcast_to(db, p["bias"].shape),
        }
    return grads


def check_first_step_sizes(sizes) -> None:
    """The seed's first-step update adds the output's delta to every layer."""
    n_out = sizes[-1]
    bad = [l for l in range(1, len(sizes)) if sizes[l] != n_out]
    if bad and n_out != 1:
        raise ValueError(
            f"seed000-first-step: the seed adds the output delta (batch, n_out={n_out}) to every "
            f"layer, which needs every free layer to have the output's size (or n_out == 1); "
            f"received sizes {tuple(sizes)} (layers {bad} differ). Use the generalised "
            f"'first-step' rule for other sizes."
        )


def seed000_gradient(
    energy: LayeredEnergy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: StateInit = "zeros",
    *,
    phases: Phases = Phases(),  # noqa: B008 (immutable NamedTuple, as in ep.py)
    key: jax.Array | None = None,
    scheme: str = "ep",
    negative: str | None = None,
) -> tuple[Params, RuleResult]:
    """One step of seed 000's ``scheme`` (see the module docstring for the equations).

    Args:
      energy: a ``LayeredEnergy`` (else ``ValueError``): gives ``sizes`` and the activations
        ``rho(l)`` (its energy value is only reported).
      params: ``{"layer_l": {"kernel", "bias"}}``.
      x: inputs ``(batch, n_in)``; ``target``: labels ``(batch,)`` or dense targets.
      state0: ``"zeros"``, ``"feedforward"`` or a state (the seed's persistent states).
      phases: ``free.max_steps`` = n_it_neg, ``nudged.max_steps`` = n_it_pos, ``beta``.
      key: unused.
      scheme: ``"chl"``, ``"ep"``, ``"first-step"`` or ``"pc-nudge"``.
      negative: the negative phase of ``"first-step"`` (default ``"chl"``); for the other
        schemes it must be None (their own phase).

    Returns:
      ``(grads, RuleResult)``: ``grads`` = minus the seed's increments divided by alpha.
    """
    del key
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, received {scheme!r}")
    if negative is None:
        negative = "chl" if scheme == "first-step" else scheme
    elif scheme != "first-step":
        raise ValueError(f"negative: only 'first-step' takes a negative phase, received {negative!r} for {scheme!r}")
    if negative not in NEGATIVE_PHASES:
        raise ValueError(f"negative: expected one of {NEGATIVE_PHASES}, received {negative!r}")
    if not isinstance(energy, LayeredEnergy):
        raise ValueError(
            f"energy: seed 000's rules (seed000-{scheme}) need a LayeredEnergy (dense layers "
            f"with sizes, rho(l) and params layer_l kernel/bias, e.g. hopfield), received "
            f"{type(energy).__name__}; use the generic EP rules (ep-symmetric, ...) for it"
        )
    sizes = energy.sizes
    if scheme == "first-step":
        check_first_step_sizes(sizes)
    n_neg = _sweeps(phases.free, "free")
    n_pos = _sweeps(phases.nudged, "nudged")

    state0 = energy.init_state(params, x, state0)
    energy.check_inputs(params, state0, x)
    y = as_dense_target(target, sizes[-1], x.dtype)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"target: expected batch size {x.shape[0]} (as x), received {y.shape[0]}")
    beta = jnp.asarray(phases.beta, x.dtype)
    L = len(sizes) - 1

    # negative phase
    free, res = _iterate(
        lambda s: negative_sweep(energy, params, x, y, s, beta, negative), state0, n_neg
    )
    free_stats = _stats(energy, params, x, free, n_neg, res)

    # positive phase and update
    if scheme == "first-step":
        top = x if L == 1 else free[-2]
        u = top @ _kernel(params, L - 1) + _bias_of_layer(params, L)
        rho = energy.rho(L)
        a = rho(u)
        nudged_out = rho(u - beta * (rho(u) - y))
        delta = nudged_out - a
        clamped = tuple(free[:-1]) + (nudged_out,)
        res = jnp.max(jnp.sqrt(jnp.sum((nudged_out - free[-1]) ** 2, axis=-1)))
        nudged_stats = _stats(energy, params, x, clamped, 1, res)
        grads = _delta_rule_grads(params, x, free, [delta] * L)
    else:
        if scheme == "chl":
            # Every backward sweep reads the free lower layers and y only: sweeps 2..n repeat
            # sweep 1 exactly, so one is computed and their residual is 0.
            start = tuple(free[:-1]) + (y,)
            sweep = lambda s: backward_clamped_sweep(energy, params, x, y, free)
            clamped, res = _iterate(sweep, start, min(n_pos, 1))
            if n_pos > 1:
                res = jnp.zeros_like(res)
        else:
            sweep = lambda s: forward_clamped_sweep(energy, params, x, y, s)
            clamped, res = _iterate(sweep, free, n_pos)
        nudged_stats = _stats(energy, params, x, clamped, n_pos, res)
        grads = _delta_rule_grads(params, x, free, [c - f for c, f in zip(clamped, free)])
    return grads, RuleResult(free, clamped, free, beta, free_stats, nudged_stats, nudged_stats)


def seed000_error(output: jax.Array, target: jax.Array) -> jax.Array:
    """The seed's ``measure`` error: not (argmax == y and top1 - top2 > 1e-3), batch mean."""
    if output.shape[-1] < 2:
        raise ValueError(f"output: the top-2 margin needs >= 2 units, received {output.shape[-1]}")
    vals, idx = jax.lax.top_k(output, 2)
    y = jnp.argmax(target, axis=-1) if target.ndim == 2 else target
    ok = (idx[:, 0] == y) & (vals[:, 0] - vals[:, 1] > 1e-3)
    return jnp.mean((~ok).astype(output.dtype))


SEED000_RULES = {
    "seed000-chl": functools.partial(seed000_gradient, scheme="chl"),
    "seed000-ep": functools.partial(seed000_gradient, scheme="ep"),
    "seed000-first-step": functools.partial(seed000_gradient, scheme="first-step"),
    "seed000-pc-nudge": functools.partial(seed000_gradient, scheme="pc-nudge"),
}

__all__ = [
    "SCHEMES", "SEED000_RULES", "UNROLL", "backward_clamped_sweep", "check_first_step_sizes",
    "forward_clamped_sweep", "negative_sweep", "normalize", "seed000_error", "seed000_gradient",
]

"""Exact gradients of the loss at the free equilibrium, to check estimators against.

The loss is L(theta) = mean_b C(s*_b(theta)) with s* the free equilibrium (dE/ds = 0).

* ``implicit_gradient``: implicit differentiation at equilibrium,
      dL/dtheta = - d2E/(dtheta ds) . H^{-1} . dL/ds,   H = d2E/ds2 (per example, dense solve),
  restricted to the *active set* of free units when states are projected onto [0, 1]: a unit
  sitting on a bound does not move under a small change of theta (strict complementarity), so
  its row and column of H are replaced by the identity and its right-hand side by zero. This is
  what lets the check run on the seeds' hard-sigmoid energy as it is.
* ``bptt_gradient``: reverse-mode through the unrolled fixed-step relaxation (Ernoult et al.
  2019 show EP's updates approach it).
* ``compare``: relative error and cosine between two gradient pytrees.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ep_jax.costs import Cost, apply_cost, squared_error
from ep_jax.energies.base import Energy, Params, State
from ep_jax.solvers import Solver, relax


class ImplicitInfo(NamedTuple):
    """Diagnostics of the implicit solve.

    Attributes:
      stationarity: max |dE/ds| over free (non-saturated) units: how close s* is to equilibrium.
      min_eigenvalue: smallest eigenvalue of the active-set Hessian over the batch (> 0: a minimum).
      active_fraction: fraction of units strictly inside the bounds.
    """

    stationarity: jax.Array
    min_eigenvalue: jax.Array
    active_fraction: jax.Array


def _active_mask(state: State, bounds) -> State:
    if bounds is None:
        return jax.tree.map(jnp.ones_like, state)
    lo, hi = bounds
    return jax.tree.map(lambda s: ((s > lo) & (s < hi)).astype(s.dtype), state)


def implicit_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state: State,
    *,
    cost: Cost = squared_error,
    bounds: Optional[tuple[float, float]] = None,
) -> tuple[Params, ImplicitInfo]:
    """dL/dtheta by implicit differentiation at the free equilibrium ``state``.

    Args:
      state: a free equilibrium (relax E to a tight tolerance first).
      bounds: ``(0, 1)`` when the relaxation projected onto [0, 1] (the active set is then the
        units strictly inside); ``None`` for unconstrained states.

    Returns:
      ``(grads, ImplicitInfo)``.
    """
    state = energy.init_state(params, x, state)
    energy.check_inputs(params, state, x)
    batch = x.shape[0]
    mask = _active_mask(state, bounds)

    def per_example(s_b, m_b, x_b, y_b):
        flat, unravel = ravel_pytree(s_b)
        mflat, _ = ravel_pytree(m_b)

        def one(f):
            return jax.tree.map(lambda v: v[None], unravel(f))

        def e(f):
            return energy(params, one(f), x_b[None])[0]

        def c(f):
            return apply_cost(cost, energy.output(one(f)), y_b[None], params)[0]

        g_e = jax.grad(e)(flat)
        h = jax.hessian(e)(flat)
        h = mflat[:, None] * h * mflat[None, :] + jnp.diag(1.0 - mflat)
        rhs = mflat * jax.grad(c)(flat) / batch
        lam = jnp.linalg.solve(h, rhs)
        eig = jnp.linalg.eigvalsh(h)[0]
        return unravel(lam), jnp.max(jnp.abs(mflat * g_e)), eig

    lam, stat, eig = jax.vmap(per_example)(state, mask, x, target)

    def coupling(p):
        g_s = jax.grad(lambda s: jnp.sum(energy(p, s, x)))(state)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(lam)))

    grads = jax.tree.map(jnp.negative, jax.grad(coupling)(params))
    if getattr(cost, "has_params", False):  # the cost's direct dependence on theta (a readout)
        out = energy.output(state)
        direct = jax.grad(lambda p: jnp.mean(apply_cost(cost, out, target, p)))(params)
        grads = jax.tree.map(jnp.add, grads, direct)
    masks = jax.tree.leaves(mask)
    active = sum(jnp.sum(m) for m in masks) / sum(m.size for m in masks)
    return grads, ImplicitInfo(jnp.max(stat), jnp.min(eig), active)


def bptt_gradient(
    energy: Energy,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    state0: State,
    *,
    solver: Solver,
    cost: Cost = squared_error,
) -> Params:
    """dL/dtheta by backpropagation through ``solver.max_steps`` unrolled relaxation steps."""
    if solver.tol is not None:
        raise ValueError(
            f"solver.tol: expected None (BPTT needs a fixed number of steps), received {solver.tol}"
        )

    def loss(p):
        s, _ = relax(energy, p, x, state0, solver=solver, cost=cost)
        return jnp.mean(apply_cost(cost, energy.output(s), target, p))

    return jax.grad(loss)(params)


def compare(estimate, reference) -> dict:
    """``rel_error = ||a - b|| / ||b||`` and ``cosine = <a, b> / (||a|| ||b||)`` over all leaves."""
    a, _ = ravel_pytree(estimate)
    b, _ = ravel_pytree(reference)
    nb = jnp.linalg.norm(b)
    na = jnp.linalg.norm(a)
    return {
        "rel_error": float(jnp.linalg.norm(a - b) / nb),
        "cosine": float(jnp.dot(a, b) / (na * nb)),
        "norm_estimate": float(na),
        "norm_reference": float(nb),
    }

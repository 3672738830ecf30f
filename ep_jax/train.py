"""A training loop of tiny jitted steps: relax, estimate the gradient, apply optax.

    state0 -> free phase -> nudged phase(s) -> grads = (dE/dtheta(nudged) - dE/dtheta(free)) / beta
           -> updates, opt_state = tx.update(grads, opt_state) -> params

One ``jax.jit`` per run: the rule, energy and phase configuration are static, params, optimizer
state and PRNG key are carried.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ep_jax.costs import get_cost
from ep_jax.energies import make_energy
from ep_jax.optim import per_layer_sgd
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import GradientDescent, relax


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run, as data. The defaults train XOR with symmetric EP on a 2-8-2 Hopfield net."""

    dataset: str = "xor"
    energy: str = "hopfield"
    hidden: tuple = (8,)
    rule: str = "ep-symmetric"
    beta: float = 0.5
    step_size: float = 0.5
    free_steps: int = 40
    nudged_steps: int = 10
    alphas: tuple = (0.5, 0.25)
    epochs: int = 300
    batch_size: int = 4
    seed: int = 0
    cost: str = "squared_error"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


def load(name: str):
    if name == "xor":
        from ep_jax.data import xor

        return xor()
    raise ValueError(f"dataset: expected 'xor', received {name!r}")


def make_run(cfg: TrainConfig, n_in: int, n_out: int):
    """Builds (energy, phases, optimizer, train_step, predict) for ``cfg``."""
    energy = make_energy(cfg.energy, (n_in, *cfg.hidden, n_out))
    solver = lambda steps: GradientDescent(cfg.step_size, steps, project="clip01")
    phases = Phases(cfg.beta, solver(cfg.free_steps), solver(cfg.nudged_steps), get_cost(cfg.cost))
    if len(cfg.alphas) != len(energy.sizes) - 1:
        raise ValueError(
            f"alphas: expected {len(energy.sizes) - 1} learning rates (one per layer), "
            f"received {len(cfg.alphas)}"
        )
    tx = per_layer_sgd(cfg.alphas)
    rule = get_rule(cfg.rule)

    @jax.jit
    def train_step(ts: TrainState, x, y):
        key, sub = jax.random.split(ts.key)
        grads, res = rule(energy, ts.params, x, y, "zeros", phases=phases, key=sub)
        updates, opt_state = tx.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, opt_state, key, ts.step + 1), res.free_stats

    @jax.jit
    def predict(params, x):
        s, stats = relax(energy, params, x, energy.zeros_state(x), solver=phases.free)
        return jnp.argmax(s[-1], axis=-1), stats

    return energy, tx, train_step, predict


def train(cfg: TrainConfig, verbose: bool = True) -> dict:
    """Trains ``cfg``; returns ``{"final_error", "wall_s", "epochs", "sizes", "params"}``."""
    x_np, y_np = load(cfg.dataset)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    n_out = int(y_np.max()) + 1
    energy, tx, train_step, predict = make_run(cfg, x.shape[1], n_out)
    key_p, key_t = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = energy.init_params(key_p)
    ts = TrainState(params, tx.init(params), key_t, jnp.asarray(0))
    n = x.shape[0]
    order_rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = order_rng.permutation(n)
        for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            ts, _ = train_step(ts, x[idx], y[idx])
    pred, stats = predict(ts.params, x)
    error = float(jnp.mean(pred != y))
    wall = time.perf_counter() - t0
    if verbose:
        print(f"{cfg.dataset}: {cfg.rule} on {energy.sizes}, {cfg.epochs} epochs, {wall:.1f} s")
    return {
        "final_error": error, "wall_s": wall, "epochs": cfg.epochs, "sizes": list(energy.sizes),
        "params": ts.params,
    }

"""A new energy in one file, trained through ep_jax's public API (docs/EXTENDING.md).

A Hopfield-like energy with tanh activities and a *dict* state, read out by a softmax layer
inside the cost:

    E(h, o; x) = 1/2 |h|^2 + 1/2 |o|^2 - tanh(x) W . tanh(h) - tanh(h) V . tanh(o) - b . h
    C(o, y)    = -log softmax(tanh(o) U + c)_y      (SoftmaxReadout over params["head"])

Run:  python docs/examples/tanh_hopfield.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

import ep_jax


@dataclasses.dataclass(frozen=True)
class TanhHopfield(ep_jax.Energy):
    n_in: int
    n_hidden: int
    n_out: int
    n_classes: int

    def __call__(self, params, state, x):
        h, o = state["hidden"], state["out"]
        e = 0.5 * jnp.sum(h * h, -1) + 0.5 * jnp.sum(o * o, -1) - h @ params["b"]
        e -= jnp.sum((jnp.tanh(x) @ params["W"]) * jnp.tanh(h), -1)
        return e - jnp.sum((jnp.tanh(h) @ params["V"]) * jnp.tanh(o), -1)

    def init_params(self, key, dtype=jnp.float32):
        kw, kv, ku = jax.random.split(key, 3)
        glorot = jax.nn.initializers.glorot_uniform()
        return {
            "W": glorot(kw, (self.n_in, self.n_hidden), dtype),
            "V": glorot(kv, (self.n_hidden, self.n_out), dtype),
            "b": jnp.zeros((self.n_hidden,), dtype),
            "head": {"kernel": glorot(ku, (self.n_out, self.n_classes), dtype),
                     "bias": jnp.zeros((self.n_classes,), dtype)},
        }

    def state_shapes(self, batch, dtype):
        return {"hidden": jax.ShapeDtypeStruct((batch, self.n_hidden), dtype),
                "out": jax.ShapeDtypeStruct((batch, self.n_out), dtype)}

    def output(self, state):
        return state["out"]

    def with_output(self, state, value):
        return {**state, "out": value}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = ep_jax.load_dataset("digits")  # scikit-learn's 8x8 digits, offline
    X, Y = jnp.asarray(data.x_train), jnp.asarray(data.y_train, jnp.int32)
    Xt, Yt = jnp.asarray(data.x_test), jnp.asarray(data.y_test, jnp.int32)
    energy = TanhHopfield(X.shape[1], 64, 16, data.num_classes)
    learner = ep_jax.EPLearner(
        energy=energy,
        rule="ep-symmetric",
        phases=ep_jax.Phases(beta=0.2, free=ep_jax.GradientDescent(0.3, 30),
                             nudged=ep_jax.GradientDescent(0.3, 10),
                             cost=ep_jax.SoftmaxReadout(head="head")),
        tx=ep_jax.make_optimizer("adam", 3e-3),
        eval_solver=ep_jax.GradientDescent(0.5, 500, tol=1e-4),
        persistent=True,
    )
    state = learner.init(jax.random.PRNGKey(args.seed), X.shape[0])
    step, evaluate = jax.jit(learner.train_step), jax.jit(learner.evaluate)
    batch, n = 32, X.shape[0] // 32
    key = jax.random.PRNGKey(args.seed + 1)
    for epoch in range(args.epochs):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), X.shape[0])
        for i in range(n):
            idx = perm[i * batch:(i + 1) * batch]
            state, m = step(state, X[idx], Y[idx], idx, jax.random.fold_in(key, epoch * n + i))
        test = evaluate(state, Xt, Yt)
        print(f"epoch {epoch + 1}: train error {float(m['error']):.3f}, test error "
              f"{float(test['error']):.3f}, evaluation residual {float(test['residual']):.1e} "
              f"(converged: {bool(test['converged'])})")
    return {k: float(v) for k, v in test.items()}


if __name__ == "__main__":
    main()

import sys, time, statistics, jax, jax.numpy as jnp, optax
from ep_jax.energies import make_energy
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import GradientDescent
from ep_jax.optim import per_layer_sgd
out = []
for sizes, B, tf, tn in (((784, 100, 10), 20, 10, 4), ((784, 500, 10), 256, 20, 4)):
    e = make_energy("hopfield", sizes)
    ph = Phases(0.5, GradientDescent(0.5, tf, project="clip01"), GradientDescent(0.5, tn, project="clip01"))
    tx = per_layer_sgd([0.1, 0.05]); rf = get_rule("ep-random-sign")
    @jax.jit
    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        grads, res = rf(e, params, x, y, "zeros", phases=ph, key=sub)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, x, y
    p = e.init_params(jax.random.PRNGKey(0))
    st = (p, tx.init(p), jax.random.PRNGKey(0), jax.random.uniform(jax.random.PRNGKey(1), (B, 784)),
          jax.random.randint(jax.random.PRNGKey(2), (B,), 0, 10))
    for _ in range(20):
        st = step(*st)
    jax.block_until_ready(st)
    samples = []
    for _ in range(15):
        t0 = time.perf_counter()
        for _ in range(200):
            st = step(*st)
        jax.block_until_ready(st)
        samples.append((time.perf_counter() - t0) / 200 * 1e3)
    out.append(f"{sizes[1]}/B{B}: median {statistics.median(samples):.4f} min {min(samples):.4f} ms")
print(sys.argv[1], jax.devices()[0].device_kind, " | ".join(out), flush=True)

"""Multi-device checks of ``tests/test_distributed.py``, run as a subprocess.

``XLA_FLAGS`` (host devices) must be set before JAX starts its backend, and the test session has
started it already (one device, float64 enabled); so each check runs here, in float32, and prints
one JSON line::

    python tests/distributed_check.py equal            sharded (8 devices) vs one device
    python tests/distributed_check.py hlo              collectives of the compiled sharded chunk
    python tests/distributed_check.py resume DIR       checkpoint of 8 devices resumed on 4 and on 1
    python tests/distributed_check.py worker OUT ADDR N I    one process of an N-process run
    python tests/distributed_check.py reference OUT D  its one-device reference (batch_shards=D)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

DEVICES = int(os.environ.get("EP_JAX_TEST_DEVICES", "8"))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ep_jax import distributed  # noqa: E402
from ep_jax.app.config import TrainConfig, get_preset  # noqa: E402
from ep_jax.app.data import Dataset  # noqa: E402

N_TRAIN, BATCH = 80, 16  # 5 steps per epoch, 2 epochs: 10 steps; 8 blocks of 10, 2 per device


def blobs(n_train=N_TRAIN, n_test=16, d=12, classes=3, seed=0) -> Dataset:
    """Three Gaussian blobs in [0, 1]^d (the data of tests/test_train.py's tiny runs)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.1, 0.9, (classes, d))
    y = rng.integers(0, classes, n_train + n_test).astype(np.int32)
    x = np.clip(centers[y] + 0.08 * rng.standard_normal((len(y), d)), 0, 1).astype(np.float32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "blobs", None, classes)


COMMON = dict(dataset="blobs", batch_size=BATCH, epochs=2, log_every=1, eval_every=2)
CONFIGS = {
    # EP with persistent particles (random-sign beta: the rule draws its sign from the key).
    "ep-particles": TrainConfig().with_overrides(
        preset="tiny", hidden=(8,), free_steps=10, nudged_steps=4, alphas=(0.2, 0.1),
        eval_max_steps=30, **COMMON),
    # Seed 004's residual EP: Flax model, OptaxSolver nudged phase, AdamW + cosine + clipping.
    "residual": get_preset("residual-mnist10k").with_overrides(
        hidden=(8,), n_blocks=2, credit_batch=0, **COMMON),
    # The BP twin of a layered net, with dropout (random masks drawn per example).
    "mlp-dropout": get_preset("bp-digits").with_overrides(hidden=(8,), **COMMON),
}


def tree_rel_error(a, b) -> float:
    """Normwise relative error ||a - b|| / ||b|| over every leaf of two trees, flattened.

    Normwise, not per element: a parameter that stays near zero (a zero-initialised bias moved
    by a few Adam steps of the rule's gradient) carries the absolute rounding of the summed
    gradient, which is large relative to itself and small relative to the model.
    """
    u, v = ([distributed.host_value(x).astype(np.float64).ravel() for x in jax.tree.leaves(t)]
            for t in (a, b))
    assert len(u) == len(v) and all(x.shape == y.shape for x, y in zip(u, v))
    if not u:
        return 0.0
    u, v = np.concatenate(u), np.concatenate(v)
    return float(np.linalg.norm(u - v) / max(np.linalg.norm(v), 1e-30))


def max_rel_error(a, b) -> float:
    """max over leaves of max |a - b| / max |b| (elementwise, each leaf on its own scale)."""
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)) if x.size else 0.0
               for x, y in zip(*([distributed.host_value(z).astype(np.float64)
                                  for z in jax.tree.leaves(t)] for t in (a, b))))


def train_steps(cfg: TrainConfig, epochs: int = 2, **run_kw):
    """``epochs`` epochs of ``cfg`` (no evaluation): the final learner state and the run."""
    from ep_jax.app.train import Run

    run = Run(cfg, data=blobs(), **run_kw)
    ts = run.init_state()
    for _ in range(epochs):
        ts, _ = run.train_epoch(ts)
    return ts, run


def equal() -> dict:
    """Each learner trained 10 steps on the mesh and on one device with the same batches."""
    out = {}
    cases = [(name, cfg, None) for name, cfg in CONFIGS.items()]
    cases.append(("ep-particles-fsdp", CONFIGS["ep-particles"], "data=4,model=2"))
    # Seed 004's batch-mean scaling: the nudged phase's step depends on the (global) batch size.
    cases.append(("residual-batch-mean", CONFIGS["residual"].with_overrides(
        batch_scaling="batch-mean"), None))
    for name, cfg, mesh in cases:
        shards = distributed.parse_mesh(mesh)["data"] if mesh else DEVICES
        a, run = train_steps(cfg.with_overrides(devices=DEVICES, mesh=mesh))
        b, _ = train_steps(cfg, batch_shards=shards)
        la, lb = a.learner, b.learner
        out[name] = {"rel_error": tree_rel_error(la.params, lb.params),
                     "leaf_max_rel_error": max_rel_error(la.params, lb.params),
                     "particles_rel_error": tree_rel_error(getattr(la, "particles", ()),
                                                           getattr(lb, "particles", ())),
                     "steps": int(a.step), "mesh": dict(run.mesh.shape)}
    return out


COLLECTIVE = re.compile(r"=\s*(.+?)\s+(all-gather|all-to-all|collective-permute|reduce-scatter|"
                        r"all-reduce)(-start)?\(")


def collectives(hlo: str) -> list[tuple[str, str]]:
    """(op, result type) of every collective instruction of an HLO module's text."""
    return [(m.group(2), m.group(1)) for m in map(COLLECTIVE.search, hlo.splitlines()) if m]


def hlo() -> dict:
    """The collectives of one compiled chunk of sharded EP steps (particles of N_TRAIN rows),
    and, as a control, of a plain ``p[idx]`` on the same shardings."""
    import jax.numpy as jnp

    from ep_jax.app.train import Run

    run = Run(CONFIGS["ep-particles"].with_overrides(devices=DEVICES), data=blobs())
    ts = run.init_state()
    idx, valid = run.batches(run.data_key, ts.epoch)
    text = run.run_chunk.lower(ts.learner, ts.step, run.X, run.Y, idx[0], valid[0],
                               ts.key).compile().as_text()
    n_params = max(int(np.size(p)) for p in jax.tree.leaves(ts.learner.params))
    particles = ts.learner.particles[0]
    plain = jax.jit(lambda p, i: p[i], out_shardings=distributed.rows_sharding(run.mesh)).lower(
        particles, idx[0, 0]).compile().as_text()
    return {"chunk": collectives(text), "largest_param": n_params,
            "particles": list(particles.shape), "plain_gather": collectives(plain),
            "idx_local_ok": bool(jnp.all(idx[0] // (N_TRAIN // DEVICES) == jnp.repeat(
                jnp.arange(DEVICES), BATCH // DEVICES)[None, :]))}


def resume(root: Path) -> dict:
    """One epoch on 8 devices with a checkpoint, then a second one resumed on 4 devices and on
    one device (with the 4-device batches): both equal, and the restore kept every array."""
    from ep_jax.app import checkpoint
    from ep_jax.app.train import train

    cfg = CONFIGS["ep-particles"].with_overrides(epochs=1, checkpoint_every=1, eval_every=1)
    eight = root / "eight"
    first = train(cfg.with_overrides(devices=DEVICES), data=blobs(), out_dir=eight, quiet=True,
                  plots=False)
    four, one = root / "four", root / "one"
    shutil.copytree(eight, four)
    shutil.copytree(eight, one)
    longer = cfg.with_overrides(epochs=2)
    a = train(longer.with_overrides(devices=DEVICES // 2), data=blobs(), out_dir=four,
              resume=True, quiet=True, plots=False)
    b = train(longer, data=blobs(), out_dir=one, resume=True, quiet=True, plots=False,
              batch_shards=DEVICES // 2)
    # The restored arrays themselves, on one device, against the 8-device run's final state.
    restored = checkpoint.restore(eight, 1, jax.device_get(first["state"]))
    prov = checkpoint.provenance(four)
    return {"rel_error": tree_rel_error(a["state"].learner, b["state"].learner),
            "restored_rel_error": tree_rel_error(restored, first["state"]),
            "devices": [first["devices"]["count"], a["devices"]["count"], b["devices"]["count"]],
            "particles_sharding": str(a["state"].learner.particles[0].sharding.spec),
            "provenance_changed": prov[-1]["changed"], "steps": [a["steps"], b["steps"]]}


def worker(out: Path, address: str, n: int, i: int) -> dict:
    """Process ``i`` of ``n``: 10 sharded steps over every process's devices, checkpointed."""
    distributed.initialize(address, n, i)
    from ep_jax.app.train import train

    cfg = CONFIGS["ep-particles"].with_overrides(devices=0, checkpoint_every=1)
    s = train(cfg, data=blobs(), out_dir=out / "run", quiet=True, plots=False)
    result = {"process": jax.process_index(), "processes": jax.process_count(),
              "devices": s["devices"], "steps": s["steps"]}
    state = jax.tree.map(distributed.host_value, s["state"].learner)
    if jax.process_index() == 0:
        np.savez(out / "multi.npz", *jax.tree.leaves(state))
    return result


def reference(out: Path, shards: int) -> dict:
    from ep_jax.app.train import train

    s = train(CONFIGS["ep-particles"], data=blobs(), quiet=True, batch_shards=shards)
    np.savez(out / "single.npz", *map(np.asarray, jax.tree.leaves(s["state"].learner)))
    return {"steps": s["steps"]}


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "equal":
        result = equal()
    elif what == "hlo":
        result = hlo()
    elif what == "resume":
        result = resume(Path(args[0]))
    elif what == "worker":
        result = worker(Path(args[0]), args[1], int(args[2]), int(args[3]))
    elif what == "reference":
        result = reference(Path(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown check {what!r}")
    print("RESULT " + json.dumps(result))

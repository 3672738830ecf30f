"""Data-parallel training (``ep_jax.distributed``): sharded runs equal the single-device run.

The multi-device checks run in subprocesses (``tests/distributed_check.py``): the host device
count (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) must be set before JAX starts,
and this session's JAX has started with one device. They compare, after 10 training steps in
float32, a run on 8 host devices with a one-device run on the same global batches
(``batch_shards=8``); the target is <= 1e-6 normwise relative error.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import distributed
from ep_jax.app.config import RESUME_SAFE, TrainConfig
from ep_jax.app import checkpoint
from ep_jax.app.train import Run
from tests.test_train import tiny_cfg, tiny_data

CHECK = Path(__file__).with_name("distributed_check.py")
TOL = 1e-6


def check(*args, devices: int = 8, timeout: float = 600) -> dict:
    """Runs ``distributed_check.py args`` with ``devices`` host devices; its RESULT line."""
    env = {**os.environ, "EP_JAX_TEST_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(CHECK), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


# ---- in this process (one device) ------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("data=8", {"data": 8}), ("data=4,model=2", {"data": 4, "model": 2}),
    (" data = 2 ", {"data": 2}),
])
def test_parse_mesh(spec, expected):
    assert distributed.parse_mesh(spec) == expected


@pytest.mark.parametrize("spec", ["model=2", "data=0", "data=2,data=2", "batch=2", "data", ""])
def test_parse_mesh_names_the_argument_and_the_received_text(spec):
    with pytest.raises(ValueError, match=re.escape(f"devices.mesh: expected comma-separated "
                                                   f"axis=size pairs") + ".*" + re.escape(
                                                       f"received {spec!r}")):
        TrainConfig().with_overrides(devices=0, mesh=spec)


def test_config_section_checks_devices_against_the_mesh_and_is_resume_safe():
    cfg = TrainConfig().with_overrides(devices=8, mesh="data=4,model=2")
    assert cfg.to_dict()["devices"]["mesh"] == "data=4,model=2"
    assert {"devices.devices", "devices.mesh"} <= set(RESUME_SAFE)
    assert not {"devices.devices", "devices.mesh"} & set(cfg.fingerprint())
    with pytest.raises(ValueError, match=re.escape(
            "devices.mesh: expected axis sizes whose product is devices=2 (this mesh has 8 "
            "devices), received 'data=8'")):
        TrainConfig().with_overrides(devices=2, mesh="data=8")
    with pytest.raises(ValueError, match=re.escape("devices.devices: expected an int >= 0, "
                                                   "received -1")):
        TrainConfig().with_overrides(devices=-1)


def test_make_mesh_refuses_more_devices_than_jax_sees():
    n = len(jax.devices())
    with pytest.raises(ValueError, match=rf"devices: expected 1\.\.{n} .* received {n + 1}"):
        distributed.make_mesh(n + 1)
    assert distributed.make_mesh().shape == {"data": n}


@pytest.mark.parametrize("n_train, batch, shards", [(80, 16, 8), (60, 12, 4), (61, 10, 1),
                                                    (100, 20, 2)])
def test_batch_order_keeps_each_devices_part_in_its_block(n_train, batch, shards):
    idx = np.asarray(distributed.batch_order(jax.random.PRNGKey(3), n_train, batch, shards))
    assert idx.shape == (n_train // batch, batch)
    assert len(set(idx.ravel())) == idx.size  # no example twice in an epoch
    block, local = n_train // shards, batch // shards
    owner = idx.reshape(idx.shape[0], shards, local) // block
    np.testing.assert_array_equal(owner, np.arange(shards)[None, :, None] * np.ones_like(owner))


def test_one_shard_is_the_single_device_permutation():
    key = jax.random.PRNGKey(0)
    perm = np.asarray(jax.random.permutation(key, 61))[:60].reshape(6, 10)
    np.testing.assert_array_equal(distributed.batch_order(key, 61, 10, 1), perm)


def test_uneven_splits_are_refused_with_the_sizes():
    mesh = distributed.make_mesh(1)  # data size 1 divides everything
    distributed.check_divisible(61, 7, mesh)

    class Fake:
        shape = {"data": 8}

    with pytest.raises(ValueError, match=re.escape(
            "devices: the 60 training examples are split into 8 equal blocks")):
        distributed.check_divisible(60, 16, Fake())
    with pytest.raises(ValueError, match=re.escape(
            "data.batch_size: expected a multiple of the mesh's data-axis size 8")):
        distributed.check_divisible(80, 12, Fake())


def test_a_one_device_mesh_trains_like_the_plain_path():
    """devices=0 (all, here one): DataParallel, ShardedRows, explicit shardings; same numbers."""
    data = tiny_data()
    plain, meshed = Run(tiny_cfg(), data=data), Run(tiny_cfg(devices=0), data=data)
    assert plain.mesh is None and meshed.mesh is not None
    a, b = plain.init_state(), meshed.init_state()
    a, _ = plain.train_epoch(a)
    b, _ = meshed.train_epoch(b)
    jax.tree.map(np.testing.assert_array_equal, a.learner, b.learner)


# ---- on 8 host devices (subprocesses) --------------------------------------------------------


@pytest.mark.slow
def test_sharded_training_equals_one_device_for_every_learner():
    """EP with particles, residual EP (AdamW, cosine, clipping; per-example and seed 004's
    batch-mean scaling), the MLP twin with dropout, and an FSDP-style mesh (data=4, model=2):
    10 steps on 8 devices vs one device."""
    result = check("equal")
    assert set(result) == {"ep-particles", "residual", "mlp-dropout", "ep-particles-fsdp",
                           "residual-batch-mean"}
    for name, r in result.items():
        assert r["steps"] == 10, (name, r)
        assert r["rel_error"] <= TOL and r["particles_rel_error"] <= TOL, (name, r)
    assert result["ep-particles"]["particles_rel_error"] > 0  # particles were compared
    assert result["residual"]["mesh"] == {"data": 8}
    assert result["ep-particles-fsdp"]["mesh"] == {"data": 4, "model": 2}


def test_particle_gathers_stay_on_their_device():
    """The compiled sharded chunk's only collectives are all-reduces of parameter-sized
    gradients and scalars: no particle or input row crosses devices. Control: a plain
    ``p[idx]`` on the same shardings does move rows (all-gather / batch-sized all-reduce)."""
    result = check("hlo")
    assert result["idx_local_ok"]
    n_train = result["particles"][0]
    row_dims = {n_train, n_train // 8, 16}  # training set, block, batch

    def moves_rows(ops) -> bool:
        for op, shape in ops:
            dims = {int(d) for dims in re.findall(r"\[([\d,]*)\]", shape)
                    for d in dims.split(",") if d}
            if op != "all-reduce" or dims & row_dims:
                return True
        return False

    assert result["chunk"] and not moves_rows(result["chunk"]), result["chunk"]
    assert moves_rows(result["plain_gather"]), result["plain_gather"]


@pytest.mark.slow
def test_checkpoint_of_8_devices_resumes_on_4_and_on_1(tmp_path):
    result = check("resume", tmp_path)
    assert result["devices"] == [8, 4, 1]
    assert result["restored_rel_error"] == 0.0  # restored bit for bit (digests checked too)
    assert result["rel_error"] <= TOL and result["steps"] == [10, 10]
    assert result["particles_sharding"] == "P('data',)"
    assert result["provenance_changed"] == {"loop.epochs": [1, 2], "devices.devices": [8, 4]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_agree_with_one(tmp_path):
    """Two processes (2 host devices each, gloo collectives) train 10 steps with checkpoints,
    jax.distributed.initialize on 127.0.0.1; equal to one device on the same batches. The
    4-device checkpoint of the two processes then restores and evaluates here, on one device."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "EP_JAX_TEST_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(CHECK), "worker", str(tmp_path), address, "2",
                               str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    try:
        reference = check("reference", tmp_path, 4, devices=1, timeout=300)
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, out in zip(procs, outputs):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert p.returncode == 0 and lines, out[-4000:]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["processes"] == 2 and r["devices"]["count"] == 4 and r["steps"] == 10
               for r in results)
    assert reference["steps"] == 10
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    u = np.concatenate([multi[k].ravel() for k in multi])
    v = np.concatenate([single[k].ravel() for k in single])
    assert np.linalg.norm(u - v) / np.linalg.norm(v) <= TOL
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())  # written by process 0 only
    assert summary["devices"] == {"count": 4, "kind": "cpu:cpu", "processes": 2,
                                  "mesh": {"data": 4}}
    # tiny_data(80, 16) is distributed_check.blobs(): the workers' data.
    one = Run(checkpoint.effective_config(run), data=tiny_data(80, 16))
    assert one.mesh is not None and one.mesh.size == 1  # devices=0: all, here one
    ts = checkpoint.restore(run, 2, one.init_state())
    assert int(ts.epoch) == 2 and one.test_metrics(ts)["error"] == summary["test_error"]

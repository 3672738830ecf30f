"""The training loop behind ``ep-jax train``: jitted chunks of steps, evaluation, checkpoints.

One epoch::

    perm = permutation(fold_in(data_key, epoch), n_train)        # on device, from the seed
    for chunk of c batches (one jitted call, a lax.scan):         # host sync once per chunk
        for idx in chunk:  x, y = X[idx], Y[idx]                  # gathered on device
            state, metrics = learner.train_step(state, x, y, idx, fold_in(step_key, step))
    test metrics = learner.evaluate(state, X_test, Y_test)
    metrics.jsonl += one row; orbax checkpoint of (state, key, epoch, step)

Every random number is a function of (seed, epoch, step), so a run resumed from the checkpoint
of epoch k computes exactly what the uninterrupted run computes after epoch k. The data live on
device; a step never leaves it, and the chunks are padded to one fixed length (a padded step is
skipped by ``lax.cond``) so the step compiles once.

Run directories lose nothing: ``train`` refuses a non-empty directory that holds no checkpoint of
an ep-jax run, holds an exclusive lock (``DIR/.lock``) while it trains, writes its JSON files
atomically (temp file + ``os.replace``), appends metrics one whole line at a time, and records
each ``--resume`` in ``provenance.jsonl`` instead of rewriting ``config.json``.

Divergence: an epoch whose mean ``unbounded`` is > 0 (some relaxation ran away) or whose free
phase ``residual`` grew more than ``RESIDUAL_GROWTH`` times since the run's first epoch is
flagged (``"flags"`` in its metrics row and a line on stderr); under
``loop.on_divergence="stop"`` it then raises ``DivergenceError``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import itertools
import json
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ep_jax import distributed
from ep_jax.app import checkpoint
from ep_jax.app.build import build_learner
from ep_jax.app.config import CONV, LAYERED, MLP, RESIDUAL, TrainConfig
from ep_jax.app.data import Dataset, load_dataset, outside_unit_fraction, validate

# Networks with at most this many units get a network-graph plot.
MAX_GRAPH_UNITS = 64
# An epoch whose mean free-phase residual exceeds the first epoch's by this factor is flagged.
RESIDUAL_GROWTH = 10.0
LOCK = ".lock"


class RunDirError(RuntimeError):
    """The run directory is not this run's to write (foreign files, or in use by another process)."""


class DivergenceError(RuntimeError):
    """An epoch was flagged as diverging under ``loop.on_divergence="stop"``."""


def new_run_dir(root, preset: str) -> Path:
    """Creates and returns ``root/<preset>-<YYYYmmdd-HHMMSS>-<pid>[-n]``, a new empty directory.

    ``os.mkdir`` is atomic, so two processes (or threads) never get the same directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in itertools.count():
        path = root / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _check_run_dir(out: Path, resume: bool) -> None:
    """Refuses an ``out`` that is not empty and holds no checkpoint (nothing foreign is overwritten)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out}: not a directory")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not entries:
        return
    if checkpoint.epochs(out):
        if not resume:
            raise checkpoint.CheckpointError(
                f"{out} already holds checkpoints: pass --resume to continue that run or choose "
                "another --out"
            )
        return
    shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
    raise RunDirError(
        f"--out {out}: not empty and holds no checkpoint of an ep-jax run ({shown}); refusing to "
        "overwrite it: choose a new or empty directory"
    )


@contextlib.contextmanager
def run_dir_lock(out: Path):
    """Holds an exclusive ``flock`` on ``out/.lock`` (holding our pid) until the block exits."""
    f = open(out / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{out} is in use by another ep-jax process (pid {pid})") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _append_line(path: Path, row: dict) -> None:
    # One O_APPEND write(2) of one whole line (no buffered splitting): no reader sees half a row.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def divergence_flags(row: dict, first: dict) -> list[str]:
    """Why epoch ``row`` looks divergent, compared with the run's first epoch ``first``."""
    flags = []
    if row.get("train_unbounded", 0.0) > 0:
        flags.append(f"train_unbounded={row['train_unbounded']:.3g}: relaxations ran away in "
                     "some batches")
    r, r0 = row.get("train_residual"), first.get("train_residual")
    if r is not None and r0 and r > RESIDUAL_GROWTH * r0:
        flags.append(f"train_residual={r:.3g}: grew {r / r0:.0f}x since epoch {first['epoch']} "
                     f"({r0:.3g})")
    return flags


class TrainState(NamedTuple):
    """Everything a checkpoint holds: the learner's state, the run key, epochs and steps done."""

    learner: Any
    key: jax.Array
    epoch: jax.Array
    step: jax.Array


def layer_sizes(cfg: TrainConfig, n_in: int, n_out: int) -> list[int]:
    """Every layer's width; a residual model's embedding and block outputs are all d wide."""
    hidden = list(cfg.model.hidden)
    if cfg.model.kind == RESIDUAL:
        hidden *= cfg.model.n_blocks + 1
    return [n_in, *hidden, n_out]


def chunk_layout(n_batches: int, log_every: int) -> tuple[int, int]:
    """(chunk length, chunks per epoch): ``log_every`` host syncs per epoch, the last one padded."""
    length = math.ceil(n_batches / min(log_every, n_batches))
    return length, math.ceil(n_batches / length)


def make_epoch_fns(learner, n_train: int, batch_size: int, log_every: int, mesh=None,
                   shards: Optional[int] = None):
    """Jitted ``batches(data_key, epoch)`` and ``run_chunk(ts, X, Y, idx, valid, step_key)``.

    With a ``mesh`` (``learner`` a ``distributed.DataParallel``; ``X``, ``Y`` split by rows over
    its ``data`` axis), each device gathers its part of every batch from its own block of the
    training set. ``shards`` (default: the mesh's data-axis size, 1 without a mesh) is the block
    structure of the batch order (``distributed.batch_order``): a single-device run with
    ``shards=D`` trains on the batches of a D-device run.
    """
    n_batches = n_train // batch_size
    length, n_chunks = chunk_layout(n_batches, log_every)
    pad = length * n_chunks - n_batches
    shards = distributed.data_size(mesh) if shards is None else shards
    rows = distributed.LocalRows() if mesh is None else distributed.ShardedRows(mesh)
    out = None
    if mesh is not None:
        out = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None,
                                                                          distributed.DATA)),
               distributed.replicated(mesh))

    @functools.partial(jax.jit, out_shardings=out)
    def batches(data_key, epoch):
        idx = distributed.batch_order(jax.random.fold_in(data_key, epoch), n_train, batch_size,
                                      shards)
        idx = jnp.concatenate([idx, jnp.zeros((pad, batch_size), jnp.int32)])
        valid = jnp.arange(n_batches + pad) < n_batches
        return idx.reshape(n_chunks, length, batch_size), valid.reshape(n_chunks, length)

    def run_chunk(ls, step, X, Y, idx_chunk, valid, step_key):
        def body(carry, inp):
            ls, step = carry
            idx, ok = inp

            def do(ls):
                key = jax.random.fold_in(step_key, step)
                return learner.train_step(ls, rows.take(X, idx), rows.take(Y, idx), idx, key)

            def skip(ls):
                return ls, jax.tree.map(jnp.zeros_like, jax.eval_shape(do, ls)[1])

            # Only a padded chunk pays for the cond (it can force copies of the carried state).
            ls, metrics = jax.lax.cond(ok, do, skip, ls) if pad else do(ls)
            return (ls, step + ok.astype(step.dtype)), metrics

        (ls, step), metrics = jax.lax.scan(body, (ls, step), (idx_chunk, valid))
        sums = jax.tree.map(jnp.sum, metrics)
        if mesh is not None:  # every process reads the sums: replicate them
            sums = jax.lax.with_sharding_constraint(sums, distributed.replicated(mesh))
        return ls, step, sums

    return batches, jax.jit(run_chunk, donate_argnums=(0,)), n_batches, length, n_chunks


def _device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":")


def _to_float(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def run_mesh(cfg: TrainConfig):
    """The mesh of ``cfg.devices`` (``None``: one device, one process, the plain path)."""
    dev = cfg.devices
    if dev.devices == 1 and dev.mesh is None and jax.process_count() == 1:
        return None
    n = dev.devices or None
    if n is None and dev.mesh is not None:
        n = math.prod(distributed.parse_mesh(dev.mesh).values())
    return distributed.make_mesh(n, dev.mesh)


class Run:
    """A training run: data, learner, jitted functions and output directory.

    ``batch_shards`` (default: the mesh's data-axis size) sets the block structure of the batch
    order (``distributed.batch_order``): one device with ``batch_shards=D`` trains on the same
    batches as D devices (the reference of the distributed tests).
    """

    def __init__(self, cfg: TrainConfig, data: Optional[Dataset] = None, data_dir=None, *,
                 batch_shards: Optional[int] = None):
        self.cfg = cfg
        self.mesh = mesh = run_mesh(cfg)
        self.data = data if data is not None else load_dataset(cfg.data.dataset, data_dir)
        d = self.data
        validate(d)
        if cfg.model.kind == LAYERED and cfg.model.activation == "hard_sigmoid":
            clipped = outside_unit_fraction(d)
            if clipped > 0:
                warnings.warn(
                    f"{100 * clipped:.2f}% of the input values of {cfg.data.dataset!r} are outside "
                    "[0, 1]; the input layer's hard_sigmoid clips them (scale the inputs to [0, 1] "
                    "or use another model.activation)", stacklevel=2,
                )
        self.n_train = d.x_train.shape[0]
        batch_size = cfg.data.batch_size
        if self.n_train < batch_size:
            raise ValueError(
                f"data.batch_size: expected <= the {self.n_train} training examples of "
                f"{cfg.data.dataset!r}, received {batch_size}"
            )
        y_train, y_test = d.y_train.astype(np.int32), d.y_test.astype(np.int32)
        if mesh is None:
            self.X, self.Y = jnp.asarray(d.x_train), jnp.asarray(y_train)
            self.Xt, self.Yt = jnp.asarray(d.x_test), jnp.asarray(y_test)
        else:
            distributed.check_divisible(self.n_train, batch_size, mesh)
            # Each process materialises only its devices' blocks of the training set.
            self.X, self.Y = (distributed.shard_rows(a, mesh) for a in (d.x_train, y_train))
            n_test = d.x_test.shape[0]
            test = (distributed.rows_sharding(mesh) if n_test % distributed.data_size(mesh) == 0
                    else distributed.replicated(mesh))
            self.Xt, self.Yt = distributed.put((np.asarray(d.x_test), y_test), (test, test))
        n_batches = self.n_train // batch_size
        self.sizes = layer_sizes(cfg, d.x_train.shape[1], d.num_classes)
        self.learner = build_learner(cfg, d.x_train.shape[1], d.num_classes,
                                     cfg.loop.epochs * n_batches, d.image_shape)
        if mesh is not None:
            self.learner = distributed.DataParallel(self.learner, mesh)
        (self.batches, self.run_chunk, self.n_batches, self.chunk_len,
         self.n_chunks) = make_epoch_fns(
            self.learner, self.n_train, batch_size, cfg.loop.log_every, mesh, batch_shards
        )
        out = None if mesh is None else distributed.replicated(mesh)
        self.evaluate = jax.jit(self.learner.evaluate, out_shardings=out)
        root = jax.random.PRNGKey(cfg.loop.seed)
        keys = jax.random.split(root, 3)
        self.init_key, self.step_key, self.data_key = (self._replicate(k) for k in keys)
        self.diagnostics = None
        if getattr(self.learner, "diagnostics_fn", None) is not None:
            self.diagnostics = jax.jit(self.learner.diagnostics)

    def _replicate(self, tree):
        """``tree`` on every device of the mesh (unchanged without one)."""
        if self.mesh is None:
            return tree
        r = distributed.replicated(self.mesh)
        return distributed.put(tree, jax.tree.map(lambda _: r, tree))

    def initial_params(self):
        """The parameters at initialisation (a function of the seed), computed on this process's
        first device alone (process 0 plots them while the others do not take part)."""
        learner = self.learner.learner if self.mesh is not None else self.learner
        key = jnp.asarray(distributed.host_value(self.init_key))
        init = jax.jit(learner.init, static_argnums=1)
        return jax.device_get(learner.params(init(key, self.n_train)))

    def devices_record(self) -> dict:
        """The devices this run trains on (summary.json, provenance.jsonl)."""
        devs = jax.devices() if self.mesh is None else list(self.mesh.devices.flat)
        devs = devs[:1] if self.mesh is None else devs
        return {"count": len(devs), "kind": _device_name(), "processes": jax.process_count(),
                "mesh": None if self.mesh is None else dict(self.mesh.shape)}

    def init_state(self) -> TrainState:
        # One compiled init instead of a compile per eager initializer op (~1 s for 784-500-10).
        if self.mesh is None:
            ls = jax.jit(self.learner.init, static_argnums=1)(self.init_key, self.n_train)
        else:
            ls = self.learner.init(self.init_key, self.n_train)  # jitted, placed by its shardings
        zero = self._replicate(jnp.zeros((), jnp.int32))
        return TrainState(ls, self.step_key, zero, zero)

    def train_epoch(self, ts: TrainState, on_chunk=None) -> tuple[TrainState, dict]:
        idx, valid = self.batches(self.data_key, ts.epoch)
        ls, step = ts.learner, ts.step
        sums = None
        for c in range(self.n_chunks):
            ls, step, m = self.run_chunk(ls, step, self.X, self.Y, idx[c], valid[c], ts.key)
            sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
            if on_chunk is not None:
                on_chunk(c, sums)
        means = {k: v / self.n_batches for k, v in _to_float(sums).items()}
        bad = sorted(k for k, v in means.items() if not math.isfinite(v))
        if bad:
            raise FloatingPointError(self._nonfinite_message(ls, int(ts.epoch) + 1, bad))
        return TrainState(ls, ts.key, ts.epoch + 1, step), means

    def _nonfinite_message(self, ls, epoch: int, bad: list[str]) -> str:
        """The likely causes of non-finite metrics, in order, with what the host can check."""
        params = jax.tree.map(distributed.host_value, self.learner.params(ls))
        leaves = [jax.tree_util.keystr(p) for p, a in jax.tree_util.tree_leaves_with_path(params)
                  if not np.all(np.isfinite(a))]
        rule = self.cfg.rule
        causes = [
            "non-finite inputs in the data: no (checked at load)",
            "non-finite parameters: " + (f"yes, in {leaves[:4]} (lower the learning rates: "
                                         "optimizer.alphas / optimizer.learning_rate)"
                                         if leaves else "no"),
        ]
        if self.cfg.model.kind != MLP:  # the MLP has no relaxation and no beta
            causes += [f"step size too large: rule.step_size={rule.step_size} (lower --step-size)",
                       f"beta too large: rule.beta={rule.beta} (lower --beta)"]
        return (f"training diverged in epoch {epoch}: non-finite {bad}; likely causes, in order: "
                + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)))

    def test_metrics(self, ts: TrainState) -> dict:
        return _to_float(self.evaluate(ts.learner, self.Xt, self.Yt))

    def credit(self, ts: TrainState, *, n: Optional[int] = None,
               random_targets: bool = False) -> Optional[dict]:
        """Credit diagnostics on the first ``n`` (default ``loop.credit_batch``) test examples.

        ``None`` for learners without diagnostics (not residual) or ``credit_batch = 0``.

        The perturbation key is fixed (a function of the seed), so the numbers of two epochs
        differ only through the parameters. ``random_targets`` scores the credit against uniform
        random labels instead of the true ones.
        """
        n = self.cfg.loop.credit_batch if n is None else n
        if self.diagnostics is None or n < 1:
            return None
        n = min(n, int(self.Xt.shape[0]))
        key = jax.random.fold_in(self.data_key, 2**31 - 1)
        y = self.Yt[:n]
        if random_targets:
            y = jax.random.randint(jax.random.fold_in(key, 1), y.shape, 0, self.data.num_classes,
                                   y.dtype)
        return self.diagnostics(ts.learner, self.Xt[:n], y, key).to_dict()


def train(
    cfg: TrainConfig,
    *,
    out_dir=None,
    data_dir=None,
    resume: bool = False,
    quiet: bool = False,
    data: Optional[Dataset] = None,
    plots: bool = True,
    batch_shards: Optional[int] = None,
) -> dict:
    """Trains ``cfg``, writing config.json, metrics.jsonl, checkpoints, plots and summary.json.

    Checkpoints (every ``loop.checkpoint_every`` epochs, the last epoch and every evaluation that
    improves the best test error): the last ``checkpoint.KEEP_LAST`` are kept, plus the best one,
    so ``ep-jax eval --epoch <best_epoch>`` always works when checkpoints are on.

    Args:
      cfg: the run's configuration (a preset with overrides).
      out_dir: the run directory; ``None`` writes nothing (no checkpoints, metrics or plots).
        It must not exist, be empty, or (with ``resume``) hold this run's checkpoints; anything
        else is refused (``RunDirError``, ``CheckpointError``), never overwritten. It is locked
        for the whole run: a second process on it fails at once (``RunDirError``).
      data_dir: where offline dataset files are (see ``ep_jax.app.data.load_dataset``).
      resume: continue from the latest checkpoint in ``out_dir``; config.json stays as written
        by the first run and the resume is appended to provenance.jsonl (safe fields changed).
      quiet: no progress bar and no per-epoch lines (divergence flags are still printed).
      data: a ``Dataset`` to use instead of loading ``cfg.data.dataset``.
      plots: write the PNG plots at the end.
      batch_shards: the block structure of the batch order (default: the mesh's data-axis
        size; see ``Run``).

    In a multi-process run (``ep_jax.distributed.initialize``) every process calls ``train``
    with the same arguments; process 0 alone prints and writes the run directory's files, all
    write their shares of the checkpoints.

    Returns:
      The summary dict (also ``summary.json``): final/best test error (fractions), epochs,
      wall time, samples/s, ...; plus ``"state"``, the final ``TrainState`` (not saved).

    Raises:
      ValueError: invalid data (labels outside [0, num_classes), non-finite inputs).
      FloatingPointError: non-finite training metrics (the message lists likely causes).
      DivergenceError: a flagged epoch under ``loop.on_divergence="stop"``.
    """
    kw = dict(data_dir=data_dir, resume=resume, quiet=quiet, data=data, plots=plots,
              batch_shards=batch_shards)
    if out_dir is None:
        return _train(cfg, None, **kw)
    out = Path(out_dir)
    if jax.process_index() != 0:  # process 0 checks and locks the directory for all
        return _train(cfg, out, **kw)
    _check_run_dir(out, resume)  # before creating anything in a foreign directory
    out.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(out):
        _check_run_dir(out, resume)  # again: another process may have written it meanwhile
        return _train(cfg, out, **kw)


def _train(cfg: TrainConfig, out: Optional[Path], *, data_dir, resume, quiet, data, plots,
           batch_shards) -> dict:
    t_start = time.perf_counter()
    run = Run(cfg, data=data, data_dir=data_dir, batch_shards=batch_shards)
    lead = jax.process_index() == 0  # the one process that prints and writes files
    quiet = quiet or not lead
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    ts = run.init_state()
    rows: list[dict] = []
    if out is not None and not lead:  # the other processes restore and save checkpoints only
        if resume:
            epoch = checkpoint.latest_epoch(out)
            checkpoint.check_config(out, cfg)
            ts = checkpoint.restore(out, epoch, ts)
            rows = _read_metrics(out / "metrics.jsonl", epoch)
    elif out is not None:
        if resume:
            epoch = checkpoint.latest_epoch(out)
            if epoch is None:
                raise checkpoint.CheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'}")
            checkpoint.check_config(out, cfg)
            before = checkpoint.effective_config(out)
            ts = checkpoint.restore(out, epoch, ts)
            rows = _read_metrics(out / "metrics.jsonl", epoch)
            record = {
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "resumed_from_epoch": epoch,
                # Fingerprinted fields were refused above: what changed is RESUME_SAFE.
                "changed": checkpoint.config_changes(before, cfg),
                "devices": run.devices_record(),
                "ep_jax": _version(), "host": socket.gethostname(), "pid": os.getpid(),
            }
            path = out / checkpoint.PROVENANCE
            old = path.read_text() if path.exists() else ""
            checkpoint.write_atomic(path, old + json.dumps(record) + "\n")
            log(f"resumed from {out / 'checkpoints' / str(epoch)} (epoch {epoch}, step {int(ts.step)})")
        else:
            checkpoint.write_atomic(out / "config.json", cfg.to_json() + "\n")
        checkpoint.write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    start_epoch = int(ts.epoch)
    epochs, batch_size = cfg.loop.epochs, cfg.data.batch_size
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=(epochs - start_epoch) * run.n_batches, unit="batch", file=sys.stderr,
            desc=cfg.preset, dynamic_ncols=True,
        )
    say = bar.write if bar is not None else (lambda m: print(m, file=sys.stderr, flush=True))
    samples, run_wall = 0, 0.0
    train_wall = sum(r["epoch_wall_s"] for r in rows)
    try:
        for _ in range(start_epoch, epochs):
            t0 = time.perf_counter()
            done = [0]

            def on_chunk(c, sums, done=done):
                if bar is None:
                    return
                n = min((c + 1) * run.chunk_len, run.n_batches)
                bar.update(n - done[0])
                done[0] = n
                bar.set_postfix(epoch=int(ts.epoch) + 1,
                                err=f"{100 * float(sums['error']) / n:.2f}%")

            ts, train_m = run.train_epoch(ts, on_chunk)
            epoch = int(ts.epoch)
            row = {"epoch": epoch, "step": int(ts.step)}
            row.update({f"train_{k}": v for k, v in train_m.items()})
            tested = [r["test_error"] for r in rows if "test_error" in r]
            if epoch % cfg.loop.eval_every == 0 or epoch == epochs:
                row.update({f"test_{k}": v for k, v in run.test_metrics(ts).items()})
                credit = run.credit(ts)
                if credit is not None:
                    row["credit"] = credit
            flags = divergence_flags(row, rows[0] if rows else row)
            if flags:
                row["flags"] = flags
            wall = time.perf_counter() - t0
            train_wall += wall
            run_wall += wall
            samples += run.n_batches * batch_size
            row.update(epoch_wall_s=wall, samples_per_s=run.n_batches * batch_size / wall)
            rows.append(row)
            if out is not None:
                # Checkpoint first: a metrics row implies its epoch's checkpoint exists.
                every = cfg.loop.checkpoint_every
                new_best = "test_error" in row and all(row["test_error"] < t for t in tested)
                if every and (epoch % every == 0 or epoch == epochs or new_best):
                    best = _best(rows)
                    checkpoint.save(out, epoch, ts, best=best and best["epoch"])
                if lead:
                    _append_line(out / "metrics.jsonl", row)
            if bar is not None:
                test = row.get("test_error")
                bar.write(
                    f"epoch {epoch:3d}  train error {100 * row['train_error']:6.2f}%"
                    + (f"  test error {100 * test:6.2f}%" if test is not None else "")
                    + f"  {wall:5.2f} s"
                )
            if flags:
                if lead:
                    say(f"epoch {epoch}: diverging: {'; '.join(flags)}")
                if cfg.loop.on_divergence == "stop":
                    raise DivergenceError(
                        f"epoch {epoch} diverged ({'; '.join(flags)}) and loop.on_divergence is "
                        "'stop'" + (f"; its metrics and checkpoint are in {out}" if out else "")
                    )
    finally:
        if bar is not None:
            bar.close()

    if not rows or "test_error" not in rows[-1]:
        rows.append({"epoch": int(ts.epoch), **{f"test_{k}": v for k, v in run.test_metrics(ts).items()}})
    best = _best(rows)
    summary = {
        "preset": cfg.preset,
        "model": cfg.model.kind,
        "rule": cfg.rule.rule,
        "dataset": cfg.data.dataset,
        "sizes": run.sizes,
        "n_train": run.n_train,
        "n_test": int(run.Xt.shape[0]),
        "epochs": int(ts.epoch),
        "steps": int(ts.step),
        "test_error": rows[-1]["test_error"],
        "best_test_error": best["test_error"],
        "best_epoch": best["epoch"],
        "train_error": rows[-1].get("train_error"),
        "wall_s": time.perf_counter() - t_start,
        "train_wall_s": train_wall,
        "samples_per_s": samples / run_wall if samples else None,
        "device": _device_name(),
        "devices": run.devices_record(),
        "jax": jax.__version__,
        "resumed_from_epoch": start_epoch if resume else None,
    }
    if run.diagnostics is not None:
        summary["credit"] = next((r["credit"] for r in reversed(rows) if "credit" in r), None)
    if out is not None and lead:
        if plots:
            summary["plots"] = [str(p) for p in write_plots(run, ts, rows, out)]
        checkpoint.write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    summary["state"] = ts
    return summary


def _best(rows: list[dict]) -> Optional[dict]:
    """The first row of lowest test error (the summary's best epoch); ``None`` before any test."""
    return min((r for r in rows if "test_error" in r), key=lambda r: r["test_error"], default=None)


def _version() -> str:
    from ep_jax import __version__

    return __version__


def write_plots(run: Run, ts: TrainState, rows: list[dict], out: Path) -> list[Path]:
    """curves.png (energy, cost, error), weights.png (first-layer tiles: the change from
    initialisation), relaxation.png (EP nets: the evaluation relaxation step by step),
    network.png (small nets)."""
    from ep_jax.app import plots

    params = jax.tree.map(distributed.host_value, run.learner.params(ts.learner))
    kind = run.cfg.model.kind
    paths = [plots.plot_curves(rows, out / "curves.png", title=run.cfg.preset)]
    shape = run.data.image_shape
    if any("credit" in r for r in rows):
        paths.append(plots.plot_credit({run.cfg.preset: rows}, out / "credit.png"))
    if shape is not None:
        first = "embed" if kind == RESIDUAL else "layer_0"
        kernel = np.asarray(params[first]["kernel"])
        # The initial weights are a function of the seed: re-initialise to show what training changed.
        initial = np.asarray(run.initial_params()[first]["kernel"])
        if kind == CONV:  # HWIO filters (k, k, C_in, C_out): one k x k x C_in tile per channel
            shape, kernel = kernel.shape[:3], kernel.reshape(-1, kernel.shape[-1])
            initial = initial.reshape(kernel.shape)
        paths.append(plots.plot_weight_tiles(kernel, shape, out / "weights.png", initial=initial,
                                             title=f"{run.cfg.preset}: first-layer weights, change from init"))
    if kind not in (MLP, RESIDUAL):  # EP nets: the last evaluation's relaxation, step by step
        solver = run.learner.eval_solver
        x16 = jnp.asarray(run.data.x_test[:16])
        if getattr(run.learner, "preprocess", None) is not None:  # e.g. a conv net's images
            x16 = run.learner.preprocess.eval(x16)
        trace = plots.relaxation_trace(run.learner.energy, params, x16, solver,
                                       state0=run.learner.state_init)
        paths.append(plots.plot_relaxation(trace, out / "relaxation.png", tol=solver.tol,
                                           title=f"{run.cfg.preset}: evaluation relaxation, 16 test examples"))
    if kind not in (RESIDUAL, CONV) and sum(run.sizes) <= MAX_GRAPH_UNITS:
        acts = None
        if kind == LAYERED:  # the state an EP net settles to; an MLP's graph shows weights only
            x0 = jnp.asarray(run.data.x_test[:1])
            s0 = run.learner.energy.init_state(params, x0, run.learner.state_init)
            from ep_jax.solvers import relax

            s, _ = relax(run.learner.energy, params, x0, s0, solver=run.learner.eval_solver)
            acts = [np.asarray(a[0]) for a in (x0, *s)]
        paths.append(plots.plot_network(params, out / "network.png", activations=acts,
                                        title=f"{run.cfg.preset}: first test example"))
    return paths


def _restore_run(run_dir, data_dir, epoch):
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise checkpoint.CheckpointError(f"{path}: missing; --checkpoint expects a run directory")
    cfg = checkpoint.effective_config(run_dir)
    if jax.process_count() == 1:  # the checkpoint restores onto any mesh: here, one device
        cfg = cfg.with_overrides(devices=1, mesh=None)
    run = Run(cfg, data_dir=data_dir)
    if epoch is None:
        epoch = checkpoint.latest_epoch(run_dir)
        if epoch is None:
            raise checkpoint.CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    ts = checkpoint.restore(run_dir, epoch, run.init_state())
    return run, ts, str(run_dir / "checkpoints" / str(epoch))


def evaluate_checkpoint(run_dir, *, data_dir=None, epoch: Optional[int] = None) -> dict:
    """``ep-jax eval``: restores a run's checkpoint and evaluates it on the test split."""
    run, ts, path = _restore_run(run_dir, data_dir, epoch)
    return {"checkpoint": path, "epoch": int(ts.epoch),
            **{f"test_{k}": v for k, v in run.test_metrics(ts).items()}}


def credit_checkpoint(run_dir, *, data_dir=None, epoch: Optional[int] = None,
                      batch: Optional[int] = None, random_targets: bool = False) -> dict:
    """``ep-jax credit``: the credit diagnostics (``ep_jax.credit``) of a residual-model checkpoint."""
    run, ts, path = _restore_run(run_dir, data_dir, epoch)
    if run.diagnostics is None:
        raise ValueError(
            f"--checkpoint: credit diagnostics need a residual model (model.kind='residual'), "
            f"received a run with model.kind={run.cfg.model.kind!r}"
        )
    if batch is not None and batch < 1:
        raise ValueError(f"--batch: expected >= 1, received {batch}")
    n = min(batch or run.cfg.loop.credit_batch or 128, int(run.Xt.shape[0]))
    credit = run.credit(ts, n=n, random_targets=random_targets)
    return {"checkpoint": path, "epoch": int(ts.epoch), "batch": n,
            "random_targets": random_targets, **credit}


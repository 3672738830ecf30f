"""Data-parallel training over a device mesh, for every learner, without touching its internals.

Layout (``jax.sharding``; a mesh with a ``data`` axis and optionally a ``model`` axis)::

    training set X, Y (n_train, ...)      sharded on axis 0 over "data": device d holds block d
    persistent particles (n_train, ...)   the same blocks (EPState.particles)
    global batch idx (B,)                 = concat_d(local batch of device d), each drawn from
                                            block d (``batch_order``): B / D ids per device
    x = X[idx], state0 = particles[idx]   gathered inside each device's block (``ShardedRows``,
    particles[idx] = free state             a ``shard_map``): no example crosses devices
    params, optimizer state               replicated over "data"; over "model" (FSDP-style) the
                                            largest divisible axis of each weight matrix is split
    everything else (relaxations, rule, optax)   the learner's own single-device code, jitted
                                            with these shardings: XLA's SPMD partitioner splits
                                            it over the batch and inserts the all-reduce of
                                            every batch mean (the gradient and the metrics)

So a sharded step computes the same function as the single-device step on the same global batch
(equal up to the order of the floating-point sums), for any energy, rule or optimizer, including
rules that scale by the batch size (a mean over the batch stays a mean over the global batch).

Multi-host: ``initialize`` wraps ``jax.distributed.initialize`` (its arguments or the environment
JAX reads); ``jax.devices()`` is then every process's devices, each process holds (and reads) only
the blocks of its own devices (``shard_rows``) and all processes run the same program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)
_AXIS = re.compile(r"^\s*([a-z]+)\s*=\s*(\d+)\s*$")


def parse_mesh(spec: str, name: str = "mesh") -> dict[str, int]:
    """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}`` (axis ``data`` required).

    Raises:
      ValueError: naming ``name``, if the text is not ``axis=size`` pairs of known, distinct
        axes with sizes >= 1 and a ``data`` axis.
    """
    expected = (f"comma-separated axis=size pairs over the axes {AXES} with a 'data' axis and "
                "sizes >= 1 (e.g. 'data=8' or 'data=4,model=2')")
    if not isinstance(spec, str):
        raise ValueError(f"{name}: expected {expected}, received {spec!r}")
    axes: dict[str, int] = {}
    for part in spec.split(","):
        m = _AXIS.match(part)
        if m is None or m.group(1) not in AXES or m.group(1) in axes or int(m.group(2)) < 1:
            raise ValueError(f"{name}: expected {expected}, received {spec!r}")
        axes[m.group(1)] = int(m.group(2))
    if DATA not in axes:
        raise ValueError(f"{name}: expected {expected}, received {spec!r}")
    return axes


def make_mesh(devices: Optional[int] = None, mesh: Optional[str | dict] = None) -> Mesh:
    """A ``Mesh`` over the first ``devices`` of ``jax.devices()`` (``None`` or 0: all of them).

    Args:
      devices: how many devices (in a multi-process run: all of them, every process takes part).
      mesh: ``"data=4,model=2"`` or ``{"data": 4, "model": 2}``; ``None``: ``{"data": devices}``.

    Raises:
      ValueError: more devices than JAX sees, a subset of a multi-process run's devices, or a
        mesh whose sizes do not multiply to the device count.
    """
    available = jax.devices()
    n = devices or len(available)
    if isinstance(devices, bool) or not isinstance(n, int) or not 1 <= n <= len(available):
        raise ValueError(
            f"devices: expected 1..{len(available)} (the {available[0].platform} devices JAX sees) "
            f"or 0 for all, received {devices!r}"
        )
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(
            f"devices: a run of {jax.process_count()} processes uses all {len(available)} devices "
            f"(every process holds a share), received {devices}"
        )
    axes = parse_mesh(mesh) if isinstance(mesh, str) else dict(mesh or {DATA: n})
    if math.prod(axes.values()) != n:
        raise ValueError(
            f"mesh: expected axis sizes whose product is the {n} devices, received {axes}"
        )
    shape = tuple(axes.values())
    try:  # topology-aware on TPUs and GPUs; a plain reshape on the CPU
        grid = mesh_utils.create_device_mesh(shape, devices=available[:n])
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(available[:n], dtype=object).reshape(shape)
    return Mesh(grid, tuple(axes))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """``jax.distributed.initialize`` (before any other JAX call); ``None`` arguments are read by
    JAX from its environment (SLURM, TPU pods, ``JAX_COORDINATOR_ADDRESS``, ...).

    On the CPU, cross-process collectives use gloo (``jax_cpu_collectives_implementation``).
    """
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def data_size(mesh: Optional[Mesh]) -> int:
    """Devices along the ``data`` axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[DATA])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 split in contiguous blocks over ``data`` (replicated over ``model``)."""
    return NamedSharding(mesh, P(DATA))


def check_divisible(n_train: int, batch_size: int, mesh: Optional[Mesh]) -> None:
    """Raises ``ValueError`` unless the training set and the batch split evenly over ``data``."""
    d = data_size(mesh)
    if n_train % d:
        raise ValueError(
            f"devices: the {n_train} training examples are split into {d} equal blocks (one per "
            f"device of the mesh's data axis, with their particles): expected a data-axis size "
            f"that divides {n_train}, received {d}"
        )
    if batch_size % d:
        raise ValueError(
            f"data.batch_size: expected a multiple of the mesh's data-axis size {d} (each device "
            f"draws batch_size / {d} examples from its block), received {batch_size}"
        )


def batch_order(key: jax.Array, n_train: int, batch_size: int, shards: int = 1) -> jax.Array:
    """An epoch's batches, ``(n_train // batch_size, batch_size)`` example ids.

    ``shards`` = 1: ``permutation(key, n_train)`` cut into batches. ``shards`` = D > 1: the ids
    split into D contiguous blocks of n_train / D; block d is permuted with ``fold_in(key, d)``
    and cut into local batches of batch_size / D; global batch t is the concatenation over d of
    local batch t, so under a ``P("data")`` sharding every device's part of a batch lies in its
    own block. A single-device run with the same ``shards`` sees the same batches.
    """
    if shards == 1:
        perm = jax.random.permutation(key, n_train)
        n = n_train // batch_size
        return perm[: n * batch_size].reshape(n, batch_size).astype(jnp.int32)
    block, local = n_train // shards, batch_size // shards
    n = block // local
    d = jnp.arange(shards)
    perms = jax.vmap(lambda i: jax.random.permutation(jax.random.fold_in(key, i), block))(d)
    perms = perms[:, : n * local] + (d * block)[:, None]
    return perms.reshape(shards, n, local).transpose(1, 0, 2).reshape(n, batch_size).astype(
        jnp.int32)


@dataclasses.dataclass(frozen=True)
class LocalRows:
    """``table[idx]`` and ``table.at[idx].set(values)``: rows of one device's arrays."""

    def take(self, table: jax.Array, idx: jax.Array) -> jax.Array:
        return table[idx]

    def put(self, table: jax.Array, idx: jax.Array, values: jax.Array) -> jax.Array:
        return table.at[idx].set(values)


@dataclasses.dataclass(frozen=True)
class ShardedRows:
    """Row gathers and scatters on tables sharded in blocks over ``data``, inside each block.

    Contract: the ids of device d's part of ``idx`` (a ``P("data")`` split of the batch) lie in
    its block ``[d n / D, (d + 1) n / D)`` (``batch_order`` guarantees it). Each device then
    indexes its own block with ``idx - d n / D``: no collective, the table never moves.
    """

    mesh: Mesh

    def _map(self, f: Callable, *args) -> jax.Array:
        spec = P(DATA)
        return jax.shard_map(f, mesh=self.mesh, in_specs=(spec,) * len(args), out_specs=spec)(
            *args)

    def _offset(self, table):
        return jax.lax.axis_index(DATA) * table.shape[0]

    def take(self, table: jax.Array, idx: jax.Array) -> jax.Array:
        if data_size(self.mesh) == 1:
            return table[idx]
        return self._map(lambda t, i: t[i - self._offset(t)], table, idx)

    def put(self, table: jax.Array, idx: jax.Array, values: jax.Array) -> jax.Array:
        if data_size(self.mesh) == 1:
            return table.at[idx].set(values)
        return self._map(lambda t, i, v: t.at[i - self._offset(t)].set(v), table, idx, values)


def param_spec(shape: tuple, mesh: Mesh) -> P:
    """FSDP-style: over a ``model`` axis of size m > 1, a weight matrix (ndim >= 2) is split on
    its largest axis that m divides; vectors, scalars and indivisible arrays are replicated."""
    m = int(mesh.shape.get(MODEL, 1))
    if m == 1 or len(shape) < 2:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % m == 0:
            return P(*([None] * axis + [MODEL]))
    return P()


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """The shardings of a learner state: its ``particles`` (if any) by rows over ``data``, every
    other leaf by ``param_spec`` (params and optimizer moments alike, by shape)."""

    def other(tree):
        return jax.tree.map(lambda a: NamedSharding(mesh, param_spec(jnp.shape(a), mesh)), tree)

    if hasattr(state, "particles") and hasattr(state, "_replace"):
        rows = rows_sharding(mesh)
        parts = {f: (jax.tree.map(lambda _: rows, getattr(state, f)) if f == "particles"
                     else other(getattr(state, f))) for f in state._fields}
        return type(state)(**parts)
    return other(state)


def shard_rows(array, mesh: Mesh) -> jax.Array:
    """A host array as a global array split by rows over ``data``; each process materialises
    only the rows of its own devices (``jax.make_array_from_callback``)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, rows_sharding(mesh), lambda i: array[i])


def put(tree: Any, shardings: Any) -> Any:
    """Every leaf of ``tree`` (host or device values, the same on every process) placed with its
    sharding; in a multi-process run each process supplies only its own shards."""

    def one(a, s):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:  # already global: reshard
            return jax.device_put(a, s)
        a = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(a.shape, s, lambda i: a[i])

    return jax.tree.map(one, tree, shardings)


def host_value(a: jax.Array) -> np.ndarray:
    """The whole array on this host (gathered from every process when not fully addressable)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(jax.device_get(a))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Any ``ep_jax.learner.Learner`` trained data-parallel over ``mesh`` (same ``Learner``
    protocol; see the module docstring).

    A learner with a ``rows`` field (``EPLearner``: how it gathers and scatters its particles)
    gets ``ShardedRows``; ``train_step`` pins the new state to ``state_shardings`` so the layout
    stays the same from step to step. Inputs must already be sharded: ``x, y, idx`` by rows
    (``P("data")``, ids from ``batch_order``), the state by ``state_shardings``.

    Attributes:
      learner: the single-device learner.
      mesh: the device mesh (``make_mesh``).
    """

    learner: Any
    mesh: Mesh

    @property
    def inner(self):
        """The wrapped learner with its row gathers kept inside each device's block."""
        if dataclasses.is_dataclass(self.learner) and any(
                f.name == "rows" for f in dataclasses.fields(self.learner)):
            return dataclasses.replace(self.learner, rows=ShardedRows(self.mesh))
        return self.learner

    @property
    def rows(self) -> ShardedRows:
        return ShardedRows(self.mesh)

    def __getattr__(self, name):  # diagnostics_fn, energy, ... of the wrapped learner
        if name in ("learner", "mesh"):
            raise AttributeError(name)
        return getattr(self.learner, name)

    def shardings(self, state: Any) -> Any:
        return state_shardings(state, self.mesh)

    def init(self, key: jax.Array, n_train: int) -> Any:
        init = functools.partial(_init, self.inner, n_train=n_train)
        return jax.jit(init, out_shardings=self.shardings(jax.eval_shape(init, key)))(key)

    def train_step(self, state, x, y, idx, key):
        state, metrics = self.inner.train_step(state, x, y, idx, key)
        state = jax.lax.with_sharding_constraint(state, self.shardings(state))
        return state, metrics

    def evaluate(self, state, x, y) -> dict:
        return self.inner.evaluate(state, x, y)

    def params(self, state) -> Any:
        return self.inner.params(state)

    def diagnostics(self, state, x, y, key):
        return self.inner.diagnostics(state, x, y, key)


def _init(learner, key, *, n_train):
    return learner.init(key, n_train)


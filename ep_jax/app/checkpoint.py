"""orbax checkpoints of a training run: learner state (params, optimizer state, particles),
the run's PRNG key, epoch and step, plus the config they belong to.

Layout of a run directory::

    config.json                   the run's config as first started (never rewritten)
    provenance.jsonl              one record per --resume: safe fields changed (old -> new), who, when
    checkpoints/<epoch>/          orbax CheckpointManager step (atomic: a run killed while saving
                                  leaves no half-written step behind), one directory per array
    checkpoints/<epoch>/digests.json   sha256 of each saved array (bytes, shape, dtype) and of each
                                  file of the step, written after orbax finishes; a step without
                                  it is incomplete and not listed

Retention: ``save`` keeps the last ``keep`` checkpoints (``KEEP_LAST`` by default) plus the one of
the ``best`` epoch it is given (the training loop passes the epoch of lowest test error), so the
``best_epoch`` of ``summary.json`` stays evaluable. Restoring checks that the saved config has the
same fingerprint (``TrainConfig.fingerprint``: every field that changes what the saved state means),
that every array has the shape and dtype the current run expects, and every array's digest; all
failures are ``CheckpointError`` naming the checkpoint and the field or leaf, with orbax's own
exception (if any) as ``__cause__``.

Sharded runs (``ep_jax.distributed``): orbax writes each array's shards from the devices (and
processes) that hold them; the digests are of the whole arrays, so they do not depend on the
layout, and ``restore`` places every array with the sharding of ``like``'s leaf: a checkpoint of
8 devices restores onto 4, 1, or another mesh. In a multi-process run every process calls
``save`` and ``restore``; process 0 alone writes ``digests.json``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ep_jax.app.config import TrainConfig
from ep_jax.distributed import host_value

# Checkpoints kept besides the best one.
KEEP_LAST = 2
DIGESTS = "digests.json"
PROVENANCE = "provenance.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different run."""


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a synced temp file in the same directory + ``os.replace``:
    a reader (or a crash) sees the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _manager(run_dir: Path) -> ocp.CheckpointManager:
    # Retention is ours (``_prune``): orbax's max_to_keep knows nothing of the best epoch.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False)
    # Without OCDBT each array has its own directory (``default/<leaf.path>/``), so a file digest
    # names the leaf, and is checked before orbax reads anything.
    return ocp.CheckpointManager(Path(run_dir).resolve() / "checkpoints", options=options,
                                 item_handlers=ocp.StandardCheckpointHandler(use_ocdbt=False))


def _step_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / str(epoch)


def _file_digests(step: Path) -> dict[str, str]:
    return {str(p.relative_to(step)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(step.rglob("*")) if p.is_file() and p.name != DIGESTS}


def _digests(tree: Any) -> dict[str, dict]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = host_value(leaf)
        h = hashlib.sha256(np.ascontiguousarray(a).tobytes())
        h.update(f"{a.shape}{a.dtype.str}".encode())
        out[jax.tree_util.keystr(path)] = {"shape": list(a.shape), "dtype": str(a.dtype),
                                           "sha256": h.hexdigest()}
    return out


def _no_ocdbt_merge_warning(record: logging.LogRecord) -> bool:
    # orbax warns on every save without OCDBT that it found no OCDBT files to merge.
    return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


def save(run_dir: Path, epoch: int, tree: Any, *, keep: int = KEEP_LAST,
         best: Optional[int] = None) -> None:
    """Saves ``tree`` (a pytree of arrays) as the checkpoint of ``epoch``, then its digests.

    Keeps the last ``keep`` checkpoints and the one of epoch ``best`` (if given); deletes others.
    """
    if keep < 1:
        raise ValueError(f"keep: expected >= 1 checkpoints to keep, received {keep}")
    absl = logging.getLogger("absl")
    absl.addFilter(_no_ocdbt_merge_warning)
    try:
        with _manager(run_dir) as mngr:
            if epoch in mngr.all_steps():  # saved by a run killed before it wrote the digests
                mngr.delete(epoch)
            mngr.save(epoch, args=ocp.args.StandardSave(tree))
            mngr.wait_until_finished()
    except Exception as err:  # orbax/tensorstore/asyncio raise many types; theirs is __cause__
        raise CheckpointError(
            f"checkpoint {_step_dir(run_dir, epoch)} could not be saved (is the disk full or the "
            "directory read-only?)"
        ) from err
    finally:
        absl.removeFilter(_no_ocdbt_merge_warning)
    step = _step_dir(run_dir, epoch)
    arrays = _digests(tree)  # every process takes part in the gathers of sharded arrays
    if jax.process_index() == 0:
        digests = {"arrays": arrays, "files": _file_digests(step)}
        write_atomic(step / DIGESTS, json.dumps(digests, indent=1) + "\n")
    _sync("ep_jax_checkpoint_digests")
    _prune(run_dir, keep, best)


def _sync(name: str) -> None:
    """A barrier of all processes (nothing in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _prune(run_dir: Path, keep: int, best: Optional[int]) -> None:
    steps = sorted(int(p.name) for p in (Path(run_dir) / "checkpoints").iterdir()
                   if p.name.isdigit() and p.is_dir())
    doomed = [s for s in steps[:-keep] if s != best]
    if doomed:
        with _manager(run_dir) as mngr:
            for s in doomed:
                mngr.delete(s)


def epochs(run_dir: Path) -> list[int]:
    """The epochs with a complete checkpoint (orbax step + digests), ascending."""
    path = Path(run_dir) / "checkpoints"
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir()
                  if p.name.isdigit() and (p / DIGESTS).is_file())


def latest_epoch(run_dir: Path) -> Optional[int]:
    found = epochs(run_dir)
    return found[-1] if found else None


def saved_config(run_dir: Path) -> TrainConfig:
    """``run_dir/config.json``, the config the run was started with."""
    path = Path(run_dir) / "config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; cannot tell which run the checkpoints belong to")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt JSON ({err})") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid run config ({err})") from err


def provenance(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / PROVENANCE
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt JSON ({err})") from err


def effective_config(run_dir: Path) -> TrainConfig:
    """config.json with the changes of every resume recorded in provenance.jsonl applied."""
    cfg = saved_config(run_dir)
    for record in provenance(run_dir):
        changes = {k.split(".")[-1]: new for k, (_, new) in record.get("changed", {}).items()}
        cfg = cfg.with_overrides(**changes)
    return cfg


def config_changes(old: TrainConfig, new: TrainConfig) -> dict[str, list]:
    """``{section.field: [old, new]}`` of every field (and the preset name) that differs."""
    a, b = old.to_dict(), new.to_dict()
    changed = {}
    for key in dict.fromkeys([*a, *b]):
        if isinstance(a.get(key), dict) or isinstance(b.get(key), dict):
            x, y = a.get(key, {}), b.get(key, {})
            changed.update({f"{key}.{k}": [x.get(k), y.get(k)]
                            for k in dict.fromkeys([*x, *y]) if x.get(k) != y.get(k)})
        elif a.get(key) != b.get(key):
            changed[key] = [a.get(key), b.get(key)]
    return changed


def check_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Raises ``CheckpointError`` unless ``run_dir/config.json`` has the fingerprint of ``cfg``.

    The message names the first ``section.field`` that differs, with both values.
    """
    theirs, ours = saved_config(run_dir).fingerprint(), cfg.fingerprint()
    for name in dict.fromkeys([*theirs, *ours]):
        a, b = theirs.get(name), ours.get(name)
        if a != b:
            why = (" (optimizer.schedule decays the rates over all epochs of the run)"
                   if name == "loop.epochs" else "")
            raise CheckpointError(
                f"checkpoint in {run_dir} belongs to a different run: {name} is {a!r} there, "
                f"{b!r} in this run{why}"
            )


def _collect_orbax_orphans() -> None:
    """Collects now, silently, the read coroutines orbax abandons when one read fails: Python
    would otherwise print each one's tensorstore traceback at exit, after our one-line error."""

    def unraisable(u, default=sys.unraisablehook):
        code = getattr(u.object, "cr_code", None)
        if code is None or "orbax" not in code.co_filename:
            default(u)

    saved, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        gc.collect()
    finally:
        sys.unraisablehook = saved


def _read_digests(step: Path) -> dict:
    try:
        digests = json.loads((step / DIGESTS).read_text())
        if not (isinstance(digests, dict) and isinstance(digests.get("arrays"), dict)
                and isinstance(digests.get("files"), dict)):
            raise ValueError("expected a JSON object of 'arrays' and 'files'")
        return digests
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"checkpoint {step} could not be restored: its {DIGESTS} is unreadable ({err})"
        ) from err


def restore(run_dir: Path, epoch: int, like: Any) -> Any:
    """Restores the checkpoint of ``epoch`` into the structure, shapes and dtypes of ``like``.

    Raises:
      CheckpointError: no such epoch (the message lists those that exist), a leaf whose saved
        shape or dtype differs from ``like``'s, an array whose digest does not match, or a step
        orbax cannot read.
    """
    step = _step_dir(run_dir, epoch)
    available = epochs(run_dir)
    if epoch not in available:
        raise CheckpointError(
            f"epoch {epoch} has no checkpoint in {run_dir}; available: "
            + (", ".join(map(str, available)) or "none")
        )
    digests = _read_digests(step)
    arrays = digests["arrays"]
    # Each array is restored with the sharding of like's leaf (a host value: the first device),
    # never the saved one: a checkpoint of any mesh restores onto any device count.
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        jnp.shape(a), jnp.result_type(a), sharding=getattr(a, "sharding", default)), like)
    # Shapes first, from the digests: a mismatch names the leaf instead of surfacing orbax's error.
    for path, want in jax.tree_util.tree_leaves_with_path(abstract):
        name = jax.tree_util.keystr(path)
        saved = arrays.get(name)
        if saved is None:
            raise CheckpointError(f"checkpoint {step}: leaf {name} is missing; it is from another run")
        if tuple(saved["shape"]) != want.shape or saved["dtype"] != str(want.dtype):
            raise CheckpointError(
                f"checkpoint {step}: leaf {name} was saved as {tuple(saved['shape'])} "
                f"{saved['dtype']}, this run expects {want.shape} {want.dtype} (was config.json "
                "edited?)"
            )
    # Files next: a corrupt file never reaches orbax, whose failed reads print internals.
    found = _file_digests(step)
    for rel, sha in digests["files"].items():
        if found.get(rel) != sha:
            parts = Path(rel).parts
            is_array = len(parts) == 3 and f"{parts[0]}/{parts[1]}/.zarray" in digests["files"]
            what = f"leaf {parts[1]} (file {rel})" if is_array else f"file {rel}"
            raise CheckpointError(
                f"checkpoint {step}: {what} "
                + ("is missing" if rel not in found else "does not match its sha256 digest")
                + "; the checkpoint is corrupt"
            )
    try:
        with _manager(run_dir) as mngr:
            tree = mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax/tensorstore raise many types; theirs is kept as __cause__
        _collect_orbax_orphans()
        raise CheckpointError(
            f"checkpoint {step} could not be restored: its array files are unreadable (corrupt, "
            "truncated, or written by another program)"
        ) from err
    got = _digests(tree)
    for name, saved in arrays.items():
        if got.get(name, {}).get("sha256") != saved.get("sha256"):
            raise CheckpointError(
                f"checkpoint {step}: leaf {name} does not match its sha256 digest; the saved "
                "array is corrupt"
            )
    return tree

"""orbax checkpoints of a training run: learner state (params, optimizer state, particles),
the run's PRNG key, epoch and step, plus the config they belong to.

Layout: ``DIR/checkpoints/<epoch>/`` (orbax ``CheckpointManager``, atomic: a run killed while
saving leaves no half-written checkpoint behind) and ``DIR/config.json``. Resuming checks that
the saved config has the same fingerprint (``TrainConfig.fingerprint``: every field that changes
what the saved state means) and that every array has the shape and dtype the current run
expects, and says which field differs otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ep_jax.app.config import TrainConfig


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different run."""


def _manager(run_dir: Path, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(run_dir).resolve() / "checkpoints", options=options)


def save(run_dir: Path, epoch: int, tree: Any) -> None:
    """Saves ``tree`` (a pytree of arrays) as the checkpoint of ``epoch``."""
    with _manager(run_dir) as mngr:
        mngr.save(epoch, args=ocp.args.StandardSave(tree))
        mngr.wait_until_finished()


def latest_epoch(run_dir: Path) -> Optional[int]:
    path = Path(run_dir) / "checkpoints"
    if not path.is_dir():
        return None
    with _manager(run_dir) as mngr:
        return mngr.latest_step()


def check_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Raises ``CheckpointError`` unless ``run_dir/config.json`` has the fingerprint of ``cfg``.

    The message names the first ``section.field`` that differs, with both values.
    """
    path = Path(run_dir) / "config.json"
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; cannot tell which run the checkpoints belong to")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt JSON ({err})")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid run config ({err})") from err
    theirs, ours = saved.fingerprint(), cfg.fingerprint()
    for name in dict.fromkeys([*theirs, *ours]):
        a, b = theirs.get(name), ours.get(name)
        if a != b:
            why = (" (optimizer.schedule decays the rates over all epochs of the run)"
                   if name == "loop.epochs" else "")
            raise CheckpointError(
                f"checkpoint in {run_dir} belongs to a different run: {name} is {a!r} there, "
                f"{b!r} in this run{why}"
            )


def restore(run_dir: Path, epoch: int, like: Any) -> Any:
    """Restores the checkpoint of ``epoch`` into the structure, shapes and dtypes of ``like``."""
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), like)
    try:
        with _manager(run_dir) as mngr:
            tree = mngr.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many types (ValueError, KeyError, FileNotFoundError...)
        raise CheckpointError(
            f"checkpoint {Path(run_dir) / 'checkpoints' / str(epoch)} could not be restored "
            f"({type(err).__name__}: {str(err)[:400]}); it is corrupt or from another run"
        ) from err
    for path, got, want in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(tree), jax.tree.leaves(abstract)
    ):
        if np.shape(got) != want.shape or jnp.result_type(got) != want.dtype:
            raise CheckpointError(
                f"checkpoint leaf {jax.tree_util.keystr(path[0])}: expected {want.shape} "
                f"{want.dtype}, received {np.shape(got)} {jnp.result_type(got)}"
            )
    return tree

"""Orbax save/restore of whole pytrees (parameters, optimizer state, normalizers, RNG, counters).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint intact and `latest_step` never points at a partial one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_pytree(path: Path, tree: Any) -> None:
    """Write one pytree to `path` (created; overwritten if present)."""
    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, jax.device_get(tree), force=True)
        ckpt.wait_until_finished()


def restore_pytree(path: Path, like: Any | None = None) -> Any:
    """Read a pytree saved by `save_pytree`; `like` fixes structure/dtypes when given."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with ocp.StandardCheckpointer() as ckpt:
        if like is None:
            return ckpt.restore(path)
        target = jax.tree.map(lambda x: np.asarray(x), jax.device_get(like))
        return ckpt.restore(path, target)


class CheckpointStore:
    """Numbered checkpoints of a training run (every N iterations and at the end); keeps the last few."""

    def __init__(self, directory: Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, tree: Any) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(jax.device_get(tree)), force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(lambda x: np.asarray(x), jax.device_get(like))
        return step, self.manager.restore(step, args=ocp.args.StandardRestore(target))

    def close(self) -> None:
        self.manager.close()

"""Read what a training run left behind: policy bundles, PPO checkpoints (any step), the base policy, the bank.

PPO checkpoints are orbax StandardSave trees of `PPOTrainer.to_host`'s flat {keystr path: array} dict of
the whole TrainingState; export needs only the actor parameters and the observation normalizer, which
are picked out by key (".params['actor'][...]", ".normalizer.mean", ".normalizer.std").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from recovla_jax.failures.bank import FailureBank
from recovla_jax.utils.checkpoint import restore_pytree
from recovla_jax.utils.run_dirs import RunDirError, bank_dir

ACTOR_PREFIX = ".params['actor']"
NORMALIZER_MEAN = ".normalizer.mean"
NORMALIZER_STD = ".normalizer.std"



@dataclass(frozen=True)
class ResidualCheckpoint:
    """The exported part of one PPO checkpoint."""

    step: int
    actor_params: dict  # flax variables {"params": {"Dense_i": {"kernel", "bias"}}}
    mean: np.ndarray
    std: np.ndarray


def load_bundles(run_dir: Path) -> dict[str, dict]:
    """policies/<name>.json of a run (written by training.policy_bundle), by policy name."""
    pdir = Path(run_dir) / "policies"
    files = sorted(pdir.glob("*.json"))
    if not files:
        raise RunDirError(f"{run_dir} has no policies/*.json: is it a finished training run directory?")
    return {f.stem: json.loads(f.read_text()) for f in files}


def checkpoint_steps(ckpt_dir: Path) -> list[int]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _nest(flat: dict[str, np.ndarray], prefix: str) -> dict:
    """{".params['actor']['params']['Dense_0']['kernel']": a} -> {"params": {"Dense_0": {"kernel": a}}}."""
    out: dict = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        parts = re.findall(r"\['([^']+)'\]", key[len(prefix):])
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = np.asarray(value, np.float32)
    return out


def read_residual_checkpoint(ckpt_dir: Path, step: int | None = None) -> ResidualCheckpoint:
    """Actor params and normalizer of checkpoint `step` (default: the latest) under `ckpt_dir`."""
    ckpt_dir = Path(ckpt_dir).absolute()
    steps = checkpoint_steps(ckpt_dir)
    if not steps:
        raise RunDirError(f"no checkpoints under {ckpt_dir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunDirError(f"no checkpoint step {step} under {ckpt_dir}; available steps: {steps}")
    with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
        flat: dict[str, Any] = mgr.restore(step, args=ocp.args.StandardRestore())
    actor = _nest(flat, ACTOR_PREFIX)
    if not actor.get("params"):
        raise RunDirError(f"checkpoint {ckpt_dir}/{step} has no actor parameters (keys starting {ACTOR_PREFIX!r})")
    for k in (NORMALIZER_MEAN, NORMALIZER_STD):
        if k not in flat:
            raise RunDirError(f"checkpoint {ckpt_dir}/{step} has no {k!r}")
    return ResidualCheckpoint(step, actor, np.asarray(flat[NORMALIZER_MEAN], np.float32),
                              np.asarray(flat[NORMALIZER_STD], np.float32))


def dense_shapes(params: dict) -> list[tuple[int, int]]:
    """Kernel shapes of Dense_0, Dense_1, ... in order (checks a checkpoint against its bundle)."""
    layers = params["params"] if "params" in params else params
    names = sorted(layers, key=lambda n: int(n.split("_")[-1]))
    return [tuple(np.shape(layers[n]["kernel"])) for n in names]


def read_base_params(run_dir: Path) -> tuple[dict, dict]:
    """(params {"net", "obs_mean", "obs_std"}, meta) of the run's frozen base policy copy."""
    bdir = Path(run_dir) / "base_policy"
    if not (bdir / "params").exists():
        raise RunDirError(f"{run_dir} has no base_policy/params (written by training.policy_bundle.write_base_policy)")
    meta = json.loads((bdir / "meta.json").read_text()) if (bdir / "meta.json").exists() else {}
    params = restore_pytree(bdir / "params")
    return params, meta


def load_run_base(run_dir: Path):
    """The run's frozen base policy (run/base_policy) as a callable BasePolicy, exactly as training saw it."""
    import jax
    import jax.numpy as jnp

    from recovla_jax.policies.base_policy import BasePolicy, bc_hidden, make_bc_apply

    params, meta = read_base_params(run_dir)
    params = jax.tree.map(jnp.asarray, params)
    action_size = dense_shapes(params["net"])[-1][1]
    return BasePolicy(name=meta.get("name", "base"), apply=make_bc_apply(bc_hidden(params["net"]), action_size),
                      params=params, info=meta)


def read_bank(run_dir: Path) -> FailureBank:
    return FailureBank.load(bank_dir(run_dir))

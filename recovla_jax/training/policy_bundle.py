"""What a trained recovery policy needs besides its checkpoint, written into the run directory.

`run_dir/policies/<name>.json` describes one residual policy (modes it serves, network shape, residual
scale, observation layout, reward weights, descriptors, where its orbax checkpoints are) and
`run_dir/base_policy/` holds a copy of the frozen base policy's parameters, so export and evaluation read
only the run directory, never a cache that may have been cleared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from recovla_jax.policies.base_policy import BasePolicy
from recovla_jax.rewards.library import component_names
from recovla_jax.sim import gripper as grip
from recovla_jax.tasks.base import Task
from recovla_jax.utils.checkpoint import save_pytree

BUNDLE_FORMAT = 1
# Observation normalisation clip used by PPOTrainer.normalize (brax running_statistics max_abs_value).
NORMALIZER_MAX_ABS = 10.0


def residual_obs_layout(task: Task, n_components: int) -> list[dict]:
    """The residual policy's input: task observation, base action, mode one-hot, reward weights."""
    layout = task.obs_layout()
    start = task.observation_size
    for name, size, desc in (
        ("base_action", grip.ACTION_SIZE, "frozen base policy action in [-1, 1]^7"),
        ("mode_one_hot", len(task.failure_modes), f"failure mode one-hot over {list(task.failure_modes)}"),
        ("reward_weights", n_components, f"compiled reward weights over {list(component_names(task))}"),
    ):
        layout.append({"name": name, "start": start, "size": size, "unit": "", "description": desc})
        start += size
    return layout


def write_base_policy(run_dir: Path, base: BasePolicy) -> Path:
    """Copy the base policy's parameters and metadata into `run_dir/base_policy` (once)."""
    out = Path(run_dir) / "base_policy"
    if not (out / "meta.json").exists():
        if out.exists():
            shutil.rmtree(out)
        save_pytree(out / "params", base.params)
        meta = {"name": base.name, **{k: v for k, v in base.info.items()}}
        (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def write_policy_bundle(run_dir: Path, name: str, modes: list[str], task: Task, base: BasePolicy, env: Any,
                        ppo_cfg: Any, args: Any, descriptors: dict) -> Path:
    """Write `run_dir/policies/<name>.json` for a trained residual policy (see module docstring)."""
    run_dir = Path(run_dir)
    write_base_policy(run_dir, base)
    weights = np.asarray(env.weights_per_mode)
    bc_cfg = base.info.get("bc_config", {})
    bundle = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "task": task.name,
        "task_config": task.config.model_dump(mode="json"),
        "modes": list(modes),
        "failure_modes": list(task.failure_modes),
        "checkpoint_dir": f"checkpoints/{name}",
        "actor": {"hidden": list(ppo_cfg.actor_hidden), "activation": "swish", "output": "tanh-squashed residual"},
        "normalize_obs": bool(ppo_cfg.normalize_obs),
        "normalizer_max_abs": NORMALIZER_MAX_ABS,
        "alpha": float(env.alpha),
        "hand_back": bool(getattr(env, "hand_back", False)),
        "hand_back_delay": int(getattr(env, "hand_back_delay", 0)),
        "trained_with": {"obs_noise": float(getattr(env, "obs_noise", 0.0)),
                         "latency_prob": float(getattr(env, "latency_prob", 0.0)),
                         "start_noise": float(getattr(env, "start_noise", 0.0)),
                         "domain_randomization": not bool(getattr(args, "no_randomization", False))},
        "action": {"size": grip.ACTION_SIZE, "low": -1.0, "high": 1.0,
                   "meaning": ("dx, dy, dz (x max_translation m), rotation axis-angle (x max_rotation rad), "
                               "grip (-1 open, +1 close)"),
                   "max_translation": task.limits.max_translation, "max_rotation": task.limits.max_rotation},
        "task_obs_size": task.observation_size,
        "residual_obs_size": int(env.observation_size),
        "residual_obs_layout": residual_obs_layout(task, weights.shape[1]),
        "component_names": list(component_names(task)),
        "weights_per_mode": weights.tolist(),
        "descriptors": {m: descriptors[m].model_dump() for m in modes if m in descriptors},
        "ctrl_dt": task.config.ctrl_dt,
        "episode_length": int(args.episode_length),
        "base_policy": {"dir": "base_policy", "name": base.name, "hidden": list(bc_cfg.get("hidden", (256, 256))),
                        "activation": "swish", "output": "tanh",
                        "formula": "tanh(MLP((obs - obs_mean) / obs_std))"},
    }
    out = run_dir / "policies" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bundle, indent=2))
    return out

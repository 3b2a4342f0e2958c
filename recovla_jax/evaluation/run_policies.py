"""A finished run's trained residual policies, loaded back as one JAX apply function.

The main job keeps its trained parameters only in memory; later evaluations (nominal starts after training,
the hand-back protocol) read them back from `policies/<name>.json` and each policy's latest orbax checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from recovla_jax.export.run_reader import load_bundles, read_residual_checkpoint
from recovla_jax.policies.networks import MLP


@dataclass(frozen=True)
class RunPolicies:
    """params_for_mode[mode] -> that mode's policy parameters; apply(params, residual-env obs) -> raw residual."""

    params_for_mode: dict[str, Any]
    apply: Callable[[Any, jnp.ndarray], jnp.ndarray]
    weights_per_mode: np.ndarray
    alpha: float
    checkpoint_steps: dict[str, int]


def load_run_policies(run: Path) -> RunPolicies:
    """Every policy bundle of `run` with its latest checkpoint; they must share weights, alpha and network."""
    bundles = load_bundles(Path(run))
    if not bundles:
        raise SystemExit(f"{run} has no policies/*.json: did its training finish?")
    first = next(iter(bundles.values()))
    hidden = tuple(first["actor"]["hidden"])
    for b in bundles.values():
        if ((b["weights_per_mode"], b["alpha"], tuple(b["actor"]["hidden"]))
                != (first["weights_per_mode"], first["alpha"], hidden)):
            raise SystemExit(f"{run}: policy bundles differ in weights, alpha or network; evaluate them one at a time")
    max_abs = float(first.get("normalizer_max_abs", 10.0))
    normalize = bool(first.get("normalize_obs", True))
    params_for_mode, steps = {}, {}
    for name, b in bundles.items():
        ck = read_residual_checkpoint(Path(run) / b["checkpoint_dir"])
        p = {"actor": ck.actor_params, "mean": jnp.asarray(ck.mean), "std": jnp.asarray(ck.std)}
        steps[name] = ck.step
        for m in b["modes"]:
            params_for_mode[m] = p
    actor = MLP(hidden, 7, zero_init_last=True)

    def apply(p: Any, obs: jnp.ndarray) -> jnp.ndarray:
        z = jnp.clip((obs - p["mean"]) / p["std"], -max_abs, max_abs) if normalize else obs
        return actor.apply(p["actor"], z)

    return RunPolicies(params_for_mode, apply, np.asarray(first["weights_per_mode"], np.float32), float(first["alpha"]), steps)

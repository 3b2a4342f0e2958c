"""One policy's PPO training as the main job and the baselines both run it: batched env, progress bar, metrics.

Both train one policy per group of failure modes from the same kind of starts; only the env, the trainer and
the labels differ. One copy of this loop keeps their training identical (reset keys, domain randomization,
desynchronized first episodes, metrics files, checkpoint layout), which the baselines' "same states, same
budget, same conditions" claim rests on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from experiments.training_progress import TrainingProgress


def training_env(env: Any, num_envs: int, episode_length: int, seed: int, randomization: Any, desync: bool) -> Any:
    """The batched, auto-resetting training env of a run (reset keys from seed + 1), optionally desynchronized."""
    import jax

    from recovla_jax.sim.episode_desync import maybe_desync
    from recovla_jax.sim.wrappers import wrap_batched

    batched = wrap_batched(env, num_envs, episode_length, rng=jax.random.PRNGKey(seed + 1), randomization=randomization)
    return maybe_desync(batched, episode_length, desync)


def starts_description(train_states: int, starts: int) -> str:
    """'N failure states' plus the expert-path states mixed in (`train --expert-path-starts`), for the log."""
    extra = f" + {starts - train_states} expert-path states" if starts > train_states else ""
    return f"{train_states} failure states{extra}"


def expert_warm_start(rounds: int, trainer: Any, env: Any, *, num_envs: int, steps: int, log_std: float, seed: int,
                      log: Any, reports: dict, name: str, report_path: Path) -> Any:
    """The `train_policy` warm start for `train --expert-warm-start=ROUNDS` (None when ROUNDS is 0): DAgger on the
    scripted expert's corrections from `env`'s training starts (`training.expert_warm_start`); its report goes to
    `reports[name]`. Each round rolls out 512 envs (the base's DAgger rounds drive 512; 128, the CPU training default,
    gave pick_place's missed_grasp a fit with 10% own success after 8 rounds, 512 gave dropped_in_transit 37% after 6)
    or the run's envs up to 1024 where it has more (a GPU run's 4096 would only add memory).
    The report is also written to `report_path`, from which a resumed run (which does not repeat the warm start:
    its checkpoints hold the warm-started state) reads it back."""
    if rounds <= 0:
        return None
    if report_path.exists():
        reports[name] = json.loads(report_path.read_text())
    from recovla_jax.training.expert_warm_start import WarmStartConfig, warm_start

    cfg = WarmStartConfig(rounds=rounds, num_envs=max(512, min(num_envs, 1024)), steps=steps, log_std=log_std, seed=seed)

    def run(ts: Any) -> Any:
        ts, report = warm_start(trainer, ts, env, cfg, log=log)
        reports[name] = report.model_dump()
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(reports[name], indent=2))
        return ts

    return run


def warm_start_record(rounds: int, reports: dict, ppo_cfg: Any) -> dict:
    """The `expert_warm_start` entry of a run's (or a baseline's) results: rounds, per-policy reports, the env steps
    the warm start's rollouts took outside PPO's budget, and how PPO then kept the fit (adaptive learning rate,
    frozen normaliser)."""
    return {"rounds": rounds, "policies": reports, "extra_env_steps": int(sum(r["env_steps"] for r in reports.values())),
            "desired_kl": ppo_cfg.desired_kl, "freeze_normalizer": bool(ppo_cfg.freeze_normalizer)}


class MetricsSink:
    """Each iteration's metrics to TensorBoard (finite values: an iteration where no episode ended has NaN episode
    means) and to a JSONL file, tagged with the policy's name."""

    def __init__(self, writer: Any, path: Path):
        self.writer = writer
        self.path = Path(path)

    def __call__(self, name: str, metrics: dict) -> None:
        for k, v in metrics.items():
            if np.isfinite(v):
                self.writer.add_scalar(f"{name}/{k}", v, metrics["env_steps"])
        with self.path.open("a") as f:
            f.write(json.dumps({"policy": name, **metrics}) + "\n")


def train_policy(name: str, label: str, trainer: Any, ppo_cfg: Any, *, console: Console, sink: MetricsSink | None,
                 checkpoint_dir: Path, resume: bool, disable_progress: bool = False,
                 warm_start: Any = None) -> tuple[Any, list[dict]]:
    """Train under a progress bar labelled `label`; returns (final training state, per-iteration metrics).
    `warm_start` (fresh state -> state) runs before the first iteration of a run that is not resumed."""
    from recovla_jax.training.ppo import train

    curve: list[dict] = []
    with TrainingProgress(console, label, ppo_cfg.num_iterations, disable=disable_progress) as bar:
        def on_metrics(it: int, m: dict) -> None:
            curve.append(m)
            bar.update(it, m)
            if sink is not None:
                sink(name, m)

        ts, _ = train(trainer, ppo_cfg, resume=resume, checkpoint_dir=checkpoint_dir, on_metrics=on_metrics,
                      warm_start=warm_start)
    return ts, curve

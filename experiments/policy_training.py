"""One policy's PPO training as the main job and the baselines both run it: batched env, progress bar, metrics.

Both train one policy per group of failure modes from the same kind of starts; only the env, the trainer and
the labels differ. One copy of this loop keeps their training identical (reset keys, domain randomization,
desynchronized first episodes, metrics files, checkpoint layout), which the baselines' "same states, same
budget, same conditions" claim rests on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

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


def plain_ppo_config(ppo_cfg: Any, recorded: dict | None) -> Any:
    """The PPO config of a policy that trains without the warm start: `recorded` (config.json's `ppo_without_warm_start`:
    the --desired-kl / --freeze-normalizer given, else their defaults without --expert-warm-start), or those defaults
    for runs older than the record."""
    return ppo_cfg.model_copy(update=recorded or {"desired_kl": None, "freeze_normalizer": False})


def has_checkpoint(directory: Path) -> bool:
    """Whether a policy's checkpoint directory holds a saved step (orbax names them by step): what `--resume` continues."""
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def warm_start_gate(env: Any, train_states: int, *, steps: int, seed: int, min_teacher: float, log: Any,
                    reports: dict, name: str, report_path: Path) -> tuple[bool, dict]:
    """Whether `train --expert-warm-start` warm-starts this policy, and what the check measured (for its report).

    The warm start imitates the scripted expert, so it can only be as good as the expert's corrections from these
    states. Where the expert-guided residual (`evaluation.authority`) recovers under `min_teacher` of the policy's
    train failure states (the first `train_states` of `env`'s starts), the policy trains with plain PPO instead:
    pick_place's missed_grasp guide recovers 47% of them in 80 steps, its warm-started policy 34.3%, plain PPO 78.3%
    (docs/experiments.md; in 160 steps the guide recovers 96% and the warm-started policy 67.8%).
    `min_teacher` 0 warm-starts every policy without measuring. A skipped policy's decision is written to
    `report_path`, and a resumed run reads every decision back from there instead of measuring again."""
    if report_path.exists():
        report = json.loads(report_path.read_text())
        reports[name] = report
        return not report.get("skipped", False), {}
    if min_teacher <= 0.0:
        return True, {}
    from recovla_jax.evaluation.authority import expert_guided_success

    teacher = float(np.mean(expert_guided_success(env, np.arange(train_states), steps, seed=seed)))
    measured = {"teacher_success": teacher, "min_teacher": float(min_teacher), "teacher_env_steps": int(train_states * steps)}
    if teacher >= min_teacher:
        log(f"expert warm start for '{name}': the expert-guided residual recovers {teacher:.1%} of its train states "
            f"(threshold {min_teacher:.0%})")
        return True, measured
    log(f"[yellow]expert warm start skipped for '{name}': the expert-guided residual recovers only {teacher:.1%} of its "
        f"train states (under --warm-start-min-teacher {min_teacher:.0%}); it trains with plain PPO[/]")
    reports[name] = {"skipped": True, **measured, "env_steps": measured["teacher_env_steps"], "rounds": [],
                     "critic_loss": None, "start_success": None}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(reports[name], indent=2))
    return False, measured


def start_policy(rounds: int, make_trainer: Callable[[Any], Any], env: Any, *, warm_cfg: Any, plain_cfg: Any,
                 train_states: int, steps: int, log_std: float, seed: int, min_teacher: float, fallback: bool, log: Any,
                 reports: dict, name: str, report_path: Path, resuming: bool,
                 follow: dict | None = None, fit_steps: int | None = None) -> tuple[Any, Any, Callable | None]:
    """How one policy starts PPO under `train --expert-warm-start=ROUNDS`: (trainer, its PPO config, the state PPO
    starts from as a `train_policy` warm-start hook, or None).

    - ROUNDS 0: the run's config, no warm start.
    - `warm_start_gate` (the expert-guided residual under `min_teacher` of the train states): plain PPO.
    - Otherwise DAgger on the scripted expert's corrections from `env`'s training starts
      (`training.expert_warm_start`), with 512 rollouts per round (the base's DAgger rounds drive 512; 128, the CPU
      training default, gave pick_place's missed_grasp a fit with 10% own success after 8 rounds, 512 gave
      dropped_in_transit 37% after 6), or the run's envs up to 1024 where it has more.
    - With `fallback`, a fit that, sampled with PPO's initial noise, succeeds from fewer train states than the fresh
      policy PPO would otherwise start from (sampled at the run's initial noise) is dropped, and the policy trains
      with plain PPO from scratch: peg_insert's jammed_halfway fit reached 23.4% sampled, PPO from it 48.8% held-out,
      while plain PPO trained at 91% from its first iteration and reached 94.6%. A fixed threshold would not do:
      pick_place missed_grasp's fit (15.2%) is weak too, yet plain PPO at the same alpha 2 found nothing (0.0%).
    Plain PPO trains with `plain_cfg` (the PPO settings without the warm start). Every decision and the warm start's
    report go to `reports[name]` and `report_path`; `resuming` (a checkpoint exists) reads them back from there and
    repeats nothing. `follow` (a baseline: the run's report for this policy) takes the run's decision instead of
    measuring: the baseline is warm-started exactly where the run's policy was. `fit_steps`: Adam steps per DAgger
    round (None: `WarmStartConfig`'s default)."""
    if rounds <= 0:
        return make_trainer(warm_cfg), warm_cfg, None
    if resuming:  # the checkpoint holds the warm-started state; runs older than the reports warm-started every policy
        reports[name] = json.loads(report_path.read_text()) if report_path.exists() else {"env_steps": 0}
        plain = reports[name].get("skipped") or reports[name].get("fit_rejected")
        return (make_trainer(plain_cfg), plain_cfg, None) if plain else (make_trainer(warm_cfg), warm_cfg, None)
    if follow is not None:
        teacher: dict = {}
        if follow.get("skipped") or follow.get("fit_rejected"):
            reports[name] = {**follow, "env_steps": 0, "teacher_env_steps": 0, "decided_by": "the run's warm start"}
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(reports[name], indent=2))
            log(f"'{name}': the run trained this policy without the warm start; so does the baseline")
            return make_trainer(plain_cfg), plain_cfg, None
    else:
        warm, teacher = warm_start_gate(env, train_states, steps=steps, seed=seed, min_teacher=min_teacher, log=log,
                                        reports=reports, name=name, report_path=report_path)
        if not warm:
            return make_trainer(plain_cfg), plain_cfg, None
    import jax

    from recovla_jax.training.expert_warm_start import WarmStartConfig, warm_start

    trainer = make_trainer(warm_cfg)
    cfg = WarmStartConfig(rounds=rounds, num_envs=max(512, min(warm_cfg.num_envs, 1024)), steps=steps, log_std=log_std,
                          compare_fresh=fallback and follow is None, seed=seed,
                          **({} if fit_steps is None else {"fit_steps": int(fit_steps)}))
    ts, report = warm_start(trainer, trainer.init(jax.random.PRNGKey(warm_cfg.seed)), env, cfg, log=log)
    reports[name] = {**report.model_dump(), **teacher,
                     "env_steps": report.env_steps + int(teacher.get("teacher_env_steps", 0))}
    rejected = fallback and (report.start_success_sampled or 0.0) < (report.fresh_success_sampled or 0.0)
    if rejected:
        reports[name].update(fit_rejected=True)
        log(f"[yellow]expert warm start dropped for '{name}': sampled, its fit succeeds from {report.start_success_sampled:.1%} "
            f"of the train states, PPO's fresh policy from {report.fresh_success_sampled:.1%}; it trains with plain PPO[/]")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(reports[name], indent=2))
    if rejected:
        return make_trainer(plain_cfg), plain_cfg, None
    return trainer, warm_cfg, lambda _fresh: ts


def warm_start_record(rounds: int, reports: dict, ppo_cfg: Any, min_teacher: float = 0.0, fallback: bool = False) -> dict:
    """The `expert_warm_start` entry of a run's (or a baseline's) results: rounds, per-policy reports, the env steps
    the warm start's rollouts took outside PPO's budget, how PPO then kept the fit (adaptive learning rate, frozen
    normaliser), and the policies `start_policy` left to plain PPO (no teacher worth imitating, or a fit too weak)."""
    return {"rounds": rounds, "policies": reports, "extra_env_steps": int(sum(r["env_steps"] for r in reports.values())),
            "desired_kl": ppo_cfg.desired_kl, "freeze_normalizer": bool(ppo_cfg.freeze_normalizer),
            "min_teacher": float(min_teacher), "fallback": bool(fallback),
            "skipped": sorted(n for n, r in reports.items() if r.get("skipped")),
            "fit_rejected": sorted(n for n, r in reports.items() if r.get("fit_rejected"))}


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
    logged = logged_curve(sink.path, name) if resume and sink is not None else []
    with TrainingProgress(console, label, ppo_cfg.num_iterations, disable=disable_progress) as bar:
        bar.replay(logged)

        def on_metrics(it: int, m: dict) -> None:
            curve.append(m)
            bar.update(it, m)
            if sink is not None:
                sink(name, m)

        ts, _ = train(trainer, ppo_cfg, resume=resume, checkpoint_dir=checkpoint_dir, on_metrics=on_metrics,
                      warm_start=warm_start)
    if resume and sink is not None:
        curve = resumed_curve(logged, curve)
    return ts, curve


def logged_curve(path: Path, name: str) -> list[dict]:
    """Policy `name`'s per-iteration metrics as a metrics JSONL file holds them, in file order ([] without the file)."""
    if not Path(path).exists():
        return []
    records = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return [{k: v for k, v in r.items() if k != "policy"} for r in records if r.get("policy") == name]


def resumed_curve(logged: list[dict], new: list[dict]) -> list[dict]:
    """A resumed policy's whole curve: the iterations logged before the restored checkpoint, then the ones run now.

    Why: a resume only sees the iterations it runs (none for a policy already finished), so results.json and the
    learning-curve plot would lose the earlier ones. The log also holds iterations a killed run did after its last
    checkpoint, which the resume runs again; the later record of an iteration wins. `logged` ends with `new` when
    the same sink wrote both, so every logged iteration from the first new one on is dropped before `new` is added.
    """
    first_new = new[0]["iteration"] if new else float("inf")
    earlier: dict[int, dict] = {}
    for record in logged:
        if record["iteration"] < first_new:
            earlier[int(record["iteration"])] = record
    return [earlier[i] for i in sorted(earlier)] + list(new)

"""The stages of the main job, each writing into the run directory."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from tensorboardX import SummaryWriter

from experiments.diagnosis_stage import check_reward_weights, diagnose_modes
from experiments.policy_training import (MetricsSink, has_checkpoint, plain_ppo_config, start_policy, starts_description,
                                        train_policy, training_env, warm_start_record)
from experiments.report import trained_arm_label
from experiments.task_recipes import describe_recipe
from experiments.training_progress import success_by_phase
from recovla_jax.evaluation.recovery import STATE_KEYS, RecoveryEvaluator, evaluation_keys
from recovla_jax.evaluation.stats import MIN_TRIALS_PER_CELL, MJX_RECOVERY_TARGET, wilson
from recovla_jax.failures import expert_paths
from recovla_jax.failures.bank import BankConfig, BankMismatchError, FailureBank, collect_failure_bank
from recovla_jax.policies.bc import load_or_train_base_policy
from recovla_jax.sim.randomization import DomainRandomization
from recovla_jax.tasks import get_task, task_class

from recovla_jax.training.ppo import PPOConfig, PPOTrainer, make_mesh
from recovla_jax.training.policy_bundle import write_policy_bundle
from recovla_jax.training.residual_env import ResidualEnv
from recovla_jax.utils.jax_setup import device_summary, on_accelerator, package_versions
from recovla_jax.utils.run_dirs import replace_keeping_previous

console = Console()


def log(msg: str) -> None:
    if jax.process_index() == 0:
        console.print(msg)


# Options a resumed run must keep: they set the layout of the checkpointed PPO state, how PPO updates it, or what the
# policy's output means (alpha scales the residual; the episode length is the horizon its critic learned). The value
# is the default assumed for an older config.json without the key (RECORDED_ONLY: compared only where recorded).
RECORDED_ONLY = object()
RESUME_FIXED = {"num_envs": None, "policy": "per-mode", "desired_kl": None, "freeze_normalizer": False, "alpha": 1.0,
                "episode_length": RECORDED_ONLY, "shaping_discount": "none", "actor_hidden": [256, 256]}


def check_resume_matches(run_dir: Path, config: dict) -> None:
    """Refuse a --resume whose options would not continue the checkpointed training (before anything is written)."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    config = json.loads(json.dumps(config, default=str))  # as config.json will hold it (tuples as lists)
    changed = [f"{k}: run {old.get(k, default)!r}, now {config.get(k, default)!r}" for k, default in RESUME_FIXED.items()
               if old.get(k, default) != config.get(k, default) and not (default is RECORDED_ONLY and k not in old)]
    if changed:
        recipe = config.get("task_recipe") or {}
        hint = (f"; this command's task recipe set {sorted(recipe)} (--no-task-recipe drops it)"
                if any(k.split(":")[0] in recipe for k in changed) else "")
        raise SystemExit(f"--resume: {run_dir} was trained with other options ({'; '.join(changed)}); resume with the "
                         f"run's values (see its config.json) or start a new --run-dir{hint}")


def resolve_defaults(args: argparse.Namespace) -> dict:
    accel = on_accelerator()
    return {
        "num_envs": args.num_envs or (4096 if accel else 128),
        # 1M on CPU: the drawer's residuals went from 89.1% (250k) to 100% held-out (session 11, 12.4 min on a bank).
        "timesteps": args.timesteps or (20_000_000 if accel else 1_000_000),
        "candidates": args.candidates or (8192 if accel else 1024),
        # The >= 200 held-out trials per cell the evaluation table asks for. On 2 CPU cores the drawer's
        # rarest base failure (slipped_off, ~3.5% of injections) took 14k candidates: 24.4 min for the whole job.
        "min_heldout": args.min_heldout if args.min_heldout is not None else 200,
        "max_candidates": args.max_candidates or (131072 if accel else 24576),
    }


def potential_discount(config: dict) -> float:
    """The factor on Phi(s') in the potential reward terms: PPO's gamma with `--shaping-discount=gamma`, else 1 (a
    run's config.json from before the option has none, which is 1)."""
    return float(config.get("gamma", 0.99)) if config.get("shaping_discount", "none") == "gamma" else 1.0


def load_bank(directory: Path, task, episode_length: int | None = None) -> FailureBank:
    """A saved bank for `task` (a clear exit if it is another task's), with a warning when its states were tested for
    fewer base steps than the episodes now get (`episode_length`; None skips the check, e.g. for diagnosis only):
    the base might then recover some of them in the longer episode."""
    try:
        bank = FailureBank.load(directory, task)
    except BankMismatchError as e:
        raise SystemExit(str(e)) from None
    if episode_length is not None and bank.test_steps is not None and bank.test_steps < episode_length:
        log(f"[yellow]warning:[/] {directory}'s states were tested as base failures over {bank.test_steps} steps; "
            f"episodes now last {episode_length}: the base-alone column shows how many it recovers in the longer episode")
    return bank


def run_pipeline(args: argparse.Namespace) -> Path:
    t_start = time.time()
    d = resolve_defaults(args)
    if args.episode_length is None:
        args.episode_length = task_class(args.task).config_cls().episode_length
    task = get_task(args.task, {"episode_length": args.episode_length})
    check_reward_weights(task, getattr(args, "reward_weight", None) or [])
    hand_back = bool(getattr(args, "hand_back", False))
    delay = int(getattr(args, "hand_back_delay", 0) or 0)
    if delay < 0 or (delay and not hand_back):
        raise SystemExit(f"--hand-back-delay must be >= 0 and needs --hand-back, got {delay}")
    path_fraction = float(getattr(args, "expert_path_starts", 0.0))
    path_stride = int(getattr(args, "expert_path_stride", 10))
    if not 0.0 <= path_fraction < 1.0 or path_stride < 1 or path_stride > args.episode_length:
        raise SystemExit(f"--expert-path-starts must be in [0, 1) and --expert-path-stride in [1, episode length "
                         f"{args.episode_length}], got {path_fraction} and {path_stride}")
    warm_rounds = int(getattr(args, "expert_warm_start", 0) or 0)
    if warm_rounds < 0:
        raise SystemExit(f"--expert-warm-start must be >= 0 DAgger rounds (0: off), got {warm_rounds}")
    wanted = getattr(args, "modes", None) or tuple(task.failure_modes)
    unknown = [m for m in wanted if m not in task.failure_modes]
    if unknown:
        raise SystemExit(f"--modes: unknown failure mode(s) {unknown} for task {task.name!r}; "
                         f"valid: {', '.join(task.failure_modes)}")
    run_dir = Path(args.run_dir or f"runs/{task.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if run_dir.exists() and not args.resume and any(run_dir.iterdir()):
        raise SystemExit(f"run directory {run_dir} exists and is not empty; pass --resume or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**vars(args), **d, "device": device_summary(), "versions": package_versions()}
    if args.resume:
        check_resume_matches(run_dir, config)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    log(f"[bold]recovla-jax[/] task={task.name} run_dir={run_dir} device={config['device']['platform']} "
        f"x{config['device']['device_count']} envs={d['num_envs']} timesteps/policy={d['timesteps']:,}")
    if getattr(args, "task_recipe", None):
        log(describe_recipe(task.name, args.task_recipe))

    # 1. frozen base policy (cached)
    base = load_or_train_base_policy(task, log=log)

    # 2. failure bank
    if args.bank_dir:
        bank = load_bank(Path(args.bank_dir), task, args.episode_length)
        log(f"failure bank: loaded {len(bank)} states from {args.bank_dir}")
    elif (run_dir / "bank" / "bank.npz").exists():
        bank = load_bank(run_dir / "bank", task, args.episode_length)
        log(f"failure bank: reusing {len(bank)} states in {run_dir / 'bank'}")
    else:
        bank = collect_failure_bank(task, base, BankConfig(candidates_per_mode=d["candidates"], seed=args.seed,
                                                           test_steps=args.episode_length,
                                                           min_heldout_per_mode=d["min_heldout"],
                                                           max_candidates_per_mode=d["max_candidates"]), log=log)
        if jax.process_index() == 0:
            bank.save(run_dir / "bank")
            from recovla_jax.sim.render import render_bank_frames

            frames = render_bank_frames(task, bank, run_dir / "bank", num=12, seed=args.seed)
            log(f"failure bank: {len(frames)} PNG frames of 12 states in {run_dir / 'bank' / 'frames'}")
    counts = bank.counts()
    usable = [m for m in wanted if counts[m]["train"] > 0 and counts[m]["heldout"] > 0]
    for m in wanted:
        if m not in usable:
            log(f"[yellow]failure mode {m}: no base failures collected ({counts[m]}); it is skipped[/]")
    if not usable:
        raise SystemExit("the base policy recovered from every injected failure: nothing to train on")

    # 3. diagnosis (selector over K train states per mode) and 4. reward compilation
    descriptors, diagnosis = diagnose_modes(task, bank, args, run_dir)
    weights = np.stack([descriptors[m].validate_for(task) for m in task.failure_modes])
    (run_dir / "descriptors.json").write_text(json.dumps({m: d_.model_dump() for m, d_ in descriptors.items()}, indent=2))
    if args.mask == "wrong":
        log("[yellow]ablation --mask=wrong: each mode trains on the descriptor of another mode (a deliberate misdiagnosis)[/]")

    # 5. residual PPO
    randomization = None if args.no_randomization else DomainRandomization()
    ppo_cfg = PPOConfig(num_envs=d["num_envs"], unroll_length=args.unroll_length, total_timesteps=d["timesteps"],
                        seed=args.seed, checkpoint_every=args.checkpoint_every, learning_rate=args.learning_rate,
                        actor_hidden=tuple(args.actor_hidden),
                        entropy_coef=args.entropy_coef, gamma=args.gamma, init_log_std=args.init_log_std,
                        desired_kl=getattr(args, "desired_kl", None),
                        freeze_normalizer=bool(getattr(args, "freeze_normalizer", False)))
    mesh = make_mesh() if jax.device_count() > 1 else None
    if hand_back:
        log(f"--hand-back: each residual acts while the failure label names a failure and {delay} steps after; "
            "the base drives alone elsewhere")
    paths = None
    if path_fraction > 0:
        paths = expert_paths.load_or_build(run_dir / "expert_paths", task, bank.take(bank.rows_of(usable)),
                                           args.episode_length, path_stride, log=log)
        log(f"--expert-path-starts: {path_fraction:.0%} of training episodes start on one of {len(paths)} states along "
            f"the expert's recoveries (every {path_stride} steps)")
    groups = {m: [m] for m in usable} if args.policy == "per-mode" else {"conditioned": usable}
    writer = SummaryWriter(str(run_dir / "tensorboard")) if jax.process_index() == 0 else None
    sink = MetricsSink(writer, run_dir / "metrics.jsonl") if writer is not None else None
    results: dict = {"task": task.name, "policy": args.policy, "selector": diagnosis["selector"], "mask": args.mask,
                     "diagnosis": diagnosis["per_mode"], "modes": {}, "curves": {},
                     "training_success": {}}
    policy_params = {}
    warm_reports: dict = {}
    min_teacher = float(getattr(args, "warm_start_min_teacher", 0.0) or 0.0)
    fallback = bool(getattr(args, "warm_start_fallback", False))
    if warm_rounds:
        log(f"--expert-warm-start: each policy first imitates the scripted expert's corrections ({warm_rounds} DAgger "
            "rounds on its train starts), then PPO trains it as usual"
            + (f"; policies whose expert-guided residual recovers under {min_teacher:.0%} of their train states train "
               "with plain PPO" if min_teacher else "")
            + ("; a fit that succeeds from fewer train states than PPO's fresh policy is dropped for plain PPO"
               if fallback else ""))
    for name, modes in groups.items():
        train_bank = bank.take(bank.rows_of(modes, "train"))
        starts, start_weights = expert_paths.mixed_starts(train_bank, paths, path_fraction)
        env = ResidualEnv(task, base, starts, weights, alpha=args.alpha,
                          obs_noise=args.obs_noise, latency_prob=args.latency_prob, hand_back=hand_back,
                          hand_back_delay=delay, start_weights=start_weights,
                          potential_discount=potential_discount(vars(args)))
        batched = training_env(env, ppo_cfg.num_envs, args.episode_length, args.seed, randomization,
                               bool(getattr(args, "desync_episodes", False)))
        ckpt_dir = run_dir / "checkpoints" / name
        log(f"training residual '{name}' on {starts_description(len(train_bank), len(starts))} "
            f"({ppo_cfg.num_iterations} iterations; the first compiles the training step)")
        trainer, policy_cfg, warm = start_policy(
            warm_rounds, lambda cfg: PPOTrainer(batched, cfg, mesh=mesh), env, warm_cfg=ppo_cfg,
            plain_cfg=plain_ppo_config(ppo_cfg, getattr(args, "ppo_without_warm_start", None)),
            train_states=len(train_bank), steps=args.episode_length,
            log_std=float(args.warm_start_log_std), seed=args.seed, min_teacher=min_teacher, fallback=fallback, log=log,
            reports=warm_reports, name=name, report_path=run_dir / "warm_start" / f"{name}.json",
            resuming=bool(args.resume) and has_checkpoint(ckpt_dir), fit_steps=getattr(args, "warm_start_fit_steps", None))
        ts, curve = train_policy(name, name, trainer, policy_cfg, console=console, sink=sink,
                                 checkpoint_dir=ckpt_dir, resume=args.resume,
                                 disable_progress=jax.process_index() != 0, warm_start=warm)
        policy_params[name] = jax.device_get((ts.params, ts.normalizer))
        if jax.process_index() == 0:
            write_policy_bundle(run_dir, name, modes, task, base, env, policy_cfg, args, descriptors)
        results["curves"][name] = curve
        results["training_success"][name] = success_by_phase(curve)

    # 6. evaluation on held-out failure states: one compiled program for every mode and both arms
    eval_random = None if args.no_randomization else DomainRandomization()
    held_rows = bank.rows_of(usable, "heldout")
    held = bank.take(held_rows)
    eval_env = ResidualEnv(task, base, held, weights, alpha=args.alpha,
                           obs_noise=args.obs_noise, latency_prob=args.latency_prob, hand_back=hand_back,
                           hand_back_delay=delay)
    apply = lambda p, obs: trainer.policy_fn(p[0], p[1], obs, deterministic=True)  # noqa: E731 (same net for all)
    evaluator = RecoveryEvaluator(eval_env, apply, args.episode_length, seed=10_000 + args.seed, randomization=eval_random,
                                  state_ids=evaluation_keys(held_rows))
    arm = trained_arm_label(diagnosis["selector"], args.mask)
    log(f"evaluating on {len(held)} held-out failure states (base alone and {arm}; the first call compiles)")
    for m in usable:
        idx = np.flatnonzero(held.arrays["mode"] == task.failure_modes.index(m))
        params = policy_params[m if args.policy == "per-mode" else "conditioned"]
        base_alone = evaluator.success(params, idx, use_residual=False)
        recovla = evaluator.success(params, idx)
        results["modes"][m] = {"descriptor": descriptors[m].model_dump(), "base": base_alone, "recovla": recovla,
                               "train_states": counts[m]["train"], "heldout_states": counts[m]["heldout"],
                               "heldout_rows": held_rows[idx].tolist()}  # bank rows of the per-state outcomes, in order
        log(f"eval {m}: base alone {_fmt(base_alone)}  {arm} {_fmt(recovla)}")
    rates = [results["modes"][m]["recovla"]["rate"] for m in usable]
    base_rates = [results["modes"][m]["base"]["rate"] for m in usable]
    results["average"] = {"recovla": float(np.mean(rates)), "base": float(np.mean(base_rates))}
    results["pooled"] = {arm: _pooled([results["modes"][m][arm] for m in usable]) for arm in ("recovla", "base")}
    results["eval_conditions"] = {"states": "held-out failure-bank states (never trained on)",
                                  "episode_length": args.episode_length,
                                  "domain_randomization": eval_random is not None, "obs_noise": args.obs_noise,
                                  "latency_prob": args.latency_prob, "start_jitter_m": eval_env.start_noise,
                                  "hand_back": hand_back, "hand_back_delay": delay,
                                  "seed": 10_000 + args.seed, "state_keys": STATE_KEYS}
    if paths is not None:
        results["expert_path_starts"] = {"fraction": path_fraction, "stride": path_stride, "path_states": len(paths),
                                         "expert_on_train_states": paths.meta.get("expert", {})}
    if warm_rounds:
        results["expert_warm_start"] = warm_start_record(warm_rounds, warm_reports, ppo_cfg, min_teacher, fallback)
    if getattr(args, "desync_episodes", False):
        results["desync_episodes"] = True
    results["bank"] = {"counts": counts, "collection": bank.meta.get("collection", {})}
    results["base_policy"] = {"name": base.name, "nominal_success": base.info.get("nominal_success")}
    results["wall_seconds"] = time.time() - t_start
    results["target"] = target_verdict(results["modes"], results["average"]["recovla"])
    if jax.process_index() == 0:
        # a resumed finished run: its first results stay
        kept = replace_keeping_previous(run_dir / "results.json", json.dumps(results, indent=2, default=float))
        if kept is not None:
            log(f"earlier results kept as {kept}")
        from experiments.summary import write_learning_curves, write_summary

        write_learning_curves(results["curves"], run_dir / "learning_curves.png",
                              settle_steps=ppo_cfg.num_envs * args.episode_length)
        write_summary(results, config, run_dir / "summary.md")
        if writer is not None:
            writer.close()
    log(f"[bold green]done[/] in {results['wall_seconds'] / 60:.1f} min: average recovery "
        f"{results['average']['recovla']:.1%} (base alone {results['average']['base']:.1%}); see {run_dir}/summary.md")
    return run_dir


def _pooled(cells: list[dict]) -> dict:
    """All held-out trials of all modes as one success rate (weights modes by their trial counts)."""
    return wilson(sum(c["successes"] for c in cells), sum(c["trials"] for c in cells)).as_dict()


def target_verdict(modes: dict, average: float, target: float = MJX_RECOVERY_TARGET,
                   min_trials: int = MIN_TRIALS_PER_CELL) -> dict:
    """The issue's target as specified: average over modes >= 80% AND every cell with >= 200 trials."""
    small = {m: r["recovla"]["trials"] for m, r in modes.items() if r["recovla"]["trials"] < min_trials}
    return {"average_recovery": target, "min_trials_per_cell": min_trials, "average_met": bool(average >= target),
            "cells_below_min_trials": small, "met": bool(average >= target and not small)}


def _fmt(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] n={r['trials']}"

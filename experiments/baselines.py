"""Baselines of the results table, trained on a main-job run's failure states with the run's budget.

    python -m experiments.baselines --run=runs/drawer-20261125-101500 --method=finetune
    python -m experiments.baselines --run=RUN --method=residual-full
    python -m experiments.baselines --run=RUN --method=nominal            # no training (see below)
    python -m experiments.baselines --run=RUN --method=finetune --timesteps=20000 --num-envs=32   # smoke

Methods (each writes RUN/baselines/<method>/results.json):
  finetune       the fine-tuned base (the analogue of the paper's fine-tuned pi0.5): PPO on the FULL 7-D
                 action, no frozen base in the loop, actor initialised as an exact copy of the BC base,
                 rewarded with the full task reward (rewards.full_mask.full_reward_mask).
  residual-full  the ReCoVLA residual (same alpha, network and PPO) on the full unmasked reward instead of
                 the diagnosed mask: what the mask buys.
  nominal        no training: RUN's own residual policies (ReCoVLA, oracle-mask or wrong-mask, whatever RUN
                 trained) and the base alone on nominal starts (does a residual break what worked?).

Same failure states: training starts from RUN's TRAIN bank states, evaluation from its HELD-OUT states
with the evaluation conditions and seed of RUN/results.json (eval_conditions), through the same
`RecoveryEvaluator` program layout, so every state is started under the same randomized dynamics, start
jitter, noise and latency as in the main job. Same budget: num_envs, env steps per policy, the policy
layout (per-mode or conditioned) and every PPO setting come from RUN/config.json unless overridden
(an override is recorded as budget_matches_run=false). After training, nominal success is measured from
nominal task resets for the trained policy (mode m's policy with mode m's descriptor) and for the base
alone on the same starts and dynamics (--nominal-episodes per mode; 0 skips).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from experiments.policy_training import (MetricsSink, has_checkpoint, plain_ppo_config, start_policy, starts_description,
                                        train_policy, training_env, warm_start_record)
from experiments.training_progress import success_by_phase

os.environ.setdefault("MUJOCO_GL", "egl")

METHODS = ("finetune", "residual-full", "nominal")
LABELS = {"finetune": "fine-tuned base", "residual-full": "residual, full reward", "nominal": "nominal success of RUN's policies"}
NOMINAL_SEED_OFFSET = 20_000  # nominal starts and dynamics: disjoint from training (seed+1) and held-out eval (10_000+seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="main-job run directory (config.json, bank or bank_dir, results.json)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--timesteps", type=int, default=None, help="env steps per policy (default: the run's)")
    p.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: the run's)")
    p.add_argument("--policy", choices=["per-mode", "conditioned"], default=None,
                   help="one policy per failure mode or one for all (default: the run's layout)")
    p.add_argument("--init-log-std", type=float, default=None,
                   help="initial log-std of PPO's Gaussian (default: the run's --init-log-std)")
    p.add_argument("--nominal-episodes", type=int, default=100,
                   help="nominal starts per failure mode's policy (and for the base alone on the same starts); 0 skips")
    p.add_argument("--out", default=None, help="output directory (default RUN/baselines/<method>)")
    p.add_argument("--resume", action="store_true", help="continue training from the output directory's checkpoints")
    return p


# ------------------------------------------------------------------------------------------- run reading
def train_defaults() -> dict:
    """The main job's flag defaults (older run configs may lack newer flags)."""
    from experiments.train import build_parser as train_parser

    return vars(train_parser().parse_args([]))


def load_run(run: Path) -> dict:
    """config (main-job defaults filled in), results (or None) and the failure bank directory of a run."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise SystemExit(f"{run} has no config.json: is it a main-job run directory?")
    config = {**train_defaults(), **json.loads((run / "config.json").read_text())}
    if config.get("episode_length") is None:  # the main job's default: the task's own episode length
        from recovla_jax.tasks import task_class

        config["episode_length"] = task_class(config["task"]).config_cls().episode_length
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else None
    if (run / "bank" / "bank.npz").exists():
        bank_dir = run / "bank"
    elif config.get("bank_dir") and (Path(config["bank_dir"]) / "bank.npz").exists():
        bank_dir = Path(config["bank_dir"])
    else:
        raise SystemExit(f"{run} has no bank/bank.npz and its config names no existing --bank-dir")
    return {"run": run, "config": config, "results": results, "bank_dir": bank_dir}


def resolve_budget(config: dict, args: argparse.Namespace) -> dict:
    """num_envs, env steps per policy and policy layout: the run's unless overridden."""
    budget = {
        "num_envs": int(args.num_envs or config["num_envs"]),
        "timesteps_per_policy": int(args.timesteps or config["timesteps"]),
        "policy": args.policy or config.get("policy", "per-mode"),
    }
    budget["budget_matches_run"] = (budget["num_envs"] == int(config["num_envs"])
                                    and budget["timesteps_per_policy"] == int(config["timesteps"])
                                    and budget["policy"] == config.get("policy", "per-mode"))
    return budget


def eval_conditions(config: dict, results: dict | None) -> dict:
    """The run's held-out evaluation conditions (results.json), or the main job's rule for them; they include the
    run's hand-back setting, which every later evaluation of the run's residuals applies (`hand_back_kwargs`)."""
    derived = {"episode_length": int(config["episode_length"]), "domain_randomization": not config.get("no_randomization", False),
               "obs_noise": float(config["obs_noise"]), "latency_prob": float(config["latency_prob"]),
               "start_jitter_m": 0.005, "seed": 10_000 + int(config["seed"]),
               "hand_back": bool(config.get("hand_back", False)), "hand_back_delay": int(config.get("hand_back_delay") or 0)}
    recorded = (results or {}).get("eval_conditions")
    if recorded:  # as the run evaluated (runs before per-row keys record none and keep their positional draws)
        return {**derived, **recorded}
    # No results yet (the main job still training, or stopped before its evaluation): the main job's rule, which
    # keys each held-out state's dynamics and jitter by its bank row, as the run itself will.
    from recovla_jax.evaluation.recovery import STATE_KEYS

    return {**derived, "state_keys": STATE_KEYS}


def hand_back_kwargs(cond: dict) -> dict:
    """`ResidualEnv` keyword arguments that hand back to the base exactly when the run's residuals did."""
    return {"hand_back": bool(cond.get("hand_back", False)), "hand_back_delay": int(cond.get("hand_back_delay") or 0)}


def run_residual_env(task, base, bank, pol, cond: dict, **overrides):
    """A `ResidualEnv` for a finished run's loaded policies (`load_run_policies`) under its evaluation conditions
    `cond` (start jitter, noise, latency, hand-back); `overrides` replace any of those keyword arguments."""
    from recovla_jax.training.residual_env import ResidualEnv

    kw = dict(alpha=pol.alpha, start_noise=float(cond["start_jitter_m"]), obs_noise=float(cond["obs_noise"]),
              latency_prob=float(cond["latency_prob"]), **hand_back_kwargs(cond))
    return ResidualEnv(task, base, bank, pol.weights_per_mode, **{**kw, **overrides})


# ------------------------------------------------------------------------------------------- helpers
def _fmt(r: dict | None) -> str:
    if not r:
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] n={r['trials']}"


def _pooled(cells: list[dict]) -> dict:
    from recovla_jax.evaluation.stats import wilson

    return wilson(sum(c["successes"] for c in cells), sum(c["trials"] for c in cells)).as_dict()


def nominal_bank(task, modes: list[str], per_mode: int, seed: int):
    """`per_mode` nominal task resets (seeded) for each mode of `modes`, a block of its own (mode m's block carries
    mode m's label, so a residual env gives it mode m's descriptor). The blocks draw distinct starts: the base alone
    is pooled over them, and the same starts repeated once per mode would give its Wilson interval a sample size
    (starts x modes) its distinct starts do not have (sessions before 30 repeated them)."""
    import jax
    import numpy as np
    from mujoco import mjx

    from recovla_jax.failures.bank import STATE_FIELDS, FailureBank

    sys_ = mjx.put_model(task.mj_model)
    n_rep = len(modes)
    keys = jax.random.split(jax.random.PRNGKey(seed), per_mode * n_rep)
    data, obs = jax.jit(jax.vmap(lambda k: (lambda d: (d, task.observe(sys_, d)))(task.reset(sys_, k))))(keys)
    arrays = {k: np.asarray(getattr(data, k)) for k in STATE_FIELDS}
    arrays["obs"] = np.asarray(obs)
    arrays["mode"] = np.repeat(np.array([task.failure_modes.index(m) for m in modes], np.int32), per_mode)
    for k in ("stage", "split", "t_inject"):
        arrays[k] = np.zeros(per_mode * n_rep, np.int32)
    return FailureBank(task.name, tuple(task.failure_modes), tuple(task.recovery_stages), arrays,
                       {"nominal_starts": per_mode, "seed": seed})


def evaluate_nominal(task, cond: dict, modes: list[str], per_mode: int, seed: int, policy_env_fn: Callable,
                     apply: Callable, params_for_mode: dict[str, Any], base_env_fn: Callable | None, log=print) -> dict:
    """Nominal success of each mode's policy (with that mode's descriptor) and of the base alone, on the same
    `per_mode` nominal starts per mode (each mode its own) with the same per-start dynamics, jitter, noise and latency.

    `policy_env_fn(bank)` builds the policy's env; `base_env_fn(bank)` a ResidualEnv for the base alone
    (None: the policy env is a ResidualEnv and its zero-residual arm is the base alone)."""
    import jax.numpy as jnp
    import numpy as np

    from recovla_jax.evaluation.recovery import RecoveryEvaluator
    from recovla_jax.sim.randomization import DomainRandomization

    bank = nominal_bank(task, modes, per_mode, seed)
    dr = DomainRandomization() if cond["domain_randomization"] else None
    steps = int(cond["episode_length"])
    ev = RecoveryEvaluator(policy_env_fn(bank), apply, steps, seed=seed, randomization=dr)
    if base_env_fn is None:
        base_ev, base_params = ev, None
    else:
        base_ev = RecoveryEvaluator(base_env_fn(bank), lambda _p, obs: jnp.zeros(obs.shape[:-1] + (7,)), steps, seed=seed,
                                    randomization=dr)
        base_params = jnp.zeros(())
    per = {}
    for m in modes:
        idx = np.flatnonzero(bank.arrays["mode"] == task.failure_modes.index(m))
        params = params_for_mode[m]
        per[m] = {"policy": ev.success(params, idx),
                  "base": base_ev.success(params if base_params is None else base_params, idx, use_residual=False)}
        log(f"nominal starts, {m}'s policy: {_fmt(per[m]['policy'])}  base alone {_fmt(per[m]['base'])}")
    return {"episodes_per_mode": per_mode, "seed": seed, "steps": steps,
            "conditions": "nominal task resets; per-start randomized dynamics, noise, latency and jitter "
                          "as the held-out evaluation",
            "per_mode": per, "policy": _pooled([v["policy"] for v in per.values()]),
            "base": _pooled([v["base"] for v in per.values()])}


# ------------------------------------------------------------------------------------------- methods
def run_baseline(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np
    from rich.console import Console

    from experiments.pipeline import load_bank
    from recovla_jax.evaluation.paired import cells_agree
    from recovla_jax.evaluation.recovery import RecoveryEvaluator, evaluation_keys
    from recovla_jax.export.run_reader import load_run_base
    from recovla_jax.sim.randomization import DomainRandomization
    from recovla_jax.tasks import get_task
    from recovla_jax.utils.jax_setup import device_summary, package_versions

    console = Console()
    log = console.print
    t0 = time.time()
    info = load_run(Path(args.run))
    run, config, results = info["run"], info["config"], info["results"]
    out = Path(args.out) if args.out else run / "baselines" / args.method
    task = get_task(config["task"], {"episode_length": int(config["episode_length"])})
    bank = load_bank(info["bank_dir"], task, int(config["episode_length"]))  # exits on another task's bank
    counts = bank.counts()
    usable = [m for m in task.failure_modes if counts[m]["train"] > 0 and counts[m]["heldout"] > 0]
    if results and results.get("modes"):
        usable = [m for m in usable if m in results["modes"]]
    if not usable:
        raise SystemExit(f"{info['bank_dir']} has no failure mode with both train and held-out states")
    cond = eval_conditions(config, results)
    if results is None:
        log(f"[yellow]{run} has no results.json: evaluation conditions derived from its config[/]")
    from experiments.report import infer_run_method

    run_method, run_label = infer_run_method(config, results)
    base = load_run_base(run)
    record: dict = {"method": args.method, "label": LABELS[args.method], "task": task.name, "run": str(run.absolute()),
                    "bank_dir": str(Path(info["bank_dir"]).absolute()), "bank_counts": counts, "eval_conditions": cond,
                    "device": device_summary(), "versions": package_versions(), "modes": {}}

    if args.method == "nominal":
        if args.nominal_episodes <= 0:
            raise SystemExit("--method=nominal needs --nominal-episodes > 0")
        out.mkdir(parents=True, exist_ok=True)
        record.update(run_method=run_method, run_label=run_label, label=f"nominal success: {run_label}")
        record["nominal"] = _nominal_of_run(run, task, base, usable, cond, args.nominal_episodes,
                                            NOMINAL_SEED_OFFSET + int(config["seed"]), log)
        return _finish(record, out, t0, log)

    from tensorboardX import SummaryWriter

    from recovla_jax.failures import expert_paths
    from recovla_jax.rewards.full_mask import full_reward_mask, full_reward_weights
    from recovla_jax.training.finetune_env import FinetuneEnv, FinetunePPOTrainer
    from recovla_jax.training.ppo import PPOConfig, PPOTrainer, make_mesh
    from recovla_jax.training.residual_env import ResidualEnv

    budget = resolve_budget(config, args)
    ckpt_root = out / "checkpoints"
    if ckpt_root.exists() and any(ckpt_root.iterdir()) and not args.resume:
        raise SystemExit(f"{ckpt_root} holds checkpoints: pass --resume to continue, or remove it / pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    # the run's --reward-weight overrides reach the full reward too, so the mask is the only difference
    overrides = [(str(n), float(w)) for n, w in config.get("reward_weight") or []]
    mask = full_reward_mask(task, config.get("residual_penalty"), overrides)
    weights = full_reward_weights(task, config.get("residual_penalty"), overrides)
    finetune = args.method == "finetune"

    from experiments.pipeline import potential_discount

    def make_env(b, start_noise=0.005, start_weights=None):
        kw = dict(start_noise=start_noise, obs_noise=float(config["obs_noise"]), latency_prob=float(config["latency_prob"]),
                  start_weights=start_weights, potential_discount=potential_discount(config))
        if finetune:
            return FinetuneEnv(task, base, b, weights, **kw)
        # A residual baseline hands back to the base exactly when the run's residuals do (`train --hand-back`).
        return ResidualEnv(task, base, b, weights, alpha=float(config["alpha"]), **hand_back_kwargs(cond), **kw)

    # Same training starts as the run: its share of episodes on expert-path states (`train --expert-path-starts`).
    path_fraction = float(config.get("expert_path_starts") or 0.0)
    paths = None
    if path_fraction > 0:
        stride = int(config.get("expert_path_stride") or 10)
        paths = expert_paths.load_or_build(run / "expert_paths", task, bank.take(bank.rows_of(usable)),
                                           int(config["episode_length"]), stride, log=log)
        record["expert_path_starts"] = {"fraction": path_fraction, "stride": stride, "path_states": len(paths)}

    # Same supervision as the run: its DAgger warm start on the expert's actions (`train --expert-warm-start`),
    # for the fine-tuned base on the whole action, for a residual on the correction.
    warm_rounds = int(config.get("expert_warm_start") or 0)
    warm_reports: dict = {}
    if warm_rounds:
        log(f"the run warm-started its policies on the scripted expert ({warm_rounds} DAgger rounds): so does this baseline")

    ppo_kw = dict(num_envs=budget["num_envs"], unroll_length=int(config["unroll_length"]),
                  total_timesteps=budget["timesteps_per_policy"], seed=int(config["seed"]),
                  checkpoint_every=int(config["checkpoint_every"]), learning_rate=float(config["learning_rate"]),
                  entropy_coef=float(config["entropy_coef"]), gamma=float(config["gamma"]),
                  desired_kl=config.get("desired_kl"), freeze_normalizer=bool(config.get("freeze_normalizer")),
                  # the run's residual network (older runs: the default); the fine-tuned base keeps the base network
                  actor_hidden=tuple(config["actor_hidden"]))
    # The run's exploration noise unless overridden (load_run fills the main job's default into older runs).
    ppo_kw["init_log_std"] = float(args.init_log_std if args.init_log_std is not None else config["init_log_std"])
    ppo_cfg = PPOConfig(**ppo_kw)
    plain_cfg = plain_ppo_config(ppo_cfg, config.get("ppo_without_warm_start"))

    mesh = make_mesh() if jax.device_count() > 1 else None

    def make_trainer(batched: Any) -> Callable[[Any], Any]:
        if finetune:
            return lambda cfg: FinetunePPOTrainer(batched, cfg, base, mesh=mesh)
        return lambda cfg: PPOTrainer(batched, cfg, mesh=mesh)

    randomization = None if config.get("no_randomization") else DomainRandomization()
    groups = {m: [m] for m in usable} if budget["policy"] == "per-mode" else {"conditioned": usable}
    steps_per_policy = ppo_cfg.num_iterations * ppo_cfg.batch_size
    record.update(budget={**budget, "policies": len(groups), "total_env_steps": steps_per_policy * len(groups),
                          "run_num_envs": int(config["num_envs"]), "run_timesteps_per_policy": int(config["timesteps"])},
                  full_reward_mask=mask, ppo=ppo_cfg.model_dump(mode="json"), curves={},
                  training_success={})
    (out / "config.json").write_text(json.dumps({"args": vars(args), "budget": record["budget"], "ppo": record["ppo"],
                                                 "full_reward_mask": mask, "run_config": config}, indent=2, default=str))
    what = ("fine-tuning the base (full action, initialised from the BC base)" if finetune
            else f"training a residual (alpha {config['alpha']}) on the full reward")
    log(f"[bold]{args.method}[/]: {what} on {run}'s train states; {len(groups)} polic{'y' if len(groups) == 1 else 'ies'} x "
        f"{ppo_cfg.num_iterations * ppo_cfg.batch_size:,} env steps, {budget['num_envs']} envs"
        + ("" if budget["budget_matches_run"]
           else f" [yellow](run's budget: {config['num_envs']} envs, {int(config['timesteps']):,} steps)[/]"))
    log(f"full reward mask: {mask}")
    writer = SummaryWriter(str(out / "tensorboard"))
    sink = MetricsSink(writer, out / "metrics.jsonl")
    params_by_group, trainer = {}, None
    for name, modes in groups.items():
        train_bank = bank.take(bank.rows_of(modes, "train"))
        starts, start_weights = expert_paths.mixed_starts(train_bank, paths, path_fraction)
        env = make_env(starts, start_weights=start_weights)
        batched = training_env(env, ppo_cfg.num_envs, int(config["episode_length"]),
                               int(config["seed"]), randomization, bool(config.get("desync_episodes", False)))
        log(f"training '{name}' on {starts_description(len(train_bank), len(starts))} ({ppo_cfg.num_iterations} "
            "iterations; the first compiles)")
        ckpt_dir = ckpt_root / name
        run_report = run / "warm_start" / f"{name}.json"
        # Warm-started exactly where the run's policy was (the run's gate and fit check decide, not the baseline's).
        trainer, policy_cfg, warm = start_policy(
            warm_rounds, make_trainer(batched), env, warm_cfg=ppo_cfg, plain_cfg=plain_cfg,
            train_states=len(train_bank), steps=int(config["episode_length"]),
            log_std=float(config["warm_start_log_std"]), seed=int(config["seed"]), min_teacher=0.0, fallback=False,
            log=log, reports=warm_reports, name=name, report_path=out / "warm_start" / f"{name}.json",
            resuming=bool(args.resume) and has_checkpoint(ckpt_dir),
            follow=json.loads(run_report.read_text()) if run_report.exists() else {},
            fit_steps=int(config["warm_start_fit_steps"]))
        ts, record["curves"][name] = train_policy(name, f"{args.method}/{name}", trainer, policy_cfg, console=console,
                                                  sink=sink, checkpoint_dir=ckpt_dir, resume=args.resume,
                                                  warm_start=warm)
        record["training_success"][name] = success_by_phase(record["curves"][name])
        params_by_group[name] = jax.device_get((ts.params, ts.normalizer))
    writer.close()
    if warm_rounds:
        record["expert_warm_start"] = warm_start_record(warm_rounds, warm_reports, ppo_cfg,
                                                        float(config.get("warm_start_min_teacher") or 0.0),
                                                        bool(config.get("warm_start_fallback")))
        record["label"] = f"{record['label']}, expert warm start"
    group_of = {m: g for g, ms in groups.items() for m in ms}
    apply = lambda p, obs: trainer.policy_fn(p[0], p[1], obs, deterministic=True)  # noqa: E731 (same net for all groups)

    held_rows = bank.rows_of(usable, "heldout")
    held = bank.take(held_rows)
    dr = DomainRandomization() if cond["domain_randomization"] else None
    ev = RecoveryEvaluator(make_env(held, float(cond["start_jitter_m"])), apply, int(cond["episode_length"]),
                           seed=int(cond["seed"]), randomization=dr, state_ids=evaluation_keys(held_rows, cond))
    log(f"evaluating on {len(held)} held-out failure states (seed {cond['seed']}; the first call compiles)")
    record["base_matches_run"] = {}
    for m in usable:
        idx = np.flatnonzero(held.arrays["mode"] == task.failure_modes.index(m))
        params = params_by_group[group_of[m]]
        cell = {"policy": ev.success(params, idx), "train_states": counts[m]["train"], "heldout_states": counts[m]["heldout"]}
        if not finetune:  # the zero-residual arm of the same program is the base alone: a check against the run
            cell["base"] = ev.success(params, idx, use_residual=False)
            run_base = ((results or {}).get("modes", {}).get(m) or {}).get("base")
            if run_base is not None:
                record["base_matches_run"][m] = cells_agree(run_base, cell["base"])
        record["modes"][m] = cell
        log(f"eval {m}: {LABELS[args.method]} {_fmt(cell['policy'])}"
            + (f"  base alone {_fmt(cell['base'])}" if "base" in cell else ""))
    record["average"] = {"policy": float(np.mean([record["modes"][m]["policy"]["rate"] for m in usable]))}
    record["pooled"] = {"policy": _pooled([record["modes"][m]["policy"] for m in usable])}

    if args.nominal_episodes > 0:
        log(f"nominal success after training: {args.nominal_episodes} nominal starts per mode (the first call compiles)")
        base_env_fn = None
        if finetune:
            base_env_fn = lambda b: ResidualEnv(task, base, b, weights, alpha=float(config["alpha"]),  # noqa: E731
                                                start_noise=float(cond["start_jitter_m"]), obs_noise=float(cond["obs_noise"]),
                                                latency_prob=float(cond["latency_prob"]))
        record["nominal"] = evaluate_nominal(
            task, cond, usable, args.nominal_episodes, NOMINAL_SEED_OFFSET + int(config["seed"]),
            lambda b: make_env(b, float(cond["start_jitter_m"])), apply,
            {m: params_by_group[group_of[m]] for m in usable}, base_env_fn, log)
    return _finish(record, out, t0, log)


def _nominal_of_run(run: Path, task, base, usable: list[str], cond: dict, per_mode: int, seed: int, log) -> dict:
    """Nominal success of the run's own residual policies (policies/<name>.json + their latest checkpoints)."""
    from recovla_jax.evaluation.run_policies import load_run_policies

    pol = load_run_policies(run)
    for name, step in pol.checkpoint_steps.items():
        log(f"{name}: checkpoint step {step}")
    modes = [m for m in usable if m in pol.params_for_mode]
    env_fn = lambda b: run_residual_env(task, base, b, pol, cond)  # noqa: E731
    return evaluate_nominal(task, cond, modes, per_mode, seed, env_fn, pol.apply, pol.params_for_mode, None, log)


def _finish(record: dict, out: Path, t0: float, log) -> dict:
    from recovla_jax.utils.run_dirs import replace_keeping_previous

    record["wall_seconds"] = time.time() - t0
    # a --resume of a finished baseline: its first results stay
    kept = replace_keeping_previous(out / "results.json", json.dumps(record, indent=2, default=float))
    if kept is not None:
        log(f"earlier results kept as {kept}")
    nom = record.get("nominal")
    if nom:
        log(f"nominal after training: policy {_fmt(nom['policy'])}  base alone {_fmt(nom['base'])}")
    if record.get("modes"):
        log(f"average over modes: {100 * record['average']['policy']:.1f}%")
    log(f"[bold green]done[/] in {record['wall_seconds'] / 60:.1f} min: {out / 'results.json'}")
    return record


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    return run_baseline(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

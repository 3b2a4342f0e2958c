"""Training env steps/s (rollout + PPO update) against rollout-only env steps/s of the same residual env.

Both arms use one `PPOTrainer` over the same batched `ResidualEnv` (failure-bank starts, frozen base
policy inside every step, per-env domain-randomized models, episode and auto-reset wrappers):
  - rollout-only: the trainer's own rollout (`unroll_length` steps of actor sampling + env steps) jitted
    alone, i.e. what collecting experience costs;
  - training: the full jitted train step (that rollout, normalizer update, GAE, every PPO epoch and
    minibatch) - what a training iteration costs.
The ratio training/rollout is the target (>= 0.7). It also reports the first-compile time of the
training step. `--cache=cold` compiles into a fresh empty persistent-cache directory, then a second
process compiles the same program from that cache (`second_process_compile_s`), which shows what the
persistent compilation cache saves a user on the second run. Prints one JSON object.

    python -m benchmarks.train_throughput --task=drawer [--num-envs=128] [--bank-dir=RUN/bank]

Without `--bank-dir` the start states are failure injections on nominal states that are not filtered
by base-policy failure (collecting a filtered bank takes minutes and does not change the cost of a step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

with contextlib.redirect_stdout(sys.stderr):  # mujoco.mjx prints a warp notice to stdout
    import jax
    import jax.numpy as jnp
    from mujoco import mjx  # noqa: F401

import numpy as np

from recovla_jax.utils.jax_setup import configure_jax, device_summary, on_accelerator, package_versions


def _timed_calls(fn, state, min_seconds: float) -> tuple[int, float]:
    """(calls, seconds per call) of a jitted state -> (state, ...) function, chaining the state."""
    calls, t0 = 0, time.perf_counter()
    while True:
        state = fn(state)
        jax.block_until_ready(state)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and calls >= 3:
            return calls, elapsed / calls


def _injected_bank(task, num_states: int, seed: int):
    """Failure-injected states (unfiltered) as a FailureBank, for timing only."""
    from recovla_jax.failures.bank import STATE_FIELDS, FailureBank
    from recovla_jax.sim.env import TaskEnv

    env = TaskEnv(task)
    n_modes = len(task.failure_modes)

    @jax.jit
    def make(key):
        k_reset, k_inj = jax.random.split(key)
        data = jax.vmap(env.task.reset, in_axes=(None, 0))(env.sys, jax.random.split(k_reset, num_states))
        modes = jnp.arange(num_states) % n_modes
        data = jax.vmap(task.inject, in_axes=(None, 0, 0, 0))(env.sys, data, modes, jax.random.split(k_inj, num_states))
        return {f: getattr(data, f) for f in STATE_FIELDS}, modes

    fields, modes = jax.device_get(make(jax.random.PRNGKey(seed)))
    arrays = {**{k: np.asarray(v) for k, v in fields.items()}, "mode": np.asarray(modes, np.int32),
              "stage": np.zeros(num_states, np.int32), "split": np.zeros(num_states, np.int32)}
    return FailureBank(task.name, tuple(task.failure_modes), tuple(task.recovery_stages), arrays, {})


def measure(args: argparse.Namespace) -> dict:
    from recovla_jax.diagnosis.descriptor import oracle_descriptor
    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.policies.bc import load_or_train_base_policy
    from recovla_jax.sim.randomization import DomainRandomization
    from recovla_jax.sim.wrappers import wrap_batched
    from recovla_jax.tasks import get_task
    from recovla_jax.training.ppo import PPOConfig, PPOTrainer, make_mesh
    from recovla_jax.training.residual_env import ResidualEnv

    task = get_task(args.task, {"episode_length": args.episode_length})
    with contextlib.redirect_stdout(sys.stderr):
        base = load_or_train_base_policy(task, log=lambda m: print(m, file=sys.stderr))
    bank = FailureBank.load(Path(args.bank_dir)) if args.bank_dir else _injected_bank(task, 512, args.seed)
    weights = np.stack([oracle_descriptor(task, m).validate_for(task) for m in task.failure_modes])
    env = ResidualEnv(task, base, bank, weights)
    batched = wrap_batched(env, args.num_envs, args.episode_length, rng=jax.random.PRNGKey(args.seed),
                           randomization=DomainRandomization())
    cfg = PPOConfig(num_envs=args.num_envs, unroll_length=args.unroll_length,
                    total_timesteps=args.num_envs * args.unroll_length * 10, seed=args.seed)
    trainer = PPOTrainer(batched, cfg, mesh=make_mesh() if jax.device_count() > 1 else None)

    t0 = time.perf_counter()
    ts = jax.block_until_ready(trainer.init(jax.random.PRNGKey(args.seed)))
    init_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_step = trainer.train_step.lower(ts).compile()
    train_compile_s = time.perf_counter() - t0
    if args.compile_only:
        return {"train_step_compile_s": train_compile_s}

    rollout = jax.jit(lambda s: s.replace(env_state=trainer._rollout(s, s.rng)[0], rng=jax.random.fold_in(s.rng, 1)))
    t0 = time.perf_counter()
    rollout_c = rollout.lower(ts).compile()
    rollout_compile_s = time.perf_counter() - t0

    ts = train_step(ts)[0]  # warm
    train_calls, train_sec = _timed_calls(lambda s: train_step(s)[0], ts, args.min_seconds)
    roll_calls, roll_sec = _timed_calls(rollout_c, ts, args.min_seconds)
    steps = cfg.batch_size
    return {
        "num_envs": args.num_envs,
        "unroll_length": args.unroll_length,
        "env_steps_per_iteration": steps,
        "ppo": {"update_epochs": cfg.update_epochs, "num_minibatches": cfg.num_minibatches,
                "actor_hidden": list(cfg.actor_hidden), "critic_hidden": list(cfg.critic_hidden)},
        "rollout_only_steps_per_s": steps / roll_sec,
        "training_steps_per_s": steps / train_sec,
        "ratio_training_to_rollout": roll_sec / train_sec,
        "target_ratio": 0.7,
        "target_met": bool(roll_sec / train_sec >= 0.7),
        "timed_calls": {"training": train_calls, "rollout": roll_calls},
        "init_compile_and_run_s": init_s,
        "train_step_compile_s": train_compile_s,
        "rollout_compile_s": rollout_compile_s,
        "bank": args.bank_dir or "unfiltered failure injections (512 states)",
        "domain_randomization": True,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="drawer")
    p.add_argument("--num-envs", type=int, default=None, help="default 128 on CPU, 4096 on GPU/TPU")
    p.add_argument("--unroll-length", type=int, default=20)
    p.add_argument("--episode-length", type=int, default=100)
    p.add_argument("--bank-dir", default=None, help="a saved failure bank (e.g. RUN_DIR/bank)")
    p.add_argument("--min-seconds", type=float, default=10.0, help="minimum timed seconds per arm")
    p.add_argument("--cache", choices=["default", "cold"], default="default",
                   help="cold: compile into an empty persistent cache, then time a second process reading it")
    p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--xla-cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configure_jax()
    if args.cache == "cold" and not args.xla_cache_dir:
        args.xla_cache_dir = tempfile.mkdtemp(prefix="recovla-bench-xla-")
    if args.xla_cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.xla_cache_dir)
    if args.num_envs is None:
        args.num_envs = 4096 if on_accelerator() else 128
    result = measure(args)
    if args.compile_only:
        print(json.dumps(result))
        return result
    if args.cache == "cold":
        cmd = [sys.executable, "-m", "benchmarks.train_throughput", f"--task={args.task}", f"--num-envs={args.num_envs}",
               f"--unroll-length={args.unroll_length}", f"--episode-length={args.episode_length}", "--compile-only",
               f"--seed={args.seed}", f"--xla-cache-dir={args.xla_cache_dir}"] + (
                   [f"--bank-dir={args.bank_dir}"] if args.bank_dir else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, )
        result["second_process_compile_s"] = json.loads(out.stdout.strip().splitlines()[-1])["train_step_compile_s"]
        result["persistent_cache_dir"] = args.xla_cache_dir
        # Only a fixed hash seed makes the second process's program (and cache key) identical to the first's.
        result["python_hash_seed"] = os.environ.get("PYTHONHASHSEED")
    result.update(task=args.task, device=device_summary(), versions=package_versions(),
                  command="python -m benchmarks.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Env steps/s of the full task step against bare `jit(vmap(mjx.step))` on the same scene.

Full task step = action from the frozen base policy (MLP inference) -> gripper control -> the task's
physics sub-steps -> observation, success, NaN guard, episode/auto-reset bookkeeping and (by default)
per-env domain-randomized models, i.e. exactly what training runs. Bare = `mjx.step` alone, on the same
(randomized) models, replaying the very actuator targets the task step produced, so both do the same
physics work (contacts and solver iterations depend on the state: timing bare MJX on a gripper at
rest would flatter it 2x). Both start from the same mid-episode states (`--warmup` base-policy steps
after reset) and are timed as one jitted `lax.scan` of `--unroll` control steps, so Python dispatch
is excluded from both alike. Prints one JSON object.

    python -m benchmarks.steps_per_second --task=drawer [--batch-sizes=64,256,1024]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import jax

# mujoco.mjx prints "Failed to import warp" to stdout when MuJoCo Warp is absent; keep stdout pure JSON.
with contextlib.redirect_stdout(sys.stderr):
    from mujoco import mjx

from recovla_jax.utils.jax_setup import configure_jax, device_summary, on_accelerator, package_versions


def _time(fn, args: tuple, min_seconds: float) -> tuple[float, int, float]:
    """(compile+first-run seconds, calls made, seconds per call) for a jitted fn(*args), re-run on the same args."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(*args))
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and calls >= 3:
            return compile_s, calls, elapsed / calls


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="drawer")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated; default 64,256,1024 on CPU or 256..16384 on GPU/TPU")
    parser.add_argument("--unroll", type=int, default=25, help="control steps per timed jitted call")
    parser.add_argument("--warmup", type=int, default=20, help="base-policy steps after reset before timing")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    parser.add_argument("--no-randomization", action="store_true", help="time the task step without per-env DR models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_jax()

    from recovla_jax.policies.bc import load_or_train_base_policy
    from recovla_jax.sim.env import TaskEnv
    from recovla_jax.sim.randomization import DomainRandomization, batched_models
    from recovla_jax.sim.wrappers import wrap_batched
    from recovla_jax.tasks import get_task

    if args.batch_sizes:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    else:
        sizes = [256, 1024, 4096, 16384] if on_accelerator() else [64, 256, 1024]
    task = get_task(args.task)
    base = load_or_train_base_policy(task, log=lambda m: print(m, file=sys.stderr))
    env = TaskEnv(task)
    results = []
    for n in sizes:
        key = jax.random.PRNGKey(args.seed)
        keys = jax.random.split(key, n)
        randomization = None if args.no_randomization else DomainRandomization()
        batched = wrap_batched(TaskEnv(task), n, task.config.episode_length, rng=key, randomization=randomization)
        if randomization is not None:
            models, in_axes = batched_models(env.sys, key, n, randomization)
        else:
            models, in_axes = env.sys, None

        def task_rollout(state):
            def body(s, _):
                s = batched.step(s, base(s.obs))
                return s, s.pipeline_state.ctrl

            return jax.lax.scan(body, state, None, length=args.unroll)

        def bare_replay(data, ctrls):
            # Same loop structure as the task step: scan over time outside, vmap over envs inside.
            # With jaxlib's LAPACK Cholesky (RECOVLA_CPU_LINALG=lapack) this replay hangs at 1024 envs on 2
            # cores (XLA's thread pool starved, see recovla_jax/sim/cpu_linalg.py); the default lowering runs.
            physics = jax.vmap(mjx.step, in_axes=(in_axes, 0))

            def body(d, ctrl):
                d = d.replace(ctrl=ctrl)
                d = jax.lax.scan(lambda x, _: (physics(models, x), None), d, None, length=task.n_substeps)[0]
                return d, None

            return jax.lax.scan(body, data, ctrls)[0]

        # Start both from the same mid-episode states (gripper moving, contacts live), not from rest.
        state = jax.jit(batched.reset)(keys)
        state = jax.jit(lambda s: jax.lax.scan(lambda s, _: (batched.step(s, base(s.obs)), None), s, None,
                                               length=args.warmup)[0])(state)
        task_fn = jax.jit(lambda s: task_rollout(s)[0].obs)
        _, ctrls = jax.jit(task_rollout)(state)
        bare_fn = jax.jit(lambda d, c: bare_replay(d, c).qpos)
        bare_compile, bare_calls, bare_dt = _time(bare_fn, (state.pipeline_state, ctrls), args.min_seconds)
        task_compile, task_calls, task_dt = _time(task_fn, (state,), args.min_seconds)
        bare_sps = n * args.unroll / bare_dt
        task_sps = n * args.unroll / task_dt
        row = {
            "batch": n,
            "bare_mjx_steps_per_s": round(bare_sps, 1),
            "task_steps_per_s": round(task_sps, 1),
            "ratio": round(task_sps / bare_sps, 3),
            "bare_compile_s": round(bare_compile, 2),
            "task_compile_s": round(task_compile, 2),
            "timed_calls": {"bare": bare_calls, "task": task_calls},
        }
        print(json.dumps(row), file=sys.stderr)
        results.append(row)
    out = {
        "benchmark": "steps_per_second",
        "task": args.task,
        "device": device_summary(),
        "versions": package_versions(),
        "n_substeps": task.n_substeps,
        "unroll": args.unroll,
        "warmup": args.warmup,
        "domain_randomization": not args.no_randomization,
        "base_policy": base.name,
        "results": results,
        "target": {"ratio_at_largest_batch": 0.85, "met": results[-1]["ratio"] >= 0.85},
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

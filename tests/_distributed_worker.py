"""Subprocess entry point for tests/test_ppo.py: PPO on point_reach under a given process/device layout.

Modes (argv[1]):
  dist <process_id> <port> <ckpt_dir|->  one of 2 jax.distributed CPU processes (gloo), mesh over 2 devices
  mesh                                 one process, mesh over all (forced) local devices, adaptive learning rate
  slow <ckpt_dir>                      one process, no mesh, checkpoint every iteration, sleeps per iteration
                                       so the parent can SIGKILL it mid-run
Prints one JSON line prefixed with RESULT: on success.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax


def small_cfg(**kw):
    from recovla_jax.training.ppo import PPOConfig

    base = dict(
        num_envs=64, unroll_length=20, num_minibatches=4, update_epochs=4, learning_rate=3e-3,
        actor_hidden=(64, 64), critic_hidden=(64, 64), total_timesteps=64 * 20 * 30, seed=0,
    )
    base.update(kw)
    return PPOConfig(**base)


def main() -> None:
    mode = sys.argv[1]
    if mode == "dist":
        pid, port, ckpt = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    from recovla_jax.sim.wrappers import wrap_batched
    from recovla_jax.training.point_reach import PointReach
    from recovla_jax.training.ppo import PPOTrainer, make_mesh, train

    ckpt_dir = None
    on_metrics = None
    if mode == "dist":
        cfg = small_cfg(checkpoint_every=10)
        mesh = make_mesh()
        ckpt_dir = None if ckpt == "-" else Path(ckpt)
    elif mode == "mesh":  # with the adaptive learning rate (the distributed run covers the fixed schedule)
        cfg = small_cfg(desired_kl=0.01)
        mesh = make_mesh()
    elif mode == "slow":
        cfg = small_cfg(total_timesteps=64 * 20 * 12, checkpoint_every=1)
        mesh = None
        ckpt_dir = Path(sys.argv[2])
        on_metrics = lambda it, m: time.sleep(0.4)  # noqa: E731
    else:
        raise SystemExit(f"unknown mode {mode}")
    env = wrap_batched(PointReach(), cfg.num_envs, 50)
    trainer = PPOTrainer(env, cfg, mesh=mesh)
    ts, hist = train(trainer, cfg, resume=False, checkpoint_dir=ckpt_dir, on_metrics=on_metrics)
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "returns": [h["episode/sum_reward"] for h in hist],
        "counts": [h["episode/count"] for h in hist],
        "success": [h["episode/success"] for h in hist],
        "reward_mean": [h["reward_mean"] for h in hist],
        "iteration": int(ts.iteration),
    }
    if ckpt_dir is not None and mode == "dist":
        # Every process restores the final checkpoint into the sharded layout; it must equal the live state.
        import numpy as np

        from recovla_jax.utils.checkpoint import CheckpointStore

        store = CheckpointStore(ckpt_dir)
        step, host = store.restore(trainer.host_like())
        store.close()
        live, back = trainer.to_host(ts), trainer.to_host(trainer.from_host(host))
        out["restore_step"] = int(step)
        out["restore_ok"] = all(np.array_equal(live[k], back[k]) for k in live)
    print("RESULT:" + json.dumps(out), flush=True)
    if mode == "dist":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()

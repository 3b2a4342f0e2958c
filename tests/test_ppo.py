"""PPO on the pure-JAX point_reach task: learning, residual init, checkpoint/resume, sharding, multi-process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recovla_jax.sim.wrappers import wrap_batched
from recovla_jax.training.point_reach import PointReach
from recovla_jax.training.ppo import PPOConfig, PPOTrainer, train
from recovla_jax.utils.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_distributed_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from _distributed_worker import small_cfg  # noqa: E402


def make_trainer(cfg: PPOConfig, mesh=None) -> PPOTrainer:
    return PPOTrainer(wrap_batched(PointReach(), cfg.num_envs, 50), cfg, mesh=mesh)


def early_return(returns, counts, n=3) -> float:
    """Episode return over the first n iterations, weighted by finished episodes (iteration 1 alone only
    sees the few lucky episodes that reached the goal early, so it is biased upward)."""
    r, c = np.nan_to_num(np.asarray(returns[:n])), np.asarray(counts[:n])
    return float(np.sum(r * c) / np.sum(c))


def assert_learns(returns, counts, success) -> None:
    first, last = early_return(returns, counts), float(np.mean(returns[-5:]))
    # Measured: first ~ -50, last-5 ~ 6.5 (single device, 2-device mesh and 2 processes alike).
    assert last > first + 30.0, (first, last)
    assert last > 3.0, last
    assert float(np.mean(success[-5:])) > 0.95, success[-5:]


@pytest.fixture(scope="module")
def baseline():
    """One uninterrupted 30-iteration run (shared by the learning and resume tests)."""
    cfg = small_cfg()
    trainer = make_trainer(cfg)
    t0 = time.perf_counter()
    ts, hist = train(trainer, cfg, resume=False, checkpoint_dir=None, on_metrics=None)
    return cfg, trainer, ts, hist, time.perf_counter() - t0


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by num_minibatches"):
        PPOConfig(num_envs=10, unroll_length=3, num_minibatches=4)
    cfg = small_cfg(num_envs=63, num_minibatches=3)
    with pytest.raises(ValueError, match="divisible by the device count"):
        PPOTrainer(wrap_batched(PointReach(), 63, 50), cfg, mesh=jax.sharding.Mesh(np.array(jax.devices() * 2), ("envs",)))


def test_ppo_learns_point_reach(baseline):
    cfg, _, ts, hist, seconds = baseline
    assert seconds < 60.0, seconds
    assert len(hist) == cfg.num_iterations and int(ts.iteration) == cfg.num_iterations
    assert int(ts.env_steps) == cfg.num_iterations * cfg.batch_size
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "reward_mean", "episode/sum_reward",
                "episode/length", "episode/success", "episode/distance", "episode/count", "sps", "env_steps"):
        assert key in hist[-1], key
    assert_learns([h["episode/sum_reward"] for h in hist], [h["episode/count"] for h in hist],
                  [h["episode/success"] for h in hist])
    assert hist[-1]["reward_mean"] > hist[0]["reward_mean"] + 1.0
    # The deterministic actor works outside training and reaches the goal from a fresh start.
    actor = make_trainer(cfg).deterministic_actor(ts)
    env = PointReach()
    state = env.reset(jax.random.PRNGKey(123))
    for _ in range(50):
        state = env.step(state, actor(state.obs[None])[0])
        if float(state.done):
            break
    assert float(state.metrics["success"]) == 1.0


def test_actor_mean_is_zero_at_init():
    cfg = small_cfg()
    trainer = make_trainer(cfg)
    ts = trainer.init(jax.random.PRNGKey(7))
    obs = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (32, trainer.obs_size))
    mean = trainer.policy_fn(ts.params, ts.normalizer, obs, deterministic=True, rng=None)
    assert mean.shape == (32, 2)
    np.testing.assert_array_equal(np.asarray(mean), 0.0)
    np.testing.assert_array_equal(np.asarray(trainer.deterministic_actor(ts)(obs)), 0.0)
    sample = trainer.policy_fn(ts.params, ts.normalizer, obs, deterministic=False, rng=jax.random.PRNGKey(0))
    assert float(jnp.std(sample)) == pytest.approx(np.exp(cfg.init_log_std), rel=0.2)


def test_adaptive_learning_rate_follows_the_measured_kl():
    """With `desired_kl` the learning rate is adapted each minibatch to the KL it measures: PPO still learns the
    task, and a far smaller target drives the rate (and with it the per-update KL) down."""
    cfg = small_cfg(desired_kl=0.01)
    _, hist = train(make_trainer(cfg), cfg)
    lrs = np.array([h["learning_rate"] for h in hist])
    # measured: up to ~7.5e-3 while the KL is small, down to ~3e-4 once updates move the policy (start 3e-3)
    assert np.all((lrs >= 1e-6) & (lrs <= 1e-2)) and lrs.max() > cfg.learning_rate and lrs.min() < cfg.learning_rate / 2
    assert_learns([h["episode/sum_reward"] for h in hist], [h["episode/count"] for h in hist],
                  [h["episode/success"] for h in hist])
    tight = small_cfg(desired_kl=1e-5, total_timesteps=small_cfg().batch_size * 8)
    _, tight_hist = train(make_trainer(tight), tight)
    assert tight_hist[-1]["learning_rate"] < cfg.learning_rate / 10
    assert np.mean([h["approx_kl"] for h in tight_hist[5:8]]) < np.mean([h["approx_kl"] for h in hist[5:8]])
    with pytest.raises(ValueError, match="desired_kl"):
        small_cfg(desired_kl=0.0)


def test_adaptive_learning_rate_survives_checkpoint_and_resume(tmp_path):
    cfg = small_cfg(desired_kl=0.01, total_timesteps=2 * small_cfg().batch_size, checkpoint_every=1)
    saved, _ = train(make_trainer(cfg), cfg, checkpoint_dir=tmp_path)
    assert float(saved.opt_state[1].hyperparams["learning_rate"]) != cfg.learning_rate
    restored, hist = train(make_trainer(cfg), cfg, resume=True, checkpoint_dir=tmp_path)
    assert hist == [] and int(restored.iteration) == 2
    _tree_equal(restored.opt_state, saved.opt_state)
    longer = cfg.model_copy(update={"total_timesteps": 3 * cfg.batch_size})
    _, hist = train(make_trainer(longer), longer, resume=True, checkpoint_dir=tmp_path)
    assert [h["iteration"] for h in hist] == [3] and np.isfinite(hist[0]["learning_rate"])


def test_frozen_normalizer_stays_as_the_run_started():
    cfg = small_cfg(freeze_normalizer=True, total_timesteps=small_cfg().batch_size * 2)
    trainer = make_trainer(cfg)
    ts = trainer.init(jax.random.PRNGKey(0))
    ts = ts.replace(normalizer=ts.normalizer.replace(mean=ts.normalizer.mean + 0.5))
    after, _ = trainer.train_step(ts)
    _tree_equal(after.normalizer, ts.normalizer)
    moving = make_trainer(small_cfg(total_timesteps=small_cfg().batch_size * 2))
    moved, _ = moving.train_step(ts)
    assert float(jnp.max(jnp.abs(moved.normalizer.mean - ts.normalizer.mean))) > 0.0


def test_warm_start_hook_runs_once_on_a_fresh_run_and_not_on_resume(tmp_path):
    cfg = small_cfg().model_copy(update={"total_timesteps": 2 * small_cfg().batch_size, "checkpoint_every": 1})
    trainer = make_trainer(cfg)
    calls = []

    def warm(ts):
        calls.append(int(ts.iteration))
        return ts.replace(params={**ts.params, "log_std": ts.params["log_std"] - 3.0})

    ts, _ = train(trainer, cfg, warm_start=warm, checkpoint_dir=tmp_path)
    assert calls == [0] and int(ts.iteration) == 2
    assert float(jnp.max(ts.params["log_std"])) < cfg.init_log_std - 2.0  # PPO started from the hook's state
    longer = cfg.model_copy(update={"total_timesteps": 3 * cfg.batch_size})
    ts, _ = train(make_trainer(longer), longer, resume=True, warm_start=warm, checkpoint_dir=tmp_path)
    assert calls == [0] and int(ts.iteration) == 3  # the checkpoint already holds the warm-started parameters


def test_resumed_policy_keeps_the_curve_it_logged_before(tmp_path):
    """results.json's curve of a resumed policy: the iterations logged before the checkpoint, then the new ones,
    also when the policy had already finished (the resume runs no iteration) or a killed run logged iterations
    past its last checkpoint."""
    from rich.console import Console
    from tensorboardX import SummaryWriter

    from experiments.policy_training import MetricsSink, resumed_curve, train_policy

    cfg = small_cfg().model_copy(update={"total_timesteps": 2 * small_cfg().batch_size, "checkpoint_every": 1})
    longer = cfg.model_copy(update={"total_timesteps": 3 * cfg.batch_size})
    sink = MetricsSink(SummaryWriter(str(tmp_path / "tb")), tmp_path / "metrics.jsonl")
    console = Console(quiet=True)

    def run(c, resume):
        return train_policy("mode_a", "mode_a", make_trainer(c), c, console=console, sink=sink,
                            checkpoint_dir=tmp_path / "ck", resume=resume, disable_progress=True)[1]

    first = run(cfg, resume=False)
    assert [m["iteration"] for m in first] == [1, 2]
    continued = run(longer, resume=True)
    assert [m["iteration"] for m in continued] == [1, 2, 3]
    assert continued[:2] == first
    finished = run(longer, resume=True)  # nothing left to train: the whole logged curve, not an empty one
    assert finished == continued
    # a killed run logged iterations 3-4 after its checkpoint at 2; the resume ran 3-4 again: the later records win
    logged = [{"iteration": i, "v": i} for i in (1, 2, 3, 4)] + [{"iteration": i, "v": -i} for i in (3, 4)]
    assert resumed_curve(logged, logged[-2:]) == [{"iteration": 1, "v": 1}, {"iteration": 2, "v": 2},
                                                  {"iteration": 3, "v": -3}, {"iteration": 4, "v": -4}]
    assert resumed_curve(logged, []) == [{"iteration": i, "v": v} for i, v in ((1, 1), (2, 2), (3, -3), (4, -4))]


def _tree_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_roundtrip_and_resume_is_exact(baseline, tmp_path):
    cfg, trainer, final, _, _ = baseline
    # Save -> restore reproduces the whole state exactly.
    ts = trainer.train_step(trainer.init(jax.random.PRNGKey(3)))[0]
    store = CheckpointStore(tmp_path / "rt")
    store.save(1, trainer.to_host(ts))
    step, host = store.restore(trainer.host_like())
    store.close()
    assert step == 1
    _tree_equal(trainer.from_host(host), ts)

    # A run stopped after iteration k (checkpoint at k), resumed, ends where the uninterrupted run ends.
    k = 12

    class Stop(Exception):
        pass

    def stop_after_k(it, m):
        if it == k + 1:
            raise Stop

    ck = tmp_path / "run"
    with pytest.raises(Stop):
        train(trainer, small_cfg(checkpoint_every=k), resume=False, checkpoint_dir=ck, on_metrics=stop_after_k)
    ts2, hist2 = train(trainer, small_cfg(checkpoint_every=k), resume=True, checkpoint_dir=ck, on_metrics=None)
    assert hist2[0]["iteration"] == k + 1 and int(ts2.iteration) == cfg.num_iterations
    # Exact on CPU: same programs, same inputs, the restored state is bit-identical.
    _tree_equal(ts2.params, final.params)
    _tree_equal(ts2.opt_state, final.opt_state)
    _tree_equal(ts2.normalizer, final.normalizer)


def _run(args, env=None, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT:")]
    assert lines, out[-3000:]
    return json.loads(lines[-1][len("RESULT:"):])


def test_two_forced_cpu_devices_mesh():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = _run(["mesh"], env=env)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    res = _result(out)
    assert res["device_count"] == 2
    assert_learns(res["returns"], res["counts"], res["success"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_distributed(tmp_path):
    port = _free_port()
    env = {"XLA_FLAGS": ""}  # one CPU device per process
    procs = [_run(["dist", str(i), str(port), str(tmp_path / "ck")], env=env) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    r0, r1 = (_result(o) for o in outs)
    assert r0["process_count"] == r1["process_count"] == 2 and r0["device_count"] == 2
    assert r0["returns"] == r1["returns"]
    assert_learns(r0["returns"], r0["counts"], r0["success"])
    assert r0["restore_ok"] and r1["restore_ok"] and r0["restore_step"] == 30


def test_killed_run_resumes(tmp_path):
    ck = tmp_path / "ck"
    proc = _run(["slow", str(ck)], env={"XLA_FLAGS": ""})
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            done = [d for d in ck.glob("*") if d.name.isdigit()] if ck.exists() else []
            if done:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "worker ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    cfg = small_cfg(total_timesteps=64 * 20 * 12, checkpoint_every=1)
    store = CheckpointStore(ck)
    killed_at = store.latest_step()
    store.close()
    assert killed_at is not None and 1 <= killed_at < cfg.num_iterations
    trainer = make_trainer(cfg)
    ts, hist = train(trainer, cfg, resume=True, checkpoint_dir=ck, on_metrics=None)
    assert int(ts.iteration) == cfg.num_iterations
    assert [h["iteration"] for h in hist] == list(range(killed_at + 1, cfg.num_iterations + 1))
    assert all(np.isfinite(h["policy_loss"]) for h in hist)
    # Same result as never having been killed.
    ref, _ = train(trainer, cfg, resume=False, checkpoint_dir=None, on_metrics=None)
    _tree_equal(ts.params, ref.params)


class _TaggedPointReach(PointReach):
    """PointReach whose reset also draws an episode tag in info (like ResidualEnv's failure mode)."""

    episode_start_info = ("tag",)

    def reset(self, rng):
        s = super().reset(rng)
        return s.replace(info={"tag": jax.random.randint(jax.random.fold_in(rng, 7), (), 0, 1_000_000)})


def test_auto_reset_resamples_starts_and_restores_episode_info():
    """brax restarts an env from its first start forever; ours restarts from the start last drawn by
    `refresh_starts`, with that start's episode info, and still hands back the pre-reset observation."""
    n = 4
    env = wrap_batched(_TaggedPointReach(), n, 3)  # every episode ends by time limit after 3 steps
    step = jax.jit(env.step_with_final_obs)
    s0 = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))
    s = s0
    for _ in range(3):
        s, final = step(s, jnp.full((n, 2), 0.5))
    assert np.all(np.asarray(s.done) == 1)
    np.testing.assert_array_equal(s.obs, s0.obs)  # back at the first start
    assert not np.allclose(final, s0.obs)  # the pre-reset observation is the moved one
    s = jax.jit(env.refresh_starts)(s, jax.random.split(jax.random.PRNGKey(1), n))
    fresh = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(1), n))
    for _ in range(3):
        s, _ = step(s, jnp.zeros((n, 2)))
    np.testing.assert_array_equal(s.obs, fresh.obs)  # restarted from the redrawn starts ...
    np.testing.assert_array_equal(s.info["tag"], fresh.info["tag"])  # ... with their own episode info
    assert not np.array_equal(fresh.info["tag"], s0.info["tag"])


def test_desync_episodes_cuts_only_the_first_episode_at_random_lengths():
    """`DesyncedFirstEpisodes` (train --desync-episodes): each env's first episode ends by time limit after 1..L steps,
    spread over that range; every later episode runs the full L steps again. Without it all envs end together at step L."""
    from recovla_jax.sim.episode_desync import DesyncedFirstEpisodes, maybe_desync

    n, limit = 64, 6
    ends: dict[bool, np.ndarray] = {}
    for desync in (False, True):
        env = maybe_desync(wrap_batched(_TaggedPointReach(), n, limit), limit, desync)
        step = jax.jit(env.step_with_final_obs)
        s = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))
        done_at, trunc = [], []
        for _ in range(3 * limit):
            s, _ = step(s, jnp.zeros((n, 2)))  # zero action: PointReach never reaches its goal from a reset
            done_at.append(np.asarray(s.done))
            trunc.append(np.asarray(s.info["truncation"]))
        done_at, trunc = np.stack(done_at), np.stack(trunc)
        np.testing.assert_array_equal(done_at, trunc)  # every end is a time limit (the value bootstrap covers it)
        first = done_at.argmax(axis=0) + 1
        for e in range(n):  # after the first end, episodes last exactly `limit` steps
            later = np.flatnonzero(done_at[:, e]) + 1
            assert np.all(np.diff(later) == limit), (e, later)
        ends[desync] = first
    assert np.all(ends[False] == limit)
    assert ends[True].min() >= 1 and ends[True].max() <= limit and len(set(ends[True].tolist())) == limit
    with pytest.raises(ValueError, match="needs brax's EpisodeWrapper"):
        DesyncedFirstEpisodes(_TaggedPointReach(), limit).reset(jax.random.PRNGKey(0))  # no episode wrapper inside


def test_policy_loss_ignores_steps_the_residual_did_not_drive():
    """Hand-back: steps with active == 0 (the base drove alone) change neither the policy loss, its advantage
    normalisation nor the KL estimate; the critic still learns from them."""
    cfg = small_cfg()
    trainer = make_trainer(cfg)
    ts = trainer.init(jax.random.PRNGKey(3))
    k = jax.random.split(jax.random.PRNGKey(4), 5)
    n, extra = 16, 8

    def batch(rows: int, key_offset: int, active: float) -> dict:
        kk = jax.random.split(k[key_offset], 5)
        return {"obs": jax.random.normal(kk[0], (rows, trainer.obs_size)), "action": jax.random.normal(kk[1], (rows, 2)),
                "log_prob": -2.0 + 0.1 * jax.random.normal(kk[2], (rows,)), "advantage": jax.random.normal(kk[3], (rows,)),
                "target": jax.random.normal(kk[4], (rows,)), "active": jnp.full((rows,), active)}

    driven = batch(n, 0, 1.0)
    ignored = batch(extra, 1, 0.0)
    ignored["advantage"] = 100.0 * ignored["advantage"] + 50.0  # would dominate the normalisation if counted
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), driven, ignored)
    _, alone = trainer._loss(ts.params, ts.normalizer, driven)
    _, mixed = trainer._loss(ts.params, ts.normalizer, both)
    for key in ("policy_loss", "approx_kl", "entropy"):
        np.testing.assert_allclose(float(mixed[key]), float(alone[key]), rtol=1e-5, atol=1e-7)
    assert abs(float(mixed["value_loss"]) - float(alone["value_loss"])) > 1e-3
    # with every step driven the loss is plain PPO: the unweighted normalisation and mean
    full = dict(driven, active=jnp.ones((n,)))
    adv = (full["advantage"] - full["advantage"].mean()) / (full["advantage"].std() + 1e-8)
    mean = trainer.actor.apply(ts.params["actor"], trainer.normalize(ts.normalizer, full["obs"]))
    from recovla_jax.training.ppo import _gaussian_log_prob

    ratio = jnp.exp(_gaussian_log_prob(full["action"], mean, ts.params["log_std"]) - full["log_prob"])
    expected = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv))
    np.testing.assert_allclose(float(trainer._loss(ts.params, ts.normalizer, full)[1]["policy_loss"]), float(expected), rtol=1e-5)

"""Drawer env: shapes, determinism, action bounds, NaN guard, domain randomization, expert success."""

import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.evaluation.rollout import rollout_success
from recovla_jax.sim.gripper import ACTION_SIZE

N = 8


def _rollout(reset, step, seed, actions):
    s = reset(jax.random.split(jax.random.PRNGKey(seed), N))
    obs = [s.obs]
    for a in actions:
        s = step(s, a)
        obs.append(s.obs)
    return s, np.stack(obs)


def test_reset_step_shapes_and_dtypes(drawer_batch_fns, drawer_task):
    reset, step = drawer_batch_fns
    s = reset(jax.random.split(jax.random.PRNGKey(0), N))
    assert s.obs.shape == (N, drawer_task.observation_size) and s.obs.dtype == jnp.float32
    s = step(s, jnp.zeros((N, ACTION_SIZE)))
    assert s.obs.shape == (N, drawer_task.observation_size) and s.obs.dtype == jnp.float32
    assert s.reward.shape == (N,) and s.done.shape == (N,)
    assert np.all(np.isfinite(s.obs))
    assert set(s.metrics) >= {"success", "nan_reset"}


def test_reset_is_randomized_and_seeded(drawer_batch_fns):
    reset, _ = drawer_batch_fns
    a = reset(jax.random.split(jax.random.PRNGKey(1), N)).obs
    b = reset(jax.random.split(jax.random.PRNGKey(1), N)).obs
    c = reset(jax.random.split(jax.random.PRNGKey(2), N)).obs
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.std(a[:, :3], axis=0).min() > 1e-3  # gripper start positions differ across envs


def test_same_seed_same_trajectory(drawer_batch_fns):
    reset, step = drawer_batch_fns
    acts = jax.random.uniform(jax.random.PRNGKey(5), (6, N, ACTION_SIZE), minval=-1, maxval=1)
    _, o1 = _rollout(reset, step, 3, acts)
    _, o2 = _rollout(reset, step, 3, acts)
    np.testing.assert_array_equal(o1, o2)


def test_actions_outside_bounds_are_clipped(drawer_batch_fns):
    reset, step = drawer_batch_fns
    big = jnp.tile(jnp.array([5.0, -7.0, 3.0, 2.0, -9.0, 4.0, 10.0]), (3, N, 1))
    _, o_big = _rollout(reset, step, 4, big)
    _, o_clip = _rollout(reset, step, 4, jnp.clip(big, -1.0, 1.0))
    np.testing.assert_array_equal(o_big, o_clip)
    # and a unit action really moves the gripper by at most the per-step bound (plus servo overshoot)
    moved = np.linalg.norm(o_big[1, :, :3] - o_big[0, :, :3], axis=-1)
    assert np.all(moved < 0.03)


def test_nan_in_physics_is_detected_not_propagated(drawer_batch_fns):
    reset, step = drawer_batch_fns
    s = reset(jax.random.split(jax.random.PRNGKey(0), N))
    bad_qvel = s.pipeline_state.qvel.at[0, 0].set(jnp.nan)
    s = s.replace(pipeline_state=s.pipeline_state.replace(qvel=bad_qvel))
    s2 = step(s, jnp.zeros((N, ACTION_SIZE)))
    assert s2.metrics["nan_reset"][0] == 1.0 and s2.done[0] == 1.0
    assert np.all(s2.metrics["nan_reset"][1:] == 0.0)
    assert np.all(np.isfinite(s2.obs)) and np.all(np.isfinite(s2.reward))


def test_nan_env_is_reset_by_auto_reset_wrapper(drawer_env):
    from recovla_jax.sim.wrappers import wrap_batched

    env = wrap_batched(drawer_env, 2, 50)
    s = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), 2))
    first_obs = s.obs
    s = jax.jit(env.step)(s, jnp.zeros((2, ACTION_SIZE)))
    ps = s.pipeline_state
    s = s.replace(pipeline_state=ps.replace(qpos=ps.qpos.at[1, 1].set(jnp.inf)))
    s = jax.jit(env.step)(s, jnp.zeros((2, ACTION_SIZE)))
    assert float(s.metrics["nan_reset"][1]) == 1.0
    np.testing.assert_allclose(s.obs[1], first_obs[1])  # env 1 is back at its initial state
    assert np.all(np.isfinite(s.pipeline_state.qpos))


def test_domain_randomization_gives_per_env_models(drawer_env):
    from recovla_jax.sim.randomization import DomainRandomization, batched_models

    models, in_axes = batched_models(drawer_env.sys, jax.random.PRNGKey(0), 4, DomainRandomization())
    assert models.geom_friction.shape[0] == 4 and in_axes.geom_friction == 0 and in_axes.body_pos is None
    f = np.asarray(models.geom_friction[:, 0, 0])
    assert len(np.unique(f)) == 4 and np.all((f >= 0.7) & (f <= 1.3))
    kp = np.asarray(models.actuator_gainprm[:, 0, 0])
    np.testing.assert_allclose(np.asarray(models.actuator_biasprm[:, 0, 1]), -kp, rtol=1e-6)


def test_scripted_expert_succeeds(drawer_env, drawer_task):
    n = 32

    @jax.jit
    def run(key):
        start = jax.vmap(drawer_env.reset)(jax.random.split(key, n))
        policy = lambda obs, priv, k: jax.vmap(drawer_task.expert_action)(priv)  # noqa: E731
        return rollout_success(drawer_env, policy, start, drawer_task.config.episode_length, key)["success"]

    ok = np.asarray(run(jax.random.PRNGKey(11)))
    assert ok.mean() >= 0.95, f"expert nominal success {ok.mean():.2%} < 95%"


def test_randomized_batch_keeps_episode_limits_and_metrics(drawer_env):
    """brax 0.14.2's DR wrapper skips the EpisodeWrapper; ours must not: episodes truncate under DR."""
    from recovla_jax.sim.randomization import DomainRandomization
    from recovla_jax.sim.wrappers import wrap_batched

    env = wrap_batched(drawer_env, 2, 3, rng=jax.random.PRNGKey(0), randomization=DomainRandomization())
    s = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), 2))
    step = jax.jit(env.step)
    for _ in range(3):
        s = step(s, jnp.zeros((2, ACTION_SIZE)))
    assert np.all(np.asarray(s.info["truncation"]) == 1.0) and np.all(np.asarray(s.done) == 1.0)
    assert "sum_reward" in s.info["episode_metrics"]
    np.testing.assert_array_equal(np.asarray(s.info["episode_metrics"]["length"]), [3.0, 3.0])

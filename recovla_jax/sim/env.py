"""An MJX environment on brax's `Env`/`State` API, generic over a `Task`.

One control step = action -> actuator targets -> `n_substeps` physics steps (a `lax.scan`, so the traced
graph holds one MJX step, not n) -> observation, reward, success. A NaN/Inf in the physics state is
caught here: the step's result is discarded (the previous state is kept, at rest), `done` is raised so brax's
auto-reset wrapper resets that env, and `metrics["nan_reset"]` counts it, so a NaN never reaches the
observation, the reward or the learner.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from mujoco import mjx

from recovla_jax.sim import gripper as grip
from recovla_jax.tasks.base import Task

# reward_fn(model, prev_data, data, action, info) -> (reward, named components)
RewardFn = Callable[[mjx.Model, mjx.Data, mjx.Data, jnp.ndarray, dict], tuple[jnp.ndarray, dict]]


class TaskEnv(Env):
    """Single-env MJX environment for a task; batch it with brax's wrappers (`sim.wrappers`)."""

    def __init__(self, task: Task, reward_fn: RewardFn | None = None, terminate_on_success: bool = True):
        self.task = task
        self.sys = mjx.put_model(task.mj_model)
        self.reward_fn = reward_fn
        self.terminate_on_success = terminate_on_success

    @property
    def observation_size(self) -> int:
        return self.task.observation_size

    @property
    def action_size(self) -> int:
        return grip.ACTION_SIZE

    @property
    def backend(self) -> str:
        return "mjx"

    def reset(self, rng: jax.Array) -> State:
        rng, key = jax.random.split(rng)
        return self.state_from_data(self.task.reset(self.sys, key), rng)

    def state_from_data(self, data: mjx.Data, rng: jax.Array, info: dict | None = None) -> State:
        """Wrap an arbitrary physics state (nominal reset or a failure-bank snapshot) as an env state."""
        obs = self.task.observe(self.sys, data)
        metrics = {"success": jnp.zeros(()), "nan_reset": jnp.zeros(())}
        if self.reward_fn is not None:
            _, components = self.reward_fn(self.sys, data, data, jnp.zeros(grip.ACTION_SIZE), dict(info or {}))
            metrics.update({f"reward/{k}": jnp.zeros(()) for k in components})
        return State(
            pipeline_state=data,
            obs=obs,
            reward=jnp.zeros(()),
            done=jnp.zeros(()),
            metrics=metrics,
            info={"rng": rng, **(info or {})},
        )

    def physics_step(self, data: mjx.Data, action: jnp.ndarray) -> mjx.Data:
        """Apply a 7-D action for one control period (`n_substeps` MJX steps)."""
        ctrl = grip.action_to_ctrl(self.task.gripper, self.task.limits, data.qpos, action)
        data = data.replace(ctrl=ctrl)

        def substep(d: mjx.Data, _: None) -> tuple[mjx.Data, None]:
            return mjx.step(self.sys, d), None

        data, _ = jax.lax.scan(substep, data, None, length=self.task.n_substeps)
        return data

    def step(self, state: State, action: jnp.ndarray) -> State:
        action = grip.clip_action(action)
        prev = state.pipeline_state
        data = self.physics_step(prev, action)
        bad = ~(jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel)))
        fallback = prev.replace(qvel=jnp.zeros_like(prev.qvel))
        data = jax.tree.map(lambda old, new: jnp.where(bad, old, new), fallback, data)
        obs = self.task.observe(self.sys, data)
        obs = jnp.where(bad, jnp.nan_to_num(obs, nan=0.0, posinf=0.0, neginf=0.0), obs)
        success = self.task.success(self.sys, data)
        metrics = dict(state.metrics)
        if self.reward_fn is None:
            reward = success.astype(jnp.float32)
        else:
            reward, components = self.reward_fn(self.sys, prev, data, action, state.info)
            metrics.update({f"reward/{k}": jnp.where(bad, 0.0, v) for k, v in components.items()})
        reward = jnp.where(bad, 0.0, reward)
        done = bad | (success & self.terminate_on_success)
        metrics["success"] = success.astype(jnp.float32)
        metrics["nan_reset"] = bad.astype(jnp.float32)
        return state.replace(
            pipeline_state=data, obs=obs, reward=reward, done=done.astype(jnp.float32), metrics=metrics
        )

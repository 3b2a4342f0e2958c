"""The residual environment: episodes start from failure-bank states; action = clip(base + alpha * r).

The residual r = tanh(policy output) observes [task observation, base action, descriptor], where the
descriptor features are the failure-mode one-hot and the dense reward weights. With the residual actor's
last layer zero-initialised, r = 0 at initialisation and the executed action is exactly the frozen base
policy's. Rewards come from the compiled mask (weights per env in `info["reward_weights"]`); the
residual-magnitude term sees the squashed residual. Success ends the episode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import State
from mujoco import mjx

from recovla_jax.failures.bank import FailureBank
from recovla_jax.policies.base_policy import BasePolicy
from recovla_jax.rewards.compiler import compile_reward
from recovla_jax.rewards.library import component_names
from recovla_jax.sim import gripper as grip
from recovla_jax.sim.env import TaskEnv
from recovla_jax.tasks.base import Task


class ResidualEnv(TaskEnv):
    """A TaskEnv whose resets draw failure states and whose actions are residual corrections."""

    def __init__(
        self,
        task: Task,
        base: BasePolicy,
        bank: FailureBank,
        weights_per_mode: np.ndarray,
        alpha: float = 0.5,
        start_noise: float = 0.005,
    ):
        super().__init__(task, reward_fn=compile_reward(task), terminate_on_success=True)
        if len(bank) == 0:
            raise ValueError("the failure bank selection is empty: nothing to start episodes from")
        n_modes = len(task.failure_modes)
        weights_per_mode = np.asarray(weights_per_mode, np.float32)
        if weights_per_mode.shape != (n_modes, len(component_names(task))):
            raise ValueError(f"weights_per_mode must have shape {(n_modes, len(component_names(task)))}, got {weights_per_mode.shape}")
        self.base = base
        self.alpha = float(alpha)
        self.start_noise = float(start_noise)
        self.task_obs_size = task.observation_size
        self.starts = {k: jnp.asarray(bank.arrays[k]) for k in ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl", "mode")}
        self.num_starts = len(bank)
        self.weights_per_mode = jnp.asarray(weights_per_mode)
        self.n_modes = n_modes

    @property
    def observation_size(self) -> int:
        return self.task_obs_size + grip.ACTION_SIZE + self.n_modes + self.weights_per_mode.shape[1]

    def descriptor_features(self, mode: jnp.ndarray) -> jnp.ndarray:
        return jnp.concatenate([jax.nn.one_hot(mode, self.n_modes), self.weights_per_mode[mode]])

    def reset(self, rng: jax.Array) -> State:
        k_idx, k_rest = jax.random.split(rng)
        return self.reset_to(jax.random.randint(k_idx, (), 0, self.num_starts), k_rest)

    def reset_to(self, index: jnp.ndarray, rng: jax.Array) -> State:
        """Start from bank state `index`, with the gripper position jittered by `start_noise` metres."""
        k_noise, k_state = jax.random.split(rng)
        s = {k: v[index] for k, v in self.starts.items()}
        idx = self.task.gripper
        noise = jax.random.uniform(k_noise, (3,), minval=-self.start_noise, maxval=self.start_noise)
        qpos = s["qpos"].at[jnp.array(idx.arm_qpos[:3])].add(noise)
        data = self.task.data_template.replace(qpos=qpos, qvel=s["qvel"], mocap_pos=s["mocap_pos"],
                                               mocap_quat=s["mocap_quat"], ctrl=s["ctrl"])
        data = mjx.forward(self.sys, data)
        mode = s["mode"]
        info = {"reward_weights": self.weights_per_mode[mode], "residual": jnp.zeros(grip.ACTION_SIZE), "mode": mode}
        state = self.state_from_data(data, k_state, info)
        return state.replace(obs=self._residual_obs(state.obs, mode))

    def _residual_obs(self, task_obs: jnp.ndarray, mode: jnp.ndarray) -> jnp.ndarray:
        return jnp.concatenate([task_obs, self.base(task_obs), self.descriptor_features(mode)])

    def executed_action(self, obs: jnp.ndarray, residual_raw: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(clip(base + alpha * tanh(r)), tanh(r)) for a residual-env observation."""
        base_action = obs[self.task_obs_size : self.task_obs_size + grip.ACTION_SIZE]
        residual = jnp.tanh(residual_raw)
        return jnp.clip(base_action + self.alpha * residual, -1.0, 1.0), residual

    def step(self, state: State, residual_raw: jnp.ndarray) -> State:
        action, residual = self.executed_action(state.obs, residual_raw)
        inner = state.replace(obs=state.obs[: self.task_obs_size], info={**state.info, "residual": residual})
        nxt = super().step(inner, action)
        return nxt.replace(obs=self._residual_obs(nxt.obs, state.info["mode"]))

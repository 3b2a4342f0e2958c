"""The residual environment: episodes start from failure-bank states; action = clip(base + alpha * r).

The residual r = tanh(policy output) observes [task observation, base action, descriptor], where the
descriptor features are the failure-mode one-hot and the dense reward weights. With the residual actor's
last layer zero-initialised, r = 0 at initialisation and the executed action is exactly the frozen base
policy's. Rewards come from the compiled mask (weights per env in `info["reward_weights"]`); the
residual-magnitude term sees the squashed residual. Success ends the episode.

Sensor and controller imperfections of a real robot are trained on, like the model-field randomization:
Gaussian observation noise (`obs_noise`, metres/units of each field; base and residual see the same noisy
reading, rewards use the true state) and, per episode with probability `latency_prob`, one control step of
action latency. The native-MuJoCo robot of the sim-to-sim evaluation applies the same two by default.

Hand-back (`hand_back=True`): the residual acts while the task's failure label (`Task.label`, the rules the
robot runtime's selector applies, here on simulator state) names a failure, and for `hand_back_delay` more
steps once it no longer does; after that the frozen base drives alone, as the runtime hands control back to
the base once the failure is gone. A failure seen again re-engages the residual. Success is still the whole
task's: a recovery counts only if the base then finishes. `info["residual_active"]` says, for the state an
action is chosen in, whether that action reaches the robot (PPO trains only on those).

Start states are drawn uniformly from the bank, or by `start_weights` (one non-negative weight per bank
state): `train --expert-path-starts` mixes states along the scripted expert's recoveries into the training
starts this way (`failures.expert_paths`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import State
from mujoco import mjx

from recovla_jax.failures.bank import FailureBank, bank_state_data
from recovla_jax.policies.base_policy import BasePolicy
from recovla_jax.rewards.compiler import compile_reward
from recovla_jax.rewards.library import component_names
from recovla_jax.sim import gripper as grip
from recovla_jax.sim.env import TaskEnv
from recovla_jax.sim.latency import hold_action
from recovla_jax.tasks.base import Task

# tanh(arctanh(1 - 1e-6)) rounds back to 1 - 1e-6 in float32: the bound itself is reachable.
MAX_UNIT = 1.0 - 1e-6


class ResidualEnv(TaskEnv):
    """A TaskEnv whose resets draw failure states and whose actions are residual corrections."""

    # Info set at reset that belongs to the episode: auto-reset restores it with the start state.
    episode_start_info = ("reward_weights", "residual", "mode", "latency", "prev_action", "residual_active", "clear_steps")

    def __init__(
        self,
        task: Task,
        base: BasePolicy,
        bank: FailureBank,
        weights_per_mode: np.ndarray,
        alpha: float = 0.5,
        start_noise: float = 0.005,
        obs_noise: float = 0.001,
        latency_prob: float = 0.5,
        hand_back: bool = False,
        hand_back_delay: int = 0,
        start_weights: np.ndarray | None = None,
        potential_discount: float = 1.0,
    ):
        super().__init__(task, reward_fn=compile_reward(task, potential_discount), terminate_on_success=True)
        if len(bank) == 0:
            raise ValueError("the failure bank selection is empty: nothing to start episodes from")
        n_modes = len(task.failure_modes)
        weights_per_mode = np.asarray(weights_per_mode, np.float32)
        if weights_per_mode.shape != (n_modes, len(component_names(task))):
            raise ValueError(f"weights_per_mode must have shape {(n_modes, len(component_names(task)))}, "
                             f"got {weights_per_mode.shape}")
        self.base = base
        self.alpha = float(alpha)
        self.start_noise = float(start_noise)
        if obs_noise < 0 or not 0.0 <= latency_prob <= 1.0:
            raise ValueError(f"obs_noise must be >= 0 and latency_prob in [0, 1], got {obs_noise}, {latency_prob}")
        self.obs_noise = float(obs_noise)
        self.latency_prob = float(latency_prob)
        self.hand_back = bool(hand_back)
        if hand_back_delay < 0:
            raise ValueError(f"hand_back_delay must be >= 0 control steps, got {hand_back_delay}")
        self.hand_back_delay = int(hand_back_delay)
        self.task_obs_size = task.observation_size
        self.starts = {k: jnp.asarray(bank.arrays[k]) for k in ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl", "mode")}
        self.num_starts = len(bank)
        self.start_probs = None if start_weights is None else _start_probs(start_weights, self.num_starts)
        self.weights_per_mode = jnp.asarray(weights_per_mode)
        self.n_modes = n_modes

    @property
    def observation_size(self) -> int:
        return self.task_obs_size + grip.ACTION_SIZE + self.n_modes + self.weights_per_mode.shape[1]

    def descriptor_features(self, mode: jnp.ndarray) -> jnp.ndarray:
        return jnp.concatenate([jax.nn.one_hot(mode, self.n_modes), self.weights_per_mode[mode]])

    def reset(self, rng: jax.Array) -> State:
        k_idx, k_rest = jax.random.split(rng)
        if self.start_probs is None:
            return self.reset_to(jax.random.randint(k_idx, (), 0, self.num_starts), k_rest)
        return self.reset_to(jax.random.choice(k_idx, self.num_starts, p=self.start_probs), k_rest)

    def reset_to(self, index: jnp.ndarray, rng: jax.Array) -> State:
        """Start from bank state `index`, with the gripper position jittered by `start_noise` metres."""
        k_noise, k_state = jax.random.split(rng)
        s = {k: v[index] for k, v in self.starts.items()}
        idx = self.task.gripper
        noise = jax.random.uniform(k_noise, (3,), minval=-self.start_noise, maxval=self.start_noise)
        qpos = s["qpos"].at[jnp.array(idx.arm_qpos[:3])].add(noise)
        data = bank_state_data(self.task, self.sys, {**s, "qpos": qpos})
        mode = s["mode"]
        k_state, k_lat, k_obs = jax.random.split(k_state, 3)
        info = {"reward_weights": self.weights_per_mode[mode], "residual": jnp.zeros(grip.ACTION_SIZE), "mode": mode,
                "latency": jax.random.bernoulli(k_lat, self.latency_prob), "prev_action": hold_action(self.task.gripper, data),
                **self._hand_back_info(data, jnp.zeros((), jnp.int32))}
        state = self.state_from_data(data, k_state, info)
        return state.replace(obs=self._residual_obs(state.obs, mode, k_obs))

    def _hand_back_info(self, data: mjx.Data, clear_steps: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """`residual_active` (1.0 where the residual's action reaches the robot in state `data`) and
        `clear_steps` (consecutive states, this one included, the failure label found no failure in)."""
        if not self.hand_back:
            return {"residual_active": jnp.ones(()), "clear_steps": clear_steps}
        mode, _ = self.task.label(self.task.privileged(self.sys, data))
        clear_steps = jnp.where(mode < 0, clear_steps + 1, 0)
        return {"residual_active": (clear_steps <= self.hand_back_delay).astype(jnp.float32), "clear_steps": clear_steps}

    def _residual_obs(self, task_obs: jnp.ndarray, mode: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """[noisy task obs, base action on it, descriptor]: base and residual see the same sensor noise."""
        noisy = task_obs + self.obs_noise * jax.random.normal(key, task_obs.shape)
        return jnp.concatenate([noisy, self.base(noisy), self.descriptor_features(mode)])

    def executed_action(self, obs: jnp.ndarray, residual_raw: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(clip(base + alpha * tanh(r)), tanh(r)) for a residual-env observation."""
        base_action = obs[self.task_obs_size : self.task_obs_size + grip.ACTION_SIZE]
        residual = jnp.tanh(residual_raw)
        return jnp.clip(base_action + self.alpha * residual, -1.0, 1.0), residual

    def expert_unit_target(self, obs: jnp.ndarray, expert: jnp.ndarray) -> jnp.ndarray:
        """The squashed residual tanh(r) whose executed action is `expert`, projected onto base +- alpha
        (strictly inside (-1, 1), so its arctanh is finite): the expert's correction at this scale."""
        base_action = obs[self.task_obs_size : self.task_obs_size + grip.ACTION_SIZE]
        return jnp.clip((expert - base_action) / self.alpha, -MAX_UNIT, MAX_UNIT)

    def step(self, state: State, residual_raw: jnp.ndarray) -> State:
        active = state.info["residual_active"]
        action, residual = self.executed_action(state.obs, residual_raw * active)
        residual = residual * active
        # Action latency (per episode, probability `latency_prob`): this step executes the previous command.
        executed = jnp.where(state.info["latency"], state.info["prev_action"], action)
        rng, k_obs = jax.random.split(state.info["rng"])
        info = {**state.info, "residual": residual, "prev_action": action, "rng": rng}
        inner = state.replace(obs=state.obs[: self.task_obs_size], info=info)
        nxt = super().step(inner, executed)
        info = {**nxt.info, **self._hand_back_info(nxt.pipeline_state, state.info["clear_steps"])}
        return nxt.replace(obs=self._residual_obs(nxt.obs, state.info["mode"], k_obs), info=info)


def _start_probs(weights: np.ndarray, num_starts: int) -> jnp.ndarray:
    """Validated start-state probabilities (normalised `weights`, one per bank state)."""
    weights = np.asarray(weights, np.float64)
    if weights.shape != (num_starts,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"start_weights must be {num_starts} finite non-negative numbers (one per bank state) with a "
                         f"positive sum, got shape {weights.shape}")
    return jnp.asarray(weights / weights.sum(), jnp.float32)

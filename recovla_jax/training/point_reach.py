"""A 2-D point-reaching brax `Env` in pure JAX (no MuJoCo).

Why: PPO's tests need a task that compiles in seconds and is learnt in a few thousand steps, so that the
algorithm (GAE, truncation bootstrapping, checkpoint/resume, sharding) can be checked on 2 CPU cores.
The whole physical state (position, goal) lives in `pipeline_state`, so brax's AutoResetWrapper restores
it on reset; episode limits come from `wrap_batched`'s EpisodeWrapper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State


class PointReach(Env):
    """Point with velocity control in [-1, 1]^2 reaching a random goal; obs = [pos, goal - pos]."""

    def __init__(self, dt: float = 0.1, reach_radius: float = 0.1, reach_bonus: float = 10.0, arena: float = 1.0):
        self.dt = dt
        self.reach_radius = reach_radius
        self.reach_bonus = reach_bonus
        self.arena = arena

    @property
    def observation_size(self) -> int:
        return 4

    @property
    def action_size(self) -> int:
        return 2

    @property
    def backend(self) -> str:
        return "jax"

    def _obs(self, ps: jax.Array) -> jax.Array:
        pos, goal = ps[:2], ps[2:]
        return jnp.concatenate([pos, goal - pos])

    def reset(self, rng: jax.Array) -> State:
        k_pos, k_goal = jax.random.split(rng)
        pos = jax.random.uniform(k_pos, (2,), minval=-self.arena, maxval=self.arena)
        goal = jax.random.uniform(k_goal, (2,), minval=-self.arena, maxval=self.arena)
        ps = jnp.concatenate([pos, goal])
        zero = jnp.zeros(())
        return State(pipeline_state=ps, obs=self._obs(ps), reward=zero, done=zero,
                     metrics={"success": zero, "distance": zero}, info={})

    def step(self, state: State, action: jax.Array) -> State:
        ps = state.pipeline_state
        pos = jnp.clip(ps[:2] + self.dt * jnp.clip(action, -1.0, 1.0), -1.5 * self.arena, 1.5 * self.arena)
        goal = ps[2:]
        dist = jnp.linalg.norm(goal - pos)
        reached = (dist < self.reach_radius).astype(jnp.float32)
        reward = -dist + self.reach_bonus * reached
        ps = jnp.concatenate([pos, goal])
        return state.replace(pipeline_state=ps, obs=self._obs(ps), reward=reward, done=reached,
                             metrics={"success": reached, "distance": dist})

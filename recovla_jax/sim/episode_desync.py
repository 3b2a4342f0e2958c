"""Desynchronized episodes: each env's first episode ends after a random 1..episode_length steps.

Without this, envs that never succeed early end together. Each PPO iteration (`unroll_length` steps of every
env) then holds only one slice of the episode: steps 0-19 in one update, 20-39 in the next, and so on.
Starting the episode wrapper's step counters at random values cuts only the first episodes. The cut is a
time-limit truncation, which the value bootstrap covers, and auto-reset restarts every later episode at 0.
Isaac Gym's legged_gym does the same with random initial episode-length counters.

This is a wrapper of its own, outside `sim.wrappers`, because the base-policy cache key hashes that module's
source (DAgger rounds use it). Editing it would re-clone every multi-stage base and orphan their failure banks.
brax's `Wrapper` forwards every other attribute (`step_with_final_obs`, `refresh_starts`) to the env inside.
"""

from __future__ import annotations

import jax
from brax.envs.base import Env, State, Wrapper


class DesyncedFirstEpisodes(Wrapper):
    """On top of `wrap_batched(...)`: reset starts the step counters at random values in [0, episode_length)."""

    def __init__(self, env: Env, episode_length: int):
        super().__init__(env)
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.episode_length = int(episode_length)

    def reset(self, rng: jax.Array) -> State:
        state = self.env.reset(rng)
        if "steps" not in state.info:
            raise ValueError("DesyncedFirstEpisodes needs brax's EpisodeWrapper inside (no 'steps' counter in info)")
        offsets = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, self.episode_length))(rng)
        return state.replace(info={**state.info, "steps": offsets.astype(state.info["steps"].dtype)})


def maybe_desync(env: Env, episode_length: int, desync: bool) -> Env:
    """`env` itself, or `env` wrapped in `DesyncedFirstEpisodes` when `desync` is set (train --desync-episodes)."""
    return DesyncedFirstEpisodes(env, episode_length) if desync else env

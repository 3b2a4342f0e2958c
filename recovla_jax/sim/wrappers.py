"""Batched training/evaluation environments built from brax's wrappers (episode, vmap, auto-reset).

Domain randomization uses our own `RandomizedVmapWrapper` instead of brax 0.14.2's
`DomainRandomizationVmapWrapper`: brax's swaps the model on the unwrapped env and then calls the
*unwrapped* env's reset/step, silently skipping the EpisodeWrapper beneath it (no time limit, no
truncation, no episode metrics under DR). Ours swaps the model the same way but calls the wrapped chain.

Auto-reset uses `ResamplingAutoResetWrapper`, brax's `AutoResetWrapper` extended in two ways brax lacks:
brax restarts a finished env from the one start state it drew at the very first reset, forever (so a
training run sees only `num_envs` distinct failure states however large the bank), and it restores only
the physics state and observation, not the episode's own info (failure mode, reward weights, latency).
Here `refresh_starts` redraws every env's next start (the trainer calls it once per iteration: one batched
reset per unroll), and the env's `episode_start_info` keys are restored with the start.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper
from brax.envs.wrappers import training as brax_training
from mujoco import mjx

from recovla_jax.sim.randomization import DomainRandomization, batched_models


@contextlib.contextmanager
def using_model(env: Env, model: mjx.Model):
    """Temporarily give the innermost env another (e.g. randomized, per-env traced) model."""
    base = env.unwrapped
    old = base.sys
    base.sys = model
    try:
        yield env
    finally:
        base.sys = old


class RandomizedVmapWrapper(Wrapper):
    """vmap over envs, each with its own randomized model, through the whole wrapped chain."""

    def __init__(self, env: Env, models: mjx.Model, in_axes: mjx.Model):
        super().__init__(env)
        self._models = models
        self._in_axes = in_axes

    def reset(self, rng: jax.Array) -> State:
        def one(model, key):
            with using_model(self.env, model) as env:
                return env.reset(key)

        return jax.vmap(one, in_axes=(self._in_axes, 0))(self._models, rng)

    def step(self, state: State, action: jax.Array) -> State:
        def one(model, s, a):
            with using_model(self.env, model) as env:
                return env.step(s, a)

        return jax.vmap(one, in_axes=(self._in_axes, 0, 0))(self._models, state, action)


def _where_done(done: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    if done.shape and done.shape[0] != x.shape[0]:
        return y
    if done.shape:
        done = jnp.reshape(done, [x.shape[0]] + [1] * (len(x.shape) - 1))
    return jnp.where(done, x, y)


class ResamplingAutoResetWrapper(brax_training.AutoResetWrapper):
    """Auto-reset to a per-env start that `refresh_starts` redraws; restores the start's episode info too."""

    def __init__(self, env: Env):
        super().__init__(env)
        self.start_info_keys: tuple[str, ...] = tuple(getattr(env.unwrapped, "episode_start_info", ()))

    def _remember(self, state: State, fresh: State) -> State:
        info = dict(state.info)
        info["first_pipeline_state"] = fresh.pipeline_state
        info["first_obs"] = fresh.obs
        info["first_info"] = {k: fresh.info[k] for k in self.start_info_keys}
        return state.replace(info=info)

    def reset(self, rng: jax.Array) -> State:
        state = self.env.reset(rng)
        return self._remember(state, state)

    def refresh_starts(self, state: State, rng: jax.Array) -> State:
        """Draw a new start (batched `rng` keys) for each env's next episode; the running episodes go on."""
        return self._remember(state, self.env.reset(rng))

    def step_with_final_obs(self, state: State, action: jax.Array) -> tuple[State, jax.Array]:
        """Step; finished envs restart from their stored start. Also returns the pre-reset observation
        (what the value bootstrap of a truncated episode needs)."""
        if "steps" in state.info:
            steps = jnp.where(state.done, jnp.zeros_like(state.info["steps"]), state.info["steps"])
            state.info.update(steps=steps)
        state = state.replace(done=jnp.zeros_like(state.done))
        state = self.env.step(state, action)
        final_obs = state.obs
        done = state.done
        where = lambda x, y: _where_done(done, x, y)  # noqa: E731
        pipeline_state = jax.tree.map(where, state.info["first_pipeline_state"], state.pipeline_state)
        obs = jax.tree.map(where, state.info["first_obs"], state.obs)
        info = dict(state.info)
        for k in self.start_info_keys:
            info[k] = jax.tree.map(where, state.info["first_info"][k], state.info[k])
        return state.replace(pipeline_state=pipeline_state, obs=obs, info=info), final_obs

    def step(self, state: State, action: jax.Array) -> State:
        return self.step_with_final_obs(state, action)[0]


def wrap_batched(
    env: Env,
    num_envs: int,
    episode_length: int,
    rng: jax.Array | None = None,
    randomization: DomainRandomization | None = None,
    auto_reset: bool = True,
) -> Env:
    """Episode limits + vmap over `num_envs` (with per-env randomized models when `randomization` is set)."""
    env = brax_training.EpisodeWrapper(env, episode_length, action_repeat=1)
    if randomization is not None:
        if rng is None:
            raise ValueError("domain randomization needs an rng key")
        models, in_axes = batched_models(env.unwrapped.sys, rng, num_envs, randomization)
        env = RandomizedVmapWrapper(env, models, in_axes)
    else:
        env = brax_training.VmapWrapper(env)
    if auto_reset:
        env = ResamplingAutoResetWrapper(env)
    return env

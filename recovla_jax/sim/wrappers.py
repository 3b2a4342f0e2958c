"""Batched training/evaluation environments built from brax's wrappers (episode, vmap, auto-reset).

Domain randomization uses our own `RandomizedVmapWrapper` instead of brax 0.14.2's
`DomainRandomizationVmapWrapper`: brax's swaps the model on the unwrapped env and then calls the
*unwrapped* env's reset/step, silently skipping the EpisodeWrapper beneath it (no time limit, no
truncation, no episode metrics under DR). Ours swaps the model the same way but calls the wrapped chain.
"""

from __future__ import annotations

import contextlib

import jax
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
        env = brax_training.AutoResetWrapper(env)
    return env

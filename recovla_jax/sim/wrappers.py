"""Batched training/evaluation environments built from brax's wrappers (episode, DR-vmap, auto-reset)."""

from __future__ import annotations

import functools

import jax
from brax.envs.base import Env
from brax.envs.wrappers import training as brax_training

from recovla_jax.sim.randomization import DomainRandomization, batched_models


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
        fn = functools.partial(_randomize, rng=rng, num_envs=num_envs, cfg=randomization)
        env = brax_training.DomainRandomizationVmapWrapper(env, fn)
    else:
        env = brax_training.VmapWrapper(env)
    if auto_reset:
        env = brax_training.AutoResetWrapper(env)
    return env


def _randomize(sys, rng, num_envs, cfg):
    return batched_models(sys, rng, num_envs, cfg)

"""Compile a reward mask (component name -> weight) into one jitted reward function.

The mask is data, not code: it becomes a dense weight vector that the reward function takes as an array
input (from `state.info["reward_weights"]`), so a new VLM answer never recompiles anything, and envs in
one batch may carry different masks.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from recovla_jax.rewards.library import component_names, reward_terms
from recovla_jax.tasks.base import Task


class RewardMaskError(ValueError):
    """A reward mask that cannot be compiled; the message names the valid components."""


# The largest weight a mask may give one component. Every shipped mask stays at or under 15 (stack's success bonus);
# a VLM's 1e30 would drown every other term, and 1e39 overflows float32 to inf and turns PPO's rewards into NaN.
MAX_REWARD_WEIGHT = 100.0


def mask_to_weights(task: Task, mask: Mapping[str, float]) -> np.ndarray:
    """Validate a mask against the task's components and return the dense weight vector."""
    names = component_names(task)
    valid = ", ".join(names)
    if not mask:
        raise RewardMaskError(f"empty reward mask for task {task.name!r}; valid components: {valid}")
    unknown = sorted(set(mask) - set(names))
    if unknown:
        raise RewardMaskError(f"unknown reward component(s) {unknown} for task {task.name!r}; valid components: {valid}")
    weights = np.zeros(len(names), np.float32)
    for name, w in mask.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise RewardMaskError(f"weight of {name!r} must be a number, got {w!r}") from None
        if not math.isfinite(w) or not 0 <= w <= MAX_REWARD_WEIGHT:
            raise RewardMaskError(f"weight of {name!r} must be in [0, {MAX_REWARD_WEIGHT:g}], got {w}; "
                                  f"valid components: {valid}")
        weights[names.index(name)] = w
    if not weights.any():
        raise RewardMaskError(f"reward mask for task {task.name!r} selects no component (all weights 0)")
    return weights


def weights_to_mask(task: Task, weights: np.ndarray) -> dict[str, float]:
    return {n: float(w) for n, w in zip(component_names(task), np.asarray(weights)) if w != 0}


def compile_reward(task: Task, potential_discount: float = 1.0):
    """reward_fn(model, prev, data, action, info) -> (sum_i w_i * term_i, raw terms) with w from info; potential terms
    pay `potential_discount` * Phi(s') - Phi(s) (`rewards.library.reward_terms`)."""
    n = len(component_names(task))

    def reward_fn(model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray, info: dict):
        terms = reward_terms(task, model, prev, data, action, info, potential_discount)
        weights = info.get("reward_weights", jnp.ones(n))
        reward = jnp.dot(weights, jnp.stack(list(terms.values())))
        return reward, terms

    return reward_fn

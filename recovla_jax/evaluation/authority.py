"""Residual authority: can a residual of scale alpha reproduce the scripted expert's recovery at all?

The expert-guided residual r = clip((expert - base) / alpha, -1, 1) puts the executed action as close to
the expert's as a residual of scale alpha can, at every step. Its success from failure-bank states
separates "no residual of this scale can recover here" from "PPO did not learn it": a mode where the
guided residual succeeds but the trained one does not is a learning problem (budget, exploration, reward),
not an authority problem. The projection is greedy, so a low guided rate is a hint, not a proof: a learned
residual may plan around the bound (the drawer's trained missed_handle residual beats its alpha-1 guide).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.evaluation.rollout import rollout_success
from recovla_jax.training.residual_env import ResidualEnv

def expert_guided_raw(env: ResidualEnv, obs: jnp.ndarray, expert: jnp.ndarray) -> jnp.ndarray:
    """The pre-tanh residual whose executed action is the expert's, projected onto base +- alpha."""
    return jnp.arctanh(jnp.vectorize(env.expert_unit_target, signature="(o),(a)->(a)")(obs, expert))


def expert_guided_rollout(env: ResidualEnv, steps: int) -> Callable[[jnp.ndarray, jax.Array], jnp.ndarray]:
    """A jitted (bank indices, key) -> per-state success of the expert-guided residual, reusable across
    index sets of one shape (one compile serves every failure mode of the env's bank).

    The env's own start jitter, observation noise and latency apply, as in training. The expert reads
    privileged simulator state; the base reads the (noisy) observation, as always.
    """
    task = env.task

    def guided(obs: jnp.ndarray, priv: dict, _key: jax.Array) -> jnp.ndarray:
        return expert_guided_raw(env, obs, jax.vmap(task.expert_action)(priv))

    @jax.jit
    def rollout(indices: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        start = jax.vmap(env.reset_to)(indices, jax.random.split(key, indices.shape[0]))
        return rollout_success(env, guided, start, steps, key)["success"]

    return rollout


def expert_guided_success(env: ResidualEnv, indices: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    """Per-state success (bool array) of the expert-guided residual from bank states `indices`."""
    rollout = expert_guided_rollout(env, steps)
    return np.asarray(rollout(jnp.asarray(indices), jax.random.PRNGKey(seed)))

"""Batched, jitted rollouts that report whether each episode ever reached success."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from brax.envs.base import State

from recovla_jax.sim.env import TaskEnv

# policy(obs, privileged, rng) -> action; batched over envs.
PolicyFn = Callable[[jnp.ndarray, dict, jax.Array], jnp.ndarray]


def rollout_success(env: TaskEnv, policy: PolicyFn, start: State, num_steps: int, rng: jax.Array) -> dict:
    """Run `num_steps` control steps from batched `start` (no auto-reset) and report per-env outcomes.

    Returns `success` (ever reached the success predicate), `steps_to_success` and `nan_resets`.
    An env is frozen at its first success (its later actions are ignored), like a terminated episode.
    """
    priv_fn = jax.vmap(env.task.privileged, in_axes=(None, 0))
    step_fn = jax.vmap(env.step)
    n = start.obs.shape[0]

    def body(carry, t):
        state, succeeded, first, nan, key = carry
        key, sub = jax.random.split(key)
        priv = priv_fn(env.sys, state.pipeline_state)
        action = policy(state.obs, priv, sub)
        nxt = step_fn(state, action)
        frozen = succeeded
        nxt = jax.tree.map(lambda old, new: _where_rows(frozen, old, new), state, nxt)
        now = nxt.metrics["success"] > 0
        first = jnp.where(now & ~succeeded, t + 1, first)
        nan = nan + nxt.metrics["nan_reset"] * (~frozen)
        return (nxt, succeeded | now, first, nan, key), None

    init = (start, jnp.zeros(n, bool), jnp.full(n, -1), jnp.zeros(n), rng)
    (final, succeeded, first, nan, _), _ = jax.lax.scan(body, init, jnp.arange(num_steps))
    return {"success": succeeded, "steps_to_success": first, "nan_resets": nan, "final_state": final}


def _where_rows(mask: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    if a.ndim == 0 or a.shape[0] != mask.shape[0]:
        return b
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def run_until_success(env: TaskEnv, state: State, action_fn: Callable[[jnp.ndarray], jnp.ndarray], num_steps: int) -> jnp.ndarray:
    """One (unbatched) episode of `num_steps` control steps from `state`: did it ever reach success?

    The env is frozen at its first success, like a terminated episode. Call it inside `using_model` to
    run on a per-env (randomized) model, and vmap it over states.
    """

    def body(carry, _):
        s, done = carry
        nxt = env.step(s, action_fn(s.obs))
        nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), s, nxt)
        return (nxt, done | (nxt.metrics["success"] > 0)), None

    (_, done), _ = jax.lax.scan(body, (state, jnp.zeros((), bool)), None, length=num_steps)
    return done

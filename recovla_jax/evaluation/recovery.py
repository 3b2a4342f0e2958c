"""Recovery evaluation on held-out failure states: base alone vs. base + residual, same conditions.

Each held-out state is started once (gripper jittered by the env's start noise) under its own
domain-randomized model drawn with a seed disjoint from training's; the base-alone arm runs the same env
with a zero residual, so the only difference between arms is the residual policy.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.evaluation.stats import wilson
from recovla_jax.sim.randomization import DomainRandomization, batched_models
from recovla_jax.sim.wrappers import using_model
from recovla_jax.training.residual_env import ResidualEnv


def evaluate_recovery(
    env: ResidualEnv,
    residual_actor: Callable[[jnp.ndarray], jnp.ndarray] | None,
    num_steps: int,
    seed: int,
    randomization: DomainRandomization | None,
) -> dict:
    """Success (Wilson CI, n) from every start state of `env` with the deterministic residual actor.

    `residual_actor=None` evaluates the frozen base policy alone (residual identically zero).
    """
    n = env.num_starts
    key = jax.random.PRNGKey(seed)
    k_models, k_starts = jax.random.split(key)
    if randomization is not None:
        models, in_axes = batched_models(env.sys, k_models, n, randomization)
    else:
        models, in_axes = env.sys, None
    actor = residual_actor or (lambda obs: jnp.zeros(obs.shape[:-1] + (7,)))

    def one(model, index, k):
        with using_model(env, model):
            state = env.reset_to(index, k)

            def body(carry, _):
                s, done = carry
                nxt = env.step(s, actor(s.obs))
                done_now = done | (nxt.metrics["success"] > 0)
                nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), s, nxt)
                return (nxt, done_now), None

            (_, done), _ = jax.lax.scan(body, (state, jnp.zeros((), bool)), None, length=num_steps)
        return done

    ok = jax.jit(jax.vmap(one, in_axes=(in_axes, 0, 0)))(models, jnp.arange(n), jax.random.split(k_starts, n))
    ok = np.asarray(ok)
    return wilson(int(ok.sum()), int(ok.size)).as_dict()

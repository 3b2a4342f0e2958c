"""The reward component library: task terms plus terms shared by every task.

Every term is a raw, documented quantity with a known range; a reward is a weighted sum of them
(the MuJoCo Playground habit: a dict of raw terms times scales). Each term is logged on its own during
training, so a user sees which one drives learning.
"""

from __future__ import annotations

import jax.numpy as jnp
from mujoco import mjx

from recovla_jax.tasks.base import Task

SHARED_COMPONENTS: dict[str, str] = {
    "success": "{0,1} task success predicate",
    "action_magnitude": "[-1,0] -|a|^2 / 7 of the executed action",
    "residual_magnitude": "[-1,0] -|r|^2 / 7 of the residual correction (0 without a residual)",
}


def component_names(task: Task) -> tuple[str, ...]:
    """The fixed order of a task's components: the weight vector's axis."""
    return tuple(task.reward_component_descriptions) + tuple(SHARED_COMPONENTS)


def component_descriptions(task: Task) -> dict[str, str]:
    return {**task.reward_component_descriptions, **SHARED_COMPONENTS}


def raw_terms(task: Task, model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray,
              info: dict) -> dict[str, jnp.ndarray]:
    """Every component's raw value at `data` (potentials as Phi(data)), in `component_names` order."""
    terms = dict(task.reward_terms(model, prev, data, action))
    residual = info.get("residual", jnp.zeros_like(action))
    terms["success"] = task.success(model, data).astype(jnp.float32)
    terms["action_magnitude"] = -jnp.sum(action**2) / action.shape[-1]
    terms["residual_magnitude"] = -jnp.sum(residual**2) / residual.shape[-1]
    return {name: jnp.asarray(terms[name], jnp.float32) for name in component_names(task)}


def reward_terms(task: Task, model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray,
                 info: dict, potential_discount: float = 1.0) -> dict[str, jnp.ndarray]:
    """Each component's contribution to this step's reward, in `component_names` order.

    Potential components (`task.potential_components`) contribute discount * Phi(data) - Phi(prev); the rest their
    raw per-step value. The success term is paid once: success ends the episode. With `potential_discount` 1 (every
    run before session 30) the shaping sums to Phi's change over an episode but, under PPO's discount gamma, leaves
    (1 - gamma) Phi(data) per step: a bonus for lingering in high-Phi states. With gamma it is Ng et al.'s
    potential-based shaping, which leaves the optimal policy of the discounted task unchanged.
    """
    now = raw_terms(task, model, prev, data, action, info)
    potentials = tuple(task.potential_components)
    if not potentials:
        return now
    before = task.reward_terms(model, prev, prev, action)
    return {name: potential_discount * now[name] - jnp.asarray(before[name], jnp.float32) if name in potentials else now[name]
            for name in now}

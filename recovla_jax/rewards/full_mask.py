"""The full, unmasked task reward: what the baselines train on instead of a diagnosed mask.

`full_reward_mask(task)` gives every task-specific reward component (`task.reward_component_descriptions`)
weight 1 and keeps the shared success bonus and residual-magnitude penalty at the weight the task's
oracle masks give them (the same for every mode; differing weights are an error). `action_magnitude` is
left out (weight 0), as in every oracle mask: it is a regulariser, not part of the task.

It serves two baselines of the results table: "residual on the full unmasked reward" (ResidualEnv with
these weights for every mode) and the fine-tuned base (`training.finetune_env`; it has no residual, so its
residual-magnitude term is 0 whatever its weight).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recovla_jax.rewards.compiler import RewardMaskError, mask_to_weights
from recovla_jax.tasks.base import Task

# Shared components whose weight is taken from the oracle masks (all task components get 1).
FROM_ORACLE = ("success", "residual_magnitude")


def full_reward_mask(task: Task, residual_penalty: float | None = None,
                     overrides: Sequence[tuple[str, float]] = ()) -> dict[str, float]:
    """{task component: 1.0, success: oracle weight, residual_magnitude: oracle weight (or `residual_penalty`)}, then
    a run's `--reward-weight` `overrides` (weight 0 removes the component), as its masks got them."""
    if not task.reward_component_descriptions:
        raise RewardMaskError(f"task {task.name!r} defines no reward components")
    mask = {name: 1.0 for name in task.reward_component_descriptions}
    for shared in FROM_ORACLE:
        weights = sorted({float(m[shared]) for m in task.oracle_masks.values() if shared in m})
        if len(weights) > 1:
            raise RewardMaskError(f"the oracle masks of task {task.name!r} disagree on the {shared!r} weight: {weights}")
        if weights:
            mask[shared] = weights[0]
    if "success" not in mask:
        raise RewardMaskError(f"task {task.name!r}: no oracle mask gives a 'success' weight to copy")
    if residual_penalty is not None:
        mask["residual_magnitude"] = float(residual_penalty)
    for name, weight in overrides:
        if float(weight) == 0.0:
            mask.pop(name, None)
        else:
            mask[name] = float(weight)
    mask_to_weights(task, mask)  # validates names and weights
    return mask


def full_reward_weights(task: Task, residual_penalty: float | None = None,
                        overrides: Sequence[tuple[str, float]] = ()) -> np.ndarray:
    """The full mask as ResidualEnv's `weights_per_mode`: the same dense row for every failure mode."""
    row = mask_to_weights(task, full_reward_mask(task, residual_penalty, overrides))
    return np.tile(row, (len(task.failure_modes), 1)).astype(np.float32)

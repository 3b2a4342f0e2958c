"""RecoveryDescriptor: what a selector (VLM, rules, oracle, cache) says about a failure.

The VLM selects among named failure modes, stages and reward components; it never writes actions or
reward code. `validate_for(task)` checks every name against the task and returns the dense weights.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.rewards.compiler import RewardMaskError, mask_to_weights
from recovla_jax.tasks.base import Task


class DescriptorError(ValueError):
    """A descriptor that names something the task does not have."""


class RecoveryDescriptor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    failure_mode: str
    recovery_stage: str
    reward_mask: dict[str, float] = Field(description="reward component name -> non-negative weight")
    rationale: str = ""
    source: str = Field(description="which selector produced it: gemini, rules, oracle, cached, wrong-mask ...")

    def validate_for(self, task: Task) -> np.ndarray:
        """Check names against `task`; return the dense reward weights."""
        if self.task != task.name:
            raise DescriptorError(f"descriptor is for task {self.task!r}, not {task.name!r}")
        if self.failure_mode not in task.failure_modes:
            raise DescriptorError(f"unknown failure mode {self.failure_mode!r}; valid: {', '.join(task.failure_modes)}")
        if self.recovery_stage not in task.recovery_stages:
            raise DescriptorError(f"unknown recovery stage {self.recovery_stage!r}; valid: {', '.join(task.recovery_stages)}")
        try:
            return mask_to_weights(task, self.reward_mask)
        except RewardMaskError as err:
            raise DescriptorError(str(err)) from None


def oracle_descriptor(task: Task, mode: str, stage: str | None = None) -> RecoveryDescriptor:
    """The privileged-label descriptor of a failure mode (upper bound; no VLM involved)."""
    return RecoveryDescriptor(
        task=task.name,
        failure_mode=mode,
        recovery_stage=stage or task.recovery_stages[0],
        reward_mask=dict(task.oracle_masks[mode]),
        rationale=f"oracle: privileged simulator label {mode!r}",
        source="oracle",
    )

"""Rules selector: failure mode and stage from the observable task observation vector, offline.

Why: a diagnosis that needs no network or API key is the fallback for every VLM answer that fails
validation, and the default selector when no key is set. The decision rules live with the task
(`task.rules_classify(obs)`), so a new task plugs in by implementing that one hook; the reward mask is the
task's mask table for the predicted mode (task data, like the prompt's component list). It reads only
`observation.obs`, never the privileged label.
"""

from __future__ import annotations

import numpy as np

from recovla_jax.diagnosis.descriptor import RecoveryDescriptor
from recovla_jax.diagnosis.types import DiagnosisRecord, DiagnosisResult, FailureObservation, Stopwatch
from recovla_jax.tasks.base import Task


class RulesUnavailableError(RuntimeError):
    """The observation lacks the vector the rules need, or the task has no rules hook."""


class RulesSelector:
    """Thresholds on observable quantities (per task), mapped to the task's mask for the predicted mode."""

    name = "rules"
    needs_images = False

    def diagnose(self, task: Task, observation: FailureObservation) -> DiagnosisResult:
        clock = Stopwatch()
        if observation.obs is None:
            raise RulesUnavailableError("the rules selector needs the task observation vector (observation.obs)")
        obs = np.asarray(observation.obs, np.float64)
        if obs.shape != (task.observation_size,):
            raise RulesUnavailableError(f"observation has shape {obs.shape}; task {task.name!r} observes "
                                        f"({task.observation_size},)")
        mode, stage, reason = task.rules_classify(obs)
        descriptor = RecoveryDescriptor(task=task.name, failure_mode=mode, recovery_stage=stage,
                                        reward_mask=dict(task.oracle_masks[mode]), rationale=f"rules: {reason}",
                                        source=self.name)
        record = DiagnosisRecord(selector=self.name, state_id=observation.state_id, latency_s=clock.elapsed())
        return DiagnosisResult(descriptor=descriptor, record=record)

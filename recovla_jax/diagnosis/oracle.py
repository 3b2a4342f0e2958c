"""Oracle selector: the simulator's privileged label (the upper bound every other selector is scored against)."""

from __future__ import annotations

from recovla_jax.diagnosis.descriptor import oracle_descriptor
from recovla_jax.diagnosis.types import DiagnosisRecord, DiagnosisResult, FailureObservation, Stopwatch
from recovla_jax.tasks.base import Task


class OracleSelector:
    """Answers with `oracle_descriptor(label mode, label stage)`; needs `observation.privileged`."""

    name = "oracle"
    needs_images = False

    def diagnose(self, task: Task, observation: FailureObservation) -> DiagnosisResult:
        clock = Stopwatch()
        if observation.privileged is None:
            raise ValueError("the oracle selector needs the privileged label (observation.privileged)")
        label = observation.privileged
        descriptor = oracle_descriptor(task, label.failure_mode, label.recovery_stage)
        record = DiagnosisRecord(selector=self.name, state_id=observation.state_id, latency_s=clock.elapsed())
        return DiagnosisResult(descriptor=descriptor, record=record)

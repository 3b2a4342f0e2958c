"""What every selector takes and returns: a failure observation in, a descriptor plus a record out.

Why one shape for all backends: the pipeline, the accuracy report and the robot runtime call any selector
(Gemini, rules, oracle, cache) the same way, and every answer carries an auditable record (raw VLM text,
validation errors, whether a fallback answered, latency, cache hit), so a bad VLM answer is visible in
the run directory instead of silently becoming a reward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.diagnosis.descriptor import RecoveryDescriptor
from recovla_jax.tasks.base import Task


@dataclass(frozen=True)
class PrivilegedLabel:
    """Simulator ground truth of a failure state. Only the oracle selector may read it."""

    failure_mode: str
    recovery_stage: str


@dataclass(frozen=True)
class FailureObservation:
    """What a selector may look at: camera frames (name -> PNG bytes) and the task's observation vector.

    `obs` holds only the observable vector a policy sees (`task.obs_fields`), never labels; `privileged`
    is the ground truth, present for evaluation and read by the oracle alone.
    """

    images: dict[str, bytes]
    obs: np.ndarray | None = None
    privileged: PrivilegedLabel | None = None
    state_id: str | None = None


class DiagnosisRecord(BaseModel):
    """How an answer came about (JSON-serializable; holds no credentials)."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field(description="the selector asked: gemini, cached:gemini, rules, oracle")
    state_id: str | None = None
    model: str | None = Field(None, description="VLM model name, for VLM selectors")
    raw_text: str | None = Field(None, description="the VLM's raw answer text, verbatim")
    errors: list[str] = Field(default_factory=list, description="transport and validation errors, in order")
    fallback_used: bool = False
    fallback: str | None = Field(None, description="the selector that answered instead, when fallback_used")
    attempts: int = 0
    latency_s: float = 0.0
    cache_hit: bool = False
    cache_key: str | None = None


class DiagnosisResult(BaseModel):
    """A validated descriptor plus the record of how it was produced."""

    model_config = ConfigDict(extra="forbid")

    descriptor: RecoveryDescriptor
    record: DiagnosisRecord


@runtime_checkable
class Selector(Protocol):
    """A diagnosis backend. `diagnose` returns a descriptor valid for `task`; a bad VLM answer never raises."""

    name: str
    needs_images: bool

    def diagnose(self, task: Task, observation: FailureObservation) -> DiagnosisResult: ...


@dataclass
class Stopwatch:
    """Wall time since construction, for `DiagnosisRecord.latency_s`."""

    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def answer_with_fallback(task: Task, observation: FailureObservation, fallback: Selector,
                         record: DiagnosisRecord, clock: Stopwatch) -> DiagnosisResult:
    """Answer with `fallback`, keeping the failed selector's record (errors, raw text) and marking the fallback."""
    fb = fallback.diagnose(task, observation)
    record = record.model_copy(update={
        "fallback_used": True,
        "fallback": fb.record.selector,
        "errors": record.errors + [f"fallback {fb.record.selector}: {e}" for e in fb.record.errors],
        "latency_s": clock.elapsed(),
    })
    return DiagnosisResult(descriptor=fb.descriptor, record=record)

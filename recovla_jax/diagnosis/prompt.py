"""The VLM's question and answer format, built from task data (modes, stages, reward components).

Why a list of {component, weight} items instead of a dict: Gemini's response schemas describe objects
with fixed properties and do not handle free-form maps well. The schema sent to the model constrains
names to the task's enums (fewer invalid answers); the answer is parsed with a loose model and checked
by `RecoveryDescriptor.validate_for`, so an invalid name still yields an error that names it.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from recovla_jax.diagnosis.descriptor import DescriptorError, RecoveryDescriptor
from recovla_jax.rewards.compiler import MAX_REWARD_WEIGHT
from recovla_jax.rewards.library import component_descriptions, component_names
from recovla_jax.tasks.base import Task


class MaskItem(BaseModel):
    component: str
    weight: float


class VLMAnswer(BaseModel):
    """The loose parse of a VLM answer (names are checked against the task afterwards)."""

    model_config = ConfigDict(extra="ignore")

    failure_mode: str
    recovery_stage: str
    reward_mask: list[MaskItem]
    rationale: str = ""


class AnswerError(ValueError):
    """A VLM answer that cannot become a valid descriptor; the message says why."""


def answer_schema(task: Task) -> type[BaseModel]:
    """The response schema sent to the VLM: the answer's shape with the task's names as enums."""
    item = create_model(
        "RewardMaskItem",
        component=(Literal[tuple(component_names(task))], Field(description="a reward component name")),
        weight=(float, Field(ge=0.0, le=MAX_REWARD_WEIGHT,
                             description="non-negative weight; leave out components you do not want")),
    )
    return create_model(
        "RecoveryAnswer",
        failure_mode=(Literal[tuple(task.failure_modes)], Field(description="which failure the images show")),
        recovery_stage=(Literal[tuple(task.recovery_stages)], Field(description="where recovery must start")),
        reward_mask=(list[item], Field(description="reward components to optimise during recovery, with weights")),
        rationale=(str, Field(description="one or two sentences: what in the images supports the choice")),
    )


def build_prompt(task: Task, cameras: list[str], obs: np.ndarray | None = None) -> str:
    """The instruction text: task, failure modes, stages, reward components, answer rules.

    `obs` (optional) adds the robot's observation vector by field name, for a VLM that may read numbers.
    """
    lines = [
        "You are the failure-diagnosis module of a robot manipulation system.",
        f"Task instruction given to the robot: \"{task.instruction}\".",
        "The robot's policy has failed. The images show the current scene from these cameras: "
        + ", ".join(cameras) + ".",
        "",
        "Failure modes (choose exactly one):",
        *[f"- {m}: {task.failure_descriptions.get(m, '')}" for m in task.failure_modes],
        "",
        "Recovery stages, in task order (choose the stage where the recovery must begin):",
        *[f"- {s}" for s in task.recovery_stages],
        "",
        "Reward components (name: range and meaning):",
        *[f"- {n}: {d}" for n, d in component_descriptions(task).items()],
        "",
        "Select a reward mask for training the recovery policy: a list of {component, weight} items with "
        "weights >= 0 (typically 0.1 to 5). Include only components that help this recovery; include the "
        "task success term. Use only the names listed above.",
    ]
    if obs is not None:
        lines += ["", "Robot observation (field: values):"]
        start = 0
        for f in task.obs_fields:
            vals = ", ".join(f"{v:.3f}" for v in np.asarray(obs[start:start + f.size]).ravel())
            lines.append(f"- {f.name} [{f.unit or '-'}]: {vals}  ({f.description})")
            start += f.size
    lines += ["", "Answer with JSON only, matching the response schema: failure_mode, recovery_stage, "
              "reward_mask, rationale."]
    return "\n".join(lines)


def parse_answer(task: Task, text: str | None, source: str) -> RecoveryDescriptor:
    """Turn raw VLM text into a descriptor valid for `task`, or raise AnswerError naming the problem."""
    if text is None or not text.strip():
        raise AnswerError("empty answer")
    body = text.strip()
    if body.startswith("```"):  # tolerate a fenced block
        body = body.strip("`")
        body = body[4:] if body.lower().startswith("json") else body
    try:
        answer = VLMAnswer.model_validate(json.loads(body))
    except json.JSONDecodeError as err:
        raise AnswerError(f"unparseable JSON: {err}") from None
    except ValidationError as err:
        raise AnswerError(f"answer does not match the schema: {err.errors(include_url=False)}") from None
    mask: dict[str, float] = {}
    for item in answer.reward_mask:
        if item.component in mask:
            raise AnswerError(f"reward component {item.component!r} listed twice")
        if not math.isfinite(item.weight) or not 0 <= item.weight <= MAX_REWARD_WEIGHT:
            raise AnswerError(f"weight of {item.component!r} must be in [0, {MAX_REWARD_WEIGHT:g}], got {item.weight}")
        mask[item.component] = float(item.weight)
    descriptor = RecoveryDescriptor(task=task.name, failure_mode=answer.failure_mode,
                                    recovery_stage=answer.recovery_stage, reward_mask=mask,
                                    rationale=answer.rationale, source=source)
    try:
        descriptor.validate_for(task)
    except DescriptorError as err:
        raise AnswerError(str(err)) from None
    return descriptor

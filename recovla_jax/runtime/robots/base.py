"""The robot interface the runtime drives, and the observation it receives.

One protocol for every backend (the native MuJoCo proxy here; a real arm's driver later): reset,
get_observation, apply_action, close. Observations carry the robot's own timestamp so the runtime's
watchdog can refuse to act on stale data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Observation:
    """State vector in the manifest's observation layout, its timestamp (s, robot clock), optional images."""

    state: np.ndarray
    timestamp: float
    images: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class Robot(Protocol):
    control_dt: float

    def reset(self, start: dict[str, np.ndarray] | None = None) -> Observation:
        """Start an episode: from a saved physics state (failure bank) or, with None, a nominal start."""

    def get_observation(self) -> Observation: ...

    def apply_action(self, action: np.ndarray) -> None:
        """Execute one 7-D end-effector action for one control period."""

    def close(self) -> None: ...


@runtime_checkable
class BasePolicySource(Protocol):
    """Where base actions come from: an ONNX model, a served VLA (openpi), a scripted controller."""

    def reset(self) -> None: ...

    def act(self, obs: Observation) -> np.ndarray: ...

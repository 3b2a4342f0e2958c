"""Safety layer between the policies and the robot: every action passes through here.

In order: a non-finite base action means hold; a non-finite residual is dropped (base only); the
residual's L2 norm is capped at `max_residual_norm`; base + residual is clipped to the manifest's action
bounds; the translation part is limited so the commanded step cannot leave the workspace box (and
never pushes further out if already outside). Each intervention is reported by name, so the runtime
logs it. The watchdog turns stale, non-finite or future-stamped observations into a hold command.

What these limits do not cover, stated plainly:
- The exported cap is the largest residual the policies' own formula can give (max alpha x sqrt(7), since each
  component is alpha x tanh), so it only catches a model that breaks its formula; an operator's tighter limit is
  `SafetyConfig.from_manifest(manifest, max_residual_norm=...)` (`experiments.evaluate --max-residual-norm`).
- The box bounds the TCP by the commanded translation only. A rotation turns the gripper about its body, 7 cm from
  the TCP, so it moves the TCP by up to about 1 cm per step (0.08 rad per axis), and with action latency the
  limit is taken from a position one step old: keep the box that far inside what must not be reached.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.runtime.gripper import hold_action
from recovla_jax.runtime.manifest import ExportManifest


class SafetyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action_low: float = -1.0
    action_high: float = 1.0
    max_residual_norm: float = Field(1.0, gt=0)
    workspace_low: tuple[float, float, float] = (-1.0, -1.0, 0.0)
    workspace_high: tuple[float, float, float] = (1.0, 1.0, 1.0)
    workspace_slice: tuple[int, int] = (0, 3)  # observation floats holding the bounded position
    max_translation: float = Field(0.015, gt=0)
    stale_after_periods: float = Field(3.0, gt=0, description="observations older than N control periods are stale")

    @classmethod
    def from_manifest(cls, manifest: ExportManifest, **overrides) -> "SafetyConfig":
        s = manifest.safety
        sl = manifest.observation.index(s.workspace_field)
        kw = dict(
            action_low=manifest.action.low, action_high=manifest.action.high, max_residual_norm=s.max_residual_norm,
            workspace_low=tuple(s.workspace.low), workspace_high=tuple(s.workspace.high),
            workspace_slice=(sl.start, sl.stop), max_translation=manifest.action.max_translation,
        )
        kw.update(overrides)
        return cls(**kw)


class SafetyFilter:
    def __init__(self, cfg: SafetyConfig):
        self.cfg = cfg
        self.lo = np.asarray(cfg.workspace_low, float)
        self.hi = np.asarray(cfg.workspace_high, float)

    def hold(self, grip: float) -> np.ndarray:
        return hold_action(float(np.clip(grip, self.cfg.action_low, self.cfg.action_high)))

    def apply(self, state: np.ndarray, base: np.ndarray, residual: np.ndarray | None,
              hold_grip: float) -> tuple[np.ndarray, list[str]]:
        """(safe action, names of the interventions made)."""
        c, notes = self.cfg, []
        base = np.asarray(base, float)
        if base.shape != (7,) or not np.all(np.isfinite(base)):
            return self.hold(hold_grip), ["base_nonfinite_hold"]
        action = base.copy()
        if residual is not None:
            residual = np.asarray(residual, float)
            if residual.shape != base.shape or not np.all(np.isfinite(residual)):
                notes.append("residual_nonfinite_dropped")
            else:
                norm = float(np.linalg.norm(residual))
                if norm > c.max_residual_norm:
                    residual = residual * (c.max_residual_norm / norm)
                    notes.append("residual_norm_capped")
                action = action + residual
        action = np.clip(action, c.action_low, c.action_high)
        pos = np.asarray(state, float)[c.workspace_slice[0]:c.workspace_slice[1]]
        if np.all(np.isfinite(pos)):
            lo = np.minimum((self.lo - pos) / c.max_translation, 0.0)
            hi = np.maximum((self.hi - pos) / c.max_translation, 0.0)
            limited = np.clip(action[:3], lo, hi)
            if np.any(limited != action[:3]):
                notes.append("workspace_limited")
                action[:3] = limited
        return action, notes


class Watchdog:
    """Flags observations older than `stale_after_periods` control periods (or non-finite) as unusable."""

    def __init__(self, ctrl_dt: float, stale_after_periods: float):
        self.limit = ctrl_dt * stale_after_periods

    def check(self, state: np.ndarray, timestamp: float, now: float) -> str | None:
        """Reason the observation must not be acted on, or None. A timestamp more than the stale limit ahead of
        `now` is refused too: the robot's clock and the runtime's differ (e.g. wall-clock stamps against
        `time.monotonic`), and no age could then be trusted."""
        age = now - timestamp
        if not np.isfinite(age) or age > self.limit:
            return f"stale observation: age {age * 1e3:.1f} ms > {self.limit * 1e3:.1f} ms"
        if age < -self.limit:
            return (f"observation from the future: {-age * 1e3:.1f} ms ahead of the runtime's clock (limit "
                    f"{self.limit * 1e3:.1f} ms); give RecoveryRuntime the robot's clock")
        if not np.all(np.isfinite(state)):
            return "non-finite observation"
        return None

"""RecoveryRuntime: base policy by default, a recovery residual when a failure is diagnosed.

Each control step: watchdog (stale or non-finite observation -> hold, report) -> base action -> failure
monitor -> (base mode) maybe ask the selector and switch to the recovery policy of the diagnosed mode /
(recovery mode) hand back to the base on success or resumed progress, or, for a policy trained with
hand-back, as soon as the selector sees no failure; re-diagnose a stalled recovery ->
residual -> safety filter -> action. Every switch, diagnosis, safety intervention and watchdog hold is
an event (structured list, also sent to the `recovla.runtime` logger). Imports no JAX.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from recovla_jax.runtime.manifest import ExportManifest
from recovla_jax.runtime.monitor import FailureMonitor, MonitorConfig
from recovla_jax.runtime.onnx_policy import PolicyLibrary
from recovla_jax.runtime.robots.base import BasePolicySource, Observation
from recovla_jax.runtime.safety import SafetyConfig, SafetyFilter, Watchdog
from recovla_jax.runtime.selectors import Selector

logger = logging.getLogger("recovla.runtime")


@dataclass(frozen=True)
class RuntimeEvent:
    step: int
    time: float
    kind: str  # "switch" | "diagnosis" | "safety" | "watchdog"
    detail: dict

    def as_dict(self) -> dict:
        return asdict(self)


TIMING_WINDOW = 200_000  # most recent steps kept (bounded: a robot runs for hours)


@dataclass
class StepTimings:
    """Wall-clock seconds spent per step in the base policy, the residual policy and the whole step."""

    base: deque = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))
    residual: deque = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))
    step: deque = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))


class RecoveryRuntime:
    """Drives one robot episode at the control rate; see the module docstring for the step order."""

    def __init__(
        self,
        manifest: ExportManifest,
        base: BasePolicySource,
        library: PolicyLibrary | Mapping[str, Any],
        selector: Selector,
        monitor: MonitorConfig | None = None,
        safety: SafetyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ):
        self.manifest = manifest
        self.base = base
        self.library = library
        self.selector = selector
        self.enabled = enabled
        self.clock = clock
        self.safety = SafetyFilter(safety or SafetyConfig.from_manifest(manifest))
        self.watchdog = Watchdog(manifest.control.ctrl_dt, self.safety.cfg.stale_after_periods)
        self.monitor = FailureMonitor(monitor or MonitorConfig(), manifest.progress.success_threshold)
        self.progress_index = manifest.observation.index(manifest.progress.field).start
        self.timings = StepTimings()
        self.reset()

    # ------------------------------------------------------------------------------------------ state
    def reset(self, grip: float | None = None) -> None:
        """Start an episode. `grip` is the robot's current gripper command (-1 open .. +1 closed): what a hold keeps
        before the runtime has commanded one. Unknown (None), such a hold opens the gripper, and says so: a failure
        state may start with the object in the jaws."""
        self.t = 0
        self.mode: str | None = None
        # the driving recovery policy's manifest entry (hand_back, hand_back_delay, recovery_stall_steps, name)
        self.entry: Any = None
        self.events: list[RuntimeEvent] = []
        self.last_grip = -1.0 if grip is None else float(grip)
        self.grip_known = grip is not None
        self.stale = False
        self.pending: tuple[str, int, int, str] | None = None  # (mode, confirmations, next check step, trigger)
        self.clear_steps = 0
        self.counts = {"recovery_steps": 0, "watchdog_holds": 0, "safety_interventions": 0}
        self.monitor.reset()
        self.base.reset()

    def _warn_if_grip_unknown(self) -> None:
        if not self.grip_known:
            self._event("safety", logging.WARNING, "hold before any command with the gripper command unknown: opening "
                        "(pass the robot's current grip to reset)", interventions=["hold_grip_unknown"], mode=self.mode)
            self.grip_known = True  # once per episode

    def _event(self, kind: str, level: int, msg: str, **detail) -> None:
        self.events.append(RuntimeEvent(self.t, self.clock(), kind, detail))
        logger.log(level, "step %d %s: %s", self.t, kind, msg)

    def _switch(self, to: str | None, reason: str) -> None:
        frm = self.mode
        self.mode = to
        self.pending = None
        self.clear_steps = 0  # consecutive steps a hand-back policy's selector checks saw no failure
        self.entry = self.library[to].entry if to is not None else None
        if to is not None:
            self.monitor.begin_recovery(getattr(self.entry, "recovery_stall_steps", None))
        else:
            self.monitor.end_recovery()
        policy = self.entry.name if self.entry is not None else None
        self._event("switch", logging.INFO, f"{frm or 'base'} -> {to or 'base'} ({reason})",
                    frm=frm, to=to, policy=policy, reason=reason)

    def _diagnose(self, obs: Observation, trigger: str) -> str | None:
        selected = self.selector.select(obs)
        usable = selected if selected in self.library else None
        self._event("diagnosis", logging.DEBUG, f"trigger={trigger} selector={self.selector.name} -> {selected}",
                    trigger=trigger, selector=self.selector.name, selected=selected, has_policy=usable is not None)
        return usable

    def _base_mode_diagnosis(self, obs: Observation) -> None:
        """Trigger -> selector; switch once the same mode was diagnosed `confirm_checks` times in a row."""
        cfg = self.monitor.cfg
        trigger = self.monitor.diagnosis_trigger()
        if self.pending is not None and self.t >= self.pending[2]:
            mode = self._diagnose(obs, "confirm")
            cand, n, _, first = self.pending
            self.pending = None
            if mode is not None and mode == cand:
                n += 1
                if n >= self._checks_needed(first):
                    self._switch(mode, f"{first}: selector {self.selector.name} diagnosed {mode} ({n}x)")
                    return
                self.pending = (mode, n, self.t + cfg.confirm_every, first)
            elif mode is not None:
                self.pending = (mode, 1, self.t + cfg.confirm_every, "confirm")
            return
        if trigger is None or self.pending is not None or self.monitor.succeeded:
            return
        mode = self._diagnose(obs, trigger)
        if mode is None:
            return
        if self._checks_needed(trigger) <= 1:
            self._switch(mode, f"{trigger}: selector {self.selector.name} diagnosed {mode}")
        else:
            self.pending = (mode, 1, self.t + cfg.confirm_every, trigger)

    def _checks_needed(self, trigger: str) -> int:
        """Agreeing diagnoses before a switch: the start trigger has its own (smaller) count, see MonitorConfig."""
        cfg = self.monitor.cfg
        return cfg.start_confirm_checks if trigger == "start" else cfg.confirm_checks

    def _hand_back_due(self) -> bool:
        """A hand-back policy is driving (manifest `hand_back`) and its periodic selector check is due. It is
        released once the checks have seen no failure for more than its `hand_back_delay` steps, as in training."""
        if not getattr(self.entry, "hand_back", False) or self.monitor.succeeded:
            return False
        return (self.monitor.t - (self.monitor.recovery_start_t or 0)) % self.monitor.cfg.hand_back_check_every == 0

    # ------------------------------------------------------------------------------------------ step
    def step(self, obs: Observation) -> np.ndarray:
        """The 7-D action to execute for this control period."""
        t0 = time.perf_counter()
        self.t += 1
        problem = self.watchdog.check(obs.state, obs.timestamp, self.clock())
        if problem is not None:
            self.counts["watchdog_holds"] += 1
            if not self.stale:
                self._event("watchdog", logging.WARNING, f"hold position: {problem}", reason=problem)
            self.stale = True
            self._warn_if_grip_unknown()
            return self.safety.hold(self.last_grip)
        if self.stale:
            self._event("watchdog", logging.WARNING, "fresh observation: control resumes", reason="recovered")
            self.stale = False

        tb = time.perf_counter()
        base_action = np.asarray(self.base.act(obs), float)
        self.timings.base.append(time.perf_counter() - tb)
        self.monitor.update(float(obs.state[self.progress_index]))

        if self.enabled:
            if self.mode is None:
                self._base_mode_diagnosis(obs)
            elif self._hand_back_due():
                mode = self._diagnose(obs, "hand-back check")
                self.clear_steps = self.clear_steps + self.monitor.cfg.hand_back_check_every if mode is None else 0
                delay = getattr(self.entry, "hand_back_delay", 0)
                if mode is None and self.clear_steps > delay:
                    self._switch(None, f"hand-back: selector {self.selector.name} sees no failure"
                                       + (f" ({self.clear_steps} steps)" if delay else ""))
                elif mode is not None and mode != self.mode:
                    self._switch(mode, f"hand-back check: selector {self.selector.name} now says {mode}")
            else:
                status = self.monitor.recovery_status()
                if status in ("success", "progress resumed"):
                    self._switch(None, status)
                elif status == "recovery stalled":
                    mode = self._diagnose(obs, status)
                    keep = mode is None and self.monitor.cfg.stall_without_failure == "keep"
                    if mode != self.mode and not keep:
                        self._switch(mode, f"{status}: selector {self.selector.name} now says {mode}")

        residual = None
        if self.mode is not None:
            self.counts["recovery_steps"] += 1
            tr = time.perf_counter()
            residual = self.library[self.mode].residual(obs.state, base_action, self.mode)
            self.timings.residual.append(time.perf_counter() - tr)
        action, notes = self.safety.apply(obs.state, base_action, residual, self.last_grip)
        if "base_nonfinite_hold" in notes:
            self._warn_if_grip_unknown()
        if notes:
            self.counts["safety_interventions"] += 1
            self._event("safety", logging.WARNING, ", ".join(notes), interventions=notes, mode=self.mode)
        self.last_grip = float(action[6])
        self.grip_known = True
        self.timings.step.append(time.perf_counter() - t0)
        return action

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for e in self.events:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        return {"steps": self.t, "mode": self.mode, "events": kinds, **self.counts}


def build_runtime(directory: str | Path, manifest: ExportManifest, base: BasePolicySource, selector: Selector,
                  **kw) -> RecoveryRuntime:
    """Convenience: a runtime with the manifest's recovery library (one ONNX session per policy)."""
    return RecoveryRuntime(manifest, base, PolicyLibrary(directory, manifest), selector, **kw)

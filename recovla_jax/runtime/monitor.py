"""Failure monitor: decides when to ask the selector, and when a recovery has done its job.

Triggers for a diagnosis while the base policy drives: the first step of an episode (start from an
unknown state), task progress stalled for `stall_steps`, a timeout, and a periodic check (by default
only while progress has not moved for `check_every` steps: a drawer that is opening is not failing, and
per-state labels fire transiently during normal grasping and pulling). A diagnosis must repeat
`confirm_checks` times, `confirm_every` steps apart, before the runtime switches (`start_confirm_checks`,
by default 1, for the start trigger). During a
recovery: success, or progress resumed (`resume_progress` beyond where recovery started), returns
control to the base; a recovery that makes no progress for `recovery_stall_steps` is re-diagnosed (a recovery
policy's own window from the export manifest, where it has one, unless `policy_stall_steps` is off), progress being
measured from where the recovery began (`recovery_progress_from`). A policy
trained with hand-back is also checked every `hand_back_check_every` steps and released once the selector
sees no failure (the runtime does this; see `RecoveryRuntime.step`).
Progress is one scalar from the observation (the manifest's `progress` field, e.g. drawer opening).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    check_on_start: bool = True
    check_every: int = Field(10, ge=0, description="periodic selector check every N control steps (0: off)")
    periodic_requires_stall: bool = Field(
        True, description="skip periodic checks while progress moved in the last check_every steps")
    confirm_checks: int = Field(2, ge=1, description="same diagnosis this many times in a row before switching")
    confirm_every: int = Field(3, ge=1, description="steps between confirming selector calls")
    # The episode's first diagnosis sees the robot at rest in the state it was handed, not mid-motion, so the
    # transient labels that `confirm_checks` filters are not its risk; the steps the base drives while waiting
    # are: on peg_insert jammed_halfway (native MuJoCo) three base steps un-wedged the label but not the peg,
    # and the runtime never switched in 6 of 80 episodes the residual alone recovers.
    start_confirm_checks: int = Field(
        1, ge=1, description="same diagnosis this many times in a row before switching on the start trigger")
    stall_steps: int = Field(25, ge=1, description="no progress for this many steps triggers a diagnosis")
    progress_eps: float = Field(0.002, gt=0, description="progress increase that counts as progress")
    timeout_steps: int = Field(0, ge=0, description="diagnose once when the task is not done after N steps (0: off)")
    # "success": the recovery policy keeps control until the task succeeds. Measured on drawer (native
    # MuJoCo, noise + latency): handing back after 2 cm of progress ("progress") let the base fail again
    # (missed_handle 37.8% vs 70.3% with "success").
    release_on: Literal["progress", "success"] = "success"
    resume_progress: float = Field(0.02, gt=0, description="progress beyond the recovery's start that hands back to base")
    recovery_stall_steps: int = Field(50, ge=1, description="re-diagnose a recovery without progress for N steps")
    # A recovery policy may carry its own window in the manifest (`experiments.export --recovery-stall-steps`):
    # pick_place's missed_grasp policy re-grasps for more than 50 steps without progress (docs/experiments.md,
    # sessions 24-25). Off: every policy uses `recovery_stall_steps` (a sweep, or an arm that never re-diagnoses).
    policy_stall_steps: bool = Field(True, description="use a recovery policy's manifest recovery_stall_steps where set")
    # What a stalled recovery does when the re-diagnosis sees no failure. "keep" lets the recovery policy drive on
    # (only another diagnosed mode switches); "base" hands control back. With "base" stack's whole-episode residuals
    # (session 19, native MuJoCo) lost 27 of 28 toppled_stack and all 23 wrong_order episodes they recover alone:
    # the label clears (a toppled block held) before the base can finish the stack. Measured on every task's held-out
    # states (sessions 19-22): stack +16 pp with "keep", drawer and peg_insert equal to the episode, pick_place one
    # episode in 300 behind; so "keep" is the default.
    stall_without_failure: Literal["base", "keep"] = "keep"
    # What a recovery's progress is measured against. "recovery": the progress where it began, so re-placing a
    # toppled block counts as progress even below what the stack held before it fell. "episode" (the rule of every
    # native runtime number before session 30): the episode's best progress, under which a recovery from a failure
    # that lost progress (a toppled stack, a dropped cube) "stalls" until it beats the pre-failure best and is
    # re-diagnosed on the way. From a failure-bank start both agree unless progress falls while the base drives.
    recovery_progress_from: Literal["recovery", "episode"] = "recovery"
    # A policy trained with hand-back (`train --hand-back`) acted only while the failure label named a failure:
    # the runtime asks the selector every N recovery steps and hands back as soon as it sees none.
    hand_back_check_every: int = Field(1, ge=1, description="selector checks during a hand-back policy's recovery, every N steps")


class FailureMonitor:
    """Per-episode progress bookkeeping; call `update` once per control step, then ask."""

    def __init__(self, cfg: MonitorConfig, success_threshold: float):
        self.cfg = cfg
        self.success_threshold = success_threshold
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.progress = float("-inf")
        self.best = float("-inf")
        self.last_improved = 0
        self.last_stall_trigger = 0
        self.recovery_start_t: int | None = None
        self.recovery_start_progress = 0.0
        self.recovery_window = self.cfg.recovery_stall_steps
        self.timed_out = False

    @property
    def succeeded(self) -> bool:
        return self.progress >= self.success_threshold

    def update(self, progress: float) -> None:
        self.t += 1
        self.progress = float(progress)
        if self.t == 1 or self.progress > self.best + self.cfg.progress_eps:
            self.best = self.progress
            self.last_improved = self.t

    def diagnosis_trigger(self) -> str | None:
        """Why the selector should be asked now (base policy driving), or None."""
        if self.succeeded:
            return None
        c = self.cfg
        if self.t == 1 and c.check_on_start:
            return "start"
        if c.timeout_steps and self.t >= c.timeout_steps and not self.timed_out:
            self.timed_out = True
            return "timeout"
        if self.t - self.last_improved >= c.stall_steps and self.t - self.last_stall_trigger >= c.stall_steps:
            self.last_stall_trigger = self.t
            return "stall"
        if c.check_every and self.t % c.check_every == 0:
            if not c.periodic_requires_stall or self.t - self.last_improved >= c.check_every:
                return "periodic"
        return None

    def stall_window(self, policy_stall_steps: int | None) -> int:
        """Steps without progress before a recovery is re-diagnosed: the policy's own window where it has one and
        the config allows it, else the config's."""
        if policy_stall_steps is not None and self.cfg.policy_stall_steps:
            return policy_stall_steps
        return self.cfg.recovery_stall_steps

    def begin_recovery(self, policy_stall_steps: int | None = None) -> None:
        self.recovery_window = self.stall_window(policy_stall_steps)
        self.recovery_start_t = self.t
        self.recovery_start_progress = self.progress
        self.last_improved = self.t
        if self.cfg.recovery_progress_from == "recovery":
            self.best = self.progress

    def end_recovery(self) -> None:
        self.recovery_start_t = None
        self.last_stall_trigger = self.t

    def recovery_status(self) -> str | None:
        """'success' / 'progress resumed' (hand back to base), 'recovery stalled' (re-diagnose) or None."""
        if self.succeeded:
            return "success"
        if self.cfg.release_on == "progress" and self.progress >= self.recovery_start_progress + self.cfg.resume_progress:
            return "progress resumed"
        assert self.recovery_start_t is not None
        since = self.t - max(self.last_improved, self.recovery_start_t)
        if since >= self.recovery_window:
            self.last_improved = self.t  # next re-diagnosis only after another full window
            return "recovery stalled"
        return None

"""A native MuJoCo (C `MjData`, not MJX) robot for any task: the sim-to-real proxy for zero-shot evaluation.

The physics, the randomized dynamics the policies never trained on in this form (friction, masses, joint
damping, actuator gain, drawn with NumPy from a held-out seed), observation noise, action latency and the
action -> ctrl mapping are task-independent and live here. What is task-specific (the observation vector,
success, the privileged failure label, nominal start states) comes from a `NativeTask`: a NumPy twin for
the drawer (`mujoco_drawer`, JAX-free) or the JAX task's own functions evaluated on the native state
(`recovla_jax.evaluation.native_task.JaxNativeTask`, for tasks without a NumPy twin).
"""

from __future__ import annotations

import collections
from typing import Protocol

import mujoco
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recovla_jax.runtime.gripper import GripperIndices, action_to_ctrl, grip_command_from_ctrl, hold_action
from recovla_jax.runtime.robots.base import Observation

Range = tuple[float, float]


class NativeDynamics(BaseModel):
    """Per-episode randomization of the native robot; multiplicative ranges as `DomainRandomization`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    friction: Range = (0.7, 1.3)
    mass: Range = (0.8, 1.2)
    damping: Range = (0.8, 1.2)
    actuator_gain: Range = (0.85, 1.15)
    obs_noise_std: float = Field(0.001, ge=0.0, description="Gaussian noise on every observation float (m, m/s, or unitless)")
    action_latency_steps: tuple[int, int] = Field(
        (0, 1), description="actions execute this many control steps late (drawn per episode, inclusive)")
    start_noise: float = Field(
        0.005, ge=0.0, description="uniform gripper position jitter (m) on failure-bank starts, as ResidualEnv")

    @model_validator(mode="after")
    def _check(self) -> "NativeDynamics":
        for name in ("friction", "mass", "damping", "actuator_gain"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name}={lo, hi} must satisfy 0 < low <= high")
        lo, hi = self.action_latency_steps
        if not 0 <= lo <= hi:
            raise ValueError(f"action_latency_steps={lo, hi} must satisfy 0 <= low <= high")
        return self

    @classmethod
    def nominal(cls) -> "NativeDynamics":
        """No randomization, no noise, no latency, no start jitter (for exact comparisons)."""
        one = (1.0, 1.0)
        return cls(friction=one, mass=one, damping=one, actuator_gain=one, obs_noise_std=0.0,
                   action_latency_steps=(0, 0), start_noise=0.0)


class NativeTask(Protocol):
    """The task-specific half of a native robot: functions of the C `MjData`."""

    grip: GripperIndices

    def observe(self, data: mujoco.MjData) -> np.ndarray:
        """The task's observation vector (float64), noise-free."""

    def success(self, data: mujoco.MjData) -> bool: ...

    def label(self, data: mujoco.MjData) -> str | None:
        """The simulator's failure-mode label of the state (None: no failure)."""

    def nominal_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A randomized nominal start {qpos, qvel, ctrl} drawn as the task's reset draws it."""

    def with_noise(self, state: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The observation a noisy sensor reports (e.g. derived fields recomputed from noisy ones)."""


class NativeRobot:
    """The Robot protocol on native MuJoCo; also exposes privileged state for evaluation harnesses."""

    def __init__(self, model: mujoco.MjModel, task: NativeTask, dynamics: NativeDynamics | None = None, seed: int = 0,
                 ctrl_dt: float = 0.02):
        self.model = model
        self.data = mujoco.MjData(self.model)
        self.task = task
        self.dynamics = dynamics or NativeDynamics()
        self.control_dt = ctrl_dt
        self.n_substeps = round(ctrl_dt / self.model.opt.timestep)
        if self.n_substeps < 1 or abs(self.n_substeps * self.model.opt.timestep - ctrl_dt) > 1e-9:
            raise ValueError(f"ctrl_dt={ctrl_dt} is not a whole multiple of the scene timestep {self.model.opt.timestep}")
        m = self.model
        self._nominal = {k: getattr(m, k).copy() for k in
                         ("geom_friction", "body_mass", "dof_damping", "actuator_gainprm", "actuator_biasprm")}
        self.rng = np.random.default_rng(seed)
        self.sample: dict = {}
        self._queue: collections.deque = collections.deque()

    # ------------------------------------------------------------------------------------------ episode
    def reset(self, start: dict[str, np.ndarray] | None = None, seed: int | None = None) -> Observation:
        """Start from a failure-bank row (qpos, qvel, ctrl; mocap arrays) or a nominal draw."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._randomize()
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        state = start if start is not None else self.task.nominal_state(self.rng)
        qpos = np.array(state["qpos"], float)
        if qpos.shape != (m.nq,) or np.size(state.get("mocap_pos", ())) != 3 * m.nmocap:
            raise ValueError(f"start state has {qpos.size} qpos and {np.size(state.get('mocap_pos', ())) // 3} mocap bodies "
                             f"but the robot's scene has {m.nq} and {m.nmocap}: it comes from another version of the scene "
                             "(re-train with the current scene, then re-export)")
        if start is not None and self.dynamics.start_noise > 0:
            qpos[list(self.task.grip.arm_qpos[:3])] += self.rng.uniform(-self.dynamics.start_noise, self.dynamics.start_noise, 3)
        d.qpos[:] = qpos
        d.qvel[:] = state["qvel"]
        d.ctrl[:] = state["ctrl"]
        if m.nmocap:
            d.mocap_pos[:] = np.reshape(state["mocap_pos"], (m.nmocap, 3))
            d.mocap_quat[:] = np.reshape(state["mocap_quat"], (m.nmocap, 4))
        mujoco.mj_forward(m, d)
        lo, hi = self.dynamics.action_latency_steps
        latency = int(self.rng.integers(lo, hi + 1))
        self.sample["action_latency_steps"] = latency
        hold = hold_action(grip_command_from_ctrl(self.task.grip, d.ctrl))
        self._queue = collections.deque([hold] * latency)
        return self.get_observation()

    def _randomize(self) -> None:
        m, dyn, nom = self.model, self.dynamics, self._nominal
        u = lambda r, size=None: self.rng.uniform(r[0], r[1], size)  # noqa: E731
        f, damp, gain = u(dyn.friction), u(dyn.damping), u(dyn.actuator_gain)
        mass = u(dyn.mass, m.nbody)
        m.geom_friction[:] = nom["geom_friction"]
        m.geom_friction[:, 0] *= f
        m.body_mass[:] = nom["body_mass"] * mass
        m.dof_damping[:] = nom["dof_damping"] * damp
        m.actuator_gainprm[:] = nom["actuator_gainprm"]
        m.actuator_gainprm[:, 0] *= gain
        m.actuator_biasprm[:] = nom["actuator_biasprm"]
        m.actuator_biasprm[:, 1] *= gain
        self.sample = {"friction": float(f), "damping": float(damp), "actuator_gain": float(gain),
                       "mass_scale_mean": float(np.mean(mass))}

    # ------------------------------------------------------------------------------------------ I/O
    def true_state(self) -> np.ndarray:
        """Noise-free observation vector (privileged: for labels and success, not for policies)."""
        return self.task.observe(self.data)

    def get_observation(self) -> Observation:
        state = self.true_state()
        std = self.dynamics.obs_noise_std
        if std > 0:
            state = self.task.with_noise(state, self.rng.normal(0.0, std, state.shape))
        return Observation(state=state.astype(np.float32), timestamp=float(self.data.time))

    def apply_action(self, action: np.ndarray) -> None:
        """Queue the action (latency), execute the due one for one control period of physics."""
        self._queue.append(np.asarray(action, float).copy())
        due = self._queue.popleft()
        self.data.ctrl[:] = action_to_ctrl(self.task.grip, self.data.qpos, due)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)

    def grip_command(self) -> float:
        """The gripper command (-1 open .. +1 closed) the actuators now hold: what the runtime's holds keep."""
        return grip_command_from_ctrl(self.task.grip, self.data.ctrl)

    def close(self) -> None:
        self._queue.clear()

    # ------------------------------------------------------------------------------------------ privileged
    @property
    def time(self) -> float:
        return float(self.data.time)

    def success(self) -> bool:
        return bool(self.task.success(self.data))

    def privileged_mode(self) -> str | None:
        """The simulator's failure label of the current state (what an oracle selector would say)."""
        return self.task.label(self.data)

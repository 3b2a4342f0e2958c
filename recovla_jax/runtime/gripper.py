"""NumPy twin of `recovla_jax.sim.gripper`: the 7-D end-effector action -> position-actuator targets.

The robot side needs the exact mapping the policies were trained with, without JAX. The constants live
here and `sim.gripper` imports them; `tests/test_runtime.py` checks `action_to_ctrl` equals
`sim.gripper.action_to_ctrl` on the same states.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from recovla_jax.runtime import rotations

ACTION_SIZE = 7
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "grip")
ARM_JOINTS = ("grip_x", "grip_y", "grip_z", "grip_yaw", "grip_pitch", "grip_roll")
FINGER_JOINTS = ("finger_left", "finger_right")
FINGER_OPEN = 0.04  # metres per finger: pad travel from the centre line
FINGER_SQUEEZE = -0.02  # closed target below the joint limit, so the jaws press with force
MAX_TRANSLATION = 0.015  # metres per control step at |action| = 1
MAX_ROTATION = 0.08  # radians per control step at |action| = 1


@dataclass(frozen=True)
class GripperIndices:
    """Static qpos/qvel/ctrl addresses of the floating gripper in a compiled MuJoCo model."""

    arm_qpos: np.ndarray
    arm_qvel: np.ndarray
    finger_qpos: np.ndarray
    arm_ctrl: np.ndarray
    finger_ctrl: np.ndarray
    tcp_site: int
    gripper_body: int
    ctrl_low: np.ndarray
    ctrl_high: np.ndarray

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> "GripperIndices":
        def act(joint: str) -> int:
            jid = model.joint(joint).id
            hits = [i for i in range(model.nu) if model.actuator_trnid[i, 0] == jid]
            if not hits:
                raise ValueError(f"no actuator drives joint {joint!r}")
            return hits[0]

        return cls(
            arm_qpos=np.array([model.jnt_qposadr[model.joint(j).id] for j in ARM_JOINTS]),
            arm_qvel=np.array([model.jnt_dofadr[model.joint(j).id] for j in ARM_JOINTS]),
            finger_qpos=np.array([model.jnt_qposadr[model.joint(j).id] for j in FINGER_JOINTS]),
            arm_ctrl=np.array([act(j) for j in ARM_JOINTS]),
            finger_ctrl=np.array([act(j) for j in FINGER_JOINTS]),
            tcp_site=int(model.site("tcp").id),
            gripper_body=int(model.body("gripper").id),
            ctrl_low=model.actuator_ctrlrange[:, 0].copy(),
            ctrl_high=model.actuator_ctrlrange[:, 1].copy(),
        )


def action_to_ctrl(idx: GripperIndices, qpos: np.ndarray, action: np.ndarray,
                   max_translation: float = MAX_TRANSLATION, max_rotation: float = MAX_ROTATION) -> np.ndarray:
    """Actuator targets for a 7-D action from the *measured* joint state (see sim.gripper)."""
    action = np.clip(np.asarray(action, float), -1.0, 1.0)
    arm = np.asarray(qpos, float)[idx.arm_qpos]
    pos_target = arm[:3] + action[:3] * max_translation
    current = rotations.euler_zyx_to_mat(arm[3], arm[4], arm[5])
    delta = rotations.axis_angle_to_mat(action[3:6] * max_rotation)
    euler = rotations.mat_to_euler_zyx(delta @ current)
    euler[0] = arm[3] + rotations.wrap_angle(euler[0] - arm[3])
    closed = (action[6] + 1.0) / 2.0
    finger_target = FINGER_OPEN + closed * (FINGER_SQUEEZE - FINGER_OPEN)
    ctrl = np.zeros(len(idx.ctrl_low))
    ctrl[idx.arm_ctrl] = np.concatenate([pos_target, euler])
    ctrl[idx.finger_ctrl] = finger_target
    return np.clip(ctrl, idx.ctrl_low, idx.ctrl_high)


def hold_action(grip: float) -> np.ndarray:
    """Zero motion with a given gripper command: what 'hold position' means in this action space."""
    action = np.zeros(ACTION_SIZE)
    action[6] = grip
    return action


def hold_ctrl(idx: GripperIndices, qpos: np.ndarray, grip: float = -1.0) -> np.ndarray:
    """Targets that hold the current pose (used at reset so the first step does not jerk)."""
    return action_to_ctrl(idx, qpos, hold_action(grip))


def grip_command_from_ctrl(idx: GripperIndices, ctrl: np.ndarray) -> float:
    """The gripper command (-1 open .. +1 closed) whose finger target is `ctrl`'s."""
    target = float(np.mean(np.asarray(ctrl)[idx.finger_ctrl]))
    closed = (target - FINGER_OPEN) / (FINGER_SQUEEZE - FINGER_OPEN)
    return float(np.clip(2.0 * closed - 1.0, -1.0, 1.0))

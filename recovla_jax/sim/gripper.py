"""End-effector control of the floating parallel-jaw gripper shared by every task.

The 7-D action is the common space of VLAs (LIBERO/Bridge style), each entry in [-1, 1]:
  [0:3] Δxyz of the gripper, world frame, scaled by `max_translation` metres per control step;
  [3:6] Δrotation as an axis-angle vector, world frame, scaled by `max_rotation` radians per step;
  [6]   gripper command: -1 fully open, +1 fully closed (squeezing); values between interpolate.
Out-of-range actions are clipped to [-1, 1] (never rejected), so a residual that pushes past the bound
saturates instead of producing a larger motion. Targets are computed from the *measured* joint state,
so a blocked gripper never winds up its targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax.numpy as jnp
import mujoco

# The constants are shared with the NumPy twin the robot runtime uses (which must not import JAX):
# FINGER_OPEN (m per finger: pad travel from the centre line), FINGER_SQUEEZE (closed target below the
# joint limit, so the jaws press with force), MAX_TRANSLATION / MAX_ROTATION (GripperLimits' defaults).
from recovla_jax.runtime.gripper import (ACTION_NAMES, ACTION_SIZE, ARM_JOINTS, FINGER_JOINTS, FINGER_OPEN,  # noqa: F401
                                         FINGER_SQUEEZE, MAX_ROTATION, MAX_TRANSLATION)
from recovla_jax.sim import rotations

if TYPE_CHECKING:
    from mujoco import mjx


@dataclass(frozen=True)
class GripperIndices:
    """Static qpos/qvel/ctrl addresses, read once from the compiled MuJoCo model."""

    arm_qpos: tuple[int, ...]
    arm_qvel: tuple[int, ...]
    finger_qpos: tuple[int, ...]
    arm_ctrl: tuple[int, ...]
    finger_ctrl: tuple[int, ...]
    tcp_site: int
    gripper_body: int
    ctrl_low: tuple[float, ...]
    ctrl_high: tuple[float, ...]

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> "GripperIndices":
        def qadr(name: str) -> int:
            return int(model.jnt_qposadr[model.joint(name).id])

        def vadr(name: str) -> int:
            return int(model.jnt_dofadr[model.joint(name).id])

        def act(joint: str) -> int:
            jid = model.joint(joint).id
            for i in range(model.nu):
                if model.actuator_trnid[i, 0] == jid:
                    return i
            raise ValueError(f"no actuator drives joint {joint!r}")

        return cls(
            arm_qpos=tuple(qadr(j) for j in ARM_JOINTS),
            arm_qvel=tuple(vadr(j) for j in ARM_JOINTS),
            finger_qpos=tuple(qadr(j) for j in FINGER_JOINTS),
            arm_ctrl=tuple(act(j) for j in ARM_JOINTS),
            finger_ctrl=tuple(act(j) for j in FINGER_JOINTS),
            tcp_site=int(model.site("tcp").id),
            gripper_body=int(model.body("gripper").id),
            ctrl_low=tuple(float(x) for x in model.actuator_ctrlrange[:, 0]),
            ctrl_high=tuple(float(x) for x in model.actuator_ctrlrange[:, 1]),
        )


@dataclass(frozen=True)
class GripperLimits:
    """Per-step motion bounds that turn a unit action into metres and radians."""

    max_translation: float = MAX_TRANSLATION
    max_rotation: float = MAX_ROTATION


def clip_action(action: jnp.ndarray) -> jnp.ndarray:
    """Documented bound handling: every entry is clipped to [-1, 1]."""
    return jnp.clip(action, -1.0, 1.0)


def action_to_ctrl(
    idx: GripperIndices, limits: GripperLimits, qpos: jnp.ndarray, action: jnp.ndarray
) -> jnp.ndarray:
    """Map a (clipped) 7-D action to position-actuator targets for the arm joints and fingers."""
    action = clip_action(action)
    arm = qpos[jnp.array(idx.arm_qpos)]
    pos_target = arm[:3] + action[:3] * limits.max_translation
    current = rotations.euler_zyx_to_mat(arm[3], arm[4], arm[5])
    delta = rotations.axis_angle_to_mat(action[3:6] * limits.max_rotation)
    euler = rotations.mat_to_euler_zyx(delta @ current)
    # Keep yaw on the same branch as the measured joint so a wrap at +-pi never flips the target.
    euler = euler.at[0].set(arm[3] + _wrap_angle(euler[0] - arm[3]))
    closed = (action[6] + 1.0) / 2.0
    finger_target = FINGER_OPEN + closed * (FINGER_SQUEEZE - FINGER_OPEN)
    nu = len(idx.ctrl_low)
    ctrl = jnp.zeros(nu)
    ctrl = ctrl.at[jnp.array(idx.arm_ctrl)].set(jnp.concatenate([pos_target, euler]))
    ctrl = ctrl.at[jnp.array(idx.finger_ctrl)].set(finger_target)
    return jnp.clip(ctrl, jnp.array(idx.ctrl_low), jnp.array(idx.ctrl_high))


def hold_ctrl(idx: GripperIndices, qpos: jnp.ndarray, grip: float = -1.0) -> jnp.ndarray:
    """Targets that hold the current pose (used at reset so the first step does not jerk)."""
    return action_to_ctrl(idx, GripperLimits(), qpos, jnp.zeros(ACTION_SIZE).at[6].set(grip))


def teleport(
    idx: GripperIndices,
    data: mjx.Data,
    tcp_offset: jnp.ndarray,
    tcp: jnp.ndarray,
    rot: jnp.ndarray,
    finger: jnp.ndarray,
    grip_cmd: jnp.ndarray,
) -> mjx.Data:
    """Put the gripper at rest with its TCP at `tcp` and rotation `rot`, jaws at `finger` per side, holding
    that pose under `grip_cmd` (failure injectors use it; positions only, so call mjx.forward afterwards)."""
    body = tcp - rot @ tcp_offset
    qpos = data.qpos.at[jnp.array(idx.arm_qpos)].set(jnp.concatenate([body, rotations.mat_to_euler_zyx(rot)]))
    qpos = qpos.at[jnp.array(idx.finger_qpos)].set(finger)
    qvel = data.qvel.at[jnp.array(idx.arm_qvel)].set(0.0)
    return data.replace(qpos=qpos, qvel=qvel, ctrl=hold_ctrl(idx, qpos, grip_cmd))


def _wrap_angle(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.mod(x + jnp.pi, 2.0 * jnp.pi) - jnp.pi

"""NumPy twins of `recovla_jax.sim.rotations` for the robot side, which must run without JAX.

Same conventions (R = Rz(yaw) Ry(pitch) Rx(roll)); `tests/test_runtime.py` checks each against the JAX
original on random inputs.
"""

from __future__ import annotations

import numpy as np


def euler_zyx_to_mat(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll), the order of the gripper's hinge joints."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def mat_to_euler_zyx(mat: np.ndarray) -> np.ndarray:
    """Inverse of `euler_zyx_to_mat` (pitch in [-pi/2, pi/2]); returns [yaw, pitch, roll]."""
    pitch = np.arcsin(np.clip(-mat[2, 0], -1.0, 1.0))
    yaw = np.arctan2(mat[1, 0], mat[0, 0])
    roll = np.arctan2(mat[2, 1], mat[2, 2])
    return np.array([yaw, pitch, roll])


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def axis_angle_to_mat(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula with the same small-angle branch as the JAX version."""
    theta2 = float(np.sum(np.square(rotvec)))
    if theta2 < 1e-12:
        a, b = 1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0
    else:
        theta = np.sqrt(theta2)
        a, b = np.sin(theta) / theta, (1.0 - np.cos(theta)) / theta2
    k = skew(rotvec)
    return np.eye(3) + a * k + b * (k @ k)


def mat_to_axis_angle(mat: np.ndarray) -> np.ndarray:
    """Log map of a rotation matrix (angle in [0, pi)); accurate away from angle = pi."""
    cos = np.clip((np.trace(mat) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    vee = np.array([mat[2, 1] - mat[1, 2], mat[0, 2] - mat[2, 0], mat[1, 0] - mat[0, 1]])
    sin = np.sin(theta)
    scale = 0.5 if sin < 1e-6 else theta / (2.0 * sin)
    return scale * vee


def wrap_angle(x: float) -> float:
    return float(np.mod(x + np.pi, 2.0 * np.pi) - np.pi)

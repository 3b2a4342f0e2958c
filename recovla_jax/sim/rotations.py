"""Rotation helpers (pure JAX) for the gripper's yaw-pitch-roll hinge chain.

Why hand-written: the gripper's orientation lives in three hinge joints (R = Rz(yaw) Ry(pitch) Rx(roll)),
and we need the exact inverse of that chain, plus exp/log maps for axis-angle actions. These are a few
lines each; pulling in a geometry library for them would add a dependency and hide the convention.
"""

from __future__ import annotations

import jax.numpy as jnp


def euler_zyx_to_mat(yaw: jnp.ndarray, pitch: jnp.ndarray, roll: jnp.ndarray) -> jnp.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll), the order of the gripper's hinge joints."""
    cy, sy = jnp.cos(yaw), jnp.sin(yaw)
    cp, sp = jnp.cos(pitch), jnp.sin(pitch)
    cr, sr = jnp.cos(roll), jnp.sin(roll)
    return jnp.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def mat_to_euler_zyx(mat: jnp.ndarray) -> jnp.ndarray:
    """Inverse of `euler_zyx_to_mat` (pitch in [-pi/2, pi/2]); returns [yaw, pitch, roll]."""
    pitch = jnp.arcsin(jnp.clip(-mat[2, 0], -1.0, 1.0))
    yaw = jnp.arctan2(mat[1, 0], mat[0, 0])
    roll = jnp.arctan2(mat[2, 1], mat[2, 2])
    return jnp.stack([yaw, pitch, roll])


def axis_angle_to_mat(rotvec: jnp.ndarray) -> jnp.ndarray:
    """Rodrigues' formula, safe at zero angle (the Taylor branch keeps gradients finite)."""
    theta2 = jnp.sum(rotvec**2)
    small = theta2 < 1e-12
    theta = jnp.sqrt(jnp.where(small, 1.0, theta2))
    a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
    b = jnp.where(small, 0.5 - theta2 / 24.0, (1.0 - jnp.cos(theta)) / jnp.where(small, 1.0, theta2))
    k = skew(rotvec)
    return jnp.eye(3) + a * k + b * (k @ k)


def mat_to_axis_angle(mat: jnp.ndarray) -> jnp.ndarray:
    """Log map of a rotation matrix (angle in [0, pi)); accurate away from angle = pi."""
    cos = jnp.clip((jnp.trace(mat) - 1.0) / 2.0, -1.0, 1.0)
    theta = jnp.arccos(cos)
    vee = jnp.array([mat[2, 1] - mat[1, 2], mat[0, 2] - mat[2, 0], mat[1, 0] - mat[0, 1]])
    sin = jnp.sin(theta)
    scale = jnp.where(sin < 1e-6, 0.5, theta / (2.0 * jnp.where(sin < 1e-6, 1.0, sin)))
    return scale * vee


def skew(v: jnp.ndarray) -> jnp.ndarray:
    return jnp.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def yaw_to_quat(yaw: jnp.ndarray) -> jnp.ndarray:
    """MuJoCo (w, x, y, z) quaternion of a rotation about world z."""
    return jnp.array([jnp.cos(yaw / 2.0), 0.0, 0.0, jnp.sin(yaw / 2.0)])


def mat_to_quat(mat: jnp.ndarray) -> jnp.ndarray:
    """MuJoCo (w, x, y, z) quaternion of a rotation matrix, w >= 0 (Shepperd's method: the best-conditioned
    of four branches, chosen branch-free with argmax so it traces under jit)."""
    m = mat
    tr = jnp.trace(m)
    cands = jnp.stack([
        jnp.array([1.0 + tr, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]),
        jnp.array([m[2, 1] - m[1, 2], 1.0 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]]),
        jnp.array([m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1.0 + m[1, 1] - m[0, 0] - m[2, 2], m[1, 2] + m[2, 1]]),
        jnp.array([m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1.0 + m[2, 2] - m[0, 0] - m[1, 1]]),
    ])
    q = cands[jnp.argmax(jnp.array([tr, m[0, 0], m[1, 1], m[2, 2]]))]
    q = q / jnp.linalg.norm(q)
    return q * jnp.where(q[0] < 0, -1.0, 1.0)

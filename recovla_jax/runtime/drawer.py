"""The drawer scene on the robot side, in NumPy: indices, observation, nominal starts.

A twin of the scene half of `recovla_jax.tasks.drawer` (which is JAX) for the native-MuJoCo robot; the
failure rules are in `runtime.drawer_rules`. `tests/test_runtime.py` compares the observation and the
nominal-start distribution with the JAX task on the same states. Must run without JAX.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mujoco
import numpy as np

from recovla_jax.runtime import rotations
from recovla_jax.runtime.gripper import FINGER_OPEN, GripperIndices, hold_ctrl

# The cabinet pose (x, y, z offsets from the body's model position, yaw) lives in these four joints.
CABINET_JOINTS = ("cab_x", "cab_y", "cab_z", "cab_yaw")


@dataclass(frozen=True)
class DrawerNominalRanges:
    """Nominal-reset ranges: `tasks.drawer.DrawerConfig`'s fields and defaults (a test checks they agree).

    Build from a manifest's `task_config` (the run's DrawerConfig) with `from_task_config`.
    """

    success_opening: float = 0.15
    cabinet_xy_range: float = 0.06
    cabinet_z_range: float = 0.04
    cabinet_yaw_range: float = 0.3
    gripper_distance: tuple[float, float] = (0.12, 0.22)
    gripper_lateral_range: float = 0.08
    gripper_yaw_range: float = 0.3
    gripper_tilt_range: float = 0.15

    @classmethod
    def from_task_config(cls, cfg: dict) -> "DrawerNominalRanges":
        keys = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in keys})


class DrawerScene:
    """Indices of the drawer scene and the task's functions of an `MjData`."""

    def __init__(self, model: mujoco.MjModel):
        names = {model.joint(j).name for j in range(model.njnt)}
        missing = [j for j in CABINET_JOINTS if j not in names]
        if missing:
            raise ValueError(f"the scene has no cabinet joints {missing}: it is an older drawer scene (the cabinet was "
                             "a mocap body), which this code no longer supports; re-train and re-export with the current scene")
        self.model = model
        self.grip = GripperIndices.from_model(model)
        self.drawer_qpos = int(model.jnt_qposadr[model.joint("drawer_slide").id])
        self.drawer_qvel = int(model.jnt_dofadr[model.joint("drawer_slide").id])
        self.handle_site = int(model.site("handle").id)
        self.cabinet_body = int(model.body("cabinet").id)
        self.cabinet_qpos = np.array([model.jnt_qposadr[model.joint(j).id] for j in CABINET_JOINTS])
        self.cabinet_home = np.array(model.body("cabinet").pos)
        # Handle centre in the cabinet frame with the drawer closed (drawer body sits at the cabinet origin).
        self.handle_offset = np.array(model.site("handle").pos)
        self.tcp_offset = np.array(model.site("tcp").pos)

    def observe(self, data: mujoco.MjData) -> np.ndarray:
        """The 24-float observation of `tasks.drawer` (float64)."""
        g = self.grip
        tcp = data.site_xpos[g.tcp_site]
        rot = data.xmat[g.gripper_body].reshape(3, 3)
        handle = data.site_xpos[self.handle_site]
        axis = data.xmat[self.cabinet_body].reshape(3, 3)[:, 0]
        return np.concatenate([
            tcp, rot[:, 0], rot[:, 1], [np.sum(data.qpos[g.finger_qpos])], data.qvel[g.arm_qvel[:3]],
            handle, handle - tcp, axis, [data.qpos[self.drawer_qpos]], [data.qvel[self.drawer_qvel]],
        ])

    def nominal_state(self, rng: np.random.Generator, ranges: DrawerNominalRanges) -> dict[str, np.ndarray]:
        """A randomized nominal start {qpos, qvel, ctrl}, drawn as `DrawerTask.reset` draws it and assembled as
        `DrawerTask.make_state` assembles it: cabinet joints = (cabinet position - home, yaw), drawer shut,
        jaws open, at rest, actuator targets holding the pose."""
        c = ranges
        u = lambda lo, hi, size=None: rng.uniform(lo, hi, size)  # noqa: E731
        cab_pos = self.cabinet_home + np.concatenate([u(-c.cabinet_xy_range, c.cabinet_xy_range, 2),
                                                      u(-c.cabinet_z_range, c.cabinet_z_range, 1)])
        cab_yaw = u(-c.cabinet_yaw_range, c.cabinet_yaw_range)
        cab_rot = rotations.euler_zyx_to_mat(cab_yaw, 0.0, 0.0)
        handle = cab_pos + cab_rot @ self.handle_offset
        local = np.concatenate([u(*c.gripper_distance, 1), u(-c.gripper_lateral_range, c.gripper_lateral_range, 2)])
        tcp = handle + cab_rot @ local
        yaw = cab_yaw + u(-c.gripper_yaw_range, c.gripper_yaw_range)
        pitch, roll = u(-c.gripper_tilt_range, c.gripper_tilt_range, 2)
        g_rot = rotations.euler_zyx_to_mat(yaw, pitch, roll)
        body = tcp - g_rot @ self.tcp_offset
        qpos = self.model.qpos0.copy()
        qpos[self.grip.arm_qpos] = np.concatenate([body, [yaw, pitch, roll]])
        qpos[self.grip.finger_qpos] = FINGER_OPEN
        qpos[self.drawer_qpos] = 0.0
        qpos[self.cabinet_qpos] = np.concatenate([cab_pos - self.cabinet_home, [cab_yaw]])
        return {"qpos": qpos, "qvel": np.zeros(self.model.nv), "ctrl": hold_ctrl(self.grip, qpos, -1.0)}

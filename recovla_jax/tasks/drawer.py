"""Task `drawer` (short-horizon, articulated): grasp the handle and pull the drawer open.

Scene: `assets/drawer.xml`. The cabinet (its pose is per-episode state: four damped joints) faces its +x
axis; the drawer slides along that axis (0 to 0.25 m); the handle is a vertical bar 4 cm in front of the
drawer face. Success: drawer opened at least `success_opening` (default 0.15 m).

Observation (24 floats, world frame unless noted):
  tcp_pos (3, m)            tool-centre point between the finger pads
  gripper_rot6 (6)          first two columns of the gripper rotation matrix
  finger_opening (1, m)     sum of both finger joint positions (0 closed, 0.08 fully open)
  tcp_vel (3, m/s)          gripper linear velocity
  handle_pos (3, m)         handle centre
  handle_rel (3, m)         handle_pos - tcp_pos
  drawer_axis (3)           unit pull direction (cabinet +x)
  drawer_opening (1, m)     drawer slide joint position
  drawer_vel (1, m/s)       drawer slide joint velocity
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx
from pydantic import Field

from recovla_jax.runtime.drawer import CABINET_JOINTS
from recovla_jax.runtime.drawer_rules import (BETWEEN_XY, BETWEEN_Z, DRAWER_MOVED, FINGERS_CLOSED, GRASPED_OPENING,
                                              MISALIGNED_ANGLE, NEAR_HANDLE)
from recovla_jax.sim import gripper as grip
from recovla_jax.sim import rotations
from recovla_jax.tasks.base import ObsField, Task, TaskConfig


class DrawerConfig(TaskConfig):
    """Randomization ranges and the success threshold of the drawer task."""

    episode_length: int = 100
    success_opening: float = Field(0.15, gt=0.0, le=0.25, description="drawer opening (m) that counts as success")
    cabinet_xy_range: float = Field(0.06, ge=0.0, le=0.2)
    cabinet_z_range: float = Field(0.04, ge=0.0, le=0.1)
    cabinet_yaw_range: float = Field(0.3, ge=0.0, le=0.8, description="radians either side of facing the robot")
    gripper_distance: tuple[float, float] = (0.12, 0.22)
    gripper_lateral_range: float = Field(0.08, ge=0.0, le=0.15)
    gripper_yaw_range: float = Field(0.3, ge=0.0, le=0.8)
    gripper_tilt_range: float = Field(0.15, ge=0.0, le=0.5)


# Scripted-expert tolerances (metres / radians).
GRASP_RADIUS = 0.008
LATERAL_TOL = 0.01
ORIENT_TOL = 0.15
PREGRASP_STANDOFF = 0.08
# Failure-label thresholds (GRASPED_OPENING, MISALIGNED_ANGLE, ...) come from `runtime.drawer_rules`, the
# NumPy rules shared with the robot runtime and the offline diagnosis.


class DrawerTask(Task):
    name = "drawer"
    instruction = "open the drawer"
    xml_file = "drawer.xml"
    config_cls = DrawerConfig
    family = "short-horizon"
    progress_field = "drawer_opening"
    progress_description = "drawer slide joint position; success at or above the threshold"
    obs_fields = (
        ObsField("tcp_pos", 3, "m", "tool-centre point between the finger pads, world frame"),
        ObsField("gripper_rot6", 6, "", "first two columns of the gripper rotation matrix"),
        ObsField("finger_opening", 1, "m", "sum of both finger joint positions (0 closed, 0.08 open)"),
        ObsField("tcp_vel", 3, "m/s", "gripper linear velocity, world frame"),
        ObsField("handle_pos", 3, "m", "handle centre, world frame"),
        ObsField("handle_rel", 3, "m", "handle_pos - tcp_pos"),
        ObsField("drawer_axis", 3, "", "unit pull direction of the drawer (cabinet +x), world frame"),
        ObsField("drawer_opening", 1, "m", "drawer slide joint position (0 closed, 0.25 max)"),
        ObsField("drawer_vel", 1, "m/s", "drawer slide joint velocity"),
    )

    def __init__(self, config: DrawerConfig | dict | None = None):
        super().__init__(config)
        m = self.mj_model
        self.drawer_qpos = int(m.jnt_qposadr[m.joint("drawer_slide").id])
        self.drawer_qvel = int(m.jnt_dofadr[m.joint("drawer_slide").id])
        self.handle_site = int(m.site("handle").id)
        self.cabinet_body = int(m.body("cabinet").id)
        self.cabinet_qpos = tuple(int(m.jnt_qposadr[m.joint(j).id]) for j in CABINET_JOINTS)
        self.cabinet_home = jnp.array(m.body("cabinet").pos)
        # Handle centre in the cabinet frame with the drawer closed (drawer body sits at the cabinet origin).
        self.handle_offset = jnp.array(m.site("handle").pos)
        self.tcp_offset = jnp.array(m.site("tcp").pos)

    # ----------------------------------------------------------------------------------------- reset
    def reset(self, model: mjx.Model, rng: jax.Array) -> mjx.Data:
        c = self.config
        keys = jax.random.split(rng, 8)
        u = lambda k, lo, hi, shape=(): jax.random.uniform(k, shape, minval=lo, maxval=hi)  # noqa: E731
        cab_pos = self.cabinet_home + jnp.concatenate(
            [u(keys[0], -c.cabinet_xy_range, c.cabinet_xy_range, (2,)), u(keys[1], -c.cabinet_z_range, c.cabinet_z_range, (1,))]
        )
        cab_yaw = u(keys[2], -c.cabinet_yaw_range, c.cabinet_yaw_range)
        cab_rot = rotations.euler_zyx_to_mat(cab_yaw, 0.0, 0.0)
        handle = cab_pos + cab_rot @ self.handle_offset
        local = jnp.concatenate(
            [
                u(keys[3], *c.gripper_distance, (1,)),
                u(keys[4], -c.gripper_lateral_range, c.gripper_lateral_range, (2,)),
            ]
        )
        tcp = handle + cab_rot @ local
        yaw = cab_yaw + u(keys[5], -c.gripper_yaw_range, c.gripper_yaw_range)
        pitch, roll = u(keys[6], -c.gripper_tilt_range, c.gripper_tilt_range, (2,))
        g_rot = rotations.euler_zyx_to_mat(yaw, pitch, roll)
        body = tcp - g_rot @ self.tcp_offset
        return self.make_state(model, cab_pos, cab_yaw, body, jnp.stack([yaw, pitch, roll]),
                               finger=grip.FINGER_OPEN, opening=0.0)

    def make_state(
        self,
        model: mjx.Model,
        cab_pos: jnp.ndarray,
        cab_yaw: jnp.ndarray,
        gripper_pos: jnp.ndarray,
        gripper_euler: jnp.ndarray,
        finger: float | jnp.ndarray,
        opening: float | jnp.ndarray,
    ) -> mjx.Data:
        """Assemble a state from its few free quantities, at rest, with hold-pose actuator targets."""
        idx = self.gripper
        data = self.data_template
        qpos = data.qpos
        qpos = qpos.at[jnp.array(idx.arm_qpos)].set(jnp.concatenate([gripper_pos, gripper_euler]))
        qpos = qpos.at[jnp.array(idx.finger_qpos)].set(finger)
        qpos = qpos.at[self.drawer_qpos].set(opening)
        qpos = qpos.at[jnp.array(self.cabinet_qpos)].set(jnp.concatenate([cab_pos - self.cabinet_home, jnp.reshape(cab_yaw, (1,))]))
        data = data.replace(qpos=qpos)
        grip_cmd = jnp.where(finger < grip.FINGER_OPEN * 0.5, 1.0, -1.0)
        data = data.replace(ctrl=grip.hold_ctrl(idx, qpos, grip_cmd))
        return mjx.forward(model, data)

    # ----------------------------------------------------------------------------------- observation
    def privileged(self, model: mjx.Model, data: mjx.Data) -> dict[str, jnp.ndarray]:
        idx = self.gripper
        tcp = data.site_xpos[idx.tcp_site]
        g_rot = data.xmat[idx.gripper_body]
        handle = data.site_xpos[self.handle_site]
        axis = data.xmat[self.cabinet_body][:, 0]
        finger_opening = jnp.sum(data.qpos[jnp.array(idx.finger_qpos)])
        rel_local = g_rot.T @ (handle - tcp)
        between = (jnp.abs(rel_local[0]) < BETWEEN_XY) & (jnp.abs(rel_local[1]) < BETWEEN_XY) & (jnp.abs(rel_local[2]) < BETWEEN_Z)
        return {
            "tcp_pos": tcp,
            "gripper_rot": g_rot,
            "tcp_vel": data.qvel[jnp.array(idx.arm_qvel[:3])],
            "handle_pos": handle,
            "handle_rel_local": rel_local,
            "drawer_axis": axis,
            "drawer_opening": data.qpos[self.drawer_qpos],
            "drawer_vel": data.qvel[self.drawer_qvel],
            "finger_opening": finger_opening,
            "handle_between_fingers": between,
            "grasped": between & (finger_opening < GRASPED_OPENING),
            "success_opening": jnp.asarray(self.config.success_opening),
        }

    def observe(self, model: mjx.Model, data: mjx.Data) -> jnp.ndarray:
        p = self.privileged(model, data)
        return jnp.concatenate(
            [
                p["tcp_pos"],
                p["gripper_rot"][:, 0],
                p["gripper_rot"][:, 1],
                p["finger_opening"][None],
                p["tcp_vel"],
                p["handle_pos"],
                p["handle_pos"] - p["tcp_pos"],
                p["drawer_axis"],
                p["drawer_opening"][None],
                p["drawer_vel"][None],
            ]
        )

    def success(self, model: mjx.Model, data: mjx.Data) -> jnp.ndarray:
        return data.qpos[self.drawer_qpos] >= self.config.success_opening

    def progress_threshold(self) -> float:
        return float(self.config.success_opening)

    def workspace_points(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """TCPs and handles, with the handle also where it sits when the drawer is fully open (0.25 m)."""
        lay = {f["name"]: slice(f["start"], f["start"] + f["size"]) for f in self.obs_layout()}
        tcp, handle, axis = obs[:, lay["tcp_pos"]], obs[:, lay["handle_pos"]], obs[:, lay["drawer_axis"]]
        return np.concatenate([tcp, handle, handle + 0.25 * axis]), "TCP and handle positions (drawer shut to 0.25 m open)"

    # ----------------------------------------------------------------------------- failures, rewards
    failure_modes = ("missed_handle", "slipped_off", "misaligned_gripper")
    recovery_stages = ("reorient", "reopen", "reach", "grasp", "pull")
    failure_descriptions = {
        "missed_handle": "the gripper closed beside the handle; the drawer is still shut",
        "slipped_off": "the handle slipped out of the gripper mid-pull (jaws closed on nothing or released); the drawer is partly open",
        "misaligned_gripper": "the wrist is twisted far from a graspable orientation; nothing is held",
    }
    injection_windows = {"missed_handle": (10, 30), "slipped_off": (35, 60), "misaligned_gripper": (5, 30)}
    reward_component_descriptions = {
        "reach_handle": "potential [0,1]: 1 - tanh(distance TCP-handle / 5 cm)",
        "align": "potential [0,1]: 1 - (wrist rotation error from facing the drawer) / pi",
        "open_gripper": "potential [0,1]: jaw opening fraction while the TCP is more than 2 cm from the handle, 1 closer in",
        "grasp_handle": "potential {0,1}: handle between the closed jaws",
        "pull_drawer": "potential [0,1]: drawer opening / success opening",
        "collision": "per step {-1,0}: TCP pushed through the drawer front",
    }
    potential_components = ("reach_handle", "align", "open_gripper", "grasp_handle", "pull_drawer")
    oracle_masks = {
        "missed_handle": {"open_gripper": 0.5, "reach_handle": 1.0, "grasp_handle": 1.0, "pull_drawer": 2.0,
                          "success": 12.0, "collision": 1.0, "residual_magnitude": 0.1},
        "slipped_off": {"reach_handle": 1.0, "grasp_handle": 1.0, "pull_drawer": 2.0, "success": 12.0,
                        "collision": 1.0, "residual_magnitude": 0.1},
        "misaligned_gripper": {"align": 1.0, "reach_handle": 1.0, "grasp_handle": 1.0, "pull_drawer": 2.0,
                               "success": 12.0, "collision": 1.0, "residual_magnitude": 0.1},
    }

    def label(self, priv: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        return _drawer_label(self, priv)

    def inject(self, model: mjx.Model, data: mjx.Data, mode: jnp.ndarray, rng: jax.Array) -> mjx.Data:
        return _drawer_inject(self, model, data, mode, rng)

    def reward_terms(self, model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray) -> dict[str, jnp.ndarray]:
        return _drawer_reward_terms(self, model, prev, data, action)

    # ---------------------------------------------------------------------------------------- expert
    def expert_action(self, priv: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """Reactive expert: align, approach the handle along the pull axis, close, pull.

        Each branch is a function of the current state only, so the expert itself also recovers from
        perturbations; the frozen *base* policy is a behaviour-cloned copy trained on nominal states.
        """
        tcp, handle, axis = priv["tcp_pos"], priv["handle_pos"], priv["drawer_axis"]
        limits = self.limits
        desired_rot = rotations.euler_zyx_to_mat(jnp.arctan2(axis[1], axis[0]), 0.0, 0.0)
        rot_err = rotations.mat_to_axis_angle(desired_rot @ priv["gripper_rot"].T)
        orient_ok = jnp.linalg.norm(rot_err) < ORIENT_TOL
        rel = handle - tcp
        along = jnp.dot(rel, axis)
        lateral = rel - along * axis
        lateral_ok = jnp.linalg.norm(lateral) < LATERAL_TOL
        at_handle = (jnp.linalg.norm(rel) < GRASP_RADIUS) & orient_ok
        grasped = priv["grasped"]

        pregrasp = handle + axis * PREGRASP_STANDOFF
        pull_target = tcp + axis * 0.05
        # In front of the handle (along < 0) and lined up: go straight in; otherwise line up first.
        approach_ok = lateral_ok & orient_ok & (along < 0.01)
        target = jnp.where(grasped, pull_target, jnp.where(approach_ok | at_handle, handle, pregrasp))
        close = grasped | at_handle
        dpos = jnp.clip((target - tcp) / limits.max_translation, -1.0, 1.0)
        drot = jnp.clip(rot_err / limits.max_rotation, -1.0, 1.0)
        # While closing on the handle, hold still so the jaws do not shove it.
        dpos = jnp.where(at_handle & ~grasped, dpos * 0.5, dpos)
        gripper_cmd = jnp.where(close, 1.0, -1.0)
        return jnp.concatenate([dpos, drot, gripper_cmd[None]])


# ------------------------------------------------------------------------------- failures (ReCoVLA)
def _rotation_error(priv: dict[str, jnp.ndarray]) -> jnp.ndarray:
    axis = priv["drawer_axis"]
    desired = rotations.euler_zyx_to_mat(jnp.arctan2(axis[1], axis[0]), 0.0, 0.0)
    return jnp.linalg.norm(rotations.mat_to_axis_angle(desired @ priv["gripper_rot"].T))


def _drawer_label(task: "DrawerTask", priv: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Failure mode and recovery stage from simulator state (not from which perturbation was applied).

    The rules of `runtime.drawer_rules.classify` in JAX (tests check they agree on the same states).
    """
    rot_err = _rotation_error(priv)
    grasped = priv["grasped"]
    closed = priv["finger_opening"] < FINGERS_CLOSED
    opened = priv["drawer_opening"] > DRAWER_MOVED
    success = priv["drawer_opening"] >= priv["success_opening"]
    dist = jnp.linalg.norm(priv["handle_pos"] - priv["tcp_pos"])
    misaligned = (rot_err > MISALIGNED_ANGLE) & ~grasped
    slipped = opened & ~grasped
    missed = ~opened & closed & ~priv["handle_between_fingers"]
    mode = jnp.where(success, -1, jnp.where(misaligned, 2, jnp.where(slipped, 1, jnp.where(missed, 0, -1))))
    stage = jnp.where(
        rot_err > MISALIGNED_ANGLE,
        0,
        jnp.where(closed & ~grasped & ~priv["handle_between_fingers"], 1,
                  jnp.where(dist > NEAR_HANDLE, 2, jnp.where(~grasped, 3, 4))),
    )
    return mode.astype(jnp.int32), stage.astype(jnp.int32)


def _drawer_inject(task: "DrawerTask", model: mjx.Model, data: mjx.Data, mode: jnp.ndarray, rng: jax.Array) -> mjx.Data:
    priv = task.privileged(model, data)
    axis = priv["drawer_axis"]
    cab_rot = data.xmat[task.cabinet_body]
    k = jax.random.split(rng, 6)
    u = lambda key, lo, hi, shape=(): jax.random.uniform(key, shape, minval=lo, maxval=hi)  # noqa: E731
    sign = jnp.where(jax.random.bernoulli(k[0]), 1.0, -1.0)

    def missed_handle(d: mjx.Data) -> mjx.Data:
        # A pose-estimation error: the jaws close 2.5-5 cm beside (or above/below) the handle.
        side = jax.random.bernoulli(k[1])
        lateral = jnp.where(side, jnp.array([0.0, 1.0, 0.0]), jnp.array([0.0, 0.0, 1.0])) * sign * u(k[2], 0.025, 0.05)
        local = jnp.array([u(k[3], -0.005, 0.02), 0.0, 0.0]) + lateral
        tcp = priv["handle_pos"] + cab_rot @ local
        return grip.teleport(task.gripper, d, task.tcp_offset, tcp, priv["gripper_rot"], jnp.zeros(()), jnp.ones(()))

    def slipped_off(d: mjx.Data) -> mjx.Data:
        # The handle slips out of the grasp mid-pull and the gripper recoils 2-8 cm; the wrist is jolted
        # by up to 0.3 rad (below the misaligned threshold). Half the slips leave the jaws closed on
        # nothing (the handle slid out of them), half with the jaws released open.
        back = axis * u(k[1], 0.02, 0.08) + cab_rot @ jnp.concatenate([jnp.zeros(1), u(k[2], -0.04, 0.04, (2,))])
        direction = jax.random.normal(k[4], (3,))
        jolt = rotations.axis_angle_to_mat(direction / (jnp.linalg.norm(direction) + 1e-9) * u(k[5], 0.0, 0.3))
        closed = sign > 0
        finger = jnp.where(closed, 0.0, grip.FINGER_OPEN)
        return grip.teleport(task.gripper, d, task.tcp_offset, priv["tcp_pos"] + back, jolt @ priv["gripper_rot"], finger, jnp.where(closed, 1.0, -1.0))

    def misaligned_gripper(d: mjx.Data) -> mjx.Data:
        # A knock during the approach twists the wrist 0.6-1.2 rad about a random axis.
        direction = jax.random.normal(k[1], (3,))
        direction = direction / (jnp.linalg.norm(direction) + 1e-9)
        twist = rotations.axis_angle_to_mat(direction * u(k[2], 0.6, 1.2))
        shift = u(k[3], -0.03, 0.03, (3,))
        return grip.teleport(task.gripper, d, task.tcp_offset, priv["tcp_pos"] + shift, twist @ priv["gripper_rot"], jnp.full((), grip.FINGER_OPEN), -jnp.ones(()))

    data = jax.lax.switch(mode, [missed_handle, slipped_off, misaligned_gripper], data)
    return mjx.forward(model, data)


def _drawer_reward_terms(task: "DrawerTask", model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray) -> dict[str, jnp.ndarray]:
    priv = task.privileged(model, data)
    dist = jnp.linalg.norm(priv["handle_pos"] - priv["tcp_pos"])
    rel = priv["handle_pos"] - priv["tcp_pos"]
    along = jnp.dot(rel, priv["drawer_axis"])
    return {
        "reach_handle": 1.0 - jnp.tanh(dist / 0.05),
        "align": 1.0 - _rotation_error(priv) / jnp.pi,
        "open_gripper": jnp.where(dist > 0.02, priv["finger_opening"] / (2 * grip.FINGER_OPEN), 1.0),
        "grasp_handle": priv["grasped"].astype(jnp.float32),
        "pull_drawer": jnp.clip(priv["drawer_opening"] / priv["success_opening"], 0.0, 1.0),
        # Collision proxy (gripper-cabinet contacts are switched off for speed): the TCP passing more
        # than 2 cm behind the handle means the jaws are inside the drawer front.
        "collision": -(along > 0.02).astype(jnp.float32),
    }

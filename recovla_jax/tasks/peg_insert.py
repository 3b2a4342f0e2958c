"""Task `peg_insert` (contact-rich): lower the held square peg into the square hole of a table fixture.

Scene: `assets/peg_insert.xml`. A 20 x 20 x 100 mm box peg (free joint) starts held upright between the
gripper's vertical pads (starting held keeps the expert and its behaviour-cloned copy reliable; the task
is the insertion, not the pick). The fixture's four box walls form a 22 x 22 mm hole, 30 mm deep: total
clearance 2 mm (1 mm per side), no chamfer. The fixture's pose (x, y, yaw) is randomized per episode; so
are the gripper's start pose and the grasp height. Success: the peg's tip (centre of its bottom face)
inserted at least `success_depth` (default 18 mm = 60% of the 30 mm insertable length) below the rim,
inside the hole.

Observation (35 floats, world frame unless noted):
  tcp_pos (3, m)            tool-centre point between the finger pads
  gripper_rot6 (6)          first two columns of the gripper rotation matrix
  finger_opening (1, m)     sum of both finger joint positions (0 closed, 0.08 fully open; 0.02 on the peg)
  tcp_vel (3, m/s)          gripper linear velocity
  peg_tip_pos (3, m)        centre of the peg's bottom face
  peg_rot6 (6)              first two columns of the peg rotation matrix (column 2, unobserved, is its long axis)
  hole_pos (3, m)           centre of the hole's opening, at rim height
  hole_xaxis (3)            fixture x axis (horizontal unit vector; the hole is symmetric under 90 deg turns)
  tip_in_hole (3, m)        peg_tip_pos - hole_pos in the fixture frame (z: height of the tip above the rim)
  peg_in_grasp (3, m)       peg centre - tcp_pos in the gripper frame (about (0, 0, -0.025) when held nominally)
  insertion_depth (1, m)    depth of the tip below the rim while it is within 4 mm of the hole axis, else 0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx
from pydantic import Field

from recovla_jax.runtime import peg_insert_rules as rules
from recovla_jax.runtime.peg_insert_rules import (ALIGN_TOL, FIXTURE_HALF_WIDTH, GRASP_TILT, HELD_OPENING, HELD_X,
                                                  HELD_Y, HELD_Z, HOLE_DEPTH, HOLE_HALF_WIDTH, INSIDE_XY, JAM_MIN_DEPTH,
                                                  JAM_TILT, OFF_AXIS, ORIENT_TOL, PEG_HALF_LENGTH, PEG_HALF_WIDTH,
                                                  REST_HIGH, REST_LOW)
from recovla_jax.sim import gripper as grip
from recovla_jax.sim import rotations
from recovla_jax.tasks.base import ObsField, Task, TaskConfig


class PegInsertConfig(TaskConfig):
    """Randomization ranges and the success threshold of the peg-insertion task."""

    episode_length: int = 60
    success_depth: float = Field(0.6 * HOLE_DEPTH, gt=0.0, le=HOLE_DEPTH - 0.002,
                                 description="tip depth below the rim (m) that counts as inserted")
    fixture_xy_range: float = Field(0.05, ge=0.0, le=0.2, description="fixture centre offset (m) per axis")
    fixture_yaw_range: float = Field(float(np.pi / 4), ge=0.0, le=float(np.pi), description="rad; pi/4 covers every hole pose")
    start_radius: tuple[float, float] = (0.03, 0.08)  # m, horizontal distance of the peg tip from the hole axis
    start_height: tuple[float, float] = (0.03, 0.07)  # m, height of the peg tip above the rim
    gripper_yaw_range: float = Field(0.5, ge=0.0, le=1.5, description="rad either side of the tool pointing along -x")
    gripper_tilt_range: float = Field(0.05, ge=0.0, le=0.3, description="rad of start pitch and roll")
    grasp_height: tuple[float, float] = (0.021, 0.029)  # m of peg above the TCP (the pads are 44 mm tall)
    grasp_shift: float = Field(0.002, ge=0.0, le=0.006, description="m of peg offset along the tool axis")


# Scene constants read from assets/peg_insert.xml (checked at construction).
FINGER_ON_PEG = PEG_HALF_WIDTH - 1e-4  # m per finger: pads touching the peg with 0.1 mm of squeeze
# Scripted-expert settings.
APPROACH_HEIGHT = 0.02  # m of tip above the rim at which the peg hovers until it is lined up
DEPTH_TARGET = 0.028  # m below the rim the expert pushes the tip toward (2 mm above the hole bottom)
FUNNEL = (0.0004, 0.0012)  # m of misalignment measure: below the first, descend fully; above the second, hover
CORNER_LEVER = 0.014  # m; an orientation error of e rad moves the peg's corners by about e * this
GAIN_XY, GAIN_Z, GAIN_ROT = 0.7, 0.6, 0.6  # fraction of the remaining error commanded per control step
MAX_DESCENT = 0.5  # action units: at most 7.5 mm per step down (compliant insertion)
JAMMED_ROT_FREEZE = 0.06  # rad; inside the hole with more orientation error than this: lift first, then rotate
# Injection geometry.
WEDGE_SLACK = 1.5e-4  # m of clearance left at the two wedge contacts (no initial penetration)
REST_GAP = 3e-4  # m between the tip and the rim when a misaligned peg is set down on it


def _angle(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return jnp.arccos(jnp.clip(jnp.dot(a, b), -1.0, 1.0))


def _yaw_mat(yaw: jnp.ndarray) -> jnp.ndarray:
    return rotations.euler_zyx_to_mat(yaw, 0.0, 0.0)


class PegInsertTask(Task):
    name = "peg_insert"
    instruction = "insert the peg into the square hole"
    xml_file = "peg_insert.xml"
    config_cls = PegInsertConfig
    max_program_envs = 128  # see Task.max_program_envs
    family = "contact-rich"
    progress_field = "insertion_depth"
    progress_description = "depth of the peg tip below the hole's rim (0 outside the hole); success at or above the threshold"
    obs_fields = (
        ObsField("tcp_pos", 3, "m", "tool-centre point between the finger pads, world frame"),
        ObsField("gripper_rot6", 6, "", "first two columns of the gripper rotation matrix"),
        ObsField("finger_opening", 1, "m", "sum of both finger joint positions (0 closed, 0.08 open, 0.02 on the peg)"),
        ObsField("tcp_vel", 3, "m/s", "gripper linear velocity, world frame"),
        ObsField("peg_tip_pos", 3, "m", "centre of the peg's bottom face, world frame"),
        ObsField("peg_rot6", 6, "", "first two columns of the peg rotation matrix"),
        ObsField("hole_pos", 3, "m", "centre of the hole's opening at rim height, world frame"),
        ObsField("hole_xaxis", 3, "", "fixture x axis (horizontal unit vector), world frame"),
        ObsField("tip_in_hole", 3, "m", "peg tip - hole centre in the fixture frame (z: height above the rim)"),
        ObsField("peg_in_grasp", 3, "m", "peg centre - TCP in the gripper frame"),
        ObsField("insertion_depth", 1, "m", "tip depth below the rim while within 4 mm of the hole axis, else 0"),
    )

    def __init__(self, config: PegInsertConfig | dict | None = None):
        super().__init__(config)
        m = self.mj_model
        peg_joint = m.joint("peg").id
        self.peg_qpos = int(m.jnt_qposadr[peg_joint])
        self.peg_qvel = int(m.jnt_dofadr[peg_joint])
        self.peg_body = int(m.body("peg").id)
        self.fixture_body = int(m.body("fixture").id)
        self.fixture_mocap = int(m.body_mocapid[self.fixture_body])
        self.hole_site = int(m.site("hole").id)
        self.tip_site = int(m.site("peg_tip").id)
        self.tcp_offset = jnp.array(m.site("tcp").pos)
        self.rim_height = float(m.site("hole").pos[2])
        peg_size = m.geom("peg").size
        if not (np.allclose(peg_size, [PEG_HALF_WIDTH, PEG_HALF_WIDTH, PEG_HALF_LENGTH])
                and np.isclose(self.rim_height, HOLE_DEPTH)
                and np.isclose(m.geom("wall_px").pos[0] - m.geom("wall_px").size[0], HOLE_HALF_WIDTH)
                and np.isclose(m.geom("wall_px").pos[0] + m.geom("wall_px").size[0], FIXTURE_HALF_WIDTH)):
            raise ValueError("assets/peg_insert.xml no longer matches the geometry in runtime/peg_insert_rules.py")

    # ----------------------------------------------------------------------------------------- reset
    def reset(self, model: mjx.Model, rng: jax.Array) -> mjx.Data:
        c = self.config
        k = jax.random.split(rng, 12)
        u = lambda key, lo, hi, shape=(): jax.random.uniform(key, shape, minval=lo, maxval=hi)  # noqa: E731
        fixture_pos = jnp.concatenate([u(k[0], -c.fixture_xy_range, c.fixture_xy_range, (2,)), jnp.zeros(1)])
        fixture_yaw = u(k[1], -c.fixture_yaw_range, c.fixture_yaw_range)
        hole = fixture_pos + jnp.array([0.0, 0.0, self.rim_height])
        phi = u(k[2], -jnp.pi, jnp.pi)
        radius = u(k[3], *c.start_radius)
        tip = hole + jnp.stack([radius * jnp.cos(phi), radius * jnp.sin(phi), u(k[4], *c.start_height)])
        yaw = u(k[5], -c.gripper_yaw_range, c.gripper_yaw_range)
        pitch, roll = u(k[6], -c.gripper_tilt_range, c.gripper_tilt_range, (2,))
        g_rot = rotations.euler_zyx_to_mat(yaw, pitch, roll)
        p_rel = jnp.stack([u(k[7], -c.grasp_shift, c.grasp_shift), 0.0, -u(k[8], *c.grasp_height)])
        # The peg hangs aligned with the gripper: its tip is PEG_HALF_LENGTH below its centre along the gripper z.
        peg_pos = tip + g_rot @ jnp.array([0.0, 0.0, PEG_HALF_LENGTH])
        tcp = peg_pos - g_rot @ p_rel
        data = self.data_template
        data = data.replace(mocap_pos=data.mocap_pos.at[self.fixture_mocap].set(fixture_pos),
                            mocap_quat=data.mocap_quat.at[self.fixture_mocap].set(rotations.yaw_to_quat(fixture_yaw)))
        return self.place(model, data, tcp, g_rot, peg_pos, g_rot, jnp.full((), FINGER_ON_PEG))

    def place(self, model: mjx.Model, data: mjx.Data, tcp: jnp.ndarray, g_rot: jnp.ndarray, peg_pos: jnp.ndarray,
              peg_rot: jnp.ndarray, finger: jnp.ndarray) -> mjx.Data:
        """Set gripper and peg poses (at rest), jaws at `finger` per side and squeezing; forward kinematics."""
        data = grip.teleport(self.gripper, data, self.tcp_offset, tcp, g_rot, finger, jnp.ones(()))
        qpos = data.qpos.at[self.peg_qpos:self.peg_qpos + 7].set(jnp.concatenate([peg_pos, rotations.mat_to_quat(peg_rot)]))
        return mjx.forward(model, data.replace(qpos=qpos, qvel=jnp.zeros_like(data.qvel)))

    # ----------------------------------------------------------------------------------- observation
    def privileged(self, model: mjx.Model, data: mjx.Data) -> dict[str, jnp.ndarray]:
        idx = self.gripper
        tcp = data.site_xpos[idx.tcp_site]
        g_rot = data.xmat[idx.gripper_body]
        peg_pos = data.xpos[self.peg_body]
        peg_rot = data.xmat[self.peg_body]
        tip = data.site_xpos[self.tip_site]
        hole = data.site_xpos[self.hole_site]
        hole_rot = data.xmat[self.fixture_body]
        tip_local = hole_rot.T @ (tip - hole)
        inside = jnp.max(jnp.abs(tip_local[:2])) < INSIDE_XY
        depth = jnp.where(inside, jnp.maximum(-tip_local[2], 0.0), 0.0)
        hole_yaw = jnp.arctan2(hole_rot[1, 0], hole_rot[0, 0])
        peg_yaw = jnp.arctan2(peg_rot[1, 0], peg_rot[0, 0])
        # The square hole accepts the peg at four yaws: aim at the nearest.
        target_yaw = hole_yaw + jnp.round((peg_yaw - hole_yaw) / (jnp.pi / 2)) * (jnp.pi / 2)
        target_rot = _yaw_mat(target_yaw)
        orient_vec = rotations.mat_to_axis_angle(target_rot @ peg_rot.T)
        finger_opening = jnp.sum(data.qpos[jnp.array(idx.finger_qpos)])
        in_grasp = g_rot.T @ (peg_pos - tcp)
        held = ((jnp.abs(in_grasp[0]) < HELD_X) & (jnp.abs(in_grasp[1]) < HELD_Y) & (jnp.abs(in_grasp[2]) < HELD_Z)
                & (finger_opening < HELD_OPENING))
        return {
            "tcp_pos": tcp,
            "gripper_rot": g_rot,
            "tcp_vel": data.qvel[jnp.array(idx.arm_qvel[:3])],
            "finger_opening": finger_opening,
            "peg_pos": peg_pos,
            "peg_rot": peg_rot,
            "peg_tip_pos": tip,
            "hole_pos": hole,
            "hole_rot": hole_rot,
            "tip_in_hole": tip_local,
            "insertion_depth": depth,
            "target_rot": target_rot,
            "orient_vec": orient_vec,
            "orient_err": jnp.linalg.norm(orient_vec),
            "tilt": _angle(peg_rot[:, 2], jnp.array([0.0, 0.0, 1.0])),
            "grasp_tilt": _angle(peg_rot[:, 2], g_rot[:, 2]),
            "peg_in_grasp": in_grasp,
            "held": held,
            "success_depth": jnp.asarray(self.config.success_depth),
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
                p["peg_tip_pos"],
                p["peg_rot"][:, 0],
                p["peg_rot"][:, 1],
                p["hole_pos"],
                p["hole_rot"][:, 0],
                p["tip_in_hole"],
                p["peg_in_grasp"],
                p["insertion_depth"][None],
            ]
        )

    def success(self, model: mjx.Model, data: mjx.Data) -> jnp.ndarray:
        return self.privileged(model, data)["insertion_depth"] >= self.config.success_depth

    def progress_threshold(self) -> float:
        return float(self.config.success_depth)

    # ----------------------------------------------------------------------------- failures, rewards
    failure_modes = rules.FAILURE_MODES
    recovery_stages = rules.RECOVERY_STAGES
    failure_descriptions = {
        "lateral_misalignment": "the peg's tip was set down a few millimetres off the hole axis and rests on the fixture's top face",
        "tilted_in_grasp": "the peg has rotated in the grasp (about the jaw axis) and hangs tilted; it cannot enter the hole upright",
        "jammed_halfway": "the peg entered the hole at an angle and is wedged partway in; pushing harder does not move it",
    }
    injection_windows = {"lateral_misalignment": (5, 25), "tilted_in_grasp": (3, 15), "jammed_halfway": (10, 35)}
    reward_component_descriptions = {
        "align_xy": "potential [0,1]: 1 - tanh(horizontal distance of the peg tip from the hole axis / 2 cm)",
        "orient": "potential [0,1]: 1 - (peg rotation error from the nearest upright pose fitting the hole) / pi",
        "insert_depth": "potential [0,1]: insertion depth / success depth",
        "hold_peg": "potential {0,1}: peg centred between the closed jaws",
        "wedged": "per step {-1,0}: peg partly inserted and tilted past the jam angle",
    }
    potential_components = ("align_xy", "orient", "insert_depth", "hold_peg")
    oracle_masks = {
        "lateral_misalignment": {"align_xy": 1.5, "orient": 0.5, "insert_depth": 2.0, "hold_peg": 1.0, "success": 12.0,
                                 "wedged": 0.5, "residual_magnitude": 0.1},
        "tilted_in_grasp": {"orient": 1.5, "align_xy": 1.0, "insert_depth": 2.0, "hold_peg": 1.0, "success": 12.0,
                            "wedged": 1.0, "residual_magnitude": 0.1},
        "jammed_halfway": {"orient": 1.0, "align_xy": 1.0, "insert_depth": 2.0, "hold_peg": 1.0, "success": 12.0,
                           "wedged": 1.0, "residual_magnitude": 0.1},
    }

    def label(self, priv: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        return _peg_label(priv)

    def inject(self, model: mjx.Model, data: mjx.Data, mode: jnp.ndarray, rng: jax.Array) -> mjx.Data:
        return _peg_inject(self, model, data, mode, rng)

    def reward_terms(self, model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray) -> dict[str, jnp.ndarray]:
        p = self.privileged(model, data)
        return {
            "align_xy": 1.0 - jnp.tanh(jnp.linalg.norm(p["tip_in_hole"][:2]) / 0.02),
            "orient": 1.0 - p["orient_err"] / jnp.pi,
            "insert_depth": jnp.clip(p["insertion_depth"] / p["success_depth"], 0.0, 1.0),
            "hold_peg": p["held"].astype(jnp.float32),
            "wedged": -_wedged(p).astype(jnp.float32),
        }

    # ---------------------------------------------------------------------------------------- expert
    def expert_action(self, priv: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """Reactive expert: turn the peg upright and square to the hole, hover above it, descend when lined up.

        A funnel sets the tip's target height from the misalignment measure m (lateral offset plus orientation
        error times the corner lever): hover `APPROACH_HEIGHT` above the rim while m is large, push toward the
        hole bottom once m is below the clearance. Every quantity is read from the current state, so the
        expert also lifts a peg off the rim, straightens a tilted one and pulls a wedged one out before
        re-inserting it; the frozen *base* policy is a behaviour-cloned copy trained on nominal states.
        """
        limits = self.limits
        hole, hole_rot, tip = priv["hole_pos"], priv["hole_rot"], priv["peg_tip_pos"]
        lateral = priv["tip_in_hole"][:2]
        measure = jnp.linalg.norm(lateral) + CORNER_LEVER * priv["orient_err"]
        funnel = jnp.clip((measure - FUNNEL[0]) / (FUNNEL[1] - FUNNEL[0]), 0.0, 1.0)
        height = -DEPTH_TARGET + (APPROACH_HEIGHT + DEPTH_TARGET) * funnel
        target = hole + hole_rot @ jnp.stack([0.0, 0.0, height])
        err = target - tip
        dxy = jnp.clip(err[:2] * GAIN_XY / limits.max_translation, -1.0, 1.0)
        dz = jnp.clip(err[2] * GAIN_Z / limits.max_translation, -MAX_DESCENT, 1.0)
        # A peg stuck in the hole at an angle is pulled out before it is turned (turning it there pries it).
        stuck = (priv["insertion_depth"] > 0.5 * JAM_MIN_DEPTH) & (priv["orient_err"] > JAMMED_ROT_FREEZE)
        drot = jnp.where(stuck, 0.0, jnp.clip(priv["orient_vec"] * GAIN_ROT / limits.max_rotation, -1.0, 1.0))
        return jnp.concatenate([dxy, dz[None], drot, jnp.ones(1)])


# ------------------------------------------------------------------------------- failures (ReCoVLA)
def _wedged(priv: dict[str, jnp.ndarray]) -> jnp.ndarray:
    return (priv["insertion_depth"] > JAM_MIN_DEPTH) & (priv["tilt"] > JAM_TILT)


def _peg_label(priv: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Failure mode and recovery stage from simulator state (not from which perturbation was applied).

    The rules of `runtime.peg_insert_rules.classify` in JAX (tests check they agree on the same states).
    """
    tip = priv["tip_in_hole"]
    lateral = jnp.linalg.norm(tip[:2])
    cheb = jnp.max(jnp.abs(tip[:2]))
    depth = priv["insertion_depth"]
    success = depth >= priv["success_depth"]
    jammed = _wedged(priv)
    tilted = (priv["grasp_tilt"] > GRASP_TILT) & priv["held"]
    resting = (tip[2] > REST_LOW) & (tip[2] < REST_HIGH) & (cheb > OFF_AXIS) & (cheb < FIXTURE_HALF_WIDTH + 0.5 * PEG_HALF_WIDTH)
    mode = jnp.where(success, -1, jnp.where(jammed, 2, jnp.where(tilted, 1, jnp.where(resting, 0, -1))))
    stage = jnp.where(jammed, 0, jnp.where(priv["orient_err"] > ORIENT_TOL, 1,
                                           jnp.where((lateral > ALIGN_TOL) & (depth <= JAM_MIN_DEPTH), 2, 3)))
    return mode.astype(jnp.int32), stage.astype(jnp.int32)


def _peg_inject(task: PegInsertTask, model: mjx.Model, data: mjx.Data, mode: jnp.ndarray, rng: jax.Array) -> mjx.Data:
    """Build the failure state of mode `mode` from the current one (keeping the fixture and the grasp)."""
    priv = task.privileged(model, data)
    g_rot, tcp = priv["gripper_rot"], priv["tcp_pos"]
    hole, hole_rot = priv["hole_pos"], priv["hole_rot"]
    p_rel = priv["peg_in_grasp"]
    r_rel = g_rot.T @ priv["peg_rot"]
    finger = jnp.full((), FINGER_ON_PEG)
    k = jax.random.split(rng, 6)
    u = lambda key, lo, hi, shape=(): jax.random.uniform(key, shape, minval=lo, maxval=hi)  # noqa: E731
    sign = jnp.where(jax.random.bernoulli(k[0]), 1.0, -1.0)
    up = jnp.array([0.0, 0.0, 1.0])

    def lateral_misalignment(d: mjx.Data) -> mjx.Data:
        # A 3-9 mm error in the hole estimate: the base lined the peg up (upright, square to the hole) over the
        # wrong spot and set its tip down on the rim; the bottom face overlaps the top face by 1-8 mm.
        phi = u(k[1], -jnp.pi, jnp.pi)
        offset = u(k[2], 0.003, 0.009) * jnp.stack([jnp.cos(phi), jnp.sin(phi)])
        peg_rot = _yaw_mat(u(k[3], -0.02, 0.02)) @ priv["target_rot"]
        tip = hole + hole_rot @ jnp.concatenate([offset, jnp.array([REST_GAP])])
        peg_pos = tip + peg_rot @ jnp.array([0.0, 0.0, PEG_HALF_LENGTH])
        new_g = peg_rot @ r_rel.T
        return task.place(model, d, peg_pos - new_g @ p_rel, new_g, peg_pos, peg_rot, finger)

    def tilted_in_grasp(d: mjx.Data) -> mjx.Data:
        # The peg pivots 11-26 deg in the grasp about the jaw axis (a knock, or slip from a poor grasp); the
        # gripper keeps its pose. If that would swing the tip into the fixture, the whole hand is raised.
        q = rotations.axis_angle_to_mat(jnp.array([0.0, 1.0, 0.0]) * sign * u(k[1], 0.2, 0.45))
        peg_rot = g_rot @ q @ r_rel
        peg_pos = tcp + g_rot @ q @ p_rel
        tip = peg_pos - peg_rot @ jnp.array([0.0, 0.0, PEG_HALF_LENGTH])
        lift = jnp.maximum(hole[2] + 0.01 - tip[2], 0.0) * up
        return task.place(model, d, tcp + lift, g_rot, peg_pos + lift, peg_rot, finger)

    def jammed_halfway(d: mjx.Data) -> mjx.Data:
        # The peg entered 7-11.5 deg off vertical and wedged: its lower corner against one wall, its side
        # against the opposite rim edge (two-point contact, `WEDGE_SLACK` left at each). The tilt is about the
        # jaw axis; half the time the wrist is tilted (peg square in the grasp), half the time the peg is
        # tilted in a level grasp.
        theta = u(k[1], 0.12, 0.2)
        level = priv["target_rot"]
        axis = sign * (level @ jnp.array([0.0, 1.0, 0.0]))  # horizontal jaw axis, along a hole axis
        tilt = rotations.axis_angle_to_mat(axis * theta)
        peg_rot = tilt @ level
        lean = jnp.cross(axis, up)  # the peg's top leans this way, its bottom the other
        depth = (2.0 * HOLE_HALF_WIDTH - 2.0 * WEDGE_SLACK - 2.0 * PEG_HALF_WIDTH / jnp.cos(theta)) / jnp.tan(theta)
        corner = hole + (-HOLE_HALF_WIDTH + WEDGE_SLACK) * lean - depth * up
        peg_pos = corner + PEG_HALF_LENGTH * peg_rot[:, 2] + PEG_HALF_WIDTH * (tilt @ lean)
        wrist = jax.random.bernoulli(k[2])
        new_g = jnp.where(wrist, peg_rot, level)
        q = level.T @ tilt @ level  # the in-grasp tilt of a level grasp (about the gripper y axis)
        new_rel = jnp.where(wrist, p_rel, q @ p_rel)
        return task.place(model, d, peg_pos - new_g @ new_rel, new_g, peg_pos, peg_rot, finger)

    return jax.lax.switch(mode, [lateral_misalignment, tilted_in_grasp, jammed_halfway], data)

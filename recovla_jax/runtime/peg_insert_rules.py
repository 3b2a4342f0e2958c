"""The peg_insert task's failure rules in NumPy: one implementation for training, diagnosis and the robot.

Imports NumPy only (like `drawer_rules`), so the robot runtime can use it without JAX. `tasks.peg_insert`
takes its geometry and thresholds from here; its JAX labeller `_peg_label` applies the same rules to
simulator state and `tests/test_task_peg_insert.py` checks the two agree on the same states.

Every quantity the rules need is in the 35-float observation (layout: `tasks/peg_insert.py`): the peg's
and the gripper's orientation (rot6), the peg tip in the hole frame and the insertion depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAILURE_MODES = ("lateral_misalignment", "tilted_in_grasp", "jammed_halfway")
RECOVERY_STAGES = ("extract", "straighten", "align", "insert")
OBS_SIZE = 35
# name -> slice of the 35-float observation (PegInsertTask.obs_fields; a test checks they agree)
OBS = {
    "tcp_pos": slice(0, 3), "gripper_rot6": slice(3, 9), "finger_opening": slice(9, 10), "tcp_vel": slice(10, 13),
    "peg_tip_pos": slice(13, 16), "peg_rot6": slice(16, 22), "hole_pos": slice(22, 25), "hole_xaxis": slice(25, 28),
    "tip_in_hole": slice(28, 31), "peg_in_grasp": slice(31, 34), "insertion_depth": slice(34, 35),
}

# Scene geometry (assets/peg_insert.xml), metres.
PEG_HALF_WIDTH = 0.010  # 20 mm square peg ...
PEG_HALF_LENGTH = 0.050  # ... 100 mm long
HOLE_HALF_WIDTH = 0.011  # 22 mm square hole: 2 mm total clearance, 1 mm per side
HOLE_DEPTH = 0.030  # rim 30 mm above the hole's bottom (the table)
FIXTURE_HALF_WIDTH = 0.036  # outer half size of the four-wall fixture

# Rule thresholds.
INSIDE_XY = 0.004  # m; tip centre within this of the hole axis (each hole axis) counts as over / in the hole
JAM_MIN_DEPTH = 0.002  # m; a peg deeper than this has entered the hole
# rad; a peg tilted more than this cannot reach the success depth: tilted by t it needs a hole of
# 2w/cos(t) + depth * tan(t) (2.2 cm at 0.1 rad and 18 mm), so it wedges first. Expert insertions tilt ~0.02 at most.
JAM_TILT = 0.10
GRASP_TILT = 0.15  # rad between the peg's long axis and the gripper's z axis; nominal grasps are aligned (0)
REST_LOW, REST_HIGH = -0.0015, 0.004  # m; tip height above the rim at which an upright peg rests on the top face
OFF_AXIS = HOLE_HALF_WIDTH - PEG_HALF_WIDTH + 0.0003  # m; tip offset beyond which the peg's bottom overlaps the rim
ALIGN_TOL = 0.001  # m; lateral tip offset the insertion tolerates (the clearance per side)
ORIENT_TOL = 0.10  # rad; peg orientation error (nearest of the hole's four symmetric yaws) needing correction

# Held-peg bounds on `peg_in_grasp` (peg centre - TCP in the gripper frame; a nominal grasp reads about
# (0, 0, -0.025): the peg's top 25 mm above the TCP).
HELD_X = 0.015  # m along the tool axis
HELD_Y = 0.006  # m across the jaws (the peg is 10 mm half wide, the pads press it to the centre)
HELD_Z = 0.06  # m along the pads (the peg is 100 mm long)
HELD_OPENING = 0.026  # m of total jaw opening; closed on the 20 mm peg reads about 0.02


def rot_from_rot6(rot6: np.ndarray) -> np.ndarray:
    """Rotation matrix from its first two columns (re-orthonormalised against observation noise)."""
    c0 = np.asarray(rot6[:3], np.float64)
    c0 = c0 / (np.linalg.norm(c0) + 1e-12)
    c1 = np.asarray(rot6[3:6], np.float64)
    c1 = c1 - c0 * np.dot(c0, c1)
    c1 = c1 / (np.linalg.norm(c1) + 1e-12)
    return np.stack([c0, c1, np.cross(c0, c1)], axis=1)


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arccos(np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12), -1.0, 1.0)))


def orientation_error(peg_rot: np.ndarray, hole_xaxis: np.ndarray) -> float:
    """Angle (rad) from the peg's rotation to the nearest upright pose that fits the square hole."""
    hole_yaw = np.arctan2(hole_xaxis[1], hole_xaxis[0])
    peg_yaw = np.arctan2(peg_rot[1, 0], peg_rot[0, 0])
    k = np.round((peg_yaw - hole_yaw) / (np.pi / 2))
    yaw = hole_yaw + k * np.pi / 2
    c, s = np.cos(yaw), np.sin(yaw)
    desired = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    rel = desired @ peg_rot.T
    return float(np.arccos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0)))


def features(obs: np.ndarray) -> dict:
    """The rules' inputs, all read from the observation."""
    obs = np.asarray(obs, np.float64)
    peg_rot = rot_from_rot6(obs[OBS["peg_rot6"]])
    g_rot = rot_from_rot6(obs[OBS["gripper_rot6"]])
    tip = obs[OBS["tip_in_hole"]]
    return {
        "tip_in_hole": tip,
        "lateral": float(np.linalg.norm(tip[:2])),
        "chebyshev": float(np.max(np.abs(tip[:2]))),
        "depth": float(obs[OBS["insertion_depth"]][0]),
        "tilt": angle_between(peg_rot[:, 2], np.array([0.0, 0.0, 1.0])),
        "grasp_tilt": angle_between(peg_rot[:, 2], g_rot[:, 2]),
        "orient_err": orientation_error(peg_rot, obs[OBS["hole_xaxis"]]),
        "finger_opening": float(obs[OBS["finger_opening"]][0]),
        "peg_in_grasp": obs[OBS["peg_in_grasp"]],
    }


def is_held(peg_in_grasp: np.ndarray, finger_opening: float) -> bool:
    """Peg centre between the pads (within their footprint) and the jaws closed on it."""
    p = np.asarray(peg_in_grasp)
    return bool(abs(p[0]) < HELD_X and abs(p[1]) < HELD_Y and abs(p[2]) < HELD_Z and finger_opening < HELD_OPENING)



@dataclass(frozen=True)
class RulesResult:
    """`mode`: the failure mode whose rule fires (precedence jammed > tilted > lateral), None when none fires
    or the peg is inserted to `success_depth`; `closest_mode`: never None (for callers told it is a failure)."""

    mode: str | None
    closest_mode: str
    stage: str
    reason: str


def rule_flags(f: dict, held: bool) -> tuple[bool, bool, bool]:
    """(jammed, tilted_in_grasp, lateral_misalignment) before precedence."""
    jammed = f["depth"] > JAM_MIN_DEPTH and f["tilt"] > JAM_TILT
    tilted = f["grasp_tilt"] > GRASP_TILT and held
    z = f["tip_in_hole"][2]
    resting = REST_LOW < z < REST_HIGH and OFF_AXIS < f["chebyshev"] < FIXTURE_HALF_WIDTH + 0.5 * PEG_HALF_WIDTH
    return jammed, tilted, resting


def stage_of(f: dict) -> str:
    if f["depth"] > JAM_MIN_DEPTH and f["tilt"] > JAM_TILT:
        return "extract"
    if f["orient_err"] > ORIENT_TOL:
        return "straighten"
    if f["lateral"] > ALIGN_TOL and f["depth"] <= JAM_MIN_DEPTH:
        return "align"
    return "insert"


def classify(obs: np.ndarray, success_depth: float | None = None) -> RulesResult:
    """The failure rules on a peg_insert observation; `success_depth` None: never call it a success."""
    f = features(obs)
    held = is_held(f["peg_in_grasp"], f["finger_opening"])
    jammed, tilted, resting = rule_flags(f, held)
    rule = "jammed_halfway" if jammed else "tilted_in_grasp" if tilted else "lateral_misalignment" if resting else None
    succeeded = success_depth is not None and f["depth"] >= success_depth
    if rule is not None:
        closest = rule
    elif f["depth"] > JAM_MIN_DEPTH:
        closest = "jammed_halfway"
    elif f["grasp_tilt"] > 0.5 * GRASP_TILT:
        closest = "tilted_in_grasp"
    else:
        closest = "lateral_misalignment"
    reason = (f"peg tip {f['tip_in_hole'][2] * 1000:.1f} mm above the rim and {f['lateral'] * 1000:.1f} mm off the hole "
              f"axis (rests on the rim beyond {OFF_AXIS * 1000:.1f}), inserted {f['depth'] * 1000:.1f} mm, peg tilted "
              f"{np.degrees(f['tilt']):.1f} deg from vertical (jams > {np.degrees(JAM_TILT):.0f}) and "
              f"{np.degrees(f['grasp_tilt']):.1f} deg in the grasp (tilted > {np.degrees(GRASP_TILT):.0f}), "
              f"{'held' if held else 'not held'}")
    return RulesResult(None if succeeded else rule, closest, stage_of(f), reason)


def label(obs: np.ndarray, success_depth: float) -> tuple[int, int]:
    """(failure-mode index or -1, recovery-stage index): `tasks.peg_insert._peg_label` on an observation."""
    r = classify(obs, success_depth)
    return (-1 if r.mode is None else FAILURE_MODES.index(r.mode)), RECOVERY_STAGES.index(r.stage)

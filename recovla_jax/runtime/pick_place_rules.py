"""The pick_place task's failure rules in NumPy: one implementation for training, diagnosis and the robot.

Imports NumPy only, so the robot side can use it without JAX. `tasks.pick_place` (JAX) takes its
thresholds and block geometry from here; its offline diagnosis (`PickPlaceTask.rules_classify`, the
`rules` selector) calls `classify`. The JAX labeller `tasks.pick_place._label` applies the same rules to
simulator state; `tests/test_task_pick_place.py` checks the two agree on the same states.

Every quantity the rules need is in the 35-float observation (layout: `tasks/pick_place.py`), so the
rules read nothing else.

The rules, in order of precedence (a failure state is one where the block is neither held nor placed):
  dropped_in_transit  the gripper is lifted (TCP above `GRIPPER_HIGH_Z`) and the block lies on the table:
                      it fell out of the grasp during the carry (or was let go early);
  knocked_away        the block is tipped over (its long axis closer to horizontal than vertical) and the
                      gripper is down at the table: it was knocked over and pushed, not grasped;
  missed_grasp        the jaws are closed on nothing (opening below the block's narrowest width) beside
                      an upright block on the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAILURE_MODES = ("missed_grasp", "dropped_in_transit", "knocked_away")
RECOVERY_STAGES = ("reopen", "reach", "grasp", "carry", "release")
OBS_SIZE = 35
# name -> slice of the 35-float observation (PickPlaceTask.obs_fields; a test checks they agree)
OBS = {
    "tcp_pos": slice(0, 3), "gripper_rot6": slice(3, 9), "finger_opening": slice(9, 10), "tcp_vel": slice(10, 13),
    "block_pos": slice(13, 16), "block_rel": slice(16, 19), "block_rot6": slice(19, 25), "block_vel": slice(25, 28),
    "target_pos": slice(28, 31), "target_rel": slice(31, 34), "place_progress": slice(34, 35),
}

# Block geometry (must match assets/pick_place.xml): half extents along its local x, y, z (m).
BLOCK_HALF = (0.015, 0.015, 0.025)
FINGERS_CLOSED = 0.02  # m of total jaw opening; below the block's narrowest width (3 cm): closed on nothing
HELD_MARGIN = 0.006  # m; jaws closer than (block width across them + this) squeeze it
BETWEEN_X = 0.02  # m; block centre within this of the TCP along the tool axis (pad half length 1 cm + 1 cm) ...
BETWEEN_Y = 0.02  # m; ... across the jaws ...
BETWEEN_Z = 0.035  # m; ... and vertically (pad half height 2.2 cm + 1.3 cm) counts as between the pads
ON_TABLE_Z = 0.032  # m; block centre below this rests on the table (upright 0.025, lying 0.015)
GRIPPER_HIGH_Z = 0.065  # m; TCP above this is lifted (nominal starts <= 0.055, carry height 0.09)
TIPPED_COS = 0.7071  # block long axis with |z component| below cos(45 deg): lying on its side
SETTLED_SPEED = 0.05  # m/s; a block slower than this is at rest (success needs it)
NEAR_BLOCK = 0.02  # m; TCP closer than this to the block has reached it
# place_progress: 1 at success, else 0.9 * (0.3 reach + 0.2 held + 0.5 transport), so it stays <= 0.9 until
# success and PROGRESS_DONE separates the two.
PROGRESS_REACH_SCALE = 0.2  # m; reach term 1 - d(TCP, block) / this, clipped to [0, 1]
PROGRESS_TRANSPORT_SCALE = 0.3  # m; transport term 1 - d_xy(block, target) / this, clipped (starts are <= 0.26 m)
PROGRESS_DONE = 0.95


def rot_from_rot6(rot6: np.ndarray) -> np.ndarray:
    """Rotation matrix from its first two columns (the observation's rot6 encoding)."""
    c0, c1 = np.asarray(rot6[:3], np.float64), np.asarray(rot6[3:6], np.float64)
    return np.stack([c0, c1, np.cross(c0, c1)], axis=1)


def width_across(gripper_rot: np.ndarray, block_rot: np.ndarray) -> float:
    """Extent (m) of the block along the gripper's closing (y) axis: the jaw opening that touches it."""
    proj = np.abs(np.asarray(gripper_rot)[:, 1] @ np.asarray(block_rot))
    return float(2.0 * np.dot(proj, BLOCK_HALF))


def features(obs: np.ndarray) -> dict:
    """The rules' inputs, all read from the observation."""
    obs = np.asarray(obs, np.float64)
    rot = rot_from_rot6(obs[OBS["gripper_rot6"]])
    block_rot = rot_from_rot6(obs[OBS["block_rot6"]])
    tcp, block, target = obs[OBS["tcp_pos"]], obs[OBS["block_pos"]], obs[OBS["target_pos"]]
    opening = float(obs[OBS["finger_opening"]][0])
    local = rot.T @ (block - tcp)
    between = bool(abs(local[0]) < BETWEEN_X and abs(local[1]) < BETWEEN_Y and abs(local[2]) < BETWEEN_Z)
    held = between and opening < width_across(rot, block_rot) + HELD_MARGIN
    return {
        "tcp": tcp, "block": block, "target": target, "opening": opening, "between": between, "held": held,
        "tipped": bool(abs(block_rot[2, 2]) < TIPPED_COS), "on_table": bool(block[2] < ON_TABLE_Z),
        "lifted": bool(tcp[2] > GRIPPER_HIGH_Z), "closed": opening < FINGERS_CLOSED,
        "dist_xy": float(np.linalg.norm(block[:2] - target[:2])), "dist_tcp": float(np.linalg.norm(block - tcp)),
        "speed": float(np.linalg.norm(obs[OBS["block_vel"]])),
    }


def is_success(f: dict, success_radius: float) -> bool:
    """Block within `success_radius` of the target (xy), resting on the table, at rest, and not held."""
    return f["dist_xy"] < success_radius and f["on_table"] and f["speed"] < SETTLED_SPEED and not f["held"]


@dataclass(frozen=True)
class RulesResult:
    """What the rules say about one observation.

    `mode`: the failure mode whose rule fires, None when none fires or the state is a success (the
    labeller's answer). `closest_mode`: never None, the rule's mode or, when none fires, the closest story
    (for callers told the state is a failure).
    """

    mode: str | None
    closest_mode: str
    stage: str
    reason: str


def classify(obs: np.ndarray, success_radius: float | None = None) -> RulesResult:
    """The failure rules on a pick_place observation; `success_radius` None: never call it a success."""
    f = features(obs)
    free = not f["held"]
    if free and f["lifted"] and f["on_table"]:
        rule = "dropped_in_transit"
    elif free and f["tipped"]:
        rule = "knocked_away"
    elif free and f["closed"]:
        rule = "missed_grasp"
    else:
        rule = None
    succeeded = success_radius is not None and is_success(f, success_radius)
    closest = rule or ("dropped_in_transit" if f["lifted"] else "knocked_away" if f["tipped"] else "missed_grasp")
    stage = stage_of(f, success_radius)
    reason = (f"jaw opening {f['opening'] * 100:.1f} cm (closed < {FINGERS_CLOSED * 100:.0f}), block "
              f"{'held' if f['held'] else ('between the jaws' if f['between'] else 'not between the jaws')}, "
              f"{f['dist_tcp'] * 100:.1f} cm from the TCP, {'tipped over' if f['tipped'] else 'upright'}, "
              f"{'on the table' if f['on_table'] else 'off the table'}, {f['dist_xy'] * 100:.1f} cm from the target; "
              f"TCP height {f['tcp'][2] * 100:.1f} cm (lifted > {GRIPPER_HIGH_Z * 100:.1f})")
    return RulesResult(None if succeeded else rule, closest, stage, reason)


def stage_of(f: dict, success_radius: float | None) -> str:
    """The recovery stage: what the gripper must do next."""
    radius = 0.025 if success_radius is None else success_radius
    if f["closed"] and not f["held"] and not f["between"]:
        return "reopen"
    if not f["held"]:
        return "reach" if f["dist_tcp"] > NEAR_BLOCK else "grasp"
    return "carry" if f["dist_xy"] > radius else "release"


def label(obs: np.ndarray, success_radius: float) -> tuple[int, int]:
    """(failure-mode index or -1, recovery-stage index): `tasks.pick_place._label` on an observation."""
    r = classify(obs, success_radius)
    return (-1 if r.mode is None else FAILURE_MODES.index(r.mode)), RECOVERY_STAGES.index(r.stage)


def place_progress(f: dict, success_radius: float) -> float:
    """The progress scalar of `tasks.pick_place` (1 at success, else <= 0.9), from rule features."""
    if is_success(f, success_radius):
        return 1.0
    reach = 1.0 - min(max(f["dist_tcp"] / PROGRESS_REACH_SCALE, 0.0), 1.0)
    transport = 1.0 - min(max(f["dist_xy"] / PROGRESS_TRANSPORT_SCALE, 0.0), 1.0)
    return 0.9 * (0.3 * reach + 0.2 * float(f["held"]) + 0.5 * transport)

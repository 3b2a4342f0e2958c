"""The drawer task's failure rules in NumPy: the one implementation shared by training and the robot.

Imports NumPy only (and the NumPy rotations next to it), so both sides use it: `tasks.drawer` (JAX) takes
its thresholds from here and its offline diagnosis (`DrawerTask.rules_classify`, the `rules` selector of
`recovla_jax.diagnosis`) calls `classify`; the robot runtime's `DrawerRulesSelector` and the native robot's
privileged label call `classify` / `label` too. The JAX labeller `tasks.drawer._drawer_label` applies the
same rules to simulator state; `tests/test_runtime.py` checks the two agree on the same states.

Every quantity the rules need is in the 24-float observation (layout: `tasks/drawer.py`), so the rules
read nothing else: on the robot they run on the (noisy) observation, in simulation on the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recovla_jax.runtime import rotations

FAILURE_MODES = ("missed_handle", "slipped_off", "misaligned_gripper")
RECOVERY_STAGES = ("reorient", "reopen", "reach", "grasp", "pull")
OBS_SIZE = 24
# name -> slice of the 24-float observation (DrawerTask.obs_fields; a test checks they agree)
OBS = {
    "tcp_pos": slice(0, 3), "gripper_rot6": slice(3, 9), "finger_opening": slice(9, 10), "tcp_vel": slice(10, 13),
    "handle_pos": slice(13, 16), "handle_rel": slice(16, 19), "drawer_axis": slice(19, 22),
    "drawer_opening": slice(22, 23), "drawer_vel": slice(23, 24),
}
MISALIGNED_ANGLE = 0.45  # rad; nominal starts stay below ~0.37 (yaw 0.3 plus tilt 0.15 per axis)
FINGERS_CLOSED = 0.03  # m of total opening; below this the jaws count as closed
DRAWER_MOVED = 0.03  # m; a drawer opened further than this has been pulled
GRASPED_OPENING = 0.022  # m of total opening; jaws this closed around the handle hold it
BETWEEN_XY = 0.012  # m; handle within this of the TCP along the gripper's x and y ...
BETWEEN_Z = 0.04  # m; ... and within this along its z counts as between the jaws
NEAR_HANDLE = 0.02  # m; TCP closer than this to the handle has reached it


def rotation_error(rot: np.ndarray, axis: np.ndarray) -> float:
    """Angle (rad) between the gripper rotation and the pose facing the drawer (yaw of `axis`, level)."""
    desired = rotations.euler_zyx_to_mat(np.arctan2(axis[1], axis[0]), 0.0, 0.0)
    return float(np.linalg.norm(rotations.mat_to_axis_angle(desired @ np.asarray(rot).T)))


def privileged_from_obs(obs: np.ndarray) -> dict:
    """The rules' inputs, all of which the drawer observation carries (rotation rebuilt from rot6)."""
    obs = np.asarray(obs, np.float64)
    c0, c1 = obs[3:6], obs[6:9]
    rot = np.stack([c0, c1, np.cross(c0, c1)], axis=1)
    tcp, handle = obs[OBS["tcp_pos"]], obs[OBS["handle_pos"]]
    finger = float(obs[OBS["finger_opening"]][0])
    rel_local = rot.T @ (handle - tcp)
    between = bool(abs(rel_local[0]) < BETWEEN_XY and abs(rel_local[1]) < BETWEEN_XY and abs(rel_local[2]) < BETWEEN_Z)
    return {
        "tcp_pos": tcp, "gripper_rot": rot, "handle_pos": handle, "drawer_axis": obs[OBS["drawer_axis"]],
        "drawer_opening": float(obs[OBS["drawer_opening"]][0]), "finger_opening": finger,
        "handle_between_fingers": between, "grasped": between and finger < GRASPED_OPENING,
    }


@dataclass(frozen=True)
class RulesResult:
    """What the rules say about one observation.

    `mode`: the failure mode whose rule fires (precedence misaligned > slipped > missed), None when none
    fires or the drawer is open to `success_opening` (the labeller's answer). `closest_mode`: never None,
    the rule's mode or, when no rule fires, the closest story (for callers told the state is a failure).
    """

    mode: str | None
    closest_mode: str
    stage: str
    reason: str


def classify(obs: np.ndarray, success_opening: float | None = None) -> RulesResult:
    """The failure rules on a drawer observation; `success_opening` None: never call it a success."""
    p = privileged_from_obs(obs)
    rot_err = rotation_error(p["gripper_rot"], p["drawer_axis"])
    grasped, between, finger, opening = p["grasped"], p["handle_between_fingers"], p["finger_opening"], p["drawer_opening"]
    closed = finger < FINGERS_CLOSED
    opened = opening > DRAWER_MOVED
    dist = float(np.linalg.norm(p["handle_pos"] - p["tcp_pos"]))
    if rot_err > MISALIGNED_ANGLE and not grasped:
        rule = "misaligned_gripper"
    elif opened and not grasped:
        rule = "slipped_off"
    elif not opened and closed and not between:
        rule = "missed_handle"
    else:
        rule = None
    succeeded = success_opening is not None and opening >= success_opening
    closest = rule or ("slipped_off" if opened else ("misaligned_gripper" if rot_err > 0.5 * MISALIGNED_ANGLE else "missed_handle"))
    if rot_err > MISALIGNED_ANGLE:
        stage = "reorient"
    elif closed and not grasped and not between:
        stage = "reopen"
    elif dist > NEAR_HANDLE:
        stage = "reach"
    else:
        stage = "pull" if grasped else "grasp"
    reason = (f"wrist error {rot_err:.2f} rad (misaligned > {MISALIGNED_ANGLE}), jaw opening {finger * 100:.1f} cm "
              f"(closed < {FINGERS_CLOSED * 100:.0f}), handle {dist * 100:.1f} cm from the TCP "
              f"({'between' if between else 'not between'} the jaws), drawer open {opening * 100:.1f} cm "
              f"(moved > {DRAWER_MOVED * 100:.0f})")
    return RulesResult(None if succeeded else rule, closest, stage, reason)


def label(obs: np.ndarray, success_opening: float) -> tuple[int, int]:
    """(failure-mode index or -1, recovery-stage index): `tasks.drawer._drawer_label` on an observation."""
    r = classify(obs, success_opening)
    return (-1 if r.mode is None else FAILURE_MODES.index(r.mode)), RECOVERY_STAGES.index(r.stage)


def label_obs(obs: np.ndarray, success_opening: float) -> str | None:
    """Failure-mode name (or None: no failure) of an observation."""
    return classify(obs, success_opening).mode

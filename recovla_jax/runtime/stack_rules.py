"""The stack task's geometry and failure rules in NumPy: the one implementation shared by training and the robot.

Imports NumPy only, so the robot runtime can use it without JAX. `tasks.stack` (JAX) takes its thresholds
from here and its offline diagnosis (`StackTask.rules_classify`) calls `classify`; the JAX labeller
`tasks.stack._stack_label` applies the same rules to simulator state and `tests/test_task_stack.py` checks
that the two agree on the same states.

Every quantity the rules need is in the 41-float observation (layout: `tasks/stack.py`): block centres,
tilts and the gripper pose/opening, so the rules read nothing else.

Blocks are 5 cm cubes: block 1 (red) is the base, block 2 (green) goes on block 1, block 3 (blue) on block 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAILURE_MODES = ("toppled_stack", "placed_off_centre", "wrong_order")
RECOVERY_STAGES = ("clear", "reopen", "reach", "grasp", "carry", "release")
OBS_SIZE = 41
# name -> slice of the 41-float observation (StackTask.obs_fields; a test checks they agree)
OBS = {
    "tcp_pos": slice(0, 3), "gripper_rot6": slice(3, 9), "finger_opening": slice(9, 10), "tcp_vel": slice(10, 13),
    "block_pos": slice(13, 22), "block_rel": slice(22, 31), "block_yaw4": slice(31, 37), "block_tilt": slice(37, 40),
    "stack_progress": slice(40, 41),
}

HALF = 0.025  # m, block half size (assets/stack.xml)
BLOCK = 2 * HALF  # m, block edge: the centre-to-centre height of two stacked blocks
# Success geometry: a block counts as correctly placed when its centre is within XY_TOL of the centre of the
# block below (a fifth of the edge: a visibly neat stack), its height within Z_TOL of resting on it and it
# is tilted less than TILT_TOL.
XY_TOL = 0.01
Z_TOL = 0.006
TILT_TOL = 0.12  # rad (about 7 degrees)
# "Resting on" (any offset): centre within REST_XY of the block below (beyond it the overlap is too small to
# carry the block) and height within REST_Z of one block edge above it (looser than Z_TOL: a tilted block
# resting on an edge sits lower).
REST_XY = 0.045
REST_Z = 0.015
ON_FLOOR_Z = HALF + 0.012  # m; a block centre below this lies on the table (or leans low against the stack)
NEAR_STACK = 0.11  # m (xy); a fallen block closer than this to the base block fell off the stack
# Jaw state (sum of both finger positions; 0.08 fully open, 0.05 closed on a block).
HELD_OPENING = 0.058  # below this, jaws around a block hold it
RELEASED_OPENING = 0.062  # above this the jaws have let go (success needs the top block released)
OPEN_OK = 0.07  # jaws this open may straddle a block
JAWS_CLOSED = 0.03  # jaws closed this far hold nothing (a block keeps them at 0.05)
# A block is between the jaws when its centre is within these of the TCP along the gripper's x (tool axis),
# y (closing direction) and z axes.
BETWEEN_X = 0.02
BETWEEN_Y = 0.012
BETWEEN_Z = 0.03
GRASP_DZ = 0.008  # m; grasp the block this far above its centre (pads then clear the table)
NEAR_GRASP = 0.02  # m; TCP within this of the grasp point has reached the block


def privileged_from_obs(obs: np.ndarray) -> dict:
    """The rules' inputs, all of which the stack observation carries (rotation rebuilt from rot6)."""
    obs = np.asarray(obs, np.float64)
    c0, c1 = obs[3:6], obs[6:9]
    rot = np.stack([c0, c1, np.cross(c0, c1)], axis=1)
    tcp = obs[OBS["tcp_pos"]]
    blocks = obs[OBS["block_pos"]].reshape(3, 3)
    finger = float(obs[OBS["finger_opening"]][0])
    rel_local = (blocks - tcp) @ rot  # row k: rot.T @ (block_k - tcp)
    between = ((np.abs(rel_local[:, 0]) < BETWEEN_X) & (np.abs(rel_local[:, 1]) < BETWEEN_Y)
               & (np.abs(rel_local[:, 2]) < BETWEEN_Z))
    return {"tcp_pos": tcp, "gripper_rot": rot, "finger_opening": finger, "block_pos": blocks,
            "block_tilt": obs[OBS["block_tilt"]], "between": between, "held": between & (finger < HELD_OPENING)}


def resting_on(top: np.ndarray, below: np.ndarray) -> bool:
    """`top` sits on `below` (any offset that can still carry it)."""
    return bool(np.linalg.norm(top[:2] - below[:2]) < REST_XY and abs(top[2] - below[2] - BLOCK) < REST_Z)


def placed_on(top: np.ndarray, below: np.ndarray, tilt: float) -> bool:
    """`top` sits neatly on `below`: centred within XY_TOL, at the resting height, not tilted."""
    return bool(np.linalg.norm(top[:2] - below[:2]) < XY_TOL and abs(top[2] - below[2] - BLOCK) < Z_TOL
                and tilt < TILT_TOL)


def base_ok(base: np.ndarray, tilt: float) -> bool:
    """The base block stands upright on the table."""
    return bool(abs(base[2] - HALF) < Z_TOL and tilt < TILT_TOL)


def stack_state(p: dict) -> dict:
    """Which blocks are correctly placed, and what the sub-goal logic of the expert would do next."""
    b, tilt = p["block_pos"], p["block_tilt"]
    placed2 = base_ok(b[0], tilt[0]) and placed_on(b[1], b[0], tilt[1])
    placed3 = placed2 and placed_on(b[2], b[1], tilt[2])
    # Block 3 in the way of block 2: on the base, or on block 2 while block 2 is not on the base.
    blocking = (not placed2) and (resting_on(b[2], b[0]) or resting_on(b[2], b[1]))
    wrong = blocking or resting_on(b[1], b[2])
    return {"placed2": placed2, "placed3": placed3, "blocking": blocking, "wrong": wrong,
            "progress": (float(placed2) + float(placed3)) / 2.0, "next": 2 if (blocking or placed2) else 1}


@dataclass(frozen=True)
class RulesResult:
    """What the rules say about one observation.

    `mode`: the failure mode whose rule fires (precedence wrong_order > toppled_stack > placed_off_centre),
    None when none fires or the stack is done and released. `closest_mode`: never None, the rule's mode or,
    when no rule fires, the closest story (for callers told the state is a failure).
    """

    mode: str | None
    closest_mode: str
    stage: str
    reason: str


def classify(obs: np.ndarray) -> RulesResult:
    """The failure rules on a stack observation."""
    p = privileged_from_obs(obs)
    s = stack_state(p)
    b, held, finger = p["block_pos"], p["held"], p["finger_opening"]
    success = s["placed3"] and finger > RELEASED_OPENING
    base_dist = np.linalg.norm(b[1:, :2] - b[0, :2], axis=-1)
    fallen = [(not held[k]) and b[k, 2] < ON_FLOOR_Z and base_dist[k - 1] < NEAR_STACK for k in (1, 2)]
    # A block resting on its required support but not neatly placed (offset or tilted), and let go of.
    off2 = (not held[1]) and resting_on(b[1], b[0]) and not s["placed2"]
    off3 = (not held[2]) and s["placed2"] and resting_on(b[2], b[1]) and not s["placed3"]
    wrong = s["wrong"] and not held[1] and not held[2]
    if success:
        rule = None
    elif wrong:
        rule = "wrong_order"
    elif fallen[0] or fallen[1]:
        rule = "toppled_stack"
    elif off2 or off3:
        rule = "placed_off_centre"
    else:
        rule = None
    if rule is not None:
        closest = rule
    elif s["wrong"]:
        closest = "wrong_order"
    elif resting_on(b[1], b[0]) or resting_on(b[2], b[1]):
        closest = "placed_off_centre"
    else:
        closest = "toppled_stack"
    stage = RECOVERY_STAGES[stage_index(p, s)]
    offsets = [np.linalg.norm(b[k, :2] - b[k - 1, :2]) for k in (1, 2)]
    reason = (f"stack progress {s['progress']:.1f}; green {offsets[0] * 100:.1f} cm and blue {offsets[1] * 100:.1f} cm "
              f"off the centre of the block below (placed < {XY_TOL * 100:.0f}); heights "
              f"{b[0, 2] * 100:.1f}/{b[1, 2] * 100:.1f}/{b[2, 2] * 100:.1f} cm; green/blue "
              f"{base_dist[0] * 100:.1f}/{base_dist[1] * 100:.1f} cm from the red base (fallen < {NEAR_STACK * 100:.0f} "
              f"on the table); jaws {finger * 100:.1f} cm open{', holding a block' if held.any() else ''}; "
              f"{'block 3 sits on a wrong block' if s['wrong'] else 'no block on a wrong support'}")
    return RulesResult(rule, closest, stage, reason)


def stage_index(p: dict, s: dict) -> int:
    """Recovery stage: clear a wrong support, reopen empty closed jaws, reach / grasp / carry the next block,
    or release the finished stack."""
    k = s["next"]
    held = p["held"]
    grasp = p["block_pos"][k] + np.array([0.0, 0.0, GRASP_DZ])
    dist = float(np.linalg.norm(grasp - p["tcp_pos"]))
    if s["placed3"]:
        return RECOVERY_STAGES.index("release")
    if s["blocking"]:
        return RECOVERY_STAGES.index("clear")
    if p["finger_opening"] < JAWS_CLOSED and not held.any():
        return RECOVERY_STAGES.index("reopen")
    if held[k]:
        return RECOVERY_STAGES.index("carry")
    return RECOVERY_STAGES.index("reach" if dist > NEAR_GRASP else "grasp")


def label(obs: np.ndarray) -> tuple[int, int]:
    """(failure-mode index or -1, recovery-stage index): `tasks.stack._stack_label` on an observation."""
    r = classify(obs)
    return (-1 if r.mode is None else FAILURE_MODES.index(r.mode)), RECOVERY_STAGES.index(r.stage)


def label_obs(obs: np.ndarray) -> str | None:
    """Failure-mode name (or None: no failure) of an observation."""
    return classify(obs).mode

"""What a controller with one control step of action latency executes first: the hold action.

Shared by the residual env (training and evaluation) and the base policy's DAgger rounds, so both delay
actions the same way. Its own module (not `sim.gripper`) because the BC cache hashes `sim.gripper`'s source:
an edit there retrains every cached clone, an edit here only the clones trained with latency.
"""

from __future__ import annotations

import jax.numpy as jnp
from mujoco import mjx

from recovla_jax.sim import gripper as grip


def hold_action(idx: grip.GripperIndices, data: mjx.Data) -> jnp.ndarray:
    """Zero motion with the jaw command that `data`'s finger targets already hold."""
    finger = jnp.mean(data.ctrl[jnp.array(idx.finger_ctrl)])
    grip_cmd = 2.0 * (finger - grip.FINGER_OPEN) / (grip.FINGER_SQUEEZE - grip.FINGER_OPEN) - 1.0
    return jnp.zeros(grip.ACTION_SIZE).at[6].set(jnp.clip(grip_cmd, -1.0, 1.0))

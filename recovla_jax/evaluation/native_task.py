"""Any JAX task's sensors and labels on a native MuJoCo state: `NativeTask` without a NumPy twin.

The native robot (C MuJoCo) is the stand-in for the real world, so it may use JAX to *simulate its
sensors*; the robot-side runtime that consumes the observations stays JAX-free. Evaluating the task's own
`observe` / `success` / `label` (the functions training used) on the native state rules out twin drift by
construction, which matters more for a sim-to-sim measurement than the ~0.2 ms a jitted call costs.

Why a field copy rather than `mjx.put_data`: the task functions read kinematic fields (positions,
orientations, joint state), and copying those ~a dozen arrays into a fixed MJX template is much cheaper
than converting a whole `MjData` every control step. Tasks must not read contact or constraint arrays in
`observe` / `privileged` / `success` (none does: contacts are judged from geometry).
"""

from __future__ import annotations

import jax
import mujoco
import numpy as np
from mujoco import mjx

from recovla_jax.runtime.gripper import GripperIndices
from recovla_jax.tasks.base import Task

# MjData fields copied into the MJX view each call (kinematics and joint state after `mj_step`).
VIEW_FIELDS = ("qpos", "qvel", "ctrl", "mocap_pos", "mocap_quat", "xpos", "xquat", "xmat", "xipos", "ximat", "site_xpos",
               "site_xmat", "geom_xpos", "geom_xmat", "subtree_com")


class JaxNativeTask:
    """`runtime.robots.native.NativeTask` from a JAX `Task`: one jitted call per query."""

    def __init__(self, task: Task, model: mujoco.MjModel):
        if model.nq != task.mj_model.nq or model.nbody != task.mj_model.nbody:
            raise ValueError(f"the native scene ({model.nq} qpos, {model.nbody} bodies) is not task {task.name!r}'s "
                             f"({task.mj_model.nq} qpos, {task.mj_model.nbody} bodies)")
        self.task = task
        self.grip = GripperIndices.from_model(model)
        mx = mjx.put_model(task.mj_model)
        template = task.data_template
        self._shapes = {k: getattr(template, k).shape for k in VIEW_FIELDS}

        def view(fields: dict) -> mjx.Data:
            return template.replace(**fields)

        def query(fields: dict):
            d = view(fields)
            mode, _ = task.label(task.privileged(mx, d))
            return task.observe(mx, d), task.success(mx, d), mode

        self._query = jax.jit(query)
        self._reset = jax.jit(lambda key: (lambda d: (d.qpos, d.qvel, d.ctrl, d.mocap_pos, d.mocap_quat))(task.reset(mx, key)))
        self._cache: tuple[int, float, tuple] | None = None

    def _fields(self, data: mujoco.MjData) -> dict:
        return {k: np.asarray(getattr(data, k), np.float32).reshape(self._shapes[k]) for k in VIEW_FIELDS}

    def _evaluate(self, data: mujoco.MjData) -> tuple[np.ndarray, bool, int]:
        # observe, success and label of one state come from one call; reuse it while the state is unchanged.
        stamp = (id(data), float(data.time), float(np.sum(data.qpos)))
        if self._cache is None or self._cache[0] != stamp:
            obs, ok, mode = jax.device_get(self._query(self._fields(data)))
            self._cache = (stamp, (np.asarray(obs, np.float64), bool(ok), int(mode)))
        return self._cache[1]

    def observe(self, data: mujoco.MjData) -> np.ndarray:
        return self._evaluate(data)[0].copy()

    def success(self, data: mujoco.MjData) -> bool:
        return self._evaluate(data)[1]

    def label(self, data: mujoco.MjData) -> str | None:
        mode = self._evaluate(data)[2]
        return None if mode < 0 else self.task.failure_modes[mode]

    def nominal_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The JAX task's own randomized reset, keyed from the NumPy generator (held-out seeds)."""
        key = jax.random.PRNGKey(int(rng.integers(0, 2**31 - 1)))
        qpos, qvel, ctrl, mocap_pos, mocap_quat = (np.asarray(x, np.float64) for x in jax.device_get(self._reset(key)))
        return {"qpos": qpos, "qvel": qvel, "ctrl": ctrl, "mocap_pos": mocap_pos, "mocap_quat": mocap_quat}

    def with_noise(self, state: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Independent noise on every float, as `ResidualEnv` adds it in training."""
        return state + noise

"""Native MuJoCo drawer robot (JAX-free): the generic `NativeRobot` with the drawer's NumPy twin.

Same scene and the task's exact observation layout (`runtime.drawer.DrawerScene`, tested against the JAX
task), success and failure rules (`runtime.drawer_rules`, shared with the JAX labeller).

`scene`: the MJCF the policies were trained with (an export carries a copy, `scene.xml`). Start states
(failure-bank rows or nominal draws) must come from the same scene: a different qpos size is refused.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from recovla_jax.runtime import drawer, drawer_rules
from recovla_jax.runtime.robots.native import NativeDynamics, NativeRobot

__all__ = ["SCENE", "DrawerNativeTask", "NativeDrawerRobot", "NativeDynamics"]

SCENE = Path(__file__).resolve().parents[2] / "assets" / "drawer.xml"


class DrawerNativeTask:
    """`NativeTask` for the drawer, in NumPy."""

    def __init__(self, scene: drawer.DrawerScene, ranges: drawer.DrawerNominalRanges):
        self.scene, self.ranges, self.grip = scene, ranges, scene.grip

    def observe(self, data: mujoco.MjData) -> np.ndarray:
        return self.scene.observe(data)

    def success(self, data: mujoco.MjData) -> bool:
        return float(data.qpos[self.scene.drawer_qpos]) >= self.ranges.success_opening

    def label(self, data: mujoco.MjData) -> str | None:
        return drawer_rules.label_obs(self.scene.observe(data), self.ranges.success_opening)

    def nominal_state(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.scene.nominal_state(rng, self.ranges)

    def with_noise(self, state: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """A real sensor measures positions; the relative vector is computed from the noisy ones."""
        noisy = state + noise
        obs = drawer_rules.OBS
        noisy[obs["handle_rel"]] = noisy[obs["handle_pos"]] - noisy[obs["tcp_pos"]]
        return noisy


class NativeDrawerRobot(NativeRobot):
    """The drawer on native MuJoCo; `scene` (DrawerScene) and `ranges` stay reachable for harnesses."""

    def __init__(self, dynamics: NativeDynamics | None = None, seed: int = 0, task_config: dict | None = None,
                 ctrl_dt: float = 0.02, scene: Path = SCENE):
        model = mujoco.MjModel.from_xml_path(str(scene))
        self.scene = drawer.DrawerScene(model)
        self.ranges = drawer.DrawerNominalRanges.from_task_config(task_config or {})
        super().__init__(model, DrawerNativeTask(self.scene, self.ranges), dynamics, seed, ctrl_dt)

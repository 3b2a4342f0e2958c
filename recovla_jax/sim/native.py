"""Native MuJoCo views of saved states: load a bank row into `mujoco.MjData`, forward it, observe it.

Why: rendering and offline diagnosis run per state on the CPU, where compiling an MJX program (tens of
seconds) costs far more than native `mj_forward` (microseconds). Tasks compute observations from
`site_xpos`, `xmat`, `qpos`, `qvel`, which `MjData` has too, only with `xmat` flattened; `mjx_view`
reshapes them so `task.observe` / `task.privileged` run unchanged on a native state.

Scenes must not hang bodies below a mocap body: MJX (mujoco-mjx 3.17) applies mocap poses after its
kinematic tree pass, so such children would sit at their model pose in MJX and elsewhere here.
`check_mjx_compatible` raises on that; the drawer's cabinet pose is held in joints for this reason.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

import mujoco
import numpy as np

STATE_FIELDS = ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl")


def mocap_parents_with_children(model: mujoco.MjModel) -> list[str]:
    """Mocap bodies that have child bodies (placed differently by MJX and native MuJoCo)."""
    return [model.body(b).name for b in range(model.nbody)
            if model.body_mocapid[b] >= 0 and np.any(model.body_parentid[1:] == b)]


def check_mjx_compatible(model: mujoco.MjModel) -> None:
    """Refuse a scene whose native kinematics would differ from MJX's (see the module docstring)."""
    odd = mocap_parents_with_children(model)
    if odd:
        raise ValueError(f"mocap bod{'ies' if len(odd) > 1 else 'y'} {odd} carry child bodies: MJX would leave the "
                         "children at their model pose; hold the pose in joints instead (see assets/drawer.xml)")


def load_state(model: mujoco.MjModel, data: mujoco.MjData, state: Mapping[str, np.ndarray]) -> None:
    """Copy a saved state (a bank row: qpos, qvel, mocap_pos, mocap_quat, ctrl; missing ones keep their value)."""
    mujoco.mj_resetData(model, data)
    for name in STATE_FIELDS:
        if name in state and getattr(data, name).size:
            getattr(data, name)[...] = np.asarray(state[name], np.float64).reshape(getattr(data, name).shape)


def forward(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """`mj_forward` (kinematics identical to MJX's for scenes that pass `check_mjx_compatible`)."""
    mujoco.mj_forward(model, data)


def mjx_view(data: mujoco.MjData) -> SimpleNamespace:
    """The `mjx.Data` fields tasks read, as numpy arrays with MJX's shapes (`xmat` as (nbody, 3, 3))."""
    return SimpleNamespace(
        qpos=data.qpos.copy(), qvel=data.qvel.copy(), ctrl=data.ctrl.copy(),
        xpos=data.xpos.copy(), xmat=data.xmat.reshape(-1, 3, 3).copy(), xquat=data.xquat.copy(),
        site_xpos=data.site_xpos.copy(), site_xmat=data.site_xmat.reshape(-1, 3, 3).copy(),
        geom_xpos=data.geom_xpos.copy(), geom_xmat=data.geom_xmat.reshape(-1, 3, 3).copy(),
        mocap_pos=data.mocap_pos.copy(), mocap_quat=data.mocap_quat.copy(),
    )


def observe_state(task, state: Mapping[str, np.ndarray], data: mujoco.MjData | None = None) -> np.ndarray:
    """The task's observation vector of a saved state, computed natively (no MJX compile)."""
    model = task.mj_model
    data = data if data is not None else mujoco.MjData(model)
    load_state(model, data, state)
    forward(model, data)
    return np.asarray(task.observe(model, mjx_view(data)), np.float32)


def privileged_state(task, state: Mapping[str, np.ndarray], data: mujoco.MjData | None = None) -> dict[str, np.ndarray]:
    """The task's privileged quantities of a saved state (for labels in tests and tools, never for selectors)."""
    model = task.mj_model
    data = data if data is not None else mujoco.MjData(model)
    load_state(model, data, state)
    forward(model, data)
    return {k: np.asarray(v) for k, v in task.privileged(model, mjx_view(data)).items()}

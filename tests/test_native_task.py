"""The generic native robot: any task's JAX sensors on a C-MuJoCo state equal MJX's on the same state."""

from __future__ import annotations

import jax
import mujoco
import numpy as np
import pytest
from mujoco import mjx

from recovla_jax.evaluation.native_task import JaxNativeTask
from recovla_jax.runtime.robots.native import NativeDynamics, NativeRobot
from recovla_jax.tasks import get_task, task_names
from recovla_jax.tasks.base import ASSETS


@pytest.fixture(scope="module", params=task_names())
def native(request):
    task = get_task(request.param)
    model = mujoco.MjModel.from_xml_path(str(ASSETS / task.xml_file))  # a fresh model: the robot randomizes its own
    return task, NativeRobot(model, JaxNativeTask(task, model), NativeDynamics.nominal(), seed=0)


def test_native_view_matches_full_mjx_conversion(native):
    """The copied kinematic fields are all the task reads: same obs/success/label as a full `put_data`."""
    task, robot = native
    mx = mjx.put_model(task.mj_model)
    full = jax.jit(lambda d: (task.observe(mx, d), task.success(mx, d), task.label(task.privileged(mx, d))[0]))
    rng = np.random.default_rng(0)
    for episode in range(3):
        robot.reset(seed=episode)
        for step in range(8):
            robot.apply_action(rng.uniform(-1, 1, 7))
            d = mjx.put_data(robot.model, robot.data)
            obs, ok, mode = jax.device_get(full(d))
            np.testing.assert_allclose(robot.true_state(), obs, atol=2e-5)
            assert robot.success() == bool(ok)
            assert robot.privileged_mode() == (None if mode < 0 else task.failure_modes[int(mode)])


def test_native_nominal_starts_are_the_task_reset(native):
    task, robot = native
    mx = mjx.put_model(task.mj_model)
    obs_of = jax.jit(lambda q, v, mp, mq: task.observe(mx, mjx.forward(mx, task.data_template.replace(
        qpos=q, qvel=v, mocap_pos=mp, mocap_quat=mq))))
    starts = []
    for seed in range(4):
        obs = robot.reset(seed=seed).state
        starts.append(obs)
        d = robot.data
        expected = obs_of(*(np.asarray(x, np.float32) for x in (d.qpos, d.qvel, d.mocap_pos, d.mocap_quat)))
        # native (float64) vs MJX (float32) forward kinematics; angles from arccos near 1 (stack's block tilt)
        # amplify float32 rounding to ~3e-4 rad
        np.testing.assert_allclose(obs, expected, atol=1e-3)
        assert not robot.success()
    assert np.std(np.array(starts)[:, :3], axis=0).max() > 1e-3  # seeded draws differ


def test_runtime_rules_selector_keeps_the_base_on_nominal_starts(native):
    """At runtime the rules answer None when no rule fires (the offline hook always names a mode)."""
    from recovla_jax.evaluation.sim2sim import rules_selector

    task, robot = native
    selector = rules_selector(task)
    for seed in range(4):
        obs = robot.reset(seed=seed)
        assert robot.privileged_mode() is None and selector.select(obs) is None
    assert task.rules_classify(obs.state)[0] in task.failure_modes


def test_drawer_numpy_twin_equals_jax_sensors():
    """The drawer's JAX-free twin and the generic JAX view agree on the same native states."""
    from recovla_jax.runtime.robots.mujoco_drawer import NativeDrawerRobot

    task = get_task("drawer")
    twin = NativeDrawerRobot(NativeDynamics.nominal(), seed=3)
    view = JaxNativeTask(task, twin.model)
    rng = np.random.default_rng(1)
    for _ in range(3):
        twin.reset()
        for _ in range(10):
            twin.apply_action(rng.uniform(-1, 1, 7))
            np.testing.assert_allclose(view.observe(twin.data), twin.true_state(), atol=2e-5)
            assert view.success(twin.data) == twin.success()

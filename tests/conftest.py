"""Shared, session-scoped fixtures: MJX programs compile once per test session, not once per test."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import pytest  # noqa: E402

from recovla_jax.utils.jax_setup import configure_jax  # noqa: E402

configure_jax()

# The default BC recipe: about 4 minutes on 2 CPU cores; smaller ones no longer reach the 85% nominal floor.
TEST_BC = dict(eval_envs=64)  # the default BC recipe (1024 demos, 6000 steps): smaller clones fall below 85%


@pytest.fixture(scope="session")
def drawer_task():
    from recovla_jax.tasks import get_task

    return get_task("drawer")


@pytest.fixture(scope="session")
def drawer_env(drawer_task):
    from recovla_jax.sim.env import TaskEnv

    return TaskEnv(drawer_task)


@pytest.fixture(scope="session")
def drawer_batch_fns(drawer_env):
    """Jitted batched reset/step of the drawer env (8 envs), compiled once."""
    reset = jax.jit(jax.vmap(drawer_env.reset))
    step = jax.jit(jax.vmap(drawer_env.step))
    return reset, step


@pytest.fixture(scope="session")
def bc_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("recovla-cache")


@pytest.fixture(scope="session")
def drawer_base_policy(drawer_task, bc_cache_dir):
    from recovla_jax.policies.bc import BCConfig, load_or_train_base_policy

    return load_or_train_base_policy(drawer_task, BCConfig(**TEST_BC), cache_dir=bc_cache_dir)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """A real-format training run directory with tiny random networks (tests/_fake_run.py; no MJX compile)."""
    from tests._fake_run import build_fake_run

    return build_fake_run(tmp_path_factory.mktemp("fake-run") / "run")


@pytest.fixture(scope="session")
def fake_export(fake_run):
    """`fake_run` exported to ONNX + manifest (run/export)."""
    from recovla_jax.export.exporter import export_run

    export_run(fake_run, fake_run / "export", log=lambda *_: None)
    return fake_run / "export"

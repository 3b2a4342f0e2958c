"""The contract every registered task signs (tasks/base.py), checked on each task without compiling MJX.

Downstream code (bank, rewards, selectors, export, report) relies on these invariants for any task, so a
new task that breaks one fails here with the task's name, not deep inside a training run.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from recovla_jax.rewards.library import SHARED_COMPONENTS, component_names
from recovla_jax.sim.native import check_mjx_compatible
from recovla_jax.sim.render import DEFAULT_CAMERAS
from recovla_jax.tasks import get_task, task_names
from recovla_jax.tasks.registry import TASK_CLASSES

FAMILIES = {"short-horizon", "long-horizon", "contact-rich"}


@pytest.fixture(scope="module", params=task_names())
def task(request):
    return get_task(request.param)


def test_every_registered_task_is_present():
    assert sorted(TASK_CLASSES) == task_names(), "a registered task's module is missing from this checkout"


def test_identity_family_and_progress(task):
    assert task.family in FAMILIES, f"{task.name}: family {task.family!r} not in {sorted(FAMILIES)}"
    assert task.instruction
    spec = task.progress_spec()
    assert spec["success_threshold"] > 0.0
    assert task.config.episode_length >= 20


def test_observation_fields_documented_in_module_docstring(task):
    names = [f.name for f in task.obs_fields]
    assert len(names) == len(set(names)) and all(f.size > 0 for f in task.obs_fields)
    doc = sys.modules[type(task).__module__].__doc__ or ""
    undocumented = [n for n in names if n not in doc]
    assert not undocumented, f"{task.name}: observation fields {undocumented} missing from the module docstring"


def test_failure_modes_are_complete(task):
    modes = set(task.failure_modes)
    assert len(task.failure_modes) >= 3 and len(modes) == len(task.failure_modes)
    assert task.recovery_stages
    for table in ("failure_descriptions", "injection_windows", "oracle_masks"):
        assert set(getattr(task, table)) == modes, f"{task.name}.{table} must cover exactly {sorted(modes)}"
    for mode, (lo, hi) in task.injection_windows.items():
        assert 0 <= lo <= hi < task.config.episode_length, f"{task.name}: window of {mode} = {(lo, hi)}"


def test_oracle_masks_use_known_components_and_success_dominates(task):
    valid = set(component_names(task))
    assert set(task.potential_components) <= set(task.reward_component_descriptions)
    assert not set(task.reward_component_descriptions) & set(SHARED_COMPONENTS)
    for mode, mask in task.oracle_masks.items():
        unknown = set(mask) - valid
        assert not unknown, f"{task.name}/{mode}: unknown components {unknown}"
        assert all(w >= 0 for w in mask.values())
        potential = sum(w for name, w in mask.items() if name in task.potential_components)
        # Potentials telescope to at most their summed weights over an episode, so a success bonus above
        # twice that sum means no failed episode can outscore a successful one.
        assert mask.get("success", 0.0) > 2.0 * potential, f"{task.name}/{mode}: success weight too small"


def test_scene_is_mjx_compatible_and_has_the_diagnosis_cameras(task):
    check_mjx_compatible(task.mj_model)
    cams = {task.mj_model.camera(i).name for i in range(task.mj_model.ncam)}
    assert set(DEFAULT_CAMERAS) <= cams, f"{task.name}: cameras {sorted(cams)} lack {DEFAULT_CAMERAS}"


def test_rules_module_imports_without_jax(task):
    """The robot-side rules of a task (runtime/<task>_rules.py) must not pull JAX in."""
    assert task.has_rules()
    module = task.rules_module
    src = importlib.util.find_spec(module)
    assert src is not None, f"{task.name}: no {module}"
    text = open(src.origin).read()
    assert "import jax" not in text and "from jax" not in text, f"{module} imports JAX"


def test_bc_overrides_are_valid_bc_config(task):
    from recovla_jax.policies.bc import BCConfig

    BCConfig(**task.bc_overrides)  # extra="forbid": a misspelt field raises here, not after minutes of demos

import pytest
from pydantic import ValidationError

from recovla_jax.sim.randomization import DomainRandomization
from recovla_jax.tasks import get_task, task_names
from recovla_jax.tasks.registry import UnknownTaskError


def test_unknown_task_lists_valid_names_and_suggests():
    with pytest.raises(UnknownTaskError) as err:
        get_task("drawr")
    msg = str(err.value)
    assert "'drawr'" in msg and "Valid tasks: " in msg and "drawer" in msg and "Did you mean 'drawer'" in msg


def test_registry_lists_drawer():
    assert "drawer" in task_names()


def test_config_rejects_unknown_key_naming_it():
    with pytest.raises(ValidationError) as err:
        get_task("drawer", {"succes_opening": 0.1})
    assert "succes_opening" in str(err.value)


def test_config_rejects_out_of_range_value():
    with pytest.raises(ValidationError) as err:
        get_task("drawer", {"success_opening": 0.5})
    assert "success_opening" in str(err.value)


def test_config_rejects_ctrl_dt_not_multiple_of_timestep():
    with pytest.raises(ValueError, match="whole multiple"):
        get_task("drawer", {"ctrl_dt": 0.0123})


def test_domain_randomization_rejects_bad_range():
    with pytest.raises(ValidationError, match="friction"):
        DomainRandomization(friction=(1.2, 0.8))


def test_observation_layout_documented(drawer_task):
    layout = drawer_task.obs_layout()
    assert sum(f["size"] for f in layout) == drawer_task.observation_size == 24
    assert layout[0]["name"] == "tcp_pos" and layout[-1]["name"] == "drawer_vel"
    assert all(f["description"] for f in layout)


def _dev_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("dev_entry", Path(__file__).resolve().parents[1] / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dev_installs_the_accelerator_extra_named_and_refuses_unknown_ones():
    import tomllib
    from pathlib import Path

    dev = _dev_module()
    assert dev.install_extras(None) == "test" and dev.install_extras("") == "test" and dev.install_extras("CPU") == "test"
    assert dev.install_extras("cuda12") == "test,cuda12"
    project = tomllib.loads((Path(dev.__file__).parent / "pyproject.toml").read_text())["project"]
    jax_version = next(d for d in project["dependencies"] if d.startswith("jax==")).split("==")[1]
    for name in dev.ACCELERATORS[1:]:  # every name dev.py accepts is an extra with JAX's plugin at the pinned version
        assert project["optional-dependencies"][name] == [f"jax[{name}]=={jax_version}"]
    with pytest.raises(SystemExit) as err:
        dev.install_extras("cuda11")
    assert "'cuda11'" in str(err.value) and "cuda12" in str(err.value) and "tpu" in str(err.value)

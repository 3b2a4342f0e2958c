"""The task interface every manipulation task implements (drawer now; pick_place, stack, peg_insert later).

A task is plain data plus pure JAX functions of (mjx.Model, mjx.Data): the environment, the failure
collector, the reward library and the expert all talk to a task only through this interface, so nothing
downstream is drawer-specific.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx
from pydantic import BaseModel, ConfigDict

from recovla_jax.sim.gripper import GripperIndices, GripperLimits

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ObsField:
    """One slice of the observation vector: its name, width, unit and meaning."""

    name: str
    size: int
    unit: str
    description: str


class TaskConfig(BaseModel):
    """Base for task settings: unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_length: int = 150
    ctrl_dt: float = 0.02


class Task(abc.ABC):
    """A manipulation task on the shared floating gripper."""

    name: str
    instruction: str
    xml_file: str
    obs_fields: tuple[ObsField, ...]
    config_cls: type[TaskConfig] = TaskConfig
    # Task family for the results table's per-family averages: "short-horizon", "long-horizon", "contact-rich".
    family: str = "other"
    # The scalar the robot runtime's failure monitor watches for progress: an observation field of size 1,
    # its unit and meaning. `progress_threshold()` is the value at which the task counts as done.
    progress_field: str = ""
    progress_description: str = ""
    # Envs per batched MJX program (demo collection, failure bank, nominal evaluation): bounds one program's
    # memory. pick_place and peg_insert use 128, chosen while jaxlib's LAPACK Cholesky deadlocked XLA's CPU
    # thread pool (fixed by sim.cpu_linalg); their cached BC demos were collected with it.
    max_program_envs: int = 256
    # The task's default BC recipe where it differs from `policies.bc.BCConfig` (e.g. DAgger rounds).
    bc_overrides: dict = {}

    def __init__(self, config: TaskConfig | dict | None = None):
        if config is None:
            config = self.config_cls()
        elif isinstance(config, dict):
            config = self.config_cls(**config)
        elif not isinstance(config, self.config_cls):
            raise TypeError(f"task {self.name!r} takes a {self.config_cls.__name__} or dict, got {type(config).__name__}")
        self.config = config
        self.mj_model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))
        sim_dt = float(self.mj_model.opt.timestep)
        n = round(config.ctrl_dt / sim_dt)
        if n < 1 or abs(n * sim_dt - config.ctrl_dt) > 1e-9:
            raise ValueError(f"ctrl_dt={config.ctrl_dt} must be a whole multiple of the scene timestep {sim_dt}")
        self.n_substeps = n
        self.gripper = GripperIndices.from_model(self.mj_model)
        self.limits = GripperLimits()
        # Built once from the nominal model: `mjx.make_data` cannot run on a vmapped (randomized) model.
        self.data_template = mjx.make_data(mjx.put_model(self.mj_model))

    @property
    def observation_size(self) -> int:
        return sum(f.size for f in self.obs_fields)

    def obs_layout(self) -> list[dict]:
        """Observation fields with their offsets: the documented, machine-readable layout."""
        out, start = [], 0
        for f in self.obs_fields:
            out.append({"name": f.name, "start": start, "size": f.size, "unit": f.unit, "description": f.description})
            start += f.size
        return out

    @abc.abstractmethod
    def reset(self, model: mjx.Model, rng: jax.Array) -> mjx.Data:
        """A randomized nominal initial state (forward kinematics done)."""

    @abc.abstractmethod
    def observe(self, model: mjx.Model, data: mjx.Data) -> jnp.ndarray:
        """The policy's observation vector, laid out as `obs_fields`."""

    @abc.abstractmethod
    def privileged(self, model: mjx.Model, data: mjx.Data) -> dict[str, jnp.ndarray]:
        """Simulator-only quantities for labels, rewards and the scripted expert."""

    @abc.abstractmethod
    def success(self, model: mjx.Model, data: mjx.Data) -> jnp.ndarray:
        """Boolean task success for this state."""

    @abc.abstractmethod
    def expert_action(self, priv: dict[str, jnp.ndarray]) -> jnp.ndarray:
        """Scripted expert: a 7-D action from privileged state (pure JAX, jittable)."""

    def progress_threshold(self) -> float:
        """Value of `progress_field` at (or above) which the task is done (the monitor's hand-back signal)."""
        raise NotImplementedError(f"task {self.name!r} defines no progress threshold")

    def progress_spec(self) -> dict:
        """The runtime manifest's progress entry: field, unit, meaning and success threshold."""
        field = next((f for f in self.obs_fields if f.name == self.progress_field), None)
        if field is None or field.size != 1:
            raise ValueError(f"task {self.name!r}: progress_field {self.progress_field!r} must name a 1-float observation field")
        return {"field": field.name, "unit": field.unit, "description": self.progress_description or field.description,
                "success_threshold": float(self.progress_threshold())}

    def workspace_points(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """(k, 3) points the gripper may need to reach, from a batch of observations, and what they are.

        The exported runtime's safety box is built around them. Default: every 3-float position field in
        metres named `*_pos` (the TCP and the task's objects); tasks whose goal moves add its range.
        """
        layout = self.obs_layout()
        fields = [f for f in layout if f["size"] == 3 and f["unit"] == "m" and f["name"].endswith("_pos")]
        pts = np.concatenate([obs[:, f["start"]:f["start"] + 3] for f in fields])
        return pts, " and ".join(f["name"] for f in fields)

    # ------------------------------------------------------------------ failures and reward components
    failure_modes: tuple[str, ...] = ()
    recovery_stages: tuple[str, ...] = ()
    failure_descriptions: dict[str, str] = {}
    # Steps of base-policy control after a nominal reset during which each mode's injector may fire.
    injection_windows: dict[str, tuple[int, int]] = {}
    reward_component_descriptions: dict[str, str] = {}
    # Components that are state potentials Phi(s): the reward uses Phi(s') - Phi(s) (potential-based
    # shaping), so their sum over an episode is bounded by Phi(end) - Phi(start) and cannot outweigh
    # the success bonus however long the episode runs. The others are paid every step.
    potential_components: tuple[str, ...] = ()
    # The privileged-label ("oracle") reward mask of each failure mode: component -> weight.
    oracle_masks: dict[str, dict[str, float]] = {}

    def label(self, priv: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(failure-mode index or -1, recovery-stage index) computed from simulator state only."""
        raise NotImplementedError(f"task {self.name!r} defines no failure labels")

    @property
    def rules_module(self) -> str:
        """The task's NumPy diagnosis rules (shared with the robot runtime): `recovla_jax.runtime.<name>_rules`."""
        return f"recovla_jax.runtime.{self.name}_rules"

    def has_rules(self) -> bool:
        """Whether `rules_module` exists, i.e. the offline `rules` selector can diagnose this task."""
        from importlib.util import find_spec

        return find_spec(self.rules_module) is not None

    def rules_classify(self, obs: np.ndarray) -> tuple[str, str, str]:
        """(failure mode, recovery stage, reason) from the observable vector alone (numpy; no privileged state).

        The offline `rules` selector's hook: it must always name one of `failure_modes` (a failure state
        is given), and must read nothing but `obs`.
        """
        from importlib import import_module

        if not self.has_rules():
            raise NotImplementedError(f"task {self.name!r} defines no offline diagnosis rules ({self.rules_module})")
        # When no rule fires the closest story is named: a failure state is given.
        verdict = import_module(self.rules_module).classify(obs)
        return verdict.closest_mode, verdict.stage, verdict.reason

    def inject(self, model: mjx.Model, data: mjx.Data, mode: jnp.ndarray, rng: jax.Array) -> mjx.Data:
        """Apply the perturbation of failure mode index `mode` to a state (pure JAX)."""
        raise NotImplementedError(f"task {self.name!r} defines no failure injectors")

    def reward_terms(self, model: mjx.Model, prev: mjx.Data, data: mjx.Data, action: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Task-specific raw reward terms, each with a documented range."""
        raise NotImplementedError(f"task {self.name!r} defines no reward terms")

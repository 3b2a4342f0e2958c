"""Domain randomization of model fields through batched `mjx.Model`s (one model per env).

Fields: geom sliding friction, body mass, joint damping and position-actuator gain (kp; the bias term
is scaled with it so the actuator stays a position servo). Each is a multiplicative scale drawn per env
from a configured range. The output plugs into `sim.wrappers.RandomizedVmapWrapper`.
"""

from __future__ import annotations

import jax
from mujoco import mjx
from pydantic import BaseModel, ConfigDict, model_validator

Range = tuple[float, float]


class DomainRandomization(BaseModel):
    """Multiplicative ranges (low, high) per field; (1, 1) switches a field off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    friction: Range = (0.7, 1.3)
    mass: Range = (0.8, 1.2)
    damping: Range = (0.8, 1.2)
    actuator_gain: Range = (0.85, 1.15)

    @model_validator(mode="after")
    def _check_ranges(self) -> "DomainRandomization":
        for name in ("friction", "mass", "damping", "actuator_gain"):
            lo, hi = getattr(self, name)
            if not (0.0 < lo <= hi):
                raise ValueError(f"domain randomization range {name}={lo, hi} must satisfy 0 < low <= high")
        return self


RANDOMIZED_FIELDS = ("geom_friction", "body_mass", "dof_damping", "actuator_gainprm", "actuator_biasprm")


def randomize_model(model: mjx.Model, rng: jax.Array, cfg: DomainRandomization) -> mjx.Model:
    """One randomized copy of the model (pure; vmap it for a batch)."""
    k_f, k_m, k_d, k_a = jax.random.split(rng, 4)
    u = lambda k, r, shape=(): jax.random.uniform(k, shape, minval=r[0], maxval=r[1])  # noqa: E731
    friction = model.geom_friction.at[:, 0].multiply(u(k_f, cfg.friction))
    mass = model.body_mass * u(k_m, cfg.mass, model.body_mass.shape)
    damping = model.dof_damping * u(k_d, cfg.damping)
    gain = u(k_a, cfg.actuator_gain)
    gainprm = model.actuator_gainprm.at[:, 0].multiply(gain)
    biasprm = model.actuator_biasprm.at[:, 1].multiply(gain)
    return model.tree_replace(
        {
            "geom_friction": friction,
            "body_mass": mass,
            "dof_damping": damping,
            "actuator_gainprm": gainprm,
            "actuator_biasprm": biasprm,
        }
    )


def batched_models(model: mjx.Model, rng: jax.Array, num_envs: int, cfg: DomainRandomization) -> tuple[mjx.Model, mjx.Model]:
    """(batched model, vmap in_axes) for `sim.wrappers.RandomizedVmapWrapper`."""
    keys = jax.random.split(rng, num_envs)
    # vmap batches every output leaf, so keep only the randomized fields from it.
    fields = jax.vmap(lambda k: {n: getattr(randomize_model(model, k, cfg), n) for n in RANDOMIZED_FIELDS})(keys)
    models = model.tree_replace(fields)
    in_axes = jax.tree.map(lambda _: None, model)
    in_axes = in_axes.tree_replace({name: 0 for name in RANDOMIZED_FIELDS})
    return models, in_axes

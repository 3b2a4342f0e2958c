"""Robot interfaces: the protocol, a native-MuJoCo drawer robot (sim-to-real proxy), an openpi base-policy client."""

from recovla_jax.runtime.robots.base import BasePolicySource, Observation, Robot

__all__ = ["BasePolicySource", "Observation", "Robot"]

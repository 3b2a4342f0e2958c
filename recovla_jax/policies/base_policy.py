"""The frozen base policy: one JAX-traceable interface, `action = policy.apply(params, obs)`.

Every base (the behaviour-cloned proxy of a VLA here; an ONNX model or a served VLA at runtime) is seen by
training as this interface. Parameters are wrapped in `stop_gradient` inside `__call__`, so no gradient
path can change them, and they are never part of an optimizer's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp

from recovla_jax.policies.networks import MLP


@dataclass(frozen=True)
class BasePolicy:
    """A frozen policy: name, pure apply function and its parameters."""

    name: str
    apply: Callable[[Any, jnp.ndarray], jnp.ndarray]
    params: Any
    info: dict

    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        """Action in [-1, 1]^7 for one observation or a batch."""
        return self.apply(jax.lax.stop_gradient(self.params), obs)


def bc_network(hidden: tuple[int, ...], action_size: int) -> MLP:
    return MLP(hidden=hidden, out=action_size, activation="swish")


def bc_hidden(net_params: dict) -> tuple[int, ...]:
    """Hidden widths of a BC network from its Dense_0..Dense_k kernels (rebuilds a saved clone's network)."""
    names = sorted(net_params, key=lambda n: int(n.split("_")[-1]))
    return tuple(int(net_params[n]["kernel"].shape[1]) for n in names[:-1])


def make_bc_apply(hidden: tuple[int, ...], action_size: int) -> Callable[[Any, jnp.ndarray], jnp.ndarray]:
    """apply(params, obs): normalise with the stored dataset statistics, MLP, tanh to the action bounds."""
    net = bc_network(hidden, action_size)

    def apply(params: Any, obs: jnp.ndarray) -> jnp.ndarray:
        x = (obs - params["obs_mean"]) / params["obs_std"]
        return jnp.tanh(net.apply({"params": params["net"]}, x))

    return apply

"""Flax MLPs shared by the base policy, the residual actor and the critic."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Plain MLP; `zero_init_last` makes the output exactly zero at initialisation (residual heads)."""

    hidden: Sequence[int]
    out: int
    activation: str = "swish"
    zero_init_last: bool = False
    last_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = {"swish": nn.swish, "tanh": nn.tanh, "relu": nn.relu}[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.lecun_uniform())(x))
        init = nn.initializers.zeros if self.zero_init_last else nn.initializers.variance_scaling(
            self.last_scale, "fan_in", "uniform"
        )
        return nn.Dense(self.out, kernel_init=init, bias_init=nn.initializers.zeros)(x)

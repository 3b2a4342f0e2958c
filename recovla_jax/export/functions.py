"""The functions that become ONNX graphs, and the independent JAX references they are checked against.

Base:     action = tanh(MLP((obs - obs_mean) / obs_std))                       (policies.base_policy)
Residual: residual = alpha * tanh(actor(clip((x - mean) / std, -M, M)))        (normalizer folded in)
          action   = clip(x[obs:obs+7] + residual, low, high)                  (training's executed action)
with x the residual observation [task obs, base action, mode one-hot, reward weights].

The exported residual graph is written here from plain jnp ops over constant arrays; the reference goes
through the training code path instead (brax `running_statistics.normalize`, the trainer's `MLP`, and
`ResidualEnv.executed_action`), so a mistake in the folding shows up as a parity failure.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from brax.training.acme import running_statistics

from recovla_jax.policies.base_policy import make_bc_apply
from recovla_jax.policies.networks import MLP
from recovla_jax.training.residual_env import ResidualEnv

Activation = Callable[[jnp.ndarray], jnp.ndarray]
_ACTIVATIONS: dict[str, Activation] = {"swish": jax.nn.swish, "tanh": jnp.tanh, "relu": jax.nn.relu}


def _dense_stack(params: dict, activation: str) -> list[tuple[np.ndarray, np.ndarray]]:
    layers = params["params"] if "params" in params else params
    names = sorted(layers, key=lambda n: int(n.split("_")[-1]))
    return [(np.asarray(layers[n]["kernel"], np.float32), np.asarray(layers[n]["bias"], np.float32)) for n in names]


def _mlp(x: jnp.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], act: Activation) -> jnp.ndarray:
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = act(x)
    return x


def base_policy_fn(params: dict, hidden: tuple[int, ...], action_size: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The frozen base exactly as training applies it (its own apply function, parameters as constants)."""
    apply = make_bc_apply(tuple(hidden), action_size)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return lambda obs: apply(params, obs)


def _residual_outputs(xp, x, layers: list[tuple[np.ndarray, np.ndarray]], act: Callable, mean: np.ndarray | None,
                      std: np.ndarray | None, max_abs: float, alpha: float, obs_size: int, action_size: int,
                      low: float, high: float):
    """The residual graph's formula over array module `xp` (jnp for the exported graph, np for its float64 twin)."""
    z = x if mean is None else xp.clip((x - mean) / std, -max_abs, max_abs)
    residual = alpha * xp.tanh(_mlp(z, layers, act))
    return residual, xp.clip(x[:, obs_size:obs_size + action_size] + residual, low, high)


def residual_export_fn(actor_params: dict, mean: np.ndarray | None, std: np.ndarray | None, max_abs: float,
                       alpha: float, obs_size: int, action_size: int, low: float, high: float,
                       activation: str = "swish") -> Callable[[jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]:
    """x -> (alpha-scaled residual, executed action); see the module docstring."""
    layers = _dense_stack(actor_params, activation)
    act = _ACTIVATIONS[activation]
    mean = None if mean is None else np.asarray(mean, np.float32)
    std = None if std is None else np.asarray(std, np.float32)
    return lambda x: _residual_outputs(jnp, x, layers, act, mean, std, max_abs, alpha, obs_size, action_size, low, high)


_ACTIVATIONS_F64: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "swish": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),  # x * sigmoid(x) without exp overflow
    "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


def residual_float64_fn(actor_params: dict, mean: np.ndarray | None, std: np.ndarray | None, max_abs: float,
                        alpha: float, obs_size: int, action_size: int, low: float, high: float,
                        activation: str = "swish") -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """`residual_export_fn`'s formula in numpy float64: how far float32 evaluation itself is from exact (the
    parity check's rounding allowance, onnx_io)."""
    layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in _dense_stack(actor_params, activation)]
    act = _ACTIVATIONS_F64[activation]
    mean = None if mean is None else np.asarray(mean, np.float64)
    std = None if std is None else np.asarray(std, np.float64)

    def fn(x: np.ndarray) -> dict[str, np.ndarray]:
        residual, action = _residual_outputs(np, np.asarray(x, np.float64), layers, act, mean, std, max_abs, alpha,
                                             obs_size, action_size, low, high)
        return {"residual": residual, "action": action}

    return fn


def residual_reference_fn(actor_params: dict, mean: np.ndarray | None, std: np.ndarray | None, max_abs: float,
                          alpha: float, obs_size: int, hidden: tuple[int, ...], action_size: int) -> Callable[[np.ndarray], dict]:
    """The same quantities through the training code path (PPOTrainer.policy_fn + ResidualEnv.executed_action)."""
    actor = MLP(tuple(hidden), action_size, zero_init_last=True)
    stats = None if mean is None else running_statistics.NestedMeanStd(mean=jnp.asarray(mean), std=jnp.asarray(std))
    env = SimpleNamespace(task_obs_size=obs_size, alpha=alpha)

    @jax.jit
    def ref(x):
        z = x if stats is None else running_statistics.normalize(x, stats, max_abs_value=max_abs)
        raw = actor.apply(actor_params, z)
        action, squashed = jax.vmap(lambda o, r: ResidualEnv.executed_action(env, o, r))(x, raw)
        return {"residual": alpha * squashed, "action": action}

    return lambda x: jax.device_get(ref(jnp.asarray(x, jnp.float32)))

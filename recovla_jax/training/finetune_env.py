"""The fine-tuned-base baseline: PPO on the FULL action, initialised from the behaviour-cloned base.

The analogue of the paper's fine-tuned pi0.5: no frozen base in the loop, the policy outputs the whole
7-D action and starts as an exact copy of the base network.

`FinetuneEnv` is a `ResidualEnv` (same failure-bank starts, start jitter, observation noise, action
latency, domain randomization hooks and compiled reward) whose observation is the noisy task
observation alone and whose action is `tanh(raw)`; there is no residual, so the residual-magnitude term
is 0. Because it is a ResidualEnv, `evaluation.recovery.RecoveryEvaluator` runs it unchanged (call it with
`use_residual=True` only: a zeroed output would mean action 0, not "base alone").

`FinetunePPOTrainer` is a `PPOTrainer` whose actor is the base's network: PPOTrainer's actor is an MLP of
the same class, so with `actor_hidden` set to the base's hidden sizes the parameter trees are identical;
`_init` puts the base's weights in (instead of the zero-initialised last layer) and `_normalize` applies
the base's own fixed input normalisation ((obs - obs_mean) / obs_std, no clipping) instead of the running
statistics (`normalize_obs` is switched off). The policy's mean is then MLP((obs - mean) / std) and the
env executes tanh of it: exactly the base's `tanh(MLP((obs - mean) / std))` at initialisation. The critic
sees the same normalised observation. Exploration is PPO's Gaussian on the pre-tanh output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env
from jax.sharding import Mesh

from recovla_jax.failures.bank import FailureBank
from recovla_jax.policies.base_policy import BasePolicy, bc_hidden
from recovla_jax.sim import gripper as grip
from recovla_jax.tasks.base import Task
from recovla_jax.training.ppo import PPOConfig, PPOTrainer, TrainingState
from recovla_jax.training.residual_env import MAX_UNIT, ResidualEnv


class FinetuneEnv(ResidualEnv):
    """Failure-bank starts like ResidualEnv; observation = noisy task obs; action = tanh(policy output)."""

    def __init__(self, task: Task, base: BasePolicy | None, bank: FailureBank, weights_per_mode: np.ndarray,
                 start_noise: float = 0.005, obs_noise: float = 0.001, latency_prob: float = 0.5,
                 start_weights: np.ndarray | None = None, potential_discount: float = 1.0):
        super().__init__(task, base, bank, weights_per_mode, alpha=1.0, start_noise=start_noise,
                         obs_noise=obs_noise, latency_prob=latency_prob, start_weights=start_weights,
                         potential_discount=potential_discount)

    @property
    def observation_size(self) -> int:
        return self.task_obs_size

    def _residual_obs(self, task_obs: jnp.ndarray, mode: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """The policy sees what the base would see: the task observation with sensor noise."""
        return task_obs + self.obs_noise * jax.random.normal(key, task_obs.shape)

    def executed_action(self, obs: jnp.ndarray, raw: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(tanh(raw), zero residual): the policy's output is the whole action."""
        return jnp.tanh(raw), jnp.zeros(grip.ACTION_SIZE, raw.dtype)

    def expert_unit_target(self, obs: jnp.ndarray, expert: jnp.ndarray) -> jnp.ndarray:
        """tanh(raw) that executes `expert` (kept strictly inside (-1, 1)): the whole action is the policy's."""
        return jnp.clip(expert, -MAX_UNIT, MAX_UNIT)


class FinetunePPOTrainer(PPOTrainer):
    """PPOTrainer whose actor starts as the base network (see module docstring); same PPO otherwise."""

    def __init__(self, env: Env, cfg: PPOConfig, base: BasePolicy, mesh: Mesh | None = None):
        params = base.params
        if not {"net", "obs_mean", "obs_std"} <= set(params):
            raise ValueError("the fine-tuned baseline needs a BC base policy (params with 'net', 'obs_mean', 'obs_std')")
        self.base = base
        self._bc_net = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(params["net"]))
        self._bc_mean = jnp.asarray(params["obs_mean"], jnp.float32)
        self._bc_std = jnp.asarray(params["obs_std"], jnp.float32)
        if int(env.observation_size) != self._bc_mean.shape[-1]:
            raise ValueError(f"env observation size {env.observation_size} != base input size {self._bc_mean.shape[-1]}: "
                             "use FinetuneEnv (task observation only)")
        cfg = cfg.model_copy(update={"actor_hidden": bc_hidden(self._bc_net), "normalize_obs": False})
        super().__init__(env, cfg, mesh)

    def normalize(self, normalizer, obs: jax.Array) -> jax.Array:
        return (obs - self._bc_mean) / self._bc_std

    def _init(self, rng: jax.Array) -> TrainingState:
        ts = super()._init(rng)
        actor = {"params": self._bc_net}
        fresh = ts.params["actor"]
        shapes = lambda t: [jnp.shape(x) for x in jax.tree.leaves(t)]  # noqa: E731
        if jax.tree.structure(fresh) != jax.tree.structure(actor) or shapes(fresh) != shapes(actor):
            raise ValueError(f"the base network's parameters do not fit the PPO actor: {jax.tree.structure(actor)} "
                             f"{shapes(actor)} vs {jax.tree.structure(fresh)} {shapes(fresh)}")
        params = {**ts.params, "actor": actor}
        return ts.replace(params=params, opt_state=self.optimizer.init(params))

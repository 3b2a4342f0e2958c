"""PPO for the residual policy over batched brax environments, written for jax 0.10.

Why our own trainer: brax 0.14.2's PPO uses `jax.device_put_replicated`, which jax 0.10 removed. This
one keeps the whole iteration (rollout, normalizer update, GAE, all PPO epochs) in ONE jitted function,
and scales over devices/processes with a 1-axis mesh ('envs') under GSPMD instead of pmap: env state and
per-env arrays are sharded along their leading axis, parameters/optimizer/normalizer are replicated.

Policy: a Gaussian whose mean comes from an MLP with a zero-initialised last layer (so the residual is
exactly 0 at initialisation; the env squashes/scales it) and a state-independent learned log-std.

Truncation: auto-reset overwrites the final observation with the reset one, so the env's
`step_with_final_obs` (`sim.wrappers.ResamplingAutoResetWrapper`) also returns the pre-reset observation;
GAE then bootstraps from V(final obs) on time-limit ends and from 0 on real terminations.

Hand-back: where the env reports `info["residual_active"] == 0` for the state an action was chosen in,
that action never reached the robot (the frozen base drove alone; `training.residual_env`), so it carries
no information about the policy: those steps are left out of the policy loss and of the advantage
normalisation. The critic still learns their values, which carry the base's success back to the steps
where the residual acted.

Adaptive learning rate: with `desired_kl` set, each minibatch first measures the KL between the policy
being updated and the one that collected the rollout (the sample estimate `approx_kl` over the steps where
the policy acted, where rsl_rl uses the closed-form Gaussian KL), then divides the learning rate by 1.5 when that KL
exceeds twice `desired_kl` and multiplies it by 1.5 when it is under half (clamped to [1e-6, 1e-2]);
`lr_decay` is then ignored. This is rsl_rl's "adaptive" schedule, common in legged-robot PPO. It matters
after `training.expert_warm_start`: a fitted policy needs narrow exploration noise to keep its success,
and with a narrow Gaussian a fixed learning rate moves the policy far in KL at every update (measured:
approx KL 0.03-0.1 per update at log-std -3 against 0.005 at -1.5), undoing the fit.

Starts: with `resample_starts` each iteration redraws every env's next start state (one batched reset per
unroll), so training covers the whole failure bank, not just the `num_envs` states of the first reset.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from brax.envs.base import Env, State
from brax.envs.wrappers.training import AutoResetWrapper
from brax.training.acme import running_statistics, specs
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pydantic import BaseModel, ConfigDict, model_validator

from recovla_jax.policies.networks import MLP
from recovla_jax.utils.checkpoint import CheckpointStore

_LOG_2PI_E = float(np.log(2.0 * np.pi * np.e))
_LOG_2PI = float(np.log(2.0 * np.pi))


class PPOConfig(BaseModel):
    """PPO hyper-parameters; one iteration = num_envs * unroll_length env steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_envs: int = 256
    unroll_length: int = 20
    num_minibatches: int = 8
    update_epochs: int = 4
    learning_rate: float = 3e-4
    lr_decay: bool = True  # linear to 10% of learning_rate over the run
    gamma: float = 0.97
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 1e-3
    max_grad_norm: float = 1.0
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    init_log_std: float = -0.5
    total_timesteps: int = 500_000
    seed: int = 0
    normalize_obs: bool = True
    # Keep the observation normaliser the run starts with (e.g. the expert warm start's, which its actor was
    # fitted under) instead of updating it every iteration, which moves the fitted actor's inputs (measured in
    # `training.expert_warm_start`: it decides whether PPO keeps the fit).
    freeze_normalizer: bool = False
    checkpoint_every: int = 10  # iterations
    reward_scaling: float = 1.0
    resample_starts: bool = True  # redraw each env's next start every iteration (see the module docstring)
    # Adaptive learning rate (see "Adaptive learning rate" in the module docstring); None keeps the schedule.
    desired_kl: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "PPOConfig":
        batch = self.num_envs * self.unroll_length
        if batch % self.num_minibatches:
            raise ValueError(
                f"num_envs * unroll_length = {self.num_envs} * {self.unroll_length} = {batch} must be divisible "
                f"by num_minibatches = {self.num_minibatches}"
            )
        if self.total_timesteps < batch:
            raise ValueError(f"total_timesteps={self.total_timesteps} is less than one iteration ({batch} steps)")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.desired_kl is not None and self.desired_kl <= 0:
            raise ValueError(f"desired_kl={self.desired_kl} must be > 0 (or None for the fixed learning-rate schedule)")
        return self

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def num_iterations(self) -> int:
        return self.total_timesteps // self.batch_size


@flax.struct.dataclass
class TrainingState:
    """Everything a resumed run needs to continue bit-for-bit."""

    params: dict  # {"actor", "critic", "log_std"}
    opt_state: Any
    normalizer: running_statistics.RunningStatisticsState
    env_state: State
    rng: jax.Array
    iteration: jax.Array  # int32
    env_steps: jax.Array  # int32 (x64 is off; fine up to 2.1e9 steps)


class Transition(flax.struct.PyTreeNode):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    termination: jax.Array  # done and not a time limit: no bootstrap
    done: jax.Array  # any episode end: cuts the GAE trace
    final_obs: jax.Array  # obs reached by this step before auto-reset (bootstrap target)
    active: jax.Array  # 1 where the action reached the robot (see "Hand-back" in the module docstring)


def _is_stored(shape: tuple[int, ...]) -> bool:
    """Whether a leaf goes into checkpoints: orbax cannot write zero-size arrays (MJX Data has several),
    so those are left out and recreated as zeros by `from_host`."""
    return int(np.prod(shape)) > 0


def make_mesh() -> Mesh:
    """1-axis mesh ('envs') over all global devices (all processes under jax.distributed)."""
    return Mesh(np.array(jax.devices()), ("envs",))


def _gaussian_log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * _LOG_2PI, axis=-1)


# The adaptive rule's bounds on the learning rate (module docstring).
ADAPTIVE_LR_BOUNDS = (1e-6, 1e-2)


def with_learning_rate(opt_state: Any, learning_rate: float | jax.Array) -> Any:
    """An adaptive-rate (`desired_kl`) optimizer state whose current learning rate is `learning_rate`, clamped to
    `ADAPTIVE_LR_BOUNDS`; pure. The adaptive rule sets it every minibatch; a warm start sets PPO's first rate with it."""
    clip_state, adam_state = opt_state
    lr = jnp.clip(jnp.asarray(learning_rate, adam_state.hyperparams["learning_rate"].dtype), *ADAPTIVE_LR_BOUNDS)
    return (clip_state, adam_state._replace(hyperparams={**adam_state.hyperparams, "learning_rate": lr}))


def _adapt_learning_rate(opt_state: Any, kl: jax.Array, desired_kl: float) -> Any:
    """The optimizer state with its learning rate adapted to the measured KL (module docstring); pure."""
    lr = opt_state[1].hyperparams["learning_rate"]
    return with_learning_rate(opt_state, jnp.where(kl > 2.0 * desired_kl, lr / 1.5,
                                                   jnp.where(kl < 0.5 * desired_kl, lr * 1.5, lr)))


def _step_keep_final_obs(env: Env, state: State, action: jax.Array) -> tuple[State, jax.Array]:
    """`env.step`, also returning the observation before auto-reset (`ResamplingAutoResetWrapper`)."""
    if hasattr(env, "step_with_final_obs"):
        return env.step_with_final_obs(state, action)
    if isinstance(env, AutoResetWrapper):
        raise TypeError("brax's AutoResetWrapper hides the pre-reset observation: build the env with "
                        "sim.wrappers.wrap_batched (ResamplingAutoResetWrapper)")
    nstate = env.step(state, action)
    return nstate, nstate.obs


class PPOTrainer:
    """Builds the jitted init/train_step for a batched env (from `sim.wrappers.wrap_batched`)."""

    def __init__(self, env: Env, cfg: PPOConfig, mesh: Mesh | None = None):
        self.env = env
        self.cfg = cfg
        self.mesh = mesh
        self.obs_size = int(env.observation_size)
        self.action_size = int(env.action_size)
        if mesh is not None:
            if tuple(mesh.axis_names) != ("envs",):
                raise ValueError(f"mesh must have exactly one axis named 'envs', got {mesh.axis_names}")
            n_dev = mesh.devices.size
            if cfg.num_envs % n_dev:
                raise ValueError(f"num_envs={cfg.num_envs} must be divisible by the device count {n_dev}")
        self.actor = MLP(tuple(cfg.actor_hidden), self.action_size, zero_init_last=True)
        self.critic = MLP(tuple(cfg.critic_hidden), 1)
        num_updates = cfg.num_iterations * cfg.update_epochs * cfg.num_minibatches
        lr = (
            optax.linear_schedule(cfg.learning_rate, 0.1 * cfg.learning_rate, max(num_updates, 1))
            if cfg.lr_decay
            else cfg.learning_rate
        )
        adam = (optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate) if cfg.desired_kl is not None
                else optax.adam(lr))
        self.optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adam)

        abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
        self._abstract_state = abstract
        if mesh is None:
            self.state_sharding = None
            self.init = jax.jit(self._init)
            self.train_step = jax.jit(self._train_step)
        else:
            self.state_sharding = self._shardings(abstract)
            repl = NamedSharding(mesh, P())
            self.init = jax.jit(self._init, out_shardings=self.state_sharding)
            metric_shape = jax.eval_shape(self._train_step, abstract)[1]
            self.train_step = jax.jit(
                self._train_step,
                in_shardings=(self.state_sharding,),
                out_shardings=(self.state_sharding, jax.tree.map(lambda _: repl, metric_shape)),
            )

    # ----------------------------------------------------------------------------------------- sharding
    def _shardings(self, abstract: TrainingState) -> TrainingState:
        """Env state: leaves whose leading dim is num_envs are sharded on 'envs'; everything else replicated."""
        mesh, n = self.mesh, self.cfg.num_envs
        env_sh = jax.tree.map(
            lambda x: NamedSharding(mesh, P("envs") if x.ndim >= 1 and x.shape[0] == n else P()), abstract.env_state
        )
        repl = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
        return repl.replace(env_state=env_sh)

    def _constrain_env(self, x: Any) -> Any:
        if self.mesh is None:
            return x
        n = self.cfg.num_envs
        return jax.tree.map(
            lambda a: jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, P("envs")))
            if a.ndim >= 1 and a.shape[0] == n
            else a,
            x,
        )

    # ----------------------------------------------------------------------------------------- policy
    def normalize(self, normalizer, obs: jax.Array) -> jax.Array:
        """What the actor and critic read: `obs` under the running statistics (clipped to 10 std), or `obs` itself
        with `normalize_obs` off. Public for the warm start, which fits the same networks on the same inputs."""
        if not self.cfg.normalize_obs:
            return obs
        return running_statistics.normalize(obs, normalizer, max_abs_value=10.0)

    def policy_fn(
        self, params: dict, normalizer, obs: jax.Array, deterministic: bool, rng: jax.Array | None = None
    ) -> jax.Array:
        """Residual action for `obs` (any leading dims); `deterministic` returns the mean. Pure, jittable."""
        mean = self.actor.apply(params["actor"], self.normalize(normalizer, obs))
        if deterministic:
            return mean
        return mean + jnp.exp(params["log_std"]) * jax.random.normal(rng, mean.shape, mean.dtype)

    def value_fn(self, params: dict, normalizer, obs: jax.Array) -> jax.Array:
        return self.critic.apply(params["critic"], self.normalize(normalizer, obs))[..., 0]

    def deterministic_actor(self, ts: TrainingState) -> Callable[[jax.Array], jax.Array]:
        """Jitted obs -> mean action with the state's current params and normalizer."""
        params, normalizer = jax.device_get((ts.params, ts.normalizer)) if self.mesh is None else (ts.params, ts.normalizer)
        fn = jax.jit(functools.partial(self.policy_fn, deterministic=True, rng=None))
        return lambda obs: fn(params, normalizer, obs)

    # ----------------------------------------------------------------------------------------- init
    def _init(self, rng: jax.Array) -> TrainingState:
        cfg = self.cfg
        rng, k_env, k_actor, k_critic = jax.random.split(rng, 4)
        dummy = jnp.zeros((1, self.obs_size), jnp.float32)
        params = {
            "actor": self.actor.init(k_actor, dummy),
            "critic": self.critic.init(k_critic, dummy),
            "log_std": jnp.full((self.action_size,), cfg.init_log_std, jnp.float32),
        }
        keys = jax.random.split(k_env, cfg.num_envs)
        env_state = self._constrain_env(self.env.reset(keys))
        normalizer = running_statistics.init_state(specs.Array((self.obs_size,), jnp.dtype("float32")))
        return TrainingState(
            params=params,
            opt_state=self.optimizer.init(params),
            normalizer=normalizer,
            env_state=env_state,
            rng=rng,
            iteration=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    # ----------------------------------------------------------------------------------------- train step
    def _rollout(self, ts: TrainingState, rng: jax.Array) -> tuple[State, Transition, dict]:
        cfg = self.cfg

        def step(env_state: State, key):
            obs = env_state.obs
            mean = self.actor.apply(ts.params["actor"], self.normalize(ts.normalizer, obs))
            log_std = ts.params["log_std"]
            action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
            log_prob = _gaussian_log_prob(action, mean, log_std)
            nstate, final_obs = _step_keep_final_obs(self.env, env_state, action)
            nstate = self._constrain_env(nstate)
            trunc = nstate.info.get("truncation", jnp.zeros_like(nstate.done))
            done = nstate.done
            ep_done = nstate.info.get("episode_done", done)
            ep = {f"episode/{k}": v for k, v in nstate.info.get("episode_metrics", {}).items()}
            tr = Transition(
                obs=obs,
                action=action,
                log_prob=log_prob,
                reward=nstate.reward * cfg.reward_scaling,
                termination=done * (1.0 - trunc),
                done=done,
                final_obs=final_obs,
                active=env_state.info.get("residual_active", jnp.ones_like(done)),
            )
            return nstate, (tr, nstate.reward, ep_done, ep)

        keys = jax.random.split(rng, cfg.unroll_length)
        env_state, (traj, raw_reward, ep_done, ep) = jax.lax.scan(step, ts.env_state, keys)
        ep_done = ep_done.astype(jnp.float32)
        n_done = jnp.sum(ep_done)
        metrics = {"reward_mean": jnp.mean(raw_reward), "episode/count": n_done, "residual_active": jnp.mean(traj.active)}
        for k, v in ep.items():
            metrics[k] = jnp.where(n_done > 0, jnp.sum(v * ep_done) / jnp.maximum(n_done, 1.0), jnp.nan)
        return env_state, traj, metrics

    def _gae(self, params: dict, normalizer, traj: Transition) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        values = self.value_fn(params, normalizer, traj.obs)
        next_values = self.value_fn(params, normalizer, traj.final_obs)
        deltas = traj.reward + cfg.gamma * (1.0 - traj.termination) * next_values - values

        def back(acc, x):
            delta, done = x
            acc = delta + cfg.gamma * cfg.gae_lambda * (1.0 - done) * acc
            return acc, acc

        _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[0]), (deltas, traj.done), reverse=True)
        return adv, adv + values

    def _loss(self, params: dict, normalizer, batch: dict) -> tuple[jax.Array, dict]:
        cfg = self.cfg
        nobs = self.normalize(normalizer, batch["obs"])
        mean = self.actor.apply(params["actor"], nobs)
        log_std = params["log_std"]
        log_prob = _gaussian_log_prob(batch["action"], mean, log_std)
        log_ratio = log_prob - batch["log_prob"]
        ratio = jnp.exp(log_ratio)
        w = batch["active"]
        n = jnp.maximum(jnp.sum(w), 1.0)
        adv_mean = jnp.sum(w * batch["advantage"]) / n
        adv_std = jnp.sqrt(jnp.sum(w * (batch["advantage"] - adv_mean) ** 2) / n)
        adv = (batch["advantage"] - adv_mean) / (adv_std + 1e-8)
        clipped = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
        policy_loss = -jnp.sum(w * clipped) / n
        value = self.critic.apply(params["critic"], nobs)[..., 0]
        value_loss = 0.5 * jnp.mean((value - batch["target"]) ** 2)
        entropy = jnp.sum(log_std + 0.5 * _LOG_2PI_E)
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        approx_kl = jnp.sum(w * ((ratio - 1.0) - log_ratio)) / n
        return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "approx_kl": approx_kl}

    def _train_step(self, ts: TrainingState) -> tuple[TrainingState, dict]:
        cfg = self.cfg
        rng, k_roll, k_perm, k_starts = jax.random.split(ts.rng, 4)
        if cfg.resample_starts and hasattr(self.env, "refresh_starts"):
            keys = jax.random.split(k_starts, cfg.num_envs)
            ts = ts.replace(env_state=self._constrain_env(self.env.refresh_starts(ts.env_state, keys)))
        env_state, traj, metrics = self._rollout(ts, k_roll)
        normalizer = ts.normalizer
        if cfg.normalize_obs and not cfg.freeze_normalizer:
            normalizer = running_statistics.update(normalizer, traj.obs)
        adv, target = self._gae(ts.params, normalizer, traj)

        flat = jax.tree.map(
            lambda x: x.reshape((cfg.batch_size,) + x.shape[2:]),
            {"obs": traj.obs, "action": traj.action, "log_prob": traj.log_prob, "advantage": adv, "target": target,
             "active": traj.active.astype(jnp.float32)},
        )
        grad_fn = jax.grad(self._loss, has_aux=True)

        def minibatch(carry, mb):
            params, opt_state = carry
            grads, aux = grad_fn(params, normalizer, mb)
            if cfg.desired_kl is not None:  # a minibatch where the policy never acted (hand-back) measures nothing
                adapt = functools.partial(_adapt_learning_rate, desired_kl=cfg.desired_kl)
                opt_state = jax.lax.cond(jnp.sum(mb["active"]) > 0, adapt, lambda o, _: o, opt_state, aux["approx_kl"])
                aux = {**aux, "learning_rate": opt_state[1].hyperparams["learning_rate"]}
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), aux

        def epoch(carry, key):
            perm = jax.random.permutation(key, cfg.batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch, carry, mbs)

        (params, opt_state), aux = jax.lax.scan(
            epoch, (ts.params, ts.opt_state), jax.random.split(k_perm, cfg.update_epochs)
        )
        metrics.update(jax.tree.map(jnp.mean, aux))
        new_ts = TrainingState(
            params=params,
            opt_state=opt_state,
            normalizer=normalizer,
            env_state=env_state,
            rng=rng,
            iteration=ts.iteration + 1,
            env_steps=ts.env_steps + cfg.batch_size,
        )
        return new_ts, metrics

    # ----------------------------------------------------------------------------------------- host I/O
    def to_host(self, ts: TrainingState) -> dict[str, np.ndarray]:
        """Checkpoint form of the state: a flat {key path: numpy array} dict.

        Under a mesh the state is first all-gathered (replicated) so every process can read every env
        shard. Flat plain numpy (0-d leaves stored as shape (1,)) because orbax refuses host-local jax
        arrays in multi-process runs, and some leaves' classes (the normalizer's UInt64 count) turn numpy
        back into jax arrays when rebuilt.
        """
        if self.mesh is not None:
            repl = jax.tree.map(lambda _: NamedSharding(self.mesh, P()), ts)
            ts = jax.jit(lambda x: x, out_shardings=repl)(ts)
        leaves = jax.tree_util.tree_flatten_with_path(ts)[0]
        return {
            jax.tree_util.keystr(path): np.asarray(x).reshape((1,) if np.ndim(x) == 0 else np.shape(x))
            for path, x in leaves
            if _is_stored(np.shape(x))
        }

    def from_host(self, host: dict[str, np.ndarray]) -> TrainingState:
        """Device state from `to_host`'s dict (every process holds the full copy), laid out like `init`'s."""
        paths, treedef = jax.tree_util.tree_flatten_with_path(self._abstract_state)
        arrays = [
            np.asarray(host[jax.tree_util.keystr(p)]).reshape(s.shape).astype(s.dtype)
            if _is_stored(s.shape)
            else np.zeros(s.shape, s.dtype)
            for p, s in paths
        ]
        if self.mesh is None:
            leaves = [jnp.asarray(x) for x in arrays]
        else:
            shardings = jax.tree.leaves(self.state_sharding)
            leaves = [
                jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx]) for x, sh in zip(arrays, shardings)
            ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def host_like(self) -> dict[str, np.ndarray]:
        """Zero tree in `to_host`'s form (restore target that needs no devices)."""
        return {
            jax.tree_util.keystr(p): np.zeros(s.shape or (1,), s.dtype)
            for p, s in jax.tree_util.tree_flatten_with_path(self._abstract_state)[0]
            if _is_stored(s.shape)
        }


def train(
    trainer: PPOTrainer,
    cfg: PPOConfig,
    *,
    resume: bool = False,
    checkpoint_dir: Path | None = None,
    on_metrics: Callable[[int, dict], None] | None = None,
    rng: jax.Array | None = None,
    warm_start: Callable[[TrainingState], TrainingState] | None = None,
) -> tuple[TrainingState, list[dict]]:
    """Run cfg.num_iterations PPO iterations, checkpointing every cfg.checkpoint_every and at the end.

    Checkpoints hold the whole TrainingState (gathered to every process, see `PPOTrainer.to_host`); every
    process calls the (synchronous) orbax save with identical numpy trees and orbax writes from the primary
    process only, so multi-process runs need `checkpoint_dir` on a filesystem all processes see.
    `resume=True` restores the latest checkpoint if there is one and continues from its iteration.
    `warm_start` maps a fresh initial state to the one PPO starts from (`training.expert_warm_start`); a
    resumed run does not repeat it (its checkpoints already hold the warm-started parameters).
    """
    store = CheckpointStore(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    ts = None
    if resume and store is not None and store.latest_step() is not None:
        _, host = store.restore(trainer.host_like())
        ts = trainer.from_host(host)
    if ts is None:
        ts = trainer.init(jax.random.PRNGKey(cfg.seed) if rng is None else rng)
        if warm_start is not None:
            ts = warm_start(ts)
            if trainer.state_sharding is not None:
                ts = jax.device_put(ts, trainer.state_sharding)
    start = int(ts.iteration)
    history: list[dict] = []
    if start < cfg.num_iterations:
        step = trainer.train_step.lower(ts).compile()  # compile outside the timed loop
    last_saved = start
    for it in range(start, cfg.num_iterations):
        t0 = time.perf_counter()
        ts, metrics = step(ts)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - t0
        metrics.update(iteration=it + 1, env_steps=int(ts.env_steps), sps=cfg.batch_size / dt)
        history.append(metrics)
        if on_metrics is not None:
            on_metrics(it + 1, metrics)
        if store is not None and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.num_iterations):
            store.save(it + 1, trainer.to_host(ts))
            last_saved = it + 1
    if store is not None:
        if last_saved != int(ts.iteration):
            store.save(int(ts.iteration), trainer.to_host(ts))
        store.close()
    return ts, history

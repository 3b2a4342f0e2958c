"""Warm-start a policy on the scripted expert's corrections (DAgger on failure states), then hand it to PPO.

Why: from most failure states a recovery is a long chain of corrections (re-reach, regrasp, lift, carry,
place) before the sparse success term pays anything. `evaluation.authority` shows that a residual of the
run's scale *can* carry the expert's recovery from most states (pick_place dropped_in_transit 98.4%,
knocked_away 90.6%, peg tilted_in_grasp 100% at alpha 2), yet PPO's Gaussian exploration does not find it
within the CPU budget, nor within 10M steps on an H100 for two pick_place modes. This is the standard
remedy when a privileged teacher exists in simulation: imitate it first, then let RL improve on the
task reward (teacher-student distillation with DAgger, Ross et al. 2011; RL fine-tuning from demonstrations
as in DAPG, Rajeswaran et al. 2018).

What it does, per policy, before PPO's first iteration:
1. Round 0 rolls the expert-guided action out from the policy's TRAIN starts (`env.expert_unit_target`:
   for a residual, the correction clip((expert - base) / alpha) that brings the executed action as close to
   the expert's as the residual's scale allows; for the fine-tuned base, the expert's action itself). Later
   rounds roll the fitted policy out and label the states it visits with the same target (DAgger), so the
   data covers the policy's own mistakes. Steps after success, and hand-back steps where the residual does
   not act, are left out.
2. After each round the actor's mean is fitted (optax Adam, mean squared error after tanh, i.e. in the
   env's executed-action space) on all data so far; the observation normaliser is updated with it.
3. Each fit drives one more round of rollouts, which also measures its own success. As with the base's
   DAgger, success is not monotone over rounds, so PPO starts from the fit that succeeded most (with the
   normaliser it was fitted under). The critic is fitted to the discounted returns of the compiled
   (masked) reward along that fit's rollouts, so PPO's first advantages are not those of a random critic.
4. PPO then starts from these parameters with `log_std` exploration and trains on the run's reward as
   always. Evaluation still uses held-out failure states only; the expert is never queried there.

Measured (pick_place, README "Expert warm start"): PPO at the main job's learning rate (3e-4) undoes the
warm start at once; at 3e-5 it keeps and improves part of it.

The expert reads privileged simulator state (true poses), which only simulation has; the policy reads the
noisy observation as always. These extra expert-labelled rollouts are env steps outside PPO's budget:
`WarmStartReport.env_steps` counts them and runs report them.

Written here: no library offers DAgger for batched brax environments; the fitting uses optax.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from brax.training.acme import running_statistics
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.training.ppo import PPOTrainer, TrainingState


class WarmStartConfig(BaseModel):
    """DAgger rounds and fitting; `rounds` = 0 switches the warm start off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(4, ge=0, description="round 0 executes the expert-guided action, later rounds the fitted policy")
    num_envs: int = Field(512, ge=1, description="rollouts per round (the base's DAgger rounds drive 512)")
    steps: int = Field(300, ge=1, description="control steps per rollout (the run's episode length)")
    fit_steps: int = Field(2000, ge=1, description="Adam steps after each round (continuing from the last fit)")
    batch_size: int = Field(1024, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    log_std: float = Field(-1.5, description="PPO's initial exploration log-std after the warm start (pre-tanh)")
    seed: int = 0

    @property
    def env_steps(self) -> int:
        """Env steps of the warm start's rollouts: one per round plus one of the last fit."""
        return (self.rounds + 1) * self.num_envs * self.steps


class RoundReport(BaseModel):
    round: int
    executed: str  # "expert-guided" or "fitted policy"
    success: float  # share of this round's rollouts that reached success
    new_samples: int
    samples: int
    actor_loss: float  # after fitting, on the aggregated data
    own_success: float | None = None  # this round's fit, driving its own rollouts (the next round's, or a last one)


class WarmStartReport(BaseModel):
    env_steps: int
    rounds: list[RoundReport]
    critic_loss: float | None
    start_success: float | None = None  # own success of the fit PPO starts from


def _rollout_fn(trainer: PPOTrainer, env: Any, num_envs: int, steps: int) -> Callable:
    """Jitted (params, normalizer, key, use_expert) -> per-step obs, expert targets, masks, rewards, success."""
    task = env.task
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    reset = jax.vmap(env.reset_to)
    step = jax.vmap(env.step)
    target_fn = jax.vmap(env.expert_unit_target)

    @jax.jit
    def rollout(params: dict, normalizer: Any, key: jax.Array, use_expert: jax.Array) -> dict[str, jax.Array]:
        k_idx, k_reset = jax.random.split(key)
        if env.start_probs is None:
            idx = jax.random.randint(k_idx, (num_envs,), 0, env.num_starts)
        else:
            idx = jax.random.choice(k_idx, env.num_starts, (num_envs,), p=env.start_probs)
        state = reset(idx, jax.random.split(k_reset, num_envs))

        def body(carry, _):
            s, done = carry
            target = target_fn(s.obs, jax.vmap(task.expert_action)(priv_fn(env.sys, s.pipeline_state)))
            learner = trainer.policy_fn(params, normalizer, s.obs, deterministic=True)
            nxt = step(s, jnp.where(use_expert, jnp.arctanh(target), learner))
            alive = ~done
            valid = alive & (s.info["residual_active"] > 0)
            done = done | (nxt.metrics["success"] > 0)
            return (nxt, done), {"obs": s.obs, "target": target, "valid": valid, "alive": alive,
                                 "reward": nxt.reward * alive, "terminal": done & alive}

        (_, done), out = jax.lax.scan(body, (state, jnp.zeros(num_envs, bool)), None, length=steps)
        return {**out, "success": done}

    return rollout


def _discounted_returns(reward: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Per-step returns (time-major arrays); an episode's return stops at its terminal step."""
    out = np.zeros_like(reward)
    acc = np.zeros(reward.shape[1:], reward.dtype)
    for t in range(reward.shape[0] - 1, -1, -1):
        acc = reward[t] + gamma * acc * (1.0 - terminal[t])
        out[t] = acc
    return out


def _fit_fn(loss_of: Callable, optimizer: optax.GradientTransformation, fit_steps: int, batch_size: int) -> Callable:
    """Jitted (params, normalizer, inputs, targets, count, key) -> (params, final loss) on rows [0, count)."""

    @jax.jit
    def fit(params, normalizer, inputs, targets, count, key):
        def one(carry, k):
            p, opt = carry
            rows = jax.random.randint(k, (batch_size,), 0, count)
            loss, grads = jax.value_and_grad(loss_of)(p, normalizer, inputs[rows], targets[rows])
            updates, opt = optimizer.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), loss

        (params, _), losses = jax.lax.scan(one, (params, optimizer.init(params)), jax.random.split(key, fit_steps))
        return params, jnp.mean(losses[-max(1, fit_steps // 10):])

    return fit


def warm_start(trainer: PPOTrainer, ts: TrainingState, env: Any, cfg: WarmStartConfig,
               log: Callable[[str], None] = print) -> tuple[TrainingState, WarmStartReport]:
    """`ts` (a fresh PPO state of `trainer`) with actor, critic, normaliser and log-std warm-started on
    `env`'s training starts (an unwrapped ResidualEnv or FinetuneEnv: no domain randomization here)."""
    if cfg.rounds == 0:
        return ts, WarmStartReport(env_steps=0, rounds=[], critic_loss=None)
    rollout = _rollout_fn(trainer, env, cfg.num_envs, cfg.steps)
    optimizer = optax.adam(cfg.learning_rate)

    def actor_loss(actor, normalizer, obs, target):
        mean = trainer.actor.apply(actor, trainer._normalize(normalizer, obs))
        return jnp.mean((jnp.tanh(mean) - target) ** 2)

    def critic_loss(critic, normalizer, obs, ret):
        return jnp.mean((trainer.critic.apply(critic, trainer._normalize(normalizer, obs))[..., 0] - ret) ** 2)

    fit_actor = _fit_fn(actor_loss, optimizer, cfg.fit_steps, cfg.batch_size)
    fit_critic = _fit_fn(critic_loss, optimizer, cfg.fit_steps, cfg.batch_size)
    update_normalizer = jax.jit(lambda n, x, w: running_statistics.update(n, x, weights=w))

    capacity = cfg.rounds * cfg.num_envs * cfg.steps
    obs_buf = np.zeros((capacity, trainer.obs_size), np.float32)
    target_buf = np.zeros((capacity, trainer.action_size), np.float32)
    count = 0
    params, normalizer = ts.params, ts.normalizer
    key = jax.random.PRNGKey(cfg.seed)
    reports: list[RoundReport] = []
    best: tuple[float, dict, Any, dict] | None = None  # (own success, params, their normaliser, their rollouts)
    for r in range(cfg.rounds + 1):
        t0 = time.perf_counter()
        key, k_roll, k_fit = jax.random.split(key, 3)
        out = jax.device_get(rollout(params, normalizer, k_roll, jnp.asarray(r == 0)))
        success = float(np.mean(out["success"]))
        if r > 0:
            reports[-1] = reports[-1].model_copy(update={"own_success": success})
            log(f"expert warm start: fit {r}/{cfg.rounds} drives its own rollouts to success in {success:.1%}")
            if best is None or success > best[0]:
                best = (success, params, normalizer, out)
        if r == cfg.rounds:
            break
        valid = out["valid"].reshape(-1)
        new = int(valid.sum())
        obs_buf[count:count + new] = out["obs"].reshape(-1, trainer.obs_size)[valid]
        target_buf[count:count + new] = out["target"].reshape(-1, trainer.action_size)[valid]
        count += new
        if trainer.cfg.normalize_obs:
            normalizer = update_normalizer(normalizer, jnp.asarray(out["obs"].reshape(-1, trainer.obs_size)),
                                           jnp.asarray(valid, jnp.float32))
        if count == 0:
            raise ValueError("the warm start's rollouts produced no training steps (every episode ended at once)")
        actor, loss = fit_actor(params["actor"], normalizer, obs_buf, target_buf, count, k_fit)
        params = {**params, "actor": actor}
        reports.append(RoundReport(round=r, executed="expert-guided" if r == 0 else "fitted policy",
                                   success=success, new_samples=new, samples=count, actor_loss=float(loss)))
        log(f"expert warm start: round {r + 1}/{cfg.rounds} ({reports[-1].executed} rollouts, success {success:.1%}): "
            f"{count:,} labelled steps, actor loss {float(loss):.4f} ({time.perf_counter() - t0:.1f} s"
            f"{'; the first round compiles' if r == 0 else ''})")

    # Like the base's DAgger, success is not monotone over rounds: PPO starts from the fit whose own rollouts
    # succeeded most, with the normaliser it was fitted under, and its critic learns that fit's returns.
    best_success, best_params, normalizer, out = best
    returns = _discounted_returns(out["reward"] * trainer.cfg.reward_scaling, out["terminal"].astype(np.float32),
                                  trainer.cfg.gamma)
    alive = out["alive"].reshape(-1)
    critic_obs = np.zeros((cfg.num_envs * cfg.steps, trainer.obs_size), np.float32)
    critic_ret = np.zeros((cfg.num_envs * cfg.steps,), np.float32)
    n_alive = int(alive.sum())
    critic_obs[:n_alive] = out["obs"].reshape(-1, trainer.obs_size)[alive]
    critic_ret[:n_alive] = returns.reshape(-1)[alive]
    key, k_fit = jax.random.split(key)
    critic, c_loss = fit_critic(params["critic"], normalizer, critic_obs, critic_ret, max(n_alive, 1), k_fit)
    log(f"expert warm start: PPO starts from the fit with {best_success:.1%} own success, log-std {cfg.log_std}; "
        f"critic fitted to its returns (loss {float(c_loss):.4f})")
    params = {**best_params, "critic": critic, "log_std": jnp.full_like(params["log_std"], cfg.log_std)}
    ts = ts.replace(params=params, normalizer=normalizer, opt_state=trainer.optimizer.init(params))
    return ts, WarmStartReport(env_steps=cfg.env_steps, rounds=reports, critic_loss=float(c_loss),
                               start_success=best_success)

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
   env's executed-action space) on all data so far; the observation normaliser is updated with it. Each round
   reports the fit's error per action dimension and, from round 1, the previous fit's error on the states its
   own rollouts reached. The training loss alone misleads: on stack wrong_order a wider actor, whose fits did
   not collapse after the first in the one run measured, had half the error on its own states, while one fit's
   own success varied from 21% to 75% with the minibatch order alone (docs/experiments.md, session 36).
3. Each fit drives one more round of rollouts, which also measures its own success. As with the base's
   DAgger, success is not monotone over rounds, so PPO starts from the fit that succeeded most (with the
   normaliser it was fitted under). That fit is rolled out once more sampling actions as PPO will, with
   `log_std` noise (its success is reported: noise that is too wide erases the fit); while the noise loses
   over half of the fit's success it is narrowed by one (to `min_log_std` at most) and tried again
   (peg_insert, 2 mm clearance: a fit with 56.2% own success kept 0.0% at -3). The narrowest is -4: PPO's
   learning rate scales with the noise (point 4), and at -5 (3e-6) it froze that fit (training success 57% -> 69%
   in 1M steps) where at -4, starting from a third of the fit's success, it reached 84% (docs/experiments.md,
   session 22). The critic is fitted to the discounted returns of the compiled (masked) reward along the last
   of those rollouts, so PPO's first advantages are not those of a random critic.
4. PPO then starts from these parameters with the chosen exploration noise and trains on the run's reward as
   always; `train` runs it with the adaptive learning rate (`PPOConfig.desired_kl`) and keeps the warm
   start's normaliser (`PPOConfig.freeze_normalizer`), both measured below. Evaluation still uses held-out
   failure states only; the expert is never queried there.

Measured (pick_place dropped_in_transit, docs/experiments.md "Expert warm start"): a fit that succeeds from 27.5% of
train states succeeds from 26.6% when its actions are sampled at log-std -3.5, 17.4% at -2.5 and 2.1% at
-1.5 (domain randomization costs under one point), hence the default -3. With that narrow noise a fixed
learning rate moves the policy far in KL at every update and PPO still undoes the fit (3e-4: 3.3% held-out;
3e-5: 1.1%); `train` therefore pairs the warm start with PPO's adaptive learning rate (`desired_kl`), which
keeps it (21.2% held-out at the run's defaults; 28.3% after 24 rounds, whose fit succeeded from 88.9% of
train states). Even then training success fell from ~80% to ~35%, with the learning rate near 1e-5 and the
KL per update at the rule's upper bound (0.02). Keeping the warm start's normaliser fixed
(`freeze_normalizer`) instead, with the same fit, training success rose from ~70% to ~90%: the running
normaliser, updated on PPO's noisy, randomized rollouts, moved the fitted actor's inputs away from those it
was fitted under.

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

from recovla_jax.training.ppo import PPOTrainer, TrainingState, with_learning_rate


class WarmStartConfig(BaseModel):
    """DAgger rounds and fitting; `rounds` = 0 switches the warm start off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(4, ge=0, description="round 0 executes the expert-guided action, later rounds the fitted policy")
    num_envs: int = Field(512, ge=1, description="rollouts per round (the base's DAgger rounds drive 512)")
    steps: int = Field(300, ge=1, description="control steps per rollout (the run's episode length)")
    fit_steps: int = Field(2000, ge=1, description="Adam steps after each round (continuing from the last fit); a bank "
                           "with 4x the train states underfitted at 2000 (pick_place missed_grasp: loss 0.012, 34.0% "
                           "held-out; 8000: 0.006, 74.2%, docs/experiments.md session 23), `train --warm-start-fit-steps`")
    batch_size: int = Field(1024, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    log_std: float = Field(-3.0, description="PPO's initial exploration log-std after the warm start (pre-tanh): the "
                           "widest tried; -1.5 erased a fit's success (module docstring)")
    min_log_std: float = Field(-4.0, description="the narrowest log-std tried: while sampling loses over half of the "
                               "fit's success the noise is narrowed by one (e**-1) down to this; narrower noise froze "
                               "PPO (module docstring)")
    compare_fresh: bool = Field(True, description="also roll out the fresh policy PPO would otherwise start from "
                                "(`fresh_success_sampled`, for `train --warm-start-fallback`)")
    seed: int = 0


class RoundReport(BaseModel):
    round: int
    executed: str  # "expert-guided" or "fitted policy"
    success: float  # share of this round's rollouts that reached success
    new_samples: int
    samples: int
    actor_loss: float  # after fitting, on the aggregated data
    own_success: float | None = None  # this round's fit, driving its own rollouts (the next round's, or a last one)
    # Where the fit errs (docs/experiments.md, session 36): the previous fit's loss on the states its own rollouts
    # reached this round, before refitting (None in round 0, driven by the expert), and the new fit's squared error
    # per action dimension on the aggregated data.
    own_states_loss: float | None = None
    actor_loss_by_action: dict[str, float] = {}


class WarmStartReport(BaseModel):
    env_steps: int
    rounds: list[RoundReport]
    critic_loss: float | None
    start_success: float | None = None  # own success of the fit PPO starts from (its mean action)
    start_success_sampled: float | None = None  # the same fit sampling actions with PPO's initial log-std
    start_log_std: float | None = None  # PPO's initial log-std: the widest tried that keeps half the fit's success
    noise_checks: list[dict] = []  # every log-std tried, with the fit's success when sampling at it
    start_learning_rate: float | None = None  # PPO's first adaptive learning rate (None: the run's fixed schedule)
    fresh_success_sampled: float | None = None  # the policy PPO would start from without the warm start, sampled


def _rollout_fn(trainer: PPOTrainer, env: Any, num_envs: int, steps: int) -> Callable:
    """Jitted (params, normalizer, key, use_expert, noise_std) -> per-step obs, expert targets, masks, rewards,
    success. The learner acts with its mean plus `noise_std` Gaussian noise (pre-tanh), as PPO samples it."""
    task = env.task
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    reset = jax.vmap(env.reset)
    step = jax.vmap(env.step)
    target_fn = jax.vmap(env.expert_unit_target)

    @jax.jit
    def rollout(params: dict, normalizer: Any, key: jax.Array, use_expert: jax.Array,
                noise_std: jax.Array) -> dict[str, jax.Array]:
        k_reset, k_noise = jax.random.split(key)
        state = reset(jax.random.split(k_reset, num_envs))

        def body(carry, k):
            s, done = carry
            target = target_fn(s.obs, jax.vmap(task.expert_action)(priv_fn(env.sys, s.pipeline_state)))
            learner = trainer.policy_fn(params, normalizer, s.obs, deterministic=True)
            learner = learner + noise_std * jax.random.normal(k, learner.shape, learner.dtype)
            nxt = step(s, jnp.where(use_expert, jnp.arctanh(target), learner))
            alive = ~done
            valid = alive & (s.info["residual_active"] > 0)
            done = done | (nxt.metrics["success"] > 0)
            return (nxt, done), {"obs": s.obs, "target": target, "valid": valid, "alive": alive,
                                 "reward": nxt.reward * alive, "terminal": done & alive}

        (_, done), out = jax.lax.scan(body, (state, jnp.zeros(num_envs, bool)), jax.random.split(k_noise, steps))
        return {**out, "success": done}

    return rollout


ERROR_ROWS = 65_536  # rows the reported errors are measured on (evenly spaced): enough for a mean, quick on CPU


def _error_rows(start: int, stop: int) -> np.ndarray:
    """At most ERROR_ROWS row indices evenly spread over [start, stop)."""
    return np.unique(np.linspace(start, stop - 1, min(stop - start, ERROR_ROWS)).astype(np.int64))


def _action_names(size: int) -> list[str]:
    """The gripper's action names where the action is the gripper's 7-D command, else a0, a1, ..."""
    from recovla_jax.runtime.gripper import ACTION_NAMES

    return list(ACTION_NAMES) if size == len(ACTION_NAMES) else [f"a{i}" for i in range(size)]


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

    def executed_unit(actor, normalizer, obs):
        """The squashed output the env executes (the unit residual), which the targets are given in."""
        return jnp.tanh(trainer.actor.apply(actor, trainer.normalize(normalizer, obs)))

    def actor_loss(actor, normalizer, obs, target):
        return jnp.mean((executed_unit(actor, normalizer, obs) - target) ** 2)

    def critic_loss(critic, normalizer, obs, ret):
        return jnp.mean((trainer.critic.apply(critic, trainer.normalize(normalizer, obs))[..., 0] - ret) ** 2)

    fit_actor = _fit_fn(actor_loss, optimizer, cfg.fit_steps, cfg.batch_size)
    squared_error = jax.jit(lambda actor, normalizer, obs, target: jnp.mean(
        (executed_unit(actor, normalizer, obs) - target) ** 2, axis=0))
    fit_critic = _fit_fn(critic_loss, optimizer, cfg.fit_steps, cfg.batch_size)
    update_normalizer = jax.jit(lambda n, x, w: running_statistics.update(n, x, weights=w))

    capacity = cfg.rounds * cfg.num_envs * cfg.steps
    obs_buf = np.zeros((capacity, trainer.obs_size), np.float32)
    target_buf = np.zeros((capacity, trainer.action_size), np.float32)
    count = 0
    params, normalizer = ts.params, ts.normalizer
    key = jax.random.PRNGKey(cfg.seed)
    reports: list[RoundReport] = []
    rollouts = 0  # batched rollouts run (each num_envs x steps env steps), counted for the report
    best: tuple[float, dict, Any] | None = None  # (own success, params, their normaliser)
    for r in range(cfg.rounds + 1):
        t0 = time.perf_counter()
        key, k_roll, k_fit = jax.random.split(key, 3)
        out = jax.device_get(rollout(params, normalizer, k_roll, jnp.asarray(r == 0), jnp.float32(0.0)))
        rollouts += 1
        success = float(np.mean(out["success"]))
        if r > 0:
            reports[-1] = reports[-1].model_copy(update={"own_success": success})
            log(f"expert warm start: fit {r}/{cfg.rounds} drives its own rollouts to success in {success:.1%}")
            if best is None or success > best[0]:
                best = (success, params, normalizer)
        if r == cfg.rounds:
            break
        valid = out["valid"].reshape(-1)
        new = int(valid.sum())
        obs_buf[count:count + new] = out["obs"].reshape(-1, trainer.obs_size)[valid]
        target_buf[count:count + new] = out["target"].reshape(-1, trainer.action_size)[valid]
        own_states_loss = None
        if r > 0 and new > 0:
            rows = _error_rows(count, count + new)
            own_states_loss = float(jnp.mean(squared_error(params["actor"], normalizer, obs_buf[rows], target_buf[rows])))
        count += new
        if trainer.cfg.normalize_obs:
            normalizer = update_normalizer(normalizer, jnp.asarray(out["obs"].reshape(-1, trainer.obs_size)),
                                           jnp.asarray(valid, jnp.float32))
        if count == 0:
            raise ValueError("the warm start's rollouts produced no training steps (every episode ended at once)")
        actor, loss = fit_actor(params["actor"], normalizer, obs_buf, target_buf, count, k_fit)
        params = {**params, "actor": actor}
        rows = _error_rows(0, count)
        by_action = np.asarray(squared_error(actor, normalizer, obs_buf[rows], target_buf[rows]))
        reports.append(RoundReport(round=r, executed="expert-guided" if r == 0 else "fitted policy",
                                   success=success, new_samples=new, samples=count, actor_loss=float(loss),
                                   own_states_loss=own_states_loss,
                                   actor_loss_by_action=dict(zip(_action_names(trainer.action_size), by_action.tolist()))))
        shift = "" if own_states_loss is None else f" (the previous fit's on the states it reached: {own_states_loss:.4f})"
        log(f"expert warm start: round {r + 1}/{cfg.rounds} ({reports[-1].executed} rollouts, success {success:.1%}): "
            f"{count:,} labelled steps, actor loss {float(loss):.4f}{shift} ({time.perf_counter() - t0:.1f} s"
            f"{'; the first round compiles' if r == 0 else ''})")

    # Like the base's DAgger, success is not monotone over rounds: PPO starts from the fit whose own rollouts
    # succeeded most, with the normaliser it was fitted under.
    best_success, best_params, normalizer = best
    # What PPO would start from without the warm start (the fresh policy sampled at the run's initial noise), on the
    # same train states: where it succeeds more than the fit, the fit is a worse start (`fresh_success_sampled`).
    key, k_fresh = jax.random.split(key)
    fresh_success = None
    if cfg.compare_fresh:
        fresh = jax.device_get(rollout(ts.params, ts.normalizer, k_fresh, jnp.asarray(False),
                                       jnp.float32(np.exp(trainer.cfg.init_log_std))))
        rollouts += 1
        fresh_success = float(np.mean(fresh["success"]))
    # PPO's first rollouts sample around the mean: measure what its initial noise leaves of the fit (a log-std
    # that is too wide hands PPO near-zero success whatever the fit achieved: peg_insert's 2 mm clearance lost a
    # 56% fit entirely at -3), narrowing the noise until half of it is kept, and fit the critic to the returns of
    # those sampled rollouts, the policy PPO will actually run.
    key, k_roll, k_fit = jax.random.split(key, 3)
    checks: list[dict] = []
    log_std = cfg.log_std
    while True:
        out = jax.device_get(rollout(best_params, normalizer, k_roll, jnp.asarray(False), jnp.float32(np.exp(log_std))))
        rollouts += 1
        sampled_success = float(np.mean(out["success"]))
        checks.append({"log_std": log_std, "success": sampled_success})
        if sampled_success >= 0.5 * best_success or log_std - 1.0 < cfg.min_log_std:
            break
        log(f"expert warm start: sampling at log-std {log_std} keeps {sampled_success:.1%} of the fit's "
            f"{best_success:.1%}; narrowing PPO's initial noise to {log_std - 1.0}")
        log_std -= 1.0
    returns = _discounted_returns(out["reward"] * trainer.cfg.reward_scaling, out["terminal"].astype(np.float32),
                                  trainer.cfg.gamma)
    alive = out["alive"].reshape(-1)
    critic_obs = np.zeros((cfg.num_envs * cfg.steps, trainer.obs_size), np.float32)
    critic_ret = np.zeros((cfg.num_envs * cfg.steps,), np.float32)
    n_alive = int(alive.sum())
    critic_obs[:n_alive] = out["obs"].reshape(-1, trainer.obs_size)[alive]
    critic_ret[:n_alive] = returns.reshape(-1)[alive]
    critic, c_loss = fit_critic(params["critic"], normalizer, critic_obs, critic_ret, max(n_alive, 1), k_fit)
    fresh_note = "" if fresh_success is None else f"; without the warm start {fresh_success:.1%}"
    log(f"expert warm start: PPO starts from the fit with {best_success:.1%} own success ({sampled_success:.1%} "
        f"sampling with log-std {log_std}{fresh_note}); critic fitted to the sampled returns (loss {float(c_loss):.4f})")
    if sampled_success < 0.5 * best_success:
        log(f"expert warm start (warning): exploration noise loses over half of the fit's success even at log-std "
            f"{log_std} (the narrowest tried, WarmStartConfig.min_log_std)")
    params = {**best_params, "critic": critic, "log_std": jnp.full_like(params["log_std"], log_std)}
    opt_state = trainer.optimizer.init(params)
    start_lr = None
    if trainer.cfg.desired_kl is not None:
        # Adam's first steps move the mean by about the learning rate whatever the gradient, and the KL grows as
        # (step / std)^2: at the run's rate and log-std -5, PPO's first iteration measured approx KL 35.8 and lost the
        # fit before the adaptive rule caught up. Start at the rate that keeps step / std as it is at init_log_std.
        opt_state = with_learning_rate(opt_state, trainer.cfg.learning_rate * np.exp(log_std - trainer.cfg.init_log_std))
        start_lr = float(opt_state[1].hyperparams["learning_rate"])
        log(f"expert warm start: PPO's adaptive learning rate starts at {start_lr:.2g} (the run's "
            f"{trainer.cfg.learning_rate:g} scaled by the noise, log-std {log_std} against {trainer.cfg.init_log_std})")
    ts = ts.replace(params=params, normalizer=normalizer, opt_state=opt_state)
    return ts, WarmStartReport(env_steps=rollouts * cfg.num_envs * cfg.steps, rounds=reports, critic_loss=float(c_loss),
                               start_success=best_success, start_success_sampled=sampled_success,
                               fresh_success_sampled=fresh_success,
                               start_log_std=log_std, noise_checks=checks, start_learning_rate=start_lr)

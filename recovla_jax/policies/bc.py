"""Behaviour cloning of the scripted expert into the frozen base policy (the stand-in for a VLA).

Demonstrations come from nominal episodes only (optionally with DART-style action noise on a fraction of
the demo envs, labelled with the expert's clean action); the clone never sees perturbation-induced
failures, which is exactly why it is brittle off-nominal. The trained policy is cached on disk keyed by
a hash of the task, its scene and this config: the second run loads it instead of training.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.evaluation.rollout import rollout_success
from recovla_jax.evaluation.stats import wilson
from recovla_jax.policies.base_policy import BasePolicy, bc_network, make_bc_apply
from recovla_jax.sim.env import TaskEnv
from recovla_jax.sim.gripper import ACTION_SIZE
from recovla_jax.tasks.base import ASSETS, Task
from recovla_jax.utils.checkpoint import restore_pytree, save_pytree
from recovla_jax.utils.jax_setup import DEFAULT_CACHE_DIR, package_versions

CACHE_FORMAT = 2  # 2: demos collected in chunks of DEMO_CHUNK envs


class BCConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    demo_envs: int = Field(1024, ge=8)
    noise_std: float = Field(0.3, ge=0.0)
    # Clean nominal demonstrations by default, like the fine-tuning data of a VLA. DART-style noise
    # (noisy_fraction > 0) teaches the clone the expert's reactive corrections: measured on drawer with
    # noisy_fraction=0.5, the clone recovered from 99% of injected failures, i.e. it was no longer a
    # brittle base policy, while with clean demos it fails on 15-25% of them (see the issue notes).
    noisy_fraction: float = Field(0.0, ge=0.0, le=1.0)
    hidden: tuple[int, ...] = (256, 256)
    train_steps: int = Field(6000, ge=1)
    batch_size: int = Field(2048, ge=16)
    learning_rate: float = Field(1e-3, gt=0.0)
    eval_envs: int = Field(256, ge=8)
    seed: int = 0


def cache_key(task: Task, cfg: BCConfig) -> str:
    """Hash of everything the cloned policy depends on."""
    payload = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "task_config": task.config.model_dump(mode="json"),
        "scene": (ASSETS / task.xml_file).read_text(),
        "bc": cfg.model_dump(mode="json"),
    }
    chunk = min(DEMO_CHUNK, task.max_program_envs)
    if chunk != 256:  # the demos depend on the chunking; 256 (format 2's only value) stays out of older keys
        payload["demo_chunk"] = chunk
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


DEMO_CHUNK = 256  # envs per jitted demo-collection call, at most; tasks may cap it lower (Task.max_program_envs)


def collect_demos(task: Task, cfg: BCConfig, rng: jax.Array) -> tuple[np.ndarray, np.ndarray, float]:
    """Expert demonstrations (obs, clean expert action) from nominal episodes; returns expert success too.

    Collected in chunks of `DEMO_CHUNK` envs with one compiled program: on 2 CPU cores with jax 0.10.2
    some larger batched MJX programs hung (all XLA threads idle) before `sim.cpu_linalg`; the chunk size
    stays because the demos (and so the cached policies' keys) depend on it.
    """
    env = TaskEnv(task)
    n = min(cfg.demo_envs, DEMO_CHUNK, task.max_program_envs)
    num_chunks = -(-cfg.demo_envs // n)
    n_noisy = int(cfg.demo_envs * cfg.noisy_fraction)
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))

    @jax.jit
    def run(k_reset, k_roll, noisy):
        state = jax.vmap(env.reset)(jax.random.split(k_reset, n))

        def body(carry, _):
            state, done, key = carry
            key, sub = jax.random.split(key)
            expert = jax.vmap(task.expert_action)(priv_fn(env.sys, state.pipeline_state))
            noise = cfg.noise_std * jax.random.normal(sub, expert.shape) * noisy[:, None]
            nxt = jax.vmap(env.step)(state, expert + noise)
            record = (state.obs, expert, ~done)
            return (nxt, done | (nxt.done > 0), key), record

        (_, done, _), (obs, act, valid) = jax.lax.scan(
            body, (state, jnp.zeros(n, bool), k_roll), None, length=task.config.episode_length
        )
        return obs, act, valid, done

    obs_all, act_all, clean_ok, clean_n = [], [], 0, 0
    for c in range(num_chunks):
        k_reset, k_roll = jax.random.split(jax.random.fold_in(rng, c))
        noisy = np.arange(c * n, (c + 1) * n) < n_noisy
        obs, act, valid, done = jax.device_get(run(k_reset, k_roll, jnp.asarray(noisy)))
        valid = np.asarray(valid)
        obs_all.append(np.asarray(obs)[valid])
        act_all.append(np.asarray(act)[valid])
        clean_ok += int(np.sum(np.asarray(done) & ~noisy))
        clean_n += int(np.sum(~noisy))
    return np.concatenate(obs_all), np.concatenate(act_all), clean_ok / max(clean_n, 1)


def train_bc(obs: np.ndarray, actions: np.ndarray, cfg: BCConfig, rng: jax.Array, progress=None) -> dict:
    """Fit the MLP by MSE on tanh-squashed outputs; returns params with the normalisation statistics."""
    mean = obs.mean(0)
    std = obs.std(0) + 1e-3
    net = bc_network(cfg.hidden, ACTION_SIZE)
    k_init, k_data = jax.random.split(rng)
    params = {"net": net.init(k_init, jnp.zeros(obs.shape[-1]))["params"], "obs_mean": jnp.asarray(mean), "obs_std": jnp.asarray(std)}
    apply = make_bc_apply(cfg.hidden, ACTION_SIZE)
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.train_steps)
    opt = optax.adam(schedule)
    opt_state = opt.init(params["net"])
    obs_j, act_j = jnp.asarray(obs), jnp.asarray(actions)

    def loss_fn(net_params, batch_obs, batch_act):
        pred = apply({**params, "net": net_params}, batch_obs)
        return jnp.mean(jnp.sum((pred - batch_act) ** 2, axis=-1))

    @jax.jit
    def train_chunk(net_params, opt_state, key):
        def one(carry, k):
            p, s = carry
            i = jax.random.randint(k, (cfg.batch_size,), 0, obs_j.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(p, obs_j[i], act_j[i])
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (net_params, opt_state), losses = jax.lax.scan(one, (net_params, opt_state), jax.random.split(key, 500))
        return net_params, opt_state, losses.mean()

    net_params = params["net"]
    chunks = max(1, cfg.train_steps // 500)
    loss = float("nan")
    for i, key in enumerate(jax.random.split(k_data, chunks)):
        net_params, opt_state, loss = train_chunk(net_params, opt_state, key)
        if progress is not None:
            progress(i + 1, chunks, float(loss))
    return {**params, "net": net_params}, float(loss)


def evaluate_nominal(task: Task, policy: BasePolicy, num_envs: int, rng: jax.Array) -> dict:
    """Nominal success of a base policy over `num_envs` seeded episodes (chunks of DEMO_CHUNK), Wilson CI."""
    env = TaskEnv(task)
    n = min(num_envs, DEMO_CHUNK, task.max_program_envs)

    @jax.jit
    def run(k_reset, k_roll):
        start = jax.vmap(env.reset)(jax.random.split(k_reset, n))
        return rollout_success(env, lambda obs, priv, key: policy(obs), start, task.config.episode_length, k_roll)["success"]

    oks = []
    for c in range(-(-num_envs // n)):
        k_reset, k_roll = jax.random.split(jax.random.fold_in(rng, c))
        oks.append(np.asarray(run(k_reset, k_roll)))
    ok = np.concatenate(oks)[:num_envs]
    return wilson(int(ok.sum()), int(ok.size)).as_dict()


def load_or_train_base_policy(
    task: Task, cfg: BCConfig | None = None, cache_dir: Path | None = None, log=print, progress=None
) -> BasePolicy:
    """The frozen BC base policy for `task`: loaded from the cache, or trained, evaluated and cached."""
    cfg = cfg or BCConfig()
    key = cache_key(task, cfg)
    root = Path(cache_dir or DEFAULT_CACHE_DIR) / "base_policies" / f"{task.name}-{key}"
    meta_path = root / "meta.json"
    apply = make_bc_apply(cfg.hidden, ACTION_SIZE)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        params = restore_pytree(root / "params")
        log(f"base policy: loaded cached BC policy {root} (nominal success {meta['nominal_success']['rate']:.1%})")
        return BasePolicy(name=f"bc-{task.name}", apply=apply, params=jax.tree.map(jnp.asarray, params), info=meta)

    t0 = time.time()
    rng = jax.random.PRNGKey(cfg.seed)
    k_demo, k_train, k_eval = jax.random.split(rng, 3)
    log(f"base policy: no cache at {root}; collecting expert demos from {cfg.demo_envs} nominal episodes")
    obs, actions, expert_success = collect_demos(task, cfg, k_demo)
    log(f"base policy: {len(obs)} demo samples, expert success on clean demo episodes {expert_success:.1%}")
    params, loss = train_bc(obs, actions, cfg, k_train, progress=progress)
    policy = BasePolicy(name=f"bc-{task.name}", apply=apply, params=params, info={})
    nominal = evaluate_nominal(task, policy, cfg.eval_envs, k_eval)
    meta = {
        "task": task.name,
        "cache_key": key,
        "bc_config": cfg.model_dump(mode="json"),
        "demo_samples": int(len(obs)),
        "expert_demo_success": expert_success,
        "final_train_loss": loss,
        "nominal_success": nominal,
        "train_seconds": time.time() - t0,
        "versions": package_versions(),
    }
    save_pytree(root / "params", params)
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"base policy: trained in {meta['train_seconds']:.0f}s, nominal success {nominal['rate']:.1%} "
        f"[{nominal['ci_low']:.1%}, {nominal['ci_high']:.1%}] n={nominal['trials']}; cached at {root}")
    return BasePolicy(name=f"bc-{task.name}", apply=apply, params=params, info=meta)

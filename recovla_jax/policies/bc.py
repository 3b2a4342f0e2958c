"""Behaviour cloning of the scripted expert into the frozen base policy (the stand-in for a VLA).

Demonstrations come from nominal episodes only (optionally with DART-style action noise on a fraction of
the demo envs, labelled with the expert's clean action); the clone never sees perturbation-induced
failures, which is exactly why it is brittle off-nominal. The trained policy is cached on disk keyed by
a hash of the task, its scene and this config: the second run loads it instead of training.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from recovla_jax.evaluation.rollout import rollout_success
from recovla_jax.evaluation.stats import wilson
from recovla_jax.policies.base_policy import BasePolicy, bc_network, make_bc_apply
from recovla_jax.sim.env import TaskEnv
from recovla_jax.sim.gripper import ACTION_SIZE
from recovla_jax.sim.latency import hold_action
from recovla_jax.sim.randomization import DomainRandomization, batched_models
from recovla_jax.sim.wrappers import RandomizedVmapWrapper
from recovla_jax.tasks.base import ASSETS, Task
from recovla_jax.utils.checkpoint import restore_pytree, save_pytree
from recovla_jax.utils.jax_setup import DEFAULT_CACHE_DIR, host_cpu, package_versions

CACHE_FORMAT = 4  # 2: demo chunks; 3: task and rules source hashed; 4: DAgger refits from scratch, keeps the best


# The DAgger deployment conditions (added after CACHE_FORMAT 4) and their "off" values: they enter the cache
# key only when set, so clones cached before the fields existed stay valid.
_DAGGER_CONDITIONS_OFF = {"dagger_latency_prob": 0.0, "dagger_obs_noise": 0.0, "dagger_randomization": False}


# Fields added later whose default leaves the clone unchanged: keyed only when set, like the conditions.
_UNKEYED_DEFAULTS = {**_DAGGER_CONDITIONS_OFF, "demo_episode_length": None}


def _keyed_config(cfg: BCConfig) -> dict:
    dump = cfg.model_dump(mode="json")
    return {k: v for k, v in dump.items() if k not in _UNKEYED_DEFAULTS or v != _UNKEYED_DEFAULTS[k]}


def _dagger_conditions_on(cfg: BCConfig) -> bool:
    return any(getattr(cfg, k) != off for k, off in _DAGGER_CONDITIONS_OFF.items())


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
    # DAgger rounds after the first fit: the clone drives `dagger_envs` nominal episodes, the expert labels
    # every state it visits, and a fresh clone is fit on all data so far. Still nominal starts only (no
    # injected failures), but the clone learns to correct its own compounding errors: multi-stage tasks
    # need it (pick_place and stack clones hovered or stalled in states the expert never visits). Success
    # is not monotone over rounds (stack under the DAgger conditions: 2% -> 48% -> 32% -> 35% -> 82%), so
    # the fit whose own rollouts succeeded most is kept; the last fit gets `dagger_envs` extra nominal
    # episodes for that (never the evaluation seeds).
    dagger_rounds: int = Field(0, ge=0)
    dagger_envs: int = Field(512, ge=8)
    # Deployment conditions of the DAgger rounds (the robot the base is fine-tuned on, like a VLA fine-tuned
    # on its own robot's data): in `dagger_latency_prob` of the learner's episodes its command takes effect
    # one control step late, it reads observations with N(0, dagger_obs_noise) noise (recorded as read; the
    # expert labels from the true state), and with `dagger_randomization` each episode runs on its own
    # domain-randomized model. The evaluation's robots have all three; a pick_place clone that never drove
    # with them reached 99% clean but 53% with latency in every episode, 81% under randomized dynamics.
    dagger_latency_prob: float = Field(0.0, ge=0.0, le=1.0)
    dagger_obs_noise: float = Field(0.0, ge=0.0)
    dagger_randomization: bool = False  # each learner episode on its own domain-randomized model
    # Length of the demonstration and DAgger episodes when it should differ from the task's episode (the
    # recovery horizon; None: the same). A task whose recoveries need a longer episode than its nominal run
    # keeps its clone on the nominal horizon: stack's 300-step recovery episode made every failing learner
    # episode label 300 stuck steps instead of 200, and the DAgger clone fell from 89.8% to 60.2% nominal
    # (one clone each, same code). The clone's nominal success is still measured on the task's episode.
    demo_episode_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _conditions_need_rounds(self) -> "BCConfig":
        if _dagger_conditions_on(self) and not self.dagger_rounds:
            raise ValueError("dagger_latency_prob / dagger_obs_noise / dagger_randomization act only in DAgger rounds: "
                             "set dagger_rounds >= 1 or leave them off")
        return self


def cache_key(task: Task, cfg: BCConfig) -> str:
    """Hash of everything the cloned policy depends on.

    The source text of the modules that define what the demos contain is hashed (`DEMO_SOURCE_MODULES`
    plus the task's module and its rules module): editing the expert, reset, observation, action mapping or
    env step retrains the clone instead of silently reusing a stale one, at the price of retraining after
    any edit of those files, comments included. Changes to the cloning algorithm itself (this module)
    must bump `CACHE_FORMAT`.
    """
    payload = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "task_config": task.config.model_dump(mode="json"),
        "scene": (ASSETS / task.xml_file).read_text(),
        "task_source": _module_sources(type(task).__module__, task.rules_module, *DEMO_SOURCE_MODULES,
                                       *(CONDITION_SOURCE_MODULES if _dagger_conditions_on(cfg) else ())),
        "bc": _keyed_config(cfg),
        "demo_chunk": min(DEMO_CHUNK, task.max_program_envs),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


DEMO_SOURCE_MODULES = ("recovla_jax.sim.env", "recovla_jax.sim.gripper", "recovla_jax.runtime.gripper",
                       "recovla_jax.sim.rotations")
# What the DAgger conditions add (hashed only when they are on, so clones without them keep their keys).
CONDITION_SOURCE_MODULES = ("recovla_jax.sim.latency", "recovla_jax.sim.randomization", "recovla_jax.sim.wrappers")


def _module_sources(*modules: str) -> str:
    """SHA-256 of the concatenated source files of the named modules (those with a source file)."""
    digest = hashlib.sha256()
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ValueError, ModuleNotFoundError):  # e.g. a task defined in __main__ or a notebook
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()


DEMO_CHUNK = 256  # envs per jitted demo-collection call, at most; tasks may cap it lower (Task.max_program_envs)


def collect_demos(
    task: Task,
    cfg: BCConfig,
    rng: jax.Array,
    on_chunk: Callable[[int, int], None] | None = None,
    learner: BasePolicy | None = None,
    num_episodes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Expert-labelled (obs, clean expert action) pairs from nominal episodes, and the driver's success rate.

    Without `learner` the expert drives (with DART noise on `noisy_fraction` of the envs); with it the
    learner drives and the expert only labels the states it visits (a DAgger round), under the config's
    DAgger conditions: the recorded observation is the noisy one the learner read, the label the expert's
    action for the true state. Under latency that label takes effect a step late: the clone learns to get
    back on track from where latency leads it, not to predict ahead.
    The success rate counts successes only (a NaN reset also ends an episode).

    Collected in chunks of `DEMO_CHUNK` envs with one compiled program: on 2 CPU cores with jax 0.10.2
    some larger batched MJX programs hung (all XLA threads idle) before `sim.cpu_linalg`; the chunk now
    bounds the memory of one program.
    """
    env = TaskEnv(task)
    if learner is None:
        latency_prob, obs_noise, randomize = 0.0, 0.0, False
    else:
        latency_prob, obs_noise, randomize = cfg.dagger_latency_prob, cfg.dagger_obs_noise, cfg.dagger_randomization
    episodes = num_episodes or cfg.demo_envs
    n = min(episodes, DEMO_CHUNK, task.max_program_envs)
    num_chunks = -(-episodes // n)
    n_noisy = 0 if learner is not None else int(episodes * cfg.noisy_fraction)
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    learner_params = learner.params if learner is not None else {}

    @jax.jit
    def run(k_reset, k_roll, noisy, params):
        if randomize:
            k_reset, k_models = jax.random.split(k_reset)
            batched = RandomizedVmapWrapper(env, *batched_models(env.sys, k_models, n, DomainRandomization()))
            reset_fn, step_fn = batched.reset, batched.step
        else:
            reset_fn, step_fn = jax.vmap(env.reset), jax.vmap(env.step)
        state = reset_fn(jax.random.split(k_reset, n))
        if latency_prob > 0:  # (random keys drawn only when used: demos without conditions stay as before)
            k_roll, k_lat = jax.random.split(k_roll)
            late = jax.random.bernoulli(k_lat, latency_prob, (n,))
        else:
            late = jnp.zeros(n, bool)
        prev = jax.vmap(lambda d: hold_action(task.gripper, d))(state.pipeline_state)

        def body(carry, _):
            state, prev, done, ok, key = carry
            expert = jax.vmap(task.expert_action)(priv_fn(env.sys, state.pipeline_state))
            read = state.obs
            if obs_noise > 0:
                key, sub, k_obs = jax.random.split(key, 3)
                read = read + obs_noise * jax.random.normal(k_obs, read.shape)
            else:
                key, sub = jax.random.split(key)
            noise = cfg.noise_std * jax.random.normal(sub, expert.shape) * noisy[:, None]
            driver = expert + noise if learner is None else learner.apply(params, read)
            nxt = step_fn(state, jnp.where(late[:, None], prev, driver))
            record = (read, expert, ~done)
            ok = ok | (~done & (nxt.metrics["success"] > 0))
            return (nxt, driver, done | (nxt.done > 0), ok, key), record

        zeros = jnp.zeros(n, bool)
        (_, _, _, ok, _), (obs, act, valid) = jax.lax.scan(
            body, (state, prev, zeros, zeros, k_roll), None, length=demo_horizon(task, cfg)
        )
        return obs, act, valid, ok

    obs_all, act_all, clean_ok, clean_n = [], [], 0, 0
    for c in range(num_chunks):
        k_reset, k_roll = jax.random.split(jax.random.fold_in(rng, c))
        noisy = np.arange(c * n, (c + 1) * n) < n_noisy
        obs, act, valid, ok = jax.device_get(run(k_reset, k_roll, jnp.asarray(noisy), learner_params))
        valid = np.asarray(valid)
        obs_all.append(np.asarray(obs)[valid])
        act_all.append(np.asarray(act)[valid])
        clean_ok += int(np.sum(np.asarray(ok) & ~noisy))
        clean_n += int(np.sum(~noisy))
        if on_chunk is not None:
            on_chunk(c + 1, num_chunks)
    return np.concatenate(obs_all), np.concatenate(act_all), clean_ok / max(clean_n, 1)


def demo_horizon(task: Task, cfg: BCConfig) -> int:
    """Steps in one demonstration or DAgger episode: `cfg.demo_episode_length`, else the task's episode."""
    return cfg.demo_episode_length or task.config.episode_length


def train_bc(obs: np.ndarray, actions: np.ndarray, cfg: BCConfig, rng: jax.Array, progress=None) -> tuple[dict, float]:
    """Fit the MLP by MSE on tanh-squashed outputs; returns params with the normalisation statistics."""
    net = bc_network(cfg.hidden, ACTION_SIZE)
    k_init, k_data = jax.random.split(rng)
    params = {"net": net.init(k_init, jnp.zeros(obs.shape[-1]))["params"],
              "obs_mean": jnp.asarray(obs.mean(0)), "obs_std": jnp.asarray(obs.std(0) + 1e-3)}
    apply = make_bc_apply(cfg.hidden, ACTION_SIZE)
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.train_steps)
    opt = optax.adam(schedule)
    opt_state = opt.init(params["net"])
    obs_j, act_j = jnp.asarray(obs), jnp.asarray(actions)

    def loss_fn(net_params, batch_obs, batch_act):
        pred = apply({**params, "net": net_params}, batch_obs)
        return jnp.mean(jnp.sum((pred - batch_act) ** 2, axis=-1))

    @jax.jit
    def train_chunk(net_params, opt_state, key, obs_j, act_j):  # data as arguments: not baked into the program
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
        net_params, opt_state, loss = train_chunk(net_params, opt_state, key, obs_j, act_j)
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


def _bc_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=jax.process_index() != 0)


def load_or_train_base_policy(
    task: Task, cfg: BCConfig | None = None, cache_dir: Path | None = None, log=print, progress=None
) -> BasePolicy:
    """The frozen BC base policy for `task`: loaded from the cache, or trained, evaluated and cached."""
    cfg = cfg or BCConfig(**task.bc_overrides)
    key = cache_key(task, cfg)
    root = Path(cache_dir or DEFAULT_CACHE_DIR) / "base_policies" / f"{task.name}-{key}"
    meta_path = root / "meta.json"
    apply = make_bc_apply(cfg.hidden, ACTION_SIZE)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        params = restore_pytree(root / "params")
        log(f"base policy: loaded cached BC policy {root} (nominal success {meta['nominal_success']['rate']:.1%})")
        cloned_on, here = meta.get("host_cpu"), host_cpu()
        if cloned_on and (cloned_on.get("model"), cloned_on.get("isa")) != (here["model"], here["isa"]):
            log(f"base policy: note: cloned on another kind of CPU ({cloned_on.get('model')}, "
                f"{' '.join(cloned_on.get('isa') or [])}) than this one ({here['model']}, {' '.join(here['isa'])}): a "
                "clone made here would differ numerically (recovla_jax.utils.jax_setup.host_cpu)")
        return BasePolicy(name=f"bc-{task.name}", apply=apply, params=jax.tree.map(jnp.asarray, params), info=meta)

    t0 = time.time()
    rng = jax.random.PRNGKey(cfg.seed)
    k_demo, k_train, k_eval = jax.random.split(rng, 3)
    log(f"base policy: no cache at {root}; collecting expert demos from {cfg.demo_envs} nominal episodes")
    with _bc_progress() as bars:
        demos = bars.add_task("base policy: expert demos", total=None, info="")
        obs, actions, expert_success = collect_demos(
            task, cfg, k_demo, on_chunk=lambda i, n: bars.update(demos, completed=i, total=n, info="chunks of envs"))
        log(f"base policy: {len(obs)} demo samples, expert success on clean demo episodes {expert_success:.1%}")
        fit = bars.add_task("base policy: behaviour cloning", total=None, info="")

        def on_train_chunk(i: int, n: int, loss: float) -> None:
            bars.update(fit, completed=i, total=n, info=f"loss {loss:.4f}")
            if progress is not None:
                progress(i, n, loss)

        params, loss = train_bc(obs, actions, cfg, k_train, progress=on_train_chunk)
        fits, best = [{"fit": 0, "samples": int(len(obs)), "train_loss": loss}], 0
        candidates = [params]
        for r in range(cfg.dagger_rounds):
            rollouts = bars.add_task(f"base policy: DAgger round {r + 1}/{cfg.dagger_rounds}", total=None, info="")
            learner = BasePolicy(name="learner", apply=apply, params=params, info={})
            more_obs, more_actions, learner_success = collect_demos(
                task, cfg, jax.random.fold_in(k_demo, r + 1), learner=learner, num_episodes=cfg.dagger_envs,
                on_chunk=lambda i, n, t=rollouts: bars.update(t, completed=i, total=n, info="learner episodes"))
            fits[-1]["own_rollout_success"] = learner_success
            obs, actions = np.concatenate([obs, more_obs]), np.concatenate([actions, more_actions])
            log(f"base policy: DAgger round {r + 1}: fit {r} succeeded in {learner_success:.1%} of "
                f"{cfg.dagger_envs} episodes; {len(obs)} labelled samples in all")
            fit = bars.add_task(f"base policy: fit {r + 1}/{cfg.dagger_rounds}", total=None, info="")
            params, loss = train_bc(obs, actions, cfg, jax.random.fold_in(k_train, r + 1), progress=on_train_chunk)
            fits.append({"fit": r + 1, "samples": int(len(obs)), "train_loss": loss})
            candidates.append(params)
        if cfg.dagger_rounds:
            last = BasePolicy(name="learner", apply=apply, params=params, info={})
            k_last = jax.random.fold_in(k_demo, cfg.dagger_rounds + 1)
            if _dagger_conditions_on(cfg):  # scored under the same conditions as the rounds
                _, _, fits[-1]["own_rollout_success"] = collect_demos(task, cfg, k_last, learner=last,
                                                                      num_episodes=cfg.dagger_envs)
            else:
                fits[-1]["own_rollout_success"] = evaluate_nominal(task, last, cfg.dagger_envs, k_last)["rate"]
            best = max(range(len(fits)), key=lambda k: (fits[k]["own_rollout_success"], k))
            params, loss = candidates[best], fits[best]["train_loss"]
            log(f"base policy: DAgger keeps fit {best} (own rollouts: "
                + ", ".join(f"{f['own_rollout_success']:.1%}" for f in fits) + ")")
    dagger = {"fits": fits, "selected_fit": best} if cfg.dagger_rounds else None
    policy = BasePolicy(name=f"bc-{task.name}", apply=apply, params=params, info={})
    nominal = evaluate_nominal(task, policy, cfg.eval_envs, k_eval)
    meta = {
        "task": task.name,
        "cache_key": key,
        "bc_config": cfg.model_dump(mode="json"),
        "demo_samples": int(len(obs)),
        "expert_demo_success": expert_success,
        "final_train_loss": loss,
        "dagger": dagger,
        "nominal_success": nominal,
        "train_seconds": time.time() - t0,
        "versions": package_versions(),
        "host_cpu": host_cpu(),  # another kind of CPU may clone differently (jax_setup.host_cpu)
    }
    save_pytree(root / "params", params)
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"base policy: trained in {meta['train_seconds']:.0f}s, nominal success {nominal['rate']:.1%} "
        f"[{nominal['ci_low']:.1%}, {nominal['ci_high']:.1%}] n={nominal['trials']}; cached at {root}")
    return BasePolicy(name=f"bc-{task.name}", apply=apply, params=params, info=meta)

"""A small but real-format training run directory, built in seconds without compiling an MJX env.

Same files a run leaves (config.json, descriptors.json, bank/, checkpoints/<policy>/<step>/ via
`PPOTrainer.to_host` + `CheckpointStore`, policies/<policy>.json via `write_policy_bundle`, base_policy/
via `save_pytree`, results.json), with randomly initialised tiny networks. Bank states are nominal
drawer starts moved a few random steps on native MuJoCo (same kinematics as MJX: `test_runtime` checks
the observations equal the MJX task's); their mocap arrays are empty, as training's (the scene has none).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import optax
from brax.training.acme import running_statistics, specs

from recovla_jax.diagnosis.descriptor import oracle_descriptor
from recovla_jax.evaluation.stats import wilson
from recovla_jax.failures.bank import FailureBank
from recovla_jax.policies.base_policy import BasePolicy, bc_network, make_bc_apply
from recovla_jax.policies.networks import MLP
from recovla_jax.runtime.robots.mujoco_drawer import NativeDrawerRobot, NativeDynamics
from recovla_jax.tasks import get_task
from recovla_jax.training.policy_bundle import write_policy_bundle
from recovla_jax.training.ppo import PPOTrainer, TrainingState
from recovla_jax.utils.checkpoint import CheckpointStore

HIDDEN = (16, 16)
POLICIES = {"missed_handle": ["missed_handle"], "conditioned": ["slipped_off", "misaligned_gripper"]}
STEPS = (5, 10)
N_STATES = 24


def _bank(task, rng: np.random.Generator) -> FailureBank:
    robot = NativeDrawerRobot(NativeDynamics.nominal())
    rows = []
    for i in range(N_STATES):
        start = robot.scene.nominal_state(rng, robot.ranges)
        robot.reset(start)
        for _ in range(int(rng.integers(0, 15))):
            robot.apply_action(rng.uniform(-1, 1, 7))
        d = robot.data
        mujoco.mj_forward(robot.model, d)  # after mj_step the kinematics lag qpos by a substep: record a consistent state
        rows.append({"qpos": d.qpos.copy(), "qvel": d.qvel.copy(), "mocap_pos": d.mocap_pos.copy(),
                     "mocap_quat": d.mocap_quat.copy(), "ctrl": d.ctrl.copy(), "obs": robot.true_state().astype(np.float32)})
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    arrays["mode"] = (np.arange(N_STATES) % 3).astype(np.int32)
    arrays["stage"] = np.zeros(N_STATES, np.int32)
    arrays["split"] = (np.arange(N_STATES) // 3 % 2).astype(np.int32)
    arrays["t_inject"] = np.zeros(N_STATES, np.int32)
    return FailureBank(task.name, tuple(task.failure_modes), tuple(task.recovery_stages), arrays, {"fake": True})


def build_fake_run(run: Path, seed: int = 0) -> Path:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    task = get_task("drawer", {"episode_length": 30})
    bank = _bank(task, rng)
    bank.save(run / "bank")
    obs = bank.arrays["obs"]

    net = bc_network(HIDDEN, 7)
    base_params = {"net": net.init(key, jnp.zeros(24))["params"], "obs_mean": jnp.asarray(obs.mean(0)),
                   "obs_std": jnp.asarray(obs.std(0) + 1e-3)}
    base = BasePolicy("fake-bc", make_bc_apply(HIDDEN, 7), base_params, {"bc_config": {"hidden": list(HIDDEN)}})

    descriptors = {m: oracle_descriptor(task, m) for m in task.failure_modes}
    weights = np.stack([descriptors[m].validate_for(task) for m in task.failure_modes]).astype(np.float32)
    (run / "descriptors.json").write_text(json.dumps({m: d.model_dump() for m, d in descriptors.items()}, indent=2))
    res_size = 24 + 7 + 3 + weights.shape[1]
    env = SimpleNamespace(weights_per_mode=weights, alpha=0.5, observation_size=res_size)
    ppo_cfg = SimpleNamespace(actor_hidden=HIDDEN, normalize_obs=True)
    args = SimpleNamespace(episode_length=30)

    base_act = np.asarray(base(jnp.asarray(obs)))
    for p, (name, modes) in enumerate(POLICIES.items()):
        mode_idx = np.resize([task.failure_modes.index(m) for m in modes], len(obs))
        res_obs = np.concatenate([obs, base_act, np.eye(3)[mode_idx], weights[mode_idx]], axis=1).astype(np.float32)
        norm = running_statistics.init_state(specs.Array((res_size,), jnp.dtype("float32")))
        norm = running_statistics.update(norm, jnp.asarray(res_obs))
        store = CheckpointStore(run / "checkpoints" / name)
        for step in STEPS:
            k = jax.random.fold_in(key, 100 * p + step)
            params = {"actor": MLP(HIDDEN, 7).init(k, jnp.zeros((1, res_size))),
                      "critic": MLP(HIDDEN, 1).init(jax.random.fold_in(k, 1), jnp.zeros((1, res_size))),
                      "log_std": jnp.full((7,), -0.5)}
            ts = TrainingState(params=params, opt_state=optax.adam(1e-3).init(params), normalizer=norm, env_state={},
                               rng=k, iteration=jnp.asarray(step, jnp.int32), env_steps=jnp.asarray(0, jnp.int32))
            store.save(step, PPOTrainer.to_host(SimpleNamespace(mesh=None), ts))
        store.close()
        write_policy_bundle(run, name, modes, task, base, env, ppo_cfg, args, descriptors)

    def cell(bits: str) -> dict:  # a Wilson cell with per-state outcomes, as the evaluator records them
        return {**wilson(bits.count("1"), len(bits)).as_dict(), "per_state": {"success": bits, "episodes": "fake"}}

    held = {m: np.flatnonzero((bank.arrays["split"] == 1) & (bank.arrays["mode"] == i)).tolist()
            for i, m in enumerate(task.failure_modes)}
    results = {"task": "drawer", "modes": {m: {"base": cell("1000"), "recovla": cell("1100"), "heldout_rows": held[m]}
                                           for m in task.failure_modes}}
    (run / "results.json").write_text(json.dumps(results, indent=2))
    (run / "config.json").write_text(json.dumps({"task": "drawer", "seed": seed, "fake": True}, indent=2))
    return run

"""Collect off-nominal states where the frozen base policy really fails.

For each failure mode: roll the base policy out from nominal resets, fire the mode's injector at a
sampled step inside the mode's window, label the resulting state from simulator state alone (the label
may disagree with the injector: such states are dropped and counted), then roll the base policy on from
that state. A state enters the bank only if its label matches and the base policy fails from it, both
on the nominal model and on `robust_trials` domain-randomized models with the gripper jittered like a
training/evaluation start, so every bank state is a real, robust failure of the base (a state the base
escapes under a little friction or position noise is not kept). The bank is split into train and held-out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx
from pydantic import BaseModel, ConfigDict, Field

from recovla_jax.evaluation.rollout import rollout_success, run_until_success
from recovla_jax.policies.base_policy import BasePolicy
from recovla_jax.sim.env import TaskEnv
from recovla_jax.sim.randomization import DomainRandomization, batched_models
from recovla_jax.sim.wrappers import using_model
from recovla_jax.tasks.base import Task
from recovla_jax.utils.jax_setup import host_cpu, package_versions

STATE_FIELDS = ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl")


class BankConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates_per_mode: int = Field(1024, ge=8, description="candidates injected per mode (at least)")
    min_heldout_per_mode: int = Field(0, ge=0, description="keep injecting chunks of a mode until its held-out split "
                                      "holds this many base failures (0: exactly candidates_per_mode)")
    max_candidates_per_mode: int = Field(65536, ge=8, description="cap on candidates per mode when min_heldout_per_mode is set")
    chunk_size: int = Field(256, ge=8, description="envs per jitted collection call")
    test_steps: int = Field(100, ge=1, description="base-policy steps from the failure state that must not succeed")
    heldout_fraction: float = Field(0.4, gt=0.0, lt=1.0)
    robust_trials: int = Field(1, ge=0, le=4, description="extra randomized + jittered base rollouts that must also fail")
    start_noise: float = Field(0.005, ge=0.0, description="gripper position jitter (m) of the robust trials")
    seed: int = 0


class BankMismatchError(ValueError):
    """A saved bank that does not belong to the task it is loaded for."""


@dataclass
class FailureBank:
    """Arrays over states (leading axis) plus metadata; `split` is 0 = train, 1 = held-out."""

    task: str
    modes: tuple[str, ...]
    stages: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.arrays["mode"].shape[0])

    def rows(self, mode: str | None = None, split: str | None = None) -> np.ndarray:
        """Row indices (ascending) of the states of `mode` in `split`: a state's stable id in this bank, which keys
        its evaluation draws (`RecoveryEvaluator(state_ids=...)`)."""
        keep = np.ones(len(self), bool)
        if mode is not None:
            keep &= self.arrays["mode"] == self.modes.index(mode)
        if split is not None:
            keep &= self.arrays["split"] == {"train": 0, "heldout": 1}[split]
        return np.flatnonzero(keep)

    def rows_of(self, modes: Sequence[str], split: str | None = None) -> np.ndarray:
        """`rows` of each of `modes` in `split`, mode after mode: the order a multi-mode env built with `take` holds
        them, so one array serves as both the env's starts and their evaluation keys."""
        return np.concatenate([self.rows(m, split) for m in modes]) if modes else np.zeros(0, np.int64)

    def take(self, rows: np.ndarray) -> "FailureBank":
        """The bank of the given rows, in that order."""
        return FailureBank(self.task, self.modes, self.stages, {k: v[rows] for k, v in self.arrays.items()}, self.meta)

    def select(self, mode: str | None = None, split: str | None = None) -> "FailureBank":
        return self.take(self.rows(mode, split))

    def counts(self) -> dict:
        out = {}
        for i, m in enumerate(self.modes):
            sel = self.arrays["mode"] == i
            out[m] = {"train": int(np.sum(sel & (self.arrays["split"] == 0))),
                      "heldout": int(np.sum(sel & (self.arrays["split"] == 1)))}
        return out

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "bank.npz", **self.arrays)
        meta = {**self.meta, "task": self.task, "modes": list(self.modes), "stages": list(self.stages), "counts": self.counts()}
        (directory / "bank.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, task: Task | None = None) -> "FailureBank":
        """The bank saved in `directory`; with `task`, refused unless it was collected for that task's failure modes,
        in the same order: its integer mode labels index the task's reward rows, descriptors and result cells."""
        directory = Path(directory)
        meta = json.loads((directory / "bank.json").read_text())
        with np.load(directory / "bank.npz") as z:
            arrays = {k: z[k] for k in z.files}
        bank = cls(meta["task"], tuple(meta["modes"]), tuple(meta["stages"]), arrays, meta)
        if task is not None and (bank.task != task.name or bank.modes != tuple(task.failure_modes)):
            raise BankMismatchError(f"failure bank {directory} was collected for task {bank.task!r} with modes "
                                    f"{list(bank.modes)}, but task {task.name!r} has modes {list(task.failure_modes)}; "
                                    "collect a new bank for it (experiments.collect, or the main job without --bank-dir)")
        return bank

    @property
    def test_steps(self) -> int | None:
        """Base-policy steps each state was tested for ("the base really fails"), when the bank records it."""
        value = self.meta.get("config", {}).get("test_steps")
        return None if value is None else int(value)


def bank_state_data(task: Task, sys: mjx.Model, fields: dict[str, jnp.ndarray]) -> mjx.Data:
    """The full MJX state of one bank row (`STATE_FIELDS`: positions, velocities, mocap, actuator targets), forwarded."""
    data = task.data_template.replace(**{k: fields[k] for k in STATE_FIELDS})
    return mjx.forward(sys, data)


def collect_failure_bank(task: Task, base: BasePolicy, cfg: BankConfig, log=print) -> FailureBank:
    """Inject, label, filter by base failure and split, for every failure mode of `task`."""
    env = TaskEnv(task)
    # Candidates are collected in chunks of `chunk_size` envs (one compiled program reused): on 2 CPU
    # cores with jax 0.10.2 a 1024-env version of this program hung in XLA's CPU runtime (idle threads)
    # before `sim.cpu_linalg` replaced LAPACK's thread-pool-blocking Cholesky; chunks also bound memory.
    n = min(cfg.chunk_size, cfg.candidates_per_mode, task.max_program_envs)
    num_chunks = -(-cfg.candidates_per_mode // n)
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    window_hi = max(hi for _, hi in task.injection_windows.values())

    @jax.jit
    def candidates(key, mode, lo, hi):
        k_reset, k_t, k_inj, k_test = jax.random.split(key, 4)
        state = jax.vmap(env.reset)(jax.random.split(k_reset, n))
        t_inject = jax.random.randint(k_t, (n,), lo, hi + 1)

        def body(carry, t):
            s, snap = carry
            snap = jax.tree.map(lambda a, b: jnp.where((t == t_inject).reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                                s.pipeline_state, snap)
            s = jax.vmap(env.step)(s, base(s.obs))
            return (s, snap), None

        (_, snap), _ = jax.lax.scan(body, (state, state.pipeline_state), jnp.arange(window_hi + 1))
        injected = jax.vmap(task.inject, in_axes=(None, 0, None, 0))(env.sys, snap, mode, jax.random.split(k_inj, n))
        label, stage = jax.vmap(task.label)(priv_fn(env.sys, injected))
        start = jax.vmap(env.state_from_data)(injected, jax.random.split(k_test, n))
        result = rollout_success(env, lambda obs, priv, k: base(obs), start, cfg.test_steps, k_test)
        base_ok = result["success"]
        for trial in range(cfg.robust_trials):
            k_dr = jax.random.fold_in(k_test, trial + 1)
            base_ok = base_ok | _base_succeeds_randomized(env, base, injected, cfg.test_steps, cfg.start_noise, k_dr)
        finite = jnp.all(jnp.isfinite(injected.qpos), axis=-1)
        fields = {name: getattr(injected, name) for name in STATE_FIELDS}
        return fields, start.obs, label, stage, base_ok, finite, t_inject

    rng = np.random.default_rng(cfg.seed)
    chunks, stats = [], {}
    for m, mode in enumerate(task.failure_modes):
        lo, hi = task.injection_windows[mode]
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), m)
        parts, kept = [], 0
        # Fixed chunks first; then, for a held-out target, more chunks until the split will hold it.
        while len(parts) < num_chunks or (
            int(round(kept * cfg.heldout_fraction)) < cfg.min_heldout_per_mode and n * len(parts) < cfg.max_candidates_per_mode
        ):
            part = jax.device_get(candidates(jax.random.fold_in(key, len(parts)), m, lo, hi))
            parts.append(part)
            kept += int(np.sum((part[2] == m) & part[5] & ~part[4]))
            if len(parts) >= num_chunks and cfg.min_heldout_per_mode:
                log(f"failure bank: {mode}: {n * len(parts)} injected, {kept} base failures kept so far "
                    f"(held-out target {cfg.min_heldout_per_mode})")
        fields = {name: np.concatenate([p[0][name] for p in parts]) for name in STATE_FIELDS}
        obs, label, stage, base_ok, finite, t_inject = (np.concatenate([p[i] for p in parts]) for i in range(1, 7))
        total = n * len(parts)
        matched = (label == m) & finite
        keep = matched & ~base_ok
        stats[mode] = {
            "candidates": int(total),
            "label_matches_injector": int(matched.sum()),
            "base_recovers_by_itself": int((matched & base_ok).sum()),
            "robust_trials": cfg.robust_trials,
            "kept_base_failures": int(keep.sum()),
            "heldout_target_met": bool(int(round(keep.sum() * cfg.heldout_fraction)) >= cfg.min_heldout_per_mode),
            "label_histogram": {("none" if k < 0 else task.failure_modes[k]): int(np.sum(label == k)) for k in np.unique(label)},
        }
        log(f"failure bank: {mode}: {total} injected, {matched.sum()} labelled {mode}, base recovers from "
            f"{(matched & base_ok).sum()} of those, kept {keep.sum()} base failures")
        idx = np.flatnonzero(keep)
        split = np.zeros(len(idx), np.int32)
        heldout = rng.permutation(len(idx))[: int(round(len(idx) * cfg.heldout_fraction))]
        split[heldout] = 1
        chunk = {name: fields[name][idx] for name in STATE_FIELDS}
        chunk.update(obs=obs[idx], mode=np.full(len(idx), m, np.int32), stage=stage[idx].astype(np.int32),
                     split=split, t_inject=t_inject[idx].astype(np.int32))
        chunks.append(chunk)
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    meta = {"seed": cfg.seed, "config": cfg.model_dump(), "base_policy": base.name, "collection": stats,
            "versions": package_versions(), "host_cpu": host_cpu()}
    return FailureBank(task.name, tuple(task.failure_modes), tuple(task.recovery_stages), arrays, meta)


def _base_succeeds_randomized(env: TaskEnv, base: BasePolicy, data, num_steps: int, jitter: float, rng: jax.Array) -> jnp.ndarray:
    """Per state: does the base policy succeed from it on its own randomized model with a jittered gripper?"""
    n = data.qpos.shape[0]
    k_models, k_noise = jax.random.split(rng)
    models, in_axes = batched_models(env.sys, k_models, n, DomainRandomization())
    arm_xyz = jnp.array(env.task.gripper.arm_qpos[:3])

    def one(model, d, key):
        with using_model(env, model):
            noise = jax.random.uniform(key, (3,), minval=-jitter, maxval=jitter)
            d = mjx.forward(env.sys, d.replace(qpos=d.qpos.at[arm_xyz].add(noise)))
            return run_until_success(env, env.state_from_data(d, key), base, num_steps)

    return jax.vmap(one, in_axes=(in_axes, 0, 0))(models, data, jax.random.split(k_noise, n))

"""Start states along the scripted expert's recovery from each training failure state.

Why: from a failure state a residual must string together a long sequence of corrections (re-reach,
regrasp, lift, carry, place) before the sparse success term pays anything, and PPO's Gaussian exploration
rarely finds the whole sequence at the CPU budget (the expert-guided residual shows the authority is
there; see `evaluation.authority`). Starting some training episodes part-way along a successful recovery
(the "uniform backplay" / reverse-curriculum idea: Florensa et al. 2017, Resnick et al. 2018) lets the
residual first learn the last corrections, whose returns the critic then carries back to earlier states.

What is used: only *states*. The scripted expert drives the nominal model from each TRAIN failure state;
every `stride` steps before it succeeds, the state is kept, labelled with the failure mode of the state
it came from (so the mode's policy and reward mask train on it). No expert action is ever a training
target, and evaluation still starts from held-out failure states only. Paths on which the expert does
not succeed within `horizon` steps are dropped (they would teach nothing about a recovery).

Written here, not taken from a library: brax / optax have no start-state curricula, and the states come
from this project's tasks and failure bank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.failures.bank import STATE_FIELDS, FailureBank, bank_state_data
from recovla_jax.sim.env import TaskEnv
from recovla_jax.tasks.base import Task


def expert_path_bank(task: Task, bank: FailureBank, horizon: int, stride: int = 10,
                     log: Callable[[str], None] = print) -> FailureBank:
    """States every `stride` steps along the expert's successful recoveries from the TRAIN states of `bank`
    (success within `horizon` steps, rounded down to a multiple of `stride`).

    Returns a FailureBank (split 0 = train) with the extra arrays `path_step` (steps the expert had driven)
    and `origin` (index of the source state in `bank`); `meta["expert"]` holds per-mode expert success.
    """
    if stride < 1 or horizon < stride:
        raise ValueError(f"need 1 <= stride <= horizon, got stride {stride}, horizon {horizon}")
    source = np.flatnonzero(bank.arrays["split"] == 0)
    if source.size == 0:
        raise ValueError("the failure bank has no train states to start expert paths from")
    env = TaskEnv(task)
    n = int(min(task.max_program_envs, 128))
    snaps = horizon // stride
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    step_fn = jax.vmap(env.step)

    @jax.jit
    def paths(fields: dict[str, jnp.ndarray]):
        data = jax.vmap(lambda f: bank_state_data(task, env.sys, f))(fields)
        state = jax.vmap(env.state_from_data)(data, jax.random.split(jax.random.PRNGKey(0), n))

        def inner(carry, t):
            s, done, first = carry
            # No freezing at success: only states before the first success are kept.
            nxt = step_fn(s, jax.vmap(task.expert_action)(priv_fn(env.sys, s.pipeline_state)))
            now = nxt.metrics["success"] > 0
            first = jnp.where(now & ~done, t + 1, first)
            return (nxt, done | now, first), None

        def outer(carry, j):
            snap = {k: getattr(carry[0].pipeline_state, k) for k in STATE_FIELDS}
            carry, _ = jax.lax.scan(inner, carry, j * stride + jnp.arange(stride))
            return carry, snap

        init = (state, jnp.zeros(n, bool), jnp.full(n, -1))
        (_, _, first), snap = jax.lax.scan(outer, init, jnp.arange(snaps))
        return snap, first  # snap[k]: (snaps, n, ...)

    parts = []
    num_chunks = -(-source.size // n)
    for c, lo in enumerate(range(0, source.size, n)):
        log(f"expert paths: chunk {c + 1}/{num_chunks} ({n} train states x {horizon} steps"
            f"{'; the first call compiles' if c == 0 else ''})")
        idx = source[lo:lo + n]
        pad = np.concatenate([idx, np.full(n - idx.size, idx[0])])
        snap, first = jax.device_get(paths({k: jnp.asarray(bank.arrays[k][pad]) for k in STATE_FIELDS}))
        parts.append((idx, {k: v[:, :idx.size] for k, v in snap.items()}, first[:idx.size]))

    rows: dict[str, list] = {k: [] for k in (*STATE_FIELDS, "mode", "path_step", "origin")}
    expert: dict[str, dict] = {}
    for idx, snap, first in parts:
        for j in range(1, snaps):  # j = 0 is the failure state itself, already in the bank
            keep = (first > 0) & (j * stride < first)
            for k in STATE_FIELDS:
                rows[k].append(snap[k][j][keep])
            rows["mode"].append(bank.arrays["mode"][idx][keep])
            rows["path_step"].append(np.full(int(keep.sum()), j * stride, np.int32))
            rows["origin"].append(idx[keep])
    firsts = np.concatenate([p[2] for p in parts])
    modes_of_source = bank.arrays["mode"][np.concatenate([p[0] for p in parts])]
    for m, name in enumerate(bank.modes):
        sel = modes_of_source == m
        if sel.any():
            ok = firsts[sel] > 0
            expert[name] = {"train_states": int(sel.sum()), "expert_success": float(ok.mean()),
                            "median_steps": float(np.median(firsts[sel][ok])) if ok.any() else None}
    arrays = {k: np.concatenate(v) for k, v in rows.items()}
    arrays["mode"] = arrays["mode"].astype(np.int32)
    arrays["split"] = np.zeros(len(arrays["mode"]), np.int32)
    meta = {"source": "scripted expert from train failure states, nominal model", "horizon": horizon, "stride": stride,
            "expert": expert}
    for name, e in expert.items():
        log(f"expert paths: {name}: expert recovers {e['expert_success']:.1%} of {e['train_states']} train states "
            f"(median {e['median_steps']} steps); {int(np.sum(arrays['mode'] == bank.modes.index(name)))} path states kept")
    return FailureBank(bank.task, bank.modes, bank.stages, arrays, meta)


def mixed_starts(train: FailureBank, paths: FailureBank | None, path_fraction: float) -> tuple[FailureBank, np.ndarray | None]:
    """Train states plus path states of the same modes, with per-state start probabilities such that a
    share `path_fraction` of episodes starts on a path state (None: uniform over `train`, paths unused)."""
    if not 0.0 <= path_fraction < 1.0:
        raise ValueError(f"the share of episodes started on expert-path states must be in [0, 1), got {path_fraction}")
    if paths is None or path_fraction == 0.0:
        return train, None
    modes = np.unique(train.arrays["mode"])
    keep = np.isin(paths.arrays["mode"], modes)
    if not keep.any():
        return train, None
    shared = [k for k in train.arrays if k in paths.arrays]
    arrays = {k: np.concatenate([train.arrays[k], paths.arrays[k][keep]]) for k in shared}
    n_train, n_path = len(train), int(keep.sum())
    weights = np.concatenate([np.full(n_train, (1.0 - path_fraction) / n_train), np.full(n_path, path_fraction / n_path)])
    return FailureBank(train.task, train.modes, train.stages, arrays, train.meta), weights


def load_or_build(directory: Path, task: Task, bank: FailureBank, horizon: int, stride: int,
                  log: Callable[[str], None] = print) -> FailureBank:
    """The run's expert-path bank: read from `directory` if it was built with the same horizon and stride."""
    directory = Path(directory)
    if (directory / "bank.npz").exists():
        cached = FailureBank.load(directory)
        if cached.meta.get("horizon") == horizon and cached.meta.get("stride") == stride:
            return cached
    paths = expert_path_bank(task, bank, horizon, stride, log)
    paths.save(directory)
    return paths

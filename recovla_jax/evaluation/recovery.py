"""Recovery evaluation on held-out failure states: base alone vs. base + residual, same conditions.

Each held-out state is started once (gripper jittered by the env's start noise) under its own
domain-randomized model drawn with a seed disjoint from training's. The base-alone arm is the same
program with a zero residual, so the only difference between arms is the residual policy.

A state's draws (model and start jitter) are keyed by `state_ids`, its row in the failure bank, so a state
is evaluated under the same conditions whichever other states (modes) the env holds: keyed by position in
the env instead (`state_ids=None`, every run before session 17), peg_insert's jammed_halfway cell measured
the base alone at 8.8% in a three-mode run and 16.2% in a one-mode run on the same states.

One compiled program serves every failure mode and both arms: the env holds all held-out states, the
policy's parameters are an argument (not a constant baked into the program), and each call evaluates
a fixed-size block of start indices (padding is discarded). On CPU this turns six one-minute compiles
into one.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.evaluation.paired import PER_STATE_KEY, encode_outcomes
from recovla_jax.evaluation.rollout import run_until_success
from recovla_jax.evaluation.stats import wilson
from recovla_jax.sim.randomization import RANDOMIZED_FIELDS, DomainRandomization, batched_models, randomize_model
from recovla_jax.sim.wrappers import using_model
from recovla_jax.training.residual_env import ResidualEnv

# policy_apply(params, obs) -> raw residual (before tanh); params=None means "base alone".
PolicyApply = Callable[[Any, jnp.ndarray], jnp.ndarray]
# A run's `eval_conditions["state_keys"]` when its evaluation keyed each state by its bank row.
STATE_KEYS = "bank_row"


def evaluation_keys(rows: np.ndarray, conditions: dict | None = None) -> np.ndarray | None:
    """`RecoveryEvaluator`'s `state_ids` for an env built from the bank `rows` (`FailureBank.rows_of`): the rows
    themselves, or None (keys by position) where `conditions`, a run's recorded eval_conditions, predate per-state
    keys, so an older run's cells are re-evaluated under the draws they were measured with."""
    if conditions is not None and conditions.get("state_keys") != STATE_KEYS:
        return None
    return np.asarray(rows)


@partial(jax.jit, static_argnames="randomization")
def _fields_by_id(sys: Any, key: jax.Array, ids: jnp.ndarray, randomization: DomainRandomization) -> dict:
    """The randomized model fields of each state, drawn from `key` folded with the state's id."""
    def draw(i):
        model = randomize_model(sys, jax.random.fold_in(key, i), randomization)
        return {f: getattr(model, f) for f in RANDOMIZED_FIELDS}

    return jax.vmap(draw)(ids)


class RecoveryEvaluator:
    """Success of (base + residual) from chosen start states of `env`, one compiled program for all calls."""

    def __init__(self, env: ResidualEnv, policy_apply: PolicyApply, num_steps: int, seed: int,
                 randomization: DomainRandomization | None, block: int = 64, state_ids: np.ndarray | None = None):
        self.env, self.num_steps, self.block = env, num_steps, block
        n = env.num_starts
        if state_ids is not None and np.shape(state_ids) != (n,):
            raise ValueError(f"state_ids must hold one id per start of the env ({n}), got shape {np.shape(state_ids)}")
        self.state_ids = None if state_ids is None else jnp.asarray(state_ids, jnp.int32)
        k_models, self.k_starts = jax.random.split(jax.random.PRNGKey(seed))
        # One randomized model per *start state*, so both arms (and any policy) see the same dynamics.
        if randomization is None:
            self.models, self.in_axes = None, None
        elif self.state_ids is None:
            self.models, self.in_axes = batched_models(env.sys, k_models, n, randomization)
        else:  # each state's model drawn by its id; batched_models, asked for one draw, gives the vmap layout
            _, self.in_axes = batched_models(env.sys, k_models, 1, randomization)
            self.models = env.sys.tree_replace(_fields_by_id(env.sys, k_models, self.state_ids, randomization))

        def one(model, index, key, params, use_residual):
            with using_model(env, model) as e:
                state = e.reset_to(index, key)
                return run_until_success(e, state, lambda obs: policy_apply(params, obs) * use_residual, num_steps)

        def run(params, indices, use_residual):
            keys = self.start_keys(indices)
            if self.models is None:
                return jax.vmap(lambda i, k: one(env.sys, i, k, params, use_residual))(indices, keys)
            models = self.models.tree_replace({f: getattr(self.models, f)[indices] for f in RANDOMIZED_FIELDS})
            return jax.vmap(one, in_axes=(self.in_axes, 0, 0, None, None))(models, indices, keys, params, use_residual)

        self._run = jax.jit(run)

    def start_keys(self, indices: jnp.ndarray) -> jax.Array:
        """Each start's episode key (start jitter, observation noise, latency), by its state id or position."""
        ids = indices if self.state_ids is None else self.state_ids[indices]
        return jax.vmap(lambda i: jax.random.fold_in(self.k_starts, i))(ids)

    def outcomes(self, params: Any, indices: np.ndarray, use_residual: bool = True) -> np.ndarray:
        """Per start index: did the episode reach success? `use_residual=False` runs the base policy alone
        (same program, residual multiplied by 0)."""
        indices = np.asarray(indices, np.int32)
        use = jnp.float32(1.0 if use_residual else 0.0)
        out = []
        for start in range(0, len(indices), self.block):
            chunk = indices[start:start + self.block]
            padded = np.concatenate([chunk, np.full(self.block - len(chunk), chunk[0], np.int32)])
            out.append(np.asarray(self._run(params, jnp.asarray(padded), use))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros(0, bool)

    def episode_fingerprint(self, indices: np.ndarray) -> str:
        """A short hash of everything that fixes the episodes from `indices` except the policy: the start states,
        each start's episode key and randomized model, the noise, latency, jitter and episode length. Two cells
        with the same fingerprint ran the same episodes, so the report may compare them state by state."""
        idx = np.asarray(indices, np.int32)
        h = hashlib.sha256()
        for k in sorted(self.env.starts):
            h.update(np.asarray(self.env.starts[k])[idx].tobytes())
        h.update(np.asarray(self.start_keys(jnp.asarray(idx))).tobytes())
        if self.models is not None:
            for f in RANDOMIZED_FIELDS:
                h.update(np.asarray(getattr(self.models, f))[idx].tobytes())
        conditions = (self.env.obs_noise, self.env.latency_prob, self.env.start_noise, self.num_steps)
        h.update(repr(conditions).encode())
        return h.hexdigest()[:16]

    def success(self, params: Any, indices: np.ndarray, use_residual: bool = True) -> dict:
        """Wilson cell of the starts `indices`, with each start's outcome and the episodes' fingerprint
        (`paired.PER_STATE_KEY`) for paired comparisons between methods."""
        ok = self.outcomes(params, indices, use_residual)
        cell = wilson(int(ok.sum()), int(ok.size)).as_dict()
        cell[PER_STATE_KEY] = {"success": encode_outcomes(ok), "episodes": self.episode_fingerprint(indices)}
        return cell

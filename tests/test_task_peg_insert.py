"""peg_insert: shapes, determinism, expert success, injectors vs labels, reward ranges, JAX labels vs NumPy rules.

Everything that steps MJX goes through one compiled program (`episodes`: reset, expert rollout, an optional
injection at a given step, labels and reward terms recorded), so the module compiles one MJX program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recovla_jax.runtime import peg_insert_rules as rules
from recovla_jax.sim.gripper import ACTION_SIZE

N = 16  # envs per call


@pytest.fixture(scope="module")
def task():
    from recovla_jax.tasks import get_task

    return get_task("peg_insert")


@pytest.fixture(scope="module")
def episodes(task):
    """run(key, mode, t_inject) -> host arrays; mode -1 never injects. Compiled once for the module."""
    from recovla_jax.sim.env import TaskEnv

    env = TaskEnv(task)
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    inject = jax.vmap(task.inject, in_axes=(None, 0, None, 0))
    observe = jax.vmap(task.observe, in_axes=(None, 0))
    terms_fn = jax.vmap(task.reward_terms, in_axes=(None, 0, 0, 0))
    length = task.config.episode_length

    @jax.jit
    def run(key, mode, t_inject):
        k_reset, k_inj = jax.random.split(key)
        start = jax.vmap(env.reset)(jax.random.split(k_reset, N))

        def body(s, t):
            d = s.pipeline_state
            fire = (t == t_inject) & (mode >= 0)
            injected = inject(env.sys, d, jnp.maximum(mode, 0), jax.random.split(jax.random.fold_in(k_inj, t), N))
            d = jax.tree.map(lambda a, b: jnp.where(fire, a, b), injected, d)
            s = s.replace(pipeline_state=d, obs=jnp.where(fire, observe(env.sys, d), s.obs))
            priv = priv_fn(env.sys, d)
            label, stage = jax.vmap(task.label)(priv)
            action = jax.vmap(task.expert_action)(priv)
            nxt = jax.vmap(env.step)(s, action)
            terms = terms_fn(env.sys, d, nxt.pipeline_state, action)
            peg_speed = jnp.linalg.norm(nxt.pipeline_state.qvel[:, task.peg_qvel:task.peg_qvel + 3], axis=-1)
            record = {"obs": s.obs, "label": label, "stage": stage, "action": action, "terms": terms,
                      "success": nxt.metrics["success"], "nan": nxt.metrics["nan_reset"], "peg_speed": peg_speed}
            return nxt, record

        final, rec = jax.lax.scan(body, start, jnp.arange(length))
        return {"final_obs": final.obs, "final_reward": final.reward, "final_done": final.done, **rec}

    def call(seed: int, mode: int = -1, t_inject: int = -1) -> dict:
        return jax.device_get(run(jax.random.PRNGKey(seed), jnp.int32(mode), jnp.int32(t_inject)))

    return call


@pytest.fixture(scope="module")
def nominal(episodes):
    return episodes(0)


@pytest.fixture(scope="module")
def injected(task, episodes):
    """mode name -> (run record, injection step) with the injection in the middle of the mode's window."""
    out = {}
    for m, mode in enumerate(task.failure_modes):
        lo, hi = task.injection_windows[mode]
        t = (lo + hi) // 2
        out[mode] = (episodes(10 + m, m, t), t)
    return out


def test_obs_layout_matches_numpy_rules(task):
    layout = {f["name"]: slice(f["start"], f["start"] + f["size"]) for f in task.obs_layout()}
    assert layout == rules.OBS and task.observation_size == rules.OBS_SIZE
    assert task.failure_modes == rules.FAILURE_MODES and task.recovery_stages == rules.RECOVERY_STAGES
    assert task.progress_spec()["field"] == "insertion_depth"


def test_shapes_and_dtypes(task, nominal):
    length = task.config.episode_length
    assert nominal["obs"].shape == (length, N, task.observation_size) and nominal["obs"].dtype == np.float32
    assert nominal["final_obs"].shape == (N, task.observation_size) and nominal["final_obs"].dtype == np.float32
    assert nominal["final_reward"].shape == (N,) and nominal["final_done"].shape == (N,)
    assert nominal["action"].shape == (length, N, ACTION_SIZE)
    assert np.all(np.isfinite(nominal["obs"])) and np.all(np.abs(nominal["action"]) <= 1.0)


def test_reset_is_seeded_and_randomized(episodes, nominal):
    again = episodes(0)
    np.testing.assert_array_equal(again["obs"], nominal["obs"])  # the whole trajectory, bit for bit
    other = episodes(1)
    assert not np.allclose(other["obs"][0], nominal["obs"][0])
    hole = nominal["obs"][0][:, rules.OBS["hole_pos"]]
    assert np.std(hole[:, :2], axis=0).min() > 0.01  # fixture positions differ across envs
    # every episode starts held, upright and out of the hole
    assert np.all(nominal["obs"][0][:, rules.OBS["insertion_depth"]] == 0.0)
    assert np.all(nominal["label"][0] == -1)


def test_expert_inserts_the_peg(nominal):
    ok = nominal["success"].max(axis=0) > 0
    assert ok.mean() >= 15 / 16, f"expert nominal success {ok.mean():.0%}"
    first = nominal["success"].argmax(axis=0)
    depth = nominal["obs"][first, np.arange(N), rules.OBS["insertion_depth"].start]
    assert np.all(depth[ok] >= 0.0)


def test_contacts_are_stable(nominal, injected):
    """Box-box contacts at 5 ms: no NaN resets, no peg flung or pushed through a wall."""
    for rec in [nominal] + [r for r, _ in injected.values()]:
        assert rec["nan"].sum() == 0
        assert rec["peg_speed"].max() < 1.5  # m/s; the gripper itself moves at most 0.75 m/s
        tip = rec["obs"][:, :, rules.OBS["tip_in_hole"]]
        # the tip is never below the hole's bottom (the table) by more than a contact's penetration
        assert tip[..., 2].min() > -rules.HOLE_DEPTH - 0.002
        # and never deep below the rim outside the opening (that would be a peg passing through a wall)
        outside = np.max(np.abs(tip[..., :2]), axis=-1) > rules.HOLE_HALF_WIDTH
        near = np.max(np.abs(tip[..., :2]), axis=-1) < rules.FIXTURE_HALF_WIDTH
        assert np.all(tip[..., 2][outside & near] > -0.003)


def test_nominal_states_are_not_labelled_failures(nominal):
    assert np.mean(nominal["label"] == -1) >= 0.97


def test_each_injector_yields_its_mode(task, injected):
    for m, mode in enumerate(task.failure_modes):
        rec, t = injected[mode]
        labels = rec["label"][t]
        assert np.mean(labels == m) >= 0.75, f"{mode}: labels right after injection {np.bincount(labels + 1)}"
        assert np.mean(rec["label"][:t] == -1) >= 0.97  # the nominal prefix is not a failure


def test_expert_recovers_from_injected_failures(task, injected):
    """The expert is reactive: it lifts, straightens or extracts and then inserts."""
    for mode, (rec, t) in injected.items():
        ok = rec["success"][t:].max(axis=0) > 0
        assert ok.mean() >= 0.5, f"expert recovers from {ok.mean():.0%} of {mode}"


def test_reward_components_stay_in_range(task, nominal, injected):
    for rec in [nominal] + [r for r, _ in injected.values()]:
        terms = rec["terms"]
        assert set(terms) == set(task.reward_component_descriptions)
        for name in task.potential_components:
            assert np.all((terms[name] >= 0.0) & (terms[name] <= 1.0)), name
        assert set(np.unique(terms["hold_peg"])) <= {0.0, 1.0}
        assert set(np.unique(terms["wedged"])) <= {-1.0, 0.0}
    assert injected["jammed_halfway"][0]["terms"]["wedged"].min() == -1.0
    assert nominal["terms"]["insert_depth"].max() == 1.0


def test_jax_labels_agree_with_numpy_rules(task, nominal, injected):
    obs, labels, stages = [], [], []
    for rec in [nominal] + [r for r, _ in injected.values()]:
        obs.append(rec["obs"].reshape(-1, task.observation_size))
        labels.append(rec["label"].reshape(-1))
        stages.append(rec["stage"].reshape(-1))
    obs, labels, stages = np.concatenate(obs), np.concatenate(labels), np.concatenate(stages)
    numpy_labels = np.array([rules.label(o, task.config.success_depth) for o in obs])
    assert np.mean(numpy_labels[:, 0] == labels) >= 0.98
    assert np.mean(numpy_labels[:, 1] == stages) >= 0.95
    failed = labels >= 0
    assert failed.sum() > 50
    named = [task.rules_classify(o)[0] for o in obs[failed]]
    assert np.mean(np.array([task.failure_modes.index(n) for n in named]) == labels[failed]) >= 0.98

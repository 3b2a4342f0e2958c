"""Stack task: shapes, determinism, expert success, injectors vs labels, reward ranges, JAX labels vs NumPy rules.

One jitted program (module fixture `expert_run`) rolls the expert out, injects every failure mode into its
states and computes labels and reward terms, so the MJX graph compiles once for most tests; hand-built
states are checked natively (no MJX compile).
"""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from recovla_jax.runtime import stack_rules
from recovla_jax.sim.gripper import ACTION_SIZE
from recovla_jax.sim.native import forward, mjx_view

N = 8  # envs of the shape/determinism tests
N_EXPERT = 16  # envs of the expert rollout
RECOVERABLE = 0.75  # least share of injected states the scripted expert must recover from, per mode


@pytest.fixture(scope="module")
def stack_task():
    from recovla_jax.tasks import get_task

    return get_task("stack")


@pytest.fixture(scope="module")
def stack_env(stack_task):
    from recovla_jax.sim.env import TaskEnv

    return TaskEnv(stack_task)


@pytest.fixture(scope="module")
def batch_fns(stack_env):
    return jax.jit(jax.vmap(stack_env.reset)), jax.jit(jax.vmap(stack_env.step))


@pytest.fixture(scope="module")
def expert_run(stack_task, stack_env):
    """Expert rollout of N_EXPERT envs: success, steps, reward-term ranges, and every mode injected into the
    expert's state at the middle of that mode's injection window (labels, stages, observations, and the
    expert's steps to recover from it: -1 when it does not within the episode)."""
    from recovla_jax.evaluation.rollout import rollout_success
    from recovla_jax.rewards.library import reward_terms

    task, env = stack_task, stack_env
    length = task.config.episode_length
    priv_fn = jax.vmap(task.privileged, in_axes=(None, 0))
    mids = jnp.array([(lo + hi) // 2 for lo, hi in (task.injection_windows[m] for m in task.failure_modes)])

    @jax.jit
    def run(key):
        state = jax.vmap(env.reset)(jax.random.split(key, N_EXPERT))
        terms0 = jax.vmap(lambda d: reward_terms(task, env.sys, d, d, jnp.zeros(ACTION_SIZE), {}))(state.pipeline_state)
        lo0 = {k: jnp.min(v) for k, v in terms0.items()}
        hi0 = {k: jnp.max(v) for k, v in terms0.items()}
        snaps0 = jax.tree.map(lambda x: jnp.stack([x] * len(mids)), state.pipeline_state)

        def body(carry, t):
            s, done, first, lo, hi, snaps = carry
            snaps = jax.tree.map(lambda a, b: jnp.where((mids == t).reshape((-1,) + (1,) * a.ndim), a[None], b),
                                 s.pipeline_state, snaps)
            action = jax.vmap(task.expert_action)(priv_fn(env.sys, s.pipeline_state))
            nxt = jax.vmap(env.step)(s, action)
            terms = jax.vmap(lambda p, d, a: task.reward_terms(env.sys, p, d, a))(s.pipeline_state, nxt.pipeline_state, action)
            lo = {k: jnp.minimum(lo[k], jnp.min(v)) for k, v in terms.items()}
            hi = {k: jnp.maximum(hi[k], jnp.max(v)) for k, v in terms.items()}
            nxt = jax.tree.map(lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), s, nxt)
            ok = nxt.metrics["success"] > 0
            first = jnp.where(ok & ~done, t + 1, first)
            return (nxt, done | ok, first, lo, hi, snaps), None

        lo0 = {k: v for k, v in lo0.items() if k in task.reward_component_descriptions}
        hi0 = {k: v for k, v in hi0.items() if k in task.reward_component_descriptions}
        init = (state, jnp.zeros(N_EXPERT, bool), jnp.full(N_EXPERT, -1), lo0, hi0, snaps0)
        (_, done, first, lo, hi, snaps), _ = jax.lax.scan(body, init, jnp.arange(length))
        keys = jax.random.split(jax.random.fold_in(key, 1), N_EXPERT)

        def inject_mode(m, snap):
            d = jax.vmap(task.inject, in_axes=(None, 0, None, 0))(env.sys, snap, m, keys)
            label, stage = jax.vmap(task.label)(priv_fn(env.sys, d))
            # can the scripted expert recover from it within one episode? (no mode unrecoverable by construction)
            start = jax.vmap(env.state_from_data)(d, keys)
            expert = lambda obs, priv, k: jax.vmap(task.expert_action)(priv)  # noqa: E731
            recovered = rollout_success(env, expert, start, length, jax.random.fold_in(key, 2))
            return label, stage, jax.vmap(task.observe, in_axes=(None, 0))(env.sys, d), recovered["steps_to_success"]

        injected = [inject_mode(m, jax.tree.map(lambda x: x[m], snaps)) for m in range(len(mids))]
        nominal_obs = jax.vmap(task.observe, in_axes=(None, 0))(env.sys, jax.tree.map(lambda x: x[0], snaps))
        nominal_label = jax.vmap(task.label)(priv_fn(env.sys, jax.tree.map(lambda x: x[0], snaps)))
        return done, first, lo, hi, injected, (nominal_label, nominal_obs)

    return jax.device_get(run(jax.random.PRNGKey(7)))


def test_registry_family_and_progress_spec(stack_task):
    from recovla_jax.tasks import task_names

    assert "stack" in task_names()
    assert stack_task.family == "long-horizon"
    spec = stack_task.progress_spec()
    assert spec["field"] == "stack_progress" and spec["success_threshold"] == 1.0


def test_observation_layout_matches_rules(stack_task):
    layout = stack_task.obs_layout()
    assert stack_task.observation_size == stack_rules.OBS_SIZE == 41
    for f in layout:
        assert stack_rules.OBS[f["name"]] == slice(f["start"], f["start"] + f["size"]), f["name"]
        assert f["description"]
    assert stack_task.failure_modes == stack_rules.FAILURE_MODES
    assert stack_task.recovery_stages == stack_rules.RECOVERY_STAGES


def test_reset_step_shapes_and_dtypes(batch_fns, stack_task):
    reset, step = batch_fns
    s = reset(jax.random.split(jax.random.PRNGKey(0), N))
    assert s.obs.shape == (N, stack_task.observation_size) and s.obs.dtype == jnp.float32
    s = step(s, jnp.zeros((N, ACTION_SIZE)))
    assert s.obs.shape == (N, stack_task.observation_size) and s.obs.dtype == jnp.float32
    assert s.reward.shape == (N,) and s.done.shape == (N,)
    assert np.all(np.isfinite(np.asarray(s.obs)))
    # nominal start: nothing stacked, blocks resting upright on the table
    obs = np.asarray(s.obs)
    assert np.all(obs[:, stack_rules.OBS["stack_progress"]] == 0.0)
    heights = obs[:, stack_rules.OBS["block_pos"]].reshape(N, 3, 3)[:, :, 2]
    np.testing.assert_allclose(heights, stack_rules.HALF, atol=2e-3)


def test_reset_is_randomized_and_seeded(batch_fns):
    reset, step = batch_fns
    a = reset(jax.random.split(jax.random.PRNGKey(1), N))
    b = reset(jax.random.split(jax.random.PRNGKey(1), N))
    c = reset(jax.random.split(jax.random.PRNGKey(2), N))
    np.testing.assert_array_equal(np.asarray(a.obs), np.asarray(b.obs))
    assert not np.allclose(np.asarray(a.obs), np.asarray(c.obs))
    assert np.std(np.asarray(a.obs)[:, [13, 14, 16, 17, 19, 20]], axis=0).min() > 1e-3  # block xy differ
    # same actions from the same seed: the same trajectory
    acts = jax.random.uniform(jax.random.PRNGKey(5), (4, N, ACTION_SIZE), minval=-1, maxval=1)
    for _ in range(2):
        s1, s2 = a, b
        for act in acts:
            s1, s2 = step(s1, act), step(s2, act)
        np.testing.assert_array_equal(np.asarray(s1.obs), np.asarray(s2.obs))


def test_scripted_expert_stacks(expert_run, stack_task):
    done, first = expert_run[0], expert_run[1]
    assert done.mean() >= 0.9, f"expert nominal success {done.mean():.2%} < 90% on {N_EXPERT} envs"
    # long-horizon: two pick-and-places take well over 100 steps, and fit the episode
    assert np.all(first[done] > 100) and np.all(first[done] <= stack_task.config.episode_length)


def test_each_injector_yields_its_labelled_mode(expert_run, stack_task):
    injected = expert_run[4]
    for m, mode in enumerate(stack_task.failure_modes):
        label = injected[m][0]
        assert np.mean(label == m) >= 0.5, f"{mode}: labels {np.bincount(label + 1)} (index 0 = none)"


def test_scripted_expert_recovers_every_mode_within_the_episode(expert_run, stack_task):
    """Every failure mode must be recoverable in one episode, or no policy could reach the target on it
    (wrong_order needs a blocking block cleared, then both picks: it needed the 300-step episode)."""
    injected = expert_run[4]
    for m, mode in enumerate(stack_task.failure_modes):
        labelled, first = injected[m][0] == m, injected[m][3]
        rate = np.mean(first[labelled] > 0)
        print(f"{mode}: expert recovers {rate:.0%} of {labelled.sum()} labelled states, steps {sorted(first[labelled].tolist())}")
        assert rate >= RECOVERABLE, f"{mode}: the expert recovers only {rate:.0%} within {stack_task.config.episode_length} steps"


def test_reward_components_stay_in_documented_ranges(expert_run, stack_task):
    lo, hi = expert_run[2], expert_run[3]
    assert set(lo) == set(stack_task.reward_component_descriptions)
    for name in stack_task.reward_component_descriptions:
        if name == "knock":
            assert -1.0 <= lo[name] <= hi[name] <= 0.0, name
        else:
            assert 0.0 <= lo[name] <= hi[name] <= 1.0 + 1e-6, (name, lo[name], hi[name])
    # the expert's rollout moves the progress potentials through their whole range
    assert lo["stack_progress"] == 0.0 and hi["stack_progress"] == 1.0
    assert hi["grasp_block"] == 1.0 and hi["place_block"] > 0.8


def test_labels_and_numpy_rules_agree(expert_run, stack_task):
    injected, (nominal_label, nominal_obs) = expert_run[4], expert_run[5]
    labels = np.concatenate([i[0] for i in injected] + [nominal_label[0]])
    stages = np.concatenate([i[1] for i in injected] + [nominal_label[1]])
    obs = np.concatenate([i[2] for i in injected] + [nominal_obs])
    rules = np.array([stack_rules.label(o) for o in obs])
    assert np.mean(rules[:, 0] == labels) >= 0.95, np.stack([labels, rules[:, 0]])
    assert np.mean(rules[:, 1] == stages) >= 0.9
    # rules_classify always names a failure mode and a stage
    mode, stage, reason = stack_task.rules_classify(obs[0])
    assert mode in stack_task.failure_modes and stage in stack_task.recovery_stages and reason


def test_oracle_masks_success_outweighs_potentials(stack_task):
    from recovla_jax.rewards.library import component_names

    names = set(component_names(stack_task))
    for mode in stack_task.failure_modes:
        mask = stack_task.oracle_masks[mode]
        assert set(mask) <= names
        potential = sum(w for k, w in mask.items() if k in stack_task.potential_components)
        assert mask["success"] > 2 * potential, mode


# ------------------------------------------------------------------------- hand-built states (native)
def _state(task, blocks, tcp_above=None, finger=0.04, yaw=0.0):
    """Native state: blocks (3x3 centres, upright, yaw 0) and the level gripper with its TCP at `tcp_above`."""
    m = task.mj_model
    d = mujoco.MjData(m)
    for i, name in enumerate(("block1", "block2", "block3")):
        a = m.jnt_qposadr[m.joint(name).id]
        d.qpos[a:a + 7] = [*blocks[i], 1.0, 0.0, 0.0, 0.0]
    tcp = np.asarray(tcp_above if tcp_above is not None else [0.0, 0.0, 0.3], float)
    body = tcp - np.array([np.cos(yaw), np.sin(yaw), 0.0]) * float(m.site("tcp").pos[0])
    for j, v in zip(("grip_x", "grip_y", "grip_z", "grip_yaw"), [*body, yaw]):
        d.qpos[m.jnt_qposadr[m.joint(j).id]] = v
    for j in ("finger_left", "finger_right"):
        d.qpos[m.jnt_qposadr[m.joint(j).id]] = finger
    forward(m, d)
    view = mjx_view(d)
    priv = task.privileged(m, view)
    return priv, np.asarray(task.observe(m, view))


H, B = stack_rules.HALF, stack_rules.BLOCK


@pytest.mark.parametrize(
    "blocks, tcp, finger, expect",
    [
        # finished stack, jaws open above it: success, no failure
        ([[0, 0, H], [0.003, 0, H + B], [0, 0.004, H + 2 * B]], [0, 0, H + 2 * B + 0.01], 0.04, -1),
        # blue on the red base, green still on the table: wrong order
        ([[0, 0, H], [0, 0.15, H], [0.004, 0, H + B]], [0.004, 0, H + B + 0.04], 0.04, 2),
        # green lies on the table 8 cm from the base: toppled
        ([[0, 0, H], [0.08, 0.0, H], [0, -0.15, H]], [0.0, 0.1, 0.2], 0.04, 0),
        # green rests on red 1.8 cm off centre, released: placed off centre
        ([[0, 0, H], [0.018, 0, H + B], [0, -0.15, H]], [0.018, 0, H + B + 0.04], 0.04, 1),
        # nominal start: nothing wrong
        ([[0, 0, H], [0, 0.15, H], [0, -0.15, H]], [0.05, 0, 0.2], 0.04, -1),
    ],
)
def test_hand_built_labels(stack_task, blocks, tcp, finger, expect):
    priv, obs = _state(stack_task, np.array(blocks, float), tcp, finger)
    label, _ = stack_task.label(priv)
    assert int(label) == expect
    assert stack_rules.label(obs)[0] == expect


def test_success_needs_the_jaws_released(stack_task):
    from recovla_jax.tasks.stack import _success

    blocks = np.array([[0, 0, H], [0, 0, H + B], [0, 0, H + 2 * B]], float)
    tcp = blocks[2] + np.array([0, 0, stack_rules.GRASP_DZ])
    held, obs_held = _state(stack_task, blocks, tcp, finger=0.025)  # jaws closed on the blue block
    free, obs_free = _state(stack_task, blocks, tcp, finger=0.04)
    assert bool(held["held"][2]) and float(held["progress"]) == 1.0
    assert not bool(_success(held)) and bool(_success(free))
    assert obs_held[stack_rules.OBS["stack_progress"]][0] == 1.0


def test_expert_keeps_clearing_a_wrongly_stacked_block_once_lifted():
    """Lifting blue off the red base ends `blocking`; the expert must still carry it to the clear spot."""
    from recovla_jax.runtime.stack_rules import BLOCK, HALF
    from recovla_jax.tasks.stack import CLEAR_DIST, _subgoal

    b = jnp.array([[0.0, 0.0, HALF], [0.1, 0.0, HALF], [0.0, 0.0, HALF + BLOCK + 0.03]])  # blue 3 cm above red
    carrying = {"block_pos": b, "blocking": jnp.array(False), "placed2": jnp.array(False),
                "held": jnp.array([False, False, True]), "next_block": jnp.array(1)}
    k, dest = _subgoal(carrying)
    assert int(k) == 2
    np.testing.assert_allclose(dest, [-CLEAR_DIST, 0.0, HALF], atol=1e-5)  # beyond red, away from green
    k, dest = _subgoal({**carrying, "held": jnp.array([False, False, False])})  # blue put down: green is next
    assert int(k) == 1
    np.testing.assert_allclose(dest, b[0] + jnp.array([0.0, 0.0, BLOCK]), atol=1e-5)

"""Failure bank collection/round-trip, and the residual env reproducing the base policy at init."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recovla_jax.failures.bank import STATE_FIELDS, BankConfig, FailureBank, collect_failure_bank
from recovla_jax.rewards.library import component_names
from recovla_jax.training.ppo import PPOConfig, PPOTrainer
from recovla_jax.training.residual_env import ResidualEnv


def _bank_from_resets(task, env, n=8):
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(3), n))
    arrays = {k: np.asarray(getattr(states.pipeline_state, k)) for k in STATE_FIELDS}
    arrays.update(obs=np.asarray(states.obs), mode=np.arange(n, dtype=np.int32) % 3, stage=np.zeros(n, np.int32),
                  split=(np.arange(n) % 2).astype(np.int32), t_inject=np.zeros(n, np.int32))
    return FailureBank(task.name, task.failure_modes, task.recovery_stages, arrays, {"seed": 3})


def test_bank_save_load_round_trip(tmp_path, drawer_task, drawer_env):
    bank = _bank_from_resets(drawer_task, drawer_env)
    bank.save(tmp_path / "bank")
    again = FailureBank.load(tmp_path / "bank")
    assert again.modes == bank.modes and again.counts() == bank.counts()
    for k in bank.arrays:
        np.testing.assert_array_equal(again.arrays[k], bank.arrays[k])
    assert bank.counts()["missed_handle"] == {"train": 2, "heldout": 1}
    assert len(bank.select("slipped_off", "heldout")) == 2
    # rows_of: mode after mode, in the order asked; take keeps that order (one array = an env's starts and their keys)
    rows = bank.rows_of(["slipped_off", "missed_handle"], "heldout")
    assert list(rows) == list(bank.rows("slipped_off", "heldout")) + list(bank.rows("missed_handle", "heldout"))
    taken = bank.take(rows)
    np.testing.assert_array_equal(taken.arrays["qpos"], bank.arrays["qpos"][rows])
    assert list(taken.arrays["mode"]) == [1, 1, 0]
    assert len(bank.rows_of([], "train")) == 0
    assert FailureBank.load(tmp_path / "bank", drawer_task).modes == drawer_task.failure_modes


def test_a_bank_of_other_modes_is_refused_for_a_task(tmp_path, drawer_task, drawer_env):
    """Mode labels are indices into the task's modes: a bank with reordered modes would train and score each mode on
    another's rewards and states, so loading it for the task fails and names both mode lists."""
    from recovla_jax.failures.bank import BankMismatchError

    bank = _bank_from_resets(drawer_task, drawer_env)
    reordered = tuple(reversed(drawer_task.failure_modes))
    FailureBank(bank.task, reordered, bank.stages, bank.arrays, bank.meta).save(tmp_path / "reordered")
    with pytest.raises(BankMismatchError, match="has modes"):
        FailureBank.load(tmp_path / "reordered", drawer_task)
    FailureBank("stack", bank.modes, bank.stages, bank.arrays, bank.meta).save(tmp_path / "other_task")
    with pytest.raises(BankMismatchError, match="'stack'"):
        FailureBank.load(tmp_path / "other_task", drawer_task)
    assert FailureBank.load(tmp_path / "reordered").modes == reordered  # without a task: loaded as saved


def test_collected_failures_are_labelled_base_failures(drawer_task, drawer_base_policy):
    cfg = BankConfig(candidates_per_mode=32, test_steps=60, min_heldout_per_mode=2, max_candidates_per_mode=96)
    bank = collect_failure_bank(drawer_task, drawer_base_policy, cfg)
    stats = bank.meta["collection"]
    counts = bank.counts()
    for m, mode in enumerate(drawer_task.failure_modes):
        s = stats[mode]
        assert sum(s["label_histogram"].values()) == s["candidates"]
        # whole chunks of 32, more of them only while the held-out target is unmet, never past the cap
        assert s["candidates"] in (32, 64, 96)
        assert counts[mode]["heldout"] >= 2 or s["candidates"] == 96
        assert s["heldout_target_met"] == (counts[mode]["heldout"] >= 2)
        assert s["kept_base_failures"] == s["label_matches_injector"] - s["base_recovers_by_itself"]
        assert s["kept_base_failures"] == int(np.sum(bank.arrays["mode"] == m))
    # every kept state carries the label of its mode, computed from simulator state
    priv = jax.vmap(drawer_task.privileged, in_axes=(None, 0))
    assert len(bank) > 0
    from mujoco import mjx

    model = mjx.put_model(drawer_task.mj_model)
    data = jax.vmap(lambda q, v, mp, mq, c: mjx.forward(model, drawer_task.data_template.replace(
        qpos=q, qvel=v, mocap_pos=mp, mocap_quat=mq, ctrl=c)))(*(jnp.asarray(bank.arrays[k]) for k in STATE_FIELDS))
    labels, _ = jax.vmap(drawer_task.label)(priv(model, data))
    np.testing.assert_array_equal(np.asarray(labels), bank.arrays["mode"])


@pytest.fixture(scope="module")
def residual_setup(drawer_task, drawer_env, drawer_base_policy):
    """A residual env over reset states and a PPO trainer initialised on it (compiled once)."""
    from recovla_jax.sim.wrappers import wrap_batched

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.ones((3, len(component_names(drawer_task))), np.float32)
    env = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, alpha=0.5, start_noise=0.0, obs_noise=0.0,
                      latency_prob=0.0)
    trainer = PPOTrainer(wrap_batched(env, 4, 10), PPOConfig(num_envs=4, unroll_length=2, num_minibatches=1, total_timesteps=8))
    return env, trainer, trainer.init(jax.random.PRNGKey(0))


def test_mjx_training_state_checkpoint_round_trip(tmp_path, residual_setup):
    """MJX Data holds zero-size arrays that orbax cannot write; the whole training state still round-trips."""
    from recovla_jax.utils.checkpoint import CheckpointStore

    _, trainer, ts = residual_setup
    assert any(np.size(x) == 0 for x in jax.tree.leaves(ts.env_state))
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1, trainer.to_host(ts))
    step, host = store.restore(trainer.host_like())
    store.close()
    again = trainer.from_host(host)
    assert step == 1
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(ts)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_residual_at_init_reproduces_base_exactly(drawer_task, drawer_env, drawer_base_policy, residual_setup):
    env, trainer, ts = residual_setup
    actor = trainer.deterministic_actor(ts)
    state = jax.jit(env.reset_to)(jnp.asarray(1), jax.random.PRNGKey(0))
    residual = actor(state.obs[None])[0]
    assert float(jnp.abs(residual).max()) == 0.0
    executed, _ = env.executed_action(state.obs, residual)
    n_obs = drawer_task.observation_size
    # executed action == the base action the residual observes, bit for bit
    np.testing.assert_array_equal(np.asarray(executed), np.asarray(state.obs[n_obs : n_obs + 7]))
    # ... which is the base policy's output (up to XLA fusion differences between jit and eager)
    np.testing.assert_allclose(np.asarray(executed), np.asarray(drawer_base_policy(state.obs[:n_obs])), atol=1e-5)
    # one env step with the zero residual equals the plain task step with the base action
    nxt = jax.jit(env.step)(state, residual)
    plain = jax.jit(drawer_env.step)(drawer_env.state_from_data(state.pipeline_state, state.info["rng"]), executed)
    np.testing.assert_allclose(np.asarray(nxt.obs[:n_obs]), np.asarray(plain.obs), atol=1e-6)


def test_hand_back_residual_acts_only_while_the_failure_label_names_a_failure(drawer_task, drawer_env, drawer_base_policy):
    """With hand_back the residual reaches the robot only in states the task labels as failures; elsewhere the
    executed action is the base's bit for bit, and `residual_active` tells PPO which steps the residual drove."""
    resets = jax.jit(jax.vmap(drawer_env.reset))(jax.random.split(jax.random.PRNGKey(5), 4))
    misaligned = drawer_task.failure_modes.index("misaligned_gripper")
    injected = jax.jit(jax.vmap(lambda d, k: drawer_task.inject(drawer_env.sys, d, jnp.asarray(misaligned), k)))(
        resets.pipeline_state, jax.random.split(jax.random.PRNGKey(6), 4))
    labels, _ = jax.vmap(drawer_task.label)(jax.vmap(drawer_task.privileged, in_axes=(None, 0))(drawer_env.sys, injected))
    nominal_labels, _ = jax.vmap(drawer_task.label)(
        jax.vmap(drawer_task.privileged, in_axes=(None, 0))(drawer_env.sys, resets.pipeline_state))
    arrays = {k: np.concatenate([np.asarray(getattr(resets.pipeline_state, k)), np.asarray(getattr(injected, k))])
              for k in STATE_FIELDS}
    arrays.update(obs=np.zeros((8, drawer_task.observation_size), np.float32), mode=np.full(8, misaligned, np.int32),
                  stage=np.zeros(8, np.int32), split=np.zeros(8, np.int32), t_inject=np.zeros(8, np.int32))
    bank = FailureBank(drawer_task.name, drawer_task.failure_modes, drawer_task.recovery_stages, arrays, {})
    expected_active = np.concatenate([np.asarray(nominal_labels), np.asarray(labels)]) >= 0
    assert expected_active[4:].any() and not expected_active[:4].any(), (nominal_labels, labels)
    weights = np.ones((3, len(component_names(drawer_task))), np.float32)
    kw = dict(alpha=0.5, start_noise=0.0, obs_noise=0.0, latency_prob=0.0)
    env = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, hand_back=True, **kw)
    always = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, **kw)
    reset_to, step = jax.jit(env.reset_to), jax.jit(env.step)
    push = jnp.full(7, 3.0)
    for i in range(8):
        state = reset_to(jnp.asarray(i), jax.random.PRNGKey(0))
        assert float(state.info["residual_active"]) == float(expected_active[i])
        assert float(always._hand_back_info(state.pipeline_state, jnp.zeros((), jnp.int32))["residual_active"]) == 1.0
        pushed, idle = step(state, push), step(state, jnp.zeros(7))
        moved = not np.array_equal(np.asarray(pushed.pipeline_state.qpos), np.asarray(idle.pipeline_state.qpos))
        assert moved == bool(expected_active[i]), i
        assert float(jnp.abs(pushed.info["residual"]).max()) == (float(jnp.tanh(3.0)) if expected_active[i] else 0.0)
    # hand_back_delay: from a nominal state the residual keeps control for `delay` more steps, then hands back
    delayed = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, hand_back=True, hand_back_delay=2, **kw)
    state = jax.jit(delayed.reset_to)(jnp.asarray(0), jax.random.PRNGKey(0))
    step = jax.jit(delayed.step)
    seen = []
    for _ in range(4):
        seen.append((int(state.info["clear_steps"]), float(state.info["residual_active"])))
        state = step(state, jnp.zeros(7))  # the base drives a nominal start: no failure label appears
    assert seen == [(1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0)], seen
    with pytest.raises(ValueError, match="hand_back_delay must be >= 0"):
        ResidualEnv(drawer_task, drawer_base_policy, bank, weights, hand_back=True, hand_back_delay=-1, **kw)


def test_recovery_evaluator_is_per_state_deterministic_and_zero_residual_equals_base(drawer_task, residual_setup):
    """One compiled evaluation program: a state's outcome does not depend on its batch or padding (its model
    and noise key follow the state index), and a zero residual gives exactly the base-alone outcome."""
    from recovla_jax.evaluation.recovery import RecoveryEvaluator
    from recovla_jax.sim.randomization import DomainRandomization

    env, trainer, ts = residual_setup
    params = jax.device_get((ts.params, ts.normalizer))
    apply = lambda p, obs: trainer.policy_fn(p[0], p[1], obs, deterministic=True)  # noqa: E731
    ev = RecoveryEvaluator(env, apply, num_steps=70, seed=1, randomization=DomainRandomization(), block=4)
    idx = np.arange(env.num_starts)
    forward = ev.outcomes(params, idx)
    backward = ev.outcomes(params, idx[::-1])[::-1]
    np.testing.assert_array_equal(forward, backward)
    np.testing.assert_array_equal(ev.outcomes(params, idx, use_residual=False), forward)
    assert forward.any(), "the base policy should open the drawer from some nominal starts within 70 steps"
    # a cell keeps each state's outcome and a fingerprint of its episodes, which pairs it with other methods' cells
    cell = ev.success(params, idx)
    assert cell["successes"] == int(forward.sum()) and cell["per_state"]["success"] == "".join("1" if x else "0" for x in forward)
    assert ev.success(params, idx, use_residual=False)["per_state"]["episodes"] == cell["per_state"]["episodes"]
    same = RecoveryEvaluator(env, apply, num_steps=70, seed=1, randomization=DomainRandomization(), block=4)
    assert same.episode_fingerprint(idx) == cell["per_state"]["episodes"]
    other_seed = RecoveryEvaluator(env, apply, num_steps=70, seed=2, randomization=DomainRandomization(), block=4)
    assert other_seed.episode_fingerprint(idx) != cell["per_state"]["episodes"]  # other dynamics and noise draws
    assert ev.episode_fingerprint(idx[::-1]) != cell["per_state"]["episodes"]  # the same states in another order
    assert ev._run._cache_size() == 1


def test_expert_guided_residual_reaches_the_expert_within_its_authority(drawer_task, drawer_env, drawer_base_policy):
    from recovla_jax.evaluation.authority import expert_guided_raw, expert_guided_success

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    env = {a: ResidualEnv(drawer_task, drawer_base_policy, bank, weights, alpha=a, start_noise=0.0, obs_noise=0.0,
                          latency_prob=0.0) for a in (0.01, 2.0)}
    state = jax.jit(env[2.0].reset_to)(jnp.asarray(0), jax.random.PRNGKey(1))
    expert = drawer_task.expert_action(drawer_task.privileged(env[2.0].sys, state.pipeline_state))
    base = state.obs[env[2.0].task_obs_size:env[2.0].task_obs_size + 7]
    # scale 2 spans the whole action box: the executed action is the expert's own
    executed, _ = env[2.0].executed_action(state.obs, expert_guided_raw(env[2.0], state.obs, expert))
    np.testing.assert_allclose(executed, jnp.clip(expert, -1.0, 1.0), atol=1e-5)
    # a small scale moves the base action toward the expert's by at most alpha per entry (at a nominal start
    # the clone is within 0.05 of the expert, so the bound must be smaller than that to be tested)
    executed, _ = env[0.01].executed_action(state.obs, expert_guided_raw(env[0.01], state.obs, expert))
    np.testing.assert_allclose(executed, jnp.clip(base + jnp.clip(expert - base, -0.01, 0.01), -1.0, 1.0), atol=1e-5)
    assert float(jnp.max(jnp.abs(expert - base))) > 0.02  # the bound was active somewhere
    # from nominal starts the fully guided base is the scripted expert (>= 95% nominal): it succeeds
    ok = expert_guided_success(env[2.0], np.arange(len(bank)), steps=drawer_task.config.episode_length)
    assert ok.shape == (len(bank),) and ok.dtype == bool and ok.mean() >= 0.75


def test_expert_path_states_lie_on_the_experts_recovery_and_start_weights_pick_them(drawer_task, drawer_env, drawer_base_policy):
    from recovla_jax.failures.expert_paths import expert_path_bank, mixed_starts

    bank = _bank_from_resets(drawer_task, drawer_env)
    stride = 25
    paths = expert_path_bank(drawer_task, bank, horizon=drawer_task.config.episode_length, stride=stride, log=lambda _: None)
    assert len(paths) > 0 and set(paths.arrays["split"]) == {0}
    origin = paths.arrays["origin"]
    assert np.all(bank.arrays["split"][origin] == 0)  # only TRAIN states seed paths
    np.testing.assert_array_equal(paths.arrays["mode"], bank.arrays["mode"][origin])
    assert set(paths.arrays["path_step"]) <= {25, 50, 75}
    # the scripted expert opens the drawer from nominal starts: most paths succeed
    assert np.mean([e["expert_success"] for e in paths.meta["expert"].values()]) >= 0.75
    # independent replay: 25 expert steps from a source state reach the stored path state, not yet a success
    from recovla_jax.failures.bank import bank_state_data

    row = int(np.flatnonzero(paths.arrays["path_step"] == stride)[0])
    src = {k: jnp.asarray(bank.arrays[k][origin[row]]) for k in STATE_FIELDS}

    @jax.jit
    def replay(fields):
        state = drawer_env.state_from_data(bank_state_data(drawer_task, drawer_env.sys, fields), jax.random.PRNGKey(0))

        def body(s, _):
            return drawer_env.step(s, drawer_task.expert_action(drawer_task.privileged(drawer_env.sys, s.pipeline_state))), None

        return jax.lax.scan(body, state, None, length=stride)[0]

    end = replay(src)
    np.testing.assert_allclose(np.asarray(end.pipeline_state.qpos), paths.arrays["qpos"][row], atol=1e-4)
    assert float(jnp.max(jnp.abs(end.pipeline_state.qpos - src["qpos"]))) > 1e-3
    assert not bool(drawer_task.success(drawer_env.sys, end.pipeline_state))
    # mixing: the requested share of start probability sits on path states of the train bank's modes
    train = bank.select(split="train")
    starts, weights = mixed_starts(train, paths, 0.25)
    assert len(starts) == len(train) + len(paths) and np.isclose(weights.sum(), 1.0)
    assert np.isclose(weights[len(train):].sum(), 0.25)
    same, no_weights = mixed_starts(train, paths, 0.0)
    assert same is train and no_weights is None
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        mixed_starts(train, paths, 1.0)
    # ResidualEnv draws starts by those probabilities: all mass on one state -> every reset starts there
    comp = np.zeros((3, len(component_names(drawer_task))), np.float32)
    one_hot = np.zeros(len(starts))
    one_hot[len(train) + 1] = 1.0
    env = ResidualEnv(drawer_task, drawer_base_policy, starts, comp, start_noise=0.0, obs_noise=0.0, latency_prob=0.0,
                      start_weights=one_hot)
    resets = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(5), 16))
    np.testing.assert_allclose(np.asarray(resets.pipeline_state.qpos),
                               np.broadcast_to(starts.arrays["qpos"][len(train) + 1], (16, starts.arrays["qpos"].shape[1])),
                               atol=1e-6)
    with pytest.raises(ValueError, match="start_weights must be"):
        ResidualEnv(drawer_task, drawer_base_policy, starts, comp, start_weights=np.ones(3))


def test_discounted_returns_stop_at_each_episodes_terminal_step():
    from recovla_jax.training.expert_warm_start import _discounted_returns

    reward = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]], np.float32)  # time-major, 2 envs
    terminal = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    got = _discounted_returns(reward, terminal, gamma=0.5)
    # env 0 ends at step 1: the reward at step 2 (after its end) must not flow back into steps 0-1
    np.testing.assert_allclose(got[:, 0], [1.0, 0.0, 2.0])
    np.testing.assert_allclose(got[:, 1], [0.25, 0.5, 1.0])


def test_finetune_env_expert_target_executes_the_experts_action(drawer_task, drawer_env, drawer_base_policy):
    from recovla_jax.training.finetune_env import FinetuneEnv

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    env = FinetuneEnv(drawer_task, drawer_base_policy, bank, weights, start_noise=0.0, obs_noise=0.0, latency_prob=0.0)
    state = jax.jit(env.reset_to)(jnp.asarray(0), jax.random.PRNGKey(1))
    expert = drawer_task.expert_action(drawer_task.privileged(env.sys, state.pipeline_state))
    executed, residual = env.executed_action(state.obs, jnp.arctanh(env.expert_unit_target(state.obs, expert)))
    np.testing.assert_allclose(executed, jnp.clip(expert, -1.0, 1.0), atol=1e-5)
    assert float(jnp.max(jnp.abs(residual))) == 0.0


def test_expert_warm_start_imitates_the_expert_and_hands_ppo_a_fitted_state(drawer_task, drawer_env, drawer_base_policy):
    """DAgger rounds on nominal-start 'failure' states: the fitted residual must be much closer to the expert's
    corrections than the zero residual PPO would start from, the critic must move, PPO's exploration is set,
    and every reported count must add up."""
    from recovla_jax.training.expert_warm_start import WarmStartConfig, _rollout_fn, warm_start

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    weights[:, component_names(drawer_task).index("success")] = 10.0
    # From nominal starts the clone is within a few hundredths of the expert: a small scale makes the corrections
    # (expert - base) / alpha large enough that fitting them is measurable.
    env = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, alpha=0.05, obs_noise=0.0, latency_prob=0.0)
    from recovla_jax.sim.wrappers import wrap_batched

    steps = 40
    cfg = PPOConfig(num_envs=8, unroll_length=5, num_minibatches=2, total_timesteps=40, actor_hidden=(64, 64),
                    critic_hidden=(32, 32))
    trainer = PPOTrainer(wrap_batched(env, 8, steps), cfg)
    fresh = trainer.init(jax.random.PRNGKey(0))
    ws = WarmStartConfig(rounds=2, num_envs=16, steps=steps, fit_steps=1500, batch_size=256, learning_rate=3e-3,
                         log_std=-2.0)
    lines: list[str] = []
    ts, report = warm_start(trainer, fresh, env, ws, log=lines.append)

    # two rounds, the last fit's own rollouts, and the chosen fit sampled with PPO's initial noise (narrowed while it
    # loses over half of the fit's success)
    checks = report.noise_checks
    # (+ the fresh policy's rollouts, what PPO would start from without the warm start)
    assert report.env_steps == (4 + len(checks)) * 16 * steps and len(report.rounds) == 2
    assert 0.0 <= report.fresh_success_sampled <= 1.0
    assert checks[0]["log_std"] == -2.0 and [c["log_std"] for c in checks] == [-2.0 - i for i in range(len(checks))]
    assert all(c["success"] < 0.5 * report.start_success for c in checks[:-1])
    assert report.start_log_std == checks[-1]["log_std"] and report.start_success_sampled == checks[-1]["success"]
    assert report.rounds[0].executed == "expert-guided" and report.rounds[1].executed == "fitted policy"
    assert report.rounds[1].samples == report.rounds[0].new_samples + report.rounds[1].new_samples
    assert all(r.own_success is not None for r in report.rounds)
    assert report.start_success == max(r.own_success for r in report.rounds)
    # where each fit errs: per action dimension on all rows so far (their mean is the fit's loss, measured on the
    # final parameters rather than averaged over the last minibatches), and from round 1 the previous fit's loss on
    # the states its own rollouts reached, which the expert-guided round 0 has none of
    for r in report.rounds:
        assert list(r.actor_loss_by_action) == ["dx", "dy", "dz", "drx", "dry", "drz", "grip"]
        assert all(v >= 0.0 for v in r.actor_loss_by_action.values())
        assert 0.5 * r.actor_loss <= np.mean(list(r.actor_loss_by_action.values())) <= 2.0 * r.actor_loss
    assert report.rounds[0].own_states_loss is None and report.rounds[1].own_states_loss > 0.0
    assert any("the previous fit's on the states it reached" in line for line in lines)
    assert any("round 1/2" in line for line in lines)
    assert any(f"sampling with log-std {report.start_log_std}" in line for line in lines)
    np.testing.assert_allclose(ts.params["log_std"], report.start_log_std)
    assert float(jnp.sum(ts.normalizer.mean ** 2)) > 0.0  # the warm start's data set the normaliser
    # the critic was fitted (a fresh critic's parameters would be unchanged)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ts.params["critic"],
                                         fresh.params["critic"]))
    assert max(moved) > 0.0

    # On fresh expert-guided rollouts (other seed) the fitted residual's error is far below the zero residual's.
    rollout = _rollout_fn(trainer, env, 16, steps)
    out = jax.device_get(rollout(ts.params, ts.normalizer, jax.random.PRNGKey(99), jnp.asarray(True), jnp.float32(0.0)))
    # the learner's rollouts: the same key gives the same episode without noise, another one with PPO's noise
    mean_a, mean_b, noisy = (jax.device_get(rollout(ts.params, ts.normalizer, jax.random.PRNGKey(5), jnp.asarray(False),
                                                    jnp.float32(std)))["obs"] for std in (0.0, 0.0, 0.5))
    np.testing.assert_array_equal(mean_a, mean_b)
    assert np.max(np.abs(noisy[-1] - mean_a[-1])) > 1e-3
    valid = out["valid"].reshape(-1)
    obs = jnp.asarray(out["obs"].reshape(-1, trainer.obs_size)[valid])
    target = out["target"].reshape(-1, 7)[valid]
    fitted = np.tanh(np.asarray(trainer.policy_fn(ts.params, ts.normalizer, obs, deterministic=True)))
    zero = np.tanh(np.asarray(trainer.policy_fn(fresh.params, fresh.normalizer, obs, deterministic=True)))
    assert np.mean((fitted - target) ** 2) < 0.5 * np.mean((zero - target) ** 2)
    # the PPO step runs from the warm-started state
    ts2, metrics = trainer.train_step(ts)
    assert int(ts2.iteration) == 1 and np.isfinite(float(metrics["policy_loss"]))


def test_warm_start_gate_leaves_a_policy_without_a_good_teacher_to_plain_ppo(drawer_task, drawer_env, drawer_base_policy,
                                                                             tmp_path, monkeypatch):
    """`train --warm-start-min-teacher`: the expert-guided residual is measured from the policy's train states; under
    the threshold the policy is not warm-started, the decision and its measurement are written where a resumed run
    reads them back; at 0 nothing is measured."""
    import recovla_jax.evaluation.authority as authority
    from experiments.policy_training import warm_start_gate, warm_start_record

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    env = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, alpha=1.0, obs_noise=0.0, latency_prob=0.0)
    lines: list[str] = []
    reports: dict = {}
    path = tmp_path / "warm_start" / "missed_handle.json"
    # Ten steps from a closed drawer cannot open it: the guide recovers none of the 6 train states measured.
    warm, measured = warm_start_gate(env, 6, steps=10, seed=0, min_teacher=0.5, log=lines.append, reports=reports,
                                     name="missed_handle", report_path=path)
    assert not warm and measured == {"teacher_success": 0.0, "min_teacher": 0.5, "teacher_env_steps": 60}
    saved = json.loads(path.read_text())
    assert saved["skipped"] and saved["env_steps"] == 60 and reports["missed_handle"] == saved
    assert any("skipped for 'missed_handle'" in line and "0.0%" in line for line in lines)

    def no_measuring(*_a, **_k):
        raise AssertionError("measured again")

    monkeypatch.setattr(authority, "expert_guided_success", no_measuring)
    # a resumed run reads the decision back, whatever the threshold now
    assert warm_start_gate(env, 6, steps=10, seed=0, min_teacher=0.0, log=lines.append, reports={}, name="missed_handle",
                           report_path=path) == (False, {})
    # threshold 0: every policy is warm-started, nothing measured
    assert warm_start_gate(env, 6, steps=10, seed=0, min_teacher=0.0, log=lines.append, reports={}, name="slipped_off",
                           report_path=tmp_path / "warm_start" / "slipped_off.json") == (True, {})
    # at or above the threshold: warm-started, the measurement handed on for the warm start's report
    monkeypatch.setattr(authority, "expert_guided_success", lambda env_, idx, steps, seed=0: np.arange(len(idx)) < 4)
    warm, measured = warm_start_gate(env, 5, steps=10, seed=0, min_teacher=0.8, log=lines.append, reports={},
                                     name="slipped_off", report_path=tmp_path / "warm_start" / "slipped_off.json")
    assert warm and measured["teacher_success"] == pytest.approx(0.8)
    assert not (tmp_path / "warm_start" / "slipped_off.json").exists()  # the warm start writes it, with its rounds

    record = warm_start_record(4, {"missed_handle": saved, "slipped_off": {"env_steps": 100, "start_success": 0.5},
                                   "misaligned_gripper": {"env_steps": 10, "fit_rejected": True}},
                               PPOConfig(desired_kl=0.01, freeze_normalizer=True), 0.5, True)
    assert record["skipped"] == ["missed_handle"] and record["fit_rejected"] == ["misaligned_gripper"]
    assert record["extra_env_steps"] == 170 and (record["min_teacher"], record["fallback"]) == (0.5, True)


def test_start_policy_drops_a_weak_fit_and_a_baseline_follows_the_runs_decisions(tmp_path, monkeypatch):
    """`start_policy`: a fit that (sampled) succeeds less than PPO's fresh policy is dropped for plain PPO with the plain
    config under `fallback`; a kept fit hands
    PPO its warm-started state; a resumed run and a baseline take the recorded decisions without measuring or fitting."""
    import recovla_jax.training.expert_warm_start as ews
    from experiments.policy_training import has_checkpoint, start_policy

    assert not has_checkpoint(tmp_path / "ckpt")  # what `--resume` would continue from
    (tmp_path / "ckpt" / "tmp").mkdir(parents=True)
    assert not has_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "12").mkdir()
    assert has_checkpoint(tmp_path / "ckpt")
    from recovla_jax.training.expert_warm_start import WarmStartReport

    class Trainer:
        def __init__(self, cfg):
            self.cfg = cfg

        def init(self, _key):
            return "fresh"

    fits = iter([(0.2, 0.9), (0.15, 0.05)])  # (the fit sampled, the fresh policy sampled)

    fit_steps_seen: list[int] = []

    def fake_warm_start(trainer, ts, env, cfg, log=print):
        assert ts == "fresh" and trainer.cfg.desired_kl == 0.01 and cfg.rounds == 3 and cfg.compare_fresh
        fit_steps_seen.append(cfg.fit_steps)
        fit, fresh = next(fits)
        return "warm", WarmStartReport(env_steps=50, rounds=[], critic_loss=0.0, start_success=0.9,
                                       start_success_sampled=fit, fresh_success_sampled=fresh)

    monkeypatch.setattr(ews, "warm_start", fake_warm_start)
    warm_cfg, plain_cfg = PPOConfig(desired_kl=0.01, freeze_normalizer=True), PPOConfig()
    reports: dict = {}
    lines: list[str] = []

    def start(name, **kw):
        args = dict(warm_cfg=warm_cfg, plain_cfg=plain_cfg, train_states=4, steps=10, log_std=-3.0, seed=0,
                    min_teacher=0.0, fallback=True, log=lines.append, reports=reports, name=name,
                    report_path=tmp_path / f"{name}.json", resuming=False)
        return start_policy(3, Trainer, None, **{**args, **kw})

    trainer, cfg, hook = start("weak")
    assert cfg is plain_cfg and trainer.cfg is plain_cfg and hook is None
    assert reports["weak"]["fit_rejected"] and reports["weak"]["env_steps"] == 50
    assert json.loads((tmp_path / "weak.json").read_text())["start_success_sampled"] == 0.2
    assert any("dropped for 'weak'" in line and "20.0%" in line and "90.0%" in line for line in lines)
    trainer, cfg, hook = start("kept", fit_steps=8000)  # a weak fit, yet better than the fresh policy: kept
    assert fit_steps_seen == [ews.WarmStartConfig().fit_steps, 8000]  # None: the module's default
    assert cfg is warm_cfg and hook("fresh") == "warm" and "fit_rejected" not in reports["kept"]

    def no_fitting(*_a, **_k):
        raise AssertionError("fitted again")

    monkeypatch.setattr(ews, "warm_start", no_fitting)
    assert start("weak", resuming=True)[1] is plain_cfg and start("kept", resuming=True)[1:] == (warm_cfg, None)
    # a baseline follows the run's reports: plain where the run was plain, warm-started (its own fit, kept
    # whatever its success) where the run's was
    run_reports = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("weak", "kept")}
    out = tmp_path / "baseline"
    assert start("weak", report_path=out / "weak.json", follow=run_reports["weak"])[1] is plain_cfg
    assert reports["weak"]["decided_by"] == "the run's warm start" and reports["weak"]["env_steps"] == 0
    def baseline_warm_start(trainer, ts, env, cfg, log=print):
        assert not cfg.compare_fresh  # a baseline follows the run's decision: the fresh policy is not rolled out
        return "warm", WarmStartReport(env_steps=50, rounds=[], critic_loss=0.0, start_success=0.1,
                                       start_success_sampled=0.0, fresh_success_sampled=None)

    monkeypatch.setattr(ews, "warm_start", baseline_warm_start)
    assert start("kept", report_path=out / "kept.json", follow=run_reports["kept"], fallback=False)[1] is warm_cfg
    assert start("new", report_path=out / "new.json", follow={}, fallback=False)[1] is warm_cfg  # an older run: warm


def test_expert_warm_start_narrows_exploration_noise_that_erases_the_fit(drawer_task, drawer_env, drawer_base_policy):
    """At alpha 1 and log-std +1 the sampled residual is near-random over the whole action range, which no drawer
    episode survives, while the fitted mean (the clone plus a small correction) succeeds from nominal starts: the
    warm start must narrow PPO's initial noise until the sampled fit keeps half of its success, and start PPO there."""
    from recovla_jax.sim.wrappers import wrap_batched
    from recovla_jax.training.expert_warm_start import WarmStartConfig, warm_start

    bank = _bank_from_resets(drawer_task, drawer_env)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    env = ResidualEnv(drawer_task, drawer_base_policy, bank, weights, alpha=1.0, obs_noise=0.0, latency_prob=0.0)
    steps = drawer_task.config.episode_length
    cfg = PPOConfig(num_envs=8, unroll_length=5, num_minibatches=2, total_timesteps=40, actor_hidden=(64, 64),
                    critic_hidden=(32, 32), desired_kl=0.01)
    trainer = PPOTrainer(wrap_batched(env, 8, steps), cfg)
    ws = WarmStartConfig(rounds=1, num_envs=16, steps=steps, fit_steps=300, batch_size=256, learning_rate=3e-3,
                         log_std=1.0, min_log_std=-3.0, compare_fresh=False)
    lines: list[str] = []
    ts, report = warm_start(trainer, trainer.init(jax.random.PRNGKey(0)), env, ws, log=lines.append)
    checks = report.noise_checks
    assert report.fresh_success_sampled is None and not any("without the warm start" in line for line in lines)
    assert report.start_success >= 0.5, report  # the fit works with its mean action
    assert checks[0]["log_std"] == 1.0 and checks[0]["success"] < 0.5 * report.start_success
    assert len(checks) >= 2 and checks[-1]["success"] >= 0.5 * report.start_success
    assert report.start_log_std == checks[-1]["log_std"] >= -3.0
    np.testing.assert_allclose(ts.params["log_std"], report.start_log_std)
    assert report.env_steps == (2 + len(checks)) * 16 * steps  # no fresh-policy rollout: compare_fresh=False
    assert any("narrowing PPO's initial noise to 0.0" in line for line in lines)
    # PPO's adaptive learning rate starts scaled to the narrower noise (the rate over the std as at init_log_std)
    expected = cfg.learning_rate * np.exp(report.start_log_std - cfg.init_log_std)
    assert report.start_learning_rate == pytest.approx(expected)
    assert float(ts.opt_state[1].hyperparams["learning_rate"]) == pytest.approx(expected, rel=1e-5)
    # min_log_std bounds the narrowing (narrower noise froze PPO): with no room below the start, PPO starts at the
    # start noise though it loses the fit, and the log says so
    lines.clear()
    _, capped = warm_start(trainer, trainer.init(jax.random.PRNGKey(0)), env, ws.model_copy(update={"min_log_std": 1.0}),
                           log=lines.append)
    assert [c["log_std"] for c in capped.noise_checks] == [1.0] and capped.start_log_std == 1.0
    assert any("the narrowest tried, WarmStartConfig.min_log_std" in line for line in lines)
    assert WarmStartConfig().min_log_std == -4.0


def test_recovery_evaluator_keys_each_state_by_its_bank_row(drawer_task, drawer_env, drawer_base_policy):
    """Keyed by bank row, a held-out state gets the same dynamics draw and episode key whichever other modes'
    states its env holds (one-mode and all-mode runs evaluate it alike); keyed by position it does not."""
    from recovla_jax.evaluation.recovery import STATE_KEYS, RecoveryEvaluator, evaluation_keys
    from recovla_jax.sim.randomization import RANDOMIZED_FIELDS, DomainRandomization

    bank = _bank_from_resets(drawer_task, drawer_env, n=12)
    weights = np.zeros((3, len(component_names(drawer_task))), np.float32)
    modes, one = list(drawer_task.failure_modes), drawer_task.failure_modes[2]

    def evaluator(mode_list, keyed):
        rows = bank.rows_of(mode_list, "heldout")
        env = ResidualEnv(drawer_task, drawer_base_policy, bank.take(rows), weights)
        ids = evaluation_keys(rows, {"state_keys": STATE_KEYS}) if keyed else None
        return RecoveryEvaluator(env, lambda p, obs: obs[..., :7] * 0, num_steps=5, seed=3,
                                 randomization=DomainRandomization(), state_ids=ids)

    n_one = len(bank.rows(one, "heldout"))
    in_all = np.arange(len(bank.rows(split="heldout")) - n_one, len(bank.rows(split="heldout")))  # the last mode's block
    for keyed, same in ((True, True), (False, False)):
        every, alone = evaluator(modes, keyed), evaluator([one], keyed)
        keys_match = np.array_equal(every.start_keys(jnp.asarray(in_all)), alone.start_keys(jnp.arange(n_one)))
        models_match = all(np.array_equal(np.asarray(getattr(every.models, f))[in_all], np.asarray(getattr(alone.models, f)))
                           for f in RANDOMIZED_FIELDS)
        assert keys_match == same and models_match == same, (keyed, keys_match, models_match)
    assert evaluation_keys(bank.rows_of(modes, "heldout"), {"seed": 10_000}) is None  # a run evaluated before per-state keys
    with pytest.raises(ValueError, match="one id per start"):
        RecoveryEvaluator(ResidualEnv(drawer_task, drawer_base_policy, bank, weights), lambda p, o: o, 5, 0, None,
                          state_ids=np.arange(3))

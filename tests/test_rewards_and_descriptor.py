"""Reward mask compiler and recovery descriptor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recovla_jax.diagnosis.descriptor import DescriptorError, RecoveryDescriptor, oracle_descriptor
from recovla_jax.rewards.compiler import RewardMaskError, compile_reward, mask_to_weights
from recovla_jax.rewards.library import component_names, raw_terms


def test_mask_validation_errors_name_valid_components(drawer_task):
    with pytest.raises(RewardMaskError, match="unknown reward component.*'pul_drawer'.*valid components: reach_handle"):
        mask_to_weights(drawer_task, {"pul_drawer": 1.0})
    for bad in (-1.0, float("nan"), 1e39, 100.5):  # 1e39 is finite in Python and inf in the float32 weight vector
        with pytest.raises(RewardMaskError, match=r"must be in \[0, 100\]"):
            mask_to_weights(drawer_task, {"pull_drawer": bad})
    assert mask_to_weights(drawer_task, {"pull_drawer": 100.0}).max() == 100.0
    with pytest.raises(RewardMaskError, match="empty"):
        mask_to_weights(drawer_task, {})
    with pytest.raises(RewardMaskError, match="selects no component"):
        mask_to_weights(drawer_task, {"pull_drawer": 0.0})
    w = mask_to_weights(drawer_task, {"pull_drawer": 2.0, "success": 5.0})
    names = component_names(drawer_task)
    assert w[names.index("pull_drawer")] == 2.0 and w[names.index("success")] == 5.0 and w.sum() == 7.0


def test_reward_terms_in_documented_ranges(drawer_env, drawer_task):
    states = jax.jit(jax.vmap(drawer_env.reset))(jax.random.split(jax.random.PRNGKey(0), 8))
    acts = jax.random.uniform(jax.random.PRNGKey(1), (8, 7), minval=-1, maxval=1)
    terms = jax.jit(jax.vmap(lambda d, a: raw_terms(drawer_task, drawer_env.sys, d, d, a, {})))(states.pipeline_state, acts)
    for name, value in terms.items():
        v = np.asarray(value)
        lo, hi = (-1.0, 0.0) if name in ("collision", "action_magnitude", "residual_magnitude") else (0.0, 1.0)
        assert np.all((v >= lo - 1e-6) & (v <= hi + 1e-6)), (name, v)


def test_potential_terms_telescope_and_success_dominates(drawer_env, drawer_task):
    """Shaping pays Phi(s') - Phi(s): an episode's shaping sums to Phi(end) - Phi(start), so it is bounded
    by the potential weights and (in every oracle mask) cannot outweigh the success bonus."""
    fn = compile_reward(drawer_task)
    names = component_names(drawer_task)
    state = jax.jit(drawer_env.reset)(jax.random.PRNGKey(3))
    step = jax.jit(drawer_env.step)
    terms_fn = jax.jit(lambda p, d, a: fn(drawer_env.sys, p, d, a, {})[1])
    raw_fn = jax.jit(lambda d, a: raw_terms(drawer_task, drawer_env.sys, d, d, a, {}))
    rng = np.random.default_rng(0)
    start = raw_fn(state.pipeline_state, jnp.zeros(7))
    total = {k: 0.0 for k in drawer_task.potential_components}
    for _ in range(12):
        action = jnp.asarray(rng.uniform(-1, 1, 7), jnp.float32)
        nxt = step(state, action)
        contrib = terms_fn(state.pipeline_state, nxt.pipeline_state, action)
        for k in total:
            total[k] += float(contrib[k])
        state = nxt
    end = raw_fn(state.pipeline_state, jnp.zeros(7))
    for k in total:
        assert total[k] == pytest.approx(float(end[k] - start[k]), abs=1e-4), k
    assert any(abs(v) > 1e-3 for v in total.values()), "random actions moved no potential: test is vacuous"
    for mode, mask in drawer_task.oracle_masks.items():
        shaping_bound = sum(w for c, w in mask.items() if c in drawer_task.potential_components)
        assert mask["success"] > 2 * shaping_bound, (mode, mask)
    assert set(drawer_task.potential_components) <= set(names)


def test_discounted_shaping_pays_gamma_phi_next_minus_phi(drawer_env, drawer_task):
    """--shaping-discount=gamma: potential terms pay gamma * Phi(s') - Phi(s) (shaping that keeps the discounted
    task's optimal policy); the other terms are unchanged."""
    plain, discounted = compile_reward(drawer_task), compile_reward(drawer_task, potential_discount=0.9)
    state = jax.jit(drawer_env.reset)(jax.random.PRNGKey(5))
    action = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, 7), jnp.float32)
    nxt = jax.jit(drawer_env.step)(state, action)
    args = (drawer_env.sys, state.pipeline_state, nxt.pipeline_state, action, {})
    a, b = plain(*args)[1], discounted(*args)[1]
    phi_next = raw_terms(drawer_task, drawer_env.sys, nxt.pipeline_state, nxt.pipeline_state, action, {})
    for k in component_names(drawer_task):
        want = float(a[k]) - 0.1 * float(phi_next[k]) if k in drawer_task.potential_components else float(a[k])
        assert float(b[k]) == pytest.approx(want, abs=1e-6), k
    assert any(abs(float(phi_next[k])) > 1e-3 for k in drawer_task.potential_components)  # not vacuous


def test_changing_mask_does_not_recompile_and_per_env_masks_work(drawer_env, drawer_task):
    fn = compile_reward(drawer_task)
    n = len(component_names(drawer_task))
    data = jax.jit(drawer_env.reset)(jax.random.PRNGKey(0)).pipeline_state
    action = jnp.zeros(7)

    @jax.jit
    def reward(weights):
        return fn(drawer_env.sys, data, data, action, {"reward_weights": weights})[0]

    rng = np.random.default_rng(0)
    masks = [rng.uniform(0, 1, n).astype(np.float32) for _ in range(10)]
    values = [float(reward(jnp.asarray(m))) for m in masks]
    assert reward._cache_size() == 1, "a new mask recompiled the reward function"
    terms = np.asarray(jnp.stack(list(fn(drawer_env.sys, data, data, action, {})[1].values())))
    np.testing.assert_allclose(values, [m @ terms for m in masks], rtol=1e-5, atol=1e-6)
    # per-env masks in one batch: each env gets its own weighted sum
    batch = jax.jit(jax.vmap(reward))(jnp.asarray(np.stack(masks)))
    np.testing.assert_allclose(np.asarray(batch), values, rtol=1e-5, atol=1e-6)


def test_descriptor_json_round_trip_and_validation(drawer_task):
    d = oracle_descriptor(drawer_task, "slipped_off", "reach")
    again = RecoveryDescriptor.model_validate_json(d.model_dump_json())
    assert again == d and again.source == "oracle"
    assert d.validate_for(drawer_task).sum() > 0
    bad = d.model_copy(update={"failure_mode": "exploded"})
    with pytest.raises(DescriptorError, match="unknown failure mode 'exploded'; valid: missed_handle"):
        bad.validate_for(drawer_task)
    bad = d.model_copy(update={"reward_mask": {"teleport": 1.0}})
    with pytest.raises(DescriptorError, match="valid components"):
        bad.validate_for(drawer_task)


def test_a_run_s_shaping_discount_reaches_its_envs_and_baselines():
    """The factor comes from the run's config (main job and baselines alike); runs before the option used 1."""
    from experiments.pipeline import potential_discount
    from experiments.train import build_parser

    assert potential_discount(vars(build_parser().parse_args([]))) == 1.0
    assert potential_discount(vars(build_parser().parse_args(["--shaping-discount=gamma", "--gamma=0.97"]))) == 0.97
    assert potential_discount({"gamma": 0.99}) == 1.0  # an older config.json

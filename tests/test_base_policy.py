"""The frozen BC base policy: frozen, cached, and good on nominal states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recovla_jax.policies.bc import BCConfig, evaluate_nominal, load_or_train_base_policy
from tests.conftest import TEST_BC


def test_base_policy_is_frozen(drawer_base_policy, drawer_task):
    obs = jnp.ones((4, drawer_task.observation_size))
    grads = jax.grad(lambda p: drawer_base_policy.apply(jax.lax.stop_gradient(p), obs).sum())(drawer_base_policy.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    # the interface itself stops gradients: differentiating through __call__ w.r.t. params is zero
    frozen = lambda p: type(drawer_base_policy)(  # noqa: E731
        drawer_base_policy.name, drawer_base_policy.apply, p, {}
    )(obs).sum()
    grads = jax.grad(frozen)(drawer_base_policy.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    a = drawer_base_policy(obs)
    assert a.shape == (4, 7) and float(jnp.abs(a).max()) <= 1.0


def test_base_policy_nominal_success(drawer_base_policy, drawer_task):
    result = evaluate_nominal(drawer_task, drawer_base_policy, 64, jax.random.PRNGKey(123))
    assert result["rate"] >= 0.85, f"BC nominal success {result}"


def test_base_policy_is_cached(drawer_base_policy, drawer_task, bc_cache_dir):
    messages = []
    again = load_or_train_base_policy(drawer_task, BCConfig(**TEST_BC), cache_dir=bc_cache_dir, log=messages.append)
    assert any("loaded cached" in m for m in messages), messages
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(drawer_base_policy.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cached_clone_records_its_cpu_and_says_when_it_came_from_another(drawer_base_policy, drawer_task, bc_cache_dir,
                                                                        tmp_path):
    import json
    import shutil

    from recovla_jax.utils.jax_setup import host_cpu

    cache = tmp_path / "cache"
    shutil.copytree(bc_cache_dir, cache)
    (meta_path,) = cache.glob(f"base_policies/{drawer_task.name}-*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["host_cpu"] == host_cpu()
    messages = []
    load_or_train_base_policy(drawer_task, BCConfig(**TEST_BC), cache_dir=cache, log=messages.append)
    assert not any("another kind of CPU" in m for m in messages), messages
    meta["host_cpu"] = {**meta["host_cpu"], "model": "Some Other CPU", "isa": ["avx2"]}
    meta_path.write_text(json.dumps(meta))
    load_or_train_base_policy(drawer_task, BCConfig(**TEST_BC), cache_dir=cache, log=messages.append)
    assert any("another kind of CPU (Some Other CPU, avx2)" in m for m in messages), messages


def test_host_cpu_reads_the_model_and_the_extensions_xla_compiles_for():
    from recovla_jax.utils.jax_setup import host_cpu

    x86 = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx2 fma avx512f amx_tile "
           "avx512_fp16\n\nprocessor\t: 1\nmodel name\t: second core, ignored\nflags\t\t: fpu\n")
    info = host_cpu(x86)
    assert info["model"] == "Intel(R) Xeon(R) Processor"
    assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_fp16", "amx_tile"]
    arm = host_cpu("processor\t: 0\nFeatures\t: fp asimd sve\nModel\t: Graviton\n")
    assert arm["model"] == "Graviton" and arm["isa"] == ["asimd", "sve"]
    assert host_cpu("")["isa"] == [] and host_cpu("")["model"]


def test_cache_key_follows_task_source_and_config(drawer_task, monkeypatch):
    from recovla_jax.policies import bc
    from recovla_jax.tasks import get_task

    key = bc.cache_key(drawer_task, BCConfig())
    assert bc.cache_key(get_task("drawer"), BCConfig()) == key
    assert bc.cache_key(drawer_task, BCConfig(seed=1)) != key
    # fields added after cache format 4 change the key only when set (older cached clones stay valid)
    assert "dagger_latency_prob" not in bc._keyed_config(BCConfig())
    rounds = bc.cache_key(drawer_task, BCConfig(dagger_rounds=1))
    assert bc.cache_key(drawer_task, BCConfig(dagger_rounds=1, dagger_latency_prob=0.5)) != rounds
    assert "demo_episode_length" not in bc._keyed_config(BCConfig())
    assert bc.cache_key(drawer_task, BCConfig(demo_episode_length=90)) != key
    with pytest.raises(ValueError, match="only in DAgger rounds"):
        BCConfig(dagger_obs_noise=0.001)  # no rounds: the condition would do nothing but change the key
    assert bc.cache_key(get_task("drawer", {"episode_length": 90}), BCConfig()) != key
    # an edited expert (any change to the task's module source) must not reuse the cached clone
    monkeypatch.setattr(bc, "_module_sources", lambda *modules: "edited")
    assert bc.cache_key(drawer_task, BCConfig()) != key


def test_module_sources_hash_the_files(tmp_path, monkeypatch):
    from recovla_jax.policies.bc import _module_sources

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fake_task_mod.py").write_text("X = 1\n")
    first = _module_sources("fake_task_mod", "no_such_module_anywhere")
    (tmp_path / "fake_task_mod.py").write_text("X = 2\n")
    assert _module_sources("fake_task_mod") != first


def test_dagger_round_labels_the_learners_states_with_the_expert():
    """With a learner, the learner drives and the expert only labels: a learner that holds still visits
    only the start states, yet every label is the expert's (moving) action there."""
    from recovla_jax.policies.base_policy import BasePolicy
    from recovla_jax.policies.bc import collect_demos
    from recovla_jax.tasks import get_task

    task = get_task("drawer", {"episode_length": 12})
    hold = BasePolicy("hold", lambda params, obs: jnp.zeros(obs.shape[:-1] + (7,)).at[..., 6].set(-1.0), {}, {})
    obs, actions, success = collect_demos(task, BCConfig(demo_envs=8), jax.random.PRNGKey(0), learner=hold,
                                          num_episodes=8)
    assert success == 0.0 and obs.shape == (8 * 12, task.observation_size)
    tcp = obs[:, :3].reshape(12, 8, 3)  # time-major; field 0 is the TCP position
    assert np.abs(tcp - tcp[0]).max() < 0.005  # the learner held still
    assert np.linalg.norm(actions[:, :3], axis=-1).min() > 0.1  # the expert wanted to move every time
    # a demonstration horizon of its own (stack: nominal 200 steps, recoveries 300) sets the episodes' length
    short, _, _ = collect_demos(task, BCConfig(demo_envs=8, demo_episode_length=5), jax.random.PRNGKey(0), learner=hold,
                                num_episodes=8)
    assert short.shape == (8 * 5, task.observation_size)


def test_dagger_rounds_drive_under_latency_noise_and_randomized_dynamics():
    """The deployment conditions of DAgger rounds: a delayed learner's first command takes effect one step
    late; noisy readings are what gets recorded (and what the learner sees); randomized models run."""
    from recovla_jax.policies.base_policy import BasePolicy
    from recovla_jax.policies.bc import collect_demos
    from recovla_jax.tasks import get_task

    task = get_task("drawer", {"episode_length": 4})
    push_x = BasePolicy("push_x", lambda params, obs: jnp.zeros(obs.shape[:-1] + (7,)).at[..., 0].set(1.0).at[..., 6].set(-1.0),
                        {}, {})
    obs, _, _ = collect_demos(task, BCConfig(demo_envs=8, dagger_rounds=1, dagger_latency_prob=1.0), jax.random.PRNGKey(0),
                              learner=push_x, num_episodes=8)
    x = obs[:, 0].reshape(4, 8)  # time-major TCP x
    assert np.abs(x[1] - x[0]).max() < 0.003  # step 0 executed the hold action (latency) ...
    assert (x[3] - x[1]).min() > 0.01  # ... later steps the learner's (one step late)

    hold = BasePolicy("hold", lambda params, obs: jnp.zeros(obs.shape[:-1] + (7,)).at[..., 6].set(-1.0), {}, {})
    cfg = BCConfig(demo_envs=8, dagger_rounds=1, dagger_obs_noise=0.02, dagger_randomization=True)
    obs, actions, _ = collect_demos(task, cfg, jax.random.PRNGKey(0), learner=hold, num_episodes=8)
    tcp = obs[:, :3].reshape(4, 8, 3)
    spread = (tcp - tcp.mean(axis=0)).std()
    assert 0.01 < spread < 0.04  # the held-still TCP is recorded as read: with ~0.02 noise
    assert np.isfinite(actions).all()


def test_dagger_rounds_refit_on_the_clones_own_states(tmp_path):
    from recovla_jax.tasks import get_task

    task = get_task("drawer", {"episode_length": 12})  # too short for the expert: every episode runs to the end
    cfg = BCConfig(demo_envs=8, dagger_rounds=1, dagger_envs=8, train_steps=500, batch_size=64, eval_envs=8)
    messages = []
    policy = load_or_train_base_policy(task, cfg, cache_dir=tmp_path, log=messages.append)
    fits = policy.info["dagger"]["fits"]
    assert [f["fit"] for f in fits] == [0, 1]
    assert [f["samples"] for f in fits] == [8 * 12, 2 * 8 * 12] == [8 * 12, policy.info["demo_samples"]]
    # every fit was scored on its own rollouts and the best one (later on ties) is the one kept
    scores = [f["own_rollout_success"] for f in fits]
    assert policy.info["dagger"]["selected_fit"] == max(range(2), key=lambda k: (scores[k], k))
    assert any("DAgger round 1" in m for m in messages) and any("DAgger keeps fit" in m for m in messages)
    again = load_or_train_base_policy(task, cfg, cache_dir=tmp_path, log=messages.append)
    assert again.info["dagger"] == policy.info["dagger"]

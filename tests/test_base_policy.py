"""The frozen BC base policy: frozen, cached, and good on nominal states."""

import jax
import jax.numpy as jnp
import numpy as np

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

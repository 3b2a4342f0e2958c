import jax
import jax.numpy as jnp
import numpy as np

from recovla_jax.sim import rotations


def test_euler_round_trip():
    angles = jnp.array([0.4, -0.3, 1.1])
    back = rotations.mat_to_euler_zyx(rotations.euler_zyx_to_mat(*angles))
    np.testing.assert_allclose(back, angles, atol=1e-6)


def test_axis_angle_round_trip_and_zero():
    v = jnp.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(rotations.mat_to_axis_angle(rotations.axis_angle_to_mat(v)), v, atol=1e-6)
    np.testing.assert_allclose(rotations.axis_angle_to_mat(jnp.zeros(3)), jnp.eye(3), atol=1e-7)
    assert np.all(np.isfinite(jax.grad(lambda x: rotations.axis_angle_to_mat(x).sum())(jnp.zeros(3))))

"""The looped CPU Cholesky / triangular solve: same answers as LAPACK, and no LAPACK call left in MJX programs."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recovla_jax.sim  # noqa: F401  (applies the lowering)
from recovla_jax.sim.cpu_linalg import MAX_LOOPED_SIZE

pytestmark = pytest.mark.skipif(os.environ.get("RECOVLA_CPU_LINALG") == "lapack", reason="LAPACK lowering chosen")


def _spd(rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
    m = rng.normal(size=(batch, n, n)).astype(np.float32)
    return m @ np.swapaxes(m, -1, -2) + n * np.eye(n, dtype=np.float32)


@pytest.mark.parametrize("n", [1, 3, 12, MAX_LOOPED_SIZE])
def test_cholesky_matches_numpy(n):
    a = _spd(np.random.default_rng(n), 16, n)
    factor = jax.jit(jax.vmap(jnp.linalg.cholesky))(a)
    np.testing.assert_allclose(np.asarray(factor), np.linalg.cholesky(a.astype(np.float64)), rtol=2e-4, atol=2e-4)


def test_small_matrices_lower_without_lapack():
    a = jnp.asarray(_spd(np.random.default_rng(0), 4, 6))
    assert "lapack" not in jax.jit(jnp.linalg.cholesky).lower(a).as_text()
    solve = jax.jit(lambda a, b: jax.lax.linalg.triangular_solve(a, b, left_side=True, lower=True))
    assert "lapack" not in solve.lower(a, a).as_text()


def test_cholesky_of_indefinite_matrix_is_nan_like_lapack():
    good = np.array([[4.0, 2.0], [2.0, 3.0]], np.float32)
    bad = np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)
    factor = np.asarray(jax.jit(jax.vmap(jnp.linalg.cholesky))(np.stack([good, bad])))
    np.testing.assert_allclose(factor[0], np.linalg.cholesky(good), rtol=1e-6)
    assert np.isnan(factor[1][np.tril_indices(2)]).all()  # jnp zeroes the upper triangle, as with LAPACK
    # a NaN input poisons a pivot: the whole factor is NaN (LAPACK may keep the columns before it)
    nan_below = np.array([[4.0, 0.0], [np.nan, 3.0]], np.float32)
    assert np.isnan(np.asarray(jax.jit(jnp.linalg.cholesky)(nan_below))[np.tril_indices(2)]).all()


@pytest.mark.parametrize(
    "left_side,lower,transpose_a,unit_diagonal", list(itertools.product([True, False], repeat=4))
)
def test_triangular_solve_matches_dense_solve(left_side, lower, transpose_a, unit_diagonal):
    rng = np.random.default_rng(7)
    n, m = 9, 4
    # Not symmetric, so reading the wrong triangle (or ignoring transpose_a) gives a different answer.
    a = (rng.normal(size=(8, n, n)) + n * np.eye(n)).astype(np.float32)
    b = rng.normal(size=(8, n, m) if left_side else (8, m, n)).astype(np.float32)
    x = jax.jit(
        lambda a, b: jax.lax.linalg.triangular_solve(
            a, b, left_side=left_side, lower=lower, transpose_a=transpose_a, unit_diagonal=unit_diagonal
        )
    )(a, b)
    tri = np.tril(a) if lower else np.triu(a)
    if unit_diagonal:
        tri[:, np.arange(n), np.arange(n)] = 1.0
    op = np.swapaxes(tri, -1, -2) if transpose_a else tri
    lhs = op @ np.asarray(x) if left_side else np.asarray(x) @ op
    np.testing.assert_allclose(lhs, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("batch,n", [((), 1), ((), 5), ((2, 3), 4), ((3,), MAX_LOOPED_SIZE)])
def test_triangular_solve_any_batch_shape(batch, n):
    rng = np.random.default_rng(n)
    a = (rng.normal(size=(*batch, n, n)) + n * np.eye(n)).astype(np.float32)
    b = rng.normal(size=(*batch, n, 2)).astype(np.float32)
    x = jax.jit(lambda a, b: jax.lax.linalg.triangular_solve(a, b, left_side=True, lower=True))(a, b)
    np.testing.assert_allclose(np.tril(a) @ np.asarray(x), b, rtol=1e-3, atol=1e-3)


def test_unread_entries_never_leak():
    """Only the named triangle is read, and with unit_diagonal not even its diagonal (as in LAPACK)."""
    a = np.array([[2.0, np.nan, np.nan], [1.0, 3.0, np.inf], [0.5, -1.0, 4.0]], np.float32)
    factor = np.asarray(jax.jit(lambda m: jax.lax.linalg.cholesky(m, symmetrize_input=False))(a))
    sym = np.tril(a) + np.tril(a, -1).T
    np.testing.assert_allclose(np.tril(factor), np.linalg.cholesky(sym), rtol=1e-5)
    b = np.array([[1.0], [2.0], [3.0]], np.float32)
    nan_diagonal = np.where(np.eye(3, dtype=bool), np.nan, a).astype(np.float32)
    x = np.asarray(jax.lax.linalg.triangular_solve(nan_diagonal, b, left_side=True, lower=True, unit_diagonal=True))
    unit = np.tril(a, -1) + np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(unit @ x, b, rtol=1e-5)
    inf_diagonal = np.array([[np.inf, 0.0], [1.0, 2.0]], np.float32)  # x0 = 1 / inf = 0, not inf * 0
    x = np.asarray(jax.lax.linalg.triangular_solve(inf_diagonal, np.ones((2, 1), np.float32), left_side=True, lower=True))
    np.testing.assert_allclose(x[:, 0], [0.0, 0.5])


def test_first_pivot_failure_makes_whole_factor_nan():
    a = np.array([[-1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    assert np.isnan(np.asarray(jax.jit(jnp.linalg.cholesky)(a))[np.tril_indices(3)]).all()


def test_cho_solve_gradient_matches_finite_difference():
    a = jnp.asarray(_spd(np.random.default_rng(1), 1, 4)[0], jnp.float32)

    def loss(scale):
        return jnp.sum(jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a * scale), jnp.ones(4)))

    grad = float(jax.grad(loss)(1.0))
    eps = 1e-2
    fd = (float(loss(1.0 + eps)) - float(loss(1.0 - eps))) / (2 * eps)
    assert grad == pytest.approx(fd, rel=1e-2)


@pytest.mark.parametrize("task_name", ["drawer", "pick_place", "stack", "peg_insert"])
def test_batched_mjx_step_holds_no_lapack_call(task_name):
    from mujoco import mjx

    from recovla_jax.sim.env import TaskEnv
    from recovla_jax.tasks import get_task

    sys = TaskEnv(get_task(task_name)).sys
    data = jax.vmap(lambda _: mjx.make_data(sys))(jnp.arange(4))
    batched_step = jax.vmap(mjx.step, in_axes=(None, 0))
    assert "cholesky" in str(jax.make_jaxpr(batched_step)(sys, data))  # MJX does factor matrices
    assert "lapack" not in jax.jit(batched_step).lower(sys, data).as_text()


def test_large_matrices_keep_lapack_and_say_so():
    n = MAX_LOOPED_SIZE + 1
    with pytest.warns(RuntimeWarning, match="LAPACK"):
        hlo = jax.jit(jax.vmap(jnp.linalg.cholesky)).lower(jnp.tile(jnp.eye(n), (2, 1, 1))).as_text()
    assert "lapack" in hlo


def test_empty_matrices_still_work():
    assert jax.jit(jnp.linalg.cholesky)(jnp.zeros((3, 0, 0))).shape == (3, 0, 0)

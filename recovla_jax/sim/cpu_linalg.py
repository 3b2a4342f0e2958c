"""Small batched Cholesky factorizations and triangular solves on CPU without LAPACK custom calls.

Why: MJX factors the tiny (nv x nv) mass matrix and, with the Newton solver, the constraint Hessian with
`jax.scipy.linalg.cho_factor`/`cho_solve`. Under `vmap`, jaxlib lowers those on CPU to its LAPACK FFI
kernels (`lapack_?potrf_ffi`, `lapack_?trsm_ffi`), which split the batch across XLA's intra-op thread
pool (`ParallelBatchMap`) and then block a pool thread on a counter until the pieces finish. When XLA
runs two such kernels at once on a 2-core machine, both pool threads wait on work that no free thread is
left to run: the process sits at 0% CPU forever. gdb on a stuck run showed exactly that (both
`tf_XLAEigen` threads in `CholeskyFactorization::Kernel -> ParallelBatchMap -> BlockingCounter::Wait`).
It hung BC demo collection, failure-bank chunks and the 1024-env benchmark intermittently, and no XLA
flag cured it.

JAX's portable lowering (`stablehlo.cholesky`, which XLA's CPU compiler expands into a while loop) avoids
LAPACK but measured 7x slower than LAPACK on 4096 12x12 systems here. So for real matrices up to
`MAX_LOOPED_SIZE` this module lowers both primitives to a `fori_loop` over columns (rows for the solve)
whose body is one batched matrix-vector product plus elementwise ops: no LAPACK custom call (XLA emits
these tiny matvecs itself; the 1024-env drawer benchmark, which hung every time under LAPACK, ran through).
Measured on 2 cores (`jit(vmap(10 x mjx.step))`, compile / steps per second):

| scene (nv), envs      | unrolled at trace time | loop, elementwise body | loop, matvec body (this) |
|-----------------------|------------------------|------------------------|--------------------------|
| pick_place (16), 256  | 47 s / 14.8k           | 28 s / 7.7k            | 30 s / 17.6k             |
| drawer (13), 1024     | 43 s / 38.9k           | 31 s / 18.9k           | 26 s / 39.4k             |
| stack (26), 256       | 70 s / 1.8k            | 32-53 s / 2.3k         | 29 s / 4.3k              |

Larger or complex matrices keep jaxlib's LAPACK lowering; GPU and TPU lowerings are untouched. No
library offers this switch, and choosing a primitive's lowering needs `jax._src` (no public hook exists).
Set RECOVLA_CPU_LINALG=lapack to keep jaxlib's lowering (for comparisons). If a JAX upgrade moves those
internals, importing still works but warns (and the LAPACK lowering, with its deadlock, stays);
`tests/test_cpu_linalg.py` then fails. It also checks results against NumPy and that no task's batched
MJX step holds a LAPACK call.
"""

from __future__ import annotations

import os
import warnings

import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_LOOPED_SIZE = 32
_APPLIED = False


def use_looped_linalg_on_cpu() -> None:
    """Idempotently route small real `cholesky` / `triangular_solve` on CPU to the looped lowerings."""
    global _APPLIED
    if _APPLIED or os.environ.get("RECOVLA_CPU_LINALG", "looped") == "lapack":
        return
    try:
        from jax._src.interpreters import mlir
        from jax._src.lax import linalg

        lapack_cholesky = linalg._cholesky_cpu_lowering
        lapack_triangular_solve = linalg._triangular_solve_cpu_lower
        cholesky_p, triangular_solve_p = linalg.cholesky_p, linalg.triangular_solve_p
    except (ImportError, AttributeError) as err:  # a JAX upgrade moved the internals: run, but say so
        warnings.warn(f"recovla_jax.sim.cpu_linalg: cannot replace the LAPACK lowering on this JAX ({err}); batched "
                      "MJX programs may deadlock on CPU", RuntimeWarning, stacklevel=2)
        _APPLIED = True
        return
    looped_cholesky_rule = mlir.lower_fun(looped_cholesky, multiple_results=False)
    looped_solve_rule = mlir.lower_fun(looped_triangular_solve, multiple_results=False)

    def cholesky_rule(ctx, operand):
        if _is_small_real(ctx.avals_in[0]):
            return looped_cholesky_rule(ctx, operand)
        _warn_lapack(ctx.avals_in[0])
        return lapack_cholesky(ctx, operand)

    def triangular_solve_rule(ctx, a, b, **params):
        if _is_small_real(ctx.avals_in[0]) and _is_small_real(ctx.avals_in[1], max_size=None):
            return looped_solve_rule(ctx, a, b, **params)
        _warn_lapack(ctx.avals_in[0])
        return lapack_triangular_solve(ctx, a, b, **params)

    mlir.register_lowering(cholesky_p, cholesky_rule, platform="cpu")
    mlir.register_lowering(triangular_solve_p, triangular_solve_rule, platform="cpu")
    _APPLIED = True


def _is_small_real(aval, max_size: int | None = MAX_LOOPED_SIZE) -> bool:
    if not jnp.issubdtype(aval.dtype, np.floating) or aval.shape[-1] == 0:
        return False
    return max_size is None or aval.shape[-1] <= max_size


def _warn_lapack(aval) -> None:
    """A batched LAPACK call is what deadlocked; say when a program still gets one (e.g. a scene with nv > 32)."""
    if len(aval.shape) > 2 and aval.shape[-1] > 0:
        warnings.warn(f"recovla_jax.sim.cpu_linalg: batched {aval.str_short()} matrices use jaxlib's LAPACK kernels "
                      f"(only real ones up to {MAX_LOOPED_SIZE}x{MAX_LOOPED_SIZE} are looped); large batched CPU "
                      "programs may deadlock", RuntimeWarning, stacklevel=2)


def looped_cholesky(a: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of the symmetric (..., n, n) `a`, reading only its lower triangle.

    One `fori_loop` step per column j: L[:, j] = (a[:, j] - L[:, :j] L[j, :j]) / sqrt(pivot); columns not yet
    computed are zero, so the full row product is the partial one. Where a pivot is not positive the whole
    factor is NaN, as jaxlib's LAPACK lowering makes it when potrf reports failure; a NaN pivot counts as
    failure too (LAPACK may leave the columns before it finite).
    """
    n, col_axis = a.shape[-1], a.ndim - 1
    rows = jnp.arange(n)

    def add_column(j, carry):
        factor, ok = carry
        column = lax.dynamic_index_in_dim(a, j, axis=col_axis, keepdims=False)
        row_j = lax.dynamic_index_in_dim(factor, j, axis=col_axis - 1, keepdims=False)
        column = column - jnp.einsum("...ik,...k->...i", factor, row_j)
        pivot = lax.dynamic_index_in_dim(column, j, axis=col_axis - 1, keepdims=True)
        column = jnp.where(rows >= j, column / jnp.sqrt(pivot), 0.0).astype(a.dtype)
        factor = lax.dynamic_update_index_in_dim(factor, column[..., None], j, axis=col_axis)
        return factor, ok & (pivot[..., 0] > 0)  # False for NaN pivots too

    factor, ok = lax.fori_loop(0, n, add_column, (jnp.zeros_like(a), jnp.ones(a.shape[:-2], bool)))
    return jnp.where(ok[..., None, None], factor, jnp.nan).astype(a.dtype)


def looped_triangular_solve(
    a: jnp.ndarray,
    b: jnp.ndarray,
    *,
    left_side: bool,
    lower: bool,
    transpose_a: bool,
    conjugate_a: bool,
    unit_diagonal: bool,
) -> jnp.ndarray:
    """Solve op(a) x = b (left side) or x op(a) = b by substitution; same contract as `lax.linalg.triangular_solve`.

    One `fori_loop` step per row of x; rows not yet solved are zero, so the full row product is the partial one.
    """
    del conjugate_a  # real matrices only (see _is_small_real)
    tri = _triangle(a, lower)
    if transpose_a:
        tri, lower = jnp.swapaxes(tri, -1, -2), not lower
    if not left_side:  # x A = b  <=>  A^T x^T = b^T
        tri, lower, b = jnp.swapaxes(tri, -1, -2), not lower, jnp.swapaxes(b, -1, -2)
    n, row_axis = tri.shape[-1], tri.ndim - 2
    # The diagonal stays out of the product: with unit_diagonal it must not be read at all (a NaN there
    # must not leak, as in LAPACK), and an infinite one must give x = b / inf = 0, not inf * 0.
    off_diagonal = jnp.tril(tri, -1) if lower else jnp.triu(tri, 1)
    diagonal = jnp.diagonal(tri, axis1=-2, axis2=-1)

    def solve_row(step, x):
        i = step if lower else n - 1 - step
        tri_row = lax.dynamic_index_in_dim(off_diagonal, i, axis=row_axis, keepdims=False)
        row = lax.dynamic_index_in_dim(b, i, axis=row_axis, keepdims=False) - jnp.einsum("...k,...km->...m", tri_row, x)
        if not unit_diagonal:
            row = row / lax.dynamic_index_in_dim(diagonal, i, axis=row_axis, keepdims=True)
        return lax.dynamic_update_index_in_dim(x, row[..., None, :], i, axis=row_axis)

    x = lax.fori_loop(0, n, solve_row, jnp.zeros_like(b))
    return jnp.swapaxes(x, -1, -2) if not left_side else x


def _triangle(a: jnp.ndarray, lower: bool) -> jnp.ndarray:
    """Only the named triangle of `a` is referenced, as in LAPACK."""
    return jnp.tril(a) if lower else jnp.triu(a)

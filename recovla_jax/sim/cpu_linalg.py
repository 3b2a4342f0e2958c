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
`MAX_UNROLLED_SIZE` this module lowers both primitives to a column-by-column loop unrolled at trace time:
every step is an elementwise op over the whole batch, which XLA fuses into plain vectorized loops with no
custom call and nothing that can block. Larger or complex matrices keep jaxlib's LAPACK lowering; GPU and
TPU lowerings are untouched. No library offers this switch, and choosing a primitive's lowering needs
`jax._src` (no public hook exists). Set RECOVLA_CPU_LINALG=lapack to keep jaxlib's lowering (for
comparisons). If a JAX upgrade moves those internals, importing still works but warns (and the LAPACK
lowering, with its deadlock, stays); `tests/test_cpu_linalg.py` then fails. It also checks results
against NumPy and that no task's batched MJX step holds a LAPACK call.
"""

from __future__ import annotations

import os
import warnings

import jax.numpy as jnp
import numpy as np

MAX_UNROLLED_SIZE = 32
_APPLIED = False


def use_unrolled_linalg_on_cpu() -> None:
    """Idempotently route small real `cholesky` / `triangular_solve` on CPU to the unrolled lowerings."""
    global _APPLIED
    if _APPLIED or os.environ.get("RECOVLA_CPU_LINALG", "unrolled") == "lapack":
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
    unrolled_cholesky = mlir.lower_fun(unrolled_cholesky_lower, multiple_results=False)
    unrolled_solve = mlir.lower_fun(unrolled_triangular_solve, multiple_results=False)

    def cholesky_rule(ctx, operand):
        if _is_small_real(ctx.avals_in[0]):
            return unrolled_cholesky(ctx, operand)
        _warn_lapack(ctx.avals_in[0])
        return lapack_cholesky(ctx, operand)

    def triangular_solve_rule(ctx, a, b, **params):
        if _is_small_real(ctx.avals_in[0]) and _is_small_real(ctx.avals_in[1], max_size=None):
            return unrolled_solve(ctx, a, b, **params)
        _warn_lapack(ctx.avals_in[0])
        return lapack_triangular_solve(ctx, a, b, **params)

    mlir.register_lowering(cholesky_p, cholesky_rule, platform="cpu")
    mlir.register_lowering(triangular_solve_p, triangular_solve_rule, platform="cpu")
    _APPLIED = True


def _is_small_real(aval, max_size: int | None = MAX_UNROLLED_SIZE) -> bool:
    if not jnp.issubdtype(aval.dtype, np.floating) or aval.shape[-1] == 0:
        return False
    return max_size is None or aval.shape[-1] <= max_size


def _warn_lapack(aval) -> None:
    """A batched LAPACK call is what deadlocked; say when a program still gets one (e.g. a scene with nv > 32)."""
    if len(aval.shape) > 2 and aval.shape[-1] > 0:
        warnings.warn(f"recovla_jax.sim.cpu_linalg: batched {aval.str_short()} matrices use jaxlib's LAPACK kernels "
                      f"(only real ones up to {MAX_UNROLLED_SIZE}x{MAX_UNROLLED_SIZE} are unrolled); large batched CPU "
                      "programs may deadlock", RuntimeWarning, stacklevel=2)


def unrolled_cholesky_lower(a: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of the symmetric (..., n, n) `a`, reading only its lower triangle.

    Where a pivot is not positive the whole factor is NaN, as jaxlib's LAPACK lowering makes it when potrf
    reports failure; a NaN pivot counts as failure too (LAPACK may leave the columns before it finite).
    """
    n = a.shape[-1]
    columns: list[jnp.ndarray] = []  # column j of L, shape (..., n), zero above the diagonal
    pivots: list[jnp.ndarray] = []
    rows = jnp.arange(n)
    for j in range(n):
        col = a[..., :, j]
        for k in range(j):
            col = col - columns[k] * columns[k][..., j : j + 1]
        pivots.append(col[..., j])
        diagonal = jnp.sqrt(col[..., j : j + 1])
        columns.append(jnp.where(rows >= j, col / diagonal, 0.0).astype(a.dtype))
    factor = jnp.stack(columns, axis=-1)
    ok = jnp.all(jnp.stack(pivots, axis=-1) > 0, axis=-1)[..., None, None]  # False for NaN pivots too
    return jnp.where(ok, factor, jnp.nan).astype(a.dtype)


def unrolled_triangular_solve(
    a: jnp.ndarray,
    b: jnp.ndarray,
    *,
    left_side: bool,
    lower: bool,
    transpose_a: bool,
    conjugate_a: bool,
    unit_diagonal: bool,
) -> jnp.ndarray:
    """Solve op(a) x = b (left side) or x op(a) = b by substitution; same contract as `lax.linalg.triangular_solve`."""
    del conjugate_a  # real matrices only (see _is_small_real)
    tri = _triangle(a, lower)
    if transpose_a:
        tri, lower = jnp.swapaxes(tri, -1, -2), not lower
    if not left_side:  # x A = b  <=>  A^T x^T = b^T
        tri, lower, b = jnp.swapaxes(tri, -1, -2), not lower, jnp.swapaxes(b, -1, -2)
    n = tri.shape[-1]
    order = range(n) if lower else range(n - 1, -1, -1)
    solved: dict[int, jnp.ndarray] = {}
    for i in order:
        row = b[..., i, :]
        for k, x_k in solved.items():
            row = row - tri[..., i, k : k + 1] * x_k
        solved[i] = row if unit_diagonal else row / tri[..., i, i : i + 1]
    x = jnp.stack([solved[i] for i in range(n)], axis=-2)
    return jnp.swapaxes(x, -1, -2) if not left_side else x


def _triangle(a: jnp.ndarray, lower: bool) -> jnp.ndarray:
    """Only the named triangle of `a` is referenced, as in LAPACK."""
    return jnp.tril(a) if lower else jnp.triu(a)

"""MJX simulation: environment base on brax's Env API, gripper control, domain randomization."""

from recovla_jax.sim.cpu_linalg import use_looped_linalg_on_cpu

# Before any MJX program is lowered: LAPACK's batched Cholesky deadlocks XLA's CPU thread pool (see module).
use_looped_linalg_on_cpu()

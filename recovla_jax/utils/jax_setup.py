"""Process-wide JAX settings every entry point applies before it compiles anything.

Why: MJX programs take tens of seconds to compile on CPU, so the persistent compilation cache turns a
second run's start-up from minutes into seconds - provided PYTHONHASHSEED is fixed: with Python's random
hash seed some set/dict order leaks into the traced program and its cache key changes in every process
(measured: two identical processes, train step 31 s cold then 10 s from the cache with PYTHONHASHSEED=0;
with a random seed every process missed; `benchmarks/train_throughput --cache=cold`, whose second process is
invoked differently, still misses - not yet explained). `dev.py` sets it;
`warn_if_hash_seed_random()` tells users who run the modules directly; and PPO is sensitive to TF32 matmuls on Ampere/Ada
GPUs, so matmul precision defaults to "highest" (override with JAX_DEFAULT_MATMUL_PRECISION).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax

DEFAULT_CACHE_DIR = Path(os.environ.get("RECOVLA_CACHE_DIR", Path.home() / ".cache" / "recovla-jax"))


def configure_jax(cache_dir: Path | None = None) -> Path:
    """Turn on the persistent compilation cache and the default matmul precision; return the cache dir."""
    cache = Path(cache_dir or DEFAULT_CACHE_DIR) / "xla"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if "JAX_DEFAULT_MATMUL_PRECISION" not in os.environ:
        jax.config.update("jax_default_matmul_precision", "highest")
    return cache


def hash_seed_is_random(env: Mapping[str, str] = os.environ) -> bool:
    """True when `env` leaves Python's string hashing randomized, which makes every process's cache keys differ."""
    return env.get("PYTHONHASHSEED") in (None, "", "random")


def warn_if_hash_seed_random(log=print) -> None:
    """Say when PYTHONHASHSEED is unset: the persistent compilation cache then misses in every new process."""
    if hash_seed_is_random():
        log("note: PYTHONHASHSEED is not set, so JAX's persistent compilation cache cannot be reused by the next "
            "run (set PYTHONHASHSEED=0, as `python3 dev.py ...` does)")


def device_summary() -> dict:
    """Which accelerator this process sees, for run records and benchmark JSON."""
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


def on_accelerator() -> bool:
    """True on GPU/TPU, where defaults scale up."""
    return jax.devices()[0].platform in ("gpu", "cuda", "rocm", "tpu")


def package_versions() -> dict:
    """Versions that decide numerical results, recorded with every artefact."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("jax", "jaxlib", "mujoco", "mujoco-mjx", "brax", "flax", "optax", "orbax-checkpoint"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out

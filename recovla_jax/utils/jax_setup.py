"""Process-wide JAX settings every entry point applies before it compiles anything.

Why: MJX programs take tens of seconds to compile on CPU, so the persistent compilation cache should turn a
second run's start-up from minutes into seconds (measured 2026-11-25: the PPO training step still misses it in
a new process - its cache key differs between processes; see benchmarks/train_throughput.py --cache=cold); and PPO is sensitive to TF32 matmuls on Ampere/Ada
GPUs, so matmul precision defaults to "highest" (override with JAX_DEFAULT_MATMUL_PRECISION).
"""

from __future__ import annotations

import os
from pathlib import Path

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

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
import platform
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
        "host_cpu": host_cpu(),
    }


# CPU features XLA's CPU backend generates different code for (vector width, matrix units, fp16/bf16 arithmetic).
XLA_RELEVANT_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile",
                          "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def host_cpu(cpuinfo: str | None = None) -> dict:
    """The host CPU's model and the instruction-set extensions XLA compiles for, recorded with runs, banks and
    cloned bases. Why: XLA compiles for the host's vector and matrix extensions, so CPU results need not repeat bit
    for bit on another kind of CPU. The stack base cloned under one cache key (same code, seeds and pinned wheels)
    scored 94.5% nominal in sessions 9, 19 and 29 and 87.1% in session 34 on an AVX-512/AMX Xeon (docs/experiments.md);
    the earlier machines' CPUs were not recorded, the likeliest difference. `cpuinfo` is the text of /proc/cpuinfo
    (read when None; empty off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"machine": platform.machine(),
            "model": fields.get("model name") or fields.get("Model") or platform.processor() or "unknown",
            "isa": [f for f in XLA_RELEVANT_CPU_FLAGS if f in flags],
            "logical_cpus": os.cpu_count()}


def on_accelerator() -> bool:
    """True on GPU/TPU, where defaults scale up."""
    return jax.devices()[0].platform in ("gpu", "cuda", "rocm", "tpu")


def package_versions() -> dict:
    """Versions that decide numerical results, recorded with every artefact."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("jax", "jaxlib", "numpy", "mujoco", "mujoco-mjx", "brax", "flax", "optax", "orbax-checkpoint"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out

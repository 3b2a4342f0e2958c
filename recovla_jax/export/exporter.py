"""Export a training run's policies to ONNX with a validated manifest (see `experiments/export.py`).

Per run: the frozen base policy (`base_policy.onnx`: obs -> action) and each residual recovery policy
(`recovery_<name>.onnx`: residual_obs -> residual, action; see `export.functions`), each written only
after onnxruntime matches JAX on >= `n_random` random and >= `n_bank` failure-bank observations, then
`manifest.json` (`runtime.manifest.ExportManifest`) with sha256 of every file, written last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from recovla_jax.export import functions
from recovla_jax.export.onnx_io import DEFAULT_OPSET, DEFAULT_TOLERANCE, to_onnx_model, write_verified
from recovla_jax.export.run_reader import (RunDirError, dense_shapes, load_bundles, read_bank, read_base_params,
                                           read_residual_checkpoint)
from recovla_jax.runtime.gripper import ACTION_NAMES
from recovla_jax.runtime.manifest import MANIFEST_NAME, ExportManifest, save_manifest, sha256_file

BASE_FILE = "base_policy.onnx"
WORKSPACE_FIELD = "tcp_pos"
WORKSPACE_MARGIN = 0.10


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("recovla-jax", "jax", "jaxlib", "flax", "jax2onnx", "onnx", "onnxruntime", "mujoco", "mujoco-mjx", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def random_observations(rng: np.random.Generator, mean: np.ndarray, std: np.ndarray, n: int) -> np.ndarray:
    """Gaussians at 0.5x, 1x and 3x the spread of the model's own input normalisation (mean, std).

    Why not wider: two float32 implementations of a 256-wide MLP (XLA vs onnxruntime's Gemm) sum in a
    different order; on one run's base policy the max |difference| was 2e-6 at 0.5 sigma, 7e-6 at 3 sigma
    and 1.3e-5 at 5 sigma. Rows near the statistics are where the flat 1e-5 contract applies (input scale
    ~1, see onnx_io), so they are what catches a wrong graph; the bank set covers the far-out states.
    """
    scale = rng.choice([0.5, 1.0, 3.0], size=(n, 1))
    return (np.asarray(mean, np.float64)
            + np.asarray(std, np.float64) * scale * rng.standard_normal((n, len(mean)))).astype(np.float32)


def normalised_magnitude(mean: np.ndarray | None, std: np.ndarray | None,
                         clip: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Per row, the largest |(x - mean) / std| the network sees (clipped as the network clips); the parity
    check's input scale. Without statistics the raw |x|."""
    def scale(x: np.ndarray) -> np.ndarray:
        z = np.abs(np.asarray(x, np.float64)) if mean is None else np.abs(
            (np.asarray(x, np.float64) - np.asarray(mean, np.float64)) / np.asarray(std, np.float64))
        return (np.minimum(z, clip) if clip is not None else z).max(axis=1)
    return scale


def tile_bank(obs: np.ndarray, n: int, rng: np.random.Generator, jitter: float = 0.002) -> np.ndarray:
    """At least `n` rows: the bank states, then copies jittered by `jitter` (N(0, jitter) on every float)."""
    reps = max(1, math.ceil(n / len(obs)))
    rows = [obs] + [obs + rng.normal(0.0, jitter, obs.shape) for _ in range(reps - 1)]
    return np.concatenate(rows).astype(np.float32)


def descriptor_features(bundle: dict, mode: str) -> list[float]:
    """[one-hot over the task's failure modes, reward weights of `mode`]: the residual obs' descriptor block."""
    modes = bundle["failure_modes"]
    i = modes.index(mode)
    return [float(j == i) for j in range(len(modes))] + [float(w) for w in bundle["weights_per_mode"][i]]


def workspace_box(task, bank_obs: np.ndarray) -> dict:
    """TCP box: everything the task says the gripper may need to reach from the bank's states, plus a margin."""
    pts, source = task.workspace_points(np.asarray(bank_obs, np.float64))
    lo = pts.min(0) - WORKSPACE_MARGIN
    hi = pts.max(0) + WORKSPACE_MARGIN
    lo[2] = max(lo[2], 0.02)  # stay above the floor
    return {"low": lo.astype(float).round(4).tolist(), "high": hi.astype(float).round(4).tolist(),
            "source": f"failure-bank {source} +- {WORKSPACE_MARGIN} m, z >= 0.02"}


def policy_stall_windows(given: dict[str, int], policies: list[str]) -> dict[str, int]:
    """Policy -> stall window from `given` ("*" applies to every policy, a named policy overrides it); names that are
    not among `policies`, and windows below 1, are refused with what is valid."""
    unknown = sorted(set(given) - set(policies) - {"*"})
    if unknown:
        raise RunDirError(f"--recovery-stall-steps names policy {unknown}, which is not exported; policies: {policies} "
                          "(or give N alone for all of them)")
    bad = {k: v for k, v in given.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise RunDirError(f"--recovery-stall-steps must be whole numbers of steps >= 1, got {bad}")
    return {p: given[p] if p in given else given["*"] for p in policies if p in given or "*" in given}


def earlier_stall_windows(manifest_path: Path, policies: list[str]) -> tuple[dict[str, int], dict | None]:
    """({policy: stall window}, its `runtime_tuning` record) from an earlier manifest at `manifest_path`, for the
    policies exported again: a re-export keeps what `experiments.tune_runtime` (or a hand-set window) chose instead
    of silently falling back to the runtime's default. ({}, None) when there is no readable earlier manifest."""
    try:
        old = json.loads(Path(manifest_path).read_text())
    except (OSError, ValueError):
        return {}, None
    windows = {str(p["name"]): int(p["recovery_stall_steps"]) for p in old.get("recovery_policies") or []
               if isinstance(p, dict) and p.get("name") in policies and p.get("recovery_stall_steps")}
    tuning = (old.get("source") or {}).get("runtime_tuning")
    return windows, tuning if isinstance(tuning, dict) else None


def export_run(run_dir: Path, out_dir: Path | None = None, policies: list[str] | None = None, step: int | None = None,
               n_random: int = 1000, n_bank: int = 1000, tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET,
               seed: int = 0, log: Callable[[str], None] = print,
               tamper: Callable[[str, object], None] | None = None,
               recovery_stall_steps: dict[str, int] | None = None) -> ExportManifest:
    """Export `run_dir` into `out_dir` (default run_dir/export); returns the validated manifest.

    `step` picks a checkpoint step for every exported policy (default: each policy's latest). The task's scene
    (its current asset) is copied to `scene.xml` for simulated robots; a run whose failure-bank states do not
    fit it (another qpos size: trained on an older scene) is refused.
    `recovery_stall_steps` maps a policy name (or "*": every policy) to its runtime stall window in the manifest;
    a name that is not exported is refused before anything is written. Windows of an earlier export in `out_dir`
    are kept for the policies that `recovery_stall_steps` does not name.
    Every file is written into a staging folder beside `out_dir` and moved in only once every check passed, the
    manifest last: a failed export leaves an earlier one in `out_dir` whole (its sha256s still match its files).
    `tamper(name, onnx_model)` is a test hook called on each model before verification.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "export"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-staging-", dir=out_dir.parent))
    try:
        manifest = _write_export(run_dir, stage, out_dir / MANIFEST_NAME, policies, step, n_random, n_bank, tolerance,
                                 opset, seed, log, tamper, recovery_stall_steps)
        out_dir.mkdir(exist_ok=True)
        publish_staged(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(f"wrote {out_dir / MANIFEST_NAME} ({len(manifest.recovery_policies)} recovery policies + base)")
    return manifest


def publish_staged(stage: Path, out_dir: Path) -> None:
    """Move a finished export's files from `stage` into `out_dir`, the manifest last (each move is atomic)."""
    files = sorted(f for f in stage.iterdir() if f.is_file())
    for f in sorted(files, key=lambda f: f.name == MANIFEST_NAME):
        os.replace(f, out_dir / f.name)


def _write_export(run_dir: Path, out_dir: Path, earlier_manifest: Path, policies: list[str] | None, step: int | None,
                  n_random: int, n_bank: int, tolerance: float, opset: int, seed: int, log: Callable[[str], None],
                  tamper: Callable[[str, object], None] | None,
                  recovery_stall_steps: dict[str, int] | None) -> ExportManifest:
    """`export_run`'s checks and writes, into the staging folder `out_dir`; `earlier_manifest` is the export it
    replaces (for the stall windows it keeps)."""
    bundles = load_bundles(run_dir)
    if policies:
        missing = [p for p in policies if p not in bundles]
        if missing:
            raise RunDirError(f"no policy {missing} in {run_dir}/policies; available: {sorted(bundles)}")
        bundles = {p: bundles[p] for p in policies}
    windows = policy_stall_windows(recovery_stall_steps or {}, list(bundles))
    kept, tuning = earlier_stall_windows(earlier_manifest, list(bundles))
    kept = {name: w for name, w in kept.items() if name not in windows}
    if kept:
        log(f"stall windows kept from the earlier export {earlier_manifest}: {kept} (--recovery-stall-steps changes them)")
        windows = {**kept, **windows}
    first = next(iter(bundles.values()))
    task = first["task"]
    obs_size, act = first["task_obs_size"], first["action"]
    rng = np.random.default_rng(seed)
    bank = read_bank(run_dir)
    bank_obs = np.asarray(bank.arrays["obs"], np.float32)
    if bank_obs.shape[-1] != obs_size:
        raise RunDirError(f"bank observations have {bank_obs.shape[-1]} floats, the policies take {obs_size}")
    from recovla_jax.tasks import get_task
    from recovla_jax.tasks.base import ASSETS

    task_obj = get_task(task, first["task_config"])
    scene = ASSETS / task_obj.xml_file
    nq, bank_nq = task_obj.mj_model.nq, bank.arrays["qpos"].shape[-1]
    if bank_nq != nq:
        raise RunDirError(f"the run's bank states have {bank_nq} qpos but the current scene {scene} has {nq}: the run was "
                          "trained on another version of the scene; re-train it")
    # Read every checkpoint first, so a missing step or a mismatched network fails before anything is written.
    ckpts = {}
    for name, b in bundles.items():
        ckpt = read_residual_checkpoint(run_dir / b["checkpoint_dir"], step)
        shapes = dense_shapes(ckpt.actor_params)
        want = [b["residual_obs_size"], *b["actor"]["hidden"], act["size"]]
        if [s[0] for s in shapes] + [shapes[-1][1]] != want:
            raise RunDirError(f"policy {name}: checkpoint actor layers {shapes} do not match the bundle ({want})")
        ckpts[name] = ckpt

    # ------------------------------------------------------------------ base policy
    base_params, base_meta = read_base_params(run_dir)
    bp = first["base_policy"]
    if dense_shapes(base_params["net"])[0][0] != obs_size:
        raise RunDirError(f"base policy takes {dense_shapes(base_params['net'])[0][0]} floats, "
                          f"the task observation has {obs_size}")
    base_fn = functions.base_policy_fn(base_params, tuple(bp["hidden"]), act["size"])
    import jax

    base_jit = jax.jit(base_fn)
    base_ref = lambda x: {"action": np.asarray(base_jit(x))}  # noqa: E731
    base_checks = {
        "random": random_observations(rng, base_params["obs_mean"], base_params["obs_std"], n_random),
        "bank": tile_bank(bank_obs, n_bank, rng),
    }
    log(f"base policy [bold]{bp['name']}[/]: exporting ({dense_shapes(base_params['net'])}) ...")
    model = to_onnx_model(base_fn, obs_size, "obs", ["action"], "base_policy", opset)
    if tamper:
        tamper("base_policy", model)
    base_scale = normalised_magnitude(base_params["obs_mean"], base_params["obs_std"])
    base_parity = write_verified(model, out_dir / BASE_FILE, base_ref, base_checks, tolerance, base_scale)
    _log_parity(log, BASE_FILE, base_parity)
    base_entry = {
        "name": bp["name"], "file": BASE_FILE, "sha256": sha256_file(out_dir / BASE_FILE),
        "formula": f"action = {bp['formula']}, activation {bp['activation']}, hidden {bp['hidden']}",
        "inputs": [{"name": "obs", "shape": ["batch", obs_size], "description": "task observation (observation layout)"}],
        "outputs": [{"name": "action", "shape": ["batch", act["size"]], "description": "base action in [-1, 1]"}],
        "parity": {"tolerance": tolerance, "passed": True, **base_parity},
    }

    # ------------------------------------------------------------------ recovery policies
    entries = []
    for name, b in bundles.items():
        ckpt = ckpts[name]
        res_size = b["residual_obs_size"]
        mean, std = (ckpt.mean, ckpt.std) if b["normalize_obs"] else (None, None)
        alpha, max_abs = float(b["alpha"]), float(b["normalizer_max_abs"])
        fn = functions.residual_export_fn(ckpt.actor_params, mean, std, max_abs, alpha, obs_size, act["size"],
                                          act["low"], act["high"], b["actor"]["activation"])
        ref = functions.residual_reference_fn(ckpt.actor_params, mean, std, max_abs, alpha, obs_size,
                                              tuple(b["actor"]["hidden"]), act["size"])
        feats = {m: descriptor_features(b, m) for m in b["modes"]}
        task_obs = tile_bank(bank_obs, n_bank, rng)
        modes_idx = np.resize(np.asarray(bank.arrays["mode"]), len(task_obs))
        rows = []
        for i, o in enumerate(task_obs):
            own = bank.modes[int(modes_idx[i])]
            rows.append(feats[own] if own in feats else feats[b["modes"][i % len(b["modes"])]])
        bank_res = np.concatenate([task_obs, np.asarray(base_jit(task_obs)), np.asarray(rows, np.float32)], axis=1)
        stat_mean = mean if mean is not None else bank_res.mean(0)
        stat_std = std if std is not None else bank_res.std(0)
        checks = {"random": random_observations(rng, stat_mean, stat_std, n_random), "bank": bank_res.astype(np.float32)}
        fname = f"recovery_{name}.onnx"
        log(f"recovery policy [bold]{name}[/] (modes {b['modes']}, checkpoint step {ckpt.step}, alpha {alpha}): exporting ...")
        model = to_onnx_model(fn, res_size, "residual_obs", ["residual", "action"], f"recovery_{name}", opset)
        if tamper:
            tamper(name, model)
        scale = normalised_magnitude(mean, std, max_abs if mean is not None else None)  # the network clips normalised inputs only
        exact = functions.residual_float64_fn(ckpt.actor_params, mean, std, max_abs, alpha, obs_size, act["size"],
                                              act["low"], act["high"], b["actor"]["activation"])
        par = write_verified(model, out_dir / fname, ref, checks, tolerance, scale, exact)
        _log_parity(log, fname, par)
        entries.append({
            "name": name, "file": fname, "sha256": sha256_file(out_dir / fname), "modes": list(b["modes"]),
            "alpha": alpha, "hand_back": bool(b.get("hand_back", False)), "hand_back_delay": int(b.get("hand_back_delay", 0)),
            "recovery_stall_steps": windows.get(name),
            "checkpoint_step": ckpt.step,
            "descriptors": b.get("descriptors", {}),
            "descriptor_features": feats,
            "formula": (f"residual = {alpha} * tanh(actor(clip((x - mean) / std, -{max_abs}, {max_abs}))); "
                        f"action = clip(x[{obs_size}:{obs_size + act['size']}] + residual, {act['low']}, {act['high']}); "
                        f"x = residual observation; actor: Dense {b['actor']['hidden']} {b['actor']['activation']}"
                        + ("" if b["normalize_obs"] else " (no normalisation)")),
            "inputs": [{"name": "residual_obs", "shape": ["batch", res_size],
                        "description": "[task obs, base action, mode one-hot, reward weights] (residual_observation layout)"}],
            "outputs": [
                {"name": "residual", "shape": ["batch", act["size"]],
                 "description": "alpha-scaled residual, add to the base action"},
                {"name": "action", "shape": ["batch", act["size"]],
                 "description": "clip(base action + residual, low, high): the executed action"},
            ],
            "parity": {"tolerance": tolerance, "passed": True, **par},
        })

    # ------------------------------------------------------------------ manifest
    cfg = first["task_config"]
    (out_dir / "scene.xml").write_bytes(scene.read_bytes())
    if task_obj.obs_layout() != [f for f in first["residual_obs_layout"] if f["start"] < obs_size]:
        raise RunDirError(f"the bundle's observation layout differs from task {task!r}'s current one: "
                          "re-train or export with the matching code")
    ctrl_dt = float(first["ctrl_dt"])
    source = {"run_dir": str(run_dir.absolute()),
              "base_policy_meta": {k: base_meta.get(k) for k in ("name", "cache_key", "nominal_success")}}
    if kept and tuning is not None:
        source["runtime_tuning"] = {**tuning, "kept_for": sorted(kept)}
    manifest = ExportManifest.model_validate({
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "task": task,
        "instruction": task_obj.instruction,
        "task_config": cfg,
        "failure_modes": list(first["failure_modes"]),
        "control": {"ctrl_dt": ctrl_dt, "rate_hz": 1.0 / ctrl_dt, "sim_substeps": task_obj.n_substeps,
                    "episode_length": int(first["episode_length"])},
        "observation": {"size": obs_size, "fields": [f for f in first["residual_obs_layout"] if f["start"] < obs_size]},
        "residual_observation": {"size": first["residual_obs_size"], "fields": first["residual_obs_layout"]},
        "action": {"size": act["size"], "names": list(ACTION_NAMES), "low": act["low"], "high": act["high"],
                   "meaning": act["meaning"], "max_translation": act["max_translation"], "max_rotation": act["max_rotation"]},
        "progress": task_obj.progress_spec(),
        "safety": {"workspace": workspace_box(task_obj, bank_obs), "workspace_field": WORKSPACE_FIELD,
                   "max_residual_norm": float(max(e["alpha"] for e in entries) * math.sqrt(act["size"])) if entries else 1.0},
        "base_policy": base_entry,
        "recovery_policies": entries,
        "scene": {"file": "scene.xml", "sha256": sha256_file(out_dir / "scene.xml"), "source": str(scene.absolute())},
        "opset": opset,
        "versions": _versions(),
    })
    save_manifest(manifest, out_dir)
    return manifest


def _log_parity(log: Callable[[str], None], fname: str, par: dict) -> None:
    errs = ", ".join(f"{k} {v:.2e}" for k, v in par["max_abs_error"].items())
    counts = ", ".join(f"{k} n={v} (input scale up to {par['max_input_scale'][k]:.3g})" for k, v in par["counts"].items())
    rounding = par.get("float32_rounding")
    rounded = "" if not rounding else f"; JAX float32 vs float64 up to {max(rounding.values()):.2e}"
    log(f"  [green]parity ok[/] {fname}: max |ONNX - JAX| {errs} ({counts}{rounded})")

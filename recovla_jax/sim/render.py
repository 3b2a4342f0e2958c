"""Headless camera frames of saved states (native MuJoCo + OpenGL), as RGB arrays or PNG bytes.

Why native: MJX's batched renderer needs MuJoCo Warp on a GPU; a VLM needs a few frames per failure,
which `mujoco.Renderer` draws in about 0.1 s each on a CPU through Mesa's EGL. `MUJOCO_GL` must be chosen
before mujoco first loads its GL layer, so this module (and the `recovla_jax` package) default it to
`egl` on Linux when unset; if no backend can open a context, `RenderBackendError` says which were tried.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import imageio.v3 as iio  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from recovla_jax.sim.native import forward, load_state  # noqa: E402

DEFAULT_CAMERAS: tuple[str, ...] = ("front", "wrist")
DEFAULT_SIZE: tuple[int, int] = (320, 240)  # width, height
_PROBE = ("import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>');"
          " r = mujoco.Renderer(m, 8, 8); r.update_scene(mujoco.MjData(m)); r.render(); r.close()")


class RenderBackendError(RuntimeError):
    """No OpenGL backend could open a headless context; the message lists what was tried and the fix."""


def _probe_backends(exclude: str) -> dict[str, str]:
    """Try each other Linux backend in a fresh process (MUJOCO_GL is fixed once mujoco is imported)."""
    results = {}
    for backend in ("egl", "osmesa", "glfw"):
        if backend == exclude:
            continue
        env = {**os.environ, "MUJOCO_GL": backend}
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results[backend] = "works" if proc.returncode == 0 else f"fails ({tail[:160]})"
        except (OSError, subprocess.TimeoutExpired) as err:
            results[backend] = f"fails ({type(err).__name__})"
    return results


def _backend_error(err: Exception) -> RenderBackendError:
    current = os.environ.get("MUJOCO_GL", "") or "(unset: glfw)"
    others = _probe_backends(current)
    tried = "; ".join([f"MUJOCO_GL={current}: fails ({type(err).__name__}: {str(err)[:200]})"]
                      + [f"MUJOCO_GL={b}: {r}" for b, r in others.items()])
    working = [b for b, r in others.items() if r == "works"]
    fix = (f"set MUJOCO_GL={working[0]} before starting Python" if working else
           "install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri) and set MUJOCO_GL=egl, "
           "or install OSMesa (libosmesa6) and set MUJOCO_GL=osmesa, or run with a display and MUJOCO_GL=glfw")
    return RenderBackendError(f"cannot open a headless OpenGL context for MuJoCo rendering. Tried: {tried}. Fix: {fix}.")


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image; deterministic, so equal frames give equal cache keys."""
    buf = io.BytesIO()
    iio.imwrite(buf, np.ascontiguousarray(rgb, np.uint8), extension=".png")
    return buf.getvalue()


class FrameRenderer:
    """One OpenGL context and scratch `MjData` for a model; renders saved states from named cameras.

    Use as a context manager (or call `close()`): the GL context is freed deterministically instead of in
    a finalizer at interpreter exit.
    """

    def __init__(self, model: mujoco.MjModel, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                 cameras: Sequence[str] = DEFAULT_CAMERAS):
        names = {model.camera(i).name for i in range(model.ncam)}
        missing = [c for c in cameras if c not in names]
        if missing:
            raise ValueError(f"camera(s) {missing} not in the scene; its cameras: {sorted(names)}")
        self.model, self.cameras = model, tuple(cameras)
        self.data = mujoco.MjData(model)
        try:
            self._renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as err:  # noqa: BLE001 - any GL failure gets the same actionable message
            raise _backend_error(err) from err

    def render(self, state: Mapping[str, np.ndarray], cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """camera name -> (H, W, 3) uint8 RGB frame of `state` (a bank row: qpos, qvel, mocap_pos, ...)."""
        load_state(self.model, self.data, state)
        forward(self.model, self.data)
        out = {}
        for cam in cameras or self.cameras:
            self._renderer.update_scene(self.data, camera=cam)
            out[cam] = self._renderer.render().copy()
        return out

    def render_png(self, state: Mapping[str, np.ndarray], cameras: Sequence[str] | None = None) -> dict[str, bytes]:
        """camera name -> PNG bytes of `state`."""
        return {cam: encode_png(rgb) for cam, rgb in self.render(state, cameras).items()}

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "FrameRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bank_row(bank, index: int) -> dict[str, np.ndarray]:
    """The saved physics state of one bank entry (the fields `FrameRenderer.render` reads)."""
    return {k: bank.arrays[k][index] for k in ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl") if k in bank.arrays}


def render_bank_frames(task, bank, bank_dir: Path, indices: Sequence[int] | None = None, num: int = 12, seed: int = 0,
                       cameras: Sequence[str] = DEFAULT_CAMERAS, width: int = DEFAULT_SIZE[0],
                       height: int = DEFAULT_SIZE[1]) -> list[Path]:
    """Write `bank_dir/frames/<index>_<camera>.png` for `indices` (default: `num` random states, seeded)."""
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(bank), size=min(num, len(bank)), replace=False))
    out_dir = Path(bank_dir) / "frames"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with FrameRenderer(task.mj_model, width, height, cameras) as renderer:
        for i in indices:
            for cam, png in renderer.render_png(bank_row(bank, int(i))).items():
                path = out_dir / f"{int(i)}_{cam}.png"
                path.write_bytes(png)
                paths.append(path)
    return paths

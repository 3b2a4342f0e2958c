"""recovla-jax: teach a frozen robot policy to recover from its own failures (ReCoVLA on MuJoCo MJX)."""

import os as _os
import sys as _sys

# MuJoCo picks its OpenGL backend when it is first imported; default to headless EGL on Linux (any
# recovla_jax import runs this before mujoco loads). Set MUJOCO_GL yourself to choose another.
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"

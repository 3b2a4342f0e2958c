"""Static checks over the whole repository with ruff (rules in pyproject.toml's [tool.ruff]): unused imports and names,
undefined names, syntax errors and lines over 130 characters fail the suite, as a reviewer would."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_in_the_repository():
    assert importlib.util.find_spec("ruff") is not None, "ruff is missing: install the test extras (python3 dev.py test does)"
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"ruff check failed:\n{done.stdout}{done.stderr}"

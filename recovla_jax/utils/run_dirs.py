"""Where a run directory keeps what later stages read (JAX-free, so the robot-side evaluation can use it)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path


class RunDirError(ValueError):
    """A run directory lacks what a stage needs."""


def bank_dir(run_dir: Path) -> Path:
    """The run's failure bank: RUN/bank, or the `--bank-dir` its config.json names (a run that reused a bank)."""
    run_dir = Path(run_dir)
    if (run_dir / "bank" / "bank.npz").exists():
        return run_dir / "bank"
    cfg_path = run_dir / "config.json"
    named = json.loads(cfg_path.read_text()).get("bank_dir") if cfg_path.exists() else None
    if named and (Path(named) / "bank.npz").exists():
        return Path(named)
    raise RunDirError(f"{run_dir} has no bank/bank.npz" + (f" and its --bank-dir {named} has none either" if named else ""))


def write_run_record(record: dict, run_dir: Path | str, out: str | None, name: str) -> Path:
    """Write a run diagnosis's JSON record to `out`, or to RUN/`name` when `out` is unset; returns the path."""
    path = Path(out) if out else Path(run_dir) / name
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def keep_previous(path: Path) -> Path | None:
    """Move an existing `path` aside as NAME.<its mtime>.SUFFIX before it is rewritten (a resumed run re-evaluates
    and rewrites results.json; the first results, with their wall time, stay); returns where it went, or None."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():  # "_" sorts after ".", so the names list in time order
        kept = path.with_name(f"{path.stem}.{stamp}_{n}{path.suffix}")
        n += 1
    path.rename(kept)
    return kept


def replace_keeping_previous(path: Path, text: str) -> Path | None:
    """Write `text` to `path`, keeping an existing file as `keep_previous` does; returns where that went, or None.

    The new text is written to a temporary file first, so a failed write (full disk, a kill) leaves the earlier file
    where it was rather than neither."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    kept = keep_previous(path)
    os.replace(tmp, path)
    return kept

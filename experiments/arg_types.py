"""argparse value types shared by the entry points: each refuses a bad value with the range it accepts.

Kept free of JAX imports so that `--help` stays fast."""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def non_negative_float(text: str) -> float:
    """A finite float >= 0; nan, inf, negatives and non-numbers are refused."""
    value = _number(text)
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite value >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _number(text)
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def int_range(text: str) -> tuple[int, int]:
    """'lo,hi' with whole numbers 0 <= lo <= hi."""
    parts = text.split(",")
    try:
        lo, hi = (int(v) for v in parts)
    except ValueError:
        lo, hi = -1, -1
    if len(parts) != 2 or not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi' with whole numbers 0 <= lo <= hi, e.g. 0,1; got {text!r}")
    return lo, hi


def layer_widths(text: str) -> tuple[int, ...]:
    """Comma-separated hidden-layer widths, each a whole number >= 1 (e.g. "512,512,512")."""
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths >= 1 such as 512,512,512, got {text!r}") from None

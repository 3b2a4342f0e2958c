"""Wilson score intervals for success rates: every result table reports n and a 95% CI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# The targets (issue 6), read by the main job's verdict and the report's "Targets" section.
MJX_RECOVERY_TARGET = 0.8  # ReCoVLA's average recovery success over every task x mode cell, in MJX
NATIVE_RECOVERY_TARGET = 0.75  # the same, zero-shot in native MuJoCo
MIN_TRIALS_PER_CELL = 200  # held-out trials each cell needs for its verdict


@dataclass(frozen=True)
class SuccessRate:
    successes: int
    trials: int
    rate: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.rate:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] (n={self.trials})"


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> SuccessRate:
    """Wilson score interval (95% by default); well-behaved at 0% and 100%, unlike the normal interval."""
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return SuccessRate(successes, trials, p, low, high)

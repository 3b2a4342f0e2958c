"""The PPO progress bar shared by the main job and the baselines: steps/s, and return and success over the
most recent finished episodes with their count.

Each iteration's metrics hold the means over the episodes that ended in it, often none or one (stack: 128
envs x 300-step episodes end about one episode per iteration). Showing the last iteration's mean read
"success 100.0%" for a policy whose only early episode was a lucky short one and that then never succeeded
(held-out 0.8%); the bar now pools the last `window` finished episodes and says how many that is. For the same reason a
run's training success over time is pooled by episodes (`success_by_phase`), never averaged over iterations.
"""

from __future__ import annotations

import sys
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RecentEpisodes:
    """Episode-count-weighted means of return and success over at least the last `window` finished episodes."""

    def __init__(self, window: int = 256):
        self.window = window
        self.batches: deque[tuple[float, float, float]] = deque()  # (episodes, sum of returns, successes)

    def add(self, metrics: dict) -> None:
        n = float(metrics.get("episode/count", 0.0) or 0.0)
        if n <= 0:
            return
        self.batches.append((n, n * float(metrics["episode/sum_reward"]), n * float(metrics["episode/success"])))
        while len(self.batches) > 1 and self.count - self.batches[0][0] >= self.window:
            self.batches.popleft()

    @property
    def count(self) -> int:
        return int(sum(b[0] for b in self.batches))

    def means(self) -> tuple[float, float]:
        """(mean return, success rate); NaN before any episode has finished."""
        n = sum(b[0] for b in self.batches)
        if n == 0:
            return float("nan"), float("nan")
        return sum(b[1] for b in self.batches) / n, sum(b[2] for b in self.batches) / n


def success_by_phase(curve: list[dict], phases: int = 10) -> list[dict]:
    """Training success pooled over the episodes that ended in each of `phases` equal, consecutive slices of a
    policy's logged iterations: [{"iterations": [first, last], "episodes": n, "success": rate or None,
    "mean_return": mean episode return or None}].

    Why episode-weighted: most iterations of a 300-step task end zero or one episode, so a plain mean over
    iterations lets a lone early success count as much as a hundred later episodes. Session 31 concluded from
    such a mean that PPO lowered wrong_order's training success; weighted by episodes it had raised it.
    """
    if phases < 1:
        raise ValueError(f"phases={phases} must be >= 1")
    if not curve:
        return []
    slices = min(phases, len(curve))
    bounds = [round(i * len(curve) / slices) for i in range(slices + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        pool = RecentEpisodes(window=sys.maxsize)  # a window no slice fills: every episode of the slice counts
        for metrics in curve[lo:hi]:
            pool.add(metrics)
        mean_return, success = pool.means()
        out.append({"iterations": [int(curve[lo]["iteration"]), int(curve[hi - 1]["iteration"])],
                    "episodes": pool.count, "success": success if pool.count else None,
                    "mean_return": mean_return if pool.count else None})
    return out


class TrainingProgress:
    """`with TrainingProgress(console, name, iterations) as bar: ... bar.update(it, metrics)`."""

    def __init__(self, console: Console, name: str, total: int, disable: bool = False, window: int = 256):
        self.progress = Progress(
            TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>8.0f} steps/s"), TextColumn("return {task.fields[ret]:7.2f}"),
            TextColumn("success {task.fields[succ]:5.1%} of last {task.fields[n]} episodes"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=disable,
        )
        self.total = total
        self.recent = RecentEpisodes(window)

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        self.bar = self.progress.add_task("train", total=self.total, sps=0.0, ret=float("nan"), succ=float("nan"), n=0)
        return self

    def update(self, iteration: int, metrics: dict) -> None:
        self.recent.add(metrics)
        ret, succ = self.recent.means()
        self.progress.update(self.bar, completed=iteration, sps=metrics["sps"], ret=ret, succ=succ, n=self.recent.count)

    def replay(self, logged: list[dict]) -> None:
        """Start a resumed policy's bar where its logged iterations left it (position, recent episodes) instead of
        at 0 of N with no episodes: a policy already finished runs no iteration and would show only that."""
        for metrics in logged:
            self.update(int(metrics["iteration"]), metrics)

    def __exit__(self, *exc) -> bool:
        self.progress.stop()
        return False

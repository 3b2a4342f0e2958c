"""The training progress bar pools recent finished episodes instead of showing one iteration's few."""

import math

import pytest
from rich.console import Console

from experiments.training_progress import RecentEpisodes, TrainingProgress, success_by_phase


def _m(count, ret=0.0, success=0.0):
    return {"episode/count": count, "episode/sum_reward": ret, "episode/success": success, "sps": 1.0}


def test_recent_episodes_weight_by_count_and_forget_beyond_the_window():
    recent = RecentEpisodes(window=10)
    assert math.isnan(recent.means()[1]) and recent.count == 0
    recent.add(_m(1, ret=12.0, success=1.0))  # one lucky early episode ...
    recent.add({"episode/count": 0, "episode/sum_reward": float("nan"), "episode/success": float("nan"), "sps": 1.0})
    recent.add(_m(3, ret=-5.0, success=0.0))  # ... then failures: not "100%" any more
    ret, succ = recent.means()
    assert recent.count == 4 and succ == 0.25 and ret == (12.0 - 15.0) / 4
    for _ in range(5):
        recent.add(_m(4, success=0.5))
    assert recent.means()[1] == 0.5 and 10 <= recent.count < 14  # the early batches dropped out


def test_training_progress_bar_shows_the_pooled_rate():
    console = Console(record=True, width=200, force_terminal=False)
    with TrainingProgress(console, "mode", total=3) as bar:
        bar.update(1, _m(1, success=1.0))
        bar.update(2, _m(3, success=0.0))
        task = bar.progress.tasks[0]
        assert task.fields["succ"] == 0.25 and task.fields["n"] == 4 and task.completed == 2


def test_a_resumed_bar_starts_where_the_logged_iterations_left_it():
    console = Console(record=True, width=200, force_terminal=False)
    logged = [{"iteration": i, **_m(2, success=1.0 if i == 2 else 0.0)} for i in (1, 2)]
    with TrainingProgress(console, "mode", total=3) as bar:
        bar.replay(logged)
        task = bar.progress.tasks[0]
        assert task.completed == 2 and task.fields["n"] == 4 and task.fields["succ"] == 0.5


def test_success_by_phase_pools_episodes_not_iterations():
    """A lone early success must not weigh as much as many later failures (session 31's unweighted mean did)."""
    nan = float("nan")
    curve = [{"iteration": i + 1, **_m(n, ret=r, success=s)} for i, (n, r, s) in enumerate(
        [(1, 10.0, 1.0), (0, nan, nan), (9, -1.0, 0.0), (2, 3.0, 0.5), (2, 1.0, 0.5), (0, nan, nan)])]
    first, second = success_by_phase(curve, phases=2)
    assert first == {"iterations": [1, 3], "episodes": 10, "success": 0.1, "mean_return": 0.1}  # not 0.5 and 4.5
    assert second == {"iterations": [4, 6], "episodes": 4, "success": 0.5, "mean_return": 2.0}
    assert [p["iterations"] for p in success_by_phase(curve, phases=10)] == [[i, i] for i in range(1, 7)]
    assert success_by_phase(curve, phases=10)[1] == {"iterations": [2, 2], "episodes": 0, "success": None, "mean_return": None}
    assert success_by_phase([], phases=3) == []
    with pytest.raises(ValueError, match="phases=0"):
        success_by_phase(curve, phases=0)


def test_the_summary_shows_each_policy_s_training_success_by_slice():
    from experiments.summary import training_success_lines

    assert training_success_lines({}) == [] and training_success_lines({"a": []}) == []
    curve = [{"iteration": i + 1, **_m(1, success=float(i >= 2))} for i in range(4)]
    lines = training_success_lines({"a": curve, "b": curve[:1]}, phases=2)
    assert lines[0] == "## Training success over the run"
    assert "| policy | slice 1 | slice 2 |" in lines
    assert "| a | 0.0% (2) | 100.0% (2) |" in lines and "| b | 0.0% (1) |  |" in lines

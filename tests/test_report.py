"""Results table (experiments.report) on fixture runs, the benchmark suite's commands, the full reward mask,
and the fine-tuned-base baseline starting exactly at the BC base."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recovla_jax.evaluation.stats import wilson

MODES = ("missed_handle", "slipped_off", "misaligned_gripper")


def _w(s: int, n: int) -> dict:
    return wilson(s, n).as_dict()


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _main_run(root: Path, name: str, *, selector: str, mask: str = "selected", resolved: str | None = None,
              recovla: dict, base: dict, counts: dict | None = None, seed: int | None = None) -> Path:
    run = root / name
    _write(run / "config.json", {"task": "drawer", "selector": selector, "mask": mask, "policy": "per-mode", "num_envs": 128,
                                 "timesteps": 250_000, "device": {"platform": "cpu", "device_count": 1},
                                 **({} if seed is None else {"seed": seed})})
    counts = counts or {m: {"train": 30, "heldout": 20} for m in MODES}
    _write(run / "results.json", {"task": "drawer", "selector": resolved or selector, "mask": mask, "policy": "per-mode",
                                  "modes": {m: {"base": base[m], "recovla": recovla[m]} for m in recovla},
                                  "bank": {"counts": counts}})
    return run


@pytest.fixture()
def fixture_runs(tmp_path):
    base = {m: _w(1, 20) for m in MODES}
    main = _main_run(tmp_path, "recovla", selector="auto", resolved="rules",
                     recovla={"missed_handle": _w(15, 20), "slipped_off": _w(10, 20), "misaligned_gripper": _w(20, 20)},
                     base=base)
    budget = {"num_envs": 128, "timesteps_per_policy": 250_000, "budget_matches_run": True}
    _write(main / "baselines" / "finetune" / "results.json", {
        "method": "finetune", "budget": budget, "device": {"platform": "cpu"},
        "modes": {m: {"policy": _w(5, 20)} for m in MODES},
        "expert_warm_start": {"rounds": 24, "extra_env_steps": 1_628_160, "skipped": [], "fit_rejected": ["slipped_off"]},
        "nominal": {"policy": _w(40, 96), "base": _w(90, 96)}})
    _write(main / "baselines" / "residual-full" / "results.json", {
        "method": "residual-full", "device": {"platform": "cpu"},
        "budget": {**budget, "num_envs": 32, "timesteps_per_policy": 20_000, "budget_matches_run": False,
                   "run_num_envs": 128, "run_timesteps_per_policy": 250_000},
        "modes": {m: {"policy": _w(8, 20), "base": base[m]} for m in MODES},
        "base_matches_run": {m: True for m in MODES},
        "nominal": {"policy": _w(85, 96), "base": _w(90, 96)}})
    _write(main / "baselines" / "nominal" / "results.json", {"nominal": {"policy": _w(88, 96), "base": _w(91, 96)}})
    _write(main / "sim2sim" / "sim2sim.json", {
        "modes": {m: {"n": 10, "heldout_states": 20, "native": {"base": _w(0, 10), "policy": _w(6, 10),
                                                                "runtime_oracle": _w(7, 10), "runtime_rules": _w(5, 10)}}
                  for m in MODES},
        "nominal": {"n": 20, "native": {"base": _w(19, 20), "runtime_oracle": _w(18, 20), "runtime_rules": _w(17, 20)}}})
    # oracle run: two modes only, and a different base on one of them (a note, not an error)
    oracle_base = {**base, "slipped_off": _w(3, 20)}
    oracle = _main_run(tmp_path, "oracle", selector="oracle",
                       recovla={"missed_handle": _w(18, 20), "slipped_off": _w(12, 20)}, base=oracle_base)
    unfinished = tmp_path / "unfinished"
    _write(unfinished / "config.json", {"task": "drawer", "selector": "auto"})
    return [main, oracle, unfinished]


def test_infer_run_method():
    from experiments.report import infer_run_method

    assert infer_run_method({"selector": "auto", "mask": "selected"}, {"selector": "gemini"}) == (
        "recovla-gemini", "ReCoVLA (gemini)")
    assert infer_run_method({"selector": "oracle"}, None)[0] == "oracle-mask"
    assert infer_run_method({"selector": "oracle", "mask": "wrong"}, {"selector": "oracle"})[0] == "wrong-mask"
    assert infer_run_method({"selector": "rules", "policy": "conditioned"}, None)[0] == "recovla-rules-conditioned"
    assert infer_run_method({"selector": "rules", "hand_back": True, "expert_path_starts": 0.5}, None) == (
        "recovla-rules-handback-paths", "ReCoVLA (rules), hand-back, expert-path starts")
    assert infer_run_method({"selector": "rules", "expert_path_starts": 0.0}, None)[0] == "recovla-rules"
    assert infer_run_method({"selector": "rules", "hand_back": True, "desync_episodes": True}, None) == (
        "recovla-rules-handback-desync", "ReCoVLA (rules), hand-back, desynced episodes")


def test_report_builder_on_fixture_runs(tmp_path, fixture_runs):
    from experiments.report import CSV_FIELDS, DASH, main

    rep = main(["--runs", *map(str, fixture_runs), "--out", str(tmp_path / "report")])
    assert rep["methods"] == ["base", "finetune", "residual-full", "recovla-rules", "oracle-mask", "wrong-mask", "sim2sim"]
    text = rep["markdown"].read_text()
    lines = {ln.split("|")[3].strip(): [c.strip() for c in ln.split("|")[4:-1]] for ln in text.splitlines()
             if ln.startswith("| ") and ln.count("|") > 8 and not ln.startswith("| task")}
    # row missed_handle: base, finetune, residual-full, ReCoVLA, oracle, wrong (missing), sim2sim (runtime_rules arm)
    mh = lines["missed_handle"]
    assert mh[0] == "5.0% [0.9, 23.6] n=20"
    assert mh[1].startswith("25.0% [") and mh[2].startswith("40.0% [") and mh[3].startswith("75.0% [")
    assert mh[4].startswith("90.0% [") and mh[5] == DASH and mh[6].startswith("50.0% [") and mh[6].endswith("n=10")
    assert lines["misaligned_gripper"][4] == DASH  # the oracle run has no result for this mode
    assert lines["misaligned_gripper"][3] == "100.0% [83.9, 100.0] n=20"
    avg = next(ln for ln in text.splitlines() if "short-horizon average" in ln).split("|")[4:-1]
    assert avg[3].strip() == "**75.0%**"  # (75 + 50 + 100) / 3
    assert avg[4].strip() == "**75.0%** (2/3 modes)"  # (90 + 60) / 2
    assert avg[5].strip() == DASH
    nominal = lines["*nominal, after training*"]
    assert nominal[0].startswith("94.8% [") and nominal[0].endswith("n=96")  # base from the run's nominal results
    assert nominal[1].startswith("41.7% [") and nominal[3].startswith("91.7% [") and nominal[4] == DASH
    assert nominal[6].startswith("85.0% [") and nominal[6].endswith("n=20")
    assert "ReCoVLA sim2sim (runtime_rules)" in text and "| fine-tuned base |" in text.replace("base alone | ", "")
    notes = "\n".join(rep["notes"])
    assert "unfinished: no results.json" in notes
    assert "slipped_off: base alone differs" in notes
    assert "budget different" in notes and "first 10 of 20" in notes
    # the fine-tuned base got its run's warm start, which its column's label does not say; residual-full had none
    assert ("drawer/fine-tuned base (" in notes and "expert warm start, 24 DAgger rounds, 1,628,160 env steps" in notes
            and "without it (as in the run): slipped_off" in notes)
    assert not any(n.startswith("drawer/residual, full reward") for n in rep["notes"])
    with rep["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    cell = next(r for r in rows if r["row"] == "slipped_off" and r["method"] == "recovla-rules")
    assert (int(cell["successes"]), int(cell["trials"]), float(cell["rate"])) == (10, 20, 0.5)
    assert cell["source"].endswith("recovla")
    assert not any(r["method"] == "wrong-mask" for r in rows)
    assert {r["kind"] for r in rows} == {"mode", "average", "nominal"}
    assert rep["png"].stat().st_size > 10_000


def test_the_sim2sim_column_is_the_shown_run_s_or_empty(tmp_path):
    """With two seeds where only the earlier one was exported and evaluated natively, the main table's sim2sim
    column (and the native target) must not show that other run's policies beside the shown run's MJX cells."""
    from experiments.report import build_report

    base = {m: _w(1, 20) for m in MODES}
    s0 = _main_run(tmp_path, "seed0", selector="rules", seed=0, base=base, recovla={m: _w(15, 20) for m in MODES})
    s1 = _main_run(tmp_path, "seed1", selector="rules", seed=1, base=base, recovla={m: _w(19, 20) for m in MODES})
    _write(s0 / "sim2sim" / "sim2sim.json", {"modes": {m: {"native": {"runtime_rules": _w(6, 10)}} for m in MODES},
                                              "nominal": {"native": {"runtime_rules": _w(9, 10)}},
                                              "config": {"monitor": {"policy_stall_steps": False, "release_on": "success"},
                                                         "dynamics": {"obs_noise_std": 0.0}}})
    rep = build_report([s0, s1], tmp_path / "r", plot=False)
    assert all("sim2sim" not in r["cells"] or r["cells"]["sim2sim"] is None for r in rep["rows"])
    assert rep["targets"]["recovla_native"] is None
    assert any(f"{s1}, the ReCoVLA run shown, has no sim2sim" in n for n in rep["notes"])
    shown = build_report([s1, s0], tmp_path / "r2", plot=False)  # s0 shown: its own sim2sim fills the column
    assert "report.png" not in shown["text"]  # no plot written, none embedded
    # an ablation's settings (here a fixed stall window and no observation noise) are named beside the column
    note = next(n for n in shown["notes"] if "ran with settings other than today's defaults" in n)
    assert "policy_stall_steps=false (default true)" in note and "obs_noise_std=0.0 (default 0.001)" in note
    assert "release_on" not in note
    assert shown["targets"]["recovla_native"]["rate"] == pytest.approx(0.6)


def test_report_targets_over_every_task(tmp_path, fixture_runs):
    """Across families: an all-tasks average row, and the issue's targets over every task x mode cell, each task
    counted through the column of its own ReCoVLA run."""
    from experiments.report import build_report

    peg = tmp_path / "peg"
    _write(peg / "config.json", {"task": "peg_insert", "selector": "auto", "mask": "selected", "policy": "per-mode",
                                 "expert_warm_start": 24, "num_envs": 128, "timesteps": 1_000_000})
    _write(peg / "results.json", {"task": "peg_insert", "selector": "rules", "mask": "selected", "policy": "per-mode",
                                  "modes": {"lateral_misalignment": {"base": _w(2, 10), "recovla": _w(9, 10)},
                                            "tilted_in_grasp": {"base": _w(0, 10), "recovla": _w(6, 10)}}})
    rep = build_report([*fixture_runs, peg], tmp_path / "r", plot=False)
    tg = rep["targets"]
    # peg's warm-started run shares drawer's column (no task has both), and a note says which cells were warm-started
    assert tg["columns"] == {"drawer": "ReCoVLA (rules)", "peg_insert": "ReCoVLA (rules)"}
    assert "ReCoVLA (rules): the cells of peg_insert come from runs with the expert warm start" in "\n".join(rep["notes"])
    assert tg["recovla_mjx"]["rate"] == pytest.approx((0.75 + 0.5 + 1.0 + 0.9 + 0.6) / 5) and tg["recovla_mjx"]["modes"] == 5
    assert not tg["mjx_met"]
    assert (tg["recovla_native"]["modes"], tg["finetune_mjx"]["modes"]) == (3, 3)  # peg has neither
    assert not tg["native_met"]  # 50% and two cells missing
    overall = next(r for r in rep["rows"] if r["kind"] == "overall")
    assert overall["cells"]["recovla-rules"]["of"] == 5 and overall["cells"]["recovla-rules"]["modes"] == 5
    assert "recovla-rules-warm" not in rep["methods"]
    text = rep["text"]
    assert "| **all tasks average** |" in text
    assert "ReCoVLA in MJX: **75.0%** over 5 of 5 cells (target 80%: not met, a cell has 10 trials where 200 are needed)" in text
    # a mean over every cell above the target is still not met while a cell has fewer than 200 trials (each run's
    # own verdict, pipeline.target_verdict, has the same rule)
    from experiments.report import _mean_rate, _met

    small = _mean_rate([_w(19, 20), _w(190, 200)])
    assert small["min_trials"] == 20 and not _met(small, 2, 0.8)
    assert _met(_mean_rate([_w(190, 200), _w(200, 210)]), 2, 0.8)
    assert "over 3 of 5 cells (target 75%: not met, cells missing, a cell has 10 trials where 200 are needed)" in text
    # one family only: no overall row, and targets still over its cells
    single = build_report(fixture_runs, tmp_path / "s", plot=False)
    assert not any(r["kind"] == "overall" for r in single["rows"]) and single["targets"]["recovla_mjx"]["modes"] == 3


def test_report_across_seeds(tmp_path):
    """Two seeds of ReCoVLA on one bank: the main table keeps the last run given, the seed section shows both with
    their mean and range, the targets add a line averaged over seeds, and the CSV carries each seed's row."""
    from experiments.report import build_report

    base = {m: _w(1, 20) for m in MODES}
    s0 = _main_run(tmp_path, "seed0", selector="rules", seed=0, base=base,
                   recovla={"missed_handle": _w(15, 20), "slipped_off": _w(10, 20), "misaligned_gripper": _w(20, 20)})
    _write(s0 / "baselines" / "finetune" / "results.json", {
        "method": "finetune", "budget": {"num_envs": 128, "timesteps_per_policy": 250_000}, "device": {"platform": "cpu"},
        "modes": {m: {"policy": _w(5, 20)} for m in MODES}})
    s1 = _main_run(tmp_path, "seed1", selector="rules", seed=1, base={m: _w(2, 20) for m in MODES},
                   recovla={"missed_handle": _w(19, 20), "slipped_off": _w(12, 20)})
    for run, ok in ((s0, 6), (s1, 9)):
        _write(run / "sim2sim" / "sim2sim.json", {"modes": {"missed_handle": {"native": {"runtime_rules": _w(ok, 10)}}}})
    rep = build_report([s0, s1], tmp_path / "r", plot=False)
    mh = next(r for r in rep["rows"] if r["row"] == "missed_handle")
    assert mh["cells"]["recovla-rules"]["rate"] == 0.95  # the last run given
    assert mh["cells"]["sim2sim"]["rate"] == 0.9  # its sim-to-sim too, like the targets' column
    assert mh["cells"]["base"]["successes"] == 2  # and its base alone: the same evaluation draws as the cell beside it
    rows = {(r["kind"], r["row"], r["method"]): r for r in rep["seeds"] if r["method"] == "sim2sim"}
    assert rows[("seed", "missed_handle", "sim2sim")]["range"] == pytest.approx(0.3)
    rows = {(r["kind"], r["row"]): r for r in rep["seeds"] if r["method"] != "sim2sim"}
    assert {r["method"] for r in rep["seeds"]} == {"recovla-rules", "sim2sim"}  # the fine-tuned base has one seed only
    seeded = rows[("seed", "missed_handle")]
    assert seeded["mean"] == pytest.approx(0.85) and seeded["range"] == pytest.approx(0.2) and seeded["runs"] == 2
    assert rows[("seed", "misaligned_gripper")]["runs"] == 1 and rows[("seed", "misaligned_gripper")]["range"] is None
    avg = rows[("seed-average", "drawer average")]
    assert avg["seeds"][0]["rate"] == pytest.approx(0.75) and avg["seeds"][1] is None and avg["runs"] == 1
    assert avg["range"] is None
    # targets: per cell, the mean over the seeds that ran it: (0.85 + 0.55 + 1.0) / 3
    assert rep["targets"]["recovla_mjx_seed_mean"]["rate"] == pytest.approx(0.8)
    # one note per column that another seed's run replaces (not one per row)
    assert f"drawer/ReCoVLA (rules): the main table shows {s1} (seed 1); {s0} (seed 0) under Across seeds" in rep["notes"]
    assert not any(" replaces " in n and "ReCoVLA" in n for n in rep["notes"])
    text = rep["text"]
    assert "## Across seeds" in text and "| seed 0 | seed 1 | mean of seeds | range (max - min) |" in text
    assert "| drawer | ReCoVLA (rules) | missed_handle | 75.0% [" in text and "| 85.0% | 20.0 pp |" in text
    assert "| — | 100.0% | — |" in text  # misaligned_gripper: one seed, no range
    assert "each cell averaged over its seeds (drawer; the others one run): **80.0%** over 3 of 3 cells" in text
    with rep["csv"].open() as f:
        seed_csv = [r for r in csv.DictReader(f) if r["kind"] == "seed" and r["method"] == "recovla-rules"]
    assert sorted((r["row"], r["seed"]) for r in seed_csv) == [
        ("misaligned_gripper", "0"), ("missed_handle", "0"), ("missed_handle", "1"), ("slipped_off", "0"), ("slipped_off", "1")]
    # one seed per method: no section, no extra target line
    single = build_report([s0], tmp_path / "one", plot=False)
    assert single["seeds"] == [] and "Across seeds" not in single["text"] and single["targets"]["recovla_mjx_seed_mean"] is None


def test_main_job_verdict_asks_for_the_targets_trial_count():
    """The main job's verdict and the report read the same targets; a cell under 200 held-out trials fails the
    verdict even at a high average."""
    from experiments.pipeline import target_verdict
    from recovla_jax.evaluation.stats import MIN_TRIALS_PER_CELL, MJX_RECOVERY_TARGET

    modes = {"a": {"recovla": _w(190, 200)}, "b": {"recovla": _w(170, 200)}}
    assert target_verdict(modes, 0.9)["met"] and not target_verdict(modes, 0.79)["met"]
    modes["c"] = {"recovla": _w(99, 100)}
    v = target_verdict(modes, 0.9)
    assert v["average_met"] and not v["met"] and v["cells_below_min_trials"] == {"c": 100}
    assert (v["average_recovery"], v["min_trials_per_cell"]) == (MJX_RECOVERY_TARGET, MIN_TRIALS_PER_CELL)


def test_report_sim2sim_arm_choice(tmp_path, fixture_runs):
    from experiments.report import build_report

    rep = build_report(fixture_runs[:1], tmp_path / "r", sim2sim_arm="policy", plot=False)
    row = next(r for r in rep["rows"] if r["row"] == "missed_handle")
    assert row["cells"]["sim2sim"]["rate"] == 0.6
    nominal = next(r for r in rep["rows"] if r["kind"] == "nominal")
    assert nominal["cells"]["sim2sim"]["rate"] == 0.85  # no 'policy' arm on nominal starts: runtime_rules
    assert any("uses arm runtime_rules" in n for n in rep["notes"])


def test_benchmark_suite_dry_run(tmp_path, capsys, monkeypatch):
    from experiments import benchmark_suite

    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("--dry-run must not run anything"))
    out = tmp_path / "bench"
    steps = benchmark_suite.main(["--dry-run", "--budget=reduced", "--tasks", "drawer", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "REDUCED budget" in printed and "not the results" in printed
    cmds = [" ".join(s.argv) for s in steps]
    assert all(c in printed for c in (s.shell(benchmark_suite.sys.executable) for s in steps))
    bank = out / "drawer" / "recovla" / "bank"
    train = [c for c in cmds if "experiments.train" in c]
    assert len(train) == 3 and all("--timesteps=40000" in c and "--num-envs=64" in c for c in train)
    assert "--selector=auto" in train[0] and "--bank-dir" not in train[0]
    assert "--selector=oracle" in train[1] and f"--bank-dir={bank}" in train[1]
    assert "--mask=wrong" in train[2] and f"--bank-dir={bank}" in train[2]
    for method in ("finetune", "residual-full"):
        assert any(f"--method={method}" in c and f"--run={out / 'drawer' / 'recovla'}" in c for c in cmds)
    assert sum("--method=nominal" in c for c in cmds) == 3
    assert any("experiments.export" in c for c in cmds)
    assert any("experiments.evaluate" in c and "--episodes-per-mode=20" in c for c in cmds)
    assert any("experiments.tune_runtime" in c and "--episodes-per-mode=20" in c for c in cmds)
    assert "experiments.report" in cmds[-1]
    assert all(str(out / "drawer" / r) in cmds[-1] for r in ("recovla", "oracle-mask", "wrong-mask"))
    # the exact order: runs before their consumers
    order = [s.name for s in steps]
    assert (order.index("drawer: ReCoVLA (selector auto)") < order.index("drawer: baseline finetune")
            < order.index("results table"))

    full = benchmark_suite.build_steps(["drawer"], out, "full")
    assert not any("--timesteps" in " ".join(s.argv) for s in full)
    assert not any("--hand-back" in " ".join(s.argv) for s in full)  # the drawer trains on the whole episode
    # per-task protocol: stack's three main-job runs are warm-started (the table's setting); --train-arg adds,
    # --no-task-args drops; the reduced budget keeps one warm-start round
    steps = benchmark_suite.main(["--dry-run", "--budget=full", "--tasks", "stack", "drawer", f"--out={out}",
                                  "--train-arg=drawer:--hand-back"])
    train = {s.name: " ".join(s.argv) for s in steps if "experiments.train" in s.argv}
    stack_runs = [c for c in train.values() if "--task=stack" in c]
    assert len(stack_runs) == 3 and all("--alpha=2" in c and "--expert-warm-start=3" in c for c in stack_runs)
    assert sum("--hand-back" in c for c in train.values()) == 3 and all("--task=drawer" in c for c in train.values()
                                                                          if "--hand-back" in c)
    reduced = benchmark_suite.main(["--dry-run", "--budget=reduced", "--tasks", "peg_insert", f"--out={out}"])
    assert all("--expert-warm-start=1" in " ".join(s.argv) for s in reduced if "experiments.train" in s.argv)
    # pick_place recovers over 160 steps (the scripted expert's missed_grasp recovery needs more than 80)
    pick = benchmark_suite.main(["--dry-run", "--budget=full", "--tasks", "pick_place", f"--out={out}"])
    assert all("--episode-length=160" in " ".join(s.argv) for s in pick if "experiments.train" in s.argv)
    # ... on a 4096-candidate bank with 8000-step warm-start fits; the reduced budget's own --candidates wins
    assert all("--candidates=4096" in s.argv and "--warm-start-fit-steps=8000" in s.argv for s in pick
               if "experiments.train" in s.argv)
    pick_reduced = [s.argv for s in benchmark_suite.main(["--dry-run", "--budget=reduced", "--tasks", "pick_place",
                                                          f"--out={out}"]) if "experiments.train" in s.argv]
    assert pick_reduced and all([a for a in argv if a.startswith("--candidates")] == ["--candidates=256"]
                                for argv in pick_reduced)
    # every task's sim-to-sim runs the runtime's defaults (a stalled recovery keeps driving: evaluate's default)
    sim2sim = {s.name: " ".join(s.argv) for s in steps if "experiments.evaluate" in s.argv}
    assert len(sim2sim) == 2 and not any("--stall-without-failure" in c for c in sim2sim.values())
    bare = benchmark_suite.main(["--dry-run", "--tasks", "stack", f"--out={out}", "--no-task-args"])
    assert not any("--expert-warm-start" in " ".join(s.argv) for s in bare)
    # ... and tells the main job to leave out its own task recipe, which would otherwise put them back
    assert all("--no-task-recipe" in s.argv for s in bare if "experiments.train" in s.argv)
    # every run's stall windows are chosen on its train states and written into its manifest before the sim-to-sim
    names = [s.name for s in pick]
    i_export, i_tune, i_eval = (names.index(f"pick_place: {what}") for what in
                                ("ONNX export of ReCoVLA", "runtime stall windows of ReCoVLA, chosen on train states",
                                 "zero-shot sim-to-sim of ReCoVLA"))
    assert i_export < i_tune < i_eval
    tune = pick[i_tune]
    assert tune.argv[:2] == ["-m", "experiments.tune_runtime"] and tune.done_marker.name == "tuning.json"
    assert not any("--recovery-stall-steps" in " ".join(s.argv) for s in [*pick, *steps])  # no hand-set window
    with pytest.raises(SystemExit, match="--train-arg: task.*peg_insert"):
        benchmark_suite.main(["--dry-run", "--tasks", "stack", f"--out={out}", "--train-arg=peg_insert:--alpha=2"])
    with pytest.raises(SystemExit):  # argparse: not TASK:--option
        benchmark_suite.main(["--dry-run", "--train-arg=stack"])
    # --extra-seeds: ReCoVLA, its fine-tuned base, export, stall windows and sim-to-sim again per seed, on --seed's bank
    seeded = benchmark_suite.main(["--dry-run", "--budget=full", "--tasks", "drawer", f"--out={out}", "--seed=3",
                                   "--extra-seeds", "4", "5"])
    by_name = {s.name: s.argv for s in seeded}
    run4 = out / "drawer" / "recovla-seed4"
    assert "--seed=4" in by_name["drawer: ReCoVLA, seed 4"] and "--seed=3" not in by_name["drawer: ReCoVLA, seed 4"]
    assert f"--bank-dir={out / 'drawer' / 'recovla' / 'bank'}" in by_name["drawer: ReCoVLA, seed 4"]
    assert f"--run-dir={run4}" in by_name["drawer: ReCoVLA, seed 4"]
    assert f"--run={run4}" in by_name["drawer: baseline finetune, seed 4"]
    assert "--seed=4" in by_name["drawer: zero-shot sim-to-sim of ReCoVLA, seed 4"]
    assert f"--run={run4}" in by_name["drawer: runtime stall windows of ReCoVLA, seed 4, chosen on train states"]
    assert f"--run={run4}" in by_name["drawer: ONNX export of ReCoVLA, seed 4"]
    report_runs = by_name["results table"]
    assert report_runs.index(str(run4)) < report_runs.index(str(out / "drawer" / "recovla"))  # --seed's run last
    assert len([n for n in by_name if "seed 5" in n]) == 5
    with pytest.raises(SystemExit, match="--extra-seeds.*\\[3\\]"):
        benchmark_suite.main(["--dry-run", "--tasks", "drawer", f"--out={out}", "--seed=3", "--extra-seeds", "3"])
    with pytest.raises(SystemExit, match="--extra-seeds.*\\[4\\]"):
        benchmark_suite.main(["--dry-run", "--tasks", "drawer", f"--out={out}", "--extra-seeds", "4", "4"])
    from recovla_jax.utils.jax_setup import on_accelerator

    assert benchmark_suite.resolve_budget("auto")[0] == ("full" if on_accelerator() else "reduced")


def test_a_warm_started_ablation_run_fills_its_method_s_column_unless_its_task_has_both(tmp_path, fixture_runs):
    """A warm-started oracle or wrong-mask run (what benchmark_suite makes for peg_insert) is a method variant: it
    never vanishes from a table whose fixed columns have no such key; it fills its method's column where its task
    has no other variant, and gets a column of its own beside a plain run of the same task."""
    import json

    from experiments.report import main

    wrong = _main_run(tmp_path, "wrong-warm", selector="auto", mask="wrong", resolved="rules",
                      recovla={"missed_handle": _w(13, 20)}, base={m: _w(1, 20) for m in MODES})
    config = json.loads((wrong / "config.json").read_text())
    _write(wrong / "config.json", {**config, "expert_warm_start": 2})
    rep = main(["--runs", *map(str, fixture_runs), str(wrong), "--out", str(tmp_path / "report"), "--no-plot"])
    # alone in its task, the variant fills the plain column (one column per method), and a note names its protocol
    assert rep["methods"] == ["base", "finetune", "residual-full", "recovla-rules", "oracle-mask", "wrong-mask", "sim2sim"]
    text = rep["markdown"].read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| task"))
    assert "| residual, wrong mask |" in header and "expert warm start |" not in header
    row = next(ln for ln in text.splitlines() if ln.startswith("| drawer") and "| missed_handle |" in ln)
    assert "65.0% [" in row
    assert "residual, wrong mask: the cells of drawer come from runs with the expert warm start" in "\n".join(rep["notes"])
    # beside a plain wrong-mask run of the same task (a protocol comparison) it keeps a column of its own
    plain = _main_run(tmp_path, "wrong-plain", selector="auto", mask="wrong", resolved="rules",
                      recovla={"missed_handle": _w(4, 20)}, base={m: _w(1, 20) for m in MODES})
    both = main(["--runs", *map(str, fixture_runs), str(plain), str(wrong), "--out", str(tmp_path / "both"), "--no-plot"])
    assert both["methods"][-3:] == ["wrong-mask", "wrong-mask-warm", "sim2sim"]
    header = next(ln for ln in both["markdown"].read_text().splitlines() if ln.startswith("| task"))
    assert "| residual, wrong mask | residual, wrong mask, expert warm start |" in header


def test_a_run_s_trained_arm_is_recovla_only_on_the_selector_s_own_mask():
    from experiments.report import trained_arm_label

    assert trained_arm_label("rules", "selected") == "ReCoVLA" and trained_arm_label("gemini", None) == "ReCoVLA"
    assert trained_arm_label("oracle", "selected") == "residual, oracle mask"
    assert trained_arm_label("oracle", "wrong") == trained_arm_label("rules", "wrong") == "residual, wrong mask"


def test_benchmark_suite_steps_share_the_compilation_cache():
    """Each step is a new process: without a fixed hash seed none could reuse the one before's compilations."""
    from experiments.benchmark_suite import child_environment

    assert child_environment({"PATH": "/bin"}) == {"PATH": "/bin", "PYTHONHASHSEED": "0"}
    assert child_environment({"PYTHONHASHSEED": "random"})["PYTHONHASHSEED"] == "0"
    assert child_environment({"PYTHONHASHSEED": "7"})["PYTHONHASHSEED"] == "7"  # the caller's choice is kept


def test_skip_existing_reruns_an_output_older_than_what_it_was_made_from(tmp_path, monkeypatch, capsys):
    """A retrained run makes its export, stall windows and sim-to-sim describe policies that no longer exist:
    --skip-existing reruns them (and everything else downstream), and still skips what is up to date."""
    import os

    from experiments import benchmark_suite

    out = tmp_path / "bench"
    steps = benchmark_suite.build_steps(["drawer"], out, "reduced")
    for age, s in enumerate(reversed(steps)):  # every output written in step order, a second apart
        if s.done_marker is not None:
            _write(s.done_marker, {})
            os.utime(s.done_marker, (1_000_000 - age, 1_000_000 - age))
    _write(out / "drawer" / "recovla" / "bank" / "bank.json", {})
    os.utime(out / "drawer" / "recovla" / "bank" / "bank.json", (1, 1))
    ran: list[str] = []
    monkeypatch.setattr(subprocess, "call", lambda argv, **k: ran.append(" ".join(argv)) or 0)
    benchmark_suite.main(["--budget=reduced", "--tasks", "drawer", f"--out={out}", "--skip-existing"])
    assert ran == [" ".join([benchmark_suite.sys.executable, *steps[-1].argv])]  # only the report: nothing is stale

    retrained = out / "drawer" / "recovla" / "results.json"
    os.utime(retrained, (2_000_000, 2_000_000))  # the main job ran again after everything else
    ran.clear()
    benchmark_suite.main(["--budget=reduced", "--tasks", "drawer", f"--out={out}", "--skip-existing"])
    rerun = {s.name for s in steps if any(r.endswith(" ".join(s.argv)) for r in ran)}
    assert rerun == {"drawer: baseline finetune", "drawer: baseline residual-full", "drawer: nominal success of recovla",
                     "drawer: ONNX export of ReCoVLA", "results table"}
    assert "is older than" in capsys.readouterr().out
    # the export's rewrite (mtime now) then makes the stall windows and the sim-to-sim stale in turn
    manifest = out / "drawer" / "recovla" / "export" / "manifest.json"
    os.utime(manifest, (3_000_000, 3_000_000))
    tune = next(s for s in steps if s.name.startswith("drawer: runtime stall windows"))
    sim2sim = next(s for s in steps if s.name.startswith("drawer: zero-shot"))
    assert tune.stale_inputs() == [manifest] and sim2sim.stale_inputs() == [manifest]
    oracle = next(s for s in steps if s.name == "drawer: residual on the oracle mask")
    assert oracle.stale_inputs() == []


def test_full_reward_mask(drawer_task):
    from recovla_jax.rewards.compiler import RewardMaskError, mask_to_weights
    from recovla_jax.rewards.full_mask import full_reward_mask, full_reward_weights
    from recovla_jax.rewards.library import component_names

    mask = full_reward_mask(drawer_task)
    for name in drawer_task.reward_component_descriptions:
        assert mask[name] == 1.0
    assert mask["success"] == 12.0 == drawer_task.oracle_masks["missed_handle"]["success"]
    assert mask["residual_magnitude"] == 0.1 and "action_magnitude" not in mask
    w = full_reward_weights(drawer_task)
    names = component_names(drawer_task)
    assert w.shape == (len(drawer_task.failure_modes), len(names)) and (w == w[0]).all()
    np.testing.assert_array_equal(w[0], mask_to_weights(drawer_task, mask))
    assert w[0][names.index("action_magnitude")] == 0.0
    assert full_reward_mask(drawer_task, residual_penalty=0.0)["residual_magnitude"] == 0.0
    # a run's --reward-weight overrides reach the full reward as they reached its masks (0 removes a component)
    some = next(iter(drawer_task.reward_component_descriptions))
    overridden = full_reward_mask(drawer_task, overrides=[("success", 3.0), (some, 0.0)])
    assert overridden["success"] == 3.0 and some not in overridden
    assert full_reward_weights(drawer_task, overrides=[("success", 3.0)])[0][names.index("success")] == 3.0
    bad = SimpleNamespace(name="toy", reward_component_descriptions={"reach": ""},
                          oracle_masks={"a": {"reach": 1.0, "success": 5.0}, "b": {"reach": 1.0, "success": 7.0}})
    with pytest.raises(RewardMaskError, match="disagree"):
        full_reward_mask(bad)
    with pytest.raises(RewardMaskError, match="success"):
        full_reward_mask(SimpleNamespace(name="toy", reward_component_descriptions={"reach": ""},
                                         oracle_masks={"a": {"reach": 2.0}}))


def test_nominal_starts_are_distinct_across_the_modes_blocks(drawer_task):
    """The base alone is pooled over every mode's block of nominal starts: the blocks must be distinct starts, or
    its interval would count one start once per mode."""
    from experiments.baselines import nominal_bank

    modes = list(drawer_task.failure_modes)
    bank = nominal_bank(drawer_task, modes, 4, seed=0)
    qpos = bank.arrays["qpos"]
    assert qpos.shape[0] == 4 * len(modes) == len(bank.arrays["obs"])
    assert list(bank.arrays["mode"]) == [i for i in range(len(modes)) for _ in range(4)]
    assert len({row.tobytes() for row in qpos}) == len(qpos)  # no start repeats
    again = nominal_bank(drawer_task, modes, 4, seed=0)
    np.testing.assert_array_equal(again.arrays["qpos"], qpos)  # seeded


def test_baselines_budget_and_conditions(tmp_path):
    from experiments.baselines import eval_conditions, load_run, resolve_budget, train_defaults

    bank = tmp_path / "elsewhere"
    _write(bank / "bank.json", {})
    (bank / "bank.npz").write_bytes(b"")
    _write(tmp_path / "run" / "config.json", {"task": "drawer", "num_envs": 128, "timesteps": 250_000, "bank_dir": str(bank),
                                              "seed": 3, "policy": "per-mode"})
    info = load_run(tmp_path / "run")
    assert info["bank_dir"] == bank and info["results"] is None
    defaults = train_defaults()  # main-job flags the config lacks are filled in with the main job's defaults
    assert info["config"]["alpha"] == defaults["alpha"] and defaults["episode_length"] is None
    assert info["config"]["episode_length"] == 100  # None resolves to the task's own default (drawer: 100)
    # older runs without --init-log-std get the main job's default, which is PPO's own
    from recovla_jax.training.ppo import PPOConfig

    assert info["config"]["init_log_std"] == PPOConfig.model_fields["init_log_std"].default
    # ... and no expert warm start (so their baselines do not warm-start either); the CLI's log-std is the module's
    from recovla_jax.training.expert_warm_start import WarmStartConfig

    assert info["config"]["expert_warm_start"] == 0
    assert info["config"]["warm_start_log_std"] == WarmStartConfig.model_fields["log_std"].default
    assert info["config"]["warm_start_fit_steps"] == WarmStartConfig.model_fields["fit_steps"].default
    assert info["config"]["desired_kl"] is None and not info["config"]["freeze_normalizer"]
    args = SimpleNamespace(num_envs=None, timesteps=None, policy=None)
    assert resolve_budget(info["config"], args) == {"num_envs": 128, "timesteps_per_policy": 250_000, "policy": "per-mode",
                                                    "budget_matches_run": True}
    assert not resolve_budget(info["config"], SimpleNamespace(num_envs=32, timesteps=20_000, policy=None))["budget_matches_run"]
    cond = eval_conditions(info["config"], None)
    assert cond["seed"] == 10_003 and cond["domain_randomization"] and cond["start_jitter_m"] == 0.005
    assert eval_conditions(info["config"], {"eval_conditions": {"seed": 7}})["seed"] == 7
    # a baseline run before the main job's results exist keys each held-out state by its bank row, as the main job
    # will; a run that recorded its conditions without per-row keys keeps its positional draws
    from recovla_jax.evaluation.recovery import STATE_KEYS

    assert cond["state_keys"] == STATE_KEYS
    assert "state_keys" not in eval_conditions(info["config"], {"eval_conditions": {"seed": 7}})
    # every later evaluation of a run's residuals hands back as the run did, delay included
    from experiments.baselines import hand_back_kwargs

    assert hand_back_kwargs(cond) == {"hand_back": False, "hand_back_delay": 0}
    delayed = eval_conditions({**info["config"], "hand_back": True, "hand_back_delay": 50},
                              {"eval_conditions": {"hand_back": True}})
    assert hand_back_kwargs(delayed) == {"hand_back": True, "hand_back_delay": 50}


def test_a_baseline_refuses_a_bank_of_another_task(tmp_path, fake_run):
    """Bank labels index the task's rewards and table cells: another task's bank would score each mode on another's
    states. The baseline exits naming both tasks before it trains anything."""
    import shutil

    from experiments import baselines

    run = tmp_path / "run"
    shutil.copytree(fake_run / "bank", run / "bank")
    _write(run / "config.json", {"task": "stack", "seed": 0})
    with pytest.raises(SystemExit, match="stack") as e:
        baselines.main([f"--run={run}", "--method=nominal"])
    assert "drawer" in str(e.value)
    assert not (run / "baselines").exists()


def test_finetune_policy_at_init_is_the_bc_base(drawer_task, fake_run):
    """The fine-tuned base starts as an exact copy of the BC base: deterministic action == base action."""
    import jax
    import jax.numpy as jnp

    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.policies.base_policy import BasePolicy, bc_network, make_bc_apply
    from recovla_jax.rewards.full_mask import full_reward_weights
    from recovla_jax.sim.wrappers import wrap_batched
    from recovla_jax.training.finetune_env import FinetuneEnv, FinetunePPOTrainer
    from recovla_jax.training.ppo import PPOConfig

    bank = FailureBank.load(fake_run / "bank")
    obs = bank.arrays["obs"]
    hidden = (32, 24)
    params = {"net": bc_network(hidden, 7).init(jax.random.PRNGKey(5), jnp.zeros(24))["params"],
              "obs_mean": jnp.asarray(obs.mean(0)), "obs_std": jnp.asarray(obs.std(0) + 1e-3)}
    base = BasePolicy("toy-bc", make_bc_apply(hidden, 7), params, {})
    env = FinetuneEnv(drawer_task, base, bank, full_reward_weights(drawer_task), start_noise=0.0, obs_noise=0.0, latency_prob=0.0)
    assert env.observation_size == drawer_task.observation_size
    trainer = FinetunePPOTrainer(wrap_batched(env, 4, 10), PPOConfig(num_envs=4, unroll_length=2, num_minibatches=1,
                                                                     total_timesteps=8), base)
    assert trainer.cfg.actor_hidden == hidden and not trainer.cfg.normalize_obs
    ts = trainer.init(jax.random.PRNGKey(0))
    far = obs[:4] + 5.0 * obs.std(0) * np.random.default_rng(0).standard_normal((4, 24)).astype(np.float32)
    for o in (np.asarray(ts.env_state.obs), far):  # env starts, and observations far outside the base's data
        raw = trainer.policy_fn(ts.params, ts.normalizer, jnp.asarray(o), deterministic=True)
        action, residual = jax.vmap(env.executed_action)(jnp.asarray(o), raw)
        np.testing.assert_allclose(np.asarray(action), np.asarray(base(jnp.asarray(o))), atol=1e-5)
        assert float(jnp.abs(residual).max()) == 0.0
    # the policy observes the task observation of a bank state (no noise, no jitter here), nothing else
    dist = np.abs(np.asarray(ts.env_state.obs)[:, None, :] - obs[None]).max(-1).min(-1)
    assert (dist < 1e-4).all(), dist


def test_authority_cli_on_a_run(fake_run, tmp_path):
    """experiments.authority on a real-format run: every mode's first n held-out states under one compiled
    rollout per scale, the run's own cells beside them, and the record written where asked."""
    from experiments.authority import main

    out = tmp_path / "authority.json"
    record = main(["--run", str(fake_run), "--alphas", "2", "--states", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    results = json.loads((fake_run / "results.json").read_text())
    assert set(record["modes"]) == set(results["modes"])  # every mode has held-out states in the fake bank
    for mode, cell in record["modes"].items():
        guided = cell["alphas"]["2"]
        assert guided["trials"] == 2 and 0 <= guided["successes"] <= 2
        assert cell["base"] == results["modes"][mode]["base"] and cell["trained"] == results["modes"][mode]["recovla"]
    assert record["split"] == "heldout" and record["run_alpha"] > 0
    with pytest.raises(SystemExit, match="alphas"):
        main(["--run", str(fake_run), "--alphas", "0"])


def test_summary_names_hand_back_and_expert_path_starts():
    from experiments.report import infer_run_method
    from experiments.summary import _protocol_lines

    assert _protocol_lines({"eval_conditions": {"hand_back": False}}) == []
    lines = _protocol_lines({"eval_conditions": {"hand_back": True, "hand_back_delay": 50},
                             "expert_path_starts": {"fraction": 0.5, "path_states": 1234, "stride": 10}})
    assert len(lines) == 2 and "+50 steps" in lines[0]
    assert "50% of training episodes" in lines[1] and "1234 states" in lines[1] and "only held-out failure states" in lines[1]
    assert infer_run_method({"selector": "rules", "expert_warm_start": 8}, None) == (
        "recovla-rules-warm", "ReCoVLA (rules), expert warm start")
    warm = _protocol_lines({"eval_conditions": {}, "expert_warm_start": {
        "rounds": 8, "extra_env_steps": 1_000,
        "policies": {"a": {"start_success": 0.25, "start_success_sampled": 0.125}, "b": {"start_success": None}},
        "desired_kl": 0.01, "freeze_normalizer": True}})
    assert len(warm) == 1 and "8 DAgger rounds" in warm[0] and "a 25.0% (12.5% sampling" in warm[0] and "b " not in warm[0]
    assert "KL target of 0.01" in warm[0] and "normaliser was kept fixed" in warm[0]
    gated = _protocol_lines({"eval_conditions": {}, "expert_warm_start": {
        "rounds": 8, "extra_env_steps": 1_000, "min_teacher": 0.8, "policies": {
            "a": {"start_success": 0.25, "start_success_sampled": 0.2, "start_log_std": -5.0},
            "c": {"skipped": True, "teacher_success": 0.471, "start_success": None},
            "d": {"fit_rejected": True, "start_success": 0.3, "start_success_sampled": 0.234,
                  "fresh_success_sampled": 0.91}}, "fallback": True}})
    assert len(gated) == 3 and "d 30.0%" not in gated[0] and "from scratch" in gated[2]
    assert "d (fit 23.4%, fresh policy 91.0%)" in gated[2]
    assert "c " not in gated[0] and "plain PPO" in gated[1] and "under 80%" in gated[1]
    assert "a 25.0% (20.0% sampling with PPO's initial exploration noise, log-std -5)" in gated[0]
    none_kept = _protocol_lines({"eval_conditions": {}, "expert_warm_start": {
        "rounds": 8, "extra_env_steps": 1_000, "desired_kl": 0.01, "fallback": True,
        "policies": {"d": {"fit_rejected": True, "start_success": 0.3, "start_success_sampled": 0.234}}}})
    assert "no policy kept a fit" in none_kept[0] and "KL target" not in none_kept[0]
    assert "c (47.1%)" in gated[1]
    desync = _protocol_lines({"eval_conditions": {}, "desync_episodes": True})
    assert len(desync) == 1 and "first episode was cut at a random length" in desync[0]


def test_the_report_says_how_wrong_each_wrong_mask_was_and_whether_the_selector_chose_the_oracle_s(tmp_path, fixture_runs):
    """A wrong-mask cell means little without the mask it trained on: the notes name each swap and its L1 distance
    (or say the run predates the record). A ReCoVLA run whose selector chose the oracle's masks gets a note that an
    oracle-mask run would train the same policies; one that chose otherwise names the modes that differ."""
    from experiments.report import main
    from recovla_jax.tasks.registry import task_class

    oracle = task_class("drawer").oracle_masks
    main_run = fixture_runs[0]
    _write(main_run / "descriptors.json", {m: {"failure_mode": m, "reward_mask": oracle[m]} for m in MODES})
    old_wrong = _main_run(tmp_path, "wrong-old", selector="auto", mask="wrong", resolved="rules",
                          recovla={"missed_handle": _w(13, 20)}, base={m: _w(1, 20) for m in MODES})
    rep = main(["--runs", *map(str, fixture_runs), str(old_wrong), "--out", str(tmp_path / "r1"), "--no-plot"])
    text = rep["markdown"].read_text()
    assert "drawer/ReCoVLA (rules): the selector chose the oracle's mask for every mode" in text
    assert "no record of its swaps" in text

    new_wrong = _main_run(tmp_path, "wrong-new", selector="auto", mask="wrong", resolved="rules",
                          recovla={"missed_handle": _w(13, 20)}, base={m: _w(1, 20) for m in MODES})
    _write(new_wrong / "diagnosis.json", {"wrong_mask": {"missed_handle": {"descriptor_of": "misaligned_gripper",
                                                                           "mask_l1_distance": 1.5}}})
    _write(main_run / "descriptors.json", {m: {"failure_mode": m, "reward_mask": {**oracle[m], "success": 1.0}}
                                           for m in MODES})
    rep = main(["--runs", *map(str, fixture_runs), str(new_wrong), "--out", str(tmp_path / "r2"), "--no-plot"])
    text = rep["markdown"].read_text()
    assert "each mode trained on another mode's mask: missed_handle on misaligned_gripper's (L1 1.5)" in text
    assert f"masks differ from the oracle's in {', '.join(MODES)}" in text
    assert "chose the oracle's mask" not in text


def _ps(bits: str, episodes: str) -> dict:
    """A Wilson cell with per-state outcomes, as `RecoveryEvaluator.success` records them."""
    return {**_w(bits.count("1"), len(bits)), "per_state": {"success": bits, "episodes": episodes}}


def test_the_report_pairs_recovla_with_each_column_that_ran_the_same_episodes(tmp_path):
    """ReCoVLA against the fine-tuned base state by state (McNemar's exact test) where both cells recorded the
    same episodes; a column without per-state outcomes, or with other episodes, is counted as unpaired."""
    from experiments.report import main

    recovla = {"missed_handle": _ps("1" * 12 + "0" * 8, "ep-a"), "slipped_off": _ps("1" * 20, "ep-b"),
               "misaligned_gripper": _ps("1" * 10 + "0" * 10, "ep-c")}
    finetune = {"missed_handle": _ps("0" * 10 + "1" * 2 + "0" * 8, "ep-a"),  # 10 only ReCoVLA, 0 only fine-tuned
                "slipped_off": _ps("1" * 19 + "0", "ep-b"), "misaligned_gripper": _ps("1" * 10 + "0" * 10, "other")}
    base = {"missed_handle": _ps("0" * 19 + "1", "ep-a"),  # a state the base recovers and ReCoVLA loses
            "slipped_off": _ps("0" * 20, "ep-b"), "misaligned_gripper": _w(0, 20)}  # the last predates per-state outcomes
    run = _main_run(tmp_path, "recovla", selector="rules", recovla=recovla, base=base)
    _write(run / "baselines" / "finetune" / "results.json", {
        "method": "finetune", "device": {"platform": "cpu"}, "modes": {m: {"policy": c} for m, c in finetune.items()}})
    _write(run / "baselines" / "residual-full" / "results.json", {
        "method": "residual-full", "device": {"platform": "cpu"}, "modes": {m: {"policy": _w(10, 20)} for m in MODES}})
    rep = main(["--runs", str(run), "--out", str(tmp_path / "report"), "--no-plot"])
    by_row = {(r["row"], r["method"]): r for r in rep["paired"]}
    assert set(by_row) == {("missed_handle", "finetune"), ("slipped_off", "finetune"),
                           ("all 2 paired modes, pooled", "finetune"), ("missed_handle", "base"), ("slipped_off", "base"),
                           ("all 2 paired modes, pooled", "base")}
    assert (by_row[("missed_handle", "base")]["only_a"], by_row[("missed_handle", "base")]["only_b"]) == (12, 1)
    mh = by_row[("missed_handle", "finetune")]
    assert (mh["n"], mh["only_a"], mh["only_b"], mh["reference_successes"], mh["method_successes"]) == (20, 10, 0, 12, 2)
    assert mh["p_value"] == pytest.approx(2 / 2 ** 10) and mh["difference"] == pytest.approx(0.5)
    pooled = by_row[("all 2 paired modes, pooled", "finetune")]
    assert (pooled["n"], pooled["only_a"], pooled["only_b"]) == (40, 11, 0)
    assert rep["unpaired"] == 5  # misaligned_gripper's fine-tuned base (other episodes) and base, residual-full's 3
    text = rep["markdown"].read_text()
    assert "## Paired comparisons (same episodes)" in text
    assert "| drawer | missed_handle | fine-tuned base | 20 | 12 | 2 | 10 | 0 | +50.0 pp | 0.002 |" in text
    assert "5 cell pair(s) could not be paired" in text
    assert "ReCoVLA here is drawer: ReCoVLA (rules)." in text  # which column is the reference
    with (tmp_path / "report" / "paired.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["only_reference"] for r in rows if r["method"] == "finetune"} == {"10", "1", "11"}
    assert [r["kind"] for r in rows].count("pooled") == 2  # a sum over a task's rows must skip them
    assert rep["paired_by_seed"] == [] and "Paired comparisons per seed" not in text  # one seed: no per-seed section


def test_the_report_sets_each_seed_s_paired_difference_beside_the_others(tmp_path):
    """ReCoVLA and the full-reward residual on three seeds: each seed pairs its own two runs (pooled over the modes
    that ran the same episodes), and the seeds' differences get a mean, a range and a t interval over seeds."""
    from scipy.stats import t as student_t

    from experiments.report import build_report

    runs = []
    # (ReCoVLA, full reward) successes out of 20 on missed_handle per seed; slipped_off pairs only on seed 0
    for seed, (ours, full) in enumerate(((12, 8), (10, 14), (15, 9))):
        ep = f"ep-{seed}"
        recovla = {"missed_handle": _ps("1" * ours + "0" * (20 - ours), ep), "slipped_off": _ps("1" * 10 + "0" * 10, ep)}
        run = _main_run(tmp_path, f"seed{seed}", selector="rules", seed=seed, recovla=recovla,
                        base={m: _w(0, 20) for m in recovla})
        other = {"missed_handle": _ps("1" * full + "0" * (20 - full), ep),
                 "slipped_off": _ps("0" * 10 + "1" * 10, ep if seed == 0 else "elsewhere")}
        _write(run / "baselines" / "residual-full" / "results.json", {
            "method": "residual-full", "device": {"platform": "cpu"}, "modes": {m: {"policy": c} for m, c in other.items()}})
        runs.append(run)
    rep = build_report(runs, tmp_path / "r", plot=False)
    rows = rep["paired_by_seed"]
    seed_rows = [r for r in rows if r["kind"] == "seed"]
    assert [(r["seed"], r["modes"], r["n"]) for r in seed_rows] == [(0, 2, 40), (1, 1, 20), (2, 1, 20)]
    assert (seed_rows[0]["only_a"], seed_rows[0]["only_b"]) == (4 + 10, 10)  # missed_handle 12 vs 8, slipped_off swapped
    across = next(r for r in rows if r["kind"] == "across-seeds")
    d = np.array([4 / 40, -4 / 20, 6 / 20])
    assert across["differences"] == pytest.approx(list(d)) and across["mean_difference"] == pytest.approx(d.mean())
    half = student_t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (across["ci_low"], across["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert (across["reference_ahead"], across["method_ahead"], across["range"]) == (2, 1, pytest.approx(0.5))
    assert {r["method"] for r in rows} == {"residual-full"}  # the base column is not run per seed
    text = rep["text"]
    assert "## Paired comparisons per seed" in text
    assert "| drawer | residual, full reward | seed 1, 1 paired mode(s) pooled | 20 | 10 | 14 | 0 | 4 | -20.0 pp |" in text
    assert f"**+{100 * d.mean():.1f} pp** [{100 * (d.mean() - half):+.1f}, {100 * (d.mean() + half):+.1f}]" in text
    with (tmp_path / "r" / "paired.csv").open() as f:
        by_seed = [r for r in csv.DictReader(f) if r["kind"] == "seed"]
    assert [(r["seed"], r["only_method"]) for r in by_seed] == [("0", "10"), ("1", "4"), ("2", "0")]

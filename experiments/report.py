"""The results table: main-job runs, their baselines and sim-to-sim results in one markdown + CSV table.

    python -m experiments.report --runs runs/drawer-recovla runs/drawer-oracle runs/drawer-wrong --out report
    python -m experiments.report --runs RUN --sim2sim-arm=policy --family drawer=short-horizon

Rows are task x failure mode (success from the run's held-out failure states), one average row per task
family and, per task, a row of nominal success after training. Columns are methods; each cell is
"rate% [95% Wilson CI] n=trials"; a method with no result shows "—". Where each column comes from:

  base alone             RUN/results.json modes[m].base (the zero-residual arm of the main job's evaluation)
  fine-tuned base        RUN/baselines/finetune/results.json       (python -m experiments.baselines --method=finetune)
  residual, full reward  RUN/baselines/residual-full/results.json  (--method=residual-full)
  ReCoVLA (<selector>)   a main-job run with the selector's mask (results.json modes[m].recovla)
  residual, oracle mask  a main-job run with --selector=oracle
  residual, wrong mask   a main-job run with --mask=wrong
  ReCoVLA sim2sim        RUN/sim2sim/sim2sim.json of the last ReCoVLA run given (python -m experiments.evaluate), arm
                         --sim2sim-arm (default runtime_rules: monitor + rules selector + switching + safety)
The method of a main-job run is read from its config (mask, selector, policy layout). Nominal success of the
main-job methods comes from RUN/baselines/nominal/results.json (--method=nominal), of the baselines from their
own results, of the sim2sim column from the native runtime's nominal arm. With several families, an "all tasks
average" row follows; report.md then closes with the issue's targets over every task x mode cell (ReCoVLA >= 80% in
MJX, >= 75% zero-shot native), taking for each task the column of the last ReCoVLA run given for it, and the
fine-tuned base's mean over the same cells. Runs of one task and method with different seeds (config.json's `seed`)
also get an "Across seeds" section: each seed's cell, the mean of the seeds and their range, and a target line with
every cell averaged over its seeds. Where cells recorded per-state outcomes for the same episodes, a "Paired
comparisons" section tests ReCoVLA against each other column state by state (McNemar's exact test;
experiments/report_paired.py), and where both were run with several seeds, "Paired comparisons per seed" sets each
seed's paired difference beside the others, with a t interval over seeds. Writes report.md, report.csv (tidy: one line
per task x row x method, numeric; seed rows carry their seed), paired.csv and report.png (bars with Wilson CIs) into
--out. The notes also say how far each wrong-mask run's masks were from the right ones, and whether a ReCoVLA run's
selector chose the oracle's masks (then an oracle-mask run on its bank and seed trains the same policies), and which
baseline columns got their run's expert warm start (their labels are shared by every task and do not say it). A
main-job method's ", expert warm start" runs share its column (one column per method) unless a task has runs of both;
a note names the warm-started tasks. Runs nothing under JAX; it imports the task classes (and with them JAX) for their
families and oracle masks.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Callable

from experiments.report_paired import (paired_markdown, paired_rows, seed_paired_markdown, seed_paired_rows,
                                      write_paired_csv)
from recovla_jax.evaluation.paired import cells_agree, disagreement_reason
from recovla_jax.evaluation.stats import MIN_TRIALS_PER_CELL, MJX_RECOVERY_TARGET, NATIVE_RECOVERY_TARGET

DASH = "—"
# Task family of each task (the table averages per family). Tasks not listed fall in "other" unless
# --family names them.
def _task_families() -> dict[str, str]:
    """Each registered task's family (`Task.family`), read from the task classes."""
    from recovla_jax.tasks.registry import task_class, task_names

    return {name: task_class(name).family for name in task_names()}


TASK_FAMILIES = _task_families()
BASELINES = ("finetune", "residual-full")
FIXED_LABELS = {"base": "base alone", "finetune": "fine-tuned base", "residual-full": "residual, full reward",
                "oracle-mask": "residual, oracle mask", "wrong-mask": "residual, wrong mask"}
SIM2SIM_ARMS = ("policy", "runtime_oracle", "runtime_rules")
# Which main-job run's base-alone numbers fill the base column when several runs of a task have them.
_BASE_PRIORITY = ("recovla", "oracle-mask", "wrong-mask")
# What `infer_run_method` appends to a warm-started run's column key and label; `merge_warm_start_variants` strips them.
WARM_KEY, WARM_LABEL = "-warm", ", expert warm start"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", action="extend", required=True, help="main-job run directories (any order, any tasks)")
    p.add_argument("--out", default="report", help="output directory for report.md, report.csv, report.png")
    p.add_argument("--sim2sim-arm", choices=SIM2SIM_ARMS, default="runtime_rules",
                   help="which native-MuJoCo arm of sim2sim.json fills the sim2sim column (nominal rows fall back to "
                        "runtime_rules where the arm has no nominal episodes)")
    p.add_argument("--family", action="append", default=[], metavar="TASK=FAMILY",
                   help=f"task family for averaging (repeatable); defaults: {TASK_FAMILIES}, others 'other'")
    p.add_argument("--no-plot", action="store_true", help="skip report.png")
    return p


def ablation_method(selector: str | None, mask: str | None) -> str | None:
    """Which mask ablation a main-job run is ("wrong-mask", "oracle-mask"), or None for ReCoVLA itself.

    One decision for the run's own log (trained_arm_label) and for the report's column (infer_run_method):
    a wrong mask wins over the selector, and only a run on the selector's own mask is ReCoVLA."""
    if mask == "wrong":
        return "wrong-mask"
    return "oracle-mask" if selector == "oracle" else None


def trained_arm_label(selector: str | None, mask: str | None) -> str:
    """What a main-job run trained, for its log and summary."""
    method = ablation_method(selector, mask)
    return FIXED_LABELS[method] if method else "ReCoVLA"


def infer_run_method(config: dict, results: dict | None) -> tuple[str, str]:
    """(method key, label) of a main-job run: wrong-mask, oracle-mask or
    recovla-<selector>[-conditioned][-handback][-paths][-desync][-warm]."""
    results = results or {}
    method = ablation_method("oracle" if "oracle" in (config.get("selector"), results.get("selector")) else None,
                             "wrong" if "wrong" in (config.get("mask"), results.get("mask")) else None)
    if method:
        key, label = method, FIXED_LABELS[method]
    else:
        selector = results.get("selector") or config.get("selector", "auto")
        key, label = f"recovla-{selector}", f"ReCoVLA ({selector})"
    if (results.get("policy") or config.get("policy")) == "conditioned":
        key, label = f"{key}-conditioned", f"{label}, conditioned"
    if config.get("hand_back") or (results.get("eval_conditions") or {}).get("hand_back"):
        key, label = f"{key}-handback", f"{label}, hand-back"
    if float(config.get("expert_path_starts") or 0.0) > 0:
        key, label = f"{key}-paths", f"{label}, expert-path starts"
    if config.get("desync_episodes"):
        key, label = f"{key}-desync", f"{label}, desynced episodes"
    if int(config.get("expert_warm_start") or 0) > 0:
        key, label = f"{key}{WARM_KEY}", f"{label}{WARM_LABEL}"
    return key, label


def fmt_cell(r: dict | None) -> str:
    if not r:
        return DASH
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] n={r['trials']}"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _budget(config: dict) -> str:
    dev = config.get("device") or {}
    return (f"{config.get('num_envs', '?')} envs x {int(config.get('timesteps', 0)):,} steps/policy, "
            f"{dev.get('platform', '?')} x{dev.get('device_count', '?')}")


class Table:
    """Everything the report shows, per task: cells[(row, method)] = Wilson dict, labels, sources, notes."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}
        self.labels: dict[str, str] = dict(FIXED_LABELS)
        self.sources: list[dict] = []
        self.notes: list[str] = []

    def task(self, name: str) -> dict:
        return self.tasks.setdefault(name, {"modes": [], "cells": {}, "nominal": {}, "base_candidates": [], "nominal_base": [],
                                            "banks": {}, "seeds": {}})

    def put_seed(self, task: str, method: str, seed: int | None, cells: dict[str, dict | None], source: str) -> None:
        """Keep one run's per-mode cells under its seed, so several seeds of a method show side by side (the main
        table keeps only the last run given). Runs without a recorded seed are not tracked."""
        if seed is None:
            return
        kept = {m: c for m, c in cells.items() if c}
        if kept:
            self.task(task)["seeds"].setdefault(method, {})[int(seed)] = (kept, source)

    def put_cells(self, task: str, method: str, seed: int | None, cells: dict[str, dict | None], source: str) -> None:
        """One run's per-mode cells of a column: into the table (the last run given wins) and under the run's seed.
        When it replaces runs of other seeds (all shown under "Across seeds"), one note says so instead of one per row."""
        t = self.task(task)
        replaced = {t["cells"][(r, method)][1] for r, c in cells.items() if c and (r, method) in t["cells"]} - {source}
        seed_of = {src: k for k, (_, src) in t["seeds"].get(method, {}).items()}
        other_seeds = bool(replaced) and seed is not None and all(seed_of.get(r) not in (None, seed) for r in replaced)
        if other_seeds:
            shown = ", ".join(f"{r} (seed {seed_of[r]})" for r in sorted(replaced))
            self.notes.append(f"{task}/{self.labels.get(method, method)}: the main table shows {source} (seed {seed}); "
                              f"{shown} under Across seeds")
        for row, cell in cells.items():
            self.put(task, row, method, cell, source, note_replaced=not other_seeds)
        self.put_seed(task, method, seed, cells, source)

    def put(self, task: str, row: str, method: str, cell: dict | None, source: str, note_replaced: bool = True) -> None:
        if cell is None:
            return
        t = self.task(task)
        if row not in t["modes"]:
            t["modes"].append(row)
        if note_replaced and (row, method) in t["cells"] and t["cells"][(row, method)][1] != source:
            self.notes.append(f"{task}/{row}/{self.labels.get(method, method)}: {source} replaces {t['cells'][(row, method)][1]}")
        t["cells"][(row, method)] = (cell, source)

    def put_nominal(self, task: str, method: str, cell: dict | None, source: str) -> None:
        if cell is not None:
            self.task(task)["nominal"][method] = (cell, source)

    def methods(self) -> list[str]:
        """Every column of the issue's table, present or not (missing ones read "—"); one per ReCoVLA selector and
        one per protocol variant of a residual column (e.g. "residual, oracle mask, expert warm start")."""
        present = ({m for t in self.tasks.values() for (_, m) in t["cells"]}
                   | {m for t in self.tasks.values() for m in t["nominal"]})
        recovla = sorted(m for m in present if m.startswith("recovla-"))
        if not recovla:
            recovla = ["recovla"]
            self.labels.setdefault("recovla", "ReCoVLA")

        def variants(method: str) -> list[str]:
            return sorted(m for m in present if m == method or m.startswith(f"{method}-")) or [method]

        return ["base", *BASELINES, *recovla, *variants("oracle-mask"), *variants("wrong-mask"), "sim2sim"]


def collect(runs: list[Path], sim2sim_arm: str = "runtime_rules") -> Table:
    """Read every run, its baselines/ and sim2sim/ into a Table."""
    table = Table()
    table.labels["sim2sim"] = f"ReCoVLA sim2sim ({sim2sim_arm})"
    for run in runs:
        run = Path(run)
        config = _read(run / "config.json") or {}
        results = _read(run / "results.json")
        if results is None:
            table.notes.append(f"{run}: no results.json (unfinished run?): skipped")
            continue
        task = results.get("task") or config.get("task", "?")
        method, label = infer_run_method(config, results)
        table.labels[method] = label
        t = table.task(task)
        if method.startswith("recovla-"):
            t["recovla_method"] = method  # the last ReCoVLA run given for a task is its entry in the targets
            t["recovla_run"] = str(run)  # ... and the only one whose sim2sim fills the main table's column
        t["banks"][str(run)] = (results.get("bank") or {}).get("counts")
        seed = config.get("seed")
        table.sources.append({"task": task, "column": label, "run": str(run), "budget": _budget(config)})
        table.put_cells(task, method, seed, {m: r.get("recovla") for m, r in results.get("modes", {}).items()}, str(run))
        table.notes += mask_notes(task, method, label, run)
        for m, r in results.get("modes", {}).items():
            if r.get("base"):
                t["base_candidates"].append((method, m, r["base"], str(run)))
        for b in BASELINES:
            res = _read(run / "baselines" / b / "results.json")
            if res is None:
                continue
            src = str(run / "baselines" / b)
            bud = res.get("budget", {})
            table.sources.append({"task": task, "column": FIXED_LABELS[b], "run": src,
                                  "budget": f"{bud.get('num_envs', '?')} envs x "
                                            f"{int(bud.get('timesteps_per_policy', 0)):,} steps/policy, "
                                            f"{(res.get('device') or {}).get('platform', '?')}"})
            if bud and not bud.get("budget_matches_run", True):
                table.notes.append(f"{src}: trained with a budget different from its run's ({bud.get('num_envs')} envs, "
                                   f"{bud.get('timesteps_per_policy')} steps/policy vs {bud.get('run_num_envs')}, "
                                   f"{bud.get('run_timesteps_per_policy')})")
            table.put_cells(task, b, seed, {m: r.get("policy") for m, r in res.get("modes", {}).items()}, src)
            table.notes += warm_start_notes(task, FIXED_LABELS[b], src, res.get("expert_warm_start"))
            for m, ok in (res.get("base_matches_run") or {}).items():
                if not ok:
                    table.notes.append(f"{src}: base alone on {m} differs from the run's own evaluation "
                                       "(different machine or code?)")
            nom = res.get("nominal")
            if nom:
                table.put_nominal(task, b, nom.get("policy"), src)
                t["nominal_base"].append((b, nom.get("base"), src))
        nom_res = _read(run / "baselines" / "nominal" / "results.json")
        if nom_res and nom_res.get("nominal"):
            src = str(run / "baselines" / "nominal")
            table.put_nominal(task, method, nom_res["nominal"].get("policy"), src)
            t["nominal_base"].insert(0, (method, nom_res["nominal"].get("base"), src))
        s2s = _read(run / "sim2sim" / "sim2sim.json")
        if s2s is not None and s2s.get("states", "heldout") != "heldout":
            table.notes.append(f"{run}/sim2sim: started the bank's {s2s['states']} states, not held-out ones: not shown")
            s2s = None
        if s2s is not None and method.startswith("recovla-"):  # the last ReCoVLA run given, like the targets' column
            src = str(run / "sim2sim")
            table.notes += sim2sim_protocol_notes(src, s2s.get("config") or {}, _read(run / "export" / "manifest.json"))
            table.put_cells(task, "sim2sim", seed, {m: (e.get("native") or {}).get(sim2sim_arm)
                                                    for m, e in s2s.get("modes", {}).items()}, src)
            for m, e in s2s.get("modes", {}).items():
                if e.get("n") is not None and e.get("heldout_states") and e["n"] < e["heldout_states"]:
                    table.notes.append(f"{src}: sim2sim {m} ran the first {e['n']} of {e['heldout_states']} held-out states")
            nominal = (s2s.get("nominal") or {}).get("native") or {}
            arm = sim2sim_arm if sim2sim_arm in nominal else "runtime_rules"
            if arm in nominal:
                table.put_nominal(task, "sim2sim", nominal[arm], src)
                if arm != sim2sim_arm:
                    table.notes.append(f"{src}: sim2sim nominal row uses arm {arm} ({sim2sim_arm} has no nominal episodes)")
        elif s2s is not None:
            table.notes.append(f"{run}/sim2sim: not shown (the sim2sim column is the ReCoVLA run's)")
    for task, t in table.tasks.items():
        _keep_sim2sim_of_shown_run(table, task, t)
        _fill_base(table, task, t)
    merge_warm_start_variants(table)
    return table


def sim2sim_protocol_notes(src: str, config: dict, manifest: dict | None) -> list[str]:
    """A note when a sim2sim ran under settings other than today's defaults (an ablation such as
    `--max-residual-norm=1e-6`, a fixed stall window, other noise, latency or dynamics), which its column would
    otherwise show as the ReCoVLA result. Settings an older sim2sim.json does not record are not compared."""
    from recovla_jax.runtime.monitor import MonitorConfig
    from recovla_jax.runtime.robots.native import NativeDynamics

    def differing(given: dict, default: dict) -> list[str]:
        return [f"{k}={json.dumps(given[k])} (default {json.dumps(v)})" for k, v in default.items()
                if k in given and json.loads(json.dumps(given[k])) != json.loads(json.dumps(v))]

    diffs = differing(config.get("monitor") or {}, MonitorConfig().model_dump())
    diffs += differing(config.get("dynamics") or {}, NativeDynamics().model_dump())
    cap, exported = (config.get("safety") or {}).get("max_residual_norm"), ((manifest or {}).get("safety") or {}).get(
        "max_residual_norm")
    if cap is not None and exported is not None and abs(float(cap) - float(exported)) > 1e-9:
        diffs.append(f"max_residual_norm={cap:g} (exported {exported:g})")
    return [f"{src}: ran with settings other than today's defaults: {'; '.join(diffs)}"] if diffs else []


def _keep_sim2sim_of_shown_run(table: Table, task: str, t: dict) -> None:
    """Drop from the main table every sim2sim cell that is not the shown ReCoVLA run's own (the targets' column):
    an earlier seed's export must not stand beside the shown run's MJX cells when that run has no sim2sim.
    Other seeds' cells stay under "Across seeds"."""
    own = f"{t.get('recovla_run')}/sim2sim"
    cells = {k: v for k, v in t["cells"].items() if k[1] == "sim2sim" and v[1] != own}
    nominal = t["nominal"].get("sim2sim")
    stale = {src for _, src in cells.values()} | ({nominal[1]} if nominal and nominal[1] != own else set())
    if not stale:
        return
    for key in cells:
        del t["cells"][key]
    if nominal and nominal[1] != own:
        del t["nominal"]["sim2sim"]
    table.notes.append(f"{task}/{table.labels['sim2sim']}: {t.get('recovla_run')}, the ReCoVLA run shown, has no sim2sim "
                       f"for these cells; {', '.join(sorted(stale))} not shown in the main table (another run)")


def merge_warm_start_variants(table: Table) -> None:
    """Fold each ", expert warm start" column into its plain column where no task has both.

    The warm start is part of a task's protocol (`benchmark_suite.TASK_TRAIN_ARGS`, like its alpha), so in the
    suite's table every method would otherwise split into a plain column holding the drawer and a warm one holding
    the other tasks, half of each empty. Where one task has both variants (a protocol comparison), they stay apart.
    A note names the tasks whose cells in the merged column were warm-started."""
    keys = {m for t in table.tasks.values() for m in [*(k for _, k in t["cells"]), *t["nominal"], *t["seeds"]]}
    for warm in sorted(k for k in keys if k.endswith(WARM_KEY)):
        plain = warm.removesuffix(WARM_KEY)
        if any(_has_method(t, warm) and _has_method(t, plain) for t in table.tasks.values()):
            continue
        label = table.labels.get(warm, warm).removesuffix(WARM_LABEL)
        table.labels[plain] = label
        tasks = sorted(name for name, t in table.tasks.items() if _has_method(t, warm))
        for name in tasks:
            t = table.tasks[name]
            t["cells"] = {(row, plain if k == warm else k): v for (row, k), v in t["cells"].items()}
            for part in ("nominal", "seeds"):
                t[part] = {plain if k == warm else k: v for k, v in t[part].items()}
            if t.get("recovla_method") == warm:
                t["recovla_method"] = plain
        table.notes.append(f"{label}: the cells of {', '.join(tasks)} come from runs with the expert warm start "
                           "(their task's protocol); the column's label does not repeat it")


def _has_method(t: dict, method: str) -> bool:
    """Whether a task of the table has any cell, nominal cell or seed of `method`."""
    return any(k == method for _, k in t["cells"]) or method in t["nominal"] or method in t["seeds"]


def warm_start_notes(task: str, label: str, source: str, record: dict | None) -> list[str]:
    """A baseline column's label has no ", expert warm start" (one label serves every task), yet a baseline of a
    warm-started run gets the run's warm start: say so, with its rounds, the env steps it took outside PPO's budget
    and the policies that trained without it."""
    if not record or int(record.get("rounds") or 0) <= 0:
        return []
    plain = sorted({*record.get("skipped", []), *record.get("fit_rejected", [])})
    without = f"; without it (as in the run): {', '.join(plain)}" if plain else ""
    rounds = int(record["rounds"])
    return [f"{task}/{label} ({source}): the run's expert warm start, {rounds} DAgger round{'s' * (rounds != 1)}, "
            f"{int(record.get('extra_env_steps') or 0):,} env steps outside PPO's budget{without}"]


def mask_notes(task: str, method: str, label: str, run: Path) -> list[str]:
    """What a reader needs to know about a main-job run's masks: for a wrong-mask run, which mode's mask each mode
    got and how far it was (L1) from its own; for a ReCoVLA run, whether the selector chose the oracle's masks."""
    if method.startswith("wrong-mask"):
        swaps = (_read(run / "diagnosis.json") or {}).get("wrong_mask")
        if not swaps:
            return [f"{task}/{label} ({run}): no record of its swaps; runs before session 28 took the next mode's mask, "
                    "which is the mode's own where two modes share one (pick_place, stack)"]
        shown = ", ".join(f"{m} on {s['descriptor_of']}'s (L1 {s['mask_l1_distance']:g})" for m, s in swaps.items())
        return [f"{task}/{label}: each mode trained on another mode's mask: {shown}"]
    descriptors = _read(run / "descriptors.json")
    if not method.startswith("recovla-") or not descriptors or task not in TASK_FAMILIES:
        return []
    from recovla_jax.tasks.registry import task_class

    oracle = task_class(task).oracle_masks
    differ = [m for m, d in descriptors.items() if d.get("reward_mask") != oracle.get(m)]
    if not differ:
        return [f"{task}/{label}: the selector chose the oracle's mask for every mode, so an oracle-mask run on the "
                "same bank and seed trains the same policies"]
    return [f"{task}/{label}: masks differ from the oracle's in {', '.join(differ)}"]


def _fill_base(table: Table, task: str, t: dict) -> None:
    rank = lambda method: next((i for i, p in enumerate(_BASE_PRIORITY) if method.startswith(p)), len(_BASE_PRIORITY))  # noqa: E731
    chosen: dict[str, tuple] = {}
    # ReCoVLA's run first, and of several ReCoVLA runs (seeds) the last given: the one whose cells the column and the
    # targets show, so the base alone in a row comes from the same evaluation draws as the ReCoVLA cell beside it
    order = sorted(enumerate(t["base_candidates"]), key=lambda ic: (rank(ic[1][0]), -ic[0]))
    for method, m, cell, src in (c for _, c in order):
        if m not in chosen:
            chosen[m] = (cell, src)
            table.put(task, m, "base", cell, src)
        elif not cells_agree(cell, chosen[m][0]):
            table.notes.append(f"{task}/{m}: base alone differs between {chosen[m][1]} ({fmt_cell(chosen[m][0])}) and {src} "
                               f"({fmt_cell(cell)}): {disagreement_reason(chosen[m][0], cell)}")
    for method, cell, src in sorted(t["nominal_base"], key=lambda c: rank(c[0])):
        if cell is not None:
            table.put_nominal(task, "base", cell, src)
            break
    banks = {k: v for k, v in t["banks"].items() if v is not None}
    if len({json.dumps(v, sort_keys=True) for v in banks.values()}) > 1:
        table.notes.append(f"{task}: the runs' failure banks differ in counts ({', '.join(banks)}): "
                           "pass --bank-dir so every method trains and evaluates on the same states")


def _families(overrides: list[str]) -> dict[str, str]:
    fam = dict(TASK_FAMILIES)
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"--family takes TASK=FAMILY, got {item!r}")
        k, v = item.split("=", 1)
        fam[k.strip()] = v.strip()
    return fam


def build_rows(table: Table, families: dict[str, str]) -> tuple[list[str], list[dict]]:
    """(method columns, rows): rows of kind 'mode', 'average' (per family), 'nominal' (per task) and, with several
    families, one 'overall' (every mode row)."""
    methods = table.methods()
    rows: list[dict] = []
    by_family: dict[str, list[str]] = {}
    for task in sorted(table.tasks, key=lambda n: (families.get(n, "other"), n)):
        by_family.setdefault(families.get(task, "other"), []).append(task)
    for family, tasks in by_family.items():
        for task in tasks:
            t = table.tasks[task]
            for m in t["modes"]:
                rows.append({"kind": "mode", "task": task, "family": family, "row": m,
                             "cells": {k: t["cells"].get((m, k), (None, None))[0] for k in methods},
                             "sources": {k: t["cells"].get((m, k), (None, None))[1] for k in methods}})
        fam_rows = [r for r in rows if r["kind"] == "mode" and r["family"] == family]
        avg = {k: _mean_rate([r["cells"][k] for r in fam_rows]) for k in methods}
        rows.append({"kind": "average", "task": "", "family": family, "row": f"{family} average", "cells": avg, "sources": {}})
        for task in tasks:
            t = table.tasks[task]
            if t["nominal"]:
                rows.append({"kind": "nominal", "task": task, "family": family, "row": "nominal, after training",
                             "cells": {k: t["nominal"].get(k, (None, None))[0] for k in methods},
                             "sources": {k: t["nominal"].get(k, (None, None))[1] for k in methods}})
    if len(by_family) > 1:
        mode_rows = [r for r in rows if r["kind"] == "mode"]
        rows.append({"kind": "overall", "task": "", "family": "", "row": "all tasks average",
                     "cells": {k: _mean_rate([r["cells"][k] for r in mode_rows]) for k in methods}, "sources": {}})
    return methods, rows


def seed_rows(table: Table) -> list[dict]:
    """Per task x method run with two or more seeds: one row per failure mode with each seed's cell, the mean of the
    seeds' rates and their range (max - min), then the task's average per seed (mean over its modes; a seed missing a
    mode has no average). Seeds of one bank share held-out states; the spread is what a rerun can move a cell by."""
    rows: list[dict] = []
    for task in sorted(table.tasks):
        t = table.tasks[task]
        for method, by_seed in t["seeds"].items():
            if len(by_seed) < 2:
                continue
            seeds = sorted(by_seed)
            modes = [m for m in t["modes"] if any(m in by_seed[s][0] for s in seeds)]
            for m in modes:
                cells = {s: by_seed[s][0].get(m) for s in seeds}
                rates = [c["rate"] for c in cells.values() if c]
                rows.append({"kind": "seed", "task": task, "method": method, "row": m, "seeds": cells,
                             "mean": sum(rates) / len(rates), "range": _spread(rates), "runs": len(rates),
                             "sources": {s: by_seed[s][1] for s in seeds}})
            averages = {s: (_mean_rate([by_seed[s][0].get(m) for m in modes]) if all(m in by_seed[s][0] for m in modes)
                            else None) for s in seeds}
            rates = [a["rate"] for a in averages.values() if a]
            rows.append({"kind": "seed-average", "task": task, "method": method, "row": f"{task} average",
                         "seeds": averages, "mean": sum(rates) / len(rates) if rates else None,
                         "range": _spread(rates), "runs": len(rates), "sources": {}})
    return rows


def _spread(rates: list[float]) -> float | None:
    """Max - min of two or more rates; None for a single run (no spread to show)."""
    return max(rates) - min(rates) if len(rates) >= 2 else None


def _mean_rate(cells: list[dict | None]) -> dict | None:
    """Mean of the per-cell rates of the cells that exist, with how many of them there were and the fewest trials
    of any of them (None where a cell carries no count, as seed means do)."""
    present = [c for c in cells if c]
    if not present:
        return None
    trials = [c.get("trials") for c in present]
    return {"rate": sum(c["rate"] for c in present) / len(present), "modes": len(present), "of": len(cells),
            "min_trials": None if None in trials else min(trials)}


def targets(table: Table, rows: list[dict], mjx_target: float = MJX_RECOVERY_TARGET,
            native_target: float = NATIVE_RECOVERY_TARGET, seeds: list[dict] | None = None) -> dict | None:
    """The issue's targets over every task x mode cell of the table: ReCoVLA's mean in MJX (per task, the column of
    the last ReCoVLA run given for it, so a task with several variants counts once), its sim2sim column's mean, and
    the fine-tuned base's mean over the same cells. None without a ReCoVLA run."""
    chosen = {task: t["recovla_method"] for task, t in table.tasks.items() if t.get("recovla_method")}
    if not chosen:
        return None
    mode_rows = [r for r in rows if r["kind"] == "mode"]
    recovla = _mean_rate([r["cells"].get(chosen.get(r["task"])) for r in mode_rows])
    native = _mean_rate([r["cells"]["sim2sim"] for r in mode_rows])
    return {"columns": {task: table.labels.get(m, m) for task, m in chosen.items()}, "cells": len(mode_rows),
            "recovla_mjx": recovla, "mjx_target": mjx_target, "mjx_met": _met(recovla, len(mode_rows), mjx_target),
            "recovla_native": native, "native_target": native_target,
            "native_met": _met(native, len(mode_rows), native_target),
            "finetune_mjx": _mean_rate([r["cells"]["finetune"] for r in mode_rows]),
            "recovla_mjx_seed_mean": _seed_mean(chosen, mode_rows, seed_rows(table) if seeds is None else seeds)}


def _seed_mean(chosen: dict[str, str], mode_rows: list[dict], seeds: list[dict]) -> dict | None:
    """ReCoVLA's mean over every cell where each cell is first averaged over the seeds run for it (the seed rows'
    means); None unless some task's ReCoVLA column has two or more seeds."""
    means = {(r["task"], r["row"]): r["mean"] for r in seeds if r["kind"] == "seed" and chosen.get(r["task"]) == r["method"]}
    if not means:
        return None
    cells = [{"rate": means[(r["task"], r["row"])]} if (r["task"], r["row"]) in means else r["cells"].get(chosen.get(r["task"]))
             for r in mode_rows]
    return {**_mean_rate(cells), "seeded_tasks": sorted({task for task, _ in means})} if any(cells) else None


def _met(mean: dict | None, cells: int, target: float) -> bool:
    """A target is met by a mean over every cell, not over the cells that happen to have a result, each cell with at
    least MIN_TRIALS_PER_CELL trials (the rule of each run's own verdict, `pipeline.target_verdict`)."""
    return bool(mean and mean["modes"] == cells and mean["rate"] >= target and _enough_trials(mean))


def _enough_trials(mean: dict) -> bool:
    return mean.get("min_trials") is not None and mean["min_trials"] >= MIN_TRIALS_PER_CELL


def _target_lines(tg: dict | None) -> list[str]:
    if tg is None:
        return []

    def mean(a: dict | None) -> str:
        return "not run" if not a else f"**{100 * a['rate']:.1f}%** over {a['modes']} of {tg['cells']} cells"

    def verdict(met: bool, a: dict | None, target: float) -> str:
        if met:
            return f"target {target:.0%}: met"
        missing = "" if not a or a["modes"] == tg["cells"] else ", cells missing"
        few = "" if not a or _enough_trials(a) else (f", a cell has {a.get('min_trials')} trials where "
                                                      f"{MIN_TRIALS_PER_CELL} are needed")
        return f"target {target:.0%}: not met{missing}{few}"

    columns = ", ".join(f"{task}: {label}" for task, label in sorted(tg["columns"].items()))
    return ["", "## Targets (every task x mode cell above)", "",
            f"- ReCoVLA in MJX: {mean(tg['recovla_mjx'])} ({verdict(tg['mjx_met'], tg['recovla_mjx'], tg['mjx_target'])}). "
            f"Per task, the column of the last ReCoVLA run given: {columns}.",
            f"- ReCoVLA zero-shot in native MuJoCo (the sim2sim column): {mean(tg['recovla_native'])} "
            f"({verdict(tg['native_met'], tg['recovla_native'], tg['native_target'])}).",
            f"- Fine-tuned base in MJX, same cells: {mean(tg['finetune_mjx'])}."] + _seed_target_line(tg, mean)


def _seed_target_line(tg: dict, mean: Callable[[dict | None], str]) -> list[str]:
    seeded = tg.get("recovla_mjx_seed_mean")
    if not seeded:
        return []
    return [f"- ReCoVLA in MJX with each cell averaged over its seeds ({', '.join(seeded['seeded_tasks'])}; "
            f"the others one run): {mean(seeded)}."]


def _avg_cell(a: dict | None) -> str:
    if not a:
        return DASH
    note = "" if a["modes"] == a["of"] else f" ({a['modes']}/{a['of']} modes)"
    return f"**{100 * a['rate']:.1f}%**{note}"


def write_markdown(table: Table, methods: list[str], rows: list[dict], path: Path, tg: dict | None = None,
                   seeds: list[dict] = (), plot: bool = True, paired: list[str] = ()) -> str:
    head = ["task", "family", "failure mode"] + [table.labels.get(m, m) for m in methods]
    lines = [
        "# ReCoVLA results table",
        "",
        "Success rate on held-out failure states (never trained on) with Wilson 95% CI and n = trials; every method "
        "of a task is trained on the same train failure states with the same env-step budget and evaluated from the same "
        "held-out states under the same seeded dynamics, noise and latency. Average rows: mean of the per-mode rates of "
        "the family. Nominal rows: success from nominal task resets after training (does training break what worked?): "
        "in MJX each policy drives whole episodes (the mode policies pooled, each on its own block of starts), while "
        "the sim2sim cell is the native runtime, which runs a recovery policy only after it detects a failure. "
        f"{DASH} = not run.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        if r["kind"] == "mode":
            cells = [fmt_cell(r["cells"][m]) for m in methods]
            lines.append(f"| {r['task']} | {r['family']} | {r['row']} | " + " | ".join(cells) + " |")
        elif r["kind"] in ("average", "overall"):
            lines.append(f"| **{r['row']}** | | | " + " | ".join(_avg_cell(r["cells"][m]) for m in methods) + " |")
        else:
            cells = [fmt_cell(r["cells"][m]) for m in methods]
            lines.append(f"| {r['task']} | {r['family']} | *{r['row']}* | " + " | ".join(cells) + " |")
    lines += _target_lines(tg)
    lines += _seed_lines(table, list(seeds))
    lines += list(paired)
    lines += ["", "## Sources", "", "| task | column | directory | budget |", "|---|---|---|---|"]
    for s in table.sources:
        lines.append(f"| {s['task']} | {s['column']} | `{s['run']}` | {s['budget']} |")
    if table.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in table.notes]
    lines += ["", "![results](report.png)", ""] if plot else [""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def _seed_lines(table: Table, rows: list[dict]) -> list[str]:
    if not rows:
        return []
    seeds = sorted({s for r in rows for s in r["seeds"]})
    head = ["task", "method", "failure mode", *(f"seed {s}" for s in seeds), "mean of seeds", "range (max - min)"]
    lines = ["", "## Across seeds", "",
             "Methods run with more than one seed (config.json's `seed`); the table above shows the last run given. "
             "Runs of one bank share the held-out states, so the range is how far a rerun moved the cell.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = table.labels.get(r["method"], r["method"])
        spread = DASH if r["range"] is None else f"{100 * r['range']:.1f} pp"
        if r["kind"] == "seed":
            cells = [fmt_cell(r["seeds"].get(s)) for s in seeds]
            lines.append(f"| {r['task']} | {label} | {r['row']} | " + " | ".join(cells)
                         + f" | {100 * r['mean']:.1f}% | {spread} |")
        else:
            cells = [_avg_cell(r["seeds"].get(s)) for s in seeds]
            mean = DASH if r["mean"] is None else f"**{100 * r['mean']:.1f}%**"
            lines.append(f"| **{r['row']}** | {label} | | " + " | ".join(cells) + f" | {mean} | {spread} |")
    return lines


CSV_FIELDS = ("task", "family", "row", "kind", "method", "label", "successes", "trials", "rate", "ci_low", "ci_high",
              "modes_averaged", "source", "seed")


def write_csv(table: Table, methods: list[str], rows: list[dict], path: Path, seeds: list[dict] = ()) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            for m in methods:
                c = r["cells"].get(m)
                if not c:
                    continue
                w.writerow({"task": r["task"], "family": r["family"], "row": r["row"], "kind": r["kind"], "method": m,
                            "label": table.labels.get(m, m), "successes": c.get("successes", ""), "trials": c.get("trials", ""),
                            "rate": c["rate"], "ci_low": c.get("ci_low", ""), "ci_high": c.get("ci_high", ""),
                            "modes_averaged": c.get("modes", ""), "source": r["sources"].get(m) or ""})
        for r in seeds:
            for seed, c in r["seeds"].items():
                if not c:
                    continue
                w.writerow({"task": r["task"], "family": "", "row": r["row"], "kind": r["kind"], "method": r["method"],
                            "label": table.labels.get(r["method"], r["method"]), "successes": c.get("successes", ""),
                            "trials": c.get("trials", ""), "rate": c["rate"], "ci_low": c.get("ci_low", ""),
                            "ci_high": c.get("ci_high", ""), "modes_averaged": c.get("modes", ""),
                            "source": r["sources"].get(seed, ""), "seed": seed})


def write_plot(table: Table, methods: list[str], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bars = [r for r in rows if r["kind"] in ("mode", "nominal")]
    tasks = [t for t in dict.fromkeys(r["task"] for r in bars)]
    shown = [m for m in methods if any(r["cells"].get(m) for r in bars)]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(max(6.0, 2.2 + 1.6 * len(shown)) * max(len(tasks), 1) * 0.75, 4.2),
                             squeeze=False)
    width = 0.8 / max(len(shown), 1)
    for ax, task in zip(axes[0], tasks):
        trows = [r for r in bars if r["task"] == task]
        x = np.arange(len(trows))
        for j, m in enumerate(shown):
            cells = [r["cells"].get(m) for r in trows]
            rate = np.array([c["rate"] if c else np.nan for c in cells])
            lo = np.array([c["rate"] - c["ci_low"] if c else 0.0 for c in cells])
            hi = np.array([c["ci_high"] - c["rate"] if c else 0.0 for c in cells])
            ax.bar(x + (j - (len(shown) - 1) / 2) * width, rate, width, yerr=[lo, hi], capsize=2, label=table.labels.get(m, m))
        ax.set_xticks(x, [("nominal" if r["kind"] == "nominal" else r["row"]) for r in trows], rotation=20, ha="right")
        ax.set(ylim=(0, 1.05), ylabel="success rate (Wilson 95% CI)", title=task)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)


def build_report(runs: list[Path], out: Path, sim2sim_arm: str = "runtime_rules", families: dict[str, str] | None = None,
                 plot: bool = True) -> dict:
    """Collect `runs` and write report.md / report.csv / report.png into `out`; returns paths, columns and rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = collect([Path(r) for r in runs], sim2sim_arm)
    if not table.tasks:
        raise SystemExit("no finished run among --runs (none has results.json)")
    methods, rows = build_rows(table, families or dict(TASK_FAMILIES))
    seeds = seed_rows(table)
    tg = targets(table, rows, seeds=seeds)
    reference = {task: t["recovla_method"] for task, t in table.tasks.items() if t.get("recovla_method")}
    paired, unpaired = paired_rows([r for r in rows if r["kind"] == "mode"], methods, reference)
    by_seed = seed_paired_rows(table.tasks, reference)
    md = write_markdown(table, methods, rows, out / "report.md", tg, seeds, plot=plot,
                        paired=paired_markdown(paired, unpaired, table.labels) + seed_paired_markdown(by_seed, table.labels))
    write_csv(table, methods, rows, out / "report.csv", seeds)
    write_paired_csv(paired + [r for r in by_seed if r["kind"] == "seed"], table.labels, out / "paired.csv")
    if plot:
        write_plot(table, methods, rows, out / "report.png")
    else:
        (out / "report.png").unlink(missing_ok=True)  # an earlier report's plot would show other runs
    return {"markdown": out / "report.md", "csv": out / "report.csv", "png": out / "report.png" if plot else None,
            "methods": methods, "labels": table.labels, "rows": rows, "notes": table.notes, "text": md,
            "targets": tg, "seeds": seeds, "paired": paired, "unpaired": unpaired, "paired_by_seed": by_seed}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    rep = build_report(args.runs, Path(args.out), args.sim2sim_arm, _families(args.family), plot=not args.no_plot)
    print(rep["text"])
    print(f"\nwrote {rep['markdown']}, {rep['csv']}" + (f", {rep['png']}" if rep["png"] else ""))
    return rep


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

"""Reproduce every run of the results table (experiments.report), task by task, then the report.

    python -m experiments.benchmark_suite                       # all tasks; reduced budget on CPU (says so)
    python -m experiments.benchmark_suite --dry-run             # print the commands only
    python -m experiments.benchmark_suite --tasks drawer --out benchmark --budget=full --skip-existing

For each task, in order (each a separate `python -m` process; the commands are printed first):
  1. main job, ReCoVLA:      experiments.train --selector=<--selector>              -> OUT/<task>/recovla
  2. residual, oracle mask:  experiments.train --selector=oracle --bank-dir=<1's bank> -> OUT/<task>/oracle-mask
  3. residual, wrong mask:   experiments.train --mask=wrong --bank-dir=<1's bank>      -> OUT/<task>/wrong-mask
  4. fine-tuned base:        experiments.baselines --method=finetune      --run=<1>   -> <1>/baselines/finetune
  5. residual, full reward:  experiments.baselines --method=residual-full --run=<1>   -> <1>/baselines/residual-full
  6. nominal success after training of 1-3: experiments.baselines --method=nominal     -> <run>/baselines/nominal
  7. ONNX export, stall windows on train states, zero-shot sim-to-sim of 1: experiments.export,
     experiments.tune_runtime, experiments.evaluate -> <1>/export, <1>/runtime_tuning, <1>/sim2sim
  8. with --extra-seeds K ...: per seed K, steps 1, 4, 7 again with --seed=K on 1's failure bank -> OUT/<task>/recovla-seedK
then experiments.report over every main-job run -> OUT/report (report.md, report.csv, report.png; with extra seeds,
its "Across seeds" section shows every seed's cells, while the main table shows --seed's runs).
`--skip-existing` skips a step whose output exists, unless what it was made from was rewritten after it (a
retrained run reruns its baselines, nominal checks and export; a new export its stall windows and sim-to-sim).
Every method of a task trains on the same failure bank (2 and 3 reuse 1's, 4-6 read it from the run) with
the same env steps per policy (the baselines take the run's budget from its config.json).

Per-task training settings: the table's protocol for a task is part of its runs. `TASK_TRAIN_ARGS` holds each
task's recipe from `experiments.task_recipes` (the settings of its best measured run in the README's Results, with
the sessions that measured them; the main job's own defaults for the task since session 30), written out on every
main-job command so that each printed command is complete on its own; the reduced budget keeps its own
`--candidates`. `--train-arg TASK:ARG` (repeatable) adds one for a task, `--no-task-args` drops the recipe (the
main-job runs then get `--no-task-recipe`). They go to all three main-job runs of the task; the baselines read
them from the run's config.json, so they follow.
The reduced budget keeps one warm-start round (`--expert-warm-start=1`): the warm start's rollouts do not shrink
with the budget (512 per round). Sim-to-sim runs every task with the runtime's defaults (since session 23 a
stalled recovery keeps its policy driving when the selector sees no failure: stack 83.3% against 67.0%, session 19),
except the stall window: `experiments.tune_runtime` chooses each recovery policy's window (50 / 100 / 150 steps
without progress before a re-diagnosis) on the run's TRAIN states and writes it into the manifest, which the
sim-to-sim then reads. pick_place's missed_grasp policy re-grasps for longer than 50 steps without progress, and
the re-diagnosis then switched to knocked_away's policy (session 24); the README's pick_place cells were measured
at 100 for every policy, chosen by the same train-state comparison before the tuner existed (session 25).

Budgets: `full` = the main job's defaults (4096 envs, 20M env steps per policy on GPU/TPU; 128 envs, 1M
on CPU), all held-out and 100 nominal states in sim-to-sim. `reduced` = 64 envs, 40k env steps per policy,
256 injected candidates per mode (no held-out target), 32 nominal starts per mode, 20 sim-to-sim states per mode
(and 20 train states per mode for the stall windows): a smoke-scale reproduction whose numbers are NOT the table's
results, and still hours on 2 CPU cores (session 27: drawer 23 min, peg_insert 46 min, pick_place 74 min; stack
about 3 h, session 29: 26-33 min per training run on its 300-step episodes; cloning a task's base policy,
1.5-15 min (stack's 14.7), comes first where it is not cached). `auto` (default) = full on an
accelerator, reduced on CPU, and it prints which.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.task_recipes import NO_RECIPE_FLAG, TASK_RECIPES, recipe_args

REDUCED = {"train": ["--num-envs=64", "--timesteps=40000", "--candidates=256", "--min-heldout=0"],
           "nominal": ["--nominal-episodes=32"], "sim2sim": ["--episodes-per-mode=20", "--nominal-episodes=20"],
           "tune": ["--episodes-per-mode=20"]}
FULL = {"train": [], "nominal": [], "sim2sim": [], "tune": []}
TASK_TRAIN_ARGS: dict[str, tuple[str, ...]] = {t: tuple(recipe_args(t)) for t in TASK_RECIPES}
REDUCED_WARM_START = "--expert-warm-start=1"  # a smoke run: one DAgger round instead of the table's


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]  # after the python executable
    done_marker: Path | None  # with --skip-existing, the step is skipped when this file exists ...
    inputs: tuple[Path, ...] = ()  # ... and is not older than any of these (what earlier steps write for it)

    def shell(self, python: str) -> str:
        return shlex.join([python, *self.argv])

    def stale_inputs(self) -> list[Path]:
        """The inputs written after this step's output: a rerun of an earlier step (a retrained run, a re-export)
        makes the output describe something that no longer exists, so --skip-existing must not keep it."""
        if self.done_marker is None or not self.done_marker.exists():
            return []
        done = self.done_marker.stat().st_mtime
        return [p for p in self.inputs if p.exists() and p.stat().st_mtime > done]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: every registered task)")
    p.add_argument("--out", default="benchmark", help="root directory of all runs and the report")
    p.add_argument("--budget", choices=["auto", "full", "reduced"], default="auto",
                   help="auto = full on GPU/TPU, reduced on CPU (see above)")
    p.add_argument("--selector", default="auto", help="ReCoVLA's selector (experiments.train --selector)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-seeds", nargs="+", type=int, default=[], metavar="K",
                   help="also train ReCoVLA and the fine-tuned base with these seeds on the --seed run's failure bank, "
                        "export and evaluate them sim-to-sim (the report shows each seed's cells, their mean and range)")
    p.add_argument("--sim2sim-arm", default="runtime_rules", help="experiments.report --sim2sim-arm")
    p.add_argument("--export-tolerance", type=float, default=None,
                   help="experiments.export --tolerance (default: export's own, 1e-5)")
    p.add_argument("--train-arg", action="append", default=[], type=task_train_arg, metavar="TASK:ARG",
                   help="an experiments.train option for TASK's main-job runs, e.g. stack:--hand-back-delay=50 (repeatable)")
    p.add_argument("--no-task-args", action="store_true",
                   help=f"drop the per-task training recipes {TASK_TRAIN_ARGS}")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip steps whose output exists and is newer than what it reads (resume a suite)")
    p.add_argument("--keep-going", action="store_true", help="run the remaining steps (and the report) after a failure")
    return p


def task_train_arg(text: str) -> tuple[str, str]:
    """`TASK:ARG` -> (task, arg); the task is checked against the registry when the steps are built."""
    task, sep, arg = text.partition(":")
    if not sep or not task.strip() or not arg.startswith("--"):
        raise argparse.ArgumentTypeError(f"expected TASK:--option[=value], e.g. stack:--hand-back, got {text!r}")
    return task.strip(), arg


def task_train_args(tasks: list[str], extra: list[tuple[str, str]], use_defaults: bool = True) -> dict[str, list[str]]:
    """Each task's extra experiments.train options: the table's defaults (unless dropped) plus `extra`."""
    unknown = sorted({t for t, _ in extra} - set(tasks))
    if unknown:
        raise SystemExit(f"--train-arg: task(s) {unknown} are not among the suite's tasks {tasks}")
    out = {t: list(TASK_TRAIN_ARGS.get(t, ())) if use_defaults else [NO_RECIPE_FLAG] for t in tasks}
    for t, arg in extra:
        out[t].append(arg)
    return out


def option_name(arg: str) -> str:
    """`--candidates=4096` -> `--candidates`."""
    return arg.split("=", 1)[0]


def reduced_task_args(task_args: list[str]) -> list[str]:
    """A task's settings under the reduced budget: one warm-start round, and the budget's own value wherever both set
    an option (pick_place's `--candidates=4096` would otherwise outlast the budget's 256: argparse keeps the last)."""
    budget_options = {option_name(a) for a in REDUCED["train"]}
    out = [REDUCED_WARM_START if a.startswith("--expert-warm-start") else a for a in task_args]
    return [a for a in out if option_name(a) not in budget_options]


def resolve_budget(budget: str) -> tuple[str, str]:
    """('full' | 'reduced', why)."""
    if budget != "auto":
        return budget, f"--budget={budget}"
    from recovla_jax.utils.jax_setup import on_accelerator

    if on_accelerator():
        return "full", "an accelerator is present"
    return "reduced", "no GPU/TPU: CPU only"


def default_tasks() -> list[str]:
    from recovla_jax.tasks import task_names

    return task_names()


def check_extra_seeds(seed: int, extra_seeds: list[int]) -> list[int]:
    """The extra seeds, refused when one repeats `seed` or another extra seed (it would overwrite that run)."""
    repeated = sorted({k for k in extra_seeds if k == seed or extra_seeds.count(k) > 1})
    if repeated:
        raise SystemExit(f"--extra-seeds: seed(s) {repeated} repeat --seed={seed} or each other; give distinct seeds")
    return list(extra_seeds)


def build_steps(tasks: list[str], out: Path, budget: str, selector: str = "auto", seed: int = 0,
                sim2sim_arm: str = "runtime_rules", export_tolerance: float | None = None,
                train_args: dict[str, list[str]] | None = None, extra_seeds: Sequence[int] = ()) -> list[Step]:
    """Every command of the suite, in order (see the module docstring); `train_args[task]` go to its main-job runs
    (default: `TASK_TRAIN_ARGS`)."""
    extra_seeds = check_extra_seeds(seed, list(extra_seeds))
    b = REDUCED if budget == "reduced" else FULL
    train_args = task_train_args(tasks, []) if train_args is None else train_args
    steps: list[Step] = []
    runs: list[Path] = []
    for task in tasks:
        root = out / task
        main, oracle, wrong = root / "recovla", root / "oracle-mask", root / "wrong-mask"
        bank = main / "bank"
        bank_meta, main_results = bank / "bank.json", main / "results.json"
        task_args = train_args.get(task, [])
        if budget == "reduced":
            task_args = reduced_task_args(task_args)

        def train_argv(run_seed: int) -> list[str]:
            return ["-m", "experiments.train", f"--task={task}", f"--seed={run_seed}", *b["train"], *task_args]

        train = train_argv(seed)

        def export_and_sim2sim(run: Path, run_seed: int, label: str) -> list[Step]:
            export = ["-m", "experiments.export", f"--run={run}"]
            manifest, tuning = run / "export" / "manifest.json", run / "runtime_tuning" / "tuning.json"
            return [Step(f"{task}: ONNX export of {label}",
                         export + ([] if export_tolerance is None else [f"--tolerance={export_tolerance:g}"]),
                         manifest, (run / "results.json",)),
                    Step(f"{task}: runtime stall windows of {label}, chosen on train states",
                         ["-m", "experiments.tune_runtime", f"--run={run}", f"--seed={run_seed}", *b["tune"]],
                         tuning, (manifest,)),  # tuning rewrites the manifest, then writes tuning.json
                    Step(f"{task}: zero-shot sim-to-sim of {label}", ["-m", "experiments.evaluate", f"--run={run}",
                                                                      "--backend=mujoco", f"--seed={run_seed}", *b["sim2sim"]],
                         run / "sim2sim" / "sim2sim.json", (manifest, tuning))]

        steps += [
            Step(f"{task}: ReCoVLA (selector {selector})", [*train, f"--run-dir={main}", f"--selector={selector}"],
                 main / "results.json"),
            Step(f"{task}: residual on the oracle mask",
                 [*train, f"--run-dir={oracle}", "--selector=oracle", f"--bank-dir={bank}"], oracle / "results.json",
                 (bank_meta,)),
            Step(f"{task}: residual on a wrong mask", [*train, f"--run-dir={wrong}", f"--selector={selector}", "--mask=wrong",
                                                       f"--bank-dir={bank}"], wrong / "results.json", (bank_meta,)),
        ]
        for method in ("finetune", "residual-full"):
            steps.append(Step(f"{task}: baseline {method}", ["-m", "experiments.baselines", f"--run={main}", f"--method={method}",
                                                             *b["nominal"]], main / "baselines" / method / "results.json",
                              (main_results,)))
        for run in (main, oracle, wrong):
            steps.append(Step(f"{task}: nominal success of {run.name}", ["-m", "experiments.baselines", f"--run={run}",
                                                                         "--method=nominal", *b["nominal"]],
                              run / "baselines" / "nominal" / "results.json", (run / "results.json",)))
        steps += export_and_sim2sim(main, seed, "ReCoVLA")
        seeded: list[Path] = []
        for k in extra_seeds:
            run = root / f"recovla-seed{k}"
            steps += [Step(f"{task}: ReCoVLA, seed {k}", [*train_argv(k), f"--run-dir={run}", f"--selector={selector}",
                                                          f"--bank-dir={bank}"], run / "results.json", (bank_meta,)),
                      Step(f"{task}: baseline finetune, seed {k}", ["-m", "experiments.baselines", f"--run={run}",
                                                                     "--method=finetune", *b["nominal"]],
                           run / "baselines" / "finetune" / "results.json", (run / "results.json",)),
                      *export_and_sim2sim(run, k, f"ReCoVLA, seed {k}")]
            seeded.append(run)
        runs += [*seeded, main, oracle, wrong]  # --seed's run last: the main table and the targets show it
    steps.append(Step("results table", ["-m", "experiments.report", "--runs", *map(str, runs), f"--out={out / 'report'}",
                                        f"--sim2sim-arm={sim2sim_arm}"], None))
    return steps


def child_environment(parent: dict[str, str] | None = None) -> dict[str, str]:
    """The steps' environment: the caller's, with PYTHONHASHSEED fixed (0 unless set) so that each of the suite's
    processes can reuse the compilations of the one before from JAX's persistent cache, as under `dev.py`."""
    from recovla_jax.utils.jax_setup import hash_seed_is_random

    env = dict(os.environ if parent is None else parent)
    if hash_seed_is_random(env):
        env["PYTHONHASHSEED"] = "0"
    return env


def main(argv: list[str] | None = None) -> list[Step]:
    args = build_parser().parse_args(argv)
    budget, why = resolve_budget(args.budget)
    tasks = args.tasks or default_tasks()
    per_task = task_train_args(tasks, args.train_arg, use_defaults=not args.no_task_args)
    steps = build_steps(tasks, Path(args.out), budget, args.selector, args.seed, args.sim2sim_arm, args.export_tolerance,
                        per_task, args.extra_seeds)
    python = sys.executable
    if budget == "reduced":
        print(f"benchmark suite: REDUCED budget ({why}): {' '.join(REDUCED['train'])} per main-job run, "
              f"{' '.join(REDUCED['nominal'])}, sim2sim {' '.join(REDUCED['sim2sim'])}. A smoke-scale reproduction: "
              "its numbers are not the results of the table (run on a GPU/TPU, or pass --budget=full).")
    else:
        print(f"benchmark suite: FULL budget ({why}): the main job's default envs and env steps per policy.")
    print(f"tasks: {', '.join(tasks)}; {len(steps)} steps; output under {args.out}")
    for t, extra in per_task.items():
        if extra:
            print(f"{t}: main-job runs with {' '.join(extra)}")
    for i, s in enumerate(steps, 1):
        print(f"[{i:2d}] {s.name}\n     {s.shell(python)}")
    if args.dry_run:
        return steps
    failed = []
    for i, s in enumerate(steps, 1):
        if args.skip_existing and s.done_marker is not None and s.done_marker.exists():
            newer = s.stale_inputs()
            if not newer:
                print(f"[{i:2d}] skip (exists: {s.done_marker}) {s.name}")
                continue
            print(f"[{i:2d}] rerun: {s.done_marker} is older than {', '.join(map(str, newer))} (rewritten since)")
        print(f"\n[{i:2d}/{len(steps)}] {s.name}\n$ {s.shell(python)}", flush=True)
        t0 = time.time()
        rc = subprocess.call([python, *s.argv], env=child_environment())
        print(f"[{i:2d}] {s.name}: exit {rc} after {(time.time() - t0) / 60:.1f} min", flush=True)
        if rc != 0:
            failed.append(s.name)
            if not args.keep_going:
                raise SystemExit(f"step failed: {s.name} (exit {rc}); rerun with --skip-existing to resume")
    if failed:
        raise SystemExit(f"{len(failed)} step(s) failed: {failed}")
    return steps


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

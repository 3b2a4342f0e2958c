"""Choose the runtime's stall window per recovery policy on a run's TRAIN failure states, and put it in the manifest.

    python -m experiments.tune_runtime --run=RUN                      # windows 50 100 150, 300 train states per mode
    python -m experiments.tune_runtime --run=RUN --windows 25 50 100 --episodes-per-mode=100 --no-write

The runtime re-diagnoses a recovery that makes no task progress for N steps (`MonitorConfig.recovery_stall_steps`).
Too short, and a policy that needs a long re-grasp is switched away mid-recovery (pick_place's missed_grasp at 50,
docs/experiments.md sessions 24-25); too long, and a wrong diagnosis drives on. For each window, the native runtime
(rules selector; `--arm=runtime_oracle` for the oracle) starts the first --episodes-per-mode TRAIN states of every mode:
the policies trained on them, and held-out states are never started, so the choice cannot leak into the results.
Every state keeps the same dynamics draw under every window. Each policy gets the window with the most successes over
the modes it serves (a tie keeps the runtime's default if it is among the best, else the shortest of them). A policy's
window can change other modes' episodes (a re-diagnosis switches policies), so the chosen combination is run once more
on the same states and reported beside the sweep.

Writes RUN/runtime_tuning/tuning.json and tuning.md and, unless --no-write, each policy's window into
RUN/export/manifest.json (`recovery_stall_steps`, with this tuning recorded under `source.runtime_tuning`), which the
runtime and `experiments.evaluate` then use. The models are not touched. Imports no JAX unless it has to export.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments.arg_types import positive_int
from recovla_jax.runtime.monitor import MonitorConfig

DEFAULT_WINDOWS = (50, 100, 150)
RUNTIME_ARMS = ("runtime_rules", "runtime_oracle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.tune_runtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run directory (exported first if RUN/export is missing)")
    p.add_argument("--export-dir", default=None, help="exported models (default RUN/export)")
    p.add_argument("--windows", type=positive_int, nargs="+", default=list(DEFAULT_WINDOWS),
                   help=f"stall windows to compare, in control steps (default {' '.join(map(str, DEFAULT_WINDOWS))})")
    p.add_argument("--episodes-per-mode", type=positive_int, default=300, help="train states per failure mode (default 300)")
    p.add_argument("--arm", choices=RUNTIME_ARMS, default="runtime_rules", help="which runtime's success decides")
    p.add_argument("--seed", type=int, default=0, help="seed of the dynamics draws and noise")
    p.add_argument("--out", default=None, help="where tuning.json/.md go (default RUN/runtime_tuning)")
    p.add_argument("--no-write", action="store_true", help="report the choice without writing it into the manifest")
    p.add_argument("-v", "--verbose", action="store_true", help="log every runtime event")
    return p


def choose_windows(successes: dict[int, dict[str, int]], policies: dict[str, list[str]], default: int) -> dict[str, int]:
    """Policy -> the window with the most successes over its modes; a tie keeps `default` if it is among the best,
    else the shortest. `successes[window][mode]` counts the same states under every window."""
    chosen = {}
    for name, modes in policies.items():
        score = {w: sum(successes[w].get(m, 0) for m in modes) for w in successes}
        best = max(score.values())
        tied = sorted(w for w, s in score.items() if s == best)
        chosen[name] = default if default in tied else tied[0]
    return chosen


def _markdown(res: dict) -> str:
    modes, windows = res["modes"], [str(w) for w in res["windows"]]
    pct = lambda c: f"{100 * c['rate']:.1f}%"  # noqa: E731
    chosen = "; ".join(f"{p} {w} steps ({', '.join(res['policies'][p])})" for p, w in res["chosen"].items())
    lines = [f"# Runtime stall window, chosen on TRAIN states: task `{res['task']}`", "",
             f"- arm `{res['arm']}`; the first {res['episodes_per_mode']} train states per mode (n per mode below); "
             f"held-out states were not started; seed {res['seed']}; {res['wall_seconds'] / 60:.1f} min",
             f"- chosen per policy (the runtime's default is {res['default_window']}): {chosen}",
             f"- written into the manifest: {res['written'] or 'no (--no-write)'}", "",
             "| stall window | " + " | ".join(f"{m} (n={res['sweep'][windows[0]][m]['trials']})" for m in modes) + " | average |",
             "|---|" + "---|" * (len(modes) + 1)]
    for w in windows:
        cells = res["sweep"][w]
        lines.append(f"| {w} | " + " | ".join(pct(cells[m]) for m in modes) + f" | {100 * res['average'][w]:.1f}% |")
    lines.append("| **chosen, run again** | " + " | ".join(pct(res["chosen_result"][m]) for m in modes)
                 + f" | **{100 * res['average']['chosen']:.1f}%** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from experiments.evaluate import configure_runtime_logging, load_export_and_bank
    from recovla_jax.evaluation.sim2sim import Sim2SimConfig, Sim2SimEvaluator
    from recovla_jax.runtime.manifest import save_manifest, with_stall_windows
    from recovla_jax.runtime.onnx_policy import OnnxBasePolicy

    console = Console()
    configure_runtime_logging(args.verbose)
    run = Path(args.run)
    export_dir = Path(args.export_dir) if args.export_dir else run / "export"
    manifest, bank, bank_modes = load_export_and_bank(run, export_dir, console)
    windows = sorted(set(args.windows))
    policies = {p.name: list(p.modes) for p in manifest.recovery_policies}
    default = MonitorConfig().recovery_stall_steps
    base = OnnxBasePolicy(export_dir, manifest.base_policy)

    def evaluator(man, monitor: MonitorConfig) -> Sim2SimEvaluator:
        cfg = Sim2SimConfig(episodes_per_mode=args.episodes_per_mode, nominal_episodes=0, seed=args.seed, states="train",
                            monitor=monitor)
        return Sim2SimEvaluator(export_dir, man, base, cfg)

    sweeps = {w: evaluator(manifest, MonitorConfig(recovery_stall_steps=w, policy_stall_steps=False)) for w in windows}
    n_states = sum(len(idx) for idx, _ in sweeps[windows[0]].failure_starts(bank, bank_modes).values())
    if n_states == 0:
        raise SystemExit(f"{run}'s failure bank has no train states for the exported policies' modes: nothing to tune on")
    console.print(f"tune_runtime: {len(windows)} stall windows + the chosen combination x {n_states} TRAIN failure "
                  f"states, arm {args.arm}, native MuJoCo")
    t0 = time.time()
    progress = Progress(TextColumn("[bold]{task.fields[group]:>28}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)

    def sweep(ev: Sim2SimEvaluator, label: str) -> dict[str, list]:
        bar = progress.add_task(label, total=n_states, group=label)
        out = ev.failure_episodes(bank, bank_modes, (args.arm,), lambda m, arm, ok: progress.update(bar, advance=1))
        return {m: results[args.arm] for m, (_, results, _) in out.items()}

    from recovla_jax.evaluation.stats import wilson

    def cells(episodes: dict[str, list]) -> dict[str, dict]:
        return {m: wilson(sum(r.success for r in rs), len(rs)).as_dict() for m, rs in episodes.items()}

    with progress:
        per_window = {w: cells(sweep(ev, f"window {w}")) for w, ev in sweeps.items()}
        chosen = choose_windows({w: {m: c["successes"] for m, c in cs.items()} for w, cs in per_window.items()},
                                policies, default)
        tuned = with_stall_windows(manifest, chosen, {"states": "train", "arm": args.arm,
                                                      "episodes_per_mode": args.episodes_per_mode, "windows": windows,
                                                      "seed": args.seed})
        chosen_cells = cells(sweep(evaluator(tuned, MonitorConfig()), "chosen windows"))
    modes = list(chosen_cells)
    avg = lambda cs: float(np.mean([cs[m]["rate"] for m in modes]))  # noqa: E731
    out_dir = Path(args.out) if args.out else run / "runtime_tuning"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = None
    if not args.no_write:
        written = str(save_manifest(tuned, export_dir))
    res = {"task": manifest.task, "run_dir": str(run.absolute()), "export_dir": str(export_dir.absolute()),
           "states": "train", "arm": args.arm, "episodes_per_mode": args.episodes_per_mode, "seed": args.seed,
           "windows": windows, "default_window": default, "modes": modes, "policies": policies,
           "sweep": {str(w): cs for w, cs in per_window.items()}, "chosen": chosen, "chosen_result": chosen_cells,
           "average": {**{str(w): avg(cs) for w, cs in per_window.items()}, "chosen": avg(chosen_cells)},
           "written": written, "wall_seconds": time.time() - t0}
    (out_dir / "tuning.json").write_text(json.dumps(res, indent=2))
    (out_dir / "tuning.md").write_text(_markdown(res))
    console.print((out_dir / "tuning.md").read_text())
    console.print(f"[bold green]wrote[/] {out_dir / 'tuning.json'}" + (f" and the windows into {written}" if written else ""))
    return res


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

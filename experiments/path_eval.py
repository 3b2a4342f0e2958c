"""Where along the scripted expert's recoveries does a run's trained residual succeed, against the base alone?

    python -m experiments.path_eval --run RUN                    # every mode, 48 states per path step
    python -m experiments.path_eval --run RUN --mode dropped_in_transit --states 96

For a run trained with `--expert-path-starts`: its path states (RUN/expert_paths, built from TRAIN failure
states) are grouped by how many steps the expert had driven; from each group the trained residual and the
base alone run under the run's evaluation conditions (randomized dynamics, noise, latency, hand-back
setting). A residual that beats the base late on the path but not early learned the end of the recovery,
not yet its start: the curriculum's frontier. These are training-distribution states, so this is a
diagnosis, never a result; the run's held-out numbers stay in results.json. Writes RUN/path_eval.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recovla_jax.utils.run_dirs import write_run_record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.path_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="main-job run directory trained with --expert-path-starts")
    p.add_argument("--mode", action="append", default=None, help="failure mode(s) to evaluate (default: every trained mode)")
    p.add_argument("--states", type=int, default=48, help="path states per (mode, path step), drawn at random (seed 0)")
    p.add_argument("--out", default=None, help="output JSON (default <run>/path_eval.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.states < 1:
        raise SystemExit(f"--states must be >= 1, got {args.states}")
    run = Path(args.run)
    if not (run / "expert_paths" / "bank.npz").exists():
        raise SystemExit(f"{run} has no expert_paths/bank.npz: it was not trained with --expert-path-starts")
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    import numpy as np
    from rich.console import Console

    from experiments.baselines import eval_conditions, load_run, run_residual_env
    from recovla_jax.evaluation.recovery import RecoveryEvaluator
    from recovla_jax.evaluation.run_policies import load_run_policies
    from recovla_jax.export.run_reader import load_run_base
    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.sim.randomization import DomainRandomization
    from recovla_jax.tasks import get_task

    console = Console()
    t0 = time.time()
    info = load_run(run)
    config = info["config"]
    cond = eval_conditions(config, info["results"])
    task = get_task(config["task"], {"episode_length": int(config["episode_length"])})
    pol = load_run_policies(run)
    modes = args.mode or [m for m in task.failure_modes if m in pol.params_for_mode]
    unknown = [m for m in modes if m not in pol.params_for_mode]
    if unknown:
        raise SystemExit(f"--mode: {unknown} has no trained policy in {run}; valid: {', '.join(pol.params_for_mode)}")
    paths = FailureBank.load(run / "expert_paths")
    rng = np.random.default_rng(0)
    groups: list[tuple[str, int, np.ndarray]] = []
    for m in modes:
        in_mode = paths.arrays["mode"] == task.failure_modes.index(m)
        for step in sorted(set(paths.arrays["path_step"][in_mode].tolist())):
            idx = np.flatnonzero(in_mode & (paths.arrays["path_step"] == step))
            groups.append((m, step, np.sort(rng.choice(idx, min(args.states, idx.size), replace=False))))
    chosen = np.concatenate([g[2] for g in groups])
    sub = FailureBank(paths.task, paths.modes, paths.stages, {k: v[chosen] for k, v in paths.arrays.items()}, paths.meta)
    env = run_residual_env(task, load_run_base(run), sub, pol, cond)
    dr = DomainRandomization() if cond["domain_randomization"] else None
    ev = RecoveryEvaluator(env, pol.apply, int(cond["episode_length"]), seed=int(cond["seed"]), randomization=dr)
    record = {"run": str(run.absolute()), "task": task.name, "conditions": cond, "states_per_step": args.states,
              "note": "training-distribution states (from TRAIN failure states): a diagnosis, not a held-out result",
              "modes": {}}
    offset = 0
    for m, step, idx in groups:
        rows = np.arange(offset, offset + idx.size)
        offset += idx.size
        cell = {"path_step": step, "residual": ev.success(pol.params_for_mode[m], rows),
                "base": ev.success(pol.params_for_mode[m], rows, use_residual=False)}
        record["modes"].setdefault(m, []).append(cell)
        console.print(f"{m} path step {step:3d}: residual {cell['residual']['rate']:.1%}  base alone {cell['base']['rate']:.1%}"
                      f"  n={idx.size}")
    record["wall_seconds"] = time.time() - t0
    out = write_run_record(record, run, args.out, "path_eval.json")
    console.print(f"({record['wall_seconds'] / 60:.1f} min) -> {out}")
    return record


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

"""Held-out MJX success of a run's trained residuals with and without hand-back to the base.

    python -m experiments.handback --run runs/stack-...                # all held-out states of every mode
    python -m experiments.handback --run RUN --states 64               # the first 64 per mode

The main job's default protocol leaves a residual on for the whole episode. The robot runtime instead hands
control back to the frozen base once the selector sees no failure. This evaluates the same trained policies,
on the same held-out states, randomized dynamics, noise, latency and seed as the run's own evaluation, under
both: `whole episode` (residual always on) and `hand-back` (the residual acts while the task's failure label
names a failure and `--hand-back-delay` steps after: `ResidualEnv(hand_back=True)`), beside the base alone.
Success is the whole task's in both. It tells whether a residual learned a partial recovery that the base
can finish. Writes <run>/handback.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recovla_jax.utils.run_dirs import write_run_record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.handback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="main-job run directory (config.json, bank, policies/, checkpoints/)")
    p.add_argument("--states", type=int, default=None, help="held-out states per mode, the first ones (default: all)")
    p.add_argument("--hand-back-delay", type=int, default=None, metavar="STEPS",
                   help="steps the residual keeps control after the failure label clears (default: the run's, else 0)")
    p.add_argument("--out", default=None, help="output JSON (default <run>/handback.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.states is not None and args.states < 1:
        raise SystemExit(f"--states must be >= 1, got {args.states}")
    if args.hand_back_delay is not None and args.hand_back_delay < 0:
        raise SystemExit(f"--hand-back-delay must be >= 0, got {args.hand_back_delay}")
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    import numpy as np
    from rich.console import Console

    from experiments.baselines import _fmt, eval_conditions, load_run, run_residual_env
    from recovla_jax.evaluation.recovery import RecoveryEvaluator, evaluation_keys
    from recovla_jax.evaluation.run_policies import load_run_policies
    from recovla_jax.export.run_reader import load_run_base
    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.sim.randomization import DomainRandomization
    from recovla_jax.tasks import get_task

    console = Console()
    t0 = time.time()
    info = load_run(Path(args.run))
    config, results = info["config"], info["results"]
    cond = eval_conditions(config, results)
    delay = cond["hand_back_delay"] if args.hand_back_delay is None else args.hand_back_delay
    task = get_task(config["task"], {"episode_length": int(config["episode_length"])})
    base = load_run_base(info["run"])
    pol = load_run_policies(info["run"])
    bank = FailureBank.load(info["bank_dir"])
    counts = bank.counts()
    modes = [m for m in task.failure_modes if m in pol.params_for_mode and counts[m]["heldout"] > 0]
    if not modes:
        raise SystemExit(f"{args.run}: no trained policy has held-out states to evaluate on")
    held_rows = bank.rows_of(modes, "heldout")
    held = bank.take(held_rows)
    dr = DomainRandomization() if cond["domain_randomization"] else None
    record = {"run": str(Path(args.run).absolute()), "task": task.name, "conditions": cond, "modes": {},
              "checkpoint_steps": pol.checkpoint_steps, "trained_with_hand_back": cond["hand_back"],
              "hand_back_delay": delay}
    evaluators = {}
    for protocol, hand_back in (("whole_episode", False), ("hand_back", True)):
        env = run_residual_env(task, base, held, pol, cond, hand_back=hand_back, hand_back_delay=delay if hand_back else 0)
        evaluators[protocol] = RecoveryEvaluator(env, pol.apply, int(cond["episode_length"]), seed=int(cond["seed"]),
                                                 randomization=dr, state_ids=evaluation_keys(held_rows, cond))
    console.print(f"[bold]{task.name}[/]: {len(held)} held-out states, seed {cond['seed']}; each protocol compiles once")
    for m in modes:
        idx = np.flatnonzero(held.arrays["mode"] == task.failure_modes.index(m))[: args.states]
        params = pol.params_for_mode[m]
        cell = {"base": evaluators["whole_episode"].success(params, idx, use_residual=False)}
        for protocol, ev in evaluators.items():
            cell[protocol] = ev.success(params, idx)
        record["modes"][m] = cell
        console.print(f"{m}: base alone {_fmt(cell['base'])}  whole episode {_fmt(cell['whole_episode'])}  "
                      f"hand-back {_fmt(cell['hand_back'])}")
    record["average"] = {k: float(np.mean([c[k]["rate"] for c in record["modes"].values()]))
                         for k in ("base", "whole_episode", "hand_back")}
    record["wall_seconds"] = time.time() - t0
    out = write_run_record(record, args.run, args.out, "handback.json")
    a = record["average"]
    console.print(f"average: base alone {a['base']:.1%}  whole episode {a['whole_episode']:.1%}  hand-back {a['hand_back']:.1%}"
                  f"  ({record['wall_seconds'] / 60:.1f} min) -> {out}")
    return record


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

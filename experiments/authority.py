"""Residual authority of a run: success of the expert-guided residual per failure mode and residual scale.

    python -m experiments.authority --run runs/pick_place-...                  # alpha 1 and 2, 64 held-out states/mode
    python -m experiments.authority --run RUN --alphas 0.5 1 2 --states 200 --split train

For each mode and alpha, the residual r = clip((expert - base) / alpha) steers the frozen base as close to
the scripted expert as a residual of that scale can (recovla_jax.evaluation.authority). Next to the run's
ReCoVLA cell it tells whether a mode failed because no residual of the run's scale could recover it or
because PPO did not learn to. Runs on the nominal model under the run's observation noise, latency and
start jitter. With hand-back (the run's setting unless `--hand-back=on|off`) the guidance acts only while the
task's failure label names a failure and the base finishes alone, the ceiling of a hand-back residual.
Prints a table and writes <run>/authority.json (or --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recovla_jax.utils.run_dirs import write_run_record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.authority", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="main-job run directory (config.json + failure bank)")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0], help="residual scales to try (each > 0)")
    p.add_argument("--states", type=int, default=64, help="bank states per mode (the first ones of the split)")
    p.add_argument("--split", choices=["train", "heldout"], default="heldout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hand-back", choices=["run", "on", "off"], default="run",
                   help="guide only while the failure label names a failure, then the base alone (as `train --hand-back`); "
                        "default: as the run was trained")
    p.add_argument("--hand-back-delay", type=int, default=None, metavar="STEPS",
                   help="guidance kept this many steps after the failure label clears (default: the run's)")
    p.add_argument("--out", default=None, help="output JSON (default <run>/authority.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if any(a <= 0 for a in args.alphas):
        raise SystemExit(f"--alphas must all be > 0, got {args.alphas}")
    if args.hand_back_delay is not None and args.hand_back_delay < 0:
        raise SystemExit(f"--hand-back-delay must be >= 0, got {args.hand_back_delay}")
    if args.states < 1:
        raise SystemExit(f"--states must be >= 1, got {args.states}")
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    import jax
    import jax.numpy as jnp

    from experiments.baselines import eval_conditions, load_run
    from recovla_jax.evaluation.authority import expert_guided_rollout
    from recovla_jax.evaluation.stats import wilson
    from recovla_jax.export.run_reader import load_run_base
    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.rewards.library import component_names
    from recovla_jax.tasks import get_task
    from recovla_jax.training.residual_env import ResidualEnv

    console = Console()
    info = load_run(Path(args.run))
    config, results = info["config"], info["results"]
    cond = eval_conditions(config, results)
    task = get_task(config["task"], {"episode_length": int(config["episode_length"])})
    base = load_run_base(info["run"])
    bank = FailureBank.load(info["bank_dir"])
    weights = np.zeros((len(task.failure_modes), len(component_names(task))), np.float32)  # rewards are not used
    trained = (results or {}).get("modes", {})
    hand_back = cond["hand_back"] if args.hand_back == "run" else args.hand_back == "on"
    delay = cond["hand_back_delay"] if args.hand_back_delay is None else args.hand_back_delay
    record = {"run": str(Path(args.run).absolute()), "task": task.name, "run_alpha": float(config["alpha"]),
              "split": args.split, "hand_back": hand_back, "hand_back_delay": delay,
              "conditions": {k: cond[k] for k in ("obs_noise", "latency_prob", "start_jitter_m")},
              "domain_randomization": False, "modes": {}}
    table = Table(title=f"{task.name}: expert-guided residual success ({args.split} states, nominal model"
                        + (f", hand-back after {delay} steps)" if hand_back else ")"))
    table.add_column("mode")
    for a in args.alphas:
        table.add_column(f"alpha {a:g}")
    table.add_column("base alone")
    table.add_column(f"trained residual (alpha {float(config['alpha']):g})")
    t0 = time.time()
    split = bank.select(split=args.split)
    positions = {m: np.flatnonzero(split.arrays["mode"] == task.failure_modes.index(m)) for m in task.failure_modes}
    for m in [m for m, pos in positions.items() if len(pos) == 0]:
        console.print(f"[yellow]{m}: no {args.split} states in the bank; skipped[/]")
    cells: dict[str, dict] = {m: {} for m, pos in positions.items() if len(pos)}
    for a in args.alphas:  # one env and one compiled rollout per scale, shared by every mode
        env = ResidualEnv(task, base, split, weights, alpha=a, start_noise=cond["start_jitter_m"],
                          obs_noise=cond["obs_noise"], latency_prob=cond["latency_prob"], hand_back=hand_back,
                          hand_back_delay=delay)
        rollout = expert_guided_rollout(env, int(config["episode_length"]))
        for m in cells:
            first = positions[m][: args.states]  # a mode's first n split states, in bank order
            ok = np.asarray(rollout(jnp.asarray(first), jax.random.PRNGKey(args.seed)))
            cells[m][f"{a:g}"] = wilson(int(ok.sum()), len(first)).as_dict()
    for mode, by_alpha in cells.items():
        # The run's own held-out cells (its evaluation adds randomized dynamics), for comparison.
        record["modes"][mode] = {"alphas": by_alpha, "base": trained.get(mode, {}).get("base"),
                                 "trained": trained.get(mode, {}).get("recovla")}
        table.add_row(mode, *(_cell(c) for c in by_alpha.values()), _cell(record["modes"][mode]["base"]),
                      _cell(record["modes"][mode]["trained"]))
    record["seconds"] = round(time.time() - t0, 1)
    console.print(table)
    out = write_run_record(record, args.run, args.out, "authority.json")
    console.print(f"wrote {out}")
    return record


def _cell(r: dict | None) -> str:
    return f"{100 * r['rate']:.1f}% (n={r['trials']})" if r else "n/a"


if __name__ == "__main__":
    main()

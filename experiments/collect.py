"""Collect a failure bank on its own (the main job's stage 2), e.g. to size it before training.

    python -m experiments.collect --task=drawer --candidates=4096 --out=banks/drawer

Loads (or trains and caches) the frozen base policy, injects every failure mode into base rollouts,
keeps the labelled states the base policy really fails from (nominal model and randomized + jittered
trials), splits them train/held-out and writes `bank.npz` + `bank.json` (counts, collection statistics,
versions). `--render=N` also writes PNG frames of N states per mode. Reuse with
`python -m experiments.train --bank-dir=OUT`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.task_recipes import add_recipe_flag, describe_recipe, parse_with_recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.collect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="drawer")
    p.add_argument("--out", required=True, help="bank directory to write (must not hold a bank already)")
    p.add_argument("--candidates", type=int, default=1024, help="injected candidates per failure mode")
    p.add_argument("--episode-length", type=int, default=None,
                   help="task episode length (selects the cached base policy); default: the task's own")
    p.add_argument("--test-steps", type=int, default=None,
                   help="base-policy steps from a failure state that must not succeed; default: the episode length")
    p.add_argument("--robust-trials", type=int, default=1, help="extra randomized + jittered base rollouts that must fail too")
    p.add_argument("--heldout-fraction", type=float, default=0.4)
    p.add_argument("--min-heldout", type=int, default=0,
                   help="keep injecting chunks of a mode until its held-out split holds this many base failures")
    p.add_argument("--max-candidates", type=int, default=65536, help="cap per mode on candidates with --min-heldout")
    p.add_argument("--render", type=int, default=0, help="PNG frames of this many states per mode (bank_dir/frames)")
    p.add_argument("--seed", type=int, default=0)
    add_recipe_flag(p)
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parse_with_recipe(build_parser(), argv)

    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    from rich.console import Console

    from recovla_jax.failures.bank import BankConfig, collect_failure_bank
    from recovla_jax.policies.bc import load_or_train_base_policy
    from recovla_jax.tasks import get_task, task_class

    console = Console()
    out = Path(args.out)
    if (out / "bank.npz").exists():
        raise SystemExit(f"{out} already holds a failure bank; choose another --out")
    t0 = time.time()
    if args.episode_length is None:
        args.episode_length = task_class(args.task).config_cls().episode_length
    args.test_steps = args.test_steps or args.episode_length
    task = get_task(args.task, {"episode_length": args.episode_length})
    if args.task_recipe:
        console.print(describe_recipe(args.task, args.task_recipe))
    base = load_or_train_base_policy(task, log=console.print)
    cfg = BankConfig(candidates_per_mode=args.candidates, test_steps=args.test_steps, robust_trials=args.robust_trials,
                     heldout_fraction=args.heldout_fraction, seed=args.seed, min_heldout_per_mode=args.min_heldout,
                     max_candidates_per_mode=args.max_candidates)
    bank = collect_failure_bank(task, base, cfg, log=console.print)
    bank.save(out)
    if args.render:
        import numpy as np

        from recovla_jax.sim.render import render_bank_frames

        picks = [int(i) for m in range(len(task.failure_modes))
                 for i in np.flatnonzero(bank.arrays["mode"] == m)[: args.render]]
        render_bank_frames(task, bank, out, indices=picks)
    console.print(json.dumps({"bank": str(out), "counts": bank.counts(), "seconds": round(time.time() - t0, 1)}, indent=2))
    return out


if __name__ == "__main__":
    main()

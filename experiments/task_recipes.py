"""Each task's best measured training settings: the defaults of `experiments.train --task=TASK`.

Without them `--task=pick_place` ran plain PPO at alpha 1 on 80-step episodes, a setting measured at 26.1% recovery,
where the README's row (85.8%) needs five flags. A recipe fills an option only when the command line does not give
it, so every option still wins over it; `--no-task-recipe` gives the bare defaults. The values are what the README's
Results and `experiments.benchmark_suite` use, with the session that measured each (docs/experiments.md):

- pick_place: alpha 2 with 24 expert warm-start rounds (session 15: 61.4% against 26.1% at the 1M default), 160-step
  recoveries (session 20: from a missed grasp the scripted expert recovers 41% of the states in 80 steps, 97% in
  200), a 4096-candidate bank and 8000 Adam steps per warm-start fit (sessions 23-24: missed_grasp's fit underfits
  the bigger bank at the default 2000, 34.0% held-out).
- stack: alpha 2 with 3 warm-start rounds on the whole episode (session 19: 84.1% against 37.3% with --hand-back).
- peg_insert: alpha 2 with 24 warm-start rounds (sessions 17-18: 79.2% and 89.8%).
- drawer: none (100% at the defaults, session 11).

They live here, not on the task classes, because the cached base policy's key hashes each task's module: a
training setting must not re-clone a base. Plain dicts of argparse destinations, since argparse's own
`set_defaults` does the merging.
"""

from __future__ import annotations

import argparse
from typing import Sequence

TASK_RECIPES: dict[str, dict[str, int | float]] = {
    "pick_place": {"alpha": 2.0, "expert_warm_start": 24, "episode_length": 160, "candidates": 4096,
                   "warm_start_fit_steps": 8000},
    "stack": {"alpha": 2.0, "expert_warm_start": 3},
    "peg_insert": {"alpha": 2.0, "expert_warm_start": 24},
}
NO_RECIPE_FLAG = "--no-task-recipe"


def task_recipe(task: str) -> dict[str, int | float]:
    """The task's recipe ({} for a task without one, such as the drawer)."""
    return dict(TASK_RECIPES.get(task, {}))


def _format(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _as_options(values: dict[str, int | float]) -> list[str]:
    """{argparse destination: value} as command-line options."""
    return [f"--{dest.replace('_', '-')}={_format(value)}" for dest, value in values.items()]


def recipe_args(task: str) -> list[str]:
    """The recipe as command-line options, e.g. ['--alpha=2', '--expert-warm-start=3']."""
    return _as_options(task_recipe(task))


def describe_recipe(task: str, supplied: dict[str, int | float]) -> str:
    """The log line saying which defaults came from the task's recipe."""
    given = " ".join(_as_options(supplied))
    return f"task recipe for {task} (its best measured settings): {given}; options given win, {NO_RECIPE_FLAG} drops them"


def add_recipe_flag(parser: argparse.ArgumentParser) -> None:
    """`--no-task-recipe`, with every task's recipe in its help."""
    listed = "; ".join(f"{t}: {' '.join(recipe_args(t))}" for t in TASK_RECIPES)
    parser.add_argument(NO_RECIPE_FLAG, dest="no_task_recipe", action="store_true",
                        help=f"drop the task's best measured settings, which otherwise fill those of this command's "
                             f"options that are not given ({listed}; the drawer has none)")


def parse_with_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` with the `--task`'s recipe as defaults (options given still win); an entry point takes the
    recipe's options it has (`experiments.collect` has no --alpha). The namespace's `task_recipe` holds the values
    the recipe supplied: those the command line left to it ({} with --no-task-recipe)."""
    bare = parser.parse_args(argv)
    recipe = {} if bare.no_task_recipe else task_recipe(bare.task)
    recipe = {k: v for k, v in recipe.items() if k in vars(bare)}
    parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    args.task_recipe = {k: v for k, v in recipe.items() if getattr(args, k) == v != getattr(bare, k)}
    return args

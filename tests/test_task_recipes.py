"""The main job's per-task recipes: `--task=pick_place` alone trains with the README row's settings."""

from __future__ import annotations

import pytest

from experiments import benchmark_suite, collect, train
from experiments.task_recipes import TASK_RECIPES, describe_recipe, parse_with_recipe, recipe_args, task_recipe


def parse_train(*argv: str):
    return train.apply_warm_start_defaults(parse_with_recipe(train.build_parser(), list(argv)))


@pytest.mark.parametrize("task", sorted(TASK_RECIPES))
def test_a_task_alone_trains_with_its_recipe(task: str) -> None:
    args = parse_train(f"--task={task}")
    bare = parse_train(f"--task={task}", "--no-task-recipe")
    for dest, value in TASK_RECIPES[task].items():
        assert getattr(args, dest) == value and getattr(bare, dest) != value, dest
    assert args.task_recipe == TASK_RECIPES[task] and bare.task_recipe == {}
    # every recipe warm-starts, so PPO gets the warm start's adaptive learning rate and frozen normaliser
    assert args.desired_kl == train.WARM_START_DESIRED_KL and args.freeze_normalizer is True
    assert bare.desired_kl is None and bare.freeze_normalizer is False


def test_options_given_win_over_the_recipe_and_are_not_recorded_as_its_own() -> None:
    args = parse_train("--task=pick_place", "--alpha=3", "--episode-length=80", "--expert-warm-start=24")
    assert (args.alpha, args.episode_length, args.expert_warm_start) == (3.0, 80, 24)
    assert args.candidates == 4096 and args.warm_start_fit_steps == 8000  # still from the recipe
    # --expert-warm-start=24 equals the recipe's value but was given: the recipe supplied only the other two
    assert args.task_recipe == {"candidates": 4096, "warm_start_fit_steps": 8000}
    # the main job's log line names exactly what the recipe supplied
    line = describe_recipe("pick_place", args.task_recipe)
    assert "--candidates=4096 --warm-start-fit-steps=8000;" in line and "--alpha" not in line


def test_the_drawer_has_no_recipe_and_keeps_the_bare_defaults() -> None:
    assert task_recipe("drawer") == {} and recipe_args("drawer") == []
    args, bare = parse_train("--task=drawer"), parse_train("--task=drawer", "--no-task-recipe")
    assert vars(args) == vars(bare) | {"no_task_recipe": False}


def test_collect_takes_only_the_recipe_options_it_has() -> None:
    args = parse_with_recipe(collect.build_parser(), ["--task=pick_place", "--out=x"])
    assert (args.candidates, args.episode_length) == (4096, 160) and not hasattr(args, "alpha")
    assert args.task_recipe == {"candidates": 4096, "episode_length": 160}


def test_the_suite_writes_out_the_same_recipe_the_main_job_would_apply() -> None:
    for task in TASK_RECIPES:
        written = parse_train(f"--task={task}", "--no-task-recipe", *benchmark_suite.TASK_TRAIN_ARGS[task])
        for dest, value in TASK_RECIPES[task].items():
            assert getattr(written, dest) == value, (task, dest)
    assert recipe_args("stack") == ["--alpha=2", "--expert-warm-start=3"]

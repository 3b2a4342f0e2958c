"""Name -> task class, with errors that list the valid names."""

from __future__ import annotations

import difflib

from recovla_jax.tasks.base import Task, TaskConfig


class UnknownTaskError(ValueError):
    """Raised for a task name that is not registered."""


# name -> "module:Class", imported on first use so one task's module never slows (or breaks) another's.
TASK_CLASSES: dict[str, str] = {
    "drawer": "recovla_jax.tasks.drawer:DrawerTask",
    "pick_place": "recovla_jax.tasks.pick_place:PickPlaceTask",
    "stack": "recovla_jax.tasks.stack:StackTask",
    "peg_insert": "recovla_jax.tasks.peg_insert:PegInsertTask",
}


def _available() -> dict[str, str]:
    """Registered tasks whose module exists in this checkout."""
    import importlib.util

    return {n: spec for n, spec in TASK_CLASSES.items() if importlib.util.find_spec(spec.split(":")[0]) is not None}


def task_class(name: str) -> type[Task]:
    """The task class registered under `name` (imports its module)."""
    import importlib

    registry = _available()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}. Valid tasks: {', '.join(sorted(registry))}.{hint}")
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_names() -> list[str]:
    return sorted(_available())


def get_task(name: str, config: TaskConfig | dict | None = None) -> Task:
    """Build a task by name; an unknown name raises an error naming the valid ones."""
    return task_class(name)(config)

"""Name -> task class, with errors that list the valid names."""

from __future__ import annotations

import difflib

from recovla_jax.tasks.base import Task, TaskConfig


class UnknownTaskError(ValueError):
    """Raised for a task name that is not registered."""


def _registry() -> dict[str, type[Task]]:
    from recovla_jax.tasks.drawer import DrawerTask

    return {cls.name: cls for cls in (DrawerTask,)}


def task_names() -> list[str]:
    return sorted(_registry())


def get_task(name: str, config: TaskConfig | dict | None = None) -> Task:
    """Build a task by name; an unknown name raises an error naming the valid ones."""
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}. Valid tasks: {', '.join(sorted(registry))}.{hint}")
    return registry[name](config)

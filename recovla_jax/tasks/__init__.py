"""Tasks: scene, nominal reset, observation, success, privileged state, scripted expert; plus a registry."""

from recovla_jax.tasks.registry import get_task, task_class, task_names

__all__ = ["get_task", "task_class", "task_names"]

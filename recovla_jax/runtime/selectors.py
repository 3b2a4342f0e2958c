"""Selectors: which failure mode (if any) the robot is in, given what it observes.

The runtime asks a selector only when the failure monitor triggers a diagnosis. `DrawerRulesSelector`
runs on the robot with NumPy on the observation vector: `runtime.drawer_rules`, the same rules the
training side's offline diagnosis and labeller use (the drawer observation carries every quantity they
need), evaluated on the possibly noisy observation; `OracleSelector` is for evaluation harnesses that
know the true (privileged) label.
A VLM selector fits the same protocol (images arrive in `Observation.images`).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from recovla_jax.runtime import drawer_rules
from recovla_jax.runtime.robots.base import Observation


@runtime_checkable
class Selector(Protocol):
    name: str

    def select(self, obs: Observation) -> str | None:
        """Failure-mode name, or None when the state looks nominal."""


class DrawerRulesSelector:
    """Offline rules on the drawer observation (NumPy): misaligned > slipped > missed, else nominal."""

    name = "rules"

    def __init__(self, success_opening: float = 0.15):
        self.success_opening = success_opening

    def select(self, obs: Observation) -> str | None:
        return drawer_rules.label_obs(obs.state, self.success_opening)


class FunctionSelector:
    """A selector from any function of the observation (e.g. a task's NumPy rules)."""

    def __init__(self, name: str, fn: Callable[[Observation], str | None]):
        self.name, self.fn = name, fn

    def select(self, obs: Observation) -> str | None:
        return self.fn(obs)


class OracleSelector:
    """Returns the privileged label the harness provides: a callable (queried each time) or a fixed label."""

    name = "oracle"

    def __init__(self, label_fn: Callable[[], str | None] | None = None):
        self.label_fn = label_fn
        self.label: str | None = None

    def set_label(self, label: str | None) -> None:
        self.label = label

    def select(self, obs: Observation) -> str | None:
        return self.label_fn() if self.label_fn is not None else self.label


def make_selector(name: str, task: str, success_threshold: float, label_fn: Callable[[], str | None] | None = None) -> Selector:
    if name == "oracle":
        return OracleSelector(label_fn)
    if name == "rules":
        if task != "drawer":
            raise ValueError(f"no rules-based selector for task {task!r} (only drawer)")
        return DrawerRulesSelector(success_threshold)
    raise ValueError(f"unknown selector {name!r}; choose 'rules' or 'oracle'")

"""Selector names -> configured selectors, and the `auto` choice (Gemini with a key, rules without).

Names: `gemini` (live Gemini, answers cached by default so a rerun costs nothing), `cached` (offline
replay of the cache: no key, no requests; misses go to the fallback), `rules` (offline, observation
vector), `oracle` (privileged labels), `auto`.
"""

from __future__ import annotations

import os
from pathlib import Path

from recovla_jax.diagnosis.cache import CachedSelector, ResponseCache
from recovla_jax.diagnosis.gemini import API_KEY_VARS, DEFAULT_MODEL, GeminiConfig, GeminiSelector
from recovla_jax.diagnosis.oracle import OracleSelector
from recovla_jax.diagnosis.rules import RulesSelector
from recovla_jax.diagnosis.types import Selector
from recovla_jax.tasks.base import Task

SELECTOR_NAMES = ("auto", "gemini", "cached", "rules", "oracle")
FALLBACK_NAMES = ("rules", "oracle")


def default_cache_path() -> Path:
    """`~/.cache/recovla-jax/vlm_cache.jsonl` (follows RECOVLA_CACHE_DIR)."""
    from recovla_jax.utils.jax_setup import DEFAULT_CACHE_DIR

    return Path(DEFAULT_CACHE_DIR) / "vlm_cache.jsonl"


def resolve_auto() -> tuple[str, str]:
    """(selector name, reason): gemini when an API key is set, else rules."""
    for var in API_KEY_VARS:
        if os.environ.get(var, "").strip():
            return "gemini", f"{var} is set"
    return "rules", f"no API key ({' / '.join(API_KEY_VARS)} unset): offline rules on the observation vector"


def make_selector(
    name: str,
    task: Task,
    *,
    fallback: str = "rules",
    cache_path: Path | None = None,
    use_cache: bool = True,
    model: str = DEFAULT_MODEL,
    timeout_s: float = 60.0,
    max_attempts: int = 4,
    backoff_initial_s: float = 2.0,
    base_url: str | None = None,
    state_in_prompt: bool = False,
    api_key: str | None = None,
) -> Selector:
    """Build a selector by name (see module docstring). `task` is checked to have what the selector needs."""
    if name == "auto":
        name, _ = resolve_auto()
    if name not in SELECTOR_NAMES:
        raise ValueError(f"unknown selector {name!r}; valid: {', '.join(SELECTOR_NAMES)}")
    if fallback not in FALLBACK_NAMES:
        raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACK_NAMES)}")
    if name == "rules":
        _check_rules(task)
        return RulesSelector()
    if name == "oracle":
        return OracleSelector()
    if fallback == "rules":
        _check_rules(task)
    fb: Selector = RulesSelector() if fallback == "rules" else OracleSelector()
    config = GeminiConfig(model=model, timeout_s=timeout_s, max_attempts=max_attempts,
                          backoff_initial_s=backoff_initial_s, base_url=base_url, state_in_prompt=state_in_prompt)
    cache = ResponseCache(cache_path or default_cache_path())
    if name == "cached":
        return CachedSelector(cache, fb, inner=None, config=config)
    gemini = GeminiSelector(fb, config, api_key=api_key)
    return CachedSelector(cache, fb, inner=gemini) if use_cache else gemini


def _check_rules(task: Task) -> None:
    if not task.has_rules():
        raise ValueError(f"task {task.name!r} has no diagnosis rules ({task.rules_module}); use --selector=oracle or gemini")

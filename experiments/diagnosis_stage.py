"""The main job's diagnosis stage: one recovery descriptor per failure mode from the chosen selector.

The selector (`auto` = Gemini when an API key is set, else the offline rules) is asked about K train
states of each mode and the answers are put to a majority vote (`diagnosis.bank_diagnosis`). The run
records which selector answered, how many answers agreed, fallbacks and cache hits (`diagnosis.json`),
and `--mask=wrong` swaps in another mode's descriptor so a user can see what a misdiagnosis costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recovla_jax.diagnosis.bank_diagnosis import descriptors_for_bank
from recovla_jax.diagnosis.descriptor import RecoveryDescriptor, oracle_descriptor
from recovla_jax.diagnosis.selectors import make_selector, resolve_auto
from recovla_jax.failures.bank import FailureBank
from recovla_jax.rewards.library import component_names
from recovla_jax.tasks.base import Task


def _log(msg: str) -> None:
    from experiments.pipeline import log

    log(msg)


def wrong_descriptors(task: Task, descriptors: dict[str, RecoveryDescriptor]) -> dict[str, RecoveryDescriptor]:
    """Each mode gets the descriptor of the next mode in the task's order (a deliberate misdiagnosis)."""
    modes = list(task.failure_modes)
    out = {}
    for i, m in enumerate(modes):
        other = modes[(i + 1) % len(modes)]
        src = descriptors.get(other) or oracle_descriptor(task, other)
        out[m] = src.model_copy(update={"source": f"wrong-mask({src.source}; true mode {m})",
                                        "rationale": f"ablation: the descriptor of {other!r} used for {m!r}"}, deep=True)
    return out


def check_reward_weights(task: Task, weights: list[tuple[str, float]]) -> None:
    """Fail before any work when a `--reward-weight` names no component of the task."""
    valid = component_names(task)
    for name, _ in weights:
        if name not in valid:
            raise SystemExit(f"--reward-weight: unknown component {name!r} for task {task.name!r}; "
                             f"valid components: {', '.join(valid)}")


def apply_reward_weights(task: Task, descriptors: dict[str, RecoveryDescriptor], weights: list[tuple[str, float]]) -> None:
    """Set `--reward-weight` overrides in every descriptor's mask (weight 0 removes the component)."""
    check_reward_weights(task, weights)
    for name, weight in weights:
        for d in descriptors.values():
            if weight == 0.0:
                d.reward_mask.pop(name, None)
            else:
                d.reward_mask[name] = weight


def diagnose_modes(task: Task, bank: FailureBank, args: argparse.Namespace,
                   run_dir: Path) -> tuple[dict[str, RecoveryDescriptor], dict]:
    """(descriptor per failure mode, a record of the diagnosis) for the run; also writes diagnosis.json."""
    name = args.selector
    if name == "auto":
        name, why = resolve_auto()
        _log(f"diagnosis: selector auto -> {name} ({why})")
    else:
        _log(f"diagnosis: selector {name}")
    selector = make_selector(name, task, fallback=args.fallback_selector)
    per_mode = descriptors_for_bank(task, bank, selector, k=args.diagnose_states, split="train", seed=args.seed,
                                    log=_log, frames_dir=run_dir / "diagnosis_frames")
    descriptors: dict[str, RecoveryDescriptor] = {}
    for m in task.failure_modes:
        if m in per_mode:
            descriptors[m] = per_mode[m].descriptor.model_copy(deep=True)
        else:  # no train states of this mode: it is not trained; keep a placeholder so weights stay dense
            descriptors[m] = oracle_descriptor(task, m)
    if args.mask == "wrong":
        descriptors = wrong_descriptors(task, descriptors)
    if args.residual_penalty is not None:
        for d in descriptors.values():
            d.reward_mask["residual_magnitude"] = args.residual_penalty
    apply_reward_weights(task, descriptors, getattr(args, "reward_weight", None) or [])
    record = {
        "selector": name,
        "fallback": args.fallback_selector,
        "per_mode": {m: {"source": md.descriptor.source, "diagnosed_mode": md.descriptor.failure_mode,
                         "diagnosed_stage": md.descriptor.recovery_stage, "k": md.k, "agreement": md.agreement,
                         "matches_label": md.matches_label, "fallbacks": md.fallbacks, "cache_hits": md.cache_hits,
                         "mode_votes": md.mode_votes}
                     for m, md in per_mode.items()},
    }
    (run_dir / "diagnosis.json").write_text(json.dumps(
        {**record, "modes": {m: md.model_dump(mode="json") for m, md in per_mode.items()}}, indent=2, default=str))
    return descriptors, record

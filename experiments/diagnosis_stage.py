"""The main job's diagnosis stage: one recovery descriptor per failure mode from the chosen selector.

The selector (`auto` = Gemini when an API key is set, else the offline rules) is asked about K train
states of each mode and the answers are put to a majority vote (`diagnosis.bank_diagnosis`). The run
records which selector answered, how many answers agreed, fallbacks and cache hits (`diagnosis.json`),
and `--mask=wrong` swaps in the descriptor of the mode whose mask differs most, so a user can see what a
misdiagnosis costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recovla_jax.diagnosis.bank_diagnosis import descriptors_for_bank
from recovla_jax.diagnosis.descriptor import RecoveryDescriptor, oracle_descriptor
from recovla_jax.diagnosis.gemini import VLMConfigurationError
from recovla_jax.diagnosis.selectors import make_selector, resolve_auto
from recovla_jax.failures.bank import FailureBank
from recovla_jax.rewards.library import component_names
from recovla_jax.tasks.base import Task


def _log(msg: str) -> None:
    from experiments.pipeline import log

    log(msg)


def mask_distance(a: dict[str, float], b: dict[str, float]) -> float:
    """L1 distance between two reward masks; a component one mask leaves out weighs 0 there."""
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def wrong_descriptors(task: Task, descriptors: dict[str, RecoveryDescriptor]
                      ) -> tuple[dict[str, RecoveryDescriptor], dict[str, dict]]:
    """(descriptors, what was swapped): each mode gets the descriptor of the other mode whose mask differs most
    from its own, a deliberate misdiagnosis; ties go to the next mode in the task's order.

    Why the farthest, not simply the next mode's: several tasks give two modes the same mask (pick_place's
    missed_grasp and dropped_in_transit, stack's toppled_stack and placed_off_centre), and "the next mode's
    descriptor" then trained those modes on their own mask. The L1 distance of each swap is returned so that a
    result can say how wrong the wrong mask was; a distance of 0 means the ablation cannot test that mode.
    """
    modes = list(task.failure_modes)

    def chosen(mode: str) -> RecoveryDescriptor:
        return descriptors.get(mode) or oracle_descriptor(task, mode)

    out, swaps = {}, {}
    for i, m in enumerate(modes):
        own = chosen(m).reward_mask
        # the other modes in task order after m, so that max() breaks ties toward the next mode
        distances = {o: mask_distance(own, chosen(o).reward_mask) for o in (modes[(i + j) % len(modes)]
                                                                            for j in range(1, len(modes)))}
        other = max(distances, key=distances.__getitem__)
        distance, src = distances[other], chosen(other)
        out[m] = src.model_copy(update={
            "source": f"wrong-mask({src.source}; true mode {m})",
            "rationale": f"ablation: the descriptor of {other!r} used for {m!r} (mask L1 distance {distance:g})"}, deep=True)
        swaps[m] = {"descriptor_of": other, "mask_l1_distance": distance}
    return out, swaps


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
    try:
        per_mode = descriptors_for_bank(task, bank, selector, k=args.diagnose_states, split="train", seed=args.seed,
                                        log=_log, frames_dir=run_dir / "diagnosis_frames")
    except VLMConfigurationError as err:  # a wrong key or model: stop, rather than a "gemini" run answered by rules
        raise SystemExit(str(err)) from None
    descriptors: dict[str, RecoveryDescriptor] = {}
    for m in task.failure_modes:
        if m in per_mode:
            descriptors[m] = per_mode[m].descriptor.model_copy(deep=True)
        else:  # no train states of this mode: it is not trained; keep a placeholder so weights stay dense
            descriptors[m] = oracle_descriptor(task, m)
    swaps = None
    if args.mask == "wrong":
        descriptors, swaps = wrong_descriptors(task, descriptors)
        for m, swap in swaps.items():
            _log(f"--mask=wrong: {m} trains on {swap['descriptor_of']}'s mask (L1 distance {swap['mask_l1_distance']:g}"
                 + (": the same mask, so this mode tests nothing)" if swap["mask_l1_distance"] == 0 else ")"))
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
        **({"wrong_mask": swaps} if swaps else {}),
    }
    (run_dir / "diagnosis.json").write_text(json.dumps(
        {**record, "modes": {m: md.model_dump(mode="json") for m, md in per_mode.items()}}, indent=2, default=str))
    return descriptors, record

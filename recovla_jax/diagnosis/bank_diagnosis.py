"""Diagnose failure-bank states with any selector, and turn a few answers per mode into one descriptor.

Why: the training pipeline needs one recovery descriptor per failure mode, and a single VLM answer is
noisy; `descriptor_for_mode` asks about K states of the mode and takes a majority vote, recording how
many agreed, so a run directory shows how sure the diagnosis was. `diagnose_bank` is the same loop over
any set of bank states, used by `experiments.diagnose` for the accuracy report.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from recovla_jax.diagnosis.descriptor import RecoveryDescriptor
from recovla_jax.diagnosis.types import DiagnosisResult, FailureObservation, PrivilegedLabel, Selector
from recovla_jax.failures.bank import FailureBank
from recovla_jax.tasks.base import Task


def bank_observation(task: Task, bank: FailureBank, index: int, renderer=None) -> FailureObservation:
    """The selector's view of bank state `index`: frames (if a renderer is given), observation vector, label."""
    from recovla_jax.sim.native import observe_state
    from recovla_jax.sim.render import bank_row

    row = bank_row(bank, index)
    obs = bank.arrays["obs"][index] if "obs" in bank.arrays else observe_state(task, row)
    label = PrivilegedLabel(bank.modes[int(bank.arrays["mode"][index])], bank.stages[int(bank.arrays["stage"][index])])
    images = renderer.render_png(row) if renderer is not None else {}
    return FailureObservation(images=images, obs=np.asarray(obs, np.float32), privileged=label, state_id=f"bank:{index}")


def diagnose_bank(
    task: Task,
    bank: FailureBank,
    selector: Selector,
    indices: Sequence[int] | None = None,
    *,
    cameras: Sequence[str] | None = None,
    width: int | None = None,
    height: int | None = None,
    frames_dir: Path | None = None,
    on_result: Callable[[int, DiagnosisResult], None] | None = None,
) -> list[DiagnosisResult]:
    """Diagnose `indices` (default: every state) of `bank`; frames are rendered only if the selector needs them.

    `frames_dir`: also save the frames there as `<index>_<camera>.png`. `on_result(index, result)` is called
    after each state (progress bars).
    """
    from recovla_jax.sim.render import DEFAULT_CAMERAS, DEFAULT_SIZE, FrameRenderer

    indices = range(len(bank)) if indices is None else indices
    renderer = None
    if selector.needs_images:
        renderer = FrameRenderer(task.mj_model, width or DEFAULT_SIZE[0], height or DEFAULT_SIZE[1],
                                 cameras or DEFAULT_CAMERAS)
    if frames_dir is not None:
        Path(frames_dir).mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for i in indices:
            observation = bank_observation(task, bank, int(i), renderer)
            if frames_dir is not None:
                for cam, png in observation.images.items():
                    (Path(frames_dir) / f"{int(i)}_{cam}.png").write_bytes(png)
            result = selector.diagnose(task, observation)
            results.append(result)
            if on_result is not None:
                on_result(int(i), result)
    finally:
        if renderer is not None:
            renderer.close()
    return results


class ModeDiagnosis(BaseModel):
    """One failure mode's descriptor from a majority vote over K diagnosed states of that mode."""

    model_config = ConfigDict(extra="forbid")

    mode: str  # the bank's (privileged) grouping of the states asked about
    descriptor: RecoveryDescriptor
    k: int
    mode_votes: dict[str, int]
    stage_votes: dict[str, int]
    agreement: float  # share of the K answers naming the winning failure mode
    mode_tie: bool = False  # another failure mode had as many votes (see majority_descriptor for the tie-break)
    matches_label: bool  # winning failure mode == the bank's label of these states
    fallbacks: int
    cache_hits: int
    state_ids: list[str]
    results: list[DiagnosisResult]


def majority_descriptor(task: Task, results: Sequence[DiagnosisResult]) -> tuple[RecoveryDescriptor, Counter, Counter]:
    """Majority failure mode, then majority stage among its answers, and the per-component median mask of those
    answers. A tie between modes goes to the one with more of the selector's own answers (not its fallback's), then
    to the task's order; stage ties go to the task's order. Returns (descriptor, mode votes, stage votes)."""
    if not results:
        raise ValueError("no diagnoses to vote over")
    mode_votes = Counter(r.descriptor.failure_mode for r in results)
    own_votes = Counter(r.descriptor.failure_mode for r in results if not r.record.fallback_used)
    top = max(mode_votes.values())
    tied = [m for m in task.failure_modes if mode_votes.get(m) == top]
    winner = max(tied, key=lambda m: (own_votes.get(m, 0), -tied.index(m)))
    agreeing = [r.descriptor for r in results if r.descriptor.failure_mode == winner]
    stage_votes = Counter(d.recovery_stage for d in agreeing)
    top_stage = max(stage_votes.values())
    stage = next(s for s in task.recovery_stages if stage_votes.get(s) == top_stage)
    names = sorted({c for d in agreeing for c in d.reward_mask})
    mask = {c: float(np.median([d.reward_mask.get(c, 0.0) for d in agreeing])) for c in names}
    mask = {c: w for c, w in mask.items() if w > 0} or dict(agreeing[0].reward_mask)
    sources = sorted({d.source for d in agreeing})
    descriptor = RecoveryDescriptor(
        task=task.name, failure_mode=winner, recovery_stage=stage, reward_mask=mask,
        rationale=f"majority of {len(results)}: {mode_votes[winner]} named {winner}; first rationale: "
                  f"{agreeing[0].rationale}",
        source="+".join(sources),
    )
    descriptor.validate_for(task)
    return descriptor, mode_votes, stage_votes


def descriptor_for_mode(task: Task, bank: FailureBank, mode: str, selector: Selector, k: int = 5,
                        split: str | None = "train", seed: int = 0, **diagnose_kwargs) -> ModeDiagnosis:
    """Ask `selector` about K random states (seeded) of `mode` in `bank` (`split`: train/heldout/None = all)
    and vote. Raises ValueError if the bank has no state of that mode in that split."""
    sel_mode = bank.arrays["mode"] == bank.modes.index(mode)
    if split is not None:
        sel_mode &= bank.arrays["split"] == {"train": 0, "heldout": 1}[split]
    pool = np.flatnonzero(sel_mode)
    if pool.size == 0:
        raise ValueError(f"bank has no {split or 'any'} state of failure mode {mode!r}")
    rng = np.random.default_rng([seed, bank.modes.index(mode)])
    chosen = np.sort(rng.choice(pool, size=min(k, pool.size), replace=False))
    results = diagnose_bank(task, bank, selector, chosen, **diagnose_kwargs)
    descriptor, mode_votes, stage_votes = majority_descriptor(task, results)
    return ModeDiagnosis(
        mode=mode, descriptor=descriptor, k=len(results), mode_votes=dict(mode_votes), stage_votes=dict(stage_votes),
        agreement=mode_votes[descriptor.failure_mode] / len(results), matches_label=descriptor.failure_mode == mode,
        mode_tie=sum(v == mode_votes[descriptor.failure_mode] for v in mode_votes.values()) > 1,
        fallbacks=sum(r.record.fallback_used for r in results), cache_hits=sum(r.record.cache_hit for r in results),
        state_ids=[r.record.state_id or "" for r in results], results=results,
    )


def descriptors_for_bank(task: Task, bank: FailureBank, selector: Selector, k: int = 5, split: str | None = "train",
                         seed: int = 0, modes: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
                         **diagnose_kwargs) -> dict[str, ModeDiagnosis]:
    """`descriptor_for_mode` for every mode in `modes` (default: the task's modes that have states in `split`)."""
    out = {}
    for mode in modes or task.failure_modes:
        try:
            md = descriptor_for_mode(task, bank, mode, selector, k=k, split=split, seed=seed, **diagnose_kwargs)
        except ValueError:
            if modes is not None:
                raise
            continue
        out[mode] = md
        if log is not None:
            d = md.descriptor
            log(f"diagnosis {mode}: {selector.name} -> {d.failure_mode}/{d.recovery_stage} "
                f"(agreement {md.mode_votes.get(d.failure_mode, 0)}/{md.k}, fallbacks {md.fallbacks}, "
                f"cache hits {md.cache_hits}{', a tie' if md.mode_tie else ''})"
                f"{'' if md.matches_label else ' (differs from the bank label)'}")
    return out

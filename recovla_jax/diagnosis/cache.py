"""A JSONL cache of VLM answers keyed by the exact request, so reruns cost nothing and repeat exactly.

Why keyed by sha256(model, prompt text, image hashes): any change to the scene frames, the task's names
or descriptions, or the model gives a new key, so a cached answer is only ever replayed for the request
that produced it. Only answers that passed validation are stored (a fallback answer is not the VLM's),
and a replayed answer is validated again against the current task. Entries hold no credentials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from recovla_jax.diagnosis.gemini import GeminiConfig, GeminiSelector, request_key
from recovla_jax.diagnosis.prompt import AnswerError, parse_answer
from recovla_jax.diagnosis.types import (DiagnosisRecord, DiagnosisResult, FailureObservation, Selector, Stopwatch,
                                         answer_with_fallback)
from recovla_jax.tasks.base import Task


class ResponseCache:
    """Append-only JSONL file: one {key, model, raw_text, ...} entry per line; the last entry of a key wins."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line (interrupted write) is skipped, not fatal
                self._entries[entry["key"]] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        entry = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            torn = False  # an interrupted write left a last line without its newline: start a fresh line
            if f.seek(0, 2) > 0:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
            f.write((("\n" if torn else "") + json.dumps(entry) + "\n").encode())
        self._entries[key] = entry


class CachedSelector:
    """Replays cached answers for a Gemini configuration; a miss asks `inner` (or, offline, the fallback).

    With `inner=None` it is an offline replay: no API key, no request, misses answered by `fallback`.
    """

    needs_images = True

    def __init__(self, cache: ResponseCache, fallback: Selector, inner: GeminiSelector | None = None,
                 config: GeminiConfig | None = None):
        self.cache, self.fallback, self.inner = cache, fallback, inner
        self.config = inner.config if inner is not None else (config or GeminiConfig())
        self.name = "cached:gemini"

    @property
    def offline(self) -> bool:
        return self.inner is None

    def __repr__(self) -> str:
        return f"CachedSelector(inner={self.inner!r}, cache={str(self.cache.path)!r}, model={self.config.model!r})"

    def diagnose(self, task: Task, observation: FailureObservation) -> DiagnosisResult:
        clock = Stopwatch()
        key = request_key(self.config, task, observation)
        entry = self.cache.get(key)
        if entry is not None:
            record = DiagnosisRecord(selector=self.name, state_id=observation.state_id, model=entry.get("model"),
                                     raw_text=entry["raw_text"], cache_hit=True, cache_key=key)
            try:
                descriptor = parse_answer(task, entry["raw_text"], source=self.name)
                record.latency_s = clock.elapsed()
                return DiagnosisResult(descriptor=descriptor, record=record)
            except AnswerError as err:
                record.errors.append(f"cached answer no longer valid: {err}")
                if self.inner is None:
                    return answer_with_fallback(task, observation, self.fallback, record, clock)
        elif self.inner is None:
            record = DiagnosisRecord(selector=self.name, state_id=observation.state_id, model=self.config.model,
                                     cache_key=key, errors=["cache miss (offline replay: no VLM request made)"])
            return answer_with_fallback(task, observation, self.fallback, record, clock)
        stale = record.errors if entry is not None else []  # a cached answer that no longer validates: say so
        result = self.inner.diagnose(task, observation)
        if stale:
            result = result.model_copy(update={"record": result.record.model_copy(
                update={"errors": [*stale, *result.record.errors]})})
        if not result.record.fallback_used and result.record.raw_text is not None:
            self.cache.put(key, {"model": self.config.model, "state_id": observation.state_id,
                                 "raw_text": result.record.raw_text, "descriptor": result.descriptor.model_dump()})
        record = result.record.model_copy(update={"cache_key": key, "latency_s": clock.elapsed()})
        return DiagnosisResult(descriptor=result.descriptor, record=record)

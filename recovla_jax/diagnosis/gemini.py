"""Gemini selector: camera frames + task data -> a recovery descriptor, through `google-genai`.

Why these choices: temperature 0 and a JSON response schema make answers as repeatable and parseable
as the API allows; retries (429 and 5xx only, exponential backoff, our own tenacity loop with the SDK's
retries switched off, so `max_attempts` is the true request count) absorb rate limits; everything else
(timeout, other HTTP errors, an invalid answer) is recorded with the raw text and answered by the
fallback selector, so one bad VLM answer never stops a training run. The API key is read from the
environment, handed only to the client, and never logged or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass

from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from recovla_jax.diagnosis.prompt import AnswerError, answer_schema, build_prompt, parse_answer
from recovla_jax.diagnosis.types import (DiagnosisRecord, DiagnosisResult, FailureObservation, Selector, Stopwatch,
                                         answer_with_fallback)
from recovla_jax.tasks.base import Task

log = logging.getLogger(__name__)

API_KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
DEFAULT_MODEL = "gemini-2.5-flash"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class MissingAPIKeyError(RuntimeError):
    """Neither GEMINI_API_KEY nor GOOGLE_API_KEY is set."""


class VLMConfigurationError(RuntimeError):
    """The VLM refused a request in a way no other state would change: a bad or unauthorised key, an unknown model.
    Raised instead of answering from the fallback, which would quietly turn a whole "gemini" run into a rules run."""


# HTTP statuses that mean the selector is misconfigured rather than that one request or answer went wrong
# (401 unauthenticated, 403 permission denied, 404 no such model); a 400 only when it names the API key.
CONFIG_STATUS = frozenset({401, 403, 404})


def is_configuration_error(status: int | None, message: str) -> bool:
    return status in CONFIG_STATUS or (status == 400 and "API_KEY_INVALID" in message)


def api_key_from_env() -> str | None:
    """The first non-empty key among GEMINI_API_KEY, GOOGLE_API_KEY (None if neither)."""
    for var in API_KEY_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class GeminiConfig:
    """Settings of the Gemini selector (`base_url` points the client at a proxy or a test server)."""

    model: str = DEFAULT_MODEL
    timeout_s: float = 60.0
    max_attempts: int = 4
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 30.0
    max_retry_delay_s: float = 90.0  # the most a server's RetryInfo may make one wait
    base_url: str | None = None
    temperature: float = 0.0
    state_in_prompt: bool = False


def _status(err: BaseException) -> int | None:
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def server_retry_delay_s(err: BaseException | None) -> float | None:
    """The wait a 429's google.rpc.RetryInfo asks for (e.g. "37s" for a per-minute quota), or None."""
    details = getattr(err, "details", None)
    error = details.get("error") if isinstance(details, dict) else None
    for item in (error.get("details") if isinstance(error, dict) else None) or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)s\s*", str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def request_prompt(config: GeminiConfig, task: Task, observation: FailureObservation) -> str:
    """The prompt text of a request (the images go beside it as inline parts)."""
    obs = observation.obs if config.state_in_prompt else None
    return build_prompt(task, sorted(observation.images), obs)


def request_key(config: GeminiConfig, task: Task, observation: FailureObservation) -> str:
    """sha256 over (endpoint unless the default, model, temperature, prompt text, image hashes): the cache key of this
    exact request."""
    payload = {
        **({"endpoint": config.base_url} if config.base_url else {}),  # a local or proxy server's answers are its own
        "model": config.model,
        "temperature": config.temperature,
        "prompt": request_prompt(config, task, observation),
        "images": {cam: hashlib.sha256(png).hexdigest() for cam, png in sorted(observation.images.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class GeminiSelector:
    """Asks Gemini to pick failure mode, stage and reward mask from the camera frames."""

    needs_images = True

    def __init__(self, fallback: Selector, config: GeminiConfig | None = None, api_key: str | None = None):
        from google import genai
        from google.genai import types

        self.config = config or GeminiConfig()
        self.fallback = fallback
        self.name = "gemini"
        key = api_key or api_key_from_env()
        if not key:
            raise MissingAPIKeyError(
                "the gemini selector needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), "
                "or use --selector=rules / --selector=cached (replays recorded answers) offline")
        self._types = types
        http = types.HttpOptions(
            timeout=max(1, math.ceil(self.config.timeout_s * 1000)),  # ms; 0 would mean no timeout at all
            base_url=self.config.base_url,
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours (see module docstring)
        )
        self._client = genai.Client(api_key=key, http_options=http)
        self._redact = key

    def __repr__(self) -> str:
        return f"GeminiSelector(model={self.config.model!r}, fallback={self.fallback.name!r})"

    # ----------------------------------------------------------------------------------- request
    def prompt(self, task: Task, observation: FailureObservation) -> str:
        return request_prompt(self.config, task, observation)

    def request_key(self, task: Task, observation: FailureObservation) -> str:
        return request_key(self.config, task, observation)

    def _contents(self, task: Task, observation: FailureObservation) -> list:
        types = self._types
        parts: list = []
        for cam, png in sorted(observation.images.items()):
            parts.append(f"Camera '{cam}':")
            parts.append(types.Part.from_bytes(data=png, mime_type="image/png"))
        parts.append(self.prompt(task, observation))
        return parts

    def _call(self, task: Task, observation: FailureObservation, record: DiagnosisRecord) -> str | None:
        """One generateContent call with our retries; returns the raw text (raises on final failure)."""
        types = self._types
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=answer_schema(task),
            temperature=self.config.temperature,
        )
        contents = self._contents(task, observation)

        def retryable(err: BaseException) -> bool:
            status = _status(err)
            if status in RETRY_STATUS:
                record.errors.append(self._clean(f"attempt {record.attempts}: HTTP {status}: {err}"))
                return True
            return False

        backoff = wait_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            """Exponential backoff with 10% jitter, or longer where the server says how long (capped)."""
            asked = server_retry_delay_s(state.outcome.exception() if state.outcome else None)
            delay = backoff(state) if asked is None else max(backoff(state), min(asked, self.config.max_retry_delay_s))
            return delay * (1.0 + 0.1 * random.random())

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                record.attempts += 1
                response = self._client.models.generate_content(model=self.config.model, contents=contents, config=config)
                text = response.text
                if not text:
                    finish = [getattr(c, "finish_reason", None) for c in (response.candidates or [])]
                    raise AnswerError(f"no text in the response (finish reasons: {finish})")
                return text
        return None  # unreachable: tenacity either returns or reraises

    def _clean(self, message: str) -> str:
        """Errors may echo request details; make sure the key never reaches a record or a log."""
        return message.replace(self._redact, "***") if self._redact else message

    # ---------------------------------------------------------------------------------- diagnose
    def diagnose(self, task: Task, observation: FailureObservation) -> DiagnosisResult:
        clock = Stopwatch()
        record = DiagnosisRecord(selector=self.name, state_id=observation.state_id, model=self.config.model)
        if not observation.images:
            record.errors.append("no camera images in the observation")
            return answer_with_fallback(task, observation, self.fallback, record, clock)
        try:
            record.raw_text = self._call(task, observation, record)
        except AnswerError as err:
            record.errors.append(str(err))
        except RetryError as err:  # pragma: no cover - reraise=True makes tenacity raise the last error
            record.errors.append(self._clean(f"retries exhausted: {err}"))
        except Exception as err:  # noqa: BLE001 - transport errors of any kind end in the fallback
            status = _status(err)
            if is_configuration_error(status, str(err)):
                raise VLMConfigurationError(self._clean(
                    f"gemini refused the request with HTTP {status}: {err}. Check the API key (GEMINI_API_KEY / "
                    f"GOOGLE_API_KEY) and the model name ({self.config.model!r}); no fallback answers a misconfigured "
                    "VLM")) from None
            kind = f"HTTP {status}" if status is not None else type(err).__name__
            record.errors.append(self._clean(f"request failed after {record.attempts} attempt(s): {kind}: {err}"))
        if record.raw_text is not None:
            try:
                descriptor = parse_answer(task, record.raw_text, source=self.name)
                record.latency_s = clock.elapsed()
                return DiagnosisResult(descriptor=descriptor, record=record)
            except AnswerError as err:
                record.errors.append(f"invalid answer: {err}")
        log.warning("gemini diagnosis of %s failed (%s); answering with %s", observation.state_id or "a state",
                    record.errors[-1] if record.errors else "?", self.fallback.name)
        return answer_with_fallback(task, observation, self.fallback, record, clock)

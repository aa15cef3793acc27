"""OpenAI-compatible chat client: retries with backoff, structured output, cache/replay, token and cost budget.

Wraps the official `openai` SDK (its own retries disabled) so that every retry, wait and token is decided and
accounted here. Usage is derived from the SQLite call log, so a resumed run continues its totals and budget.

The settings come from the run's `llm:` section (`uhnas.config.LLMSection`), validated once there: `LLMConfig` is
derived from it by `LLMConfig.from_section` and has no defaults of its own. The sampling seed is not a setting of
the client: each request carries its own (`LLMClient.complete(..., seed=...)`), so concurrent callers never share
or swap a mutable config. This is the only module of `uhnas.llm` that imports `openai`.
"""

from __future__ import annotations

import copy
import email.utils
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import openai

from uhnas.config import LLMSection
from uhnas.llm.cache import CallLog, CallRecord, ResponseCache, StoredAnswer, request_key
from uhnas.llm.errors import (
    BudgetExceeded,
    CacheMiss,
    LLMError,
    LLMRejected,
    LLMRetriesExhausted,
    LLMUnavailable,
    one_line,
)

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "LLMClient",
    "LLMConfig",
    "LLMReply",
    "PriceTable",
    "Tally",
    "Usage",
    "retry_after_s",
]

StructuredOutput = Literal["auto", "json_schema", "json_object", "off"]
DEFAULT_ENDPOINT = "https://api.openai.com/v1"
KEY_PLACEHOLDER = "not-needed"  # local servers accept any key; the SDK insists on one
BACKOFF_BASE_S = 1.0  # full-jitter exponential backoff between retries of transient failures (no Retry-After)
BACKOFF_MAX_S = 60.0
_RETRYABLE_4XX = (408, 429)
_FORMAT_WORDS = ("response_format", "json_schema", "schema")
_ERROR_TYPES: dict[str, type[LLMError]] = {
    cls.__name__: cls for cls in (LLMError, LLMRejected, LLMRetriesExhausted, LLMUnavailable)
}


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens, to turn token counts into cost (from llm.price_*_usd_per_mtok)."""

    prompt_usd_per_mtok: float
    completion_usd_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost in USD of the given token counts."""
        return (prompt_tokens * self.prompt_usd_per_mtok + completion_tokens * self.completion_usd_per_mtok) / 1e6


@dataclass(frozen=True)
class LLMConfig:
    """What the client needs, derived from a validated `LLMSection` (see `from_section`); no defaults of its own.

    Holds the NAME of the key variable, never the key. The seed is not here: it is an argument of each call.
    """

    model: str
    base_url: str | None  # None: the SDK default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str
    temperature: float
    max_tokens: int
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    structured_output: StructuredOutput
    schema_strict: bool  # OpenAI strict mode needs additionalProperties=false everywhere
    price: PriceTable | None
    budget_tokens: int | None
    budget_usd: float | None

    @classmethod
    def from_section(
        cls,
        section: LLMSection,
        *,
        backoff_base_s: float | None = None,
        backoff_max_s: float | None = None,
        schema_strict: bool = False,
    ) -> LLMConfig:
        """The client settings of a run's `llm:` section; the backoff defaults to BACKOFF_BASE_S / BACKOFF_MAX_S
        (read at call time, so a test or benchmark can shorten it), strict schema mode to off.
        """
        return cls(
            model=section.model, base_url=section.base_url, api_key_env=section.api_key_env,
            temperature=section.temperature, max_tokens=section.max_tokens, timeout_s=section.timeout_s,
            max_retries=section.max_retries,
            backoff_base_s=BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s,
            backoff_max_s=BACKOFF_MAX_S if backoff_max_s is None else backoff_max_s,
            structured_output=section.structured_output, schema_strict=schema_strict, price=_price(section),
            budget_tokens=section.budget_tokens, budget_usd=section.budget_usd,
        )  # fmt: skip

    @property
    def endpoint(self) -> str:
        """The base URL calls go to, for messages."""
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_ENDPOINT).rstrip("/")


def _price(section: LLMSection) -> PriceTable | None:
    """The price table of the section's two price fields (the section checks they come together)."""
    prompt, completion = section.price_prompt_usd_per_mtok, section.price_completion_usd_per_mtok
    return None if prompt is None or completion is None else PriceTable(prompt, completion)


@dataclass(frozen=True)
class LLMReply:
    """One answer: its text, token counts, timing, provenance and log row."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool
    call_id: int
    attempts: int
    finish_reason: str | None = None
    mode: str = "text"  # response format the answer was produced under: json_schema | json_object | text


@dataclass
class Tally:
    """Calls and tokens for one purpose (or the total): live calls spend, replayed ones are tallied apart."""

    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayed_calls: int = 0
    replayed_prompt_tokens: int = 0
    replayed_completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Tokens spent on live calls."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def replayed_tokens(self) -> int:
        """Tokens served from cache or replay (not paid again)."""
        return self.replayed_prompt_tokens + self.replayed_completion_tokens

    def add(self, *, cached: bool, calls: int, failed: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Accumulate calls and tokens into the live or the replayed tally."""
        if cached:
            self.replayed_calls += calls
            self.replayed_prompt_tokens += prompt_tokens
            self.replayed_completion_tokens += completion_tokens
        else:
            self.calls += calls
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        self.failed += failed

    def to_dict(self, price: PriceTable | None) -> dict[str, Any]:
        """Plain dict (for --json and reports), with cost when prices are known."""
        cost = None if price is None else price.cost(self.prompt_tokens, self.completion_tokens)
        return {
            "calls": self.calls,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "replayed_calls": self.replayed_calls,
            "replayed_tokens": self.replayed_tokens,
            "cost_usd": cost,
        }


@dataclass
class Usage:
    """Run-wide LLM usage: total and by purpose (mutate, init, reflect, …), with cost from the price table."""

    price: PriceTable | None = None
    total: Tally = field(default_factory=Tally)
    by_purpose: dict[str, Tally] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float | None:
        """USD spent on live calls, or None without a price table."""
        return None if self.price is None else self.price.cost(self.total.prompt_tokens, self.total.completion_tokens)

    def add(self, purpose: str, **counts: Any) -> None:
        """Accumulate one or more calls of `purpose` (keywords as Tally.add)."""
        self.total.add(**counts)
        self.by_purpose.setdefault(purpose, Tally()).add(**counts)

    @classmethod
    def from_log(cls, rows: Sequence[tuple[str, bool, int, int, int, int]], price: PriceTable | None) -> Usage:
        """Rebuild usage from CallLog.tallies() rows, so a resumed run continues its totals."""
        usage = cls(price=price)
        for purpose, cached, calls, failed, prompt, completion in rows:
            usage.add(
                purpose, cached=cached, calls=calls, failed=failed, prompt_tokens=prompt, completion_tokens=completion
            )
        return usage

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: totals, cost and the by-purpose breakdown."""
        return {
            **self.total.to_dict(self.price),
            "by_purpose": {p: t.to_dict(self.price) for p, t in sorted(self.by_purpose.items())},
        }


def retry_after_s(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, else Retry-After as seconds or an HTTP-date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = _finite_float(lowered.get("retry-after-ms"))
    if ms is not None:
        return max(ms / 1000.0, 0.0)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _finite_float(raw)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now(), 0.0)


def _finite_float(raw: str | None) -> float | None:
    """float(raw) when it is a finite number, else None."""
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _status_message(exc: openai.APIStatusError) -> str:
    """The server's error message (error.message in the JSON body), falling back to the SDK's text."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(exc.message)


def _connection_reason(exc: openai.APIConnectionError, timeout_s: float) -> str:
    """Why a connection-level failure happened, in a few words."""
    if isinstance(exc, openai.APITimeoutError):
        return f"no answer within {timeout_s:g} s (timeout)"
    cause = exc.__cause__
    detail = str(cause) if cause is not None and str(cause) else str(exc)
    return f"connection error: {detail}"


def _normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain-dict copies of chat messages, each with a string role and string (or parts list) content."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"message {i} must be a mapping with a string 'role'")
        if not isinstance(message.get("content"), (str, list)):
            raise ValueError(f"message {i} ({message['role']}) needs 'content' as a string or a list of parts")
        out.append(dict(message))
    if not out:
        raise ValueError("at least one message is needed")
    return out


def _estimate_tokens(text: str) -> int:
    """Fallback token estimate (4 characters per token) for servers that omit usage."""
    return len(text) // 4 + 1


@dataclass
class _Attempt:
    """Mutable record of a live call in progress (what the log needs if it fails)."""

    attempts: int = 0
    failures: int = 0
    http_status: int | None = None
    mode: str = "text"


@dataclass(frozen=True)
class _Answer:
    """A successful live answer."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class LLMClient:
    """Chat completions with retries, structured output, caching/replay and token/cost budget."""

    def __init__(
        self,
        config: LLMConfig,
        cache: ResponseCache,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind config and cache; restore usage from the cache's call log. No network until check()/complete()."""
        self.config = config
        self.cache = cache
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # jitter only shifts timing, never results
        self._clock = clock
        self._lock = threading.Lock()
        self._usage = Usage.from_log(cache.log.tallies(), config.price)
        self._purpose_calls: dict[str, int] = {}
        self._sdk_client: openai.OpenAI | None = None
        self._schema_rejected = False  # auto mode: server refused json_schema once, so send plain text
        self._use_max_completion_tokens = False  # server demanded max_completion_tokens instead of max_tokens

    # --- public ----------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Base URL of the server (for messages)."""
        return self.config.endpoint

    @property
    def log(self) -> CallLog:
        """The run's CallLog (annotate calls with log.annotate(call_id, **fields))."""
        return self.cache.log

    @property
    def usage(self) -> Usage:
        """Snapshot of usage so far in this run (all sessions on this log), totals and by purpose."""
        with self._lock:
            return copy.deepcopy(self._usage)

    @property
    def schema_supported(self) -> bool:
        """False once the server has rejected json_schema response_format (auto mode falls back to text)."""
        return not self._schema_rejected

    def check(self) -> list[str]:
        """Verify once at start that the endpoint answers and serves the model; return the model ids listed."""
        if not self.cache.network_allowed:
            return []
        sdk = self._sdk()
        try:
            page = sdk.models.list()
        except openai.APIConnectionError as exc:
            reason = _connection_reason(exc, self.config.timeout_s)
            raise LLMUnavailable(f"cannot reach LLM endpoint {self.endpoint}: {reason}") from None
        except openai.APIStatusError as exc:
            return self._models_status_error(exc)
        ids = [str(m.id) for m in page.data]
        if ids and self.config.model not in ids:
            shown = ", ".join(sorted(ids)[:20]) + (f", … ({len(ids)} in all)" if len(ids) > 20 else "")
            raise LLMUnavailable(f"model '{self.config.model}' not served by {self.endpoint}; available: {shown}")
        return ids

    def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "architecture",
        purpose: str,
        meta: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> LLMReply:
        """One chat completion: cached/replayed answer if recorded, else a live call with retries; always logged.

        `seed` is sent with this request only (None: none is sent) and is part of its cache key.
        """
        msgs = _normalise_messages(messages)
        request = self._request(msgs, schema, schema_name, seed)
        key = request_key(request)
        occurrence = self.cache.next_occurrence(key)
        with self._lock:
            serial = self._purpose_calls.get(purpose, 0) + 1
            self._purpose_calls[purpose] = serial
        base = CallRecord(
            purpose=purpose, model=self.config.model, key=key, occurrence=occurrence, request=request,
            source="live", mode="text", meta=dict(meta or {}),
        )  # fmt: skip
        start = self._clock()
        found = self.cache.lookup(key, occurrence)
        if found is not None and (found[0].error is None or not self.cache.network_allowed):
            return self._serve_recorded(base, found[0], start)
        if not self.cache.network_allowed:
            self._record_miss(base, serial, start)
        self._check_budget()
        return self._live(base, msgs, schema, schema_name, seed, start)

    def close(self) -> None:
        """Close the SDK's HTTP connections (the cache is closed by its owner)."""
        if self._sdk_client is not None:
            self._sdk_client.close()
            self._sdk_client = None

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request construction --------------------------------------------------------------------------------
    def _sdk(self) -> openai.OpenAI:
        """The SDK client, created once on first use with its own retries disabled."""
        with self._lock:
            if self._sdk_client is None:
                kwargs: dict[str, Any] = {"api_key": self._api_key(), "max_retries": 0}
                kwargs["timeout"] = self.config.timeout_s
                if self.config.base_url is not None:
                    kwargs["base_url"] = self.config.base_url
                self._sdk_client = openai.OpenAI(**kwargs)
            return self._sdk_client

    def _api_key(self) -> str:
        """The key from the environment; a placeholder for custom (local) endpoints that need none."""
        key = os.environ.get(self.config.api_key_env, "")
        if key:
            return key
        if self.config.base_url is not None:
            return KEY_PLACEHOLDER
        raise LLMUnavailable(
            f"environment variable {self.config.api_key_env} is not set; {self.endpoint} needs an API key"
        )

    def _scrub(self, text: str) -> str:
        """Remove the API key from text a server echoed back, so it never reaches logs or messages."""
        key = os.environ.get(self.config.api_key_env, "")
        return text.replace(key, "***") if len(key) >= 4 else text

    def _request(
        self, msgs: list[dict[str, Any]], schema: dict[str, Any] | None, name: str, seed: int | None
    ) -> dict[str, Any]:
        """The canonical request identity hashed into the cache key (configured format mode, not the fallback)."""
        cfg = self.config
        fmt = None
        if schema is not None:
            fmt = {"mode": cfg.structured_output, "name": name, "schema": schema, "strict": cfg.schema_strict}
        return {
            "model": cfg.model,
            "messages": msgs,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "seed": seed,
            "format": fmt,
        }

    def _mode(self, schema: dict[str, Any] | None) -> str:
        """Response format to send now: json_schema, json_object or text (auto falls back after a rejection)."""
        wanted = self.config.structured_output
        if schema is None or wanted == "off":
            return "text"
        if wanted == "auto":
            return "text" if self._schema_rejected else "json_schema"
        return wanted

    def _sdk_kwargs(
        self, msgs: list[dict[str, Any]], schema: dict[str, Any] | None, name: str, mode: str, seed: int | None
    ) -> dict[str, Any]:
        """Keyword arguments for chat.completions.create."""
        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": msgs, "temperature": cfg.temperature}
        kwargs["max_completion_tokens" if self._use_max_completion_tokens else "max_tokens"] = cfg.max_tokens
        if seed is not None:
            kwargs["seed"] = seed
        if mode == "json_schema":
            spec = {"name": name, "schema": schema, "strict": cfg.schema_strict}
            kwargs["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    # --- recorded answers ------------------------------------------------------------------------------------
    def _serve_recorded(self, base: CallRecord, found: StoredAnswer, start: float) -> LLMReply:
        """Answer from the cache or replay source: logged as cached, tallied as replayed (not spent)."""
        rec = copy.copy(base)
        rec.source = "replay" if not self.cache.network_allowed else "cache"
        rec.mode, rec.cached = found.mode, True
        rec.text, rec.finish_reason = found.text, found.finish_reason
        rec.prompt_tokens, rec.completion_tokens = found.prompt_tokens, found.completion_tokens
        rec.error, rec.error_type, rec.http_status = found.error, found.error_type, found.http_status
        rec.latency_s = self._clock() - start
        call_id = self.cache.record(rec, answers=True)
        self._account(rec)
        if found.error is not None:  # replay reproduces the original failure too
            raise self._recorded_error(found, call_id)
        return LLMReply(
            text=found.text or "", prompt_tokens=found.prompt_tokens, completion_tokens=found.completion_tokens,
            latency_s=rec.latency_s, cached=True, call_id=call_id, attempts=0, finish_reason=found.finish_reason,
            mode=found.mode,
        )  # fmt: skip

    @staticmethod
    def _recorded_error(found: StoredAnswer, call_id: int) -> LLMError:
        """The exception a recorded failure ended with, rebuilt for replay."""
        cls = _ERROR_TYPES.get(found.error_type or "", LLMError)
        message = found.error or "recorded failure"
        if cls is LLMRejected:
            return LLMRejected(message, status_code=found.http_status or 0, call_id=call_id)
        return cls(message, call_id=call_id)

    def _record_miss(self, base: CallRecord, serial: int, start: float) -> NoReturn:
        """Log and raise CacheMiss: replay found no recorded answer for this request. When every answer the original
        recorded has been replayed, the original stopped here (interrupted, or still running): the replay did not
        diverge, it reached the end of the recording."""
        where = (
            f"no cached answer for {base.purpose} call #{serial} (key {base.key[:12]}…, occurrence {base.occurrence})"
        )
        progress = self.cache.replay_progress()
        if progress is not None and progress[1] > 0 and progress[0] >= progress[1]:
            message = (
                f"{where}: the original run stopped here: all {progress[1]} of its recorded answers were replayed "
                "and it made no further call (it was interrupted or is still running); the replay matches it so far"
            )
        else:
            shown = f" ({progress[0]} of its {progress[1]} recorded answers replayed)" if progress else ""
            message = f"{where}; the replayed run diverged from the original{shown}"
        rec = copy.copy(base)
        rec.source, rec.cached, rec.error, rec.error_type = "replay", True, message, "CacheMiss"
        rec.latency_s = self._clock() - start
        call_id = self.cache.record(rec, answers=False)
        self._account(rec)
        raise CacheMiss(message, call_id=call_id)

    # --- live calls ------------------------------------------------------------------------------------------
    def _check_budget(self) -> None:
        """Raise BudgetExceeded before a paid call once the token or USD budget is spent."""
        cfg = self.config
        with self._lock:
            spent = self._usage.total.total_tokens
            cost = self._usage.cost_usd
        if cfg.budget_tokens is not None and spent >= cfg.budget_tokens:
            raise BudgetExceeded(
                f"LLM budget of {cfg.budget_tokens} tokens reached (spent {spent}); "
                "resume with a larger --llm-budget-tokens"
            )
        if cfg.budget_usd is not None and cost is not None and cost >= cfg.budget_usd:
            raise BudgetExceeded(
                f"LLM budget of ${cfg.budget_usd:.4g} reached (spent ${cost:.4g}); "
                "resume with a larger --llm-budget-usd"
            )

    def _live(
        self,
        base: CallRecord,
        msgs: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        name: str,
        seed: int | None,
        start: float,
    ) -> LLMReply:
        """Call the server (with retries), log the outcome, index the answer, account tokens."""
        state = _Attempt()
        rec = copy.copy(base)
        sdk = self._sdk()  # a missing key is a configuration error, not a call outcome: raised before logging
        try:
            answer = self._call_with_retries(sdk, msgs, schema, name, seed, base.purpose, state)
        except LLMError as exc:
            rec.error, rec.error_type = str(exc), type(exc).__name__
            self._finish_live(rec, state, start)
            exc.call_id = self.cache.record(rec, answers=True)
            self._account(rec)
            raise
        rec.text, rec.finish_reason = answer.text, answer.finish_reason
        rec.prompt_tokens, rec.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        self._finish_live(rec, state, start)
        call_id = self.cache.record(rec, answers=True)
        self._account(rec)
        return LLMReply(
            text=answer.text, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
            latency_s=rec.latency_s, cached=False, call_id=call_id, attempts=state.attempts,
            finish_reason=answer.finish_reason, mode=state.mode,
        )  # fmt: skip

    def _finish_live(self, rec: CallRecord, state: _Attempt, start: float) -> None:
        """Copy attempt bookkeeping into the record."""
        rec.attempts, rec.http_status, rec.mode = state.attempts, state.http_status, state.mode
        rec.latency_s = self._clock() - start

    def _call_with_retries(
        self,
        sdk: openai.OpenAI,
        msgs: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        name: str,
        seed: int | None,
        purpose: str,
        state: _Attempt,
    ) -> _Answer:
        """Attempt the call until success, a non-retryable error, or max_retries transient failures."""
        while True:
            state.attempts += 1
            state.mode = self._mode(schema)
            try:
                response = sdk.chat.completions.create(**self._sdk_kwargs(msgs, schema, name, state.mode, seed))
            except openai.APIStatusError as exc:
                state.http_status = exc.status_code
                if self._adapt(exc, state.mode):
                    continue
                error, hint = self._status_failure(exc, purpose)
            except openai.APIConnectionError as exc:
                state.http_status = None
                error, hint = _connection_reason(exc, self.config.timeout_s), None
            except openai.OpenAIError as exc:
                raise LLMError(f"LLM {purpose} call to {self.endpoint} failed: {self._scrub(str(exc))}") from None
            else:
                state.http_status = 200
                return self._unpack(response, msgs)
            state.failures += 1
            if state.failures > self.config.max_retries:
                raise LLMRetriesExhausted(
                    f"LLM {purpose} call to {self.endpoint} failed after {state.attempts} attempts; "
                    f"last error: {self._scrub(error)}"
                )
            self._sleep(self._wait_s(state.failures, hint))

    def _status_failure(self, exc: openai.APIStatusError, purpose: str) -> tuple[str, float | None]:
        """(description, Retry-After hint) of a retryable HTTP error; raise LLMRejected for the others."""
        code = exc.status_code
        message = one_line(self._scrub(_status_message(exc)), limit=200)
        if code not in _RETRYABLE_4XX and code < 500:
            hint = ""
            if code in (400, 422) and any(w in message.lower() for w in _FORMAT_WORDS):
                hint = " (set structured_output to 'auto' or 'off' for servers without schema support)"
            raise LLMRejected(
                f"LLM {purpose} call rejected by {self.endpoint} (HTTP {code}): {message}{hint}", status_code=code
            )
        return f"HTTP {code}: {message}", retry_after_s(exc.response.headers)

    def _adapt(self, exc: openai.APIStatusError, mode: str) -> bool:
        """Learn from a 400 that names an unsupported feature; True when the request should be re-sent adapted."""
        if exc.status_code not in (400, 422):
            return False
        message = _status_message(exc).lower()
        if mode == "json_schema" and self.config.structured_output == "auto":
            if any(word in message for word in _FORMAT_WORDS):
                self._schema_rejected = True
                return True
        if "max_completion_tokens" in message and not self._use_max_completion_tokens:
            self._use_max_completion_tokens = True
            return True
        return False

    def _wait_s(self, failures: int, hint: float | None) -> float:
        """Seconds before the next attempt: the server's Retry-After, else full-jitter exponential backoff; capped."""
        cap = self.config.backoff_max_s
        if hint is not None:
            return min(hint, cap)
        return self._rng.uniform(0.0, min(cap, self.config.backoff_base_s * 2.0 ** (failures - 1)))

    @staticmethod
    def _unpack(response: Any, msgs: list[dict[str, Any]]) -> _Answer:
        """Text, finish reason and token usage of a completion (usage estimated if the server omits it)."""
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (message.content or getattr(message, "refusal", None) or "") if message is not None else ""
        finish = choices[0].finish_reason if choices else None
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            return _Answer(text, finish, int(usage.prompt_tokens), int(usage.completion_tokens or 0))
        prompt = "".join(m["content"] for m in msgs if isinstance(m["content"], str))
        return _Answer(text, finish, _estimate_tokens(prompt), _estimate_tokens(text))

    def _account(self, rec: CallRecord) -> None:
        """Add a logged call to the running usage (mirrors Usage.from_log on the same rows)."""
        with self._lock:
            self._usage.add(
                rec.purpose, cached=rec.cached, calls=1, failed=int(rec.error is not None),
                prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens,
            )  # fmt: skip

    def _models_status_error(self, exc: openai.APIStatusError) -> list[str]:
        """check(): a /models endpoint missing (404) cannot verify; auth or server errors make the LLM unavailable."""
        code = exc.status_code
        if code == 404:
            return []
        if code in (401, 403):
            raise LLMUnavailable(
                f"LLM endpoint {self.endpoint} rejected the API key from ${self.config.api_key_env} (HTTP {code})"
            )
        message = one_line(self._scrub(_status_message(exc)), limit=200)
        raise LLMUnavailable(f"LLM endpoint {self.endpoint} answered HTTP {code} to GET /models: {message}")

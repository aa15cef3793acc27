"""Exceptions of the LLM layer: each carries a one-line message a CLI can print as is."""

from __future__ import annotations

from uhnas.errors import UhnasError

__all__ = [
    "BudgetExceeded",
    "CacheMiss",
    "LLMError",
    "LLMRejected",
    "LLMRetriesExhausted",
    "LLMUnavailable",
    "ParseError",
    "one_line",
]


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (newlines included) and truncate, so messages stay printable on one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class LLMError(UhnasError):
    """Base class of every LLM-layer failure; the message is a single line."""

    def __init__(self, message: str, *, call_id: int | None = None) -> None:
        super().__init__(one_line(message, limit=600))
        self.call_id = call_id  # row in the call log that recorded this failure, if any


class LLMUnavailable(LLMError):
    """The endpoint cannot be reached, rejects our credentials, or does not serve the configured model."""


class LLMRejected(LLMError):
    """The server refused the request with a non-retryable status (4xx other than 408/429)."""

    def __init__(self, message: str, *, status_code: int, call_id: int | None = None) -> None:
        super().__init__(message, call_id=call_id)
        self.status_code = status_code


class LLMRetriesExhausted(LLMError):
    """Transient failures (timeouts, 429, 5xx, dropped connections) persisted past max_retries."""


class BudgetExceeded(LLMError):
    """The run's token or USD budget is spent; raised before any further paid call."""


class CacheMiss(LLMError):
    """Replay mode found no recorded answer for a request: the replayed run diverged from the original."""


class ParseError(LLMError, ValueError):
    """No valid JSON object could be extracted from a model answer."""

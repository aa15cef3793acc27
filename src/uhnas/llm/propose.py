"""The extract → validate → repair loop that turns model answers into validated JSON proposals.

`propose` asks for one object (an architecture); `propose_many` asks for {"architectures": [...]} in one call
(the batch form of the init prompt). Validation is a callback of the caller (schema, shapes, backend limits,
"duplicate of an already evaluated architecture"), so this module stays model-agnostic. When an answer cannot be
parsed or fails validation, the model's answer is appended as an assistant message followed by a repair message
(repair.j2) quoting the exact errors, and the model is asked again, at most `max_repairs` times. Every attempt is
recorded and annotated in the call log; when repairs are exhausted `ProposalFailed` is raised: there is never a
silent fallback. Answers are data: they are located and json-decoded by `extract_json`, never evaluated. An answer
cut off at the token limit (finish reason "length") without a complete JSON object is reported as truncated, not
by what an inner fragment of it looks like, and the repair turn does not echo the cut-off text back.

`ProposalFailed` is a `uhnas.errors.ProposalError` ("no valid answer for this attempt": the engine asks again),
not an `LLMError`. Errors of the client itself (LLMUnavailable, BudgetExceeded, CacheMiss, ...) are LLMErrors and
propagate unchanged: they stop a search. Every call of one proposal carries the caller's `seed`. Validation must
be deterministic for a given answer so that a replayed run rebuilds the same repair conversation (cache hits).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uhnas.errors import ProposalError
from uhnas.llm.errors import ParseError, one_line
from uhnas.llm.parse import complete_object, extract_json
from uhnas.llm.prompting import render_repair, sanitize

if TYPE_CHECKING:  # the client imports openai; this loop only calls it
    from uhnas.llm.client import LLMClient, LLMReply

__all__ = ["Attempt", "Proposal", "ProposalBatch", "ProposalFailed", "batch_schema", "propose", "propose_many"]

Validate = Callable[[dict[str, Any]], Sequence[str]]
EXCERPT_CHARS = 500  # raw answer kept per attempt (the full text stays in the call log)
ERROR_CHARS = 500  # one error line at most
MAX_ITEM_ERRORS = 3  # per architecture of a batch, in the repair message
BATCH_KEY = "architectures"
TRUNCATED = (
    "the answer was cut off at the token limit before the JSON object was complete: answer with the JSON object "
    'only, "layers" first, and a rationale of one short sentence'
)
_Judged = tuple[list[dict[str, Any]], list[tuple[int, tuple[str, ...]]]]  # (valid items, (index, errors) rejected)
_Judge = Callable[[dict[str, Any]], tuple[list[str], Any, dict[str, Any]]]  # -> (errors, extra, log notes)


@dataclass(frozen=True)
class Attempt:
    """One model answer in the loop: its log row, an excerpt of the raw text, and what was wrong (empty = valid)."""

    call_id: int
    excerpt: str
    errors: tuple[str, ...]
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None

    @property
    def valid(self) -> bool:
        """True when this answer was accepted."""
        return not self.errors


class _AttemptTotals:
    """Repairs and tokens of a proposal, derived from its attempts."""

    attempts: tuple[Attempt, ...]

    @property
    def repairs(self) -> int:
        """Repair rounds needed (0 = the first answer was used)."""
        return len(self.attempts) - 1

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens over all attempts."""
        return sum(a.prompt_tokens + a.completion_tokens for a in self.attempts)


@dataclass(frozen=True)
class Proposal(_AttemptTotals):
    """A validated object from the model, the answer it came from, and every attempt it took."""

    data: dict[str, Any]
    text: str
    call_id: int
    attempts: tuple[Attempt, ...]
    messages: tuple[dict[str, Any], ...] = field(repr=False, default=())  # the final conversation


@dataclass(frozen=True)
class ProposalBatch(_AttemptTotals):
    """The valid objects of a batch answer (at most `count`), the rejected ones' errors, and every attempt."""

    items: tuple[dict[str, Any], ...]
    rejected: tuple[tuple[int, tuple[str, ...]], ...]  # (index in the accepted answer, errors)
    text: str
    call_id: int
    attempts: tuple[Attempt, ...]
    messages: tuple[dict[str, Any], ...] = field(repr=False, default=())


class ProposalFailed(ProposalError):
    """The model gave no usable answer within 1 + max_repairs attempts; carries every attempt.

    A ProposalError, not an LLMError: the client worked, the answers were unusable, so the slot is asked again.
    """

    def __init__(self, message: str, *, purpose: str, attempts: Sequence[Attempt]) -> None:
        super().__init__(one_line(message, limit=600))
        self.call_id = attempts[-1].call_id if attempts else None  # log row of the last answer
        self.purpose = purpose
        self.attempts = tuple(attempts)

    @property
    def last_errors(self) -> tuple[str, ...]:
        """The errors of the final attempt."""
        return self.attempts[-1].errors if self.attempts else ()


def batch_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of a batch answer {"architectures": [schema, ...]} (strict-mode compatible)."""
    return {
        "type": "object",
        "properties": {BATCH_KEY: {"type": "array", "items": dict(schema)}},
        "required": [BATCH_KEY],
        "additionalProperties": False,
    }


def propose(
    client: LLMClient,
    messages: Sequence[Mapping[str, Any]],
    *,
    validate: Validate,
    schema: dict[str, Any] | None,
    purpose: str,
    max_repairs: int = 2,
    meta: dict[str, Any] | None = None,
    seed: int | None = None,
    schema_name: str = "architecture",
    give_up: Callable[[], str | None] | None = None,
) -> Proposal:
    """Ask for one JSON object until `validate` returns no errors, repairing at most `max_repairs` times; every
    call is sent with `seed` (None: no seed) and the schema under `schema_name`. After each refused answer,
    `give_up` (when given) may end the proposal before the repairs run out: it returns why, or None to go on."""

    def judge(data: dict[str, Any]) -> tuple[list[str], None, dict[str, Any]]:
        """The validator's errors for the one object."""
        return _errors(validate(data)), None, {}

    loop = _Loop(client, messages, schema=schema, purpose=purpose, max_repairs=max_repairs, meta=meta, seed=seed,
                 schema_name=schema_name, give_up=give_up)  # fmt: skip
    data, reply, _ = loop.run(judge, count=None)
    return Proposal(data=data, text=reply.text, call_id=reply.call_id, attempts=loop.attempts,
                    messages=tuple(loop.conversation))  # fmt: skip


def propose_many(
    client: LLMClient,
    messages: Sequence[Mapping[str, Any]],
    *,
    validate: Validate,
    schema: dict[str, Any] | None,
    purpose: str,
    count: int,
    min_valid: int = 1,
    max_repairs: int = 2,
    meta: dict[str, Any] | None = None,
    seed: int | None = None,
) -> ProposalBatch:
    """Ask for {"architectures": [...]}; keep the valid items (at most `count`), repair only if fewer than
    `min_valid` are valid. `validate` is called on the items in order and may be stateful: an item it accepts
    is kept, so recording accepted hashes inside it rejects duplicates within the batch."""
    if count < 1 or not 1 <= min_valid <= count:
        raise ValueError(f"need count >= 1 and 1 <= min_valid <= count (got count={count}, min_valid={min_valid})")

    def judge(data: dict[str, Any]) -> tuple[list[str], _Judged, dict[str, Any]]:
        """Validate each item in order; errors only when fewer than min_valid are valid."""
        items = data.get(BATCH_KEY)
        if not isinstance(items, list):
            keys = ", ".join(sorted(str(k) for k in data)) or "none"
            error = f'answer must be a JSON object {{"{BATCH_KEY}": [...]}} holding a list (got keys: {keys})'
            return [error], ([], []), {}
        valid: list[dict[str, Any]] = []
        rejected: list[tuple[int, tuple[str, ...]]] = []
        for index, item in enumerate(items):
            if len(valid) >= count:
                break
            errors = ["not a JSON object"] if not isinstance(item, dict) else _errors(validate(item))
            if errors:
                rejected.append((index, tuple(errors)))
            else:
                valid.append(item)
        notes = {"accepted": len(valid), "rejected": [{"index": i, "errors": list(e)} for i, e in rejected]}
        if len(valid) >= min_valid:
            return [], (valid, rejected), notes
        if not items:
            return [f'"{BATCH_KEY}" is empty: {count} architectures were asked for'], (valid, rejected), notes
        lines = [f"only {len(valid)} of the architectures are valid, at least {min_valid} needed"]
        for index, item_errors in rejected:
            lines += [f"architecture {index}: {e}" for e in item_errors[:MAX_ITEM_ERRORS]]
        return lines, (valid, rejected), notes

    wanted = None if schema is None else batch_schema(schema)
    loop = _Loop(client, messages, schema=wanted, purpose=purpose, max_repairs=max_repairs, meta=meta, seed=seed,
                 schema_name="architectures")  # fmt: skip
    _, reply, (valid, rejected) = loop.run(judge, count=count)
    return ProposalBatch(items=tuple(valid), rejected=tuple(rejected), text=reply.text, call_id=reply.call_id,
                         attempts=loop.attempts, messages=tuple(loop.conversation))  # fmt: skip


def _errors(found: Sequence[str]) -> list[str]:
    """The validator's errors as one-line strings (a bare string counts as one error)."""
    if isinstance(found, str):
        found = [found]
    return [one_line(e, ERROR_CHARS) for e in found]


class _Loop:
    """The conversation and attempt record of one propose / propose_many call."""

    def __init__(
        self,
        client: LLMClient,
        messages: Sequence[Mapping[str, Any]],
        *,
        schema: dict[str, Any] | None,
        purpose: str,
        max_repairs: int,
        meta: dict[str, Any] | None,
        seed: int | None = None,
        schema_name: str = "architecture",
        give_up: Callable[[], str | None] | None = None,
    ) -> None:
        """Copy the opening messages; nothing is sent yet."""
        if max_repairs < 0:
            raise ValueError(f"max_repairs must be >= 0 (got {max_repairs})")
        self.client = client
        self.conversation: list[dict[str, Any]] = [dict(m) for m in messages]
        self.schema = schema
        self.schema_name = schema_name
        self.purpose = purpose
        self.max_attempts = 1 + max_repairs
        self.meta = dict(meta or {})
        self.seed = seed
        self.give_up = give_up
        self.attempts: tuple[Attempt, ...] = ()

    def run(self, judge: _Judge, *, count: int | None) -> tuple[dict[str, Any], LLMReply, Any]:
        """Ask, judge, repair; return (decoded answer, reply, judge's extra) or raise ProposalFailed."""
        for number in range(1, self.max_attempts + 1):
            reply = self.client.complete(
                self.conversation, schema=self.schema, schema_name=self.schema_name, purpose=self.purpose,
                meta={**self.meta, "attempt": number}, seed=self.seed,
            )  # fmt: skip
            data: dict[str, Any] | None
            extra: Any = None
            notes: dict[str, Any] = {}
            truncated = reply.finish_reason == "length" and not complete_object(reply.text)
            if truncated:
                data, errors = None, [TRUNCATED]
            else:
                try:
                    data = extract_json(reply.text)
                except ParseError as exc:
                    data, errors = None, [str(exc)]
                else:
                    errors, extra, notes = judge(data)
            self._record(reply, errors, number, notes)
            if not errors and data is not None:
                return data, reply, extra
            why = self.give_up() if self.give_up is not None and number < self.max_attempts else None
            if why is not None:
                raise ProposalFailed(f"{self.purpose}: {why} after {number} attempts; last errors: {'; '.join(errors)}",
                                     purpose=self.purpose, attempts=self.attempts)  # fmt: skip
            if number < self.max_attempts:
                said = f"(answer cut off at the token limit after {len(reply.text)} characters)" if truncated else None
                self.conversation += [
                    {"role": "assistant", "content": said or reply.text or "(empty answer)"},
                    {"role": "user", "content": render_repair(errors, attempt=number + 1,
                                                              max_attempts=self.max_attempts, count=count,
                                                              layers=(data or {}).get("layers"))},
                ]  # fmt: skip
        last = "; ".join(self.attempts[-1].errors)
        raise ProposalFailed(
            f"{self.purpose}: no valid answer after {self.max_attempts} attempts; last errors: {last}",
            purpose=self.purpose, attempts=self.attempts,
        )  # fmt: skip

    def _record(self, reply: LLMReply, errors: list[str], number: int, notes: dict[str, Any]) -> None:
        """Keep the attempt and annotate its call-log row with the outcome and errors."""
        attempt = Attempt(
            call_id=reply.call_id, excerpt=sanitize(reply.text, EXCERPT_CHARS), errors=tuple(errors),
            cached=reply.cached, prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
        )  # fmt: skip
        self.attempts = (*self.attempts, attempt)
        outcome = "invalid" if errors else "valid"
        self.client.log.annotate(reply.call_id, outcome=outcome, errors=list(errors), attempt=number,
                                 max_attempts=self.max_attempts, **notes)  # fmt: skip

"""The ask helper every LLM prompt family shares: render → call (with a per-call seed) → validate/repair → Proposal.

One `LLMAsk` per search method holds what the families of that method share: the client, the backend's check
and energy, the architecture schema (the IR's own), the generation's pending proposals (shown to later slots as
not-yet-evaluated candidates) and the initial population's fallback to the conventional initializer.

Each request's seed is derived from (run seed, kind, generation, slot, attempt) unless `llm.seed` fixes it, and is
passed to the client call: no shared configuration is modified. When the model still gives no valid answer
after its repair turns, `ProposalFailed` (a `uhnas.errors.ProposalError`) becomes a one-line ProposalError
naming the operator ("llm.mutate: ...") and the engine asks again. There is never a silent fallback to the
parent. Errors of the client itself (BudgetExceeded, LLMRetriesExhausted, CacheMiss, LLMUnavailable, a template
bug's PromptError, ...) are LLMErrors and propagate unchanged: they stop the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uhnas.arch import arch_hash, architecture_schema, parse_architecture
from uhnas.config import LLMSection
from uhnas.llm.knowledge import KnowledgeBase
from uhnas.llm.prompting import render_messages, sanitize
from uhnas.llm.propose import Attempt, ProposalFailed, propose
from uhnas.llm.propose import Proposal as Found
from uhnas.search.operators.base import Operator, OperatorContext, Proposal, ProposalError
from uhnas.search.operators.llm_summary import (
    KNOWLEDGE_MAX_CHARS,
    KNOWLEDGE_MAX_ITEMS,
    Checker,
    Energy,
    knowledge_from_notes,
    pending_summary,
    search_context,
    task_context,
)
from uhnas.search.operators.llm_validate import VERDICTS, ArchValidator, normalise
from uhnas.search.operators.random import RandomOperator
from uhnas.seeding import derive_seed

if TYPE_CHECKING:  # the client imports openai; only uhnas.search.llm_methods builds one
    from uhnas.llm.client import LLMClient

__all__ = ["FALLBACK_OPERATOR", "SEED_MODULUS", "CallTally", "InitFallback", "LLMAsk", "PendingProposals"]

FALLBACK_OPERATOR = "random-init(llm-fallback)"
SEED_MODULUS = 2**31  # per-call seeds fit a signed 32-bit int: every server that honours seeds accepts them
OnFailure = Callable[[ProposalFailed], None]


@dataclass
class CallTally:
    """Call ids, verdicts and tokens of one propose() round, for the proposal's metadata."""

    call_ids: list[int] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayed: int = 0

    def add(self, attempts: Sequence[Attempt], verdicts: Sequence[str]) -> None:
        """Count each attempt with its verdict."""
        for attempt, verdict in zip(attempts, verdicts):
            self.call_ids.append(attempt.call_id)
            self.verdicts.append(verdict)
            self.prompt_tokens += attempt.prompt_tokens
            self.completion_tokens += attempt.completion_tokens
            self.replayed += int(attempt.cached)

    def to_dict(self) -> dict[str, Any]:
        """The "llm" metadata of a proposal: calls, attempts, repairs, verdicts and tokens."""
        invalid = {v: self.verdicts.count(v) for v in VERDICTS[1:] if v in self.verdicts}
        return {
            "call_ids": list(self.call_ids),
            "attempts": len(self.call_ids),
            "repairs": max(0, len(self.call_ids) - 1),
            "verdicts": list(self.verdicts),
            "invalid": invalid,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.prompt_tokens + self.completion_tokens,
            "replayed": self.replayed,
        }


class PendingProposals:
    """Summaries of this generation's accepted proposals, by slot: later slots see them as recent candidates.

    Rebuilt as a run proceeds (a resumed run re-derives them from the response cache), so it is no hidden state.
    """

    def __init__(self) -> None:
        self._proposed: dict[tuple[int, int], dict[str, Any]] = {}  # (generation, slot) -> pending summary

    def remember(self, context: OperatorContext, summary: dict[str, Any]) -> None:
        """Keep the summary of the proposal for the context's slot (older generations are dropped)."""
        self._proposed = {k: v for k, v in self._proposed.items() if k[0] >= context.generation}
        self._proposed[(context.generation, context.slot)] = summary

    def forget(self, context: OperatorContext) -> None:
        """The engine refused what was proposed for the context's slot: it is not pending any more."""
        self._proposed.pop((context.generation, context.slot), None)

    def before(self, context: OperatorContext) -> list[dict[str, Any]]:
        """Summaries of this generation's accepted proposals for earlier slots, in slot order."""
        g = context.generation
        return [summary for (gen, slot), summary in sorted(self._proposed.items()) if gen == g and slot < context.slot]


class LLMAsk:
    """Render → call → validate/repair → Proposal, shared by the prompt families of one method (module docstring)."""

    def __init__(
        self,
        client: LLMClient,
        *,
        check: Checker,
        energy: Energy | None,
        epochs: int,
        name: str,
        max_repairs: int,
        llm_seed: int | None,
        init_failures_before_fallback: int,
        fallback: Operator | None = None,
        knowledge_max_items: int = KNOWLEDGE_MAX_ITEMS,
        knowledge_max_chars: int = KNOWLEDGE_MAX_CHARS,
    ) -> None:
        self.client = client
        self.check = check
        self.energy = energy
        self.epochs = epochs
        self.name = name  # a trial's operator is "<name>.<label>", e.g. "llm.mutate"
        self.max_repairs = max_repairs
        self.llm_seed = llm_seed
        self.knowledge_max_items = knowledge_max_items
        self.knowledge_max_chars = knowledge_max_chars
        self.schema = architecture_schema()
        self.pending = PendingProposals()
        self.fallback = InitFallback(self, fallback or RandomOperator(), init_failures_before_fallback)

    @classmethod
    def from_section(
        cls, client: LLMClient, section: LLMSection, *, check: Checker, energy: Energy | None, epochs: int, name: str
    ) -> LLMAsk:
        """The helper for a run's `llm:` section (repairs, fixed seed, init fallback) and backend."""
        return cls(
            client, check=check, energy=energy, epochs=epochs, name=name, max_repairs=section.max_repairs,
            llm_seed=section.seed, init_failures_before_fallback=section.init_failures_before_fallback,
        )  # fmt: skip

    # -- what the prompts show

    def knowledge(self, context: OperatorContext) -> KnowledgeBase:
        """The knowledge base as the latest reflection left it."""
        return knowledge_from_notes(context.notes, self.knowledge_max_items, self.knowledge_max_chars)

    def task_context(self, context: OperatorContext) -> dict[str, Any]:
        """Task, objective and limits (every prompt kind)."""
        return task_context(context, self.epochs)

    def search_context(self, context: OperatorContext, *, pending: bool = True) -> dict[str, Any]:
        """The UH-NAS search state, with this generation's pending proposals among the recent ones if `pending`."""
        shown = self.pending.before(context) if pending else []
        return search_context(
            context, epochs=self.epochs, schema=self.schema, pending=shown, knowledge=self.knowledge(context)
        )

    # -- asking

    def seed(self, context: OperatorContext, kind: str, *, slot: int, attempt: int) -> int:
        """The request's seed: the configured one, else derived from (run seed, kind, generation, slot, attempt)."""
        if self.llm_seed is not None:
            return self.llm_seed
        return derive_seed(context.seed, "llm", kind, context.generation, slot, attempt) % SEED_MODULUS

    def render(self, template: str, ctx: dict[str, Any], variant: str) -> list[dict[str, str]]:
        """System and user messages of one prompt kind (a template bug raises PromptError: the run stops)."""
        return render_messages(template, ctx, system_variant=variant)

    def call(
        self,
        messages: list[dict[str, str]],
        *,
        validate: Callable[[dict[str, Any]], Sequence[str]],
        schema: dict[str, Any],
        purpose: str,
        meta: dict[str, Any],
        seed: int,
    ) -> Found:
        """propose() with this method's repairs: the validated answer, or ProposalFailed."""
        return propose(self.client, messages, validate=validate, schema=schema, purpose=purpose,
                       max_repairs=self.max_repairs, meta=meta, seed=seed)  # fmt: skip

    def architecture(
        self,
        context: OperatorContext,
        ctx: dict[str, Any],
        *,
        template: str,
        kind: str,
        label: str,
        variant: str,
        parents: tuple[int, ...],
        extra: dict[str, Any] | None = None,
        on_failure: OnFailure | None = None,
    ) -> Proposal:
        """Render `template` with `ctx`, ask until an answer passes the architecture validator, and return it as
        a Proposal named "<name>.<label>" (remembered as pending). `kind` is the call-log purpose; `on_failure`
        sees the ProposalFailed before it becomes a ProposalError."""
        messages = self.render(template, ctx, variant)
        seed = self.seed(context, kind, slot=context.slot, attempt=context.attempt)
        meta = {"generation": context.generation, "slot": context.slot, "slot_attempt": context.attempt,
                "kind": kind, "operator": self.name, "seed": seed}  # fmt: skip
        validator = ArchValidator(context, self.check)
        try:
            found = self.call(messages, validate=validator, schema=self.schema, purpose=kind, meta=meta, seed=seed)
        except ProposalFailed as exc:
            self._annotate(exc.attempts, validator.classify(exc.attempts))
            if on_failure is not None:
                on_failure(exc)
            raise ProposalError(f"{self.name}.{label}: {exc}") from None
        verdicts = validator.classify(found.attempts)
        self._annotate(found.attempts, verdicts)
        tally = CallTally()
        tally.add(found.attempts, verdicts)
        arch = parse_architecture(normalise(found.data))
        self.client.log.annotate(found.call_id, arch_hash=arch_hash(arch))
        rationale = sanitize(arch.rationale, 300) if arch.rationale else None
        metadata = {"llm": {"kind": kind, "system_prompt": variant, "seed": seed, **tally.to_dict(), **(extra or {})}}
        proposal = Proposal(arch, f"{self.name}.{label}", parents, rationale, metadata)
        self.remember(context, proposal)
        return proposal

    def remember(self, context: OperatorContext, proposal: Proposal) -> None:
        """Keep the proposal as pending for the later slots of its generation."""
        self.pending.remember(context, pending_summary(context, proposal, self.check, self.energy))

    def _annotate(self, attempts: Sequence[Attempt], verdicts: Sequence[str]) -> None:
        """Each attempt's verdict on its call-log row (propose already logged its errors and outcome)."""
        for attempt, verdict in zip(attempts, verdicts):
            self.client.log.annotate(attempt.call_id, verdict=verdict)


class InitFallback:
    """The initial population's conventional top-up once enough LLM init proposals failed.

    After `limit` failed LLM proposals in generation 0, the rest of the initial population comes from the
    conventional initializer, recorded as operator "random-init(llm-fallback)" with the reason in its metadata.
    """

    def __init__(self, ask: LLMAsk, operator: Operator, limit: int) -> None:
        self.ask = ask
        self.operator = operator
        self.limit = limit
        self.failures: list[str] = []

    def record(self, context: OperatorContext, exc: ProposalFailed) -> None:
        """Count a failed LLM proposal of the initial population (later generations do not count)."""
        if context.generation == 0:
            self.failures.append(f"slot {context.slot} attempt {context.attempt}: {sanitize(exc, 200)}")

    def due(self, context: OperatorContext) -> Proposal | None:
        """The conventional initializer's proposal when the fallback is due, else None."""
        if context.generation != 0 or len(self.failures) < self.limit:
            return None
        proposal = self.operator.initialize(context)
        meta = {**proposal.metadata, "llm_fallback": {
            "reason": f"{len(self.failures)} LLM init proposals failed (init_failures_before_fallback = {self.limit})",
            "failures": list(self.failures[: self.limit]),
        }}  # fmt: skip
        proposal = Proposal(proposal.arch, FALLBACK_OPERATOR, proposal.parents, proposal.rationale, meta)
        self.ask.remember(context, proposal)
        return proposal

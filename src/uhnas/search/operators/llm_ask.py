"""The ask helper every LLM prompt family shares: render → call (with a per-call seed) → validate/repair → Proposal.

One `LLMAsk` per search method holds what the families of that method share: the client, the backend's check
and energy, the answer schema (the IR's own, "layers" first, short rationale: `prompting.answer_schema`), the
generation's pending proposals (shown to later slots as not-yet-evaluated candidates), the layers refused earlier
in a slot, and the slot budget with its conventional fallback.

Each request's seed is derived from (run seed, kind, generation, slot, attempt) unless `llm.seed` fixes it, and is
passed to the client call: no shared configuration is modified.

Bounded cost (`SlotBudget`): one slot may cost at most `llm.max_calls_per_slot` calls (answers and repairs of
every engine attempt together). When a slot spends them without a valid answer — or its last engine attempt
(`evolution.max_attempts`) fails — the conventional operator fills it, recorded as "random-<kind>(llm-fallback)"
with the reason and the spent calls in its metadata. After `llm.fallback_after` such failed slots in a row, the
model gets one probe call per generation (first slot asked in it); the other slots go straight to the fallback,
until a probe succeeds. So a model that cannot follow the format costs a bounded number of calls and the run
finishes its budget. Otherwise an answer that stays invalid after its repair turns becomes a one-line
ProposalError naming the operator ("llm.mutate: ...") and the engine asks again. Errors of the client itself
(BudgetExceeded, LLMRetriesExhausted, CacheMiss, LLMUnavailable, a template bug's PromptError, ...) are
LLMErrors and propagate unchanged: they stop the run.

All of this state is a deterministic function of the sequence of calls, so a resumed or replayed run rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uhnas.arch import Architecture, arch_hash, architecture_schema, parse_architecture
from uhnas.config import LLMSection
from uhnas.llm.knowledge import KnowledgeBase
from uhnas.llm.prompting import answer_schema, render_messages, sanitize
from uhnas.llm.propose import Attempt, ProposalFailed, propose
from uhnas.llm.propose import Proposal as Found
from uhnas.records import TrialRecord
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
from uhnas.search.operators.llm_validate import ACCEPTED, VERDICTS, ArchValidator, normalise
from uhnas.search.operators.random import RandomOperator
from uhnas.seeding import derive_seed

if TYPE_CHECKING:  # the client imports openai; only uhnas.search.llm_methods builds one
    from uhnas.llm.client import LLMClient

__all__ = [
    "FALLBACK_OPERATOR",
    "FALLBACK_SUFFIX",
    "SEED_MODULUS",
    "CallTally",
    "LLMAsk",
    "PendingProposals",
    "SlotBudget",
]

FALLBACK_SUFFIX = "(llm-fallback)"
FALLBACK_OPERATOR = f"random-init{FALLBACK_SUFFIX}"  # an initial-population slot filled by the fallback
SEED_MODULUS = 2**31  # per-call seeds fit a signed 32-bit int: every server that honours seeds accepts them
Fallback = Callable[[], Proposal]


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
        invalid = {v: self.verdicts.count(v) for v in VERDICTS if v not in ACCEPTED and v in self.verdicts}
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


class SlotBudget:
    """Calls per slot and the streak of failed slots (see the module docstring)."""

    def __init__(self, max_calls: int, fallback_after: int, max_attempts: int) -> None:
        self.max_calls = max_calls
        self.fallback_after = fallback_after
        self.max_attempts = max_attempts
        self.used: dict[tuple[int, int], int] = {}
        self.caps: dict[tuple[int, int], int] = {}
        self.streak = 0  # failed slots in a row
        self.probed: set[int] = set()  # generations whose probe call was made while the streak was long

    @property
    def falling_back(self) -> bool:
        """True while the streak of failed slots is at least `fallback_after`."""
        return self.streak >= self.fallback_after

    def cap(self, context: OperatorContext) -> int:
        """The calls this slot may cost, fixed when the slot is first asked."""
        key = (context.generation, context.slot)
        if key not in self.caps:
            if not self.falling_back:
                self.caps[key] = self.max_calls
            elif context.generation not in self.probed:
                self.probed.add(context.generation)
                self.caps[key] = 1
            else:
                self.caps[key] = 0
        return self.caps[key]

    def left(self, context: OperatorContext) -> int:
        """Calls this slot may still cost."""
        return self.cap(context) - self.used.get((context.generation, context.slot), 0)

    def spend(self, context: OperatorContext, calls: int) -> None:
        """Count calls made for this slot."""
        key = (context.generation, context.slot)
        self.used[key] = self.used.get(key, 0) + calls

    def spent(self, context: OperatorContext) -> int:
        """Calls made for this slot so far."""
        return self.used.get((context.generation, context.slot), 0)

    def last_try(self, context: OperatorContext) -> bool:
        """True when a failure now leaves the slot to the fallback (no calls left, or the engine's last attempt)."""
        return self.left(context) <= 0 or context.attempt + 1 >= self.max_attempts

    def succeeded(self) -> None:
        """An LLM proposal filled a slot: the streak ends."""
        self.streak = 0

    def failed(self) -> None:
        """The fallback filled a slot."""
        self.streak += 1


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
        max_calls_per_slot: int = 6,
        fallback_after: int = 2,
        max_attempts: int = 10,
        autofix: bool = False,
        steering: bool = False,
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
        self.autofix = autofix
        self.steering = steering
        self.knowledge_max_items = knowledge_max_items
        self.knowledge_max_chars = knowledge_max_chars
        self.schema = answer_schema(architecture_schema())
        self.pending = PendingProposals()
        self.slots = SlotBudget(max_calls_per_slot, fallback_after, max_attempts)
        self.conventional = fallback or RandomOperator()
        self._refused: dict[tuple[int, int], list[dict[str, str]]] = {}
        self._fallen: set[tuple[int, int]] = set()
        self._archs: dict[str, Architecture] = {}  # parsed architectures of stored records, by hash
        self.invalid_answers = 0  # architecture answers refused so far (this session)

    @classmethod
    def from_section(
        cls,
        client: LLMClient,
        section: LLMSection,
        *,
        check: Checker,
        energy: Energy | None,
        epochs: int,
        name: str,
        max_attempts: int = 10,
    ) -> LLMAsk:
        """The helper for a run's `llm:` section (repairs, fixed seed, slot budget, auto-fix, steering) and backend."""
        after = section.init_failures_before_fallback or section.fallback_after
        return cls(
            client, check=check, energy=energy, epochs=epochs, name=name, max_repairs=section.max_repairs,
            llm_seed=section.seed, max_calls_per_slot=section.max_calls_per_slot, fallback_after=after,
            max_attempts=max_attempts, autofix=section.autofix, steering=section.steering == "energy",
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
        return search_context(context, epochs=self.epochs, schema=self.schema, pending=shown,
                              knowledge=self.knowledge(context), rejected=self.refused(context))  # fmt: skip

    def arch_of(self, record: TrialRecord) -> Architecture:
        """A stored record's architecture, parsed once per hash."""
        key = record.hash or ""
        if key not in self._archs:
            self._archs[key] = parse_architecture(record.arch)
        return self._archs[key]

    def refused(self, context: OperatorContext) -> list[dict[str, str]]:
        """Layers refused earlier in this slot, each with a one-word reason written by code."""
        return list(self._refused.get((context.generation, context.slot), []))

    def refuse(self, context: OperatorContext, layers: str | None, why: str) -> None:
        """Remember refused layers for the slot's later attempts (older generations are dropped)."""
        if not layers:
            return
        self._refused = {k: v for k, v in self._refused.items() if k[0] >= context.generation}
        entries = self._refused.setdefault((context.generation, context.slot), [])
        if all(e["layers"] != layers for e in entries):
            entries.append({"layers": layers, "why": why})

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
        max_repairs: int | None = None,
        schema_name: str = "architecture",
        give_up: Callable[[], str | None] | None = None,
    ) -> Found:
        """propose() with this method's repairs (or fewer): the validated answer, or ProposalFailed."""
        repairs = self.max_repairs if max_repairs is None else max_repairs
        return propose(self.client, messages, validate=validate, schema=schema, purpose=purpose,
                       max_repairs=repairs, meta=meta, seed=seed, schema_name=schema_name,
                       give_up=give_up)  # fmt: skip

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
        fallback: Fallback,
        extra: dict[str, Any] | None = None,
    ) -> Proposal:
        """Render `template` with `ctx`, ask until an answer passes the architecture validator (at most the slot's
        calls left), and return it as a Proposal named "<name>.<label>" (remembered as pending); the slot's
        conventional `fallback` when the slot budget is spent. `kind` is the call-log purpose."""
        left = self.slots.left(context)
        if left <= 0:
            return self.fall_back(context, fallback, self._budget_reason(context), CallTally())
        messages = self.render(template, ctx, variant)
        seed = self.seed(context, kind, slot=context.slot, attempt=context.attempt)
        meta = {"generation": context.generation, "slot": context.slot, "slot_attempt": context.attempt,
                "kind": kind, "operator": self.name, "seed": seed}  # fmt: skip
        validator = ArchValidator(context, self.check, autofix=self.autofix, parents=parents, arch_of=self.arch_of)
        try:
            found = self.call(messages, validate=validator, schema=self.schema, purpose=kind, meta=meta, seed=seed,
                              max_repairs=min(self.max_repairs, left - 1),
                              give_up=validator.saturated)  # fmt: skip
        except ProposalFailed as exc:
            verdicts = validator.classify(exc.attempts)
            self._annotate(exc.attempts, verdicts)
            self.slots.spend(context, len(exc.attempts))
            self.refuse(context, validator.last_layers, validator.refusal(verdicts[-1]))
            if self.slots.last_try(context):
                tally = CallTally()
                tally.add(exc.attempts, verdicts)
                reason = f"no valid LLM answer in {self.slots.spent(context)} calls (last: {verdicts[-1]})"
                return self.fall_back(context, fallback, reason, tally)
            raise ProposalError(f"{self.name}.{label}: {exc}") from None
        self.slots.spend(context, len(found.attempts))
        self.slots.succeeded()
        verdicts = validator.classify(found.attempts)
        self._annotate(found.attempts, verdicts)
        tally = CallTally()
        tally.add(found.attempts, verdicts)
        data = validator.fixed if verdicts[-1] == "autofixed" and validator.fixed is not None else found.data
        arch = parse_architecture(normalise(data))
        self.client.log.annotate(found.call_id, arch_hash=arch_hash(arch))
        if verdicts[-1] == "autofixed":
            self.client.log.annotate(found.call_id, autofix=list(validator.fixes))
        rationale = sanitize(arch.rationale, 300) if arch.rationale else None
        info = {"kind": kind, "system_prompt": variant, "seed": seed, **tally.to_dict(), **(extra or {})}
        if ctx.get("target"):
            info["target"] = ctx["target"]
        if verdicts[-1] == "autofixed":
            info["autofix"] = list(validator.fixes)
        proposal = Proposal(arch, f"{self.name}.{label}", parents, rationale, {"llm": info})
        self.remember(context, proposal)
        return proposal

    def fall_back(self, context: OperatorContext, make: Fallback, reason: str, tally: CallTally) -> Proposal:
        """The conventional operator's proposal for the slot, recorded as "random-<kind>(llm-fallback)"."""
        key = (context.generation, context.slot)
        if key not in self._fallen:  # a slot counts once in the streak, however often the engine asks again
            self._fallen = {k for k in self._fallen if k[0] >= context.generation} | {key}
            self.slots.failed()
        proposal = make()
        operator = proposal.operator.replace(".", "-") + FALLBACK_SUFFIX
        info = {"reason": reason, "failed_slots_in_a_row": self.slots.streak, "calls": self.slots.spent(context)}
        meta = {**proposal.metadata, "llm_fallback": info}
        if tally.call_ids:
            meta["llm"] = {"kind": "fallback", **tally.to_dict()}
        proposal = Proposal(proposal.arch, operator, proposal.parents, proposal.rationale, meta)
        self.remember(context, proposal)
        return proposal

    def _budget_reason(self, context: OperatorContext) -> str:
        """Why a slot went straight to the fallback."""
        if self.slots.cap(context) == 0:
            return (f"{self.slots.streak} slots in a row without a valid LLM answer (fallback_after = "
                    f"{self.slots.fallback_after}); this generation's probe call was spent")  # fmt: skip
        return f"the slot's {self.slots.cap(context)} LLM calls were spent"

    def remember(self, context: OperatorContext, proposal: Proposal) -> None:
        """Keep the proposal as pending for the later slots of its generation."""
        summary = pending_summary(context, proposal, self.check, self.energy)
        self.pending.remember(context, {**summary, "own": not proposal.operator.endswith(FALLBACK_SUFFIX)})

    def _annotate(self, attempts: Sequence[Attempt], verdicts: Sequence[str]) -> None:
        """Each attempt's verdict on its call-log row (propose already logged its errors and outcome)."""
        for attempt, verdict in zip(attempts, verdicts):
            self.client.log.annotate(attempt.call_id, verdict=verdict)
            self.invalid_answers += verdict not in ACCEPTED

"""The LLM-guided operators: one small class per prompt family, all asking through one shared `LLMAsk`.

UH-NAS's own families (system prompt `llm.system_prompt`, the full search state: front, recent candidates with
this generation's pending proposals, knowledge base, backend card):

- `InitPrompt`      init.j2 with count 1: one architecture per slot of the initial population (the architectures
                    proposed for earlier slots appear as recent candidates); the conventional top-up when due,
- `MutatePrompt`    mutate.j2: one child of a parent shown with accuracy, robustness drop, energy, violations,
- `CrossoverPrompt` crossover.j2: one child of two engine-picked parents,
- `ReflectPrompt`   reflect.j2: at the end of every generation but the last, the model rewrites the bounded
                    knowledge base; returned as {"knowledge": [...], ...}, stored by the engine with the generation
                    and handed back in `context.notes` (rebuilt from the notes on every call: nothing to resume).

`LLMOperator` puts the first four together as the `Operator` protocol that NSGA-II drives (method `uhnas`).

The baselines' families (generic system prompt, no hardware context; see `uhnas.search.llm_methods`):

- `LLMaticInitPrompt`      init.j2 without knowledge base; earlier slots shown with their layers only,
- `LLMaticMutatePrompt`    llmatic_mutate.j2: the parent's layers and one fixed mutation instruction,
- `LLMaticCrossoverPrompt` crossover.j2 with the parents' layers only (no scores, no front),
- `GeniusPrompt`           genius.j2: the chain's earlier proposals with their scores -> a better one.

Every family renders its template from a context built by `llm_summary`, and asks through `LLMAsk.architecture`
(validator in `llm_validate`): a slot whose answer stays invalid raises ProposalError, client failures stop the
run. LLM text is parsed as data, never executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uhnas.llm.propose import ProposalFailed
from uhnas.records import TrialRecord
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.operators.llm_ask import FALLBACK_OPERATOR, CallTally, LLMAsk
from uhnas.search.operators.llm_summary import (
    KNOWLEDGE_MAX_CHARS,
    KNOWLEDGE_MAX_ITEMS,
    RECENT_SHOWN,
    candidate_summary,
    knowledge_from_notes,
    layers_only,
    layers_only_summary,
)
from uhnas.search.operators.llm_validate import DUPLICATE, VERDICTS, ArchValidator, heuristics_errors

__all__ = [
    "DUPLICATE",
    "FALLBACK_OPERATOR",
    "GENERIC",
    "KNOWLEDGE_MAX_CHARS",
    "KNOWLEDGE_MAX_ITEMS",
    "VERDICTS",
    "ArchValidator",
    "CrossoverPrompt",
    "GeniusPrompt",
    "InitPrompt",
    "LLMAsk",
    "LLMOperator",
    "LLMaticCrossoverPrompt",
    "LLMaticInitPrompt",
    "LLMaticMutatePrompt",
    "MutatePrompt",
    "ReflectPrompt",
    "candidate_summary",
    "knowledge_from_notes",
]

GENERIC = "generic"  # the baselines' system prompt: no hardware context


class _Family:
    """A prompt family: one template, asked through the method's shared LLMAsk under one system prompt."""

    template = ""  # prompt kind in uhnas.llm.prompting
    kind = ""  # call-log purpose and metadata kind
    label = ""  # operator label: the trial's operator is "<name>.<label>"

    def __init__(self, ask: LLMAsk, variant: str) -> None:
        self.ask = ask
        self.variant = variant

    def _ask(self, context: OperatorContext, ctx: dict[str, Any], parents: tuple[int, ...], **kw: Any) -> Proposal:
        """One architecture for this family's prompt rendered with `ctx`."""
        return self.ask.architecture(context, ctx, template=self.template, kind=self.kind, label=self.label,
                                     variant=self.variant, parents=parents, **kw)  # fmt: skip


class InitPrompt(_Family):
    """One architecture for the initial population (init.j2, count 1), or the conventional top-up when due."""

    template = kind = label = "init"

    def propose(self, context: OperatorContext) -> Proposal:
        fallback = self.ask.fallback.due(context)
        if fallback is not None:
            return fallback
        return self._ask(context, self._context(context), (), on_failure=lambda e: self.ask.fallback.record(context, e))

    def _context(self, context: OperatorContext) -> dict[str, Any]:
        return {**self.ask.search_context(context), "count": 1}


class LLMaticInitPrompt(InitPrompt):
    """init.j2 under the generic system prompt without knowledge base; earlier slots shown by their layers only."""

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def _context(self, context: OperatorContext) -> dict[str, Any]:
        recent = [layers_only_summary(c) for c in self.ask.pending.before(context)][-RECENT_SHOWN:]
        return {**self.ask.search_context(context, pending=False), "count": 1, "knowledge": [], "recent": recent}


class MutatePrompt(_Family):
    """One child of `parent` (mutate.j2: the parent's accuracy, robustness drop, energy and violations)."""

    template = kind = label = "mutate"

    def propose(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        ctx = {**self.ask.search_context(context), "parent": candidate_summary(parent)}
        return self._ask(context, ctx, (parent.number,))


class CrossoverPrompt(_Family):
    """One child combining two engine-picked parents (crossover.j2)."""

    template = kind = label = "crossover"

    def propose(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        return self._ask(context, self._context(context, first, second), (first.number, second.number))

    def _context(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> dict[str, Any]:
        return {**self.ask.search_context(context), "parents": [candidate_summary(first), candidate_summary(second)]}


class LLMaticCrossoverPrompt(CrossoverPrompt):
    """crossover.j2 under the generic system prompt with the parents' layers only (no scores, no front)."""

    kind = "llmatic_crossover"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def _context(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> dict[str, Any]:
        return {**self.ask.search_context(context, pending=False), "front": [], "recent": [], "knowledge": [],
                "parents": [layers_only(first), layers_only(second)]}  # fmt: skip


class LLMaticMutatePrompt(_Family):
    """LLMatic: the parent's layers and one fixed mutation instruction; no scores, no hardware context."""

    template = kind = "llmatic_mutate"
    label = "mutate"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def propose(self, context: OperatorContext, parent: TrialRecord, instruction: int) -> Proposal:
        ctx = {**self.ask.task_context(context), "schema": self.ask.schema, "parent": candidate_summary(parent),
               "instruction": instruction}  # fmt: skip
        return self._ask(context, ctx, (parent.number,), extra={"instruction": instruction})


class GeniusPrompt(_Family):
    """GENIUS: the chain's earlier proposals (oldest first) with their scores -> a better one; the initial
    population's conventional top-up when due."""

    template = kind = "genius"
    label = "refine"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def propose(self, context: OperatorContext, chain: Sequence[TrialRecord]) -> Proposal:
        fallback = self.ask.fallback.due(context)
        if fallback is not None:
            return fallback
        history = [candidate_summary(r) for r in chain if r.arch is not None] + self.ask.pending.before(context)
        ctx = {**self.ask.task_context(context), "schema": self.ask.schema, "history": history}
        return self._ask(context, ctx, (), on_failure=lambda e: self.ask.fallback.record(context, e))


class ReflectPrompt(_Family):
    """Rewrite the knowledge base at the end of a generation (reflect.j2); the last generation's is skipped."""

    template = kind = "reflect"

    def reflect(self, context: OperatorContext) -> dict[str, Any]:
        kb = self.ask.knowledge(context)
        if context.generation >= context.generations:
            return {"knowledge": kb.to_list(), "reflected": False}
        ctx = {**self.ask.search_context(context, pending=False), "knowledge_max_items": kb.max_items,
               "knowledge_max_chars": kb.max_chars}  # fmt: skip
        messages = self.ask.render(self.template, ctx, self.variant)
        seed = self.ask.seed(context, self.kind, slot=-1, attempt=0)
        meta = {"generation": context.generation, "kind": self.kind, "operator": self.ask.name, "seed": seed}
        tally = CallTally()
        try:
            found = self.ask.call(messages, validate=heuristics_errors, schema=kb.schema(), purpose=self.kind,
                                  meta=meta, seed=seed)  # fmt: skip
        except ProposalFailed as exc:
            tally.add(exc.attempts, ["malformed" if a.errors else "valid" for a in exc.attempts])
            return {"knowledge": kb.to_list(), "reflected": False, "error": str(exc), "llm": tally.to_dict()}
        tally.add(found.attempts, ["malformed" if a.errors else "valid" for a in found.attempts])
        update = kb.replace(found.data["heuristics"])
        return {"knowledge": kb.to_list(), "reflected": True, "update": update.to_dict(), "llm": tally.to_dict()}


class LLMOperator:
    """The `Operator` protocol on UH-NAS's prompt families, under the run's system prompt (what NSGA-II drives)."""

    def __init__(self, ask: LLMAsk, system_prompt: str) -> None:
        self.name = ask.name
        self.ask = ask
        self._init = InitPrompt(ask, system_prompt)
        self._mutate = MutatePrompt(ask, system_prompt)
        self._crossover = CrossoverPrompt(ask, system_prompt)
        self._reflect = ReflectPrompt(ask, system_prompt)

    def initialize(self, context: OperatorContext) -> Proposal:
        """One architecture for the initial population (or the conventional top-up)."""
        return self._init.propose(context)

    def mutate(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        """One child of `parent`."""
        return self._mutate.propose(context, parent)

    def crossover(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        """One child of two parents."""
        return self._crossover.propose(context, first, second)

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """The rewritten knowledge base (see ReflectPrompt)."""
        return self._reflect.reflect(context)

"""The LLM-guided operators: one small class per prompt family, all asking through one shared `LLMAsk`.

UH-NAS's own families (system prompt `llm.system_prompt`, the full search state: front, recent candidates with
this generation's pending proposals, knowledge base, backend card):

- `InitPrompt`      init.j2 with count 1: one architecture per slot of the initial population (the architectures
                    proposed for earlier slots appear as recent candidates; with steering each slot names a size),
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
(validator in `llm_validate`) with its conventional counterpart as the slot's fallback (random init, mutation or
crossover of the same parents: `LLMAsk`'s slot budget decides when): a slot whose answer stays invalid raises
ProposalError until its calls are spent, client failures stop the run. With `llm.steering: energy` the uhnas
mutate / crossover prompts name a sparse energy band of the front as the child's target. LLM text is parsed as
data, never executed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from uhnas.llm.propose import Attempt, ProposalFailed
from uhnas.records import TrialRecord
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.operators.llm_ask import FALLBACK_OPERATOR, FALLBACK_SUFFIX, CallTally, Fallback, LLMAsk
from uhnas.search.operators.llm_summary import (
    KNOWLEDGE_MAX_CHARS,
    KNOWLEDGE_MAX_ITEMS,
    RECENT_SHOWN,
    candidate_summary,
    init_target,
    knowledge_from_notes,
    layers_only,
    layers_only_summary,
    neighbours,
    parent_summary,
    steer_target,
    target_band,
    target_direction,
)
from uhnas.search.operators.llm_validate import (
    DUPLICATE,
    VERDICTS,
    ArchValidator,
    heuristics_errors,
    real_heuristics,
)

__all__ = [
    "DUPLICATE",
    "FALLBACK_OPERATOR",
    "FALLBACK_SUFFIX",
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

    def _ask(
        self, context: OperatorContext, ctx: dict[str, Any], parents: tuple[int, ...], fallback: Fallback, **kw: Any
    ) -> Proposal:
        """One architecture for this family's prompt rendered with `ctx` (or the slot's conventional fallback)."""
        return self.ask.architecture(context, ctx, template=self.template, kind=self.kind, label=self.label,
                                     variant=self.variant, parents=parents, fallback=fallback, **kw)  # fmt: skip


class InitPrompt(_Family):
    """One architecture for the initial population (init.j2, count 1); the conventional initializer as fallback."""

    template = kind = label = "init"

    def propose(self, context: OperatorContext) -> Proposal:
        return self._ask(context, self._context(context), (), lambda: self.ask.conventional.initialize(context))

    def _context(self, context: OperatorContext) -> dict[str, Any]:
        target = init_target(context) if self.ask.steering else None
        return {**self.ask.search_context(context), "count": 1, "target": target}


class LLMaticInitPrompt(InitPrompt):
    """init.j2 under the generic system prompt without knowledge base; earlier slots shown by their layers only."""

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def _context(self, context: OperatorContext) -> dict[str, Any]:
        recent = [layers_only_summary(c) for c in self.ask.pending.before(context)][-RECENT_SHOWN:]
        return {**self.ask.search_context(context, pending=False), "count": 1, "knowledge": [], "recent": recent,
                "target": None}  # fmt: skip


class MutatePrompt(_Family):
    """One child of `parent` (mutate.j2: the parent's accuracy, robustness drop, energy and violations)."""

    template = kind = label = "mutate"

    def propose(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        band = target_band(context) if self.ask.steering else None
        ctx = {**self.ask.search_context(context), "parent": parent_summary(parent, context),
               "target": steer_target(band, parent.energy_nj)}  # fmt: skip
        ctx["near"] = neighbours(context, [parent], _shown(ctx), self.ask.arch_of, self.ask.pending.before(context),
                                 target_direction(band, parent.energy_nj), parent.energy_nj)  # fmt: skip
        return self._ask(context, ctx, (parent.number,), lambda: self.ask.conventional.mutate(context, parent))


class CrossoverPrompt(_Family):
    """One child combining two engine-picked parents (crossover.j2)."""

    template = kind = label = "crossover"

    def propose(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        return self._ask(context, self._context(context, first, second), (first.number, second.number),
                         lambda: self.ask.conventional.crossover(context, first, second))  # fmt: skip

    def _context(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> dict[str, Any]:
        band = target_band(context) if self.ask.steering else None
        energies = [e for e in (first.energy_nj, second.energy_nj) if e is not None and e > 0]
        energy = math.prod(energies) ** (1 / len(energies)) if energies else None
        parents = [parent_summary(first, context), parent_summary(second, context)]
        ctx = {**self.ask.search_context(context), "parents": parents, "target": steer_target(band, energy)}
        ctx["near"] = neighbours(context, [first, second], _shown(ctx), self.ask.arch_of,
                                 self.ask.pending.before(context), target_direction(band, energy), energy)  # fmt: skip
        return ctx


class LLMaticCrossoverPrompt(CrossoverPrompt):
    """crossover.j2 under the generic system prompt with the parents' layers only (no scores, no front)."""

    kind = "llmatic_crossover"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def _context(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> dict[str, Any]:
        return {**self.ask.search_context(context, pending=False), "front": [], "recent": [], "knowledge": [],
                "parents": [layers_only(first), layers_only(second)], "target": None}  # fmt: skip


class LLMaticMutatePrompt(_Family):
    """LLMatic: the parent's layers and one fixed mutation instruction; no scores, no hardware context."""

    template = kind = "llmatic_mutate"
    label = "mutate"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def propose(self, context: OperatorContext, parent: TrialRecord, instruction: int) -> Proposal:
        ctx = {**self.ask.task_context(context), "schema": self.ask.schema, "parent": candidate_summary(parent),
               "instruction": instruction}  # fmt: skip
        return self._ask(context, ctx, (parent.number,), lambda: self.ask.conventional.mutate(context, parent),
                         extra={"instruction": instruction})  # fmt: skip


class GeniusPrompt(_Family):
    """GENIUS: the chain's earlier proposals (oldest first) with their scores -> a better one. Networks the
    conventional fallback filled in are not the model's proposals: they are not shown as its history."""

    template = kind = "genius"
    label = "refine"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask, GENERIC)

    def propose(self, context: OperatorContext, chain: Sequence[TrialRecord]) -> Proposal:
        own = [r for r in chain if r.arch is not None and not (r.operator or "").endswith(FALLBACK_SUFFIX)]
        pending = [p for p in self.ask.pending.before(context) if p.get("own", True)]
        history = [candidate_summary(r) for r in own] + pending
        ctx = {**self.ask.task_context(context), "schema": self.ask.schema, "history": history}
        return self._ask(context, ctx, (), lambda: self._fallback(context, chain))

    def _fallback(self, context: OperatorContext, chain: Sequence[TrialRecord]) -> Proposal:
        """A conventional mutation of the chain's latest evaluated network (the initializer before there is one)."""
        evaluated = [r for r in chain if r.arch is not None and not r.failed]
        if not evaluated:
            return self.ask.conventional.initialize(context)
        return self.ask.conventional.mutate(context, evaluated[-1])


class ReflectPrompt(_Family):
    """Rewrite the knowledge base at the end of a generation (reflect.j2); the last generation's is skipped."""

    template = kind = "reflect"

    def reflect(self, context: OperatorContext) -> dict[str, Any]:
        kb = self.ask.knowledge(context)
        if context.generation >= context.generations:
            return {"knowledge": kb.to_list(), "reflected": False}
        if self.ask.slots.falling_back:  # the model gave no valid architecture lately: its heuristics would not help
            return {"knowledge": kb.to_list(), "reflected": False, "skipped": "the LLM operator is falling back"}
        ctx = {**self.ask.search_context(context, pending=False), "knowledge_max_items": kb.max_items,
               "knowledge_max_chars": kb.max_chars}  # fmt: skip
        messages = self.ask.render(self.template, ctx, self.variant)
        seed = self.ask.seed(context, self.kind, slot=-1, attempt=0)
        meta = {"generation": context.generation, "kind": self.kind, "operator": self.ask.name, "seed": seed}
        tally = CallTally()
        prompt = messages[-1]["content"].split("## Your task", 1)[-1]  # the instructions (not the kept heuristics)
        try:
            found = self.ask.call(messages, validate=lambda data: heuristics_errors(data, prompt), schema=kb.schema(),
                                  purpose=self.kind, meta=meta, seed=seed, max_repairs=min(self.ask.max_repairs, 1),
                                  schema_name="knowledge")  # fmt: skip
        except ProposalFailed as exc:
            tally.add(exc.attempts, [_reflect_verdict(a) for a in exc.attempts])
            self.ask._annotate(exc.attempts, tally.verdicts)
            return {"knowledge": kb.to_list(), "reflected": False, "error": str(exc), "llm": tally.to_dict()}
        tally.add(found.attempts, [_reflect_verdict(a) for a in found.attempts])
        self.ask._annotate(found.attempts, tally.verdicts)
        update = kb.replace(real_heuristics(found.data["heuristics"], prompt))
        return {"knowledge": kb.to_list(), "reflected": True, "update": update.to_dict(), "llm": tally.to_dict()}


def _shown(ctx: dict[str, Any]) -> set[Any]:
    """Trial numbers a prompt context already lists (front and recent)."""
    return {c.get("trial") for c in (*ctx.get("front", ()), *ctx.get("recent", ()))}


def _reflect_verdict(attempt: Attempt) -> str:
    """valid, truncated (cut off at the token limit) or malformed (incl. placeholders) for a reflect answer."""
    if not attempt.errors:
        return "valid"
    return "truncated" if attempt.finish_reason == "length" else "malformed"


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

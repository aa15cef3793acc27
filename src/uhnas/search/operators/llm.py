"""The LLM-guided operator: a language model initialises, mutates and crosses over architectures and reflects.

Every request is rendered from the prompt templates (`uhnas.llm.prompting`) with a context built only from the
`OperatorContext` (records of earlier generations, the backend card) plus what this operator proposed earlier in
the same generation, so a resumed or replayed run renders byte-identical requests and is served from the
response cache. Answers are data: each goes through `uhnas.llm.propose` with a validation callback that checks,
in order,

1. structure — top-level keys, layer types and layer fields (model-written keys are quoted in the error),
2. schema — the pydantic IR (`parse_architecture`),
3. shapes — `analyze()` for the dataset's input shape and class count,
4. hardware — `backend.check()` constraint violations, stating limit and actual,
5. novelty — `context.is_known(hash)`: "duplicate of an already evaluated architecture; propose a different one".

The exact errors go back to the model in a repair turn (at most `max_repairs`); when the model still gives no
valid answer, `ProposalFailed` becomes a `ProposalError` (the engine asks again with attempt + 1 and finally
records the slot as failed). There is never a silent fallback to the parent. Each attempt's verdict
(malformed / schema / shape / constraint / duplicate / valid) is annotated on its call-log row, and the proposal's
metadata summarises call ids, attempts, repairs and tokens.

Initial population: one call per slot (init.j2 with count 1; the architectures already proposed for earlier
slots are shown as "recent" candidates). After `init_failures_before_fallback` failed LLM init proposals, the rest
of the initial population comes from the conventional random initializer, recorded as operator
"random-init(llm-fallback)" with the reason in the metadata.

Reflection: at the end of every generation but the last, the model rewrites the bounded knowledge base; the new
base is returned as {"knowledge": [...], ...}, stored by the engine with the generation and handed back in
`context.notes`. The base is rebuilt from `context.notes` on every call, so there is no hidden state to resume.

Errors of the client itself (BudgetExceeded, LLMRetriesExhausted, CacheMiss, LLMUnavailable, ...) propagate
unchanged: the method stops the run with them (see `uhnas.search.llm_methods`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uhnas.arch import (
    LAYER_TYPES,
    Architecture,
    ArchitectureError,
    analyze,
    arch_hash,
    architecture_schema,
    parse_architecture,
)
from uhnas.arch.model import (
    MAX_CHANNELS,
    MAX_KERNEL,
    MAX_LAYERS,
    MAX_MACS,
    MAX_NAME,
    MAX_PARAMS,
    MAX_TEXT,
    MAX_WIDTH,
    Activation,
    AvgPool,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool,
)
from uhnas.arch.shapes import ArchSummary
from uhnas.hardware.card import EnergyReport, Violation
from uhnas.llm.client import LLMClient
from uhnas.llm.errors import one_line
from uhnas.llm.knowledge import KnowledgeBase
from uhnas.llm.prompting import compact_layers, quote, render_messages, sanitize
from uhnas.llm.propose import ERROR_CHARS, Attempt, ProposalFailed, propose
from uhnas.records import TrialRecord
from uhnas.search.operators.base import Operator, OperatorContext, Proposal, ProposalError
from uhnas.search.operators.random import RandomOperator
from uhnas.seeding import derive_seed

__all__ = [
    "FALLBACK_OPERATOR",
    "KNOWLEDGE_MAX_CHARS",
    "KNOWLEDGE_MAX_ITEMS",
    "VERDICTS",
    "LLMOperator",
    "candidate_summary",
    "knowledge_from_notes",
]

FALLBACK_OPERATOR = "random-init(llm-fallback)"
KNOWLEDGE_MAX_ITEMS = 12
KNOWLEDGE_MAX_CHARS = 240
SEED_MODULUS = 2**31  # per-call seeds fit a signed 32-bit int: every server that honours seeds accepts them
RECENT_SHOWN = 8  # newest candidates passed as `recent` (the template shows the first 8 it gets), front excluded
FRONT_SHOWN = 16  # front members passed (evenly spaced by energy when the front is larger)
MAX_STRUCTURE_ERRORS = 5
VERDICTS = ("valid", "malformed", "schema", "shape", "constraint", "duplicate")
LABELS = {  # prompt kind (call-log purpose) -> operator label in the trial's operator name
    "init": "init", "mutate": "mutate", "crossover": "crossover",
    "llmatic_mutate": "mutate", "llmatic_crossover": "crossover", "genius": "refine",
}  # fmt: skip
DUPLICATE = "duplicate of an already evaluated architecture; propose a different one"
TOP_LEVEL_KEYS = ("name", "rationale", "layers")
LIMITS: dict[str, int] = {
    "max_layers": MAX_LAYERS,
    "max_width": MAX_WIDTH,
    "max_channels": MAX_CHANNELS,
    "max_kernel": MAX_KERNEL,
    "max_params": MAX_PARAMS,
    "max_macs": MAX_MACS,
}
_LAYER_FIELDS: dict[str, tuple[str, ...]] = {
    cls.model_fields["type"].annotation.__args__[0]: tuple(cls.model_fields)  # type: ignore[union-attr]
    for cls in (Linear, Conv2d, MaxPool, AvgPool, Flatten, Activation, BatchNorm, Dropout)
}
assert set(_LAYER_FIELDS) == set(LAYER_TYPES), "layer vocabulary changed: update the LLM operator's structure check"

Checker = Callable[[ArchSummary], Sequence[Violation]]
Energy = Callable[[ArchSummary], EnergyReport]


# ----------------------------------------------------------------------------- summaries of candidates


def _finite(value: Any) -> float | None:
    """A finite float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def candidate_summary(record: TrialRecord) -> dict[str, Any]:
    """The prompt layer's candidate summary of a stored record (see the contract in uhnas.llm.prompting).

    Only fields that round-trip exactly through the store are used, so a resumed run renders the same prompts.
    """
    ev = record.evaluation or {}
    clean, noisy = _finite(record.accuracy("clean")), _finite(record.accuracy("mean"))
    arch = record.arch or {}
    summary: dict[str, Any] = {
        "trial": record.number,
        "hash": record.hash or "",
        "layers": compact_layers(arch) if record.arch is not None else "?",
        "error": None if record.failed else _finite(record.error),
        "clean_accuracy": clean,
        "noisy_accuracy": noisy,
        "noisy_p5": _finite(record.accuracy("p5")),
        "robustness_drop": None if clean is None or noisy is None else clean - noisy,
        "energy_nj": None if record.failed else _finite(record.energy_nj),
        "energy_breakdown_nj": {
            str(k): float(v) for k, v in (ev.get("energy_breakdown_nj") or {}).items() if _finite(v) is not None
        },  # fmt: skip
        "params": ev.get("params"),
        "macs": ev.get("macs"),
        "violations": list(ev.get("violations") or []),
        "feasible": record.feasible,
        "rationale": record.rationale,
        "name": arch.get("name"),
    }
    if record.failed:
        summary["failure"] = record.reason or "evaluation failed"
    return summary


def _spread(items: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """At most `count` items, evenly spaced (first and last kept)."""
    if len(items) <= count:
        return list(items)
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def knowledge_from_notes(notes: Sequence[Mapping[str, Any]], max_items: int, max_chars: int) -> KnowledgeBase:
    """The knowledge base as the latest reflection left it (empty before the first one)."""
    for note in reversed(notes):
        items = note.get("knowledge") if isinstance(note, Mapping) else None
        if isinstance(items, list):
            return KnowledgeBase(max_items, max_chars, [i for i in items if isinstance(i, str)])
    return KnowledgeBase(max_items, max_chars)


# ----------------------------------------------------------------------------- validation


def _normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """The answer with over-long name / rationale truncated (not worth a repair turn); deterministic."""
    out = dict(data)
    if isinstance(out.get("name"), str) and len(out["name"]) > MAX_NAME:
        out["name"] = out["name"][:MAX_NAME]
    if isinstance(out.get("rationale"), str) and len(out["rationale"]) > MAX_TEXT:
        out["rationale"] = out["rationale"][:MAX_TEXT]
    return out


def _structure_errors(data: Mapping[str, Any]) -> list[str]:
    """Unknown keys and layer types, named with the model's own text quoted (it never reaches a prompt raw)."""
    errors = [f"unknown key {quote(k, 40)} at the top level (allowed: {', '.join(TOP_LEVEL_KEYS)})"
              for k in data if k not in TOP_LEVEL_KEYS]  # fmt: skip
    layers = data.get("layers")
    if not isinstance(layers, list):
        errors.append('"layers" must be a list of layer objects')
        return errors[:MAX_STRUCTURE_ERRORS]
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            errors.append(f'layer {i}: must be a JSON object with a "type"')
            continue
        kind = layer.get("type")
        if not isinstance(kind, str) or kind not in _LAYER_FIELDS:
            errors.append(f"layer {i}: unknown layer type {quote(kind, 40)}; expected one of {', '.join(LAYER_TYPES)}")
            continue
        allowed = _LAYER_FIELDS[kind]
        errors += [f"layer {i} ({kind}): unknown field {quote(k, 40)} (allowed: {', '.join(allowed)})"
                   for k in layer if k not in allowed]  # fmt: skip
    return errors[:MAX_STRUCTURE_ERRORS]


def _violation_error(v: Violation) -> str:
    """A backend constraint violation as a repair instruction stating limit and actual."""
    return (
        f"violates the hardware limit {v.constraint}: {v.actual:,.6g} {v.unit} > limit {v.limit:,.6g} {v.unit} "
        "(a candidate over a physical limit is infeasible); make the network smaller where it counts"
    )


class ArchValidator:
    """The propose() callback for one architecture answer; remembers each verdict for the call log."""

    def __init__(self, context: OperatorContext, check: Checker) -> None:
        self.context = context
        self.check = check
        self.verdicts: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, data: dict[str, Any]) -> list[str]:
        verdict, errors = self.judge(data)
        self.verdicts.append((verdict, tuple(errors)))
        return errors

    def judge(self, data: Mapping[str, Any]) -> tuple[str, list[str]]:
        """(verdict, one-line errors) of one decoded answer."""
        data = _normalise(data)
        errors = _structure_errors(data)
        if errors:
            return "schema", [one_line(e, ERROR_CHARS) for e in errors]
        try:
            arch = parse_architecture(data)
        except ArchitectureError as exc:
            return "schema", [one_line(exc, ERROR_CHARS)]
        try:
            summary = analyze(arch, self.context.input_shape, self.context.num_classes)
        except ArchitectureError as exc:
            shape = "x".join(str(d) for d in self.context.input_shape)
            return "shape", [one_line(f"{exc} (input {shape}, {self.context.num_classes} classes)", ERROR_CHARS)]
        violations = list(self.check(summary))
        if violations:
            return "constraint", [one_line(_violation_error(v), ERROR_CHARS) for v in violations]
        if self.context.is_known(arch_hash(arch)):
            return "duplicate", [DUPLICATE]
        return "valid", []

    def classify(self, attempts: Sequence[Attempt]) -> list[str]:
        """The verdict of every attempt, in order. The validator ran once for each attempt whose answer held a
        JSON object; an attempt it did not run for had none: malformed."""
        out: list[str] = []
        verdicts = iter(self.verdicts)
        upcoming = next(verdicts, None)
        for attempt in attempts:
            if upcoming is not None and _matches(attempt.errors, upcoming[1]):
                out.append(upcoming[0])
                upcoming = next(verdicts, None)
            else:
                out.append("malformed")
        return out


def _matches(logged: tuple[str, ...], judged: tuple[str, ...]) -> bool:
    """True when an attempt's logged errors are the validator's (propose may append the truncation note)."""
    if not judged:
        return not logged
    return logged[: len(judged)] == judged


def _heuristics_errors(data: dict[str, Any]) -> list[str]:
    """Validation of a reflect answer: a list of strings under "heuristics"."""
    items = data.get("heuristics")
    if not isinstance(items, list):
        return ['answer must be {"heuristics": ["...", ...]}: a JSON object holding a list of strings']
    if not any(isinstance(i, str) and i.strip() for i in items):
        return ['"heuristics" holds no non-empty string']
    return []


# ----------------------------------------------------------------------------- the operator


@dataclass
class _Calls:
    """Call ids, verdicts and tokens of one propose() round, for the metadata and the call log."""

    call_ids: list[int] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayed: int = 0

    def add(self, attempts: Sequence[Attempt], verdicts: Sequence[str]) -> None:
        for attempt, verdict in zip(attempts, verdicts):
            self.call_ids.append(attempt.call_id)
            self.verdicts.append(verdict)
            self.prompt_tokens += attempt.prompt_tokens
            self.completion_tokens += attempt.completion_tokens
            self.replayed += int(attempt.cached)

    def to_dict(self) -> dict[str, Any]:
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


class LLMOperator:
    """Operator protocol on a language model (see module docstring). LLM text is parsed as data, never executed."""

    def __init__(
        self,
        client: LLMClient,
        *,
        check: Checker,
        energy: Energy | None = None,
        epochs: int,
        system_prompt: str = "hardware-aware",
        max_repairs: int = 2,
        llm_seed: int | None = None,
        init_failures_before_fallback: int = 2,
        fallback: Operator | None = None,
        knowledge_max_items: int = KNOWLEDGE_MAX_ITEMS,
        knowledge_max_chars: int = KNOWLEDGE_MAX_CHARS,
        name: str = "llm",
    ) -> None:
        """`check`/`energy`: the backend's constraint check and energy model (energy of not-yet-evaluated
        proposals is shown to the model); `llm_seed` None derives a per-call seed from (run seed, generation,
        slot, attempt)."""
        self.client = client
        self.check = check
        self.energy = energy
        self.epochs = epochs
        self.system_prompt = system_prompt
        self.max_repairs = max_repairs
        self.llm_seed = llm_seed
        self.init_failures_before_fallback = init_failures_before_fallback
        self.fallback = fallback if fallback is not None else RandomOperator()
        self.knowledge_max_items = knowledge_max_items
        self.knowledge_max_chars = knowledge_max_chars
        self.name = name
        self.schema = architecture_schema()
        self._proposed: dict[tuple[int, int], dict[str, Any]] = {}  # (generation, slot) -> pending summary
        self._init_failures: list[str] = []

    # -- the Operator protocol

    def initialize(self, context: OperatorContext) -> Proposal:
        """One architecture for the initial population (init.j2, count 1), or the conventional top-up."""
        fallback = self.fallback_if_due(context)
        if fallback is not None:
            return fallback
        messages = render_messages("init", {**self._search_context(context), "count": 1},
                                   system_variant=self.system_prompt)  # fmt: skip
        return self._ask(context, "init", messages, parents=(), variant=self.system_prompt)

    def mutate(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        """One child of `parent` (mutate.j2: the parent's accuracy, robustness drop, energy and violations)."""
        extra = {"parent": candidate_summary(parent)}
        messages = render_messages("mutate", {**self._search_context(context), **extra},
                                   system_variant=self.system_prompt)  # fmt: skip
        return self._ask(context, "mutate", messages, parents=(parent.number,), variant=self.system_prompt)

    def crossover(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        """One child combining two engine-picked parents (crossover.j2)."""
        extra = {"parents": [candidate_summary(first), candidate_summary(second)]}
        messages = render_messages("crossover", {**self._search_context(context), **extra},
                                   system_variant=self.system_prompt)  # fmt: skip
        return self._ask(
            context, "crossover", messages, parents=(first.number, second.number), variant=self.system_prompt
        )

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """Rewrite the knowledge base at the end of a generation; the last generation's is skipped (unused)."""
        kb = knowledge_from_notes(context.notes, self.knowledge_max_items, self.knowledge_max_chars)
        if context.generation >= context.generations:
            return {"knowledge": kb.to_list(), "reflected": False}
        ctx = {**self._search_context(context, pending=False), "knowledge_max_items": kb.max_items,
               "knowledge_max_chars": kb.max_chars}  # fmt: skip
        messages = render_messages("reflect", ctx, system_variant=self.system_prompt)
        seed = self._seed(context, "reflect", slot=-1, attempt=0)
        meta = {"generation": context.generation, "kind": "reflect", "operator": self.name, "seed": seed}
        calls = _Calls()
        try:
            with self._seeded(seed):
                found = propose(self.client, messages, validate=_heuristics_errors, schema=kb.schema(),
                                purpose="reflect", max_repairs=self.max_repairs, meta=meta)  # fmt: skip
        except ProposalFailed as exc:
            calls.add(exc.attempts, ["malformed" if a.errors else "valid" for a in exc.attempts])
            return {"knowledge": kb.to_list(), "reflected": False, "error": str(exc), "llm": calls.to_dict()}
        calls.add(found.attempts, ["malformed" if a.errors else "valid" for a in found.attempts])
        update = kb.replace(found.data["heuristics"])
        return {"knowledge": kb.to_list(), "reflected": True, "update": update.to_dict(), "llm": calls.to_dict()}

    # -- the baselines' prompts (used by uhnas.search.llm_methods)

    def llmatic_mutate(self, context: OperatorContext, parent: TrialRecord, instruction: int) -> Proposal:
        """LLMatic: the parent's layers and one fixed mutation instruction; no scores, no hardware context."""
        ctx = {**self._task_context(context), "schema": self.schema, "parent": candidate_summary(parent),
               "instruction": instruction}  # fmt: skip
        messages = render_messages("llmatic_mutate", ctx, system_variant="generic")
        return self._ask(context, "llmatic_mutate", messages, parents=(parent.number,), variant="generic",
                         extra={"instruction": instruction})  # fmt: skip

    def genius_refine(self, context: OperatorContext, chain: Sequence[TrialRecord]) -> Proposal:
        """GENIUS: the chain's earlier proposals (oldest first) with their scores -> a better one."""
        history = [candidate_summary(r) for r in chain if r.arch is not None] + self.pending(context)
        ctx = {**self._task_context(context), "schema": self.schema, "history": history}
        messages = render_messages("genius", ctx, system_variant="generic")
        return self._ask(context, "genius", messages, parents=(), variant="generic")

    def initialize_generic(self, context: OperatorContext) -> Proposal:
        """init.j2 under the generic system prompt, without knowledge base (the baselines' initial population)."""
        fallback = self.fallback_if_due(context)
        if fallback is not None:
            return fallback
        ctx = {**self._search_context(context, pending=False), "count": 1, "knowledge": [],
               "recent": [_layers_only_summary(c) for c in self.pending(context)][-RECENT_SHOWN:]}  # fmt: skip
        messages = render_messages("init", ctx, system_variant="generic")
        return self._ask(context, "init", messages, parents=(), variant="generic")

    def crossover_generic(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        """crossover.j2 under the generic system prompt with the parents' layers only (no scores, no front)."""
        ctx = {**self._search_context(context, pending=False), "front": [], "recent": [], "knowledge": [],
               "parents": [_layers_only(first), _layers_only(second)]}  # fmt: skip
        messages = render_messages("crossover", ctx, system_variant="generic")
        return self._ask(
            context, "llmatic_crossover", messages, parents=(first.number, second.number), variant="generic"
        )

    # -- bookkeeping the method forwards

    def rejected(self, context: OperatorContext) -> None:
        """The engine refused what this operator proposed for the context's slot: it is not pending any more."""
        self._proposed.pop((context.generation, context.slot), None)

    def pending(self, context: OperatorContext) -> list[dict[str, Any]]:
        """Summaries of this generation's accepted proposals for earlier slots (not evaluated yet)."""
        g = context.generation
        return [summary for (gen, slot), summary in sorted(self._proposed.items()) if gen == g and slot < context.slot]

    # -- internals

    def _task_context(self, context: OperatorContext) -> dict[str, Any]:
        """Keys every prompt kind needs: task, objective, limits."""
        return {
            "task": {
                "dataset": context.dataset,
                "input_shape": list(context.input_shape),
                "num_classes": context.num_classes,
                "epochs": self.epochs,
            },  # fmt: skip
            "objective": context.objective,
            "limits": dict(LIMITS),
        }

    def _search_context(self, context: OperatorContext, *, pending: bool = True) -> dict[str, Any]:
        """The search state every UH-NAS prompt shows (front, recent, knowledge, generation, backend card)."""
        front = sorted((candidate_summary(r) for r in context.front), key=lambda c: (c["energy_nj"] or 0.0, c["trial"]))
        front = _spread(front, FRONT_SHOWN)
        shown = {c["trial"] for c in front}  # a recent candidate already shown on the front is not repeated
        recent = [candidate_summary(r) for r in context.recent if r.arch is not None and r.number not in shown]
        if pending:
            recent += self.pending(context)
        kb = knowledge_from_notes(context.notes, self.knowledge_max_items, self.knowledge_max_chars)
        return {
            **self._task_context(context),
            "backend": context.backend.to_dict(),
            "schema": self.schema,
            "front": front,
            "recent": recent[-RECENT_SHOWN:],
            "knowledge": kb.to_list(),
            "generation": context.generation,
            "generations": context.generations,
            "rejected": list(context.rejected),
        }

    def _seed(self, context: OperatorContext, kind: str, *, slot: int, attempt: int) -> int:
        """The request's seed: the configured one, else derived from (run seed, kind, generation, slot, attempt)."""
        if self.llm_seed is not None:
            return self.llm_seed
        return derive_seed(context.seed, "llm", kind, context.generation, slot, attempt) % SEED_MODULUS

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Send `seed` with the calls made inside (the client reads its config per request)."""
        base = self.client.config
        self.client.config = base.model_copy(update={"seed": seed})
        try:
            yield
        finally:
            self.client.config = base

    def fallback_if_due(self, context: OperatorContext) -> Proposal | None:
        """The conventional initializer once enough LLM init proposals failed (initial population only)."""
        if context.generation != 0 or len(self._init_failures) < self.init_failures_before_fallback:
            return None
        proposal = self.fallback.initialize(context)
        meta = {**proposal.metadata, "llm_fallback": {
            "reason": f"{len(self._init_failures)} LLM init proposals failed "
                      f"(init_failures_before_fallback = {self.init_failures_before_fallback})",
            "failures": list(self._init_failures[: self.init_failures_before_fallback]),
        }}  # fmt: skip
        proposal = Proposal(proposal.arch, FALLBACK_OPERATOR, proposal.parents, proposal.rationale, meta)
        self._remember(context, proposal)
        return proposal

    def _ask(
        self,
        context: OperatorContext,
        kind: str,
        messages: list[dict[str, str]],
        *,
        parents: tuple[int, ...],
        variant: str,
        extra: dict[str, Any] | None = None,
    ) -> Proposal:
        """propose() with the architecture validator; ProposalFailed becomes ProposalError (one line)."""
        seed = self._seed(context, kind, slot=context.slot, attempt=context.attempt)
        meta = {"generation": context.generation, "slot": context.slot, "slot_attempt": context.attempt,
                "kind": kind, "operator": self.name, "seed": seed}  # fmt: skip
        validator = ArchValidator(context, self.check)
        calls = _Calls()
        try:
            with self._seeded(seed):
                found = propose(self.client, messages, validate=validator, schema=self.schema, purpose=kind,
                                max_repairs=self.max_repairs, meta=meta)  # fmt: skip
        except ProposalFailed as exc:
            verdicts = validator.classify(exc.attempts)
            self._annotate(exc.attempts, verdicts)
            if context.generation == 0 and kind in ("init", "genius"):
                self._init_failures.append(f"slot {context.slot} attempt {context.attempt}: {sanitize(exc, 200)}")
            raise ProposalError(f"{self.name}.{LABELS[kind]}: {exc}") from None
        verdicts = validator.classify(found.attempts)
        self._annotate(found.attempts, verdicts)
        calls.add(found.attempts, verdicts)
        arch: Architecture = parse_architecture(_normalise(found.data))
        self.client.log.annotate(found.call_id, arch_hash=arch_hash(arch))
        rationale = sanitize(arch.rationale, 300) if arch.rationale else None
        metadata = {"llm": {"kind": kind, "system_prompt": variant, "seed": seed, **calls.to_dict(), **(extra or {})}}
        proposal = Proposal(arch, f"{self.name}.{LABELS[kind]}", parents, rationale, metadata)
        self._remember(context, proposal)
        return proposal

    def _annotate(self, attempts: Sequence[Attempt], verdicts: Sequence[str]) -> None:
        """Each attempt's verdict on its call-log row (propose already logged its errors and outcome)."""
        for attempt, verdict in zip(attempts, verdicts):
            self.client.log.annotate(attempt.call_id, verdict=verdict)

    def _remember(self, context: OperatorContext, proposal: Proposal) -> None:
        """Keep a summary of the proposal: later slots of the generation see it as a recent (pending) candidate."""
        self._proposed = {k: v for k, v in self._proposed.items() if k[0] >= context.generation}
        self._proposed[(context.generation, context.slot)] = self._pending_summary(context, proposal)

    def _pending_summary(self, context: OperatorContext, proposal: Proposal) -> dict[str, Any]:
        """Candidate summary of a proposal not evaluated yet: energy and constraints known, accuracy not."""
        summary = analyze(proposal.arch, context.input_shape, context.num_classes)
        violations = [v.to_dict() for v in self.check(summary)]
        report = self.energy(summary) if self.energy is not None else None
        return {
            "trial": f"new-g{context.generation}s{context.slot}",
            "hash": arch_hash(proposal.arch),
            "layers": compact_layers(proposal.arch.model_dump(mode="json")),
            "error": None, "clean_accuracy": None, "noisy_accuracy": None, "noisy_p5": None, "robustness_drop": None,
            "energy_nj": None if report is None else report.total_nj,
            "energy_breakdown_nj": {} if report is None else dict(report.breakdown_nj),
            "params": summary.params, "macs": summary.macs,
            "violations": violations, "feasible": not violations,
            "rationale": proposal.rationale, "name": proposal.arch.name,
        }  # fmt: skip


def _layers_only_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate summary with the layers only: scores, energy and rationale blanked (LLMatic shows code only)."""
    blank = ("error", "clean_accuracy", "noisy_accuracy", "noisy_p5", "robustness_drop", "energy_nj", "rationale",
             "name", "params", "macs")  # fmt: skip
    out = {**summary, **dict.fromkeys(blank), "energy_breakdown_nj": {}, "violations": [], "feasible": True}
    out.pop("failure", None)
    return out


def _layers_only(record: TrialRecord) -> dict[str, Any]:
    """A record's summary with the layers only."""
    return _layers_only_summary(candidate_summary(record))

"""What the LLM prompts show of the search: candidate summaries and the task / search contexts they render from.

Built only from the `OperatorContext` (stored records, the backend card, earlier reflections) and from the
proposals already made in the same generation, so a resumed or replayed run renders byte-identical requests and
is served from the response cache. The summary format is the prompt layer's contract (`uhnas.llm.prompting`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from uhnas.arch import analyze, arch_hash
from uhnas.arch.model import MAX_CHANNELS, MAX_KERNEL, MAX_LAYERS, MAX_MACS, MAX_PARAMS, MAX_WIDTH
from uhnas.arch.shapes import ArchSummary
from uhnas.hardware.card import EnergyReport, Violation
from uhnas.llm.knowledge import KnowledgeBase
from uhnas.llm.prompting import compact_layers
from uhnas.records import TrialRecord
from uhnas.search.operators.base import OperatorContext, Proposal

__all__ = [
    "FRONT_SHOWN",
    "KNOWLEDGE_MAX_CHARS",
    "KNOWLEDGE_MAX_ITEMS",
    "LIMITS",
    "RECENT_SHOWN",
    "Checker",
    "Energy",
    "candidate_summary",
    "knowledge_from_notes",
    "layers_only",
    "layers_only_summary",
    "pending_summary",
    "search_context",
    "task_context",
]

KNOWLEDGE_MAX_ITEMS = 12
KNOWLEDGE_MAX_CHARS = 240
RECENT_SHOWN = 8  # newest candidates passed as `recent` (the template shows the first 8 it gets), front excluded
FRONT_SHOWN = 16  # front members passed (evenly spaced by energy when the front is larger)
LIMITS: dict[str, int] = {
    "max_layers": MAX_LAYERS,
    "max_width": MAX_WIDTH,
    "max_channels": MAX_CHANNELS,
    "max_kernel": MAX_KERNEL,
    "max_params": MAX_PARAMS,
    "max_macs": MAX_MACS,
}

Checker = Callable[[ArchSummary], Sequence[Violation]]
Energy = Callable[[ArchSummary], EnergyReport]


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


def pending_summary(
    context: OperatorContext, proposal: Proposal, check: Checker, energy: Energy | None
) -> dict[str, Any]:
    """Candidate summary of a proposal not evaluated yet: energy and constraints known, accuracy not."""
    summary = analyze(proposal.arch, context.input_shape, context.num_classes)
    violations = [v.to_dict() for v in check(summary)]
    report = energy(summary) if energy is not None else None
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


def layers_only_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate summary with the layers only: scores, energy and rationale blanked (LLMatic shows code only)."""
    blank = ("error", "clean_accuracy", "noisy_accuracy", "noisy_p5", "robustness_drop", "energy_nj", "rationale",
             "name", "params", "macs")  # fmt: skip
    out = {**summary, **dict.fromkeys(blank), "energy_breakdown_nj": {}, "violations": [], "feasible": True}
    out.pop("failure", None)
    return out


def layers_only(record: TrialRecord) -> dict[str, Any]:
    """A record's summary with the layers only."""
    return layers_only_summary(candidate_summary(record))


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


def task_context(context: OperatorContext, epochs: int) -> dict[str, Any]:
    """Keys every prompt kind needs: task, objective, limits."""
    return {
        "task": {
            "dataset": context.dataset,
            "input_shape": list(context.input_shape),
            "num_classes": context.num_classes,
            "epochs": epochs,
        },  # fmt: skip
        "objective": context.objective,
        "limits": dict(LIMITS),
    }


def search_context(
    context: OperatorContext,
    *,
    epochs: int,
    schema: dict[str, Any],
    pending: Sequence[dict[str, Any]],
    knowledge: KnowledgeBase,
) -> dict[str, Any]:
    """The search state every UH-NAS prompt shows: front, recent candidates followed by `pending` (this
    generation's proposals not evaluated yet), knowledge, generation, backend card and the architecture schema."""
    front = sorted((candidate_summary(r) for r in context.front), key=lambda c: (c["energy_nj"] or 0.0, c["trial"]))
    front = _spread(front, FRONT_SHOWN)
    shown = {c["trial"] for c in front}  # a recent candidate already shown on the front is not repeated
    recent = [candidate_summary(r) for r in context.recent if r.arch is not None and r.number not in shown]
    recent += pending
    return {
        **task_context(context, epochs),
        "backend": context.backend.to_dict(),
        "schema": schema,
        "front": front,
        "recent": recent[-RECENT_SHOWN:],
        "knowledge": knowledge.to_list(),
        "generation": context.generation,
        "generations": context.generations,
        "rejected": list(context.rejected),
    }

"""What the LLM prompts show of the search: candidate summaries and the task / search contexts they render from.

Built only from the `OperatorContext` (stored records, the backend card, earlier reflections) and from the
proposals already made in the same generation, so a resumed or replayed run renders byte-identical requests and
is served from the response cache. The summary format is the prompt layer's contract (`uhnas.llm.prompting`).

Niche steering (`llm.steering: energy`, the default): LLM proposals tend to collapse onto similar designs unless
steered. Each mutate / crossover prompt names a target energy band where the current front is sparse: the front's
energies in log10 space, extended half a decade below the cheapest and a third of a decade above the costliest
member, split at the members into gaps; the widest `STEER_BANDS` gaps are the targets, and consecutive slots rotate
over them (slot k of the run takes gap k mod n). The prompt also says how the band compares with the parent's
energy ("about 3x less: make it smaller"), which a small model can act on. Initial-population slots rotate over
size classes instead (no front yet). Everything is computed from the records, so it replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from uhnas.arch import Architecture, analyze, arch_hash, structural_distance
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
    "neighbours",
    "energy_bands",
    "init_target",
    "parent_summary",
    "pending_summary",
    "search_context",
    "steer_target",
    "target_band",
    "target_direction",
    "task_context",
]

KNOWLEDGE_MAX_ITEMS = 8
KNOWLEDGE_MAX_CHARS = 200
RECENT_SHOWN = 3  # newest candidates passed as `recent` (the template shows the first 3 it gets), front excluded
FRONT_SHOWN = 6  # front members passed (evenly spaced by energy when the front is larger)
STEER_BANDS = 4  # widest gaps of the front (log energy) the targets rotate over
STEER_BELOW_DECADES = 0.5  # how far below the cheapest front member the lowest band reaches
STEER_ABOVE_DECADES = 0.33  # how far above the costliest one the highest band reaches
INIT_SIZES = (
    "a tiny network (under 1,000 parameters)",
    "a small network (1,000-5,000 parameters)",
    "a medium network (5,000-20,000 parameters)",
    "a larger network (20,000-100,000 parameters), within the hardware limits",
)
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
        "layers_json": list(arch.get("layers") or []),
    }
    if record.failed:
        summary["failure"] = record.reason or "evaluation failed"
    return summary


def parent_summary(record: TrialRecord, context: OperatorContext) -> dict[str, Any]:
    """A parent's candidate summary plus `image`: the C x H x W a CNN's layers leave before its flatten (None for
    an MLP or a flat input), from which the prompt says how many more halvings of the image fit."""
    summary = candidate_summary(record)
    layers = summary["layers_json"]
    at = next((i for i, layer in enumerate(layers) if layer.get("type") == "flatten"), 0)
    if len(context.input_shape) == 3 and at > 0:
        shapes = analyze(Architecture.model_validate({"layers": layers}), context.input_shape, context.num_classes)
        summary["image"] = list(shapes.layers[at - 1].out_shape)
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
        "rationale": proposal.rationale,
        "layers_json": proposal.arch.model_dump(mode="json")["layers"],
    }  # fmt: skip


def layers_only_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate summary with the layers only: scores, energy and rationale blanked (LLMatic shows code only)."""
    blank = ("error", "clean_accuracy", "noisy_accuracy", "noisy_p5", "robustness_drop", "energy_nj", "rationale",
             "params", "macs")  # fmt: skip
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
    rejected: Sequence[dict[str, str]] = (),
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
        "rejected": list(rejected),
        "target": None,
    }


def energy_bands(energies: Sequence[float], bands: int = STEER_BANDS) -> list[tuple[float, float]]:
    """The widest gaps (nJ, low to high) of the front's energies in log space, widest first (see module docs)."""
    logs = sorted({math.log10(e) for e in energies if _finite(e) is not None and e > 0})
    if not logs:
        return []
    edges = [logs[0] - STEER_BELOW_DECADES, *logs, logs[-1] + STEER_ABOVE_DECADES]
    gaps = sorted(range(len(edges) - 1), key=lambda i: (-(edges[i + 1] - edges[i]), i))[:bands]
    return [(10 ** edges[i], 10 ** edges[i + 1]) for i in gaps]


def _nj(value: float) -> str:
    """An energy rounded to two significant digits, without exponent notation (a small model reads 140,000)."""
    rounded = float(f"{value:.2g}")
    return f"{rounded:,.0f}" if rounded >= 10 else f"{rounded:g}"


def target_band(context: OperatorContext) -> tuple[float, float] | None:
    """This slot's target energy band (nJ): a sparse band of the front, rotating over the widest gaps with the slot
    (None when the front is empty)."""
    bands = energy_bands([r.energy_nj for r in context.front if r.energy_nj is not None])
    if not bands:
        return None
    index = max(0, context.generation - 1) * context.offspring + context.slot
    return bands[index % len(bands)]


def target_direction(band: tuple[float, float] | None, parent_energy: float | None) -> int:
    """Which way the target moves the child's energy from the parent's: -1 smaller, +1 larger, 0 about the same
    (or no target / no parent energy)."""
    if band is None or parent_energy is None or not parent_energy > 0:
        return 0
    ratio = math.sqrt(band[0] * band[1]) / parent_energy
    return -1 if ratio < 0.7 else 1 if ratio > 1.4 else 0


def steer_target(band: tuple[float, float] | None, parent_energy: float | None) -> str | None:
    """The target line of a mutate/crossover prompt: the band and how it compares with the parent's energy."""
    if band is None:
        return None
    lo, hi = band
    text = f"aim the child at an energy of {_nj(lo)}-{_nj(hi)} nJ, where the front has no network"
    if parent_energy is None or not parent_energy > 0:
        return text + "."
    ratio = math.sqrt(lo * hi) / parent_energy
    direction = target_direction(band, parent_energy)
    if direction < 0:
        return text + f": about {1 / ratio:.2g}x less than the parent's, so make it smaller (narrower or fewer layers)."
    if direction > 0:
        return text + f": about {ratio:.2g}x the parent's, so make it larger (wider or one more layer)."
    return text + ": about the parent's energy, so keep its size and improve its accuracy."


NEIGHBOURS_SHOWN = 8  # evaluated networks nearest to the parent(s), listed so the model does not repeat them
NEIGHBOUR_DISTANCE = 2.0  # at most this structural distance (about two layer edits) from a parent


def neighbours(
    context: OperatorContext,
    parents: Sequence[TrialRecord],
    shown: set[Any],
    arch_of: Callable[[TrialRecord], Architecture],
    pending: Sequence[dict[str, Any]] = (),
    direction: int = 0,
    parent_energy: float | None = None,
) -> list[dict[str, Any]]:
    """Evaluated (and this generation's pending) networks within NEIGHBOUR_DISTANCE of a parent, not shown elsewhere
    in the prompt: the near-duplicates a one-edit child would repeat (a repeat costs a repair call). Those on the
    target's side of the parent's energy (`direction` -1 below, +1 above) come first, where a child that follows
    the target lands; then nearest first."""
    own = [arch_of(p) for p in parents if p.arch is not None]

    def off_target(energy: Any) -> bool:
        if not direction or parent_energy is None or not isinstance(energy, (int, float)):
            return False
        return (energy - parent_energy) * direction <= 0

    found: list[tuple[bool, float, int, dict[str, Any]]] = []
    for order, record in enumerate(context.history):
        if record.arch is None or record.number in shown or any(record.number == p.number for p in parents):
            continue
        distance = min((structural_distance(a, arch_of(record)) for a in own), default=math.inf)
        if distance <= NEIGHBOUR_DISTANCE:
            found.append((off_target(record.energy_nj), distance, order, candidate_summary(record)))
    for order, summary in enumerate(pending, start=len(context.history)):
        if summary.get("trial") in shown:
            continue
        arch = Architecture.model_validate({"layers": summary.get("layers_json") or []})
        distance = min((structural_distance(a, arch) for a in own), default=math.inf)
        if distance <= NEIGHBOUR_DISTANCE:
            found.append((off_target(summary.get("energy_nj")), distance, order, summary))
    found.sort(key=lambda item: item[:3])
    return [summary for *_, summary in found[:NEIGHBOURS_SHOWN]]


def init_target(context: OperatorContext) -> str:
    """The size class an initial-population slot aims at, rotating with the slot so the population spans sizes."""
    return f"this slot asks for {INIT_SIZES[context.slot % len(INIT_SIZES)]}."

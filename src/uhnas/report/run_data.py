"""The data of a run's HTML report, read from its store (and llm.db): plain JSON-ready dicts, no HTML.

Everything is recomputed from the stored trials the way the rest of uhnas computes it: the front with
`feasible_front`, hypervolume with `front_hypervolume` / `hypervolume_history` against the run's frozen reference
point (as `uhnas status` and the study report do), LLM totals with `RunStore.llm_accounting`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from uhnas.records import TrialRecord, feasible_front, front_hypervolume
from uhnas.store import LLM_DB_FILE, RunStore

ERROR_LABELS = {
    "mean": "error under non-idealities (1 - mean noisy accuracy)",
    "p5": "error (1 - 5th-percentile noisy accuracy)",
    "clean": "error (1 - clean accuracy)",
}
MAX_FRONT_DIAGRAMS = 24
SHORT_KEYS = {"out_channels": "ch", "kernel": "k", "stride": "s", "padding": "p", "bias": "bias"}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def energy_text(nj: Any) -> str:
    """Energy per inference with a readable unit (pJ, nJ, µJ, mJ, J), four significant digits."""
    if nj is None:
        return "-"
    value = float(nj)
    for scale, unit in ((1e9, "J"), (1e6, "mJ"), (1e3, "µJ"), (1.0, "nJ")):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value * 1e3:.4g} pJ"


def failure_kind(reason: str | None) -> str:
    """The kind of a failure reason: its text before the first colon when short, else its start, digits as N."""
    text = (reason or "failed").strip().splitlines()[0] if (reason or "").strip() else "failed"
    head = text.split(":", 1)[0].strip()
    kind = head if ":" in text and 0 < len(head) <= 48 else text[:72]
    return re.sub(r"\d+(\.\d+)?", "N", kind)


def candidate_row(record: TrialRecord, on_front: bool) -> dict[str, Any]:
    """One candidate as the page's tables, hover panel and figures read it."""
    from uhnas.llm.prompting import compact_layers

    ev = record.evaluation or {}
    arch = record.arch or {}
    return {
        "number": record.number,
        "generation": record.generation,
        "slot": record.slot,
        "operator": record.operator,
        "parents": list(record.parents),
        "state": record.state,
        "failed": record.failed,
        "feasible": record.feasible,
        "front": on_front,
        "error": _finite(record.error),
        "energy_nj": _finite(record.energy_nj),
        "accuracy_clean": _finite(record.accuracy("clean")),
        "accuracy_noisy_mean": _finite(record.accuracy("mean")),
        "accuracy_noisy_p5": _finite(record.accuracy("p5")),
        "params": ev.get("params"),
        "macs": ev.get("macs"),
        "energy_breakdown_nj": {str(k): _finite(v) for k, v in (ev.get("energy_breakdown_nj") or {}).items()},
        "violations": list(ev.get("violations") or []),
        "violation": _finite(record.violation),
        "hash": record.hash,
        "name": arch.get("name") if isinstance(arch, dict) else None,
        "layers": compact_layers(arch) if record.arch is not None else None,
        "rationale": record.rationale,
        "reason": record.reason,
        "rejected": [str(r) for r in record.rejected],
        "attempt": record.attempt,
        "wall_seconds": _finite(record.wall_seconds),
    }


def architecture_diagram(record: TrialRecord, dataset: str) -> dict[str, Any]:
    """The front member's layers as blocks: type, settings, output shape, parameters (`uhnas.arch.analyze`)."""
    from uhnas.arch import analyze
    from uhnas.data import dataset_spec

    blocks: list[dict[str, Any]] = []
    diagram: dict[str, Any] = {"number": record.number, "name": (record.arch or {}).get("name"), "blocks": blocks,
                               "input_shape": None, "params": None, "macs": None, "error": None}  # fmt: skip
    arch = record.architecture
    if arch is None:
        return diagram
    try:
        shape, classes = dataset_spec(dataset)
        summary = analyze(arch, shape, classes)
    except Exception as error:  # a stored architecture that no longer analyses: show why instead of failing
        diagram["error"] = f"{type(error).__name__}: {error}"
        return diagram
    diagram["input_shape"] = "x".join(map(str, summary.input_shape))
    diagram["params"], diagram["macs"] = summary.params, summary.macs
    for info, layer in zip(summary.layers, arch.layers):
        settings = {k: v for k, v in layer.model_dump(mode="json").items() if k != "type" and v is not None}
        shown = {k: v for k, v in settings.items() if k not in ("out_features", "function") and v is not True}
        blocks.append(
            {
                "index": info.index,
                "type": info.type,
                "label": str(settings.get("function", info.type)),
                "settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
                "detail": ", ".join(f"{SHORT_KEYS.get(k, k)} {v}" for k, v in shown.items()),
                "out_shape": "x".join(map(str, info.out_shape)),
                "params": info.params,
                "macs": info.macs,
            }
        )
    return diagram


def hv_per_evaluation(records: list[TrialRecord], reference: Any) -> list[float]:
    """Hypervolume after each stored evaluation (failed ones count), as the study report computes it."""
    from uhnas.metrics import hypervolume_history

    if not records or not reference:
        return []
    errors = [r.error if not r.failed else math.nan for r in records]
    energies = [r.energy_nj if not r.failed and r.energy_nj else math.nan for r in records]
    feasible = [r.feasible for r in records]
    return [float(v) for v in hypervolume_history(errors, energies, feasible, tuple(reference))]


def run_report_data(out: str | Path) -> dict[str, Any]:
    """Everything the run page shows, as one JSON-ready dict."""
    store = RunStore.open(out)
    meta = store.metadata()
    records = sorted(store.records(), key=lambda r: r.number)
    config = meta.get("config") or {}
    front = feasible_front(records)
    front_numbers = {r.number for r in front}
    reference = (meta.get("hv_reference") or {}).get("point")
    log = store.generation_log(meta)
    failed = [r for r in records if r.failed]
    training = config.get("training") or {}
    summary = {
        "run": Path(out).resolve().name,
        "directory": str(Path(out)),
        "method": config.get("method") or meta.get("method"),
        "dataset": config.get("dataset"),
        "backend": config.get("backend"),
        "backend_overrides": list(config.get("backend_overrides") or []),
        "objective": config.get("objective"),
        "seed": config.get("seed"),
        "population": config.get("population"),
        "generations": config.get("generations"),
        "offspring": config.get("offspring"),
        "epochs": training.get("epochs"),
        "noise_aware": training.get("noise_aware"),
        "mc": config.get("mc"),
        "budget": int(meta.get("budget") or 0),
        "trials": len(records),
        "completed": sum(not r.failed for r in records),
        "failed": len(failed),
        "feasible": sum(r.feasible for r in records),
        "infeasible": sum(not r.failed and not r.feasible for r in records),
        "front_size": len(front),
        "hypervolume": front_hypervolume(records, reference) if reference else None,
        "generation": int(log[-1]["generation"]) if log else -1,
        "finished": bool(meta.get("finished", False)) and len(records) >= int(meta.get("budget") or 0),
        "wall_s": _finite(meta.get("elapsed_s")),
        "evaluation_s": round(sum(r.wall_seconds for r in records), 3),
        "version": meta.get("version"),
        "llm_model": (config.get("llm") or {}).get("model") if config.get("llm") else None,
    }
    kinds = Counter(failure_kind(r.reason) for r in failed)
    examples: dict[str, str] = {}
    for r in failed:
        examples.setdefault(failure_kind(r.reason), r.reason or "failed")
    failures_by_reason = [{"reason": k, "count": n, "example": examples[k]} for k, n in kinds.most_common()]
    llm = None
    accounting = store.llm_accounting(records, meta)
    if accounting is not None:
        from uhnas.report.llm_log import llm_log

        llm_conf = config.get("llm") or {}
        prices = llm_conf.get("price_prompt_usd_per_mtok"), llm_conf.get("price_completion_usd_per_mtok")
        price = (float(prices[0]), float(prices[1])) if None not in prices else None
        llm = {"accounting": accounting, **(llm_log(Path(out) / LLM_DB_FILE, price) or {})}
    knowledge = []
    previous: list[str] = []
    for entry in log:
        notes = entry.get("notes") or {}
        if not isinstance(notes, dict):
            continue
        items = [str(h) for h in notes.get("knowledge") or []] if "knowledge" in notes else None
        other = {k: v for k, v in notes.items() if k not in ("knowledge",)}
        if items is None and not other:
            continue
        knowledge.append(
            {
                "generation": entry.get("generation"),
                "heuristics": [{"text": h, "new": h not in previous} for h in items] if items is not None else None,
                "removed": [h for h in previous if items is not None and h not in items],
                "reflected": notes.get("reflected"),
                "error": notes.get("error") or notes.get("skipped"),
                "notes": other,
            }
        )
        if items is not None:
            previous = items
    dataset = str(config.get("dataset") or "digits")
    front_sorted = sorted(front, key=lambda r: r.energy_nj or 0.0)
    return {
        "kind": "run",
        "summary": summary,
        "error_label": ERROR_LABELS.get(str(config.get("objective")), ERROR_LABELS["mean"]),
        "backend_card": meta.get("backend_card"),
        "config": config,
        "failures_by_reason": failures_by_reason,
        "candidates": [candidate_row(r, r.number in front_numbers) for r in records],
        "front": [r.number for r in front_sorted],
        "diagrams": [architecture_diagram(r, dataset) for r in front_sorted[:MAX_FRONT_DIAGRAMS]],
        "hv_curve": hv_per_evaluation(records, reference),
        "hv_history": list(meta.get("hv_history") or []),
        "generations": [
            {
                k: entry.get(k)
                for k in ("generation", "evaluations", "failures", "hypervolume", "front_size", "elapsed_s")
            }
            for entry in log
        ],  # fmt: skip
        "knowledge": knowledge,
        "llm": llm,
        "run_summary": meta.get("summary"),
    }


__all__ = ["ERROR_LABELS", "architecture_diagram", "energy_text", "candidate_row", "failure_kind", "run_report_data"]

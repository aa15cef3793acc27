"""Progress events of a search: what the engine reports, through a callback, as a run advances.

The engine never prints; the live display, the CLI's JSON mode and tests consume these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uhnas.records import TrialRecord


@dataclass(frozen=True)
class RunStarted:
    """The run begins (or resumes): its budget and what is already done."""

    method: str
    out: str
    budget: int
    done: int
    population: int
    generations: int
    offspring: int
    resumed: bool
    backend: str
    dataset: str
    seed: int
    hv_reference: tuple[float, float]
    kind: str = "run_started"


@dataclass(frozen=True)
class GenerationProposing:
    """A generation begins: its `slots` proposals are being made (an LLM method may take minutes here)."""

    generation: int
    generations: int
    slots: int
    kind: str = "generation_proposing"


@dataclass(frozen=True)
class GenerationStarted:
    """A generation's proposals are made; `to_evaluate` of its slots will be trained now."""

    generation: int
    generations: int
    slots: int
    to_evaluate: int
    done: int
    budget: int
    kind: str = "generation_started"


@dataclass(frozen=True)
class CandidateDone:
    """One candidate stored: kind "candidate_evaluated" or "candidate_failed", with its record."""

    record: TrialRecord
    generation: int
    done: int
    budget: int
    elapsed_s: float
    kind: str = "candidate_evaluated"


@dataclass(frozen=True)
class GenerationDone:
    """A generation finished: hypervolume of everything so far, front and population sizes, timing."""

    generation: int
    generations: int
    hypervolume: float
    front_size: int
    population_size: int
    done: int
    budget: int
    failures: int
    elapsed_s: float
    eta_s: float | None
    engine_seconds: float
    kind: str = "generation_done"


@dataclass(frozen=True)
class RunFinished:
    """The budget is spent: final hypervolume and the run summary (diversity, robustness)."""

    hypervolume: float
    done: int
    budget: int
    elapsed_s: float
    engine_seconds: float
    summary: dict[str, Any]
    kind: str = "run_finished"


Event = RunStarted | GenerationProposing | GenerationStarted | CandidateDone | GenerationDone | RunFinished
ProgressCallback = Callable[[Event], None]


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of an event (records as their dicts)."""
    data = {k: v for k, v in event.__dict__.items() if k != "record"}
    if isinstance(event, CandidateDone):
        data["record"] = event.record.to_dict()
    if isinstance(event, RunStarted):
        data["hv_reference"] = list(event.hv_reference)
    return data


__all__ = [
    "CandidateDone",
    "Event",
    "GenerationDone",
    "GenerationProposing",
    "GenerationStarted",
    "ProgressCallback",
    "RunFinished",
    "RunStarted",
    "event_to_dict",
]

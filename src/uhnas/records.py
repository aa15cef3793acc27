"""A candidate as the search and its operators see it: the stored record, its objectives, the feasible front.

Plain data with no torch and no Optuna (the store converts records to and from Optuna trials), so operators,
the LLM layer and reports read records without loading either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uhnas.arch import Architecture, parse_architecture
from uhnas.metrics import hypervolume, normalise_points, pareto_front_mask


@dataclass
class TrialRecord:
    """One candidate as stored: what was proposed, how it scored, or why it failed."""

    generation: int
    slot: int
    state: str = "COMPLETE"  # "COMPLETE" (evaluated) or "FAIL" (invalid proposal, crash, timeout, training failure)
    number: int = -1  # Optuna trial number, assigned when stored
    operator: str | None = None
    parents: tuple[int, ...] = ()
    rationale: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] | None = None  # the architecture as JSON data (None when no valid proposal was made)
    hash: str | None = None
    attempt: int = 0  # proposal attempts used before this one was accepted (0 = first)
    rejected: list[str] = field(default_factory=list)  # why earlier attempts of this slot were refused
    error: float | None = None  # objective 1: 1 - accuracy (the configured one)
    energy_nj: float | None = None  # objective 2
    violation: float = 0.0  # total normalised constraint violation, 0 = feasible
    evaluation: dict[str, Any] | None = None  # uhnas.evaluate.Evaluation.to_dict()
    reason: str | None = None
    wall_seconds: float = 0.0
    seed: int = 0

    @property
    def failed(self) -> bool:
        """Not evaluated successfully: it loses every comparison."""
        return self.state != "COMPLETE" or self.error is None or self.energy_nj is None

    @property
    def feasible(self) -> bool:
        """Evaluated and violating no physical constraint."""
        return not self.failed and self.violation <= 0.0

    @property
    def objectives(self) -> tuple[float, float]:
        """(error, energy_nj), NaN for a failed candidate (NaN reads as worst in selection)."""
        if self.failed:
            return (math.nan, math.nan)
        return (float(self.error), float(self.energy_nj))  # type: ignore[arg-type]

    @property
    def architecture(self) -> Architecture | None:
        """The architecture as the typed IR."""
        return parse_architecture(self.arch) if self.arch is not None else None

    def accuracy(self, kind: str) -> float | None:
        """Clean ('clean'), noisy mean ('mean') or noisy 5th-percentile ('p5') validation accuracy."""
        return objective_accuracy(self.evaluation, kind)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for `--json` output and progress events)."""
        return {
            "number": self.number,
            "state": self.state,
            "generation": self.generation,
            "slot": self.slot,
            "operator": self.operator,
            "parents": list(self.parents),
            "rationale": self.rationale,
            "metadata": self.metadata,
            "arch": self.arch,
            "hash": self.hash,
            "attempt": self.attempt,
            "rejected": list(self.rejected),
            "error": self.error,
            "energy_nj": self.energy_nj,
            "violation": self.violation,
            "feasible": self.feasible,
            "accuracy_clean": self.accuracy("clean"),
            "accuracy_noisy_mean": self.accuracy("mean"),
            "accuracy_noisy_p5": self.accuracy("p5"),
            "evaluation": self.evaluation,
            "reason": self.reason,
            "wall_seconds": self.wall_seconds,
            "seed": self.seed,
        }


def objective_accuracy(evaluation: dict[str, Any] | None, kind: str) -> float | None:
    """The accuracy an evaluation dict reports for `kind`; noisy kinds fall back to clean when mc = 0."""
    if evaluation is None:
        return None
    clean = evaluation.get("accuracy")
    if kind == "clean":
        return clean
    noisy = evaluation.get("noisy_accuracy")
    if not noisy:
        return clean
    return noisy["mean"] if kind == "mean" else noisy["p5"]


def feasible_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The feasible evaluated records no other feasible record Pareto-dominates (what `study.best_trials` returns)."""
    feasible = [r for r in records if r.feasible]
    if not feasible:
        return []
    F = np.array([r.objectives for r in feasible], dtype=np.float64)
    mask = pareto_front_mask(F)
    return [r for r, keep in zip(feasible, mask) if keep]


def front_hypervolume(records: Sequence[TrialRecord], reference: Sequence[float]) -> float:
    """Hypervolume of the feasible records in (error, log10 nJ) against the frozen reference point."""
    feasible = [r for r in records if r.feasible and r.energy_nj is not None and r.energy_nj > 0]
    if not feasible:
        return 0.0
    points = normalise_points([r.objectives[0] for r in feasible], [r.objectives[1] for r in feasible])
    return hypervolume(points, np.asarray(reference, dtype=np.float64))


__all__ = ["TrialRecord", "feasible_front", "front_hypervolume", "objective_accuracy"]

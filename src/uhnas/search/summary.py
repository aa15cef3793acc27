"""The summary of a finished run: counts, hypervolume, diversity of population and front, robustness."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uhnas.arch import structural_distance
from uhnas.metrics import energy_range_decades, mean_pairwise_distance, robustness_summary
from uhnas.records import TrialRecord, feasible_front, front_hypervolume


def run_summary(
    history: Sequence[TrialRecord], population: Sequence[TrialRecord], reference: Sequence[float]
) -> dict[str, Any]:
    """Final metrics: counts, hypervolume, diversity of population and front, robustness of the front."""
    front = feasible_front(history)
    evaluated = [r for r in history if not r.failed]
    front_archs = [a for a in (r.architecture for r in front) if a is not None]
    population_archs = [a for a in (r.architecture for r in population) if a is not None]
    robustness = None
    if front:
        clean = [r.accuracy("clean") or 0.0 for r in front]
        noisy = [r.accuracy("mean") or 0.0 for r in front]
        p5 = [r.accuracy("p5") or 0.0 for r in front]
        robustness = robustness_summary(clean, noisy, p5)
    return {
        "evaluations": len(history),
        "completed": len(evaluated),
        "failed": len(history) - len(evaluated),
        "feasible": sum(r.feasible for r in history),
        "hypervolume": front_hypervolume(history, reference),
        "front_size": len(front),
        "front": [r.number for r in front],
        "best_error": min((r.objectives[0] for r in front), default=None),
        "min_energy_nj": min((r.objectives[1] for r in front), default=None),
        "diversity": {
            "distinct_architectures": len({r.hash for r in history if r.hash}),
            "front_distinct_architectures": len({r.hash for r in front}),
            "population_mean_distance": mean_pairwise_distance(population_archs, structural_distance),
            "front_mean_distance": mean_pairwise_distance(front_archs, structural_distance),
            "front_energy_range_decades": energy_range_decades([r.objectives[1] for r in front]),
        },
        "robustness": robustness,
    }


__all__ = ["run_summary"]

"""What a backend says about itself and about an architecture: its card, constraint violations, energy reports.

Plain data with no torch, so the search, its operators, the LLM layer and reports read them without loading
the simulators (the protocol that produces them is `uhnas.hardware.base`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from uhnas.errors import BackendError


@dataclass(frozen=True)
class Violation:
    """A physical constraint the architecture breaks: the limit, the actual value and their unit."""

    constraint: str
    limit: float
    actual: float
    unit: str

    @property
    def amount(self) -> float:
        """Normalised excess over the limit (0.5 = 50 % over); summed for constraint domination."""
        if self.limit == 0:
            return float(self.actual)
        return max(0.0, (self.actual - self.limit) / abs(self.limit))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "constraint": self.constraint,
            "limit": self.limit,
            "actual": self.actual,
            "unit": self.unit,
            "amount": self.amount,
        }


def total_violation(violations: list[Violation]) -> float:
    """Sum of normalised violation amounts: 0 means feasible."""
    return float(sum(v.amount for v in violations))


@dataclass(frozen=True)
class EnergyReport:
    """Energy per inference in nJ, by component (summing to the total), and what it assumes."""

    breakdown_nj: dict[str, float]
    latency_ns: float | None = None
    assumptions: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.breakdown_nj.items():
            if not math.isfinite(value):  # a constant far beyond any device's range overflowed the model
                raise BackendError(
                    f"energy component {key!r} is {value} nJ: a backend constant is out of any device's range"
                )

    @property
    def total_nj(self) -> float:
        """Energy per inference, nJ."""
        return float(sum(self.breakdown_nj.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "energy_nj": self.total_nj,
            "energy_breakdown_nj": dict(self.breakdown_nj),
            "latency_ns": self.latency_ns,
            "assumptions": dict(self.assumptions),
        }


@dataclass(frozen=True)
class BackendCard:
    """What a backend is and what it models: rendered into LLM prompts, reports and `uhnas backends`."""

    name: str
    family: str
    precision: str
    description: str
    models: tuple[str, ...]  # non-idealities and energy components it simulates
    constants: dict[str, dict[str, Any]]  # name -> {value, unit, source}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "family": self.family,
            "precision": self.precision,
            "description": self.description,
            "models": list(self.models),
            "constants": {k: dict(v) for k, v in self.constants.items()},
        }


__all__ = ["BackendCard", "EnergyReport", "Violation", "total_violation"]

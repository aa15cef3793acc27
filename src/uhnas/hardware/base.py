"""The backend protocol: what every piece of hardware answers about an architecture, and nothing else.

A backend gives (1) a card describing itself, (2) the physical constraints an architecture violates,
each with a measured amount, (3) energy per inference by component, and (4) the trained network as
its device computes it, for many Monte-Carlo draws of its non-idealities at once. The search never
changes when the backend does, so results on different hardware compare fairly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from uhnas.arch import ArchSummary, Network, Program, forward_draws


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
                raise ValueError(
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


class RealizedModel:
    """A trained network as a device computes it, for `draws` Monte-Carlo draws at once."""

    def __init__(self, model: Network, programs: Mapping[int, Program], draws: int) -> None:
        self.model = model
        self.programs = dict(programs)
        self.draws = draws

    def __call__(self, x: Tensor) -> Tensor:
        """Logits for every draw: (batch, ...) -> (draws, batch, classes)."""
        return forward_draws(self.model, self.programs, self.draws, x)


@runtime_checkable
class Backend(Protocol):
    """The four questions a hardware backend answers (see DESIGN.md, "The backend protocol")."""

    name: str

    def describe(self) -> BackendCard:
        """The backend's card."""
        ...

    def check(self, summary: ArchSummary) -> list[Violation]:
        """Physical constraints violated by the architecture; empty when feasible."""
        ...

    def energy(self, summary: ArchSummary) -> EnergyReport:
        """Energy per inference by component."""
        ...

    def realize(self, model: Network, draws: int, generator: torch.Generator) -> RealizedModel:
        """The network as the device computes it under `draws` sampled non-idealities (no grad)."""
        ...

    def training_programs(self, model: Network, generator: torch.Generator) -> dict[int, Program] | None:
        """Differentiable one-draw programs for noise-aware training, or None if the device is noise-free."""
        ...

"""The backend protocol: what every piece of hardware answers about an architecture, and nothing else.

A backend gives (1) a card describing itself, (2) the physical constraints an architecture violates,
each with a measured amount, (3) energy per inference by component, and (4) the trained network as
its device computes it, for many Monte-Carlo draws of its non-idealities at once. The search never
changes when the backend does, so results on different hardware compare fairly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from uhnas.arch import ArchSummary
from uhnas.arch.build import Network, Program, forward_draws
from uhnas.hardware.card import BackendCard, EnergyReport, Violation


class RealizedModel:
    """A trained network as a device computes it, for `draws` Monte-Carlo draws at once."""

    def __init__(self, model: Network, programs: Mapping[int, Program], draws: int) -> None:
        self.model = model
        self.programs = dict(programs)
        self.draws = draws

    @property
    def computed_draws(self) -> int:
        """How many draws a forward pass actually computes (what its memory and time scale with)."""
        return self.draws

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

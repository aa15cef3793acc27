"""The operator protocol: how a search asks for new architectures, and everything it tells the operator.

An operator initialises, mutates and crosses over architectures, and may reflect at the end of each
generation. Conventional operators (random.py) and LLM-guided ones implement the same protocol, so a method
swaps one for the other without touching the engine. Operators receive an `OperatorContext`: the dataset's
input shape and class count, the backend card, the population and the feasible Pareto front with their
evaluations, recent candidates, the generation and slot, and a numpy generator derived from
(seed, generation, slot, attempt) — the only source of randomness they may use, so that a resumed run makes
the same choices as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from uhnas.arch import Architecture
from uhnas.errors import ProposalError
from uhnas.hardware.card import BackendCard
from uhnas.records import TrialRecord


@dataclass(frozen=True)
class Proposal:
    """A candidate architecture with where it came from: operator name, parent trials, rationale, metadata."""

    arch: Architecture
    operator: str
    parents: tuple[int, ...] = ()
    rationale: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OperatorContext:
    """What an operator knows when it is asked for one candidate (see module docstring)."""

    generation: int  # 0 = the initial population
    slot: int  # index of the candidate within its generation
    attempt: int  # how many proposals for this slot were refused before (duplicates, invalid)
    rng: np.random.Generator  # derived from (seed, generation, slot, attempt)
    seed: int
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    backend: BackendCard
    objective: str  # which accuracy the error objective uses: "mean", "clean" or "p5"
    population: Sequence[TrialRecord]  # current population, best first (after the last survival)
    front: Sequence[TrialRecord]  # feasible Pareto front over every evaluated candidate
    recent: Sequence[TrialRecord]  # the latest candidates, newest last (evaluated or failed)
    history: Sequence[TrialRecord]  # every candidate so far, in (generation, slot) order
    is_known: Callable[[str], bool]  # True if an architecture hash was already evaluated or proposed
    generations: int  # generations in the budget
    offspring: int  # candidates per generation after the initial population
    population_size: int
    notes: Sequence[dict[str, Any]] = ()  # what `reflect` returned at the end of earlier generations
    rejected: Sequence[str] = ()  # why earlier attempts for this slot were refused

    def with_attempt(
        self, slot: int, attempt: int, rng: np.random.Generator, rejected: Sequence[str]
    ) -> OperatorContext:
        """The same context for another slot or attempt."""
        return replace(self, slot=slot, attempt=attempt, rng=rng, rejected=tuple(rejected))


@runtime_checkable
class Operator(Protocol):
    """Makes architectures: the four things every search method asks of it."""

    name: str

    def initialize(self, context: OperatorContext) -> Proposal:
        """A new architecture for the initial population."""
        ...

    def mutate(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        """A variation of one evaluated parent."""
        ...

    def crossover(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        """A child combining two evaluated parents."""
        ...

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """End-of-generation hook: return notes to keep (stored with the generation, passed back in `notes`)."""
        ...


__all__ = ["Operator", "OperatorContext", "Proposal", "ProposalError"]

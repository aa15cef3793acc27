"""The conventional methods: NSGA-II, random search and regularised evolution over the conventional operators.

See `uhnas.search.methods` for what each does; they are registered as entry points of `uhnas.methods`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from uhnas.records import TrialRecord
from uhnas.search.methods import MethodSetup, SearchMethod
from uhnas.search.operators.base import Operator, OperatorContext, Proposal
from uhnas.search.operators.random import RandomOperator
from uhnas.search.selection import binary_tournament, rank_and_crowding, survive


def objective_arrays(records: Sequence[TrialRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(F, V): objectives in (error, log10 nJ) with NaN rows for failed candidates, and total violations."""
    F = np.full((len(records), 2), np.nan)
    V = np.zeros(len(records))
    for i, record in enumerate(records):
        if not record.failed and record.energy_nj is not None and record.energy_nj > 0:
            F[i] = (record.error, math.log10(record.energy_nj))
            V[i] = max(0.0, record.violation)
    return F, V


def nsga2_survival(candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
    """NSGA-II survival with constraint domination; survivors best first."""
    if not candidates:
        return []
    F, V = objective_arrays(candidates)
    return [candidates[i] for i in survive(F, V, size)]


class _OperatorMethod:
    """Shared parts of methods that delegate to an Operator: no-op feedback, reflection by the operator."""

    name = "base"

    def __init__(self, operator: Operator) -> None:
        self.operator = operator

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None:
        """Conventional methods keep no per-slot state."""

    def observe(self, records: Sequence[TrialRecord]) -> None:
        """Conventional methods read results from the context instead."""

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """The operator's end-of-generation notes."""
        return self.operator.reflect(context)


# ----------------------------------------------------------------------------- native methods


class NSGA2(_OperatorMethod):
    """NSGA-II with an operator (see module docstring)."""

    name = "nsga2"

    def __init__(self, operator: Operator, crossover_prob: float) -> None:
        super().__init__(operator)
        self.crossover_prob = crossover_prob

    def propose(self, context: OperatorContext) -> Proposal:
        """Initializer in generation 0; then tournament parents and crossover or mutation."""
        population = [r for r in context.population if r.arch is not None]
        if context.generation == 0 or not population:
            return self.operator.initialize(context)
        F, V = objective_arrays(population)
        rank, crowding = rank_and_crowding(F, V)
        first, second = binary_tournament(rank, crowding, 2, context.rng)
        if len(population) > 1 and first != second and context.rng.random() < self.crossover_prob:
            return self.operator.crossover(context, population[first], population[second])
        return self.operator.mutate(context, population[first])

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """NSGA-II survival."""
        return nsga2_survival(candidates, size)


class RandomSearch(_OperatorMethod):
    """Random search: every candidate from the initializer; the population is only kept for reporting."""

    name = "random"

    def propose(self, context: OperatorContext) -> Proposal:
        """A fresh random architecture."""
        return self.operator.initialize(context)

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """NSGA-II survival (reporting only: random search ignores the population)."""
        return nsga2_survival(candidates, size)


class RegularizedEvolution(_OperatorMethod):
    """Aging evolution on a scalarised objective (see module docstring)."""

    name = "regevo"

    def __init__(self, operator: Operator, sample_size: int, energy_weight: float, reference_log_energy: float) -> None:
        super().__init__(operator)
        self.sample_size = sample_size
        self.energy_weight = energy_weight
        self.reference_log_energy = reference_log_energy

    def score(self, record: TrialRecord) -> tuple[int, float, float]:
        """Sort key, smaller is better: (failed, violation, scalarised objective)."""
        if record.failed or record.energy_nj is None or record.energy_nj <= 0:
            return (1, math.inf, math.inf)
        scalar = float(record.error) + self.energy_weight * (math.log10(record.energy_nj) - self.reference_log_energy)  # type: ignore[arg-type]
        return (0, max(0.0, record.violation), scalar)

    def propose(self, context: OperatorContext) -> Proposal:
        """Initializer in generation 0; then mutate the best of a uniform sample of the population."""
        population = [r for r in context.population if r.arch is not None]
        if context.generation == 0 or not population:
            return self.operator.initialize(context)
        size = min(self.sample_size, len(population))
        sample = context.rng.choice(len(population), size=size, replace=False)
        best = min(sample.tolist(), key=lambda i: (self.score(population[i]), i))
        return self.operator.mutate(context, population[best])

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """The youngest `size` candidates (the oldest leave), in age order."""
        return list(candidates)[-size:]


# ----------------------------------------------------------------------------- factories


def make_nsga2(setup: MethodSetup) -> SearchMethod:
    """NSGA-II with the conventional operators."""
    return NSGA2(RandomOperator(), setup.config.evolution.crossover_prob)


def make_random(setup: MethodSetup) -> SearchMethod:
    """Random search with the conventional initializer."""
    return RandomSearch(RandomOperator())


def make_regevo(setup: MethodSetup) -> SearchMethod:
    """Regularised evolution with the conventional mutations, scalarised against the HV reference energy."""
    evolution = setup.config.evolution
    sample = evolution.regevo_sample_size or max(2, setup.config.population // 4)
    return RegularizedEvolution(RandomOperator(), sample, evolution.regevo_energy_weight, setup.hv_reference[1])


__all__ = [
    "NSGA2",
    "RandomSearch",
    "RegularizedEvolution",
    "make_nsga2",
    "make_random",
    "make_regevo",
    "nsga2_survival",
    "objective_arrays",
]

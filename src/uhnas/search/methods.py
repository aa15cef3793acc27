"""Search methods by name: how parents are chosen, which operator is asked, and who survives a generation.

Every method runs in the same generational engine with the same budget (population + generations x offspring
evaluations), the same store and the same dedup, so methods compare fairly. A method is built from a
`MethodSetup` by a factory found the way backends are: the entry-point group `uhnas.methods` (name ->
"module:factory"), loaded only when that method is made, so a conventional run never imports the LLM methods.
uhnas declares its own methods there; a third-party method is a package declaring one more entry point, and
`register_method` adds one in-process (tests, notebooks).

- ``nsga2``: NSGA-II (Deb et al. 2002): parents by binary tournament on (rank, crowding) under constraint
  domination, crossover with probability ``evolution.crossover_prob`` else mutation (conventional operators),
  survival of the best ``population`` by non-dominated sorting and crowding distance.
- ``random``: random search: every candidate from the random initializer.
- ``regevo``: regularised (aging) evolution (Real et al. 2019): each child mutates the best of a uniform sample
  of ``evolution.regevo_sample_size`` members (default max(2, population // 4)); after each generation the
  oldest members leave so the population keeps its size. "Best" is on a scalarised objective:
  feasible before infeasible (then smaller violation), then smallest
  ``error + regevo_energy_weight * (log10(energy_nJ) - reference_log10_energy)`` — with the default weight 0.1,
  one decade of energy is worth ten points of accuracy; failed candidates are worst.
- ``optuna-nsga2`` / ``optuna-tpe``: Optuna's own NSGAIISampler / TPESampler proposing over a define-by-run
  encoding of the same space (`suggest_architecture` over `uhnas.search.space`), as outside references. A fresh
  sampler seeded from (seed, generation, slot, attempt) answers each ask on an in-memory study that mirrors the
  run, so these are as reproducible and resumable as the native methods.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna

from uhnas.arch import Architecture
from uhnas.arch.model import Activation, AvgPool, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool
from uhnas.config import RunConfig
from uhnas.errors import MethodError
from uhnas.records import TrialRecord
from uhnas.search.operators.base import Operator, OperatorContext, Proposal, ProposalError
from uhnas.search.operators.random import RandomOperator
from uhnas.search.selection import binary_tournament, rank_and_crowding, survive
from uhnas.search.space import (
    ACTIVATIONS,
    CHANNELS,
    DROPOUT_P,
    KERNELS,
    MAX_CONV,
    MAX_DENSE,
    MAX_MATMULS,
    POOL_KERNEL,
    WIDTHS,
)
from uhnas.seeding import derive_seed


@dataclass(frozen=True)
class MethodSetup:
    """What a method factory gets: the run configuration, the dataset's shapes and the frozen HV reference."""

    config: RunConfig
    input_shape: tuple[int, ...]
    num_classes: int
    hv_reference: tuple[float, float]  # (error, log10 nJ)
    out: Path | None = None  # the run directory (LLM methods keep their response cache and call log there)


class SearchMethod(Protocol):
    """One search strategy inside the generational engine."""

    name: str

    def propose(self, context: OperatorContext) -> Proposal:
        """One candidate for (context.generation, context.slot); raise ProposalError when none can be made."""
        ...

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None:
        """The engine refused the last proposal for this slot (duplicate, invalid) or propose raised."""
        ...

    def observe(self, records: Sequence[TrialRecord]) -> None:
        """A finished generation's records, in slot order (evaluated, failed, or slots with no valid proposal)."""
        ...

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """The next population from the current one followed by the new offspring (slot order)."""
        ...

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """End-of-generation hook; the result is stored with the generation and passed back as `notes`."""
        ...


MethodFactory = Callable[[MethodSetup], SearchMethod]


# ----------------------------------------------------------------------------- shared helpers


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


# ----------------------------------------------------------------------------- Optuna references

OPTUNA_NO_DROPOUT = 0.0  # the dropout choice that means no dropout layer
OPTUNA_SEED_MODULUS = 2**32  # Optuna samplers seed numpy's legacy RandomState, which takes 32-bit seeds


def suggest_architecture(trial: optuna.trial.BaseTrial, input_shape: tuple[int, ...], num_classes: int) -> Architecture:
    """Define-by-run encoding of the conventional space (`uhnas.search.space`): every value is one of its choices.

    Parameters: n_conv (0-MAX_CONV; image inputs only), conv{i}_channels (CHANNELS), conv{i}_kernel (KERNELS,
    'same' padding), conv{i}_pool (none | max | avg; skipped when the map is smaller than POOL_KERNEL), n_dense
    (0-MAX_DENSE, capped so the network has at most MAX_MATMULS matmul layers), dense{j}_width (WIDTHS),
    activation (shared), batchnorm (after every hidden matmul or none), dropout (0 = none, else one of DROPOUT_P,
    after every hidden dense layer).
    """
    image = len(input_shape) == 3
    n_conv = trial.suggest_int("n_conv", 0, MAX_CONV) if image else 0
    n_dense = trial.suggest_int("n_dense", 0, MAX_DENSE)
    function = trial.suggest_categorical("activation", list(ACTIVATIONS))
    batchnorm = trial.suggest_categorical("batchnorm", [False, True])
    dropout = trial.suggest_categorical("dropout", [OPTUNA_NO_DROPOUT, *DROPOUT_P])
    layers: list[Any] = []
    size = min(input_shape[1:]) if image else 0
    for i in range(n_conv):
        channels = trial.suggest_categorical(f"conv{i}_channels", list(CHANNELS))
        kernel = trial.suggest_categorical(f"conv{i}_kernel", list(KERNELS))
        pool = trial.suggest_categorical(f"conv{i}_pool", ["none", "max", "avg"])
        layers.append(Conv2d(type="conv2d", out_channels=channels, kernel=kernel, padding=kernel // 2))
        if batchnorm:
            layers.append(BatchNorm(type="batchnorm"))
        layers.append(Activation(type="activation", function=function))
        if pool != "none" and size >= POOL_KERNEL:
            max_pool = pool == "max"
            layers.append(
                MaxPool(type="maxpool", kernel=POOL_KERNEL) if max_pool else AvgPool(type="avgpool", kernel=POOL_KERNEL)
            )
            size //= POOL_KERNEL
    if image:
        layers.append(Flatten(type="flatten"))
    for j in range(min(n_dense, MAX_MATMULS - 1 - n_conv)):
        width = trial.suggest_categorical(f"dense{j}_width", list(WIDTHS))
        layers.append(Linear(type="linear", out_features=width))
        if batchnorm:
            layers.append(BatchNorm(type="batchnorm"))
        layers.append(Activation(type="activation", function=function))
        if dropout != OPTUNA_NO_DROPOUT:
            layers.append(Dropout(type="dropout", p=dropout))
    layers.append(Linear(type="linear", out_features=num_classes))
    return Architecture(layers=layers)


class OptunaMethod:
    """Proposals from an Optuna sampler over `suggest_architecture` (see module docstring)."""

    def __init__(
        self, name: str, setup: MethodSetup, make_sampler: Callable[[int], optuna.samplers.BaseSampler]
    ) -> None:
        self.name = name
        self.setup = setup
        self.make_sampler = make_sampler
        self.storage = optuna.storages.InMemoryStorage()
        with _quiet():
            optuna.create_study(storage=self.storage, study_name=name, directions=["minimize", "minimize"])
        self.pending: dict[tuple[int, int], optuna.trial.Trial] = {}

    def _study(self, seed: int) -> optuna.Study:
        with _quiet():
            return optuna.load_study(study_name=self.name, storage=self.storage, sampler=self.make_sampler(seed))

    def propose(self, context: OperatorContext) -> Proposal:
        """Ask a freshly seeded sampler for parameters and decode them into an architecture."""
        seed = (
            derive_seed(context.seed, "optuna", context.generation, context.slot, context.attempt) % OPTUNA_SEED_MODULUS
        )
        study = self._study(seed)
        with _quiet():
            trial = study.ask()
        self.pending[(context.generation, context.slot)] = trial
        try:
            arch = suggest_architecture(trial, self.setup.input_shape, self.setup.num_classes)
        except ValueError as error:
            raise ProposalError(f"cannot decode Optuna parameters: {str(error).splitlines()[0]}") from None
        return Proposal(arch, self.name, metadata={"params": dict(trial.params)})

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None:
        """Close the refused ask as FAIL so the sampler sees exactly what it saw in the original run."""
        trial = self.pending.pop((context.generation, context.slot), None)
        if trial is not None:
            with _quiet():
                trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def observe(self, records: Sequence[TrialRecord]) -> None:
        """Tell the sampler's study each accepted ask's outcome (objectives in (error, log10 nJ), violation)."""
        for record in records:
            trial = self.pending.pop((record.generation, record.slot), None)
            if trial is None:
                continue
            with _quiet():
                if record.failed or record.energy_nj is None or record.energy_nj <= 0:
                    trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                trial.set_constraint("violation", max(0.0, record.violation))
                trial.study.tell(trial, values=[float(record.error), math.log10(record.energy_nj)])  # type: ignore[arg-type]

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """NSGA-II survival (reporting only: the sampler keeps its own population)."""
        return nsga2_survival(candidates, size)

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """Optuna samplers keep no notes."""
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's logs and experimental/future warnings (library code never prints)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


# ----------------------------------------------------------------------------- built-in factories


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


def make_optuna_nsga2(setup: MethodSetup) -> SearchMethod:
    """Optuna's NSGAIISampler over `suggest_architecture`."""
    population = setup.config.population
    crossover_prob = setup.config.evolution.crossover_prob
    return OptunaMethod(
        "optuna-nsga2",
        setup,
        lambda seed: optuna.samplers.NSGAIISampler(
            population_size=population, crossover_prob=crossover_prob, seed=seed
        ),
    )


def make_optuna_tpe(setup: MethodSetup) -> SearchMethod:
    """Optuna's multivariate TPESampler over `suggest_architecture`, random for the first `population` asks."""
    startup = setup.config.population
    return OptunaMethod(
        "optuna-tpe",
        setup,
        lambda seed: optuna.samplers.TPESampler(n_startup_trials=startup, multivariate=True, group=True, seed=seed),
    )


# ----------------------------------------------------------------------------- registry

ENTRY_POINT_GROUP = "uhnas.methods"


@lru_cache(maxsize=1)
def installed_methods() -> tuple[tuple[str, str], ...]:
    """(name, "module:factory") of every `uhnas.methods` entry point, sorted; nothing is imported."""
    return tuple(sorted({point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}.items()))


_REGISTERED: dict[str, MethodFactory | str] = {}  # in-process additions (tests, notebooks); they win


def register_method(name: str, factory: MethodFactory | str) -> None:
    """Add (or replace) a method under `name` in this process: a factory or a lazy "module:factory" path."""
    _REGISTERED[name] = factory


def unregister_method(name: str) -> None:
    """Remove an in-process registration (installed methods leave with their package)."""
    _REGISTERED.pop(name, None)


def method_names() -> list[str]:
    """Every installed or registered method name, sorted."""
    return sorted({*dict(installed_methods()), *_REGISTERED})


def _entry(name: str) -> MethodFactory | str | None:
    """The registered factory or installed "module:factory" path of a method, or None."""
    return _REGISTERED.get(name) or dict(installed_methods()).get(name)


def load_factory(name: str) -> MethodFactory:
    """The factory of the named method, importing its module only now.

    MethodError (one line) for an unknown name, listing the known ones, or for a plugin that cannot be imported,
    naming its entry point and the import error. Any other error while importing a plugin is a bug in it and keeps
    its traceback, with a note naming the method.
    """
    entry = _entry(name)
    if entry is None:
        raise MethodError(f"unknown method {name!r}; installed: {', '.join(method_names())}")
    if not isinstance(entry, str):
        return entry
    try:
        factory = EntryPoint(name=name, value=entry, group=ENTRY_POINT_GROUP).load()
    except (ImportError, AttributeError) as error:  # a missing module or dependency, a wrong name
        raise MethodError(f"method {name!r} cannot be loaded from {entry}: {_one_line(error)}") from None
    except Exception as error:
        error.add_note(f"while loading method {name!r} from {entry}")
        raise
    if not callable(factory):
        raise MethodError(f"method {name!r}: {entry} is not a factory (got {type(factory).__name__})")
    return factory  # type: ignore[no-any-return]


def _one_line(error: BaseException) -> str:
    """'Type: first line of the message'."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def make_method(name: str, setup: MethodSetup) -> SearchMethod:
    """Build the named method (see `load_factory` for the errors)."""
    return load_factory(name)(setup)


__all__ = [
    "ENTRY_POINT_GROUP",
    "MethodError",
    "MethodFactory",
    "MethodSetup",
    "NSGA2",
    "OptunaMethod",
    "RandomSearch",
    "RegularizedEvolution",
    "SearchMethod",
    "installed_methods",
    "load_factory",
    "make_method",
    "make_nsga2",
    "make_optuna_nsga2",
    "make_optuna_tpe",
    "make_random",
    "make_regevo",
    "method_names",
    "nsga2_survival",
    "objective_arrays",
    "register_method",
    "unregister_method",
    "suggest_architecture",
]

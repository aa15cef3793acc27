"""Optuna's own samplers as outside references: NSGAIISampler and TPESampler over the conventional space.

See `uhnas.search.methods` for how they stay reproducible and resumable; registered as `uhnas.methods` entry points.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import optuna

from uhnas.arch import Architecture
from uhnas.arch.model import Activation, ActivationName, AvgPool, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool
from uhnas.errors import ProposalError
from uhnas.records import TrialRecord
from uhnas.search.conventional import nsga2_survival
from uhnas.search.methods import MethodSetup, SearchMethod
from uhnas.search.operators.base import OperatorContext, Proposal
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
    function = cast(ActivationName, trial.suggest_categorical("activation", list(ACTIVATIONS)))
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


__all__ = ["OptunaMethod", "make_optuna_nsga2", "make_optuna_tpe", "suggest_architecture"]

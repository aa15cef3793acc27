"""Search methods by name: how parents are chosen, which operator is asked, and who survives a generation.

Every method runs in the same generational engine with the same budget (population + generations x offspring
evaluations), the same store and the same dedup, so methods compare fairly. A method is built from a
`MethodSetup` by a factory found the way backends are: the entry-point group `uhnas.methods` (name ->
"module:factory"), loaded only when that method is made, so a conventional run never imports the LLM methods.
uhnas declares its own methods there; a third-party method is a package declaring one more entry point, and
`register_method` adds one in-process (tests, notebooks).

Built-in methods live in `uhnas.search.conventional` (nsga2, random, regevo) and
`uhnas.search.optuna_methods` (optuna-nsga2, optuna-tpe) and the LLM ones in `uhnas.search.llm_methods`; this
module is the protocol and the registry only, so listing or loading one method imports nothing else.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from uhnas.errors import MethodError

if TYPE_CHECKING:  # annotations only: listing or loading a method imports nothing but the method's own module
    from uhnas.config import RunConfig
    from uhnas.records import TrialRecord
    from uhnas.search.operators.base import OperatorContext, Proposal


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
    "MethodFactory",
    "MethodSetup",
    "SearchMethod",
    "installed_methods",
    "load_factory",
    "make_method",
    "method_names",
    "register_method",
    "unregister_method",
]

"""The LLM-guided search methods: `uhnas` and the LLM-NAS baselines `llmatic` and `genius`.

All three run in the same engine with the same budget, dedup, store and evaluation as every other method; they
differ only in how candidates are proposed and who survives.

- ``uhnas``: NSGA-II selection (binary tournament, crossover with probability ``evolution.crossover_prob``,
  constrained NSGA-II survival) with the `LLMOperator` (the init / mutate / crossover / reflect prompt
  families of `uhnas.search.operators.llm`): the model initialises the population (one call per slot), mutates a
  parent it sees with clean/noisy accuracy, robustness drop, energy breakdown and violations (aiming at a sparse
  energy band of the front with ``llm.steering: energy``), crosses two parents over, and rewrites a bounded
  knowledge base of design heuristics at the end of every generation. The system prompt is ``llm.system_prompt``
  (hardware-aware default / generic / minimal: the paper's ablation). Every slot costs at most
  ``llm.max_calls_per_slot`` calls; a slot the model cannot fill within them is filled by the conventional
  operator, recorded as "random-<kind>(llm-fallback)" (`uhnas.search.operators.llm_ask.SlotBudget`).
- ``llmatic`` (after Nasir et al., 2023, "LLMatic"): quality-diversity. A MAP-Elites archive over two descriptors
  keeps the best candidate per cell (feasible before infeasible, then smaller violation, lower error, lower energy):

    depth   number of matmul layers (conv2d + linear, classifier included), bins 1, 2, ..., 7, 8+  (8 bins)
    size    half-decade bins of MACs per inference: floor(2 * log10(MACs)), clamped to 4..15, i.e.
            < 10^2.5, [10^2.5, 10^3), ..., >= 10^7.5                                          (12 bins)

  Every offspring takes a uniformly random elite and one fixed LLMatic mutation instruction (llmatic_mutate.j2,
  index from the slot's generator) under the generic system prompt, without scores or hardware context; with
  probability ``LLMATIC_CROSSOVER_PROB`` (0.1) it crosses two distinct random elites instead (crossover.j2 with the
  parents' layers only). The initial population comes from the LLM init prompt under the generic system prompt.
  The reported population is the archive's elites (up to ``population`` of them, in NSGA-II order).
- ``genius`` (after Zheng et al., 2023, "Can GPT-4 perform neural architecture search?"): one chain of iterative
  refinement (genius.j2). Every proposal shows the model its own earlier proposals, oldest first (the prompt shows
  the last 20), with their error, energy and feasibility, and asks for a better one; proposals made earlier in the
  same generation are shown as not yet scored. NSGA-II survival is only used for reporting.

The client: ``llm.provider`` "openai" talks to any OpenAI-compatible server (``llm.base_url``; OpenAI, vLLM,
Ollama's /v1, llama.cpp, LM Studio, ...) and logs every call into ``<run dir>/llm.db`` (response cache and call
log). "replay:<run dir>" answers only from that run's llm.db, never from the network, and logs into this run's
llm.db. The endpoint and model are checked when the method is built, before any evaluation. The client's
settings are derived from the validated `llm:` section (`LLMConfig.from_section`: one set of defaults, in
`uhnas.config.LLMSection`). This module is the only one that imports the client, hence `openai`: the engine
imports it only for an LLM-guided method, so a conventional run never loads the SDK.

Faults: the prompt families turn an answer that stays invalid after its repair turns into a ProposalError (the
engine asks again) until the slot's calls are spent, then the conventional fallback fills the slot. Every other
LLM error — BudgetExceeded, LLMRetriesExhausted, CacheMiss, LLMUnavailable, a rejected request, a template bug —
stops the run: it propagates out of `run_search` with every completed trial stored, and resuming (e.g. with a
larger ``llm.budget_tokens``) continues where it stopped, re-deriving the earlier proposals from the response
cache.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uhnas.arch import analyze
from uhnas.config import LLMSection
from uhnas.hardware.registry import load_backend
from uhnas.llm.cache import ResponseCache
from uhnas.llm.client import LLMClient, LLMConfig
from uhnas.llm.errors import LLMError
from uhnas.llm.prompting import compact_layers, llmatic_instructions
from uhnas.records import TrialRecord
from uhnas.search.conventional import NSGA2, nsga2_survival
from uhnas.search.methods import MethodSetup, SearchMethod
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.operators.llm import (
    GeniusPrompt,
    LLMAsk,
    LLMaticCrossoverPrompt,
    LLMaticInitPrompt,
    LLMaticMutatePrompt,
    LLMOperator,
)

__all__ = [
    "LLMATIC_CROSSOVER_PROB",
    "LLMNotConfigured",
    "LLMatic",
    "Genius",
    "UHNAS",
    "descriptor",
    "make_genius",
    "make_llmatic",
    "make_uhnas",
    "map_elites",
    "open_client",
]

LLM_DB = "llm.db"
REPLAY_PREFIX = "replay:"
LLMATIC_CROSSOVER_PROB = 0.1
OPERATOR_NAMES = {"uhnas": "llm", "llmatic": "llmatic", "genius": "genius"}  # method -> "<name>.<label>" prefix
DEPTH_BINS = 8  # matmul layers 1..7, 8+
MACS_HALF_DECADES = (4, 15)  # floor(2 log10 MACs) clamped to this range: < 10^2.5 ... >= 10^7.5


class LLMNotConfigured(LLMError, ValueError):
    """An LLM-guided method was asked for without an `llm:` section."""


# ----------------------------------------------------------------------------- the client


def _replay_source(provider: str) -> Path:
    """The llm.db a "replay:<run dir>" provider reads (a path to the file itself is accepted too)."""
    target = Path(provider[len(REPLAY_PREFIX) :]).expanduser()
    source = target / LLM_DB if target.is_dir() else target
    if not source.is_file():
        raise LLMError(f"llm.provider {provider}: no {LLM_DB} to replay at {source}")
    return source


def open_client(section: LLMSection, out: Path) -> LLMClient:
    """A client logging into <out>/llm.db (replaying another run's log for "replay:<dir>"), checked at once.

    When the check fails (unreachable endpoint, unknown model, bad key) nothing is left behind: the log file and
    the run directory, if this call created them, are removed again."""
    config = LLMConfig.from_section(section)
    out = Path(out)
    created = not out.exists()
    db = out / LLM_DB
    fresh = not db.exists()
    if section.provider.startswith(REPLAY_PREFIX):
        cache = ResponseCache(db, mode="replay", source=_replay_source(section.provider))
    else:
        shared = None
        if section.shared_cache is not None:
            shared = Path(section.shared_cache).expanduser()
            if not shared.is_file():
                raise LLMError(f"llm.shared_cache {shared} does not exist (point it at an earlier run's {LLM_DB})")
        cache = ResponseCache(db, mode="readwrite", source=shared)
    client = LLMClient(config, cache)
    try:
        client.check()  # unreachable endpoint, bad key or unknown model: one line, before any evaluation
    except BaseException:
        client.close()
        cache.close()
        _remove_fresh(out, db, created=created, fresh=fresh)
        raise
    return client


def _remove_fresh(out: Path, db: Path, *, created: bool, fresh: bool) -> None:
    """Remove the call log (and its WAL files) and the run directory that a failed open_client created."""
    if fresh:
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            path.unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()  # only when empty: never anything else
        except OSError:
            pass


def _setup_client(setup: MethodSetup, method: str) -> LLMClient:
    """The method's client, or the one-line how-to when the run has no language model configured."""
    section = setup.config.llm
    if section is None:
        raise LLMNotConfigured(
            f"method '{method}' needs a language model: pass --llm openai --model NAME [--base-url URL] "
            "(e.g. Ollama: --base-url http://localhost:11434/v1) or add an llm: section to the config"
        )
    if setup.out is None:
        raise LLMError(f"method '{method}' needs a run directory for its LLM response cache ({LLM_DB})")
    return open_client(section, setup.out)


def _shared_ask(setup: MethodSetup, method: str) -> LLMAsk:
    """The shared ask helper of a method's prompt families: its client, the backend's check and energy, the run's
    prompt settings; trials are named "<name>.<label>" with the method's operator name."""
    client = _setup_client(setup, method)
    config, section = setup.config, setup.config.llm
    assert section is not None
    backend = load_backend(config.backend, list(config.backend_overrides))
    name = OPERATOR_NAMES[method]
    return LLMAsk.from_section(
        client, section, check=backend.check, energy=backend.energy, epochs=config.training.epochs, name=name,
        max_attempts=config.evolution.max_attempts,
    )  # fmt: skip


def _close(client: LLMClient) -> None:
    """Close the HTTP connections and the call log (checkpointing its WAL)."""
    client.close()
    client.cache.close()


# ----------------------------------------------------------------------------- shared method behaviour


class _LLMMethod:
    """Shares one LLMAsk among the method's prompt families, forgets refused proposals, closes the client at the end.

    A slot whose answers stay invalid raises ProposalError, which the engine catches (it asks again). Client errors
    (budget spent, retries exhausted, replay diverged, template bugs) are LLMErrors, which the engine does not
    catch: they stop the run with every completed trial stored.
    """

    name = "llm"

    def __init__(self, ask: LLMAsk) -> None:
        self.ask = ask
        self._finalizer = weakref.finalize(self, _close, ask.client)

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None:
        """The engine refused the last proposal for this slot: it is no longer pending, and a later attempt of the
        slot sees its layers as refused (a duplicate: the engine refuses only those and invalid shapes)."""
        self.ask.pending.forget(context)
        if proposal is not None:
            self.ask.refuse(context, compact_layers(proposal.arch.model_dump(mode="json")), "duplicate")

    def observe(self, records: Sequence[TrialRecord]) -> None:
        """Results are read from the context."""

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """The operator's notes (uhnas) or None, with the LLM usage so far."""
        note = self._reflect(context)
        usage = self.ask.client.usage.total
        note = {
            **(note or {}),
            "llm_usage": {
                "calls": usage.calls,
                "failed": usage.failed,
                "tokens": usage.total_tokens,
                "replayed_calls": usage.replayed_calls,
                "invalid_answers": self.ask.invalid_answers,
                "fallback_slots_in_a_row": self.ask.slots.streak,
            },
        }
        return note

    def _reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        """Release the client (idempotent)."""
        self._finalizer()


class UHNAS(_LLMMethod):
    """NSGA-II selection with the LLM operator (see module docstring)."""

    name = "uhnas"

    def __init__(self, ask: LLMAsk, system_prompt: str, crossover_prob: float) -> None:
        super().__init__(ask)
        self.operator = LLMOperator(ask, system_prompt)
        self.nsga2 = NSGA2(self.operator, crossover_prob)

    def propose(self, context: OperatorContext) -> Proposal:
        return self.nsga2.propose(context)

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """NSGA-II survival."""
        return nsga2_survival(candidates, size)

    def _reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        return self.operator.reflect(context)


def descriptor(record: TrialRecord, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """LLMatic's MAP-Elites cell of an evaluated record: (depth bin, half-decade MACs bin); see module docstring."""
    depth = len(analyze(record.architecture, input_shape, num_classes).matmuls)  # type: ignore[arg-type]
    macs = max(1, int((record.evaluation or {}).get("macs") or 1))
    lo, hi = MACS_HALF_DECADES
    return min(max(depth, 1), DEPTH_BINS), min(max(math.floor(2 * math.log10(macs)), lo), hi)


def _elite_key(record: TrialRecord) -> tuple[float, ...]:
    """Smaller is better: feasible first (then smaller violation), lower error, lower energy, older."""
    return (float(record.violation > 0), max(0.0, record.violation), float(record.error),  # type: ignore[arg-type]
            float(record.energy_nj), float(record.number))  # type: ignore[arg-type]  # fmt: skip


def map_elites(
    records: Sequence[TrialRecord], cell_of: Callable[[TrialRecord], tuple[int, int]]
) -> dict[tuple[int, int], TrialRecord]:
    """The archive: the best evaluated record per descriptor cell."""
    archive: dict[tuple[int, int], TrialRecord] = {}
    for record in records:
        if record.failed or record.arch is None:
            continue
        cell = cell_of(record)
        if cell not in archive or _elite_key(record) < _elite_key(archive[cell]):
            archive[cell] = record
    return archive


class LLMatic(_LLMMethod):
    """Quality-diversity with a fixed mutation prompt (see module docstring)."""

    name = "llmatic"

    def __init__(self, ask: LLMAsk, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(ask)
        self.init = LLMaticInitPrompt(ask)
        self.mutate = LLMaticMutatePrompt(ask)
        self.crossover = LLMaticCrossoverPrompt(ask)
        self.input_shape, self.num_classes = input_shape, num_classes
        self.instructions = len(llmatic_instructions())
        self.seen: list[TrialRecord] = []
        self._cells: dict[str, tuple[int, int]] = {}

    def cell(self, record: TrialRecord) -> tuple[int, int]:
        """Descriptor cell for the run's dataset (memoised by architecture hash)."""
        key = record.hash or ""
        if key not in self._cells:
            self._cells[key] = descriptor(record, self.input_shape, self.num_classes)
        return self._cells[key]

    def elites(self, records: Sequence[TrialRecord]) -> list[TrialRecord]:
        """The archive's elites in cell order."""
        archive = map_elites(records, self.cell)
        return [archive[c] for c in sorted(archive)]

    def propose(self, context: OperatorContext) -> Proposal:
        elites = self.elites(context.history)
        if context.generation == 0 or not elites:
            return self.init.propose(context)
        rng = context.rng
        if len(elites) > 1 and rng.random() < LLMATIC_CROSSOVER_PROB:
            i, j = rng.choice(len(elites), size=2, replace=False).tolist()
            return self.crossover.propose(context, elites[i], elites[j])
        parent = elites[int(rng.integers(len(elites)))]
        return self.mutate.propose(context, parent, int(rng.integers(self.instructions)))

    def observe(self, records: Sequence[TrialRecord]) -> None:
        """Keep every record: the archive is over the whole run."""
        self.seen.extend(records)

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """The archive's elites (at most `size`, NSGA-II order)."""
        return nsga2_survival(self.elites(self.seen), size)


class Genius(_LLMMethod):
    """One chain of iterative refinement (see module docstring)."""

    name = "genius"

    def __init__(self, ask: LLMAsk) -> None:
        super().__init__(ask)
        self.refine = GeniusPrompt(ask)

    def propose(self, context: OperatorContext) -> Proposal:
        """The next link of the chain (or the initial population's conventional top-up)."""
        return self.refine.propose(context, context.history)

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        """NSGA-II survival (reporting only)."""
        return nsga2_survival(candidates, size)


# ----------------------------------------------------------------------------- factories


def make_uhnas(setup: MethodSetup) -> SearchMethod:
    """The `uhnas` method of a run (see module docstring)."""
    ask = _shared_ask(setup, "uhnas")
    assert setup.config.llm is not None  # _shared_ask said how to configure one otherwise
    return UHNAS(ask, setup.config.llm.system_prompt, setup.config.evolution.crossover_prob)


def make_llmatic(setup: MethodSetup) -> SearchMethod:
    """The `llmatic` baseline of a run."""
    return LLMatic(_shared_ask(setup, "llmatic"), setup.input_shape, setup.num_classes)


def make_genius(setup: MethodSetup) -> SearchMethod:
    """The `genius` baseline of a run."""
    return Genius(_shared_ask(setup, "genius"))

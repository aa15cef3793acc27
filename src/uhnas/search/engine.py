"""The generational search loop: propose → validate → dedup → evaluate → store → select, resumable and observable.

Generation 0 fills the initial population (`population` slots); every later generation proposes `offspring`
slots from the population as it stood at the generation's start, evaluates them in parallel, and lets the
method choose the next population. Every slot ends as exactly one stored trial, so a run holds exactly
population + generations x offspring trials.

Reproducibility and resume: every random choice comes from `uhnas.seeding` streams derived from
(seed, generation, slot, attempt), and a generation's proposals depend only on the records of earlier
generations and earlier slots. Resuming therefore replays the run from its store: proposals are re-derived
(cheap; LLM operators replay from their response cache), stored slots reuse their stored results, and only
the slots that were never stored are evaluated. No RNG state is saved, no completed evaluation is repeated, and
a resumed run makes the same choices as an uninterrupted one.

Dedup: a proposal whose canonical hash was already evaluated or proposed is refused and the method is asked
again with a fresh stream (attempt + 1), up to `evolution.max_attempts`; a slot without an acceptable proposal
is stored as a FAIL trial listing why every attempt was refused.

Hypervolume: in the normalised space (error, log10 nJ) against a reference point frozen when the run starts:
error 1.0 and the highest backend energy among networks that bound the conventional search space (its corner
networks and fixed random draws, `uhnas.search.reference`) plus `metrics.DEFAULT_ENERGY_MARGIN_DECADES` decade.
Costlier networks add nothing; the point depends only on backend and dataset, so values compare across
generations, methods and seeds.

Scheduling: a generation's jobs are submitted costliest first (MACs + parameters), so parallel workers finish it
together instead of waiting on one long candidate started last.

The engine never prints: it reports through `progress(event)` callbacks (see the event classes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uhnas
from uhnas.arch import Architecture, ArchitectureError, analyze, arch_hash, to_json
from uhnas.config import RunConfig, config_differences
from uhnas.errors import ProposalError, SearchError
from uhnas.hardware.base import Backend
from uhnas.hardware.registry import load_backend
from uhnas.records import TrialRecord, feasible_front, front_hypervolume, objective_accuracy
from uhnas.search.events import (
    CandidateDone,
    Event,
    GenerationDone,
    GenerationProposing,
    GenerationStarted,
    ProgressCallback,
    RunFinished,
    RunStarted,
)
from uhnas.search.jobs import BUG, USER_ERROR, EvalSettings, Executor, Job, JobResult
from uhnas.search.methods import MethodSetup, SearchMethod, make_method
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.reference import hv_reference
from uhnas.search.summary import run_summary
from uhnas.seeding import numpy_rng
from uhnas.store import RunStore

JOB_ID_STRIDE = 1_000_000  # a job's id is generation * JOB_ID_STRIDE + slot (stable across resumes)
RECENT = 16  # candidates shown to operators as `recent`
RESUME_EXEMPT = (  # config keys that may change on resume (where and how, not what)
    "executor.",
    "storage",
    "study_name",
    "llm.budget_tokens",
    "llm.budget_usd",
    "llm.base_url",
    "llm.api_key_env",
    "llm.timeout_s",
    "llm.max_retries",
)


@dataclass
class RunResult:
    """What run_search returns: every record in (generation, slot) order, the final population and front."""

    out: Path
    records: list[TrialRecord]
    population: list[TrialRecord]
    front: list[TrialRecord]
    hypervolume: float
    summary: dict[str, Any]
    elapsed_s: float
    engine_seconds: float


# ----------------------------------------------------------------------------- proposals


@dataclass
class SlotChoice:
    """The accepted proposal for a slot (or None), its hash, the attempt it came from and why others were refused."""

    proposal: Proposal | None
    key: str | None
    attempt: int
    rejected: list[str] = field(default_factory=list)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def propose_slot(
    method: SearchMethod,
    base: OperatorContext,
    slot: int,
    known: dict[str, tuple[int, int]],
    max_attempts: int,
) -> SlotChoice:
    """Ask the method until it proposes a valid architecture not seen before (bounded attempts)."""
    rejected: list[str] = []
    for attempt in range(max_attempts):
        rng = numpy_rng(base.seed, "propose", base.generation, slot, attempt)
        context = base.with_attempt(slot, attempt, rng, rejected)
        try:
            proposal = method.propose(context)
        except (ProposalError, ArchitectureError) as error:  # expected: no valid proposal this attempt
            reason = _one_line(error)
            method.rejected(context, None, reason)
            rejected.append(reason)
            continue
        try:
            analyze(proposal.arch, base.input_shape, base.num_classes)
        except ArchitectureError as error:
            reason = f"invalid architecture from {proposal.operator}: {error}"
            method.rejected(context, proposal, reason)
            rejected.append(reason)
            continue
        key = arch_hash(proposal.arch)
        if key in known:
            generation, other = known[key]
            reason = f"duplicate of generation {generation} slot {other} ({key}) from {proposal.operator}"
            method.rejected(context, proposal, reason)
            rejected.append(reason)
            continue
        return SlotChoice(proposal, key, attempt, rejected)
    return SlotChoice(None, None, max_attempts, rejected)


def estimated_cost(arch: Architecture, input_shape: tuple[int, ...], num_classes: int) -> int:
    """A relative evaluation cost (MACs drive training, matrix sizes drive device simulation) to schedule by."""
    summary = analyze(arch, input_shape, num_classes)
    return summary.macs + summary.params


class EvaluationBug(RuntimeError):
    """An evaluation raised an exception that is a bug in uhnas or a library; carries the worker's traceback."""


def check_result(result: JobResult, template: TrialRecord) -> None:
    """Stop the run on an evaluation that failed for a reason no other candidate would escape.

    A `UhnasError` in the worker (missing dataset, bad backend, no CUDA) is a one-line SearchError; any other
    exception is an EvaluationBug with the worker's traceback. Stored trials stay, so the run resumes once fixed.
    """
    kind = result.details.get("kind")
    where = f"candidate {template.generation}.{template.slot}"
    if kind == USER_ERROR:
        raise SearchError(f"{where}: {result.reason}")
    if kind == BUG:
        trace = "\n".join(result.details.get("traceback") or [])
        raise EvaluationBug(f"evaluating {where} ({template.hash}) raised {result.reason}\n{trace}")


class FailureStreak:
    """Stops a run whose evaluations keep failing with the same error instead of spending its budget on them.

    Counts consecutive candidates whose evaluation produced no result (timeout, crashed or killed worker,
    memory limit) with an identical reason; a result, or a failure the evaluation itself reports (e.g. training
    diverged), resets the count.
    """

    def __init__(self, limit: int | None, out: Path) -> None:
        self.limit, self.out = limit, out
        self.reason: str | None = None
        self.count = 0

    def add(self, result: JobResult) -> None:
        """Count one stored result; SearchError when `limit` identical failures came in a row."""
        if not result.failed or result.evaluation is not None:
            self.reason, self.count = None, 0
            return
        self.count = self.count + 1 if result.reason == self.reason else 1
        self.reason = result.reason
        if self.limit is not None and self.count >= self.limit:
            raise SearchError(
                f"stopped after {self.count} evaluations in a row failed with the same error: {self.reason} "
                f"(their trials are stored; fix the cause, then `uhnas search --resume {self.out}`)"
            )


def finish_record(template: TrialRecord, result: JobResult, objective: str) -> TrialRecord:
    """The stored record of an evaluated candidate: objectives from the evaluation, or FAIL with the reason."""
    ev = result.evaluation
    record = TrialRecord(**{**template.__dict__})
    record.evaluation, record.wall_seconds = ev, result.wall_seconds
    if result.failed or ev is None:
        record.state, record.reason = "FAIL", result.reason or "evaluation failed"
        return record
    accuracy = objective_accuracy(ev, objective)
    energy = ev.get("energy_nj")
    if accuracy is None or energy is None or not math.isfinite(energy) or energy <= 0:
        record.state, record.reason = "FAIL", f"no usable objectives (accuracy {accuracy}, energy {energy} nJ)"
        return record
    record.state = "COMPLETE"
    record.error, record.energy_nj = 1.0 - float(accuracy), float(energy)
    record.violation = float(ev.get("total_violation") or 0.0)
    return record


# ----------------------------------------------------------------------------- the run


def _check_resumable(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse a resume whose config differs in anything but executor/storage settings or a larger budget."""
    diffs = [d for d in config_differences(old, new) if not d.startswith(RESUME_EXEMPT)]
    if "generations" in diffs and int(new.get("generations", 0)) >= int(old.get("generations", 0)):
        diffs.remove("generations")
    if diffs:
        raise SearchError(
            f"{out}: cannot resume with a different configuration: {', '.join(diffs)} differ (only generations "
            "may grow)"
        )


def make_run_executor(config: RunConfig) -> Executor:
    """The executor the config asks for (process workers with hard timeouts by default)."""
    from uhnas.search.executor import make_executor

    e = config.executor
    return make_executor(
        e.kind,
        workers=e.workers,
        timeout_s=e.timeout_s,
        memory_limit_mb=e.memory_limit_mb,
        ray_address=e.ray_address,
        num_cpus=e.num_cpus,
        num_gpus=e.num_gpus,
    )


def _dataset_shape(config: RunConfig) -> tuple[tuple[int, ...], int]:
    """Input shape and class count of the run's dataset (without loading it: workers load the data)."""
    from uhnas.data import DatasetError, dataset_spec

    try:
        shape, classes = dataset_spec(config.dataset)
    except DatasetError as error:
        raise SearchError(str(error)) from None
    return tuple(shape), int(classes)


class _Search:
    """State of one run_search call: store, method, population, known hashes, timers."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        store: RunStore,
        backend: Backend,
        shape: tuple[tuple[int, ...], int],
        progress: ProgressCallback | None,
        executor: Executor | None,
        start: float,
    ) -> None:
        self.config = config
        self.backend = backend
        self.card = backend.describe()
        self.input_shape, self.num_classes = shape
        self.out = out
        self.store = store
        self.progress = progress
        self.executor = executor
        self.own_executor = executor is None
        self.start = start
        self.waiting_s = 0.0  # time blocked on evaluations (executor start-up and run, minus our callbacks)
        self.evaluated_here = 0
        self.failures = FailureStreak(config.executor.max_identical_failures, out)
        self.history: list[TrialRecord] = []
        self.population: list[TrialRecord] = []
        self.known: dict[str, tuple[int, int]] = {}
        self.notes: list[dict[str, Any]] = []
        self.done = 0
        self.method: SearchMethod | None = None
        self.fresh_reference: dict[str, Any] | None = None  # computed before the store exists (new runs)

    # -- helpers

    def emit(self, event: Event) -> None:
        if self.progress is not None:
            self.progress(event)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def engine_seconds(self) -> float:
        return self.elapsed() - self.waiting_s

    def eta(self) -> float | None:
        remaining = self.config.budget - self.done
        if remaining <= 0:
            return 0.0
        if self.evaluated_here == 0:
            return None
        return self.elapsed() / self.evaluated_here * remaining

    def context(self, generation: int) -> OperatorContext:
        """The operator context at the start of a generation (slot and rng are set per attempt)."""
        c = self.config
        return OperatorContext(
            generation=generation,
            slot=-1,
            attempt=0,
            rng=numpy_rng(c.seed, "context", generation),
            seed=c.seed,
            dataset=c.dataset,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            backend=self.card,
            objective=c.objective,
            population=tuple(self.population),
            front=tuple(feasible_front(self.history)),
            recent=tuple(self.history[-RECENT:]),
            history=tuple(self.history),
            is_known=self.known.__contains__,
            generations=c.generations,
            offspring=c.offspring,
            population_size=c.population,
            notes=tuple(self.notes),
        )

    def ensure_executor(self) -> Executor:
        if self.executor is None:
            t0 = time.perf_counter()
            self.executor = make_run_executor(self.config)
            self.waiting_s += time.perf_counter() - t0
        return self.executor

    def close(self) -> None:
        if self.own_executor and self.executor is not None:
            self.executor.close()
        close_method = getattr(self.method, "close", None)  # optional: methods holding clients or files
        if close_method is not None:
            close_method()

    # -- setup

    def setup(self) -> None:
        """Open or create the store, check a resume, load the backend and freeze the HV reference."""
        c = self.config
        meta = self.store.metadata()
        self.resumed = "hv_reference" in meta  # set once the run's metadata is complete
        if self.resumed:
            _check_resumable(self.out, meta["config"], c.to_dict())
            self.reference = tuple(meta["hv_reference"]["point"])
        else:
            ref = self.fresh_reference or hv_reference(self.backend, self.input_shape, self.num_classes)
            self.reference = tuple(ref["point"])
            self.store.set("backend_card", self.card.to_dict())
            self.store.set("version", uhnas.__version__)
            self.store.set("seed", c.seed)
            self.store.set("method", c.method)
            self.store.set("objective_names", ["error", "energy_nj"])
            self.store.set(
                "objective",
                {"error": f"1 - {c.objective} validation accuracy", "energy_nj": "energy per inference, nJ"},
            )
            self.store.set("hv_reference", ref)  # last: its presence marks complete metadata
        self.store.set("config", c.to_dict())
        self.store.write_run_file(c.to_dict())
        self.store.set("budget", c.budget)
        self.store.set("finished", False)
        self.settings = EvalSettings.from_config(c)
        if self.method is None:
            self.method = make_method(
                c.method, MethodSetup(c, self.input_shape, self.num_classes, self.reference, self.out)
            )  # type: ignore[arg-type]
        self.stored = {(r.generation, r.slot): r for r in self.store.records()}
        self.log = {int(e["generation"]): e for e in self.store.generation_log()}
        self.prior_elapsed = float(meta.get("elapsed_s", 0.0))
        self.done = len(self.stored)

    # -- one generation

    def generation(self, g: int) -> None:
        c = self.config
        method = self.method
        assert method is not None, "setup() makes the method"
        slots = c.population if g == 0 else c.offspring
        if g not in self.log:  # a generation finished before a resume is replayed silently
            self.emit(GenerationProposing(g, c.generations, slots))
        base = self.context(g)
        records: dict[int, TrialRecord] = {}
        templates: dict[int, TrialRecord] = {}
        jobs: list[Job] = []
        costs: dict[int, int] = {}
        for slot in range(slots):
            choice = propose_slot(method, base, slot, self.known, c.evolution.max_attempts)
            existing = self.stored.get((g, slot))
            if existing is not None:
                records[slot] = existing
                if existing.hash:
                    self.known[existing.hash] = (g, slot)
                continue
            if choice.proposal is None or choice.key is None:
                last = choice.rejected[-1] if choice.rejected else "no proposal"
                record = TrialRecord(
                    generation=g,
                    slot=slot,
                    state="FAIL",
                    attempt=choice.attempt,
                    rejected=choice.rejected,
                    seed=c.seed,
                    reason=f"no valid new architecture after {choice.attempt} attempts; last: {last}",
                )
                records[slot] = self.store_record(record)
                continue
            self.known[choice.key] = (g, slot)
            p = choice.proposal
            templates[g * JOB_ID_STRIDE + slot] = TrialRecord(
                generation=g,
                slot=slot,
                operator=p.operator,
                parents=tuple(p.parents),
                rationale=p.rationale,
                metadata=dict(p.metadata),
                arch=p.arch.model_dump(mode="json"),
                hash=choice.key,
                attempt=choice.attempt,
                rejected=choice.rejected,
                seed=c.seed,
            )
            jobs.append(Job(g * JOB_ID_STRIDE + slot, to_json(p.arch, indent=None), self.settings))
            costs[g * JOB_ID_STRIDE + slot] = estimated_cost(p.arch, self.input_shape, self.num_classes)
        jobs.sort(key=lambda job: (-costs[job.job_id], job.job_id))  # longest first: shortest generation makespan
        finished = g in self.log and len(records) == slots
        if not finished:
            self.emit(GenerationStarted(g, c.generations, slots, len(jobs), self.done, c.budget))
        if jobs:
            self.evaluate(jobs, templates, records)
        ordered = [records[s] for s in range(slots)]
        method.observe(ordered)
        self.history.extend(ordered)
        candidates = self.population + [r for r in ordered if r.arch is not None]
        self.population = method.survive(candidates, c.population)
        note = method.reflect(self.context(g))
        if note is not None:
            self.notes.append({"generation": g, **note})
        if not finished:
            self.close_generation(g, ordered, note)

    def evaluate(self, jobs: list[Job], templates: dict[int, TrialRecord], records: dict[int, TrialRecord]) -> None:
        """Run the jobs (costliest first, so workers finish a generation together); store each result as it arrives."""
        callback_s = 0.0

        def on_result(result: JobResult) -> None:
            nonlocal callback_s
            t0 = time.perf_counter()
            template = templates.pop(result.job_id, None)
            if template is not None:
                check_result(result, template)  # a setup error or a bug stops the run; this candidate stays unstored
                record = finish_record(template, result, self.config.objective)
                records[record.slot] = self.store_record(record)
                self.evaluated_here += 1
                self.failures.add(result)
            callback_s += time.perf_counter() - t0

        executor = self.ensure_executor()
        t0 = time.perf_counter()
        results = executor.run(jobs, on_result)
        self.waiting_s += time.perf_counter() - t0 - callback_s
        for result in results:  # executors that return results without calling back
            if result.job_id in templates:
                on_result(result)
        for job_id in list(templates):
            failed = JobResult(job_id, None, True, "the executor returned no result")
            on_result(failed)

    def store_record(self, record: TrialRecord) -> TrialRecord:
        """Store one record and report it."""
        self.store.add(record)
        self.done += 1
        kind = "candidate_failed" if record.failed else "candidate_evaluated"
        self.emit(CandidateDone(record, record.generation, self.done, self.config.budget, self.elapsed(), kind=kind))
        return record

    def close_generation(self, g: int, ordered: list[TrialRecord], note: dict[str, Any] | None) -> None:
        """Store the generation's entry (population, hypervolume, front) and the HV history; report it."""
        c = self.config
        hv = front_hypervolume(self.history, self.reference)
        front = feasible_front(self.history)
        elapsed = self.prior_elapsed + self.elapsed()
        entry = {
            "generation": g,
            "evaluations": len(self.history),
            "failures": sum(r.failed for r in ordered),
            "hypervolume": hv,
            "front_size": len(front),
            "population": [r.number for r in self.population],
            "elapsed_s": round(elapsed, 3),
            "notes": note,
        }
        self.store.set_generation(g, entry)
        self.log[g] = entry
        history = [
            {k: self.log[i][k] for k in ("generation", "evaluations", "hypervolume", "front_size")}
            for i in sorted(self.log)
        ]
        self.store.set("hv_history", history)
        self.store.set("elapsed_s", round(elapsed, 3))
        self.emit(
            GenerationDone(
                g,
                c.generations,
                hv,
                len(front),
                len(self.population),
                self.done,
                c.budget,
                sum(r.failed for r in self.history),
                self.elapsed(),
                self.eta(),
                self.engine_seconds(),
            )
        )

    # -- the whole run

    def run(self) -> RunResult:
        c = self.config
        self.emit(
            RunStarted(
                c.method,
                str(self.out),
                c.budget,
                self.done,
                c.population,
                c.generations,
                c.offspring,
                self.resumed,
                self.card.name,
                c.dataset,
                c.seed,
                self.reference,  # type: ignore[arg-type]
            )
        )
        for g in range(c.generations + 1):
            self.generation(g)
        summary = run_summary(self.history, self.population, self.reference)
        summary["elapsed_s"] = round(self.prior_elapsed + self.elapsed(), 3)
        summary["engine_seconds_last_session"] = round(self.engine_seconds(), 3)
        self.store.set("summary", summary)
        self.store.set("finished", True)
        self.store.set("elapsed_s", summary["elapsed_s"])
        self.emit(
            RunFinished(summary["hypervolume"], self.done, c.budget, self.elapsed(), self.engine_seconds(), summary)
        )
        return RunResult(
            self.out,
            list(self.history),
            list(self.population),
            feasible_front(self.history),
            summary["hypervolume"],
            summary,
            self.elapsed(),
            self.engine_seconds(),
        )


def run_search(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run (or with resume=True continue) a search into run directory `out`; see the module docstring.

    `executor` overrides the one the config describes (the caller then owns and closes it).
    """
    start = time.perf_counter()
    out = Path(out)
    backend = load_backend(config.backend, list(config.backend_overrides))
    shape = _dataset_shape(config)
    if RunStore.exists(out):
        if not resume:
            raise SearchError(f"{out} already holds a run; resume it or choose another directory")
        search = _Search(config, out, RunStore.open(out), backend, shape, progress, executor, start)
    else:
        # the method first: a misconfigured or unreachable LLM fails here, before a run directory is made
        reference = hv_reference(backend, *shape)
        method = make_method(config.method, MethodSetup(config, shape[0], shape[1], tuple(reference["point"]), out))  # type: ignore[arg-type]
        try:
            store = RunStore.create(out, config.to_dict(), storage=config.storage, study_name=config.study_name)
        except BaseException:
            getattr(method, "close", lambda: None)()
            raise
        search = _Search(config, out, store, backend, shape, progress, executor, start)
        search.method, search.fresh_reference = method, reference
    try:
        search.setup()
        return search.run()
    finally:
        search.close()


__all__ = [
    "RunResult",
    "propose_slot",
    "run_search",
]

"""Running a study: every cell to its budget, resumably, on one shared worker pool (local processes or Ray).

Each cell is an ordinary `run_search` into ``DIR/cells/<cell id>/``, run in its own thread with a
`PoolClient` of the study's `SharedPool` as its executor, so the evaluations of all running cells share the
workers and no core waits for one cell's generation boundary (see `uhnas.study.pool`). Up to
`parallel_cells` cells run at once (default: slots + 1, enough to keep every slot fed).

Resume: `run_study(out=DIR, resume=True)` expands the stored study file again. A finished cell is not opened
for writing (untouched); an unfinished one continues with `run_search(resume=True)`, which re-derives its
proposals and evaluates only the trials never stored, so it ends exactly as an uninterrupted run. A cell that
fails (invalid config, an LLM endpoint down, a `UhnasError` or a bug) is recorded in ``DIR/failures/`` and
reported; the other cells go on, and the next `--resume` tries it again.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhnas.errors import ConfigError, StoreError, UhnasError
from uhnas.study.grid import Cell, expand
from uhnas.study.layout import STUDY_FILE, StudyDir
from uhnas.study.pool import SharedPool, inline_pool, process_pool, ray_pool
from uhnas.study.spec import dump_study, load_study


@dataclass(frozen=True)
class StudyEvent:
    """A progress report of the study runner: kind, the cell it concerns (None: the study), and details."""

    kind: str  # study_started, cell_started, cell_generation, cell_finished, cell_skipped, cell_failed, study_finished
    cell: str | None
    data: dict[str, Any] = field(default_factory=dict)


StudyProgress = Callable[[StudyEvent], None]


@dataclass
class CellOutcome:
    """How one cell ended in this session: done (ran to its budget), skipped (already done) or failed."""

    id: str
    state: str
    error: str | None = None
    hypervolume: float | None = None
    evaluations: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StudyRunResult:
    """What run_study returns."""

    out: Path
    cells: list[CellOutcome]
    elapsed_s: float
    executor: str

    @property
    def failed(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.state == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "executor": self.executor,
            "elapsed_s": round(self.elapsed_s, 3),
            "cells": [c.to_dict() for c in self.cells],
            "failed": [c.id for c in self.failed],
        }


def create_study(study_file: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyDir:
    """Validate a study file and write it (resolved) into a new study directory with its cell manifest."""
    spec, document = load_study(study_file, overrides)
    directory = StudyDir(out)
    if StudyDir.exists(out):
        raise StoreError(f"{out} already holds a study; continue it with --resume {out} or choose another --out")
    name = spec.name or Path(out).resolve().name
    cells = expand(spec, name)
    directory.root.mkdir(parents=True, exist_ok=True)
    dump_study({**document, "name": name}, directory.root / STUDY_FILE)
    directory.write_manifest(cells)
    return directory


def make_pool(
    cells: list[Cell], kind: str | None, workers: int | None, ray_address: str | None, base: Any
) -> SharedPool:
    """The study's pool from the CLI choices, else the base config's executor section."""
    e = base.executor
    kind = kind or e.kind
    if kind == "process":
        return process_pool(workers or e.workers, e.timeout_s, e.memory_limit_mb)
    if kind == "ray":
        try:
            return ray_pool(ray_address or e.ray_address, e.num_cpus, e.num_gpus, e.timeout_s, slots=workers)
        except ImportError as error:
            raise ConfigError(str(error)) from None
    if kind == "inline":
        return inline_pool()
    raise ConfigError(f"unknown executor {kind!r}; expected process, ray or inline")


class _CellRunner:
    """Runs cells in threads on the shared pool and reports through one (locked) progress callback."""

    def __init__(self, directory: StudyDir, pool: SharedPool, progress: StudyProgress | None) -> None:
        self.directory = directory
        self.pool = pool
        self.progress = progress
        self.lock = threading.Lock()
        self.outcomes: dict[str, CellOutcome] = {}
        self.stopping = False  # interrupted: cells stopped by the closing pool are not failures

    def emit(self, event: str, cell: str | None, **data: Any) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress(StudyEvent(event, cell, data))

    def run(self, cell: Cell) -> None:
        start = time.perf_counter()
        try:
            outcome = self._run(cell)
        except BaseException as error:  # never let a cell take the study down
            outcome = self._failed(cell, f"{type(error).__name__}: {error}", "bug", traceback.format_exc())
        outcome.elapsed_s = round(time.perf_counter() - start, 3)
        with self.lock:
            self.outcomes[cell.id] = outcome

    def _failed(self, cell: Cell, error: str, kind: str, trace: str | None = None) -> CellOutcome:
        line = error.strip().splitlines()[0] if error.strip() else kind
        if self.stopping:
            return CellOutcome(cell.id, "interrupted", line)
        self.directory.record_failure(cell, line, kind, trace.splitlines()[-40:] if trace else None)
        self.emit("cell_failed", cell.id, error=line, reason=kind)
        return CellOutcome(cell.id, "failed", line)

    def _run(self, cell: Cell) -> CellOutcome:
        from uhnas.search.engine import run_search
        from uhnas.store import RunStore

        if cell.config is None:
            return self._failed(cell, cell.error or "invalid configuration", "config")
        out = self.directory.cell_dir(cell)
        resume = RunStore.exists(out)
        if resume:
            status = RunStore.open(out).status()
            if status.finished:
                self.directory.clear_failure(cell)
                self.emit("cell_skipped", cell.id, hypervolume=status.hypervolume, evaluations=status.trials)
                return CellOutcome(cell.id, "skipped", None, status.hypervolume, status.trials)
        self.emit("cell_started", cell.id, resumed=resume, budget=cell.config.budget)

        def on_event(event: Any) -> None:
            if event.kind == "generation_done":
                self.emit(
                    "cell_generation",
                    cell.id,
                    generation=event.generation,
                    generations=event.generations,
                    hypervolume=event.hypervolume,
                    done=event.done,
                    budget=event.budget,
                )

        try:
            result = run_search(
                cell.config, out, resume=resume, progress=on_event, executor=self.pool.client(cell.index)
            )
        except UhnasError as error:
            return self._failed(cell, str(error), "error")
        except Exception as error:
            return self._failed(cell, f"{type(error).__name__}: {error}", "bug", traceback.format_exc())
        self.directory.clear_failure(cell)
        self.emit("cell_finished", cell.id, hypervolume=result.hypervolume, evaluations=len(result.records))
        return CellOutcome(cell.id, "done", None, result.hypervolume, len(result.records))


def _stored_evaluations(directory: StudyDir, cells: list[Cell]) -> int:
    from uhnas.store import RunStore

    total = 0
    for cell in cells:
        out = directory.cell_dir(cell)
        if RunStore.exists(out):
            try:
                total += len(RunStore.open(out).records())
            except UhnasError:
                pass
    return total


def run_study(
    study_file: str | Path | None,
    out: str | Path,
    *,
    resume: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    executor: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    parallel_cells: int | None = None,
    progress: StudyProgress | None = None,
    pool: SharedPool | None = None,
) -> StudyRunResult:
    """Run (resume=True: continue) a study into directory `out`; see the module docstring.

    `study_file` is required for a new study; with resume it may be omitted (the stored one runs), and if
    given it must resolve to the stored study. `executor` (process, ray or inline), `ray_address` and
    `workers` override the base config's executor section; `pool` replaces the pool (the caller closes it).
    """
    start = time.perf_counter()
    out = Path(out)
    directory = StudyDir(out)
    if resume:
        directory.require()
        if overrides:
            raise ConfigError("a resumed study runs its stored study file; --set applies to new studies only")
        if study_file is not None:
            spec, document = load_study(study_file)
            stored = directory.spec()
            if spec.model_dump(exclude={"name"}) != stored.model_dump(exclude={"name"}):
                raise ConfigError(f"{study_file}: differs from the study stored in {out}; resume with --resume alone")
    else:
        if study_file is None:
            raise ConfigError("a study file is required to start a study")
        create_study(study_file, out, overrides)
    spec = directory.spec()
    cells = expand(spec, spec.name or directory.name())
    directory.write_manifest(cells)
    own_pool = pool is None
    if pool is None:
        pool = make_pool(cells, executor, workers, ray_address, spec.base_config())
    kind = executor or spec.base_config().executor.kind if own_pool else "custom"
    session = directory.start_session(pool.size, kind, _stored_evaluations(directory, cells))
    runner = _CellRunner(directory, pool, progress)
    outcome = "interrupted"
    try:
        runner.emit("study_started", None, cells=len(cells), slots=pool.size, pool=pool.describe, resumed=resume)
        limit = threading.Semaphore(max(1, parallel_cells or pool.size + 1))
        threads: list[threading.Thread] = []

        def task(cell: Cell) -> None:
            try:
                runner.run(cell)
            finally:
                limit.release()

        for cell in cells:
            limit.acquire()
            thread = threading.Thread(target=task, args=(cell,), name=f"uhnas-cell-{cell.id}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        outcome = "finished"
    finally:
        runner.stopping = outcome != "finished"
        directory.end_session(session, outcome)
        if own_pool:
            pool.close(interrupt=runner.stopping)
    result = StudyRunResult(out, [runner.outcomes[c.id] for c in cells], time.perf_counter() - start, pool.describe)
    runner.emit("study_finished", None, **result.to_dict())
    return result


__all__ = ["CellOutcome", "StudyEvent", "StudyRunResult", "create_study", "make_pool", "run_study"]

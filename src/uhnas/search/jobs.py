"""Evaluation jobs: what a worker needs to score one candidate, and what it sends back.

A job is plain data (architecture JSON + settings) so it can cross a process or Ray boundary; the
result carries the evaluation as a dict, or the reason it failed. `run_job` is the function every
executor runs, in-process or in a worker; `InlineExecutor` runs it serially in this process.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class EvalSettings:
    """How every candidate of a run is evaluated (shared by all jobs of the run)."""

    dataset: str = "digits"
    backend: str = "mzi-realistic"
    backend_overrides: tuple[str, ...] = ()
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    mc: int = 32
    noise_aware: bool = False
    device: str = "cpu"
    data_dir: str | None = None
    train_infeasible: bool = True
    torch_threads: int | None = None  # threads per worker; None leaves torch's default


@dataclass(frozen=True)
class Job:
    """One candidate to evaluate: an id the engine chooses (e.g. the trial number) and its JSON."""

    job_id: int
    arch_json: str
    settings: EvalSettings


@dataclass
class JobResult:
    """The outcome of a job: an evaluation dict, or failed with a one-line reason."""

    job_id: int
    evaluation: dict[str, Any] | None
    failed: bool
    reason: str | None = None
    wall_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # e.g. a traceback tail for crashes


ResultCallback = Callable[[JobResult], None]


class Executor(Protocol):
    """Runs jobs; calls `on_result` as each finishes (so results are stored at once) and returns them in job order."""

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        """Evaluate all jobs; never raises for a failing job (it comes back failed)."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


def run_job(job: Job) -> JobResult:
    """Evaluate one job in this process; every exception becomes a failed result with its reason."""
    from uhnas.arch import ArchitectureError, parse_architecture_json  # imported here: torch loads only in workers
    from uhnas.evaluate import evaluate
    from uhnas.hardware.registry import load_backend
    from uhnas.train import TrainConfig

    start = time.perf_counter()
    s = job.settings
    try:
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        arch = parse_architecture_json(job.arch_json, source=f"candidate {job.job_id}")
        config = TrainConfig(
            epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, seed=s.seed
        )
        backend = load_backend(s.backend, list(s.backend_overrides))
        evaluation = evaluate(
            arch,
            s.dataset,
            backend,
            train_config=config,
            mc=s.mc,
            noise_aware=s.noise_aware,
            device=s.device,
            data_dir=s.data_dir,
            train_infeasible=s.train_infeasible,
        )
    except ArchitectureError as error:
        return JobResult(job.job_id, None, True, f"invalid architecture: {error}", time.perf_counter() - start)
    except Exception as error:  # a candidate may fail in any way; the search records it and goes on
        tail = traceback.format_exc().strip().splitlines()[-6:]
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
        return JobResult(job.job_id, None, True, reason, time.perf_counter() - start, {"traceback": tail})
    data = evaluation.to_dict()
    return JobResult(job.job_id, data, bool(evaluation.failed), evaluation.reason, time.perf_counter() - start)


class InlineExecutor:
    """Serial, in-process executor: no isolation or timeout; for debugging and tests.

    `job_fn` replaces `run_job` (tests use synthetic evaluations); `jobs` counts the jobs run.
    """

    def __init__(self, job_fn: Callable[[Job], JobResult] | None = None) -> None:
        self.job_fn = job_fn or run_job
        self.jobs = 0

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        """Evaluate jobs one after another."""
        results = []
        for job in jobs:
            self.jobs += 1
            result = self.job_fn(job)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    def close(self) -> None:
        """Nothing to release."""

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

from uhnas.config import RunConfig, TrainingConfig
from uhnas.errors import UhnasError

USER_ERROR = "user-error"  # JobResult.details["kind"]: the run's configuration or environment is wrong
BUG = "bug"  # JobResult.details["kind"]: an exception that is a bug in uhnas or a library


def _one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class EvalSettings:
    """How every candidate of a run is evaluated: derived from the run's validated RunConfig (`from_config`)."""

    dataset: str
    data_dir: str | None
    backend: str
    backend_overrides: tuple[str, ...]
    training: TrainingConfig
    seed: int
    mc: int
    device: str
    train_infeasible: bool = True  # train candidates that violate a constraint (their accuracy ranks them too)
    torch_threads: int | None = None  # threads per worker; None leaves torch's default

    @classmethod
    def from_config(cls, config: RunConfig) -> EvalSettings:
        """The settings every job of a run shares."""
        return cls(
            dataset=config.dataset,
            data_dir=config.data_dir,
            backend=config.backend,
            backend_overrides=tuple(config.backend_overrides),
            training=config.training,
            seed=config.seed,
            mc=config.mc,
            device=config.device,
        )


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
    """Evaluate one job in this process; never raises: an exception comes back as a failed result, classified.

    An impossible architecture or an exhausted memory allocation is the candidate's failure (stored as a FAIL
    trial). A `UhnasError` (missing dataset, bad backend, unavailable device) is the run's (details kind
    USER_ERROR) and any other exception is a bug in uhnas (details kind BUG, with the full traceback): the
    engine stops the run on either instead of recording every candidate as failed.
    """
    from uhnas.arch import ArchitectureError, parse_architecture_json  # imported here: torch loads only in workers
    from uhnas.evaluate import evaluate
    from uhnas.hardware.registry import load_backend
    from uhnas.search.executor import is_allocation_failure
    from uhnas.train import TrainConfig

    start = time.perf_counter()
    s = job.settings
    try:
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        arch = parse_architecture_json(job.arch_json, source=f"candidate {job.job_id}")
        config = TrainConfig(**s.training.model_dump(exclude={"noise_aware"}), seed=s.seed)
        backend = load_backend(s.backend, list(s.backend_overrides))
        evaluation = evaluate(
            arch,
            s.dataset,
            backend,
            train_config=config,
            mc=s.mc,
            noise_aware=s.training.noise_aware,
            device=s.device,
            data_dir=s.data_dir,
            train_infeasible=s.train_infeasible,
        )
    except ArchitectureError as error:  # the candidate itself is impossible: a failed trial
        return JobResult(job.job_id, None, True, f"invalid architecture: {error}", time.perf_counter() - start)
    except UhnasError as error:  # the run's setup (dataset, backend, device) is wrong: no candidate can succeed
        details: dict[str, Any] = {"kind": USER_ERROR, "error_type": type(error).__name__}
        return JobResult(job.job_id, None, True, _one_line(error), time.perf_counter() - start, details)
    except Exception as error:
        reason = f"{type(error).__name__}: {_one_line(error)}"
        if isinstance(error, MemoryError) or is_allocation_failure(reason):  # a resource limit: a failed trial
            return JobResult(job.job_id, None, True, reason, time.perf_counter() - start)
        details = {"kind": BUG, "traceback": traceback.format_exc().strip().splitlines()}
        return JobResult(job.job_id, None, True, reason, time.perf_counter() - start, details)
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

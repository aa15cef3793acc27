"""One worker pool shared by every cell of a study: a thread-safe facade in front of executor slots.

Each cell's `run_search` runs in its own thread and gets a `PoolClient` as its executor. A client's
`run(jobs, on_result)` queues the jobs in one priority queue and waits for their results, calling `on_result`
in the cell's own thread (so the engine stores its trials as it does alone). Slot threads take the next job as
soon as they are free, whichever cell it belongs to: while one cell proposes its next generation or waits on
its last candidate, the others' jobs keep every slot busy. Priority is (cell index, submission order), so the
earlier cells finish first and later ones fill the gaps.

A slot evaluates one job at a time through an ordinary executor, so isolation, timeouts and memory limits are
the executors' own: locally, each slot owns a one-worker `ProcessExecutor` (workers = slots, torch threads =
cores // slots and the per-worker memory limit that a `ProcessExecutor(slots)` would pick); on Ray, every slot
submits to one `RayExecutor` and the number of slots bounds the tasks in flight (default: the cluster's capacity).
A job's result does not depend on which slot ran it, so each cell's trials equal those of the cell run alone.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from uhnas.errors import SearchError
from uhnas.search.jobs import InlineExecutor, Job, JobResult, ResultCallback


class _Call:
    """One client run(): its results arrive on a queue; cancelled when the caller gave up."""

    def __init__(self) -> None:
        self.results: queue.Queue[tuple[int, JobResult | BaseException]] = queue.Queue()
        self.cancelled = False


class Slot:
    """One place where a job runs: `run_one(job)`; `interrupt()` stops its running job from another thread
    (the job comes back failed); `close()` is called from the slot's own thread when the pool closes."""

    def __init__(self, executor: Any, own: bool) -> None:
        self.executor = executor
        self.own = own  # close the executor with the slot (a shared executor is closed by the pool)

    def run_one(self, job: Job) -> JobResult:
        results = self.executor.run([job])
        if not results:
            return JobResult(job.job_id, None, True, "the executor returned no result")
        return results[0]

    def interrupt(self) -> None:
        for pid in getattr(self.executor, "worker_pids", list)():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        if self.own:
            self.executor.close()


class SharedPool:
    """Slots that evaluate queued jobs of many callers (see module docstring); `client()` per cell."""

    def __init__(self, slots: Sequence[Slot], closers: Sequence[Callable[[], None]] = (), describe: str = "") -> None:
        if not slots:
            raise ValueError("a pool needs at least one slot")
        self.describe = describe
        self._slots = list(slots)
        self._closers = list(closers)
        self._heap: list[tuple[tuple[int, int], int, Job, _Call]] = []
        self._lock = threading.Condition()
        self._sequence = itertools.count()
        self._closed = False
        self._interrupted = False
        self.busy = 0
        self._threads = [
            threading.Thread(target=self._serve, args=(slot,), name=f"uhnas-study-slot-{i}", daemon=True)
            for i, slot in enumerate(self._slots)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def size(self) -> int:
        """Number of slots (jobs evaluated at once)."""
        return len(self._threads)

    def client(self, priority: int) -> PoolClient:
        """An Executor for one cell; lower priority values are served first."""
        return PoolClient(self, priority)

    def submit(self, jobs: Sequence[Job], priority: int) -> _Call:
        call = _Call()
        with self._lock:
            if self._closed:
                raise SearchError("the study's worker pool is closed")
            for index, job in enumerate(jobs):
                heapq.heappush(self._heap, ((priority, next(self._sequence)), index, job, call))
            self._lock.notify_all()
        return call

    def _serve(self, slot: Slot) -> None:
        try:
            while True:
                with self._lock:
                    while not self._heap and not self._closed:
                        self._lock.wait()
                    if self._closed:
                        return
                    _, index, job, call = heapq.heappop(self._heap)
                    if call.cancelled:
                        continue
                    self.busy += 1
                try:
                    outcome: JobResult | BaseException = slot.run_one(job)
                except BaseException as error:  # a broken executor: the caller's cell fails, the others go on
                    outcome = error
                finally:
                    with self._lock:
                        self.busy -= 1
                if self._interrupted:  # killed by close(interrupt=True): not the candidate's failure, never stored
                    outcome = SearchError("the study was interrupted")
                call.results.put((index, outcome))
        finally:
            try:  # executors are used from this thread only (ProcessExecutor is not thread-safe)
                slot.close()
            except Exception:
                pass

    def close(self, interrupt: bool = False, timeout_s: float = 30.0) -> None:
        """Stop the slots after their current job (interrupt: kill the running jobs) and release the executors."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._interrupted = interrupt
            for _, index, _, call in self._heap:
                call.results.put((index, SearchError("the study's worker pool was closed")))
            self._heap.clear()
            self._lock.notify_all()
        if interrupt:
            for slot in self._slots:
                slot.interrupt()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for closer in self._closers:
            try:
                closer()
            except Exception:  # best effort: the process is ending or the executor is already gone
                pass


class PoolClient:
    """The Executor one cell's run_search uses: its jobs go to the shared pool, its callbacks stay in its thread."""

    def __init__(self, pool: SharedPool, priority: int) -> None:
        self.pool = pool
        self.priority = priority
        self.jobs = 0

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        """Evaluate jobs on the shared slots; results in job order; on_result is called from this thread."""
        jobs = list(jobs)
        if not jobs:
            return []
        self.jobs += len(jobs)
        call = self.pool.submit(jobs, self.priority)
        results: list[JobResult | None] = [None] * len(jobs)
        try:
            for _ in range(len(jobs)):
                index, outcome = call.results.get()
                if isinstance(outcome, BaseException):
                    raise SearchError(f"the study's executor failed: {type(outcome).__name__}: {outcome}") from outcome
                results[index] = outcome
                if on_result is not None:
                    on_result(outcome)
        finally:
            call.cancelled = True  # jobs not started yet are dropped (the cell stops on an error)
        return [result for result in results if result is not None]

    def close(self) -> None:
        """The pool belongs to the study runner: nothing to release here."""


# ----------------------------------------------------------------------------------------- factories


def process_pool(
    workers: int | None = None,
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    *,
    job_fn: str | Callable[..., Any] | None = None,
) -> SharedPool:
    """`workers` slots (default: the cores available), each a one-worker ProcessExecutor with the limits given."""
    from uhnas.search.executor import ProcessExecutor, available_cores, default_memory_limit_mb

    cores = available_cores()
    n = workers or cores
    memory = default_memory_limit_mb(n) if memory_limit_mb is None else memory_limit_mb
    threads = max(1, cores // n)
    executors: list[Any] = []
    try:
        for _ in range(n):
            executors.append(ProcessExecutor(1, timeout_s, memory, threads, job_fn=job_fn))
    except BaseException:
        for executor in executors:
            executor.close()
        raise
    return SharedPool([Slot(e, own=True) for e in executors], [], f"{n} local worker process(es)")


def ray_pool(
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    timeout_s: float | None = None,
    *,
    slots: int | None = None,
    local_cpus: int | None = None,
    job_fn: str | Callable[..., Any] | None = None,
) -> SharedPool:
    """Slots that submit to one RayExecutor; `slots` (default: the cluster's capacity) bounds tasks in flight."""
    from uhnas.search.executor import RayExecutor

    executor = RayExecutor(address, num_cpus, num_gpus, timeout_s, job_fn=job_fn, local_cpus=local_cpus)
    try:
        n = slots or min(executor.capacity(), 4096)
    except BaseException:
        executor.close()
        raise
    return SharedPool([Slot(executor, own=False) for _ in range(n)], [executor.close], f"Ray, {n} task(s) in flight")


def inline_pool(job_fn: Callable[[Job], JobResult] | None = None) -> SharedPool:
    """One slot evaluating in this process (debugging and tests; no isolation or timeout)."""
    executor = InlineExecutor(job_fn)
    return SharedPool([Slot(executor, own=True)], [], "inline (this process)")


__all__ = ["PoolClient", "SharedPool", "Slot", "inline_pool", "process_pool", "ray_pool"]

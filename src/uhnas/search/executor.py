"""Executors that evaluate jobs in isolated workers: local processes with hard limits, or Ray tasks.

`ProcessExecutor` keeps long-lived worker processes (forked from a forkserver that imported torch
once, or spawned) and sends them jobs over pipes. A job that runs past its wall-clock timeout, grows past the memory
limit or kills its worker comes back failed with the reason, and a replacement worker is started; the run goes on.
`RayExecutor` runs the same job function as Ray remote tasks with per-candidate resources.
`make_executor` builds either (or the in-process `InlineExecutor`) from configuration values.

This module imports only the standard library at load time, so that a worker can pin its thread
counts (OMP_NUM_THREADS, ...) before torch, numpy or scikit-learn are imported.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import connection, get_context, parent_process
from typing import TYPE_CHECKING, Any

from uhnas.allocator import keep_freed_memory
from uhnas.errors import ConfigError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from uhnas.search.jobs import Executor, Job, JobResult, ResultCallback

DEFAULT_JOB_FN = "uhnas.search.jobs:run_job"
DEFAULT_PRELOAD = ("uhnas.evaluate", "sklearn.datasets", "sklearn.model_selection")  # imported once per worker
DEFAULT_MEMORY_LIMIT_MB = 4096  # MB per worker, before capping to this machine's share of RAM
RAM_SHARE = 0.9  # fraction of physical RAM the default limits of all workers may add up to
MEMORY_POLL_S = 0.05  # s between reads of a busy worker's resident memory
CLOSE_GRACE_S = 2.0  # s an idle worker gets to exit after the stop message before it is killed
JOIN_TIMEOUT_S = 5.0  # s to wait for a killed worker to be reaped
STARTUP_TIMEOUT_S = 300.0  # s a new worker may take to import its modules before the executor gives up
STARTUP_POLL_S = 1.0  # s between checks on workers that are still importing
RAY_POLL_S = 0.5  # s between Ray timeout checks while tasks run
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): signal sent to this process when its parent dies
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ALLOCATION_FAILURE_MARKERS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc")
RAY_MISSING = "the ray executor needs the optional extra: pip install 'uhnas[ray]'"

JobFn = Callable[["Job"], "JobResult"]


# ----------------------------------------------------------------------------------------- helpers


def available_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS reports it, else os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_start_method() -> str:
    """'forkserver' where the platform has it (replacement workers fork from a server with torch imported, in
    well under a second), else 'spawn' (each worker imports torch itself, seconds)."""
    from multiprocessing import get_all_start_methods

    return "forkserver" if "forkserver" in get_all_start_methods() else "spawn"


def physical_memory_mb() -> int | None:
    """Physical RAM of this machine in MB, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_limit_mb(workers: int) -> int:
    """DEFAULT_MEMORY_LIMIT_MB, capped so that all workers together stay within RAM_SHARE of RAM."""
    ram = physical_memory_mb()
    if ram is None:
        return DEFAULT_MEMORY_LIMIT_MB
    return max(1, min(DEFAULT_MEMORY_LIMIT_MB, int(ram * RAM_SHARE / max(1, workers))))


def resident_mb(pid: int) -> float | None:
    """Resident memory of a process in MB from /proc (None where /proc is missing or the process is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def job_fn_path(job_fn: str | Callable[..., Any] | None) -> str:
    """'module:qualname' of a job function (importable by a fresh worker), checked by importing it here."""
    if job_fn is None:
        return DEFAULT_JOB_FN
    if isinstance(job_fn, str):
        path = job_fn
    else:
        module, qualname = getattr(job_fn, "__module__", None), getattr(job_fn, "__qualname__", "")
        if not module or "<" in qualname:
            raise ValueError(f"job_fn must be a module-level function or a 'module:name' path, got {job_fn!r}")
        path = f"{module}:{qualname}"
    resolve_job_fn(path)
    return path


def resolve_job_fn(path: str) -> JobFn:
    """Import 'module:qualname' and return the callable; one-line ValueError if it is not one."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"job_fn path must look like 'package.module:function', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import job_fn {path!r}: {error}") from None
    if not callable(target):
        raise ValueError(f"job_fn {path!r} is not callable")
    return target


def first_line(text: str) -> str:
    """The first non-empty line of a message (Ray errors span many lines)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def describe_exit(exitcode: int | None) -> str:
    """Why a worker process ended, from its exit code (negative: killed by that signal)."""
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (possibly the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"worker died: killed by {name}{hint}"
    return f"worker died: exit code {exitcode}"


def job_id_of(job: Any) -> int:
    """A job's id (-1 for payloads that are not Job objects, which generic job functions may take)."""
    return getattr(job, "job_id", -1)


def failed_result(job_id: int, reason: str, wall_seconds: float, details: dict[str, Any] | None = None) -> JobResult:
    """A failed JobResult built outside run_job (timeouts, crashes, memory kills)."""
    from uhnas.search.jobs import JobResult

    return JobResult(job_id, None, True, reason, wall_seconds, dict(details or {}))


def call_job_fn(fn: JobFn, job: Job) -> JobResult:
    """Run the job function; anything it raises or returns wrongly becomes a failed result (never raises)."""
    from uhnas.search.jobs import JobResult

    start = time.perf_counter()
    try:
        result = fn(job)
    except BaseException as error:  # a misbehaving job function must not take its worker down
        reason = f"{type(error).__name__}: {first_line(str(error))}".rstrip(": ")
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return failed_result(job_id_of(job), reason, time.perf_counter() - start, {"traceback": tail})
    if not isinstance(result, JobResult):
        return failed_result(
            job_id_of(job), f"job function returned {type(result).__name__}, not JobResult", time.perf_counter() - start
        )
    return result


def is_allocation_failure(reason: str | None) -> bool:
    """Whether a failure reason is a refused memory allocation (Python MemoryError, torch or C++ allocator)."""
    return bool(reason) and any(marker in reason for marker in ALLOCATION_FAILURE_MARKERS)


def memory_reason(limit_mb: int) -> str:
    """The failure reason of a job stopped by the memory limit."""
    return f"exceeded memory limit of {limit_mb} MB"


# ------------------------------------------------------------------------------------------ worker


def _die_with_parent(use_pdeathsig: bool) -> None:
    """Make this worker exit as soon as the executor's process dies, however it dies.

    A thread waits on multiprocessing's parent sentinel (a pipe that reaches EOF when the executor's
    process ends; with a forkserver it still tracks the executor, not the server). With spawn on Linux,
    PR_SET_PDEATHSIG also has the kernel SIGKILL the worker, even while a C call holds the GIL.
    """
    if use_pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the sentinel thread below still ends the worker
    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="uhnas-parent-watch", daemon=True).start()


def _limit_address_space(limit_mb: int) -> bool:
    """Cap this worker's address space at its current size + limit_mb, so huge allocations fail at once.

    Only where torch is loaded and CPU-only, or not installed: CUDA and ROCm reserve far more address
    space than they use (and a torch imported later might be such a build). Returns whether it is in force.
    """
    try:
        import resource
    except ImportError:
        return False
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is not None:
        return False
    if torch is not None and (torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None):
        return False
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            size = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = size + limit_mb * (1 << 20)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError, IndexError):
        return False
    return True


def _worker_main(
    conn: Connection,
    fn_path: str,
    preload: tuple[str, ...],
    torch_threads: int,
    memory_limit_mb: int | None,
    use_pdeathsig: bool,
) -> None:
    """Worker loop: set limits, import once, then evaluate jobs from the pipe until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    _die_with_parent(use_pdeathsig)
    keep_freed_memory()  # evaluations reuse tensors of tens of MB (uhnas.allocator)
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(torch_threads)
    try:
        for module in preload:
            importlib.import_module(module)
        if "torch" in sys.modules:  # otherwise torch reads OMP_NUM_THREADS when a job imports it
            sys.modules["torch"].set_num_threads(torch_threads)
        fn = resolve_job_fn(fn_path)
        capped = memory_limit_mb is not None and _limit_address_space(memory_limit_mb)
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {first_line(str(error))}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as error:  # a job this worker cannot unpickle fails alone
            conn.send(("bad-job", f"cannot read job: {type(error).__name__}: {first_line(str(error))}"))
            continue
        if job is None:
            return
        result = call_job_fn(fn, job)
        if capped and result.failed and is_allocation_failure(result.reason):
            assert memory_limit_mb is not None
            details = {**result.details, "error": result.reason}
            result = failed_result(result.job_id, memory_reason(memory_limit_mb), result.wall_seconds, details)
        try:
            conn.send(("result", result))
        except (pickle.PicklingError, TypeError, AttributeError) as error:  # e.g. a module object in details
            reason = f"result cannot be sent: {type(error).__name__}: {first_line(str(error))}"
            conn.send(("result", failed_result(result.job_id, reason, result.wall_seconds)))


# ------------------------------------------------------------------------------- process executor


class _Worker:
    """Parent-side handle of one worker process: its pipe, and the job it is running."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False
        self.spawned_at = time.monotonic()
        self.index: int | None = None  # position in the current run's job list
        self.started = 0.0  # monotonic time the current job was sent

    @property
    def busy(self) -> bool:
        """Whether a job is running on this worker."""
        return self.index is not None

    def kill(self) -> None:
        """SIGKILL the worker and reap it (no zombie), closing the pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(JOIN_TIMEOUT_S)
        self.conn.close()
        try:
            self.process.close()  # frees its sentinel now rather than at garbage collection
        except ValueError:  # not reaped within JOIN_TIMEOUT_S; multiprocessing reaps it later
            pass


def _shutdown(workers: list[_Worker]) -> None:
    """Stop all workers: idle ones by message (then kill after CLOSE_GRACE_S), busy or starting ones by SIGKILL."""
    for worker in workers:
        if worker.ready and not worker.busy and worker.process.is_alive():
            try:
                worker.conn.send(None)
            except OSError:
                pass
    deadline = time.monotonic() + CLOSE_GRACE_S
    for worker in workers:
        if worker.ready and not worker.busy:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        worker.kill()
    workers.clear()


class ProcessExecutor:
    """Evaluates jobs in long-lived local worker processes with a hard timeout and a memory limit per job.

    workers: processes (default: the cores available). timeout_s: wall-clock seconds per job, None for
    none. memory_limit_mb: per worker; None picks min(DEFAULT_MEMORY_LIMIT_MB, RAM_SHARE x RAM / workers),
    0 disables it. It is enforced twice: the parent polls each busy worker's resident memory and kills it
    past the limit, and (CPU-only torch builds) the worker's address space may grow at most that much
    beyond its size after start-up, so one huge allocation fails at once instead of swapping the
    machine. torch_threads: per worker, default max(1, cores // workers). job_fn: the function a worker
    runs per job, as a module-level callable or 'module:name' path (default run_job; tests pass
    misbehaving ones). preload: modules each worker imports once at start-up. start_method: 'forkserver'
    (default where available: torch is imported once in the server, which has run no torch op, and
    workers fork from it) or 'spawn'; never plain fork, which is unsafe once torch has run. Not
    thread-safe: call run() from one thread at a time. Workers are daemonic, so job functions cannot
    start processes themselves.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float | None = None,
        memory_limit_mb: int | None = None,
        torch_threads: int | None = None,
        *,
        job_fn: str | JobFn | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        start_method: str | None = None,
    ) -> None:
        """Check the settings and start the workers (spawned ones import in the background; run() waits as needed).

        The first forkserver executor of a process waits here for the server to import torch (seconds).
        """
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if memory_limit_mb is not None and memory_limit_mb < 0:
            raise ValueError(f"memory_limit_mb must be positive (0 disables the limit), got {memory_limit_mb}")
        start_method = start_method or default_start_method()
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                "start_method must be 'spawn' or 'forkserver' (fork is unsafe once torch is loaded), got "
                f"{start_method!r}"
            )
        cores = available_cores()
        self.workers = workers or cores
        self.timeout_s = timeout_s
        if memory_limit_mb is None:
            memory_limit_mb = default_memory_limit_mb(self.workers)
        self.memory_limit_mb: int | None = memory_limit_mb or None
        self.torch_threads = torch_threads or max(1, cores // self.workers)
        self.job_fn = job_fn_path(job_fn)
        self.preload = tuple(preload)
        self._context = get_context(start_method)
        if (
            start_method == "forkserver"
        ):  # workers fork from a server that imported these once (if it is not running yet)
            self._context.set_forkserver_preload([__name__, *self.preload])
        self._pool: list[_Worker] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)
        self.start(wait=False)

    # -- lifecycle

    def start(self, wait: bool = True) -> None:
        """Start missing workers; with wait, block until all have imported their modules and are ready."""
        if self._closed:
            raise RuntimeError("executor is closed")
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        if wait:
            while not all(worker.ready for worker in self._pool):
                self._wait_events(STARTUP_POLL_S)
                for worker in list(self._pool):
                    self._poll_idle(worker)

    def close(self) -> None:
        """Stop and reap all workers (idempotent)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return [worker.process.pid for worker in self._pool if worker.process.pid is not None]

    def _spawn(self) -> _Worker:
        """Start one worker process."""
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        # PR_SET_PDEATHSIG fires when the forking *thread* ends, and a forkserver outlives its workers: only
        # spawned workers forked from the main thread use it
        use_pdeathsig = (
            self._context.get_start_method() == "spawn" and threading.current_thread() is threading.main_thread()
        )
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self.job_fn, self.preload, self.torch_threads, self.memory_limit_mb, use_pdeathsig),
            name="uhnas-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker and start a new one in its place."""
        worker.kill()
        position = self._pool.index(worker)
        self._pool[position] = self._spawn()

    def _startup_failure(self, worker: _Worker, why: str) -> None:
        """A worker that cannot start means the executor is misconfigured: stop everything and raise."""
        self.close()
        raise RuntimeError(f"executor worker failed to start: {why}")

    # -- events

    def _wait_events(self, timeout: float | None) -> None:
        """Block until a worker sends something or exits, or the timeout passes."""
        objects: list[Any] = []
        for worker in self._pool:
            objects.append(worker.conn)
            objects.append(worker.process.sentinel)
        connection.wait(objects, timeout)

    def _receive(self, worker: _Worker) -> tuple[str, Any] | None:
        """The next message from a worker if one is waiting (None if none, or the pipe broke)."""
        try:
            if worker.conn.poll():
                return worker.conn.recv()
        except (EOFError, OSError):
            return None
        return None

    def _poll_idle(self, worker: _Worker) -> None:
        """Handle start-up messages and deaths of a worker that runs no job."""
        message = self._receive(worker)
        if message is not None:
            kind, payload = message
            if kind == "ready":
                worker.ready = True
            elif kind == "error":
                self._startup_failure(worker, payload)
            return
        if not worker.process.is_alive():
            if not worker.ready:
                self._startup_failure(worker, describe_exit(worker.process.exitcode))
            self._replace(worker)  # an idle worker died (e.g. killed from outside): start a fresh one
        elif not worker.ready and time.monotonic() - worker.spawned_at > STARTUP_TIMEOUT_S:
            self._startup_failure(worker, f"not ready after {STARTUP_TIMEOUT_S:g} s")

    def _poll_busy(self, worker: _Worker, jobs: Sequence[Job]) -> JobResult | None:
        """The result of a busy worker's job if it finished, failed, timed out or broke the memory limit."""
        assert worker.index is not None
        job = jobs[worker.index]
        elapsed = time.monotonic() - worker.started
        message = self._receive(worker)
        if message is not None and message[0] == "result":
            return message[1]
        if message is not None and message[0] == "bad-job":
            return failed_result(job_id_of(job), message[1], elapsed)
        if not worker.process.is_alive():
            worker.process.join(JOIN_TIMEOUT_S)
            exitcode = worker.process.exitcode
            self._replace(worker)
            return failed_result(job_id_of(job), describe_exit(exitcode), elapsed, {"exitcode": exitcode})
        if self.timeout_s is not None and elapsed > self.timeout_s:
            self._replace(worker)
            return failed_result(job_id_of(job), f"timed out after {self.timeout_s:g} s", elapsed)
        if self.memory_limit_mb is not None and worker.process.pid is not None:
            rss = resident_mb(worker.process.pid)
            if rss is not None and rss > self.memory_limit_mb:
                self._replace(worker)
                return failed_result(
                    job_id_of(job), memory_reason(self.memory_limit_mb), elapsed, {"rss_mb": round(rss, 1)}
                )
        return None

    def _next_wakeup(self) -> float | None:
        """Seconds until the loop must look again without an event: next timeout, or the memory poll."""
        busy = [worker for worker in self._pool if worker.busy]
        waits = [] if all(worker.ready for worker in self._pool) else [STARTUP_POLL_S]
        if self.memory_limit_mb is not None and busy:
            waits.append(MEMORY_POLL_S)
        if self.timeout_s is not None:
            now = time.monotonic()
            waits.extend(max(0.0, worker.started + self.timeout_s - now) for worker in busy)
        return min(waits) if waits else None

    # -- running

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        """Evaluate jobs on idle workers; on_result gets each result as it arrives; results come back in job order."""
        if self._closed:
            raise RuntimeError("executor is closed")
        jobs = list(jobs)
        results: list[JobResult | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        done = 0
        self.start(wait=False)
        try:
            while done < len(jobs):
                for worker in self._pool:
                    if pending and worker.ready and not worker.busy and worker.process.is_alive():
                        index = pending.popleft()
                        try:
                            worker.conn.send(jobs[index])
                        except OSError:  # it died while idle: the job waits for its replacement
                            pending.appendleft(index)
                            continue
                        worker.index, worker.started = index, time.monotonic()
                self._wait_events(self._next_wakeup())
                for worker in list(self._pool):
                    if not worker.busy:
                        self._poll_idle(worker)
                        continue
                    index = worker.index
                    assert index is not None
                    result = self._poll_busy(worker, jobs)
                    if result is None:
                        continue
                    worker.index = None
                    results[index] = result
                    done += 1
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            # Ctrl-C, a failing callback, a broken executor: nobody will collect the running jobs' results
            for worker in [worker for worker in self._pool if worker.busy]:
                worker.kill()
                self._pool.remove(worker)  # the next run() starts a fresh one
            raise
        return [result for result in results if result is not None]


# ----------------------------------------------------------------------------------- Ray executor


def import_ray() -> Any:
    """The ray module, or ImportError with the one-line install hint."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def ray_task(fn_path: str, threads: int, job: Job) -> JobResult:
    """Body of one Ray task: pin torch threads to the task's CPUs, run the job function, never raise."""
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    try:
        fn = resolve_job_fn(fn_path)
    except ValueError as error:
        return failed_result(job_id_of(job), str(error), 0.0)
    return call_job_fn(fn, job)


class RayExecutor:
    """Evaluates jobs as Ray remote tasks, each with num_cpus / num_gpus (fractions allowed) and a timeout.

    address: a Ray cluster ('auto', 'ray://host:10001', ...), or None to start a local instance with
    local_cpus CPUs (default: the cores available) and no dashboard; an already initialised Ray is
    reused. Jobs are submitted no faster than the cluster's resources can run them, so a job's timeout
    counts from (about) when it starts. A task over its timeout is cancelled with force=True (its worker
    process is killed); crashed tasks are not retried. job_fn as in ProcessExecutor; it must be
    importable on the cluster's workers. init_kwargs go to ray.init (e.g. runtime_env).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        timeout_s: float | None = None,
        *,
        job_fn: str | JobFn | None = None,
        local_cpus: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Connect to (or start) Ray and declare the remote task."""
        ray = import_ray()
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus must not be negative, got {num_cpus} and {num_gpus}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.num_cpus, self.num_gpus, self.timeout_s = num_cpus, num_gpus, timeout_s
        self.job_fn = job_fn_path(job_fn)
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs = dict(init_kwargs or {})
            if address is None:
                kwargs.setdefault("num_cpus", local_cpus or available_cores())
                kwargs.setdefault("include_dashboard", False)
            ray.init(address=address, **kwargs)
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(ray_task)

    def capacity(self) -> int:
        """How many of this executor's tasks the cluster can run at once; ConfigError if not even one."""
        if self.num_cpus == 0 and self.num_gpus == 0:
            return sys.maxsize
        resources = self._ray.cluster_resources()
        limits = []
        for name, need in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if need > 0:
                have = resources.get(name, 0.0)
                if have < need:  # Ray would queue the tasks forever
                    raise ConfigError(f"each job asks for {need:g} {name}, but the Ray cluster has {have:g}")
                limits.append(have / need)
        return max(1, math.floor(min(limits) + 1e-9))

    def _collect(self, ref: Any, job: Job, elapsed: float) -> JobResult:
        """The result of a finished task; Ray-level failures (crashed worker, OOM) become failed results."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as error:
            reason = f"worker died: {type(error).__name__}: {first_line(str(error))}"
            return failed_result(job_id_of(job), reason, elapsed)

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        """Submit jobs as Ray tasks (bounded by cluster capacity); results as they finish, returned in job order."""
        ray = self._ray
        jobs = list(jobs)
        results: list[JobResult | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        in_flight: dict[Any, tuple[int, float]] = {}  # object ref -> (job index, monotonic submit time)
        threads = max(1, math.floor(self.num_cpus))
        try:
            while pending or in_flight:
                if pending:
                    capacity = self.capacity()
                    while pending and len(in_flight) < capacity:
                        index = pending.popleft()
                        ref = self._task.remote(self.job_fn, threads, jobs[index])
                        in_flight[ref] = (index, time.monotonic())
                wait_s = RAY_POLL_S
                if self.timeout_s is not None:
                    now = time.monotonic()
                    wait_s = min([wait_s] + [max(0.0, t0 + self.timeout_s - now) for _, t0 in in_flight.values()])
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
                if ready:
                    ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                finished: list[tuple[int, JobResult]] = []
                for ref in ready:
                    index, t0 = in_flight.pop(ref)
                    finished.append((index, self._collect(ref, jobs[index], time.monotonic() - t0)))
                if self.timeout_s is not None:
                    now = time.monotonic()
                    for ref, (index, t0) in list(in_flight.items()):
                        if now - t0 > self.timeout_s:
                            ray.cancel(ref, force=True)
                            del in_flight[ref]
                            reason = f"timed out after {self.timeout_s:g} s"
                            finished.append((index, failed_result(job_id_of(jobs[index]), reason, now - t0)))
                for index, result in finished:
                    results[index] = result
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
        return [result for result in results if result is not None]

    def close(self) -> None:
        """Shut down the Ray instance if this executor started it."""
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- factory

EXECUTOR_KINDS = ("process", "inline", "ray")


def make_executor(
    kind: str = "process",
    *,
    workers: int | None = None,
    timeout_s: float | None = None,
    memory_limit_mb: int | None = None,
    ray_address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> Executor:
    """Build the executor a run configuration names; 'inline' ignores limits (it is for debugging)."""
    if kind == "process":
        return ProcessExecutor(workers, timeout_s, memory_limit_mb)
    if kind == "inline":
        from uhnas.search.jobs import InlineExecutor

        return InlineExecutor()
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=num_cpus, num_gpus=num_gpus, timeout_s=timeout_s)
    raise ValueError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTOR_KINDS)}")


__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "EXECUTOR_KINDS",
    "ProcessExecutor",
    "RayExecutor",
    "make_executor",
]

"""Executors: same numbers as in-process evaluation, hard timeouts, crashes, memory limit, no orphans, Ray."""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from uhnas.search.executor import RAY_MISSING, ProcessExecutor, RayExecutor, make_executor
from uhnas.search.jobs import EvalSettings, InlineExecutor, Job, JobResult, run_job

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
HELPER = "test_executor:misbehaving_job"  # importable in workers: spawn passes sys.path, which holds this folder
SETTINGS = EvalSettings(dataset="digits", backend="gpu-b200-fp16", epochs=1, mc=2, batch_size=128)
TIMEOUT_S = 3.0  # s: far above a tiny digits job (~0.1 s), far below the sleeping job
LIMIT_MB = 1024  # MB: above a worker with torch loaded running a digits job (~0.5 GB resident)
SLEEP_S = 60.0  # s a misbehaving job sleeps: only a timeout ends it
GONE_WITHIN_S = 5.0  # s for killed workers to disappear
MEMORY_TEST_TIMEOUT_S = 60.0  # s: the gradual job crosses LIMIT_MB in ~1-2 s; only a broken memory poll reaches this


def mlp(width: int, activation: str) -> str:
    """A small MLP for digits as architecture JSON."""
    layers = [
        {"type": "flatten"},
        {"type": "linear", "out_features": width},
        {"type": "activation", "function": activation},
        {"type": "linear", "out_features": 10},
    ]
    return json.dumps({"layers": layers})


ARCHS = [mlp(16, "relu"), mlp(24, "tanh"), mlp(8, "gelu"), mlp(32, "relu")]


def misbehaving_job(job: Job) -> JobResult:
    """run_job, unless the 'architecture' is a command to misbehave (sleep, raise, exit, be killed, allocate)."""
    command = job.arch_json
    if command == "!sleep":
        time.sleep(SLEEP_S)
    elif command == "!raise":
        raise RuntimeError("deliberate failure")
    elif command == "!exit":
        os._exit(3)
    elif command == "!sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif command == "!alloc-huge":
        bytearray(64 << 30)  # 64 GiB at once
    elif (
        command == "!alloc-gradual"
    ):  # slow enough for the resident-memory poll to catch it before the address-space cap
        hoard: list[mmap.mmap] = []  # fresh mappings: address space grows only as fast as resident memory, whatever
        while len(hoard) < 512:  # malloc's policy (uhnas.allocator); up to 8 GiB, 16 MiB at a time, each page touched
            block = mmap.mmap(-1, 16 << 20)
            for offset in range(0, 16 << 20, mmap.PAGESIZE):
                block[offset] = 1
            hoard.append(block)
            time.sleep(0.02)
    return run_job(job)


def numbers(result: JobResult) -> dict[str, Any]:
    """The evaluation without its timings (which differ run to run)."""
    assert result.evaluation is not None, result.reason
    return {k: v for k, v in result.evaluation.items() if k not in ("train_seconds", "mc_seconds")}


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (read from /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: list[int] | set[int], within_s: float = GONE_WITHIN_S, reaped: bool = True) -> list[int]:
    """Pids still there after waiting up to within_s: alive, or (reaped=True) even as zombies."""
    exists = (lambda pid: os.path.exists(f"/proc/{pid}")) if reaped else alive
    deadline = time.monotonic() + within_s
    while any(exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if exists(pid)]


@pytest.fixture(scope="module")
def inline_results() -> list[JobResult]:
    """The reference: every job evaluated in this process."""
    return InlineExecutor().run([Job(i, arch, SETTINGS) for i, arch in enumerate(ARCHS)])


@pytest.fixture(scope="module")
def faulty():
    """Two workers running misbehaving_job, with a short timeout and a 1 GB memory limit."""
    executor = ProcessExecutor(workers=2, timeout_s=TIMEOUT_S, memory_limit_mb=LIMIT_MB, job_fn=HELPER)
    yield executor
    executor.close()


def test_make_executor_kinds_and_errors(monkeypatch):
    """Known kinds build; an unknown kind and a missing ray give one-line errors."""
    assert isinstance(make_executor("inline"), InlineExecutor)
    with pytest.raises(ValueError, match="unknown executor 'dask'; expected one of process, inline, ray"):
        make_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ImportError) as info:
        make_executor("ray")
    assert str(info.value) == RAY_MISSING
    with pytest.raises(ValueError, match="module-level function"):
        ProcessExecutor(workers=1, job_fn=lambda job: job)
    with pytest.raises(ValueError, match="cannot import job_fn"):
        ProcessExecutor(workers=1, job_fn="uhnas.search.jobs:no_such_function")


def test_failing_callback_stops_running_jobs_and_bad_setup_raises():
    """An on_result that raises kills the running jobs (executor stays usable); a worker that cannot start raises."""
    with ProcessExecutor(
        workers=2, job_fn="time:sleep", preload=(), memory_limit_mb=0, start_method="spawn"
    ) as executor:
        executor.start(wait=True)
        pids = executor.worker_pids()

        def explode(result: JobResult) -> None:
            raise KeyError("store is down")

        with pytest.raises(KeyError, match="store is down"):
            executor.run([0.0, SLEEP_S], on_result=explode)
        assert len(executor.worker_pids()) == 1 and wait_gone(set(pids) - set(executor.worker_pids())) == []
        (result,) = executor.run([0.0])
        assert result.failed and result.reason == "job function returned NoneType, not JobResult"
        assert len(executor.worker_pids()) == 2
    with ProcessExecutor(workers=1, job_fn="time:sleep", preload=("no_such_module_for_uhnas",)) as broken:
        with pytest.raises(
            RuntimeError,
            match="executor worker failed to start: ModuleNotFoundError: No module named 'no_such_module_for_uhnas'",
        ):
            broken.run([0.0])


# A parent with two light workers (no torch: the 'job' is a float for time.sleep) that runs a 60 s job.
CHILD = """
import sys
from uhnas.search.executor import ProcessExecutor
executor = ProcessExecutor(workers=2, job_fn="time:sleep", preload=(), memory_limit_mb=0, start_method=sys.argv[1])
executor.start(wait=True)
print(" ".join(map(str, executor.worker_pids())), flush=True)
executor.run([float(sys.argv[2])])
"""


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_workers_die_with_their_parent(sig, start_method):
    """Ctrl-C in the parent or killing it outright leaves no worker behind."""
    command = [sys.executable, "-c", CHILD, start_method, str(SLEEP_S)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip(), child.stderr.read()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        time.sleep(0.3)  # the sleeping job is running
        child.send_signal(sig)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in child.stderr.read()
    assert wait_gone(pids, reaped=False) == []  # orphans' zombies are init's to reap


@pytest.mark.slow
def test_ray_executor_local(inline_results, monkeypatch):
    """Ray tasks with half a GPU each give the inline numbers; a sleeping task times out and a crashing one fails."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'uhnas[ray]')")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    # local Ray workers inherit the driver's environment: let them import this module's helper
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), str(SRC_DIR), os.environ.get("PYTHONPATH", "")]))
    commands = [ARCHS[0], "!sleep", ARCHS[1], "!exit"]
    jobs = [Job(i, command, SETTINGS) for i, command in enumerate(commands)]
    # one declared GPU shared by two jobs (num_gpus=0.5): scheduling only, the jobs run on the CPU
    init = {"num_gpus": 1, "object_store_memory": 100 << 20, "log_to_driver": False}  # 100 MB: enough for job results
    with RayExecutor(
        None, num_cpus=1, num_gpus=0.5, timeout_s=8.0, job_fn=HELPER, local_cpus=2, init_kwargs=init
    ) as executor:
        assert executor.capacity() == 2
        with pytest.raises(RuntimeError, match="each job asks for 2 GPU, but the Ray cluster has 1"):
            RayExecutor(None, num_gpus=2).capacity()  # reuses the running instance
        seen: list[int] = []
        results = executor.run(jobs, on_result=lambda r: seen.append(r.job_id))
    assert not ray.is_initialized()
    assert sorted(seen) == [0, 1, 2, 3] and [r.job_id for r in results] == [0, 1, 2, 3]
    assert numbers(results[0]) == numbers(inline_results[0]) and numbers(results[2]) == numbers(inline_results[1])
    assert results[1].failed and results[1].reason == "timed out after 8 s"
    assert results[3].failed and results[3].reason.startswith("worker died:")


def test_same_numbers_as_inline_in_job_order(inline_results, faulty):
    """One worker (run_job, default limits) and two (misbehaving_job, tight limits) give the inline numbers in order."""
    jobs = [Job(i, arch, SETTINGS) for i, arch in enumerate(ARCHS)]
    assert not any(r.failed for r in inline_results), [r.reason for r in inline_results]
    with ProcessExecutor(workers=1) as single:  # production defaults
        assert single.torch_threads >= 1 and single.memory_limit_mb is not None
        seen: list[int] = []
        one = single.run(jobs, on_result=lambda r: seen.append(r.job_id))
        pids = single.worker_pids()
    assert wait_gone(pids) == []  # reaped: not even zombies
    assert sorted(seen) == [0, 1, 2, 3]
    seen.clear()
    two = faulty.run(jobs, on_result=lambda r: seen.append(r.job_id))
    assert sorted(seen) == [0, 1, 2, 3]
    for results in (one, two):
        assert [r.job_id for r in results] == [0, 1, 2, 3]
        assert [numbers(r) for r in results] == [numbers(r) for r in inline_results]


def test_timeout_raise_and_crashes_fail_while_others_complete(inline_results, faulty):
    """Sleeping past the timeout, raising, exiting and SIGKILL-ing itself fail with reasons; the rest complete."""
    commands = ["!sleep", ARCHS[0], "!raise", ARCHS[1], ARCHS[2], "!exit", "!sigkill"]  # ends soon after the timeout
    jobs = [Job(10 + i, command, SETTINGS) for i, command in enumerate(commands)]
    before = set(faulty.worker_pids())
    seen: list[int] = []
    results = faulty.run(jobs, on_result=lambda r: seen.append(r.job_id))
    assert sorted(seen) == [job.job_id for job in jobs] and [r.job_id for r in results] == [job.job_id for job in jobs]
    by_command = dict(zip(commands, results))
    assert by_command["!sleep"].failed and by_command["!sleep"].reason == f"timed out after {TIMEOUT_S:g} s"
    assert by_command["!raise"].failed and by_command["!raise"].reason == "RuntimeError: deliberate failure"
    assert by_command["!exit"].failed and by_command["!exit"].reason == "worker died: exit code 3"
    assert by_command["!sigkill"].failed and by_command["!sigkill"].reason.startswith("worker died: killed by SIGKILL")
    for arch, reference in zip(ARCHS[:3], inline_results):
        assert not by_command[arch].failed and numbers(by_command[arch]) == numbers(reference)
    after = set(faulty.worker_pids())
    assert len(after) == 2 and not before & after  # both replaced (one twice); the pool is whole again
    assert wait_gone(before) == []  # killed and reaped


def test_memory_limit_fails_the_job_and_the_executor_goes_on(inline_results):
    """A huge allocation and a slowly growing one fail with the memory reason; a normal job then completes.

    Its own executor, with a timeout far above the ~1-2 s the gradual job needs to pass the limit: how fast it
    grows depends on the machine's page-fault cost, and with the short timeout of `faulty` it sometimes timed out.
    """
    jobs = [Job(20, "!alloc-huge", SETTINGS), Job(21, "!alloc-gradual", SETTINGS), Job(22, ARCHS[3], SETTINGS)]
    with ProcessExecutor(
        workers=2, timeout_s=MEMORY_TEST_TIMEOUT_S, memory_limit_mb=LIMIT_MB, job_fn=HELPER
    ) as executor:
        huge, gradual, normal = executor.run(jobs)
    reason = f"exceeded memory limit of {LIMIT_MB} MB"
    assert huge.failed
    if torch.version.cuda is None and torch.version.hip is None:  # CPU-only build: the address-space cap is in force
        assert huge.reason == reason and "MemoryError" in huge.details["error"]
    assert gradual.failed and gradual.reason == reason and gradual.details["rss_mb"] > LIMIT_MB  # resident-memory poll
    assert not normal.failed and numbers(normal) == numbers(inline_results[3])

"""Executors: same numbers as in-process evaluation, hard timeouts, crashes, memory limit, no orphans, Ray.

No assertion depends on how fast this machine is (they must hold on a loaded 2-core machine): jobs that must
complete run under a timeout only a hung job reaches, jobs that must time out sleep until killed, a test that
needs a job to be running waits for the job to say so (a file it writes), and a job that must break the memory
limit grows past it and then holds still until the executor's poll kills it.
"""

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

from uhnas.config import load_config
from uhnas.errors import ConfigError
from uhnas.search.executor import RAY_MISSING, ProcessExecutor, RayExecutor, make_executor, resident_mb
from uhnas.search.jobs import EvalSettings, InlineExecutor, Job, JobResult, run_job

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
HELPER = "test_executor:misbehaving_job"  # importable in workers: spawn passes sys.path, which holds this folder
SETTINGS = EvalSettings.from_config(
    load_config(None, ["backend=gpu-b200-fp16", "training.epochs=1", "training.batch_size=128", "mc=2"])
)
TIMEOUT_S = 3.0  # s: the short timeout, only ever around jobs that sleep (must time out) or return at once
JOB_TIMEOUT_S = 600.0  # s: around real digits jobs (~0.1-1 s each; a Ray worker on a loaded machine took > 120 s)
LIMIT_MB = 1024  # MB: above a worker with torch loaded running a digits job (~0.5 GB resident)
SLEEP_S = 600.0  # s a sleeping job sleeps: far beyond any timeout here, only a kill ends it
GONE_WITHIN_S = 30.0  # s for killed workers to disappear (checked often; the margin is only spent on a failure)
RUNNING_WITHIN_S = 120.0  # s for a started job to announce it is running (spawned workers import first)


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
    elif command == "!quick":
        return JobResult(job.job_id, {"quick": True}, False)
    elif command == "!alloc-huge":
        bytearray(64 << 30)  # 64 GiB at once
    elif command == "!alloc-and-hold":  # only the parent's resident-memory poll can end it, however slow the machine
        # fresh mappings, each page touched: resident memory grows with address space, whatever malloc's policy
        # (uhnas.allocator). It stops a little past the limit, well inside the address-space cap (start size +
        # LIMIT_MB: the worker already holds hundreds of MB), and sleeps until the poll sees it and kills it.
        hoard: list[mmap.mmap] = []
        while (resident_mb(os.getpid()) or 0.0) <= LIMIT_MB + 64 and len(hoard) < 512:
            block = mmap.mmap(-1, 16 << 20)
            for offset in range(0, 16 << 20, mmap.PAGESIZE):
                block[offset] = 1
            hoard.append(block)
        time.sleep(SLEEP_S)
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
    """Two workers running misbehaving_job, with a timeout (that only a hung job reaches) and a 1 GB memory limit."""
    executor = ProcessExecutor(workers=2, timeout_s=JOB_TIMEOUT_S, memory_limit_mb=LIMIT_MB, job_fn=HELPER)
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
        assert executor.worker_pids()[0] in pids  # the one that ran the 0 s job is kept, the sleeping one killed
        (result,) = executor.run([0.0])
        assert result.failed and result.reason == "job function returned NoneType, not JobResult"
        assert len(executor.worker_pids()) == 2
    with ProcessExecutor(workers=1, job_fn="time:sleep", preload=("no_such_module_for_uhnas",)) as broken:
        with pytest.raises(
            RuntimeError,
            match="executor worker failed to start: ModuleNotFoundError: No module named 'no_such_module_for_uhnas'",
        ):
            broken.run([0.0])


# A parent with two light workers (no torch) that runs one job: announce it is running (a file), then sleep.
CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even when started as a background job
sys.path.insert(0, sys.argv[3])
from uhnas.search.executor import ProcessExecutor
executor = ProcessExecutor(
    workers=2, job_fn="uhnas_announcing_sleep:run", preload=(), memory_limit_mb=0, start_method=sys.argv[1]
)
executor.start(wait=True)
print(" ".join(map(str, executor.worker_pids())), flush=True)
executor.run([(sys.argv[4], float(sys.argv[2]))])
"""
ANNOUNCING_SLEEP = """
import os
import time


def run(job):
    path, seconds = job
    with open(path + ".part", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(path + ".part", path)  # appears complete or not at all
    time.sleep(seconds)
"""


def wait_for_file(path: Path, child: subprocess.Popen, within_s: float = RUNNING_WITHIN_S) -> str | None:
    """The text of a file once it exists, or None if the child exits or within_s passes first."""
    deadline = time.monotonic() + within_s
    while not path.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return path.read_text()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_workers_die_with_their_parent(sig, start_method, tmp_path):
    """Ctrl-C in the parent or killing it outright, while a job runs, leaves no worker behind."""
    (tmp_path / "uhnas_announcing_sleep.py").write_text(ANNOUNCING_SLEEP)
    running = tmp_path / "running"
    command = [sys.executable, "-c", CHILD, start_method, str(SLEEP_S), str(tmp_path), str(running)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip(), child.stderr.read()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        job_pid = wait_for_file(running, child)  # the job is running in a worker: no race with start-up
        assert job_pid is not None and int(job_pid) in pids, child.stderr.read() if child.poll() is not None else ""
        child.send_signal(sig)
        child.wait(timeout=60)
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
    """Ray tasks with half a GPU each give the inline numbers, a crashing one fails, a sleeping one times out.

    The real jobs run under a timeout only a hang reaches (a task's time counts from its submission, so it includes
    a fresh Ray worker importing torch); the short timeout is tested with a second executor, on the same Ray
    instance, that runs only a job that sleeps until it is cancelled.
    """
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'uhnas[ray]')")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    # local Ray workers inherit the driver's environment: let them import this module's helper
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), str(SRC_DIR), os.environ.get("PYTHONPATH", "")]))
    commands = [ARCHS[0], "!exit", ARCHS[1]]  # a slot freed by the crash runs ARCHS[1]
    jobs = [Job(i, command, SETTINGS) for i, command in enumerate(commands)]
    # one declared GPU shared by two jobs (num_gpus=0.5): scheduling only, the jobs run on the CPU
    init = {"num_gpus": 1, "object_store_memory": 100 << 20, "log_to_driver": False}  # 100 MB: enough for job results
    with RayExecutor(
        None, num_cpus=1, num_gpus=0.5, timeout_s=JOB_TIMEOUT_S, job_fn=HELPER, local_cpus=2, init_kwargs=init
    ) as executor:
        assert executor.capacity() == 2
        with pytest.raises(ConfigError, match="each job asks for 2 GPU, but the Ray cluster has 1"):
            RayExecutor(None, num_gpus=2).capacity()  # reuses the running instance
        seen: list[int] = []
        results = executor.run(jobs, on_result=lambda r: seen.append(r.job_id))
        short = RayExecutor(None, num_cpus=1, num_gpus=0.5, timeout_s=TIMEOUT_S, job_fn=HELPER)  # same instance
        start = time.monotonic()
        (sleeper,) = short.run([Job(3, "!sleep", SETTINGS)])
        assert time.monotonic() - start < SLEEP_S / 2  # cut short by the timeout, not ended by itself
    assert not ray.is_initialized()
    assert sorted(seen) == [0, 1, 2] and [r.job_id for r in results] == [0, 1, 2]
    assert numbers(results[0]) == numbers(inline_results[0]) and numbers(results[2]) == numbers(inline_results[1])
    assert results[1].failed and results[1].reason.startswith("worker died:")
    assert sleeper.failed and sleeper.reason == f"timed out after {TIMEOUT_S:g} s"


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


def test_raise_and_crashes_fail_while_others_complete(inline_results, faulty):
    """Raising, exiting and SIGKILL-ing itself fail with reasons; the other jobs complete with the inline numbers."""
    commands = [ARCHS[0], "!raise", ARCHS[1], "!exit", ARCHS[2], "!sigkill"]
    jobs = [Job(10 + i, command, SETTINGS) for i, command in enumerate(commands)]
    before = set(faulty.worker_pids())
    seen: list[int] = []
    results = faulty.run(jobs, on_result=lambda r: seen.append(r.job_id))
    assert sorted(seen) == [job.job_id for job in jobs] and [r.job_id for r in results] == [job.job_id for job in jobs]
    by_command = dict(zip(commands, results))
    assert by_command["!raise"].failed and by_command["!raise"].reason == "RuntimeError: deliberate failure"
    assert by_command["!exit"].failed and by_command["!exit"].reason == "worker died: exit code 3"
    assert by_command["!sigkill"].failed and by_command["!sigkill"].reason.startswith("worker died: killed by SIGKILL")
    for arch, reference in zip(ARCHS[:3], inline_results):
        assert not by_command[arch].failed and numbers(by_command[arch]) == numbers(reference)
    after = set(faulty.worker_pids())
    assert len(after) == 2 and before - after  # the dead replaced (which ones depends on scheduling): pool whole
    assert wait_gone(before - after) == []  # and reaped


def test_timeout_kills_and_replaces_while_others_complete():
    """Jobs past the timeout fail with its reason and their workers are replaced; the queued jobs then complete.

    Both workers are ready before the run, so each takes one sleeping job at once; the quick jobs need no time.
    """
    commands = ["!sleep", "!sleep", "!quick", "!quick", "!quick"]
    jobs = [Job(30 + i, command, SETTINGS) for i, command in enumerate(commands)]
    with ProcessExecutor(workers=2, timeout_s=TIMEOUT_S, memory_limit_mb=0, job_fn=HELPER) as executor:
        executor.start(wait=True)
        before = set(executor.worker_pids())
        start = time.monotonic()
        results = executor.run(jobs)
        elapsed = time.monotonic() - start
        after = set(executor.worker_pids())
    assert [r.job_id for r in results] == [job.job_id for job in jobs]
    for result in results[:2]:
        assert result.failed and result.reason == f"timed out after {TIMEOUT_S:g} s"
        assert result.wall_seconds >= TIMEOUT_S
    assert all(not r.failed and r.evaluation == {"quick": True} for r in results[2:])
    assert TIMEOUT_S <= elapsed < SLEEP_S / 2  # cut short by the timeout, not ended by itself
    assert len(after) == 2 and not before & after  # both replaced; the pool is whole again
    assert wait_gone(before) == []  # killed and reaped


def test_memory_limit_fails_the_job_and_the_executor_goes_on(inline_results):
    """A huge allocation and one that grows past the limit and holds fail with the memory reason; a normal job
    then completes. The growing job waits to be killed, so the resident-memory poll catches it however slowly the
    machine runs; only a broken poll lets it reach the timeout (and the assertion on its reason names that).
    """
    jobs = [Job(20, "!alloc-huge", SETTINGS), Job(21, "!alloc-and-hold", SETTINGS), Job(22, ARCHS[3], SETTINGS)]
    with ProcessExecutor(workers=2, timeout_s=JOB_TIMEOUT_S, memory_limit_mb=LIMIT_MB, job_fn=HELPER) as executor:
        huge, gradual, normal = executor.run(jobs)
    reason = f"exceeded memory limit of {LIMIT_MB} MB"
    assert huge.failed
    if torch.version.cuda is None and torch.version.hip is None:  # CPU-only build: the address-space cap is in force
        assert huge.reason == reason and "MemoryError" in huge.details["error"]
    assert gradual.failed and gradual.reason == reason and gradual.details["rss_mb"] > LIMIT_MB  # resident-memory poll
    assert not normal.failed and numbers(normal) == numbers(inline_results[3])

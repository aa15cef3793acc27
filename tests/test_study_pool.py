"""The shared pool: cells' jobs interleave on the slots, callbacks stay in the caller's thread, priority order."""

from __future__ import annotations

import threading
import time

import pytest

from uhnas.errors import SearchError
from uhnas.search.jobs import InlineExecutor, Job, JobResult
from uhnas.study.pool import SharedPool, Slot

STARTED: list[tuple[int, float]] = []


def sleepy(job: Job) -> JobResult:
    STARTED.append((job.job_id, time.monotonic()))
    time.sleep(0.2)
    return JobResult(job.job_id, {"thread": threading.current_thread().name}, False)


def jobs(*ids: int) -> list[Job]:
    return [Job(i, "{}", None) for i in ids]  # type: ignore[arg-type]  # the sleepy job reads no settings


def make_pool(slots: int) -> SharedPool:
    return SharedPool([Slot(InlineExecutor(sleepy), own=True) for _ in range(slots)])


def test_two_cells_share_the_slots_and_callbacks_run_in_the_callers_thread():
    STARTED.clear()
    pool = make_pool(2)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    results: dict[str, list[int]] = {}

    def cell(name: str, ids: tuple[int, ...], priority: int) -> None:
        client = pool.client(priority)
        out = client.run(jobs(*ids), lambda r: seen[name].append(threading.current_thread().name))
        results[name] = [r.job_id for r in out]

    try:
        start = time.monotonic()
        threads = [
            threading.Thread(target=cell, args=("a", (1, 2, 3), 0), name="cell-a"),
            threading.Thread(target=cell, args=("b", (11,), 1), name="cell-b"),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
    finally:
        pool.close()
    assert results == {"a": [1, 2, 3], "b": [11]}  # job order, whatever order they finished in
    assert seen == {"a": ["cell-a"] * 3, "b": ["cell-b"]}
    assert elapsed < 0.75  # 4 jobs of 0.2 s on 2 slots: 0.4 s, not the serial 0.8 s
    # cell b's job ran while cell a still had one queued: the slot freed by a's odd job went to b, not idle
    assert len(STARTED) == 4


def test_lower_priority_values_are_served_first():
    STARTED.clear()
    pool = make_pool(1)
    try:
        blocker = threading.Thread(target=lambda: pool.client(0).run(jobs(0)))
        blocker.start()
        time.sleep(0.05)  # the only slot is busy: the next submissions queue up
        late = threading.Thread(target=lambda: pool.client(5).run(jobs(50)))
        late.start()
        time.sleep(0.02)
        early = threading.Thread(target=lambda: pool.client(1).run(jobs(10)))
        early.start()
        for t in (blocker, late, early):
            t.join(10)
    finally:
        pool.close()
    assert [job_id for job_id, _ in STARTED] == [0, 10, 50]


def test_close_with_interrupt_fails_waiting_callers_instead_of_storing_results():
    pool = make_pool(1)
    errors: list[BaseException] = []
    stored: list[int] = []

    def cell() -> None:
        try:
            pool.client(0).run(jobs(1, 2), lambda r: stored.append(r.job_id))
        except SearchError as error:
            errors.append(error)

    thread = threading.Thread(target=cell)
    thread.start()
    time.sleep(0.05)
    pool.close(interrupt=True)
    thread.join(10)
    assert stored == [] and len(errors) == 1
    with pytest.raises(SearchError):
        pool.client(0).run(jobs(3))

"""A study killed with SIGKILL mid-run and resumed ends with the same cells and trials as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uhnas.store import open_run
from uhnas.study import run_study, study_status
from uhnas.study.pool import inline_pool

STUDY = """\
name: killed
base:
  dataset: digits
  backend: ideal
  population: 4
  generations: 2
  offspring: 2
  mc: 2
  training: {epochs: 1}
grid:
  method: [nsga2, random]
  seed: [3]
"""
CELLS = ["nsga2_s3", "random_s3"]
BUDGET = 4 + 2 * 2
KILL_AFTER = BUDGET + 3  # the first cell finished, the second one in its initial population
TIMEOUT_S = 300


def stored_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'FAIL')").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start(*args: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "uhnas", "study", "run", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def trial_set(cell_dir: Path) -> list[tuple[object, ...]]:
    return sorted((r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state) for r in open_run(cell_dir).records())


def snapshot(cell_dir: Path) -> tuple[object, ...]:
    store = open_run(cell_dir)
    return store.metadata(), [r.to_dict() for r in store.records()]


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_cells_and_trials(tmp_path: Path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY, encoding="utf-8")
    killed = tmp_path / "killed"
    victim = start(study, "--out", killed, "--workers", 2, "--parallel-cells", 1)
    dbs = [killed / "cells" / cell / "study.db" for cell in CELLS]
    deadline = time.monotonic() + TIMEOUT_S
    while sum(stored_trials(db) for db in dbs) < KILL_AFTER:
        if victim.poll() is not None:
            pytest.fail(f"the study ended before it could be killed: {victim.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the study stored too few trials in time"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    victim.stderr.close()
    assert stored_trials(dbs[0]) == BUDGET and 0 < stored_trials(dbs[1]) < BUDGET
    status = study_status(killed)
    assert status["counts"]["done"] == 1 and status["counts"]["interrupted"] == 1 and status["runner"] is None
    finished_before = snapshot(dbs[0].parent)

    resumed = start("--resume", killed, "--workers", 2)
    pool = inline_pool()
    try:  # the uninterrupted reference, meanwhile, in this process
        reference = run_study(study, tmp_path / "straight", pool=pool)
    finally:
        pool.close()
    _, err = resumed.communicate(timeout=TIMEOUT_S)
    assert resumed.returncode == 0, err.decode()[-2000:]

    assert [c.state for c in reference.cells] == ["done", "done"]
    assert snapshot(dbs[0].parent) == finished_before  # untouched (SQLite may checkpoint its WAL: no mtime check)
    for cell in CELLS:
        records = open_run(killed / "cells" / cell).records()
        assert sorted(r.number for r in records) == list(range(BUDGET))  # nothing evaluated twice or lost
        assert trial_set(killed / "cells" / cell) == trial_set(tmp_path / "straight" / "cells" / cell)
    assert study_status(killed)["counts"]["done"] == 2

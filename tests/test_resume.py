"""Resume: a search killed with SIGKILL mid-run and resumed ends exactly like an uninterrupted run with one seed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uhnas.config import load_config
from uhnas.search.engine import run_search
from uhnas.store import open_run

CONFIG = """\
method: nsga2
dataset: digits
backend: ideal
seed: 7
population: 4
generations: 3
offspring: 2
mc: 2
training: {epochs: 1}
executor: {kind: inline}
"""
BUDGET = 4 + 3 * 2
KILL_AFTER = 5  # stored trials: in the middle of generation 1
TIMEOUT_S = 240


def start(config: Path, out: Path, resume: bool = False) -> subprocess.Popen[bytes]:
    """`uhnas search --config CONFIG --out OUT` (or `--resume OUT`) in a fresh interpreter, the real CLI."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    where = ["--resume", str(out)] if resume else ["--config", str(config), "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "uhnas", "search", *where, "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stored_trials(db: Path) -> int:
    """Finished trials in the run's SQLite file (read-only; the writer uses WAL)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'FAIL')").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err.decode()[-2000:]


def trial_set(out: Path) -> list[tuple[object, ...]]:
    return sorted((r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state) for r in open_run(out).records())


def test_killed_search_resumes_to_the_same_result(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    killed_out = tmp_path / "killed"
    victim = start(config, killed_out)
    deadline = time.monotonic() + TIMEOUT_S
    while stored_trials(killed_out / "study.db") < KILL_AFTER:
        if victim.poll() is not None:
            pytest.fail(f"the search ended before it could be killed: {victim.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the search stored too few trials in time"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    victim.stderr.close()
    done_before = stored_trials(killed_out / "study.db")
    assert KILL_AFTER <= done_before < BUDGET

    resumed = start(config, killed_out, resume=True)
    run_search(load_config(config), tmp_path / "straight")  # the uninterrupted reference, meanwhile, in this process
    finish(resumed)

    records = open_run(killed_out).records()
    assert len(records) == BUDGET
    hashes = [r.hash for r in records if r.hash]
    assert len(hashes) == len(set(hashes))
    assert trial_set(killed_out) == trial_set(tmp_path / "straight")
    store = open_run(killed_out)
    assert [e["generation"] for e in store.generation_log()] == [0, 1, 2, 3]
    assert store.status().finished and store.status().generation == 3
    # the first trials were stored before the kill and kept their numbers: nothing evaluated twice
    assert sorted(r.number for r in records) == list(range(BUDGET))

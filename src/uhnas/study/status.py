"""Where a study stands: cells done / running / interrupted / pending / failed, evaluations against budget, ETA.

Everything is read from the cells' stores and the study directory's small state files, never from the runner,
so `uhnas study status` works while a study runs, after it was killed, and after it finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from uhnas.errors import UhnasError
from uhnas.study.layout import StudyDir

STATES = ("done", "running", "interrupted", "failed", "pending", "invalid")


def study_status(out: str | Path) -> dict[str, Any]:
    """The study's progress as a JSON-ready dict: per cell and in total, with an ETA while a runner is live."""
    from uhnas.store import RunStore

    directory = StudyDir(out).require()
    cells = directory.cells()
    failures = directory.failures()
    live = directory.live_session()
    rows: list[dict[str, Any]] = []
    for cell in cells:
        budget = cell.config.budget if cell.config is not None else 0
        row: dict[str, Any] = {
            "id": cell.id,
            "axes": {axis: cell.axes[axis] for axis in cell.varied},
            "budget": budget,
            "evaluations": 0,
            "failed_trials": 0,
            "generation": -1,
            "hypervolume": None,
            "error": (failures.get(cell.id) or {}).get("error"),
        }
        path = directory.cell_dir(cell)
        if cell.config is None:
            row["state"], row["error"] = "invalid", cell.error
        elif RunStore.exists(path):
            try:
                status = RunStore.open(path).status()
            except UhnasError as error:  # a runner between writing run.yaml and creating the study: starting
                row["state"], row["error"] = ("running", None) if live is not None else ("failed", str(error))
            else:
                row.update(
                    evaluations=status.trials,
                    failed_trials=status.failed,
                    generation=status.generation,
                    hypervolume=status.hypervolume,
                )
                if status.finished:
                    row["state"], row["error"] = "done", None
                elif cell.id in failures:
                    row["state"] = "failed"
                else:
                    row["state"] = "running" if live is not None else "interrupted"
        else:
            row["state"] = "failed" if cell.id in failures else "pending"
        rows.append(row)
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    budget = sum(r["budget"] for r in rows if r["state"] != "invalid")
    done = sum(min(r["evaluations"], r["budget"]) for r in rows)
    eta = None
    rate = None
    if live is not None:
        elapsed = time.time() - float(live["started"])
        new = done - int(live.get("evaluations_at_start", 0))
        if new > 0 and elapsed > 0:
            rate = new / elapsed
            runnable = sum(r["budget"] - r["evaluations"] for r in rows if r["state"] in ("running", "pending"))
            eta = max(0, runnable) / rate
    return {
        "study": str(directory.root),
        "cells": len(rows),
        "counts": counts,
        "evaluations": done,
        "budget": budget,
        "runner": live,
        "evaluations_per_s": rate,
        "eta_s": eta,
        "sessions": len(directory.sessions()),
        "rows": rows,
    }


__all__ = ["study_status"]

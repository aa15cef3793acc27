"""The study directory: what the runner writes beside the cells' run directories.

```
DIR/study.yaml            the resolved study file (overrides applied): what --resume runs again
DIR/cells.json            the expanded cells: id, axis values, run config (or why it is invalid)
DIR/cells/<cell id>/      one ordinary run directory per cell (`uhnas status` / `pareto` work on it)
DIR/failures/<id>.json    the last failure of a cell (removed when the cell finishes)
DIR/sessions.json         one entry per `study run` session: pid, host, start, end, slots (for status and overhead)
DIR/report/               written by `uhnas study report`
```
Results live only in the cells' stores; these files say what to run and how the runs went.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from uhnas.errors import ConfigError, StoreError
from uhnas.study.grid import Cell, expand
from uhnas.study.spec import StudySpec, study_from_dict

STUDY_FILE = "study.yaml"
CELLS_FILE = "cells.json"
FAILURES_DIR = "failures"
SESSIONS_FILE = "sessions.json"
REPORT_DIR = "report"


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{path}: cannot read: {error}") from None


class StudyDir:
    """Paths and small state files of one study directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def exists(root: str | Path) -> bool:
        """Whether `root` holds a study (its study.yaml)."""
        return (Path(root) / STUDY_FILE).exists()

    def require(self) -> StudyDir:
        """self, or StoreError when the directory holds no study."""
        if not self.exists(self.root):
            raise StoreError(f"{self.root}: not a study directory (no {STUDY_FILE})")
        return self

    # -- the study and its cells

    def name(self) -> str:
        return self.root.resolve().name

    def spec(self) -> StudySpec:
        """The study as stored (validated again)."""
        from uhnas.config import read_yaml

        path = self.root / STUDY_FILE
        return study_from_dict(read_yaml(path), str(path))

    def cells(self) -> list[Cell]:
        """The study's cells, expanded again from the stored study file."""
        spec = self.spec()
        return expand(spec, spec.name or self.name())

    def cell_dir(self, cell: Cell | str) -> Path:
        return cell.directory(self.root) if isinstance(cell, Cell) else self.root / "cells" / cell

    def write_manifest(self, cells: list[Cell]) -> None:
        _write_json(self.root / CELLS_FILE, [cell.to_dict() for cell in cells])

    # -- failures

    def record_failure(self, cell: Cell, error: str, kind: str, trace: list[str] | None = None) -> None:
        _write_json(
            self.root / FAILURES_DIR / f"{cell.id}.json",
            {"cell": cell.id, "error": error, "kind": kind, "traceback": trace or [], "time": time.time()},
        )

    def clear_failure(self, cell: Cell) -> None:
        (self.root / FAILURES_DIR / f"{cell.id}.json").unlink(missing_ok=True)

    def failures(self) -> dict[str, dict[str, Any]]:
        folder = self.root / FAILURES_DIR
        if not folder.is_dir():
            return {}
        return {path.stem: _read_json(path, {}) for path in sorted(folder.glob("*.json"))}

    # -- sessions (who runs the study, since when)

    def sessions(self) -> list[dict[str, Any]]:
        return list(_read_json(self.root / SESSIONS_FILE, []))

    def start_session(self, slots: int, executor: str, evaluations: int) -> int:
        """Record a new runner session; refuses when a live runner on this host already runs the study."""
        sessions = self.sessions()
        live = self.live_session(sessions)
        if live is not None and live.get("pid") != os.getpid():
            raise ConfigError(f"{self.root}: already being run by process {live['pid']} on {live['host']}")
        sessions.append(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.time(),
                "ended": None,
                "slots": slots,
                "executor": executor,
                "evaluations_at_start": evaluations,
            }
        )
        _write_json(self.root / SESSIONS_FILE, sessions)
        return len(sessions) - 1

    def end_session(self, index: int, outcome: str) -> None:
        sessions = self.sessions()
        if 0 <= index < len(sessions):
            sessions[index]["ended"] = time.time()
            sessions[index]["outcome"] = outcome
            _write_json(self.root / SESSIONS_FILE, sessions)

    def live_session(self, sessions: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The last session if its process still runs on this host (a killed runner leaves ended = None)."""
        sessions = self.sessions() if sessions is None else sessions
        if not sessions:
            return None
        last = sessions[-1]
        if last.get("ended") is not None or last.get("host") != socket.gethostname():
            return None
        return last if _alive(int(last.get("pid", -1))) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


__all__ = ["REPORT_DIR", "STUDY_FILE", "StudyDir"]

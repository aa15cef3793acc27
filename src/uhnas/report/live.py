"""A rich live display of a running search, fed by the engine's progress events."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from uhnas.search.events import CandidateDone, Event, GenerationDone, GenerationStarted, RunFinished, RunStarted


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LiveDisplay:
    """Generation, evaluations, failures, hypervolume, front size, elapsed and ETA, redrawn per event."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("evaluations"), BarColumn(), MofNCompleteColumn(), console=console)
        self.task = self.progress.add_task("evaluations", total=1)
        self.state: dict[str, Any] = {
            "generation": "–",
            "failures": 0,
            "hypervolume": 0.0,
            "front": 0,
            "eta": None,
            "last": "",
        }
        self.started = time.monotonic()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)  # type: ignore[arg-type]

    def _render(self) -> Group:
        s = self.state
        table = Table.grid(padding=(0, 2))
        table.add_row("generation", str(s["generation"]), "failures", str(s["failures"]))
        table.add_row("hypervolume", f"{s['hypervolume']:.4f}", "front size", str(s["front"]))
        table.add_row("elapsed", _duration(time.monotonic() - self.started), "ETA", _duration(s["eta"]))
        return Group(self.progress, table, s["last"])

    def __call__(self, event: Event) -> None:
        """Consume one engine event."""
        s = self.state
        if isinstance(event, RunStarted):
            self.progress.update(self.task, total=event.budget, completed=event.done)
            s["generation"] = f"0/{event.generations}"
        elif isinstance(event, GenerationStarted):
            s["generation"] = f"{event.generation}/{event.generations}"
        elif isinstance(event, CandidateDone):
            self.progress.update(self.task, completed=event.done)
            record = event.record
            if record.failed:
                s["failures"] += 1
                s["last"] = f"[red]candidate {record.generation}.{record.slot} failed:[/red] {record.reason}"
            else:
                s["last"] = (
                    f"candidate {record.generation}.{record.slot}: error {record.error:.4f}, "
                    f"{record.energy_nj:.4g} nJ ({record.operator})"
                )
        elif isinstance(event, GenerationDone):
            s.update(hypervolume=event.hypervolume, front=event.front_size, eta=event.eta_s, failures=event.failures)
        elif isinstance(event, RunFinished):
            s.update(hypervolume=event.hypervolume, eta=0.0)
        self.live.update(self._render())

"""A rich live display of a running search, fed by the engine's progress events; for an LLM-guided run also
the language model's accounting (calls, tokens, answers by verdict, LLM share of the proposals), read from the
run's call log after each event."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from uhnas.search.events import (
    CandidateDone,
    Event,
    GenerationDone,
    GenerationProposing,
    GenerationStarted,
    RunFinished,
    RunStarted,
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LiveDisplay:
    """Generation, evaluations, failures, hypervolume, front size, elapsed and ETA, redrawn per event."""

    def __init__(self, console: Console, llm_db: Path | None = None) -> None:
        self.console = console
        self.llm_db = llm_db
        self.operators: list[str | None] = []  # operators of the candidates stored in this session
        self.progress = Progress(TextColumn("evaluations"), BarColumn(), MofNCompleteColumn(), console=console)
        self.task = self.progress.add_task("evaluations", total=1)
        self.state: dict[str, Any] = {
            "generation": "–",
            "failures": 0,
            "hypervolume": 0.0,
            "front": 0,
            "eta": None,
            "last": "",
            "llm": None,
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
        if s["llm"] is not None:
            acc = s["llm"]
            p = acc["proposals"]
            answers = ", ".join(f"{k} {v}" for k, v in acc["answers"].items()) or "none yet"
            table.add_row("LLM calls", f"{acc['calls']} ({acc['total_tokens']:,} tokens)", "LLM proposals",
                          f"{p['llm']}/{p['slots']} (fallback {p['fallback']})")  # fmt: skip
            table.add_row("LLM answers", answers, "", "")
        return Group(self.progress, table, s["last"])

    def _llm(self) -> None:
        """Refresh the LLM accounting from the call log (never fails the run: a busy log is read next time)."""
        if self.llm_db is None or not self.llm_db.exists():
            return
        from uhnas.llm.accounting import llm_accounting

        try:
            self.state["llm"] = llm_accounting(self.llm_db, self.operators)
        except Exception:  # noqa: BLE001 - the display must not stop a search
            pass

    def __call__(self, event: Event) -> None:
        """Consume one engine event."""
        s = self.state
        if isinstance(event, RunStarted):
            self.progress.update(self.task, total=event.budget, completed=event.done)
            s["generation"] = f"0/{event.generations}"
        elif isinstance(event, GenerationProposing):
            s["generation"] = f"{event.generation}/{event.generations} (proposing {event.slots})"
        elif isinstance(event, GenerationStarted):
            s["generation"] = f"{event.generation}/{event.generations}"
        elif isinstance(event, CandidateDone):
            self.progress.update(self.task, completed=event.done)
            record = event.record
            self.operators.append(None if record.failed and record.arch is None else record.operator)
            if record.failed:
                s["failures"] += 1
                s["last"] = (
                    f"[red]candidate {record.generation}.{record.slot} failed:[/red] {escape(str(record.reason))}"
                )
            else:
                s["last"] = (
                    f"candidate {record.generation}.{record.slot}: error {record.error:.4f}, "
                    f"{record.energy_nj:.4g} nJ ({escape(str(record.operator))})"
                )
        elif isinstance(event, GenerationDone):
            s.update(hypervolume=event.hypervolume, front=event.front_size, eta=event.eta_s, failures=event.failures)
        elif isinstance(event, RunFinished):
            s.update(hypervolume=event.hypervolume, eta=0.0)
        if not isinstance(event, (RunStarted, GenerationProposing, GenerationStarted)):
            self._llm()
        self.live.update(self._render())

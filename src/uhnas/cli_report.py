"""`uhnas report DIR`: one self-contained HTML page for a run directory or a study directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uhnas.cli import _print_json, cli_errors, console


def report(
    directory: Annotated[Path, typer.Argument(help="Run directory (run.yaml) or study directory (study.yaml).")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: DIR/report.html).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written (path, kind, size, seconds) as JSON.")
    ] = False,
) -> None:
    """Write one self-contained HTML report (figures, tables, LLM log; works offline) of a run or a study."""
    with cli_errors():
        from uhnas.report.html import write_html_report

        written = write_html_report(directory, out)
        if as_json:
            _print_json(written.to_dict())
            return
        console.print(
            f"{written.kind} report: {written.path} ({written.bytes / 1024:.0f} KB, {written.figures} figures, "
            f"{written.seconds:.1f} s)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


__all__ = ["report"]

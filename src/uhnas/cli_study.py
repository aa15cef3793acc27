"""`uhnas study`: run a grid of searches from one YAML file, follow it, and report it with statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from uhnas.cli import CLIError, _print_json, cli_errors, console
from uhnas.study.tables import fmt, summary_tables

study_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Studies: backends x methods x seeds (x ablations) from one YAML file, resumable, with statistics.",
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _printer(as_json: bool) -> Any:
    """A progress callback printing one line per cell event (stderr with --json, so stdout stays one document)."""

    def show(event: Any) -> None:
        d = event.data
        if event.kind == "study_started":
            line = f"study: {d['cells']} cells on {d['pool']}" + (" (resumed)" if d["resumed"] else "")
        elif event.kind == "cell_started":
            line = f"{event.cell}: {'resuming' if d['resumed'] else 'starting'} ({d['budget']} evaluations)"
        elif event.kind == "cell_generation":
            line = (
                f"{event.cell}: generation {d['generation']}/{d['generations']}, {d['done']}/{d['budget']} "
                f"evaluations, hypervolume {d['hypervolume']:.4f}"
            )
        elif event.kind == "cell_finished":
            line = f"{event.cell}: done, hypervolume {d['hypervolume']:.4f}"
        elif event.kind == "cell_skipped":
            line = f"{event.cell}: already done ({d['evaluations']} evaluations)"
        elif event.kind == "cell_failed":
            line = f"{event.cell}: FAILED ({d['reason']}): {d['error']}"
        else:
            return
        if as_json:
            typer.echo(line, err=True)
        else:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    return show


@study_app.command("run")
def study_run(
    study: Annotated[Path | None, typer.Argument(help="Study YAML file (optional with --resume).")] = None,
    out: Annotated[Path | None, typer.Option(help="Study directory (cells/, report/, study.yaml).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the study in this directory.")] = None,
    executor: Annotated[str | None, typer.Option(help="process (shared local workers), ray or inline.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (Ray: tasks in flight); default: all cores.")
    ] = None,
    parallel_cells: Annotated[
        int | None, typer.Option(min=1, help="Cells running at once (default: workers + 1).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override: base key (training.epochs=1) or axis (grid.seed=[0,1]); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON (progress on stderr).")] = False,
) -> None:
    """Run every cell of a study to its budget (killed, continue with --resume DIR)."""
    with cli_errors():
        from uhnas.study.runner import run_study

        if resume is not None:
            if out is not None and out != resume:
                raise CLIError("--resume takes the study directory; do not combine it with another --out")
            directory, resuming = resume, True
        else:
            if study is None or out is None:
                raise CLIError("give a study file and --out DIR (or --resume DIR)")
            directory, resuming = out, False
        result = run_study(
            study,
            directory,
            resume=resuming,
            overrides=tuple(set_ or ()),
            executor=executor,
            ray_address=ray_address,
            workers=workers,
            parallel_cells=parallel_cells,
            progress=_printer(as_json),
        )
        if as_json:
            _print_json(result.to_dict())
        else:
            done = sum(c.state in ("done", "skipped") for c in result.cells)
            console.print(
                f"study {directory}: {done}/{len(result.cells)} cells done, {len(result.failed)} failed, "
                f"{_duration(result.elapsed_s)}; report: uhnas study report {directory}",
                markup=False,
                soft_wrap=True,
            )
            for cell in result.failed:
                console.print(f"  failed: {cell.id}: {cell.error}", markup=False, highlight=False, soft_wrap=True)
        if result.failed:
            raise typer.Exit(1)


@study_app.command("status")
def study_status_command(
    out: Annotated[Path, typer.Argument(help="Study directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Cells done / running / failed, evaluations against budget, ETA."""
    with cli_errors():
        from uhnas.study.status import study_status

        data = study_status(out)
        if as_json:
            _print_json(data)
            return
        table = Table(title=f"study {out}")
        for column in ("cell", "state", "evaluations", "generation", "hypervolume", "error"):
            table.add_column(
                column, justify="right" if column in ("evaluations", "generation", "hypervolume") else "left"
            )
        for row in data["rows"]:
            table.add_row(
                row["id"],
                row["state"],
                f"{row['evaluations']}/{row['budget']}",
                str(row["generation"]),
                fmt(row["hypervolume"]),
                row["error"] or "",
            )
        console.print(table)
        counts = ", ".join(f"{n} {state}" for state, n in data["counts"].items() if n)
        runner = data["runner"]
        who = f"running (pid {runner['pid']})" if runner else "no runner"
        console.print(
            f"{counts}; {data['evaluations']}/{data['budget']} evaluations; {who}; ETA {_duration(data['eta_s'])}",
            markup=False,
            soft_wrap=True,
        )


def _table(data: dict[str, Any]) -> Table:
    """A rich table of one text table of the report (uhnas.study.tables)."""
    table = Table(title=data["title"])
    for i, header in enumerate(data["headers"]):
        table.add_column(header, justify="right" if i >= data["numeric_from"] else "left")
    for row in data["rows"]:
        table.add_row(*row)
    return table


@study_app.command("report")
def study_report(
    out: Annotated[Path, typer.Argument(help="Study directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as one JSON document.")] = False,
) -> None:
    """Write DIR/report/ (figures as PNG and SVG, tables as CSV and JSON) and print the summary."""
    with cli_errors():
        from uhnas.study.report import write_report

        report = write_report(out)
        if as_json:
            _print_json(report)
            return
        c, t = report["cells"], report["timing"]
        console.print(
            f"study {report['study']}: {c['with_data']}/{c['total']} cells with data, {c['finished']} finished; "
            f"varies {', '.join(report['varied_axes']) or 'nothing'}; wall {_duration(t['study_wall_s'])} for "
            f"{_duration(t['evaluation_s'])} of evaluation on {t['slot_s'] / max(t['study_wall_s'], 1e-9):.0f} slot(s) "
            f"(utilisation {fmt(t['utilisation'], 2)})",
            markup=False,
            soft_wrap=True,
        )
        if c["finished"] < c["with_data"]:
            console.print(
                f"{c['with_data'] - c['finished']} cell(s) not finished: hypervolume, fronts and diversity are over "
                "the finished cells only",
                markup=False,
                soft_wrap=True,
            )
        for table in summary_tables(report):
            console.print(_table(table))
        console.print(f"report: {Path(out) / 'report'}", markup=False, soft_wrap=True)


__all__ = ["study_app"]

"""The study page's data: the tables and figures of `uhnas study report`, from `uhnas.study.report.build_report`
and drawn by `uhnas.study.figures` (the same functions that write DIR/report/), nothing recomputed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uhnas.report.svg import files_svg
from uhnas.study.tables import fmt, summary_tables, text_table

CELL_COLUMNS = [
    ("seed", "seed"),
    ("evaluations", "evaluations"),
    ("budget", "budget"),
    ("failed_trials", "failed"),
    ("hypervolume", "HV"),
    ("front_size", "front"),
    ("best_error", "best error"),
    ("mean_drop", "drop"),
    ("best_p5", "best p5"),
    ("evaluation_seconds", "eval s"),
]


def study_page_data(out: str | Path) -> dict[str, Any]:
    """The study report (build_report), its tables as `uhnas study report` prints them, and its figures."""
    from uhnas.study import figures
    from uhnas.study.report import build_report

    report = build_report(out)
    tables = summary_tables(report)
    cells = text_table(report["cell_metrics"], CELL_COLUMNS, "Cells")
    cells["headers"].insert(0, "cell")
    for row, cell in zip(cells["rows"], report["cell_metrics"]):
        row.insert(0, str(cell.get("cell")))
    cells["numeric_from"] += 1
    front_rows = [
        {"colour": row["colour"], "seeds": row["seeds"], "best_cell": row["best_cell"], "error": e, "energy_nj": j,
         "hash": h}
        for row in report["fronts"]
        for e, j, h in row["best_front"]
    ]  # fmt: skip
    fronts = {
        "title": "Best seed's front per colour",
        "headers": ["colour", "best cell", "hash", "error", "energy nJ"],
        "numeric_from": 3,
        "rows": [[str(r["colour"]), str(r["best_cell"]), str(r["hash"]), fmt(r["error"]), fmt(r["energy_nj"])]
                 for r in front_rows],
    }  # fmt: skip
    figs = {
        "fronts": files_svg(lambda stem: figures.fronts_figure(report["fronts"], stem), "sfront"),
        "hv_curves": files_svg(lambda stem: figures.hv_curves_figure(report["hv_curves"], "method", stem), "shvc"),
        "hv_box": files_svg(
            lambda stem: figures.hv_box_figure(report["cell_metrics"], report["varied_axes"], stem), "shvb"
        ),
    }
    return {"kind": "study", "report": report, "tables": tables, "cells_table": cells, "fronts_table": fronts,
            "figures": figs}  # fmt: skip


__all__ = ["study_page_data"]

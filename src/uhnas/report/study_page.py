"""The study page's data: the tables and figures of `uhnas study report`, from `uhnas.study.report.build_report`
and drawn by `uhnas.study.figures` (the same functions that write DIR/report/), nothing recomputed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uhnas.report.svg import files_svg

# The columns of `uhnas study report`'s terminal tables (uhnas.cli_study), kept in the same order and words.
STRATA_KEYS = (
    "dataset",
    "backend",
    "method",
    "llm.system_prompt",
    "objective",
    "training.noise_aware",
    "population",
    "generations",
    "offspring",
    "training.epochs",
    "mc",
)
SHORT = {"llm.system_prompt": "prompt", "training.noise_aware": "noise-aware", "training.epochs": "epochs"}
HV_COLUMNS = [("n", "n"), ("median", "median HV"), ("iqr_range", "IQR"), ("min", "min"), ("max", "max")]
TEST_COLUMNS = [
    ("test", "test"),
    ("statistic", "stat"),
    ("p", "p"),
    ("p_holm", "p Holm"),
    ("a12", "A12"),
    ("magnitude", "effect"),
]
DIVERSITY_COLUMNS = [
    ("n", "n"),
    ("front_size", "front"),
    ("front_mean_distance", "distance"),
    ("energy_decades", "decades"),
    ("distinct_front_archs_over_seeds", "distinct"),
    ("mean_drop", "drop"),
    ("mean_p5", "p5"),
    ("best_p5", "best p5"),
]
CLEAN_COLUMNS = [
    ("candidates", "candidates"),
    ("spearman", "Spearman"),
    ("kendall", "Kendall"),
    ("mean_drop", "drop"),
    ("retention_median", "retention"),
    ("regret_median", "regret"),
    ("regret_max", "max regret"),
    ("hv_loss_median", "HV loss"),
]
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


def fmt(value: Any, digits: int = 4) -> str:
    """A number as `uhnas study report` prints it; None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:
            return "-"
        return (
            f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
        )
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], title: str) -> dict[str, Any]:
    """A table of the strata columns that vary among the rows, then the given (key, header) columns."""
    keys = [k for k in STRATA_KEYS if rows and k in rows[0] and len({str(r.get(k)) for r in rows}) > 1]
    keys += [k for k in ("a", "b") if rows and k in rows[0]]
    headers = [SHORT.get(k, k) for k in keys] + [h for _, h in columns]
    body = []
    for row in rows:
        cells = [str(row.get(k)) for k in keys]
        for key, _ in columns:
            if key == "iqr_range":
                cells.append(f"{fmt(row.get('q25'), 3)}-{fmt(row.get('q75'), 3)}")
            else:
                value = row.get(key)
                cells.append(value if isinstance(value, str) else fmt(value, 3))
        body.append(cells)
    return {"title": title, "headers": headers, "numeric_from": len(keys), "rows": body}


def study_page_data(out: str | Path) -> dict[str, Any]:
    """The study report (build_report), its tables as `uhnas study report` prints them, and its figures."""
    from uhnas.study import figures
    from uhnas.study.report import build_report

    report = build_report(out)
    sections = [
        (report["hypervolume"], HV_COLUMNS, "Hypervolume by method (over seeds)"),
        (report["hypervolume_tests"], TEST_COLUMNS, "Pairwise tests of hypervolume (two-sided, Holm-corrected)"),
        (report["diversity"], DIVERSITY_COLUMNS, "Diversity and robustness of the fronts (medians over seeds)"),
        (report["clean_vs_noisy"], CLEAN_COLUMNS, "Clean vs noisy accuracy (every evaluated candidate)"),
    ]
    for axis, tables in report["ablations"].items():
        name = SHORT.get(axis, axis)
        sections.append((tables["hypervolume"], HV_COLUMNS, f"Ablation: hypervolume by {name}"))
        sections.append((tables["tests"], TEST_COLUMNS, f"Ablation: tests by {name}"))
        sections.append((tables["diversity"], DIVERSITY_COLUMNS, f"Ablation: diversity and robustness by {name}"))
    tables = [table(rows, columns, title) for rows, columns, title in sections if rows]
    cells = table(report["cell_metrics"], CELL_COLUMNS, "Cells")
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

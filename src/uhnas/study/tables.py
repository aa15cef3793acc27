"""The tables of a study report as text: one definition for the terminal (`uhnas study report`) and the HTML page.

A table is {"title", "headers", "numeric_from", "rows"}: the strata columns that vary among its rows (text), then
the metric columns (numbers formatted as the report prints them).
"""

from __future__ import annotations

from typing import Any

from uhnas.study.spec import AXES

STRATA_KEYS = tuple(axis for axis in AXES if axis != "seed")  # grouping columns, in the cell ids' order
AXIS_LABELS = {"llm.system_prompt": "prompt", "training.noise_aware": "noise-aware", "training.epochs": "epochs"}

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


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the study report prints it; None and NaN as "-"."""
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


def text_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], title: str) -> dict[str, Any]:
    """A table of the strata columns that vary among the rows (and a/b of a pairwise test), then `columns`."""
    keys = [k for k in STRATA_KEYS if rows and k in rows[0] and len({str(r.get(k)) for r in rows}) > 1]
    keys += [k for k in ("a", "b") if rows and k in rows[0]]
    headers = [AXIS_LABELS.get(k, k) for k in keys] + [h for _, h in columns]
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


def summary_tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's non-empty tables in print order: hypervolume, tests, diversity, clean vs noisy, ablations."""
    sections = [
        (report["hypervolume"], HV_COLUMNS, "Hypervolume by method (over seeds)"),
        (report["hypervolume_tests"], TEST_COLUMNS, "Pairwise tests of hypervolume (two-sided, Holm-corrected)"),
        (report["diversity"], DIVERSITY_COLUMNS, "Diversity and robustness of the fronts (medians over seeds)"),
        (report["clean_vs_noisy"], CLEAN_COLUMNS, "Clean vs noisy accuracy (every evaluated candidate)"),
    ]
    for axis, tables in report["ablations"].items():
        name = AXIS_LABELS.get(axis, axis)
        sections.append((tables["hypervolume"], HV_COLUMNS, f"Ablation: hypervolume by {name}"))
        sections.append((tables["tests"], TEST_COLUMNS, f"Ablation: tests by {name}"))
        sections.append((tables["diversity"], DIVERSITY_COLUMNS, f"Ablation: diversity and robustness by {name}"))
    return [text_table(rows, columns, title) for rows, columns, title in sections if rows]


__all__ = [
    "AXIS_LABELS",
    "CLEAN_COLUMNS",
    "DIVERSITY_COLUMNS",
    "HV_COLUMNS",
    "STRATA_KEYS",
    "TEST_COLUMNS",
    "fmt",
    "summary_tables",
    "text_table",
]

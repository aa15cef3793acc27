"""The study report: tables (CSV + JSON) and figures in DIR/report/, and a summary dict for the terminal.

Sections (numbers recomputed from the cells' stores by `uhnas.study.collect`):
1. fronts: per backend the median attainment surface over seeds with the best/worst band, best-seed fronts;
2. hypervolume by method per (dataset, backend): median, IQR, min/max; pairwise two-sided tests with Holm
   correction and A12; hypervolume against evaluations (median and IQR per method);
3. diversity and robustness by method (front size, mean pairwise structural distance, energy decades, distinct
   front architectures over seeds, mean clean->noisy drop, p5 accuracy);
4. clean vs noisy per (dataset, backend): Spearman and Kendall over every evaluated candidate, front retention,
   regret of picking by clean accuracy;
5. ablations: sections 2 and 3 grouped by every other axis the study varies.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhnas.study import stats
from uhnas.study.collect import CellData, cell_metrics, clean_vs_noisy_cell, evaluated, hv_curve, load_cells
from uhnas.study.grid import Cell
from uhnas.study.layout import REPORT_DIR, StudyDir
from uhnas.study.spec import AXES

STRATA = ("dataset", "backend")
NON_ABLATION = ("dataset", "backend", "method", "seed")
DIVERSITY_METRICS = ("front_size", "front_mean_distance", "energy_decades", "mean_drop", "mean_p5", "best_p5")


def varied_axes(cells: Sequence[Cell]) -> list[str]:
    """Axes (AXES order) taking more than one value among the study's cells."""
    return [axis for axis in AXES if len({json.dumps(c.axes.get(axis)) for c in cells if c.config}) > 1]


def _strata(axis: str, varied: Sequence[str]) -> list[str]:
    """The axes a comparison along `axis` holds fixed: dataset, backend and every other varied axis but seed."""
    extra = [a for a in varied if a not in (axis, "seed", *STRATA)]
    return [a for a in STRATA if a != axis] + extra


def _groups(datas: Sequence[CellData], keys: Sequence[str]) -> dict[tuple[Any, ...], list[CellData]]:
    """Cells grouped by their values of `keys`, in first-appearance order."""
    groups: dict[tuple[Any, ...], list[CellData]] = {}
    for data in datas:
        groups.setdefault(tuple(data.cell.axes[k] for k in keys), []).append(data)
    return groups


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


# ----------------------------------------------------------------------------------------- sections


def hypervolume_tables(
    datas: Sequence[CellData], metrics: dict[str, dict[str, Any]], axis: str, varied: Sequence[str], paired: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per stratum and value of `axis`: HV summary over seeds; and the pairwise tests (Holm within a stratum)."""
    strata = _strata(axis, varied)
    summary: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    for stratum, members in _groups(datas, strata).items():
        fixed = dict(zip(strata, stratum))
        groups = _groups(members, [axis])
        values = {key[0]: [metrics[d.cell.id]["hypervolume"] for d in group] for key, group in groups.items()}
        seeds = {key[0]: [d.seed for d in group] for key, group in groups.items()}
        for value, hv in values.items():
            summary.append({**fixed, axis: value, "seeds": seeds[value], **stats.describe(hv)})
        names = list(values)
        family = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                result = stats.compare(values[a], values[b], seeds[a], seeds[b], paired)
                family.append({**fixed, "axis": axis, "a": a, "b": b, **result})
        for row, adjusted in zip(family, stats.holm([row["p"] for row in family])):
            row["p_holm"] = adjusted
        tests.extend(family)
    return summary, tests


def diversity_table(
    datas: Sequence[CellData], metrics: dict[str, dict[str, Any]], axis: str, varied: Sequence[str]
) -> list[dict[str, Any]]:
    """Per stratum and value of `axis`: medians over seeds of the front's diversity and robustness."""
    strata = _strata(axis, varied)
    rows = []
    for key, group in _groups(datas, [*strata, axis]).items():
        row: dict[str, Any] = dict(zip([*strata, axis], key))
        row["n"] = len(group)
        for name in DIVERSITY_METRICS:
            row[name] = stats.describe([_finite(metrics[d.cell.id][name]) for d in group])["median"]
        row["distinct_front_archs_over_seeds"] = len({h for d in group for h in metrics[d.cell.id]["front_hashes"]})
        rows.append(row)
    return rows


def hv_curves(datas: Sequence[CellData], axis: str, varied: Sequence[str]) -> list[dict[str, Any]]:
    """Per stratum and value of `axis`: median and IQR of HV after each evaluation, over seeds (common length)."""
    strata = _strata(axis, varied)
    rows = []
    for key, group in _groups(datas, [*strata, axis]).items():
        curves = [hv_curve(d) for d in group]
        length = min((len(c) for c in curves), default=0)
        if length == 0:
            continue
        matrix = np.array([c[:length] for c in curves])
        q25, median, q75 = np.percentile(matrix, [25, 50, 75], axis=0)
        rows.append(
            {
                **dict(zip([*strata, axis], key)),
                "n": len(group),
                "evaluations": list(range(1, length + 1)),
                "median": [float(v) for v in median],
                "q25": [float(v) for v in q25],
                "q75": [float(v) for v in q75],
            }
        )
    return rows


def clean_vs_noisy(datas: Sequence[CellData], varied: Sequence[str]) -> list[dict[str, Any]]:
    """Per (dataset, backend): rank correlations over every evaluated candidate, retention, regret, HV loss."""
    strata = [a for a in STRATA] + [a for a in varied if a in ("objective", "training.noise_aware")]
    rows = []
    for key, group in _groups(datas, strata).items():
        pooled = [(c, n) for d in group for _, c, n, _ in evaluated(d)]
        correlation = stats.spearman_kendall([c for c, _ in pooled], [n for _, n in pooled])
        cells = [row for row in (clean_vs_noisy_cell(d) for d in group) if row is not None]
        rows.append(
            {
                **dict(zip(strata, key)),
                "cells": len(group),
                "candidates": correlation.pop("n"),
                **correlation,
                "mean_drop": float(np.mean([c - n for c, n in pooled])) if pooled else None,
                "retention_median": stats.describe([r["retention"] for r in cells])["median"],
                "retention_mean": stats.describe([r["retention"] for r in cells])["mean"],
                "regret_median": stats.describe([r["regret"] for r in cells])["median"],
                "regret_max": stats.describe([r["regret"] for r in cells])["max"],
                "hv_loss_median": stats.describe([r["hv_loss"] for r in cells if r["hv_loss"] is not None])["median"],
            }
        )
    return rows


def attainment(datas: Sequence[CellData], varied: Sequence[str]) -> list[dict[str, Any]]:
    """Per panel and colour: attainment surfaces over seeds and the best seed's front.

    The colour is the backend (Figure 1), or the method when the study varies methods on one backend; panels are
    the dataset and every other varied axis but seed. The surfaces come from moocore's empirical attainment
    function over the seeds' feasible fronts in (error, energy): best (attained by at least one seed), median (by
    at least half) and worst (by all).
    """
    import moocore

    colour = "method" if "method" in varied and "backend" not in varied else "backend"
    panel_axes = ["dataset"] + [a for a in varied if a not in ("dataset", colour, "seed")]
    rows = []
    for key, group in _groups(datas, [*panel_axes, colour]).items():
        fronts = [[(r.error, r.energy_nj) for r in d.front()] for d in group]
        n = len(group)
        points = [(e, j, i + 1) for i, front in enumerate(fronts) for e, j in front]
        surfaces: dict[str, list[list[float]]] = {}
        present = len({p[2] for p in points})
        if points:
            array = np.array(points, dtype=np.float64)
            eaf = moocore.eaf(array[:, :2], array[:, 2])
            counts = np.rint(eaf[:, 2] * present / 100.0).astype(int)
            for name, k in (("best", 1), ("median", math.ceil(n / 2)), ("worst", n)):
                chosen = eaf[counts == k][:, :2]
                if k <= present and len(chosen):
                    surfaces[name] = sorted([[float(e), float(j)] for e, j in chosen], key=lambda p: p[1])
        best = max(group, key=_best_hv)
        rows.append(
            {
                **dict(zip(panel_axes, key[:-1])),
                colour: key[-1],
                "colour_axis": colour,
                "colour": key[-1],
                "seeds": n,
                "surfaces": surfaces,
                "best_cell": best.cell.id,
                "best_front": sorted([[r.error, r.energy_nj, r.hash] for r in best.front()], key=lambda p: p[1]),
            }
        )
    return rows


def _best_hv(data: CellData) -> float:
    from uhnas.records import front_hypervolume

    return front_hypervolume(data.records, data.reference)


# ----------------------------------------------------------------------------------------- build / write


def session_durations(sessions: Sequence[dict[str, Any]], live_until: float | None = None) -> list[tuple[float, int]]:
    """(wall seconds, slots) of each `study run` session, in start order.

    A session killed without writing its end (SIGKILL, a lost machine) ran at most until the next session started;
    the last session without an end counts until `live_until` when it is still running (the report of a study in
    progress), else as 0 (its end is unknown).
    """
    ordered = sorted(sessions, key=lambda s: s["started"])
    durations = []
    for i, session in enumerate(ordered):
        last_end = live_until if live_until is not None else session["started"]
        end = session.get("ended") or (ordered[i + 1]["started"] if i + 1 < len(ordered) else last_end)
        durations.append((end - session["started"], int(session.get("slots") or 1)))
    return durations


def build_report(out: str | Path) -> dict[str, Any]:
    """Every table of the report as one JSON-ready dict (no files written)."""
    directory = StudyDir(out).require()
    spec = directory.spec()
    cells, datas = load_cells(directory)
    varied = varied_axes(cells)
    metrics = {d.cell.id: cell_metrics(d) for d in datas}
    paired = spec.report.paired
    finished = [d for d in datas if d.finished]  # final hypervolumes, fronts and diversity: a cell at its budget
    hv_summary, hv_tests = hypervolume_tables(finished, metrics, "method", varied, paired)
    ablations = {}
    for axis in varied:
        if axis in NON_ABLATION:
            continue
        summary, tests = hypervolume_tables(finished, metrics, axis, varied, paired)
        ablations[axis] = {
            "hypervolume": summary,
            "tests": tests,
            "diversity": diversity_table(finished, metrics, axis, varied),
        }
    evaluation_seconds = sum(m["evaluation_seconds"] for m in metrics.values())
    sessions = directory.sessions()
    durations = session_durations(sessions, time.time() if directory.live_session(sessions) else None)
    wall = sum(d for d, _ in durations)
    capacity = sum(d * slots for d, slots in durations)
    return {
        "study": spec.name,
        "directory": str(directory.root),
        "varied_axes": varied,
        "alpha": spec.report.alpha,
        "cells": {
            "total": len(cells),
            "with_data": len(datas),
            "finished": sum(d.finished for d in datas),
            "invalid": [c.id for c in cells if c.config is None],
        },
        "timing": {
            "study_wall_s": round(wall, 3),
            "evaluation_s": round(evaluation_seconds, 3),
            "slot_s": round(capacity, 3),  # wall time x slots, summed over sessions
            "utilisation": round(evaluation_seconds / capacity, 4) if capacity > 0 else None,
            "sessions": len(sessions),
        },
        "cell_metrics": [
            {
                **{a: d.cell.axes[a] for a in AXES},
                **{k: v for k, v in metrics[d.cell.id].items() if k != "front_hashes"},
            }
            for d in datas
        ],
        "fronts": attainment(finished, varied),
        "hypervolume": hv_summary,
        "hypervolume_tests": hv_tests,
        "hv_curves": hv_curves(datas, "method", varied),
        "diversity": diversity_table(finished, metrics, "method", varied),
        "clean_vs_noisy": clean_vs_noisy(datas, varied),
        "ablations": ablations,
    }


def _csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as CSV (columns: the union of keys in first-seen order; lists as JSON)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return path


def write_report(out: str | Path) -> dict[str, Any]:
    """Build the report and write DIR/report/: report.json, one CSV per table, figures as PNG and SVG."""
    from uhnas.study import figures

    report = build_report(out)
    folder = Path(out) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    files.append(_csv(folder / "cells.csv", report["cell_metrics"]))
    files.append(_csv(folder / "hypervolume.csv", report["hypervolume"]))
    files.append(_csv(folder / "hypervolume_tests.csv", report["hypervolume_tests"]))
    files.append(_csv(folder / "diversity.csv", report["diversity"]))
    files.append(_csv(folder / "clean_vs_noisy.csv", report["clean_vs_noisy"]))
    front_rows = [
        {k: v for k, v in row.items() if k not in ("surfaces", "best_front")} | {"error": e, "energy_nj": j, "hash": h}
        for row in report["fronts"]
        for e, j, h in row["best_front"]
    ]
    files.append(_csv(folder / "best_fronts.csv", front_rows))
    for axis, tables in report["ablations"].items():
        slug = axis.replace(".", "_")
        files.append(_csv(folder / f"ablation_{slug}_hypervolume.csv", tables["hypervolume"]))
        files.append(_csv(folder / f"ablation_{slug}_tests.csv", tables["tests"]))
        files.append(_csv(folder / f"ablation_{slug}_diversity.csv", tables["diversity"]))
    files.extend(figures.fronts_figure(report["fronts"], folder / "fronts_by_backend"))
    files.extend(figures.hv_curves_figure(report["hv_curves"], "method", folder / "hv_vs_evaluations"))
    files.extend(figures.hv_box_figure(report["cell_metrics"], report["varied_axes"], folder / "hv_by_method"))
    report["files"] = [str(p) for p in files] + [str(folder / "report.json")]
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


__all__ = ["build_report", "varied_axes", "write_report"]

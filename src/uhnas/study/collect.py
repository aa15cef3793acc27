"""A study's numbers, recomputed from the cells' run stores: per-cell metrics, HV curves, clean-vs-noisy.

Nothing here reads a summary the engine stored: hypervolume is recomputed from the stored trials against the
cell's frozen reference point, fronts from the trials' objectives, so the report cannot drift from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from uhnas.arch import structural_distance
from uhnas.metrics import energy_range_decades, hypervolume_history, mean_pairwise_distance, pareto_front_mask
from uhnas.records import TrialRecord, feasible_front, front_hypervolume
from uhnas.study.grid import Cell
from uhnas.study.layout import StudyDir


@dataclass
class CellData:
    """A cell with its stored trials (in trial-number order = evaluation order) and frozen HV reference."""

    cell: Cell
    records: list[TrialRecord]
    reference: tuple[float, float]
    finished: bool
    budget: int

    @property
    def seed(self) -> int:
        return int(self.cell.axes["seed"])

    def front(self) -> list[TrialRecord]:
        return feasible_front(self.records)


def load_cells(directory: StudyDir) -> tuple[list[Cell], list[CellData]]:
    """Every cell of the study, and the data of those whose store holds at least its reference point."""
    from uhnas.store import RunStore

    cells = directory.cells()
    data: list[CellData] = []
    for cell in cells:
        path = directory.cell_dir(cell)
        if cell.config is None or not RunStore.exists(path):
            continue
        store = RunStore.open(path)
        meta = store.metadata()
        reference = (meta.get("hv_reference") or {}).get("point")
        if not reference:
            continue
        records = sorted(store.records(), key=lambda r: r.number)
        budget = int(meta.get("budget", cell.config.budget))
        finished = bool(meta.get("finished", False)) and len(records) >= budget
        data.append(CellData(cell, records, (float(reference[0]), float(reference[1])), finished, budget))
    return cells, data


def _accuracies(record: TrialRecord) -> tuple[float, float, float] | None:
    clean, noisy, p5 = record.accuracy("clean"), record.accuracy("mean"), record.accuracy("p5")
    if clean is None or noisy is None or p5 is None:
        return None
    return float(clean), float(noisy), float(p5)


def cell_metrics(data: CellData) -> dict[str, Any]:
    """Hypervolume, front diversity and front robustness of one cell."""
    front = data.front()
    accuracies = [a for a in (_accuracies(r) for r in front) if a is not None]
    archs = [r.architecture for r in front]
    return {
        "cell": data.cell.id,
        "seed": data.seed,
        "finished": data.finished,
        "evaluations": len(data.records),
        "budget": data.budget,
        "failed_trials": sum(r.failed for r in data.records),
        "hypervolume": front_hypervolume(data.records, data.reference),
        "front_size": len(front),
        "front_distinct": len({r.hash for r in front}),
        "front_mean_distance": mean_pairwise_distance(archs, structural_distance),
        "energy_decades": energy_range_decades([r.energy_nj for r in front]) if front else 0.0,
        "mean_drop": float(np.mean([c - n for c, n, _ in accuracies])) if accuracies else None,
        "mean_p5": float(np.mean([p for _, _, p in accuracies])) if accuracies else None,
        "best_p5": max((p for _, _, p in accuracies), default=None),
        "best_error": min((r.error for r in front), default=None),
        "evaluation_seconds": float(sum(r.wall_seconds for r in data.records)),
        "front_hashes": sorted(r.hash for r in front if r.hash),
    }


def hv_curve(data: CellData) -> list[float]:
    """Hypervolume after each evaluation, in evaluation order (failed trials count as evaluations)."""
    if not data.records:
        return []
    errors = [r.error if not r.failed else math.nan for r in data.records]
    energies = [r.energy_nj if not r.failed and r.energy_nj else math.nan for r in data.records]
    feasible = [r.feasible for r in data.records]
    return [float(v) for v in hypervolume_history(errors, energies, feasible, data.reference)]


def evaluated(data: CellData) -> list[tuple[TrialRecord, float, float, float]]:
    """Feasible evaluated candidates with (clean, noisy mean, noisy p5) accuracy."""
    rows = []
    for record in data.records:
        if record.feasible:
            accuracies = _accuracies(record)
            if accuracies is not None:
                rows.append((record, *accuracies))
    return rows


def clean_vs_noisy_cell(data: CellData) -> dict[str, Any] | None:
    """Does picking by clean accuracy find the noisy front? Front retention, top-1 regret, hypervolume loss.

    retention: share of the clean-accuracy front (1 - clean accuracy vs energy) that is on the noisy front
    (1 - noisy mean accuracy vs energy). regret: best noisy accuracy of any candidate minus the noisy accuracy
    of the candidate with the best clean accuracy. hv_loss: 1 - HV(clean front, scored by noisy accuracy) /
    HV(noisy front), against the cell's reference point.
    """
    rows = evaluated(data)
    if not rows:
        return None
    energy = np.array([r.energy_nj for r, *_ in rows], dtype=np.float64)
    clean = np.array([c for _, c, _, _ in rows])
    noisy = np.array([n for _, _, n, _ in rows])
    clean_front = pareto_front_mask(np.column_stack([1 - clean, energy]))
    noisy_front = pareto_front_mask(np.column_stack([1 - noisy, energy]))
    retention = float((clean_front & noisy_front).sum() / clean_front.sum())
    best_clean = max(range(len(rows)), key=lambda i: (clean[i], -energy[i]))
    regret = float(noisy.max() - noisy[best_clean])
    from uhnas.metrics import hypervolume, normalise_points

    ref = np.asarray(data.reference)
    hv_noisy = hypervolume(normalise_points(1 - noisy[noisy_front], energy[noisy_front]), ref)
    hv_clean_pick = hypervolume(normalise_points(1 - noisy[clean_front], energy[clean_front]), ref)
    return {
        "cell": data.cell.id,
        "candidates": len(rows),
        "clean_front": int(clean_front.sum()),
        "noisy_front": int(noisy_front.sum()),
        "retention": retention,
        "regret": regret,
        "hv_loss": float(1 - hv_clean_pick / hv_noisy) if hv_noisy > 0 else None,
    }


__all__ = ["CellData", "cell_metrics", "clean_vs_noisy_cell", "evaluated", "hv_curve", "load_cells"]

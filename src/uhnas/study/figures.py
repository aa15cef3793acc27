"""The study's figures (PNG and SVG) from the report's tables: fronts by backend, HV curves, HV by method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors
FRONT_KEYS = ("backend", "colour", "colour_axis", "seeds", "surfaces", "best_cell", "best_front")
CURVE_KEYS = ("n", "evaluations", "median", "q25", "q75")


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def _panels(rows: Sequence[dict[str, Any]], skip: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped into panels titled by their keys outside `skip`."""
    panels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        title = ", ".join(f"{v}" for k, v in row.items() if k not in skip and not isinstance(v, (list, dict)))
        panels.setdefault(title, []).append(row)
    return panels


def _grid(count: int, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list[Any]]:
    cols = min(3, max(1, count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _staircase(points: Sequence[Sequence[float]], x_max: float) -> tuple[list[float], list[float]]:
    """An attainment surface (error, energy) as a step line over energy: the best error attained at each energy."""
    xs, ys = [], []
    for error, energy in sorted(points, key=lambda p: p[1]):
        xs.append(energy)
        ys.append(100.0 * error)
    if xs:
        xs.append(x_max)
        ys.append(ys[-1])
    return xs, ys


def _level(points: Sequence[Sequence[float]], grid: Sequence[float]) -> list[float]:
    """The surface's error (%) at each energy of `grid` (100 % below its cheapest point)."""
    out = []
    for x in grid:
        attained = [100.0 * e for e, j in points if j <= x]
        out.append(min(attained) if attained else 100.0)
    return out


def fronts_figure(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Figure 1: error (%) vs energy per inference (nJ, log), a colour per backend; median attainment surface,
    best-to-worst attainment band, and the best seed's front as points."""
    panels = _panels([{k: v for k, v in r.items() if k != r["colour_axis"]} for r in rows], FRONT_KEYS)
    fig, axes = _grid(max(1, len(panels)), 6.5, 4.5)
    names = list(dict.fromkeys(row["colour"] for row in rows))
    colour = {b: COLOURS[i % len(COLOURS)] for i, b in enumerate(names)}
    for ax, (title, members) in zip(axes, panels.items()):
        energies = [j for row in members for s in row["surfaces"].values() for _, j in s]
        energies += [p[1] for row in members for p in row["best_front"]]
        x_max = max(energies) * 2 if energies else 1.0
        errors = [100.0 * e for row in members for s in row["surfaces"].values() for e, _ in s]
        errors += [100.0 * p[0] for row in members for p in row["best_front"]]
        for row in members:
            c = colour[row["colour"]]
            surfaces = row["surfaces"]
            if "best" in surfaces and "worst" in surfaces:
                grid = sorted({j for s in (surfaces["best"], surfaces["worst"]) for _, j in s} | {x_max})
                ax.fill_between(
                    grid,
                    _level(surfaces["best"], grid),
                    _level(surfaces["worst"], grid),
                    step="post",
                    color=c,
                    alpha=0.18,
                    linewidth=0,
                )
            if "median" in surfaces:
                xs, ys = _staircase(surfaces["median"], x_max)
                ax.step(
                    xs, ys, where="post", color=c, linewidth=1.6, label=f"{row['colour']} (median of {row['seeds']})"
                )
            if row["best_front"]:
                ax.scatter(
                    [p[1] for p in row["best_front"]],
                    [100.0 * p[0] for p in row["best_front"]],
                    color=c,
                    s=22,
                    edgecolors="black",
                    linewidths=0.4,
                    zorder=3,
                )
        ax.set_xscale("log")
        if errors:  # the attained errors fill the height; a band that is unattained (100 %) runs off the top
            ax.set_ylim(0.0, min(100.0, 1.15 * max(errors) + 0.5))
        ax.set_xlabel("energy per inference (nJ, log scale)")
        ax.set_ylabel("error (%)")
        ax.set_title(title or "fronts by backend")
        ax.grid(True, which="both", alpha=0.3)
        if members:
            ax.legend(fontsize=7, loc="upper right")
    return _save(fig, stem)


def hv_curves_figure(rows: Sequence[dict[str, Any]], axis: str, stem: Path) -> list[Path]:
    """Hypervolume against evaluations: median line and IQR band per value of `axis`, a panel per stratum."""
    panels = _panels(rows, (*CURVE_KEYS, axis))
    fig, axes = _grid(max(1, len(panels)))
    values = list(dict.fromkeys(row[axis] for row in rows))
    colour = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(values)}
    for ax, (title, members) in zip(axes, panels.items()):
        for row in members:
            c = colour[row[axis]]
            ax.plot(row["evaluations"], row["median"], color=c, label=f"{row[axis]} (n={row['n']})")
            ax.fill_between(row["evaluations"], row["q25"], row["q75"], color=c, alpha=0.2, linewidth=0)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("hypervolume")
        ax.set_title(title or "hypervolume")
        ax.grid(True, alpha=0.3)
        if members:
            ax.legend(fontsize=7, loc="lower right")
    return _save(fig, stem)


def hv_box_figure(cells: Sequence[dict[str, Any]], varied: Sequence[str], stem: Path) -> list[Path]:
    """Final hypervolume per method (points per seed over a box), a panel per (dataset, backend, other axes)."""
    keys = [k for k in ("dataset", "backend", *varied) if k not in ("method", "seed")]
    keys = list(dict.fromkeys(keys))
    panels: dict[str, dict[str, list[float]]] = {}
    for row in cells:
        title = ", ".join(str(row[k]) for k in keys)
        panels.setdefault(title, {}).setdefault(str(row["method"]), []).append(row["hypervolume"])
    fig, axes = _grid(max(1, len(panels)))
    for ax, (title, groups) in zip(axes, panels.items()):
        names = list(groups)
        ax.boxplot([groups[n] for n in names], widths=0.5)
        for i, name in enumerate(names, start=1):
            ax.scatter([i] * len(groups[name]), groups[name], s=12, color="black", zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        ax.set_ylabel("final hypervolume")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, stem)


__all__ = ["fronts_figure", "hv_box_figure", "hv_curves_figure"]

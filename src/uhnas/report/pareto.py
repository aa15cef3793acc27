"""The Pareto plot: error against energy per inference (log axis), front highlighted, infeasible marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402


def draw_pareto(
    ax: Any,
    errors: Sequence[float],
    energies_nj: Sequence[float],
    feasible: Sequence[bool],
    on_front: Sequence[bool],
    *,
    title: str = "",
    error_label: str = "error under non-idealities (1 - mean noisy accuracy)",
    urls: Sequence[str] | None = None,
) -> None:
    """Draw every evaluated candidate on `ax`: feasible, infeasible (x) and the front (diamonds, step line).

    `urls`, one per candidate, become per-point links in SVG output (the HTML report hooks its hover panel on
    them)."""
    groups = [
        (
            "feasible",
            [f and not p for f, p in zip(feasible, on_front)],
            dict(color="tab:blue", alpha=0.45, s=18, marker="o"),
        ),
        ("infeasible", [not f for f in feasible], dict(color="tab:red", alpha=0.6, s=26, marker="x")),
        ("Pareto front", list(on_front), dict(color="tab:green", s=42, marker="D", edgecolors="black", linewidths=0.5)),
    ]
    for label, mask, style in groups:  # style: matplotlib scatter keywords
        xs = [e for e, m in zip(energies_nj, mask) if m]
        ys = [r for r, m in zip(errors, mask) if m]
        if xs:
            points = ax.scatter(xs, ys, label=f"{label} ({len(xs)})", zorder=2, **style)  # type: ignore[arg-type]
            if urls is not None:
                points.set_urls([u for u, m in zip(urls, mask) if m])
    front = sorted((e, r) for e, r, m in zip(energies_nj, errors, on_front) if m)
    if len(front) > 1:
        ax.step([e for e, _ in front], [r for _, r in front], where="post", color="tab:green", linewidth=1, zorder=1)
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (nJ, log scale)")
    ax.set_ylabel(error_label)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)


def plot_pareto(
    errors: Sequence[float],
    energies_nj: Sequence[float],
    feasible: Sequence[bool],
    on_front: Sequence[bool],
    path: str | Path,
    *,
    title: str = "",
    error_label: str = "error under non-idealities (1 - mean noisy accuracy)",
) -> Path:
    """Write a PNG of every evaluated candidate; the feasible front is drawn as a step line."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    draw_pareto(ax, errors, energies_nj, feasible, on_front, title=title, error_label=error_label)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

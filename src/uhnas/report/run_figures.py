"""The run page's figures, drawn by matplotlib from the page's data (`run_data.run_report_data`) as inline SVG.

Pareto front (every evaluated candidate, infeasible marked, front as a step line), hypervolume against
evaluations, the energy breakdown of the front members as stacked bars, clean against noisy accuracy of every
candidate. Candidates are hover targets (see `uhnas.report.svg`).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from uhnas.report.pareto import draw_pareto  # noqa: E402
from uhnas.report.run_data import energy_text  # noqa: E402
from uhnas.report.svg import point_url, render  # noqa: E402

COLOURS = plt.get_cmap("tab20").colors


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def tooltip(c: dict[str, Any]) -> str:
    """A candidate's plain-text tooltip (escaped where it is inserted)."""
    lines = [f"#{c['number']} (generation {c['generation']}, {c['operator'] or '-'})"]
    if c.get("name"):
        lines.append(f"name: {c['name']}")
    lines.append(c.get("layers") or "-")
    lines.append(
        f"accuracy clean {_fmt(c['accuracy_clean'])}, noisy {_fmt(c['accuracy_noisy_mean'])} "
        f"(p5 {_fmt(c['accuracy_noisy_p5'])})"
    )
    lines.append(f"energy {energy_text(c['energy_nj'])}" + ("" if c["feasible"] else " (infeasible)"))
    return "\n".join(lines)


def _evaluated(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in data["candidates"] if not c["failed"]]


def pareto_svg(data: dict[str, Any]) -> str:
    """Error against energy per inference (log), every evaluated candidate, the feasible front highlighted."""
    cands = _evaluated(data)
    s = data["summary"]

    def draw() -> Any:
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        draw_pareto(
            ax,
            [c["error"] for c in cands],
            [c["energy_nj"] for c in cands],
            [c["feasible"] for c in cands],
            [c["front"] for c in cands],
            title=f"{s['method']} on {s['dataset']} / {s['backend']}",
            error_label=data["error_label"],
            urls=[point_url(c["number"]) for c in cands],
        )
        return fig

    return render(draw, "pareto", {c["number"]: tooltip(c) for c in cands})


def hv_svg(data: dict[str, Any]) -> str:
    """Hypervolume after each evaluation; generation ends marked."""
    curve = data["hv_curve"]

    def draw() -> Any:
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        ax.plot(range(1, len(curve) + 1), curve, color="tab:green", linewidth=1.6, label="after each evaluation")
        ends = [g for g in data["generations"] if g.get("evaluations")]
        if ends:
            ax.scatter(
                [g["evaluations"] for g in ends],
                [g["hypervolume"] for g in ends],
                color="black",
                s=16,
                zorder=3,
                label="end of a generation",
            )
        ax.set_xlabel("evaluations")
        ax.set_ylabel("hypervolume (error x log10 nJ)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        return fig

    return render(draw, "hv")


def energy_svg(data: dict[str, Any]) -> str | None:
    """The front members' energy per inference by component: stacked bars in nJ and in shares of the total."""
    by_number = {c["number"]: c for c in data["candidates"]}
    members = [by_number[n] for n in data["front"] if by_number[n]["energy_breakdown_nj"]]
    if not members:
        return None
    components = list(dict.fromkeys(k for c in members for k in c["energy_breakdown_nj"]))

    def draw() -> Any:
        height = 1.2 + 0.28 * len(members)
        fig, (absolute, share) = plt.subplots(1, 2, figsize=(10, height), sharey=True, layout="constrained")
        labels = [f"#{c['number']}" for c in members]
        rows = range(len(members))
        left_abs = [0.0] * len(members)
        left_share = [0.0] * len(members)
        for i, component in enumerate(components):
            values = [c["energy_breakdown_nj"].get(component) or 0.0 for c in members]
            totals = [c["energy_nj"] or sum(v or 0.0 for v in c["energy_breakdown_nj"].values()) for c in members]
            shares = [100.0 * v / t if t else 0.0 for v, t in zip(values, totals)]
            colour = COLOURS[i % len(COLOURS)]
            absolute.barh(rows, values, left=left_abs, color=colour, label=component, height=0.7)
            share.barh(rows, shares, left=left_share, color=colour, height=0.7)
            left_abs = [a + v for a, v in zip(left_abs, values)]
            left_share = [a + v for a, v in zip(left_share, shares)]
        absolute.set_yticks(list(rows), labels)
        absolute.invert_yaxis()
        absolute.set_xlabel("energy per inference (nJ)")
        share.set_xlabel("share of the total (%)")
        share.set_xlim(0, 100)
        for ax in (absolute, share):
            ax.grid(True, axis="x", alpha=0.3)
        fig.legend(loc="outside lower center", ncol=min(5, len(components)), fontsize=8, frameon=False)
        fig.suptitle("front members, cheapest first", fontsize=9)
        return fig

    return render(draw, "energy")


def accuracy_svg(data: dict[str, Any]) -> str | None:
    """Clean against noisy (mean over draws) accuracy of every evaluated candidate, p5 as a bar below."""
    cands = [c for c in _evaluated(data) if c["accuracy_clean"] is not None and c["accuracy_noisy_mean"] is not None]
    if not cands:
        return None

    def draw() -> Any:
        fig, ax = plt.subplots(figsize=(5.6, 4.6), layout="constrained")
        low = min(min(c["accuracy_noisy_p5"] or c["accuracy_noisy_mean"] for c in cands), min(
            c["accuracy_clean"] for c in cands))  # fmt: skip
        ax.plot([low, 1.0], [low, 1.0], color="grey", linewidth=0.8, linestyle="--", label="noisy = clean")
        for c in cands:
            if c["accuracy_noisy_p5"] is not None:
                ax.plot(
                    [c["accuracy_clean"]] * 2,
                    [c["accuracy_noisy_p5"], c["accuracy_noisy_mean"]],
                    color="tab:grey",
                    alpha=0.35,
                    linewidth=0.8,
                )
        groups = [
            ("feasible", lambda c: c["feasible"] and not c["front"], dict(color="tab:blue", alpha=0.5, s=16)),
            ("infeasible", lambda c: not c["feasible"], dict(color="tab:red", marker="x", alpha=0.7, s=22)),
            (
                "Pareto front",
                lambda c: c["front"],
                dict(color="tab:green", marker="D", s=30, edgecolors="black", linewidths=0.5),
            ),
        ]
        for label, keep, style in groups:
            chosen = [c for c in cands if keep(c)]
            if chosen:
                points = ax.scatter(
                    [c["accuracy_clean"] for c in chosen],
                    [c["accuracy_noisy_mean"] for c in chosen],
                    label=f"{label} ({len(chosen)})",
                    **style,  # type: ignore[arg-type]
                )
                points.set_urls([point_url(c["number"]) for c in chosen])
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel("noisy accuracy (mean; line down to p5)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        return fig

    return render(draw, "acc", {c["number"]: tooltip(c) for c in cands})


def run_figures(data: dict[str, Any]) -> dict[str, str | None]:
    """Every figure of the run page as an inline SVG fragment (None where the run has nothing to draw)."""
    evaluated = _evaluated(data)
    return {
        "pareto": pareto_svg(data) if evaluated else None,
        "hv": hv_svg(data) if data["hv_curve"] else None,
        "energy": energy_svg(data),
        "accuracy": accuracy_svg(data),
    }


__all__ = ["run_figures", "tooltip"]

"""The self-contained HTML report of a run directory or a study directory (`uhnas report DIR`).

One file, no network: the stylesheet, a small script (hover panel, sortable tables) and every figure (matplotlib
SVG, inline) are embedded. Model- and user-written text (names, rationales, knowledge base, prompts and answers,
config strings, failure reasons) is data: the page is rendered by Jinja2 with autoescaping, so such text reaches
the page only as escaped text; the data the script reads sits in a JSON block with `<`, `>`, `&` and quotes
escaped; the script writes it with `textContent` only; and a Content-Security-Policy allows no script but the
page's own (pinned by its SHA-256), no network and no inline event handlers, so even a text that escaped all of
that could not run.

Why matplotlib SVG rather than a JavaScript plotting library (README, "uhnas report"): no new dependency, a few
hundred KB per page instead of the ~4.8 MB of plotly.min.js in every file, the same look as the study's and the
search's figures, and the hover that matters (a candidate's architecture, accuracies and energy breakdown) comes
from per-point SVG links and ~100 lines of script (a hover panel, not a plotting library).
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

import uhnas
from uhnas.errors import UhnasError

ASSETS = Path(__file__).with_name("assets")
REPORT_FILE = "report.html"


class ReportError(UhnasError):
    """The directory holds neither a run nor a study."""


@dataclass(frozen=True)
class HtmlReport:
    """What `write_html_report` wrote."""

    kind: str  # "run" or "study"
    path: Path
    bytes: int
    seconds: float
    figures: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`uhnas report --json`)."""
        return {"kind": self.kind, "html": str(self.path), "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "figures": self.figures}  # fmt: skip


def report_kind(directory: str | Path) -> str:
    """ "run" for a run directory (run.yaml), "study" for a study directory (study.yaml); else ReportError."""
    from uhnas.store import RunStore
    from uhnas.study.layout import StudyDir

    directory = Path(directory)
    if RunStore.exists(directory):
        return "run"
    if StudyDir.exists(directory):
        return "study"
    if not directory.exists():
        raise ReportError(f"{directory}: no such directory")
    raise ReportError(f"{directory}: neither a run (no run.yaml) nor a study directory (no study.yaml)")


def _fnum(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if number != number else format(number, spec)


def _grp(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f} %"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 60} min {whole % 60:02d} s"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(ASSETS),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from uhnas.report.run_data import energy_text

    env.globals.update(fnum=_fnum, grp=_grp, pct=_pct, duration=_duration, energy=energy_text)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": True}
    return env


def _payload(data: dict[str, Any]) -> dict[str, Any]:
    """What the page's script reads: the candidates' hover fields (run pages), nothing for study pages."""
    if data["kind"] != "run":
        return {}
    keys = ("number", "generation", "operator", "name", "layers", "front", "feasible", "accuracy_clean",
            "accuracy_noisy_mean", "accuracy_noisy_p5", "energy_nj", "energy_breakdown_nj", "params",
            "violations")  # fmt: skip
    return {"candidates": [{k: c.get(k) for k in keys} for c in data["candidates"] if not c["failed"]]}


def render_html(directory: str | Path) -> tuple[str, str, int]:
    """(the page, its kind, its figure count) for a run or study directory."""
    directory = Path(directory)
    kind = report_kind(directory)
    script = (ASSETS / "report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    if kind == "run":
        from uhnas.report.run_data import run_report_data
        from uhnas.report.run_figures import run_figures

        data = run_report_data(directory)
        figs = run_figures(data)
        s = data["summary"]
        title = f"uhnas run {s['run']}"
        subtitle = f"{s['method']} on {s['dataset']} / {s['backend']}: {s['trials']} of {s['budget']} evaluations"
        count = sum(f is not None for f in figs.values())
        markup: dict[str, Any] = {k: Markup(v) if v else None for k, v in figs.items()}
        extra = {
            "cands": {c["number"]: c for c in data["candidates"]},
            "config_text": yaml.safe_dump(data["config"], sort_keys=False, allow_unicode=True),
        }
    else:
        from uhnas.report.study_page import study_page_data

        data = study_page_data(directory)
        figs_lists = data.pop("figures")
        report = data["report"]
        title = f"uhnas study {report['study']}"
        subtitle = (
            f"{report['cells']['with_data']} of {report['cells']['total']} cells with data; varies "
            f"{', '.join(report['varied_axes']) or 'nothing'}"
        )
        count = sum(len(v) for v in figs_lists.values())
        markup = {k: [Markup(f) for f in v] for k, v in figs_lists.items()}
        extra = {}
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        _environment()
        .get_template("page.html.j2")
        .render(
            kind=kind,
            d=data,
            figs=markup,
            title=title,
            subtitle=subtitle,
            css=Markup((ASSETS / "report.css").read_text(encoding="utf-8")),
            script=Markup(script),
            script_hash=f"sha256-{digest}",
            payload=_payload(data),
            version=uhnas.__version__,
            footer=f"uhnas {uhnas.__version__}, report of {directory} generated {generated}. "
            "Self-contained: works offline; nothing on this page loads from the network.",
            **extra,
        )
    )
    return page, kind, count


def write_html_report(directory: str | Path, out: str | Path | None = None) -> HtmlReport:
    """Write the report of a run or study directory (default: DIR/report.html) and say what was written."""
    start = time.perf_counter()
    page, kind, count = render_html(directory)
    path = Path(out) if out is not None else Path(directory) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return HtmlReport(kind, path, len(page.encode("utf-8")), time.perf_counter() - start, count)


def report_json(directory: str | Path) -> dict[str, Any]:
    """The data the page shows, JSON-ready (figures left out)."""
    kind = report_kind(directory)
    if kind == "run":
        from uhnas.report.run_data import run_report_data

        return run_report_data(directory)
    from uhnas.study.report import build_report

    return {"kind": "study", "report": build_report(directory)}


__all__ = ["REPORT_FILE", "HtmlReport", "ReportError", "render_html", "report_json", "report_kind",
           "write_html_report"]  # fmt: skip

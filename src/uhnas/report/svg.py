"""Matplotlib figures as SVG fragments that can sit inline in one HTML page.

A figure becomes an `<svg>` element with no XML prolog, DOCTYPE or metadata, sized by CSS (viewBox kept), and
every id it defines prefixed, so several figures in one document never share an id (matplotlib names clip paths
and markers by content hash). Points drawn with `point_url(n)` as their SVG link become hover targets of the
page's script: `<a class="pt" href="#cand-N" data-trial="N">` with a `<title>` tooltip (the no-script fallback).
Text inside figures is written by matplotlib as escaped SVG `<text>` (fonttype "none": smaller, selectable).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RC = {"svg.fonttype": "none", "svg.hashsalt": "uhnas-report", "font.size": 9}
POINT_PREFIX = "#uhnas-pt-"
_POINT = re.compile(r'<a xlink:href="#uhnas-pt-(\d+)" target="_blank">')
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)
_ID = re.compile(r'(<[a-zA-Z][^<>]*?\s)id="([^"]+)"')  # an id attribute inside a tag (not in text)
_SIZE = re.compile(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"')


def point_url(number: int) -> str:
    """The SVG link a drawn point carries so the page can find it (see module docstring)."""
    return f"{POINT_PREFIX}{int(number)}"


def inline_svg(text: str, prefix: str, tooltips: Mapping[int, str] | None = None) -> str:
    """An SVG document as an inline fragment: prolog and metadata dropped, ids prefixed, points made hoverable."""
    tooltips = tooltips or {}

    def point(match: re.Match[str]) -> str:
        n = int(match.group(1))
        tip = f"<title>{html.escape(tooltips[n])}</title>" if n in tooltips else ""
        return f'<a class="pt" href="#cand-{n}" data-trial="{n}">{tip}'

    text = _PROLOG.sub("", text, count=1)
    text = _METADATA.sub("", text, count=1)
    text = _SIZE.sub(r"\1", text, count=1)
    text = _POINT.sub(point, text)
    text = _ID.sub(rf'\1id="{prefix}-\2"', text)
    text = text.replace("url(#", f"url(#{prefix}-").replace('xlink:href="#', f'xlink:href="#{prefix}-')
    return text.replace("<svg ", '<svg class="fig" role="img" ', 1).strip()


def figure_svg(fig: Any) -> str:
    """The SVG document of a matplotlib figure (closed afterwards)."""
    buffer = io.StringIO()
    try:
        with plt.rc_context(RC):
            fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def render(draw: Callable[[], Any], prefix: str, tooltips: Mapping[int, str] | None = None) -> str:
    """Build a figure with `draw()` (under the report's rc settings) and return it as an inline fragment."""
    with plt.rc_context(RC):
        fig = draw()
        return inline_svg(figure_svg(fig), prefix, tooltips)


def files_svg(write: Callable[[Path], list[Path]], prefix: str) -> list[str]:
    """Inline fragments of the SVG files a figure writer (e.g. `uhnas.study.figures`) writes under a stem."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="uhnas-report-") as tmp, plt.rc_context(RC):
        paths = write(Path(tmp) / "figure")
        return [
            inline_svg(p.read_text(encoding="utf-8"), f"{prefix}{i}")
            for i, p in enumerate(q for q in paths if q.suffix == ".svg")
        ]


__all__ = ["files_svg", "figure_svg", "inline_svg", "point_url", "render"]

"""``report.html``: one self-contained page with the VRP summary tables and every figure.

plotly.js is embedded once (the page works offline); the other figures reuse it.

Examples:
    >>> html = report_html({"models": {}}, summary="# VRP summary\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n")
    >>> html.count("<table>"), "<script src" in html
    (1, False)
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["markdown_to_html", "page_html", "report_html", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { font-size: 0.85em; word-break: break-all; }
.figure { margin: 2em 0; }
"""


def _inline(text: str) -> str:
    text = html_lib.escape(text)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str) -> str:
    """The small markdown subset ``summary.md`` uses: headings, paragraphs, pipe tables, raw HTML lines."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([cell.strip() for cell in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block if not all(set(c) <= {"-", ":"} for c in r)]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("<") and line.endswith(">"):
            out.append(line)  # the <details> wrapper of the config
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def report_html(results: Mapping[str, Any], *, summary: str | None = None,
                datasets: Mapping[str, Any] | None = None, title: str = "VLM Reliability Probe") -> str:
    """The report as one HTML string (plotly.js embedded once).

    Args:
        results: ``{"models": {name: per-model results}, ...}`` as in ``results.json``.
        summary: ``summary.md`` text to show above the figures (default: built from ``results``).
        datasets: Per model name, its dataset, to draw the example maps over their images.
        title: The page title.
    """
    from vlmlens.viz.figures import vrp_figures
    from vlmlens.vrp.headline import summary_markdown

    if summary is None:
        summary = summary_markdown(dict(results))
    return page_html(title, summary, vrp_figures(results, datasets))


def page_html(title: str, markdown: str, figures: Mapping[str, Any]) -> str:
    """One self-contained page: ``markdown`` above the plotly ``figures`` (plotly.js embedded once)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", markdown_to_html(markdown), "<h2>Figures</h2>"]
    for i, (name, fig) in enumerate(figures.items()):
        fig.update_layout(template="plotly_white")
        parts.append(f"<div class='figure' id='{html_lib.escape(name)}'>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{name}"))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path | str, results: Mapping[str, Any], *, summary: str | None = None,
                 datasets: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`report_html` to ``path`` and return it."""
    path = Path(path)
    path.write_text(report_html(results, summary=summary, datasets=datasets), encoding="utf-8")
    return path

"""A comparison report as one self-contained HTML file (table + the service's plot).

The PNG is embedded as a data URI so the file can be mailed or archived and
still shows everything offline.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from alto_client.client import Client
from alto_client.models import Comparison
from alto_client.render import COMPARISON_COLUMNS, comparison_rows

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2330; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #cfd6e4; padding: .35rem .6rem; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #eef2f8; }
img { max-width: 100%; border: 1px solid #cfd6e4; }
.meta { color: #5b6578; }
"""


def comparison_html(comp: Comparison, plot_png: bytes) -> str:
    """Render the report page for ``comp`` with ``plot_png`` embedded."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COMPARISON_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in comparison_rows(comp)
    )
    image = base64.b64encode(plot_png).decode("ascii")
    seeds = ", ".join(str(s) for s in comp.seeds)
    title = html.escape(f"Comparison {comp.name}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>"
        f"<p class='meta'>id {html.escape(comp.id)} · status {comp.status.value} · "
        f"baseline {html.escape(comp.baseline)} · seeds {html.escape(seeds)} · "
        f"created {comp.created_at.isoformat()}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<img alt='loss curves and memory overhead' src='data:image/png;base64,{image}'>"
        "</body></html>"
    )


def write_report(client: Client, comparison_id: str, out: Path) -> Path:
    """Write ``out`` as .png (the plot) or .html (table + plot)."""
    suffix = out.suffix.lower()
    if suffix == ".png":
        return client.plot(comparison_id, out)
    if suffix not in {".html", ".htm"}:
        raise ValueError(f"--out must end in .html or .png, got {str(out)!r}")
    comp = client.comparison(comparison_id)
    png = client.plot_png(comparison_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(comparison_html(comp, png), encoding="utf-8")
    return out

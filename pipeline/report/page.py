"""Plain HTML + CSS building blocks of the report page (no JavaScript; images embedded as base64)."""
from __future__ import annotations

import html
import math

import pandas as pd

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2b45;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:2px 0;color:#c9d3e6;font-size:13px}
nav{padding:8px 32px;background:#e8ecf3;font-size:13px}
nav a{margin-right:14px;color:#1d2b45}
main{padding:8px 32px 40px 32px;max-width:1300px}
section{background:#fff;border-radius:6px;padding:12px 20px 16px;margin:16px 0;box-shadow:0 1px 2px #0002}
h2{font-size:18px;margin:4px 0 10px 0;border-bottom:1px solid #e3e6ec;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px 0}
th,td{border-bottom:1px solid #e3e6ec;padding:4px 10px;text-align:right;white-space:nowrap}
th{background:#f0f2f6;font-weight:600}
td:first-child,th:first-child{text-align:left}
td.gain{background:#d9f0d3}
td.loss{background:#f8d5d5}
tr.best td{font-weight:700}
p.note{color:#7a5a00;background:#fff6dc;padding:6px 10px;border-radius:4px;font-size:13px;margin:6px 0}
p.help{color:#556;font-size:13px;margin:4px 0 8px 0}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px 0}
.card{background:#f0f2f6;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}
.card span{font-size:12px;color:#556}
pre{background:#f0f2f6;padding:8px;font-size:12px;white-space:pre-wrap}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def fmt(value: object, digits: int = 4) -> str:
    """A cell: floats rounded, NaN as an empty cell."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return esc(value)


def table(frame: pd.DataFrame, row_class=None, cell_class=None, digits: int = 4) -> str:
    """An HTML table of a small DataFrame; ``row_class(i)``/``cell_class(i, column)`` give CSS classes."""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for col, v in zip(frame.columns, row):
            css = cell_class(i, col) if cell_class else ""
            cells.append(f"<td{f' class={css!r}' if css else ''}>{fmt(v, digits)}</td>")
        css = row_class(i) if row_class else ""
        body.append(f"<tr{f' class={css!r}' if css else ''}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(uri: str, alt: str) -> str:
    """An embedded figure: ``uri`` is a ``data:`` URI (``figures.encode``)."""
    return f'<img alt="{esc(alt)}" src="{uri}">'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def help_text(text: str) -> str:
    return f'<p class="help">{esc(text)}</p>'


def cards(items: list[tuple[str, object]]) -> str:
    inner = "".join(f'<div class="card"><b>{fmt(v)}</b><span>{esc(k)}</span></div>' for k, v in items)
    return f'<div class="cards">{inner}</div>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def document(title: str, subtitle: list[str], sections: list[tuple[str, str, str]]) -> str:
    """The whole page: header, a contents bar, the sections ``(anchor, title, body)``."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    sub = "".join(f"<p>{esc(s)}</p>" for s in subtitle)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>{sub}</header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")

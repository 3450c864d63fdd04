"""Assemble the report page: sections of figures, tables and notes, PNGs referenced by relative path.

The page has no scripts and no external resources (fonts, CSS, JS), so it opens offline from the report folder.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from cgns.io import atomic_write_text

STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1300px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .note { color: #555; font-size: 14px; } .error { color: #a00; font-size: 14px; }
.true { background: #dff5df; font-weight: bold; }
.row { display: flex; gap: 24px; align-items: flex-start; } .row > figure { flex: 0 0 auto; }
.row > table { flex: 1 1 auto; } summary { cursor: pointer; }
"""


@dataclass
class Figure:
    path: Path
    caption: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list]
    caption: str = ""
    highlight_rows: set = field(default_factory=set)  # row indices drawn with class "true"


@dataclass
class Details:
    """Items folded away under a summary line (plain HTML <details>, no script)."""
    summary: str
    items: list = field(default_factory=list)


@dataclass
class Row:
    """Items side by side (e.g. an image and its retrieval table)."""
    items: list = field(default_factory=list)


@dataclass
class Section:
    title: str
    note: str = ""
    items: list = field(default_factory=list)  # Figure | Table | str (a paragraph)
    error: str = ""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _render_item(item, page_dir: Path) -> str:
    if isinstance(item, Figure):
        source = Path(os.path.relpath(item.path, page_dir)).as_posix()
        caption = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
        return f'<figure><img src="{html.escape(source)}" alt="{html.escape(item.caption)}">{caption}</figure>'
    if isinstance(item, Row):
        return "<div class='row'>" + "".join(_render_item(i, page_dir) for i in item.items) + "</div>"
    if isinstance(item, Details):
        inner = "".join(_render_item(i, page_dir) for i in item.items)
        return f"<details><summary>{html.escape(item.summary)}</summary>{inner}</details>"
    if isinstance(item, Table):
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in item.header)
        body = []
        for i, row in enumerate(item.rows):
            css = ' class="true"' if i in item.highlight_rows else ""
            body.append(f"<tr{css}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
        caption = f"<caption>{html.escape(item.caption)}</caption>" if item.caption else ""
        return f"<table>{caption}<tr>{head}</tr>{''.join(body)}</table>"
    return f"<p>{html.escape(str(item))}</p>"


def render_page(title: str, sections: list[Section], path: Path) -> Path:
    """Write the HTML page to `path` (figures must live under path's folder or be reachable relatively)."""
    page_dir = path.parent
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                  for i, s in enumerate(sections)) + "</ul>")
    for i, section in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        if section.note:
            parts.append(f"<p class='note'>{html.escape(section.note)}</p>")
        if section.error:
            parts.append(f"<p class='error'>{html.escape(section.error)}</p>")
        parts.extend(_render_item(item, page_dir) for item in section.items)
    parts.append("</body></html>")
    page_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(parts))

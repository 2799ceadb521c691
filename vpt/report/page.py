"""The report's HTML: one self-contained page (inline CSS, no script), every path in it relative to its folder and
every text from the inputs escaped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 20px 40px;
       color: #1d232a; background: #fafbfc; }
h1 { font-size: 22px; margin: 22px 0 4px; }
h2 { font-size: 18px; margin: 30px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d5dae0; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.note { color: #5b6570; font-size: 12.5px; margin: 4px 0 10px; }
.warning { background: #fff4e5; border: 1px solid #f0a040; border-left: 6px solid #e07b00; padding: 10px 14px;
           margin: 16px 0; border-radius: 4px; }
.warning ul { margin: 4px 0 0; padding-left: 20px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; }
th, td { border: 1px solid #dde2e7; padding: 4px 8px; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.gallery thead th { position: sticky; top: 0; z-index: 2; background: #e3e8ee; }
table.gallery td { text-align: center; }
table.gallery tr.prompt th { background: #f4f6f8; font-weight: 600; position: static; }
video { width: 256px; max-width: 100%; background: #000; display: block; margin: 0 auto; }
.caption { font-size: 12px; color: #38424c; margin-top: 3px; font-variant-numeric: tabular-nums; }
.other { color: #a05a00; font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; }
.plots img { border: 1px solid #dde2e7; background: #fff; }
pre { background: #fff; border: 1px solid #dde2e7; padding: 10px; overflow-x: auto; font-size: 12.5px; }
code { font-size: 12px; word-break: break-all; }
"""


def number(value) -> str:
    """A table number: 4 significant digits, or a dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4g}"


@dataclass
class VideoCell:
    """A gallery cell: the copied file's path in the report (None: the stage has no video for the row)."""

    src: str | None
    caption: list[str] = field(default_factory=list)
    other_noise: bool = False


@dataclass
class Section:
    """A titled part of the page: a note and already-rendered HTML."""

    title: str
    body: str
    note: str = ""


def table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on that are numbers are right-aligned."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{escape(str(h))}</th>'
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, (int, float)) and not isinstance(cell, bool):
                cells.append(f"<td class=num>{escape(number(cell))}</td>")
            else:
                cells.append(f'<td{" class=num" if i >= numeric_from else ""}>{escape(str(cell))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def gallery(stages: Sequence[str], rows: Sequence[tuple[str, str, Sequence[VideoCell]]]) -> str:
    """The videos side by side: a sticky header of stage names, a heading row per prompt, a row per initial noise
    (``rows``: prompt, row label, one cell per stage)."""
    head = "".join(f"<th>{escape(name)}</th>" for name in stages)
    body, last_prompt = [], None
    for prompt, label, cells in rows:
        if prompt != last_prompt:
            body.append(f'<tr class=prompt><th colspan={len(stages) + 1}>{escape(prompt or "(no prompt)")}</th></tr>')
            last_prompt = prompt
        tds = []
        for cell in cells:
            if cell.src is None:
                tds.append('<td><div class=caption>no video</div></td>')
                continue
            other = '<div class="caption other">other noise</div>' if cell.other_noise else ""
            caption = "".join(f"<div class=caption>{escape(line)}</div>" for line in cell.caption)
            tds.append(f'<td><video controls preload="metadata" muted loop playsinline src="{escape(cell.src)}">'
                       f"</video>{other}{caption}</td>")
        body.append(f'<tr><th class=caption>{escape(label)}</th>{"".join(tds)}</tr>')
    return (f'<table class=gallery><thead><tr><th>noise</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def images(sources: Sequence[tuple[str, str]]) -> str:
    """A wrapping row of PNG plots (``sources``: path, alt text)."""
    return "<div class=plots>" + "".join(f'<img src="{escape(src)}" alt="{escape(alt)}" width=420 height=280>'
                                         for src, alt in sources) + "</div>"


def page(title: str, subtitle: str, warnings: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole document."""
    parts = [f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
             f'<meta name=viewport content="width=device-width, initial-scale=1">\n'
             "<link rel=icon href=\"data:,\">\n"  # no favicon request: a server's 404 would be the page's only error
             f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
             f"<h1>{escape(title)}</h1>\n<p class=note>{escape(subtitle)}</p>\n"]
    if warnings:
        items = "".join(f"<li>{escape(line)}</li>" for line in warnings)
        parts.append(f"<div class=warning><strong>Possible reward hacking</strong><ul>{items}</ul></div>\n")
    for section in sections:
        note = f"<p class=note>{escape(section.note)}</p>" if section.note else ""
        parts.append(f"<h2>{escape(section.title)}</h2>\n{note}\n{section.body}\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)

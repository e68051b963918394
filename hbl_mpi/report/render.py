"""Rendering: the report's sections as report.md and report.html, and writing every file
of the report atomically (``core.atomic``), so a crash leaves no half-written file."""

from __future__ import annotations

import html
import os
import re

import numpy as np
import pandas as pd

from hbl_mpi.core.atomic import replace_bytes
from hbl_mpi.core.errors import InputError
from hbl_mpi.report.page import Report


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else str(v)
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [_md_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(_fmt(v)) for v in row) + " |")
    return "\n".join(lines)


def _md_cell(value) -> str:
    """One table cell on one line: ids are data (docs/design.md §1 puts no limit on them), so a
    ``|`` is escaped and a line break (or any control character) is shown as its escape,
    ``\\n``, rather than ending the row."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _td(v) -> str:
    text = html.escape(_fmt(v))
    numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    return f"<td>{text}</td>" if numeric else f"<td class='t'>{text}</td>"


def html_table(df: pd.DataFrame) -> str:
    """A scrollable HTML table: numbers right-aligned, text left-aligned."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _inline(text: str) -> str:
    """Escape text for HTML; `code` spans (as in the markdown) become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_markdown(rep: Report) -> str:
    out = [f"# {rep.title}", "", rep.intro, ""]
    for s in rep.sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.figure:
            out += [f"![{s.title}]({s.figure})", ""]
        for cap, t in s.tables:
            out += [f"*{cap}*", "", markdown_table(t), ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
.tw{overflow-x:auto;margin:.3em 0 1.2em}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}td.t{text-align:left}
th{background:#f2f2f2;position:sticky;top:0}img{max-width:100%;border:1px solid #eee}
h2{border-bottom:1px solid #ddd;margin-top:1.6em}.cap{font-style:italic;font-size:12px;color:#555}
code{background:#f4f4f4;padding:0 3px;border-radius:3px;font-size:90%}"""


def render_html(rep: Report) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{html.escape(rep.title)}</h1><p>{_inline(rep.intro)}</p>"]
    out.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                for i, s in enumerate(rep.sections)) + "</ul>")
    for i, s in enumerate(rep.sections):
        out.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{_inline(s.text)}</p>")
        if s.figure:
            out.append(f"<img src='{html.escape(s.figure)}' alt='{html.escape(s.title)}'>")
        for cap, t in s.tables:
            out.append(f"<div class='cap'>{_inline(cap)}</div>{html_table(t)}")
    out.append("</body></html>")
    return "\n".join(out)


def write(rep: Report, out_dir: str) -> list[str]:
    """Write every file of the report into ``out_dir`` (each atomically); returns the paths."""
    rep.files["report.md"] = render_markdown(rep).encode()
    rep.files["report.html"] = render_html(rep).encode()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {out_dir!r}: {e.strerror}") from None
    written = []
    for name, data in rep.files.items():
        path = os.path.join(out_dir, name)
        replace_bytes(path, data)  # WriteFailed (the old file kept): commands/report.py says so
        written.append(path)
    return written

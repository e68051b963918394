"""The report's page model and drawing helpers every part shares: a :class:`Section`, the
:class:`Report` it goes into, the colours, one figure factory and one file-name slug.

Every report module imports these from here (never from ``build.py``), so the parts that
build sections sit below the module that assembles them: no import circle.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

import pandas as pd

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


KIND_COLOURS = {"label_noise": "#d62728", "shift": "#ff7f0e", "swap": "#9467bd", "misid": "#17becf", "": "#9e9e9e",
                "wrong_assay": "#d62728", "drug_noise": "#9467bd", "drug_shift": "#ff7f0e"}


LOSS_UNIT = "val_loss (MSE, label units²)"


@dataclass
class Section:
    """One part of the report: a heading, text, optional figure and tables."""

    title: str
    text: str = ""
    figure: str | None = None  # file name of the PNG
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)


@dataclass
class Report:
    """Everything the report writes: files (name -> bytes) and the sections of report.md/html."""

    title: str
    intro: str
    files: dict[str, bytes] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def csv(self, name: str, df: pd.DataFrame) -> str:
        self.files[name] = df.to_csv(index=False).encode()
        return name

    def png(self, name: str, fig, dpi: int = 110) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        self.files[name] = buf.getvalue()
        return name


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
def make_figure(w=7.0, h=4.2, ncols=1, nrows=1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def add_legend(ax, **kw) -> None:
    """A legend when the axes have labelled artists; none (and no matplotlib warning on
    stderr) when partial results left nothing to label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def slug(text: str) -> str:
    """A file-name part for ``text`` (a cell id, a run label), one per text.

    Letters and digits are kept and every other run of characters becomes ``_``; when that
    changed the text, ``-`` and 10 hex digits of its SHA-1 are appended. ``HCC-1187`` and
    ``HCC_1187`` were both ``HCC_1187`` (two cells, one figure: issue 28 item 8); a text that
    needs no change never contains ``-``, so it cannot meet a hashed name either.
    """
    base = re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")[:80] or "x"
    if base == text:
        return base
    return f"{base}-{hashlib.sha1(str(text).encode()).hexdigest()[:10]}"

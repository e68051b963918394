"""The report's "Groups the suspects share" part: ``enrichment.csv`` and its section (issue 30).

One of build.py's ``SECTION_BUILDERS``: reads the run's cell metadata (``results.h5`` table
``cell_metadata``) and the shared ranking, tests each metadata group for concentration in
the top k (``analysis/enrichment.py``) and leaves the table in ``rep.summary["enrichment"]``
for the summary's one sentence. Its cost (seconds) is in ``rep.summary["enrichment_seconds"]``.
"""

from __future__ import annotations

import time

from hbl_mpi.analysis import enrichment as E
from hbl_mpi.report.page import Section


def enrichment_sections(inp, rep) -> None:
    """enrichment.csv and a section with the groups at q < 0.05 (all tests in the CSV)."""
    meta = inp.cell_metadata
    if meta is None:
        rep.sections.append(Section(
            "Groups the suspects share",
            "The data has no cell metadata, so no group test: attach it with `data annotate F.h5 --cell-metadata "
            "FILE.csv` (or the config key `cell_metadata`); `data gdsc` fills it from gdsctools' cosmic_info."))
        return
    t0 = time.perf_counter()
    table = E.enrichment(inp.ranking, meta, inp.enrich_k)
    rep.summary["enrichment_seconds"] = time.perf_counter() - t0
    rep.csv("enrichment.csv", table)
    rep.summary["enrichment"] = table
    cols = [c for c in meta.columns if c != "cell"]
    shown = table[table["q"] < 0.05].head(20)
    text = (f"For each metadata column ({', '.join(cols)}) and value held by at least {E.MIN_GROUP} cells, and each "
            f"k in {', '.join(str(k) for k in inp.enrich_k)}: Fisher's exact test (one-sided, greater) of whether "
            "the top k cells of the ranking hold more of that value than chance, Benjamini-Hochberg q over all "
            f"{len(table)} tests. Cells without a value count as other cells. "
            + (E.sentence(table) or "No group reaches q < 0.01.")
            + " A group the suspects share is a curation question about the group (a tissue the model has not "
              "learned, a culture type, a study), not about each cell.")
    rep.sections.append(Section("Groups the suspects share", text, None,
                                [("groups with q < 0.05 (all tests in enrichment.csv)", shown)]))

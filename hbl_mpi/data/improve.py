"""IMPROVE's cross-study drug-response benchmark layout -> the normalised Dataset (docs/design.md §2.4).

The IMPROVE project (CCLE, CTRPv2, gCSI, GDSCv1, GDSCv2 in one layout; read by its
``improvelib``) keeps a benchmark under one folder. The files read here, and the
conventions taken from improvelib 0.1.0's loaders
(``applications/drug_response_prediction/{drp_utils,omics_utils,drug_utils}.py``; the code
was read, not copied, and is not needed at run time):

* ``y_data/response.tsv``: tab-separated, one header row; columns ``source`` (the study:
  ``CCLE``, ``CTRPv2``, ``gCSI``, ``GDSCv1``, ``GDSCv2``), ``improve_sample_id`` (the cell),
  ``improve_chem_id`` (the drug) and the responses (``auc`` by default, as improvelib's
  ``y_col_name``; also ``ic50``, ``ec50``, ``ec50se``, ``r2fit``, ``einf``, ``hs``,
  ``aac1``, ``auc1``, ``dss1``).
* ``x_data/cancer_gene_expression.tsv``: tab-separated with **three header rows**,
  Ensembl (row 0), Entrez (row 1), Gene_Symbol (row 2) (improvelib's ``level_map``), read
  as ``header=[0, 1, 2], index_col=0``: the first column is ``improve_sample_id`` (a row
  naming the index after the headers is accepted too). Columns are named ``GE_<symbol>``;
  a missing symbol falls back to the Entrez id, then the Ensembl id, and a repeated name
  gets ``|<Ensembl or Entrez>`` appended, so every column name is unique.
* Drug features, each tab-separated with one header row and index ``improve_chem_id``:
  ``x_data/drug_mordred.tsv`` (Mordred descriptors -> ``drug.descriptors``; older
  releases name it ``drug_mordred_descriptor.tsv``, read when the first is absent),
  ``x_data/drug_ecfp4_nbits512.tsv`` (ECFP4 bits -> ``drug.fingerprints``), or
  ``x_data/drug_SMILES.tsv`` (column ``canSMILES``), from which RDKit computes the same
  descriptors and Morgan bits as ``data gdsc``. ``drug_features="auto"`` uses the feature
  files that exist and falls back to SMILES when neither does.

Decisions:

* Mordred descriptors hold error strings where Mordred failed: every value that is not a
  number counts as missing, then the descriptors get ``data gdsc``'s treatment (median
  imputation over the kept drugs, log-compression of huge columns, z-score; a column with
  no finite value is dropped). ECFP bits are used as they are; a drug with a non-finite
  bit has no fingerprint.
* Rows whose label is not a finite number, whose sample has no expression profile (or a
  non-finite one) or whose drug lacks any of the drug feature groups are dropped and
  counted per source, each under its first reason, as ``data gdsc`` does.
* **Duplicated (source, sample, drug) rows** are replicate measurements: their labels are
  averaged into one row, counted as merged with the largest spread (max - min) within a
  pair. The Uno reader rejects a (cell, drug) pair with two labels, so one rule is needed;
  averaging keeps the measurement. A sample or drug listed twice in a feature file with
  the same values is kept once; with different values it is an input error.
* **Several sources** are source-prefixed as in Top21: cells ``CCLE.<sample>``, drugs
  ``CCLE.<chem>``, so each study's instance of a line is its own cell in the tree (the
  cross-study view, ``hbl_mpi/cross_study.py``); the instances share one feature row.
  One source keeps the plain ids.
* The Uno file's label column is ``AUC`` (the format's dose-free label) whatever
  ``--label`` chose; the chosen column's name is recorded in the file's metadata
  (``labels``) and printed by the build.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup
from hbl_mpi.core.errors import InputError
from hbl_mpi.data.smiles import smiles_group
from hbl_mpi.data.validate import check_values
from hbl_mpi.data.gdsc import MORGAN_RADIUS, ScreenCounts, response_ids, check_fp_bits, drug_features, few, parse_smiles, prepare_descriptors, screen_rows

RESPONSE = os.path.join("y_data", "response.tsv")
EXPRESSION = os.path.join("x_data", "cancer_gene_expression.tsv")
MORDRED = (os.path.join("x_data", "drug_mordred.tsv"), os.path.join("x_data", "drug_mordred_descriptor.tsv"))
ECFP4 = os.path.join("x_data", "drug_ecfp4_nbits512.tsv")
SMILES = os.path.join("x_data", "drug_SMILES.tsv")
SOURCE, SAMPLE, CHEM = "source", "improve_sample_id", "improve_chem_id"
SMILES_COLUMN = "canSMILES"
GENE_LEVELS = ("Ensembl", "Entrez", "Gene_Symbol")  # header rows 0, 1, 2 of the expression file
DRUG_FEATURES = ("auto", "files", "rdkit")
_UNNAMED = re.compile(r"^Unnamed: \d+_level_\d+$")  # pandas' name for an empty header cell


def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _is_file(path: str) -> bool:
    """Whether ``path`` is a regular file; a path that exists as anything else (a folder, a
    FIFO) is an input error, never silently skipped (issue 28 item 8: a Mordred path that was
    a folder made the build quietly use the other features)."""
    if os.path.isfile(path):
        return True
    if os.path.lexists(path):
        raise InputError(f"IMPROVE data: {path!r} is not a regular file")
    return False


def _read_tsv(path: str, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kw)
    except Exception as e:
        raise InputError(f"IMPROVE data: cannot read {path!r} ({type(e).__name__}: {str(e).strip()[:200]})") from None


# ----------------------------------------------------------------------------- responses


def load_responses(root: str, sources: str, label: str = "auc") -> tuple[pd.DataFrame, list[str]]:
    """The rows of the chosen sources as (source, cell, drug, auc), and the sources' names as in the file.

    ``sources``: comma-separated names matched case-insensitively against the file's
    ``source`` column, or ``all``.
    """
    path = _path(root, RESPONSE)
    if not _is_file(path):
        raise InputError(f"IMPROVE data: {path!r} does not exist (expected DIR/{RESPONSE})")
    df = _read_tsv(path, dtype={SOURCE: str, SAMPLE: str, CHEM: str})
    missing = [c for c in (SOURCE, SAMPLE, CHEM) if c not in df.columns]
    if missing:
        raise InputError(f"IMPROVE data: {path!r} has no column(s) {', '.join(missing)}")
    if df.empty:
        raise InputError(f"IMPROVE data: {path!r} has a header but no rows")
    for col in (SOURCE, SAMPLE, CHEM):  # pandas reads "", NA, NaN, null as missing: a row without identity
        ids = df[col]
        bad = np.flatnonzero((ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy())
        if len(bad):
            raise InputError(f"IMPROVE data: {path!r} has {len(bad):,} row(s) with an empty or NA {col} "
                             f"(first lines: {few([int(i) + 2 for i in bad])})")
    if label not in df.columns:
        others = [c for c in df.columns if c not in (SOURCE, SAMPLE, CHEM) and pd.api.types.is_numeric_dtype(df[c])]
        raise InputError(f"IMPROVE data: {path!r} has no label column {label!r} (numeric columns: "
                         f"{', '.join(others) or 'none'})")
    present = sorted(df[SOURCE].dropna().astype(str).unique())
    by_lower: dict[str, list[str]] = {}
    for s in present:
        by_lower.setdefault(s.lower(), []).append(s)
    wanted = [s.strip() for s in str(sources).split(",") if s.strip()]
    if [w.lower() for w in wanted] == ["all"]:
        chosen = present
    else:
        chosen, bad = [], []
        for w in wanted:
            hit = [w] if w in present else by_lower.get(w.lower(), [])
            if len(hit) != 1:
                bad.append(w)
            elif hit[0] not in chosen:
                chosen.append(hit[0])
        if bad or not chosen:
            raise InputError(f"IMPROVE source {', '.join(map(repr, bad)) or repr(sources)} is not in {path!r} "
                             f"(sources: {', '.join(present) or 'none'}; or all)")
    df = df[df[SOURCE].isin(chosen)]
    y = pd.to_numeric(df[label], errors="coerce").to_numpy(dtype=np.float64)  # a non-number counts as a bad label
    given = df[label].notna().to_numpy()
    if given.any() and not np.isfinite(y[given]).any():  # not one number: the wrong column, not bad rows
        raise InputError(f"IMPROVE data: {path!r} label column {label!r} holds no number "
                         f"(first values: {few(df[label][given].astype(str).unique()[:3])})")
    return pd.DataFrame({"source": df[SOURCE].to_numpy(dtype=object), "cell": df[SAMPLE].to_numpy(dtype=object),
                         "drug": df[CHEM].to_numpy(dtype=object), "auc": y}), chosen


# ----------------------------------------------------------------------------- features


def _header(v) -> str | None:
    s = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
    return None if not s or _UNNAMED.match(s) or s.lower() == "nan" else s


def gene_columns(columns: pd.MultiIndex) -> list[str]:
    """``GE_<symbol>`` per column (fallback Entrez, then Ensembl), made unique (see the module docstring)."""
    ens, ent, sym = ([_header(v) for v in columns.get_level_values(i)] for i in range(3))
    base = [s or e or n or f"col{i}" for i, (n, e, s) in enumerate(zip(ens, ent, sym))]
    counts = pd.Series(base).value_counts()
    names, seen = [], set()
    for i, b in enumerate(base):
        name = b if counts[b] == 1 else f"{b}|{ens[i] or ent[i] or i}"
        while name in seen:  # the same symbol and the same Ensembl id twice
            name = f"{name}#{i}"
        seen.add(name)
        names.append(f"GE_{name}")
    return names


def _dedupe(df: pd.DataFrame, path: str, what: str) -> tuple[pd.DataFrame, int]:
    """One row per id: identical repeats kept once (counted), differing repeats an input error."""
    dup = df.index.duplicated(keep=False)
    if not dup.any():
        return df, 0
    rep = df[dup]
    differ = [i for i, g in rep.groupby(level=0) if len(g.drop_duplicates()) > 1]
    if differ:
        raise InputError(f"IMPROVE data: {path!r} lists {what} {few(differ)} twice with different values")
    n = int(df.index.duplicated().sum())
    return df[~df.index.duplicated()], n


@dataclass
class Table:
    """Feature rows by id: ``values[i]`` belongs to ``ids[i]``."""

    ids: list[str]
    columns: list[str]
    values: np.ndarray
    repeated: int = 0  # identical repeated rows kept once
    nonfinite: list[str] | None = None  # ids left out for a non-finite value


def load_expression(root: str) -> Table:
    path = _path(root, EXPRESSION)
    if not _is_file(path):
        raise InputError(f"IMPROVE data: {path!r} does not exist (expected DIR/{EXPRESSION})")
    df = _read_tsv(path, header=[0, 1, 2], index_col=0, dtype=str)  # str: ids like 001 stay as written
    if not isinstance(df.columns, pd.MultiIndex) or df.columns.nlevels != 3 or df.shape[1] == 0:
        raise InputError(f"IMPROVE data: {path!r} does not have the three header rows {' / '.join(GENE_LEVELS)}")
    entrez = [_header(v) for v in df.columns.get_level_values(1)]
    if not all(e is None or re.fullmatch(r"\d+(\.0)?", e) for e in entrez):
        bad = [e for e in entrez if e is not None and not re.fullmatch(r"\d+(\.0)?", e)]
        raise InputError(f"IMPROVE data: {path!r} row 2 should hold Entrez ids (header rows "
                         f"{' / '.join(GENE_LEVELS)}, as improvelib reads it) but has {few(bad)}")
    names = gene_columns(df.columns)
    df.index = df.index.astype(str)
    try:
        values = df.to_numpy().astype(np.float64)  # empty cells are NaN: the sample is left out
    except (TypeError, ValueError):
        raise InputError(f"IMPROVE data: {path!r} has non-numeric expression values") from None
    df = pd.DataFrame(values, index=df.index)
    df, repeated = _dedupe(df, path, "sample(s)")
    ok = np.isfinite(df.to_numpy()).all(axis=1)
    return Table(list(df.index[ok]), names, df.to_numpy(dtype=np.float32)[ok], repeated, list(df.index[~ok]))


def _drug_table(path: str) -> pd.DataFrame:
    df = _read_tsv(path, dtype={CHEM: str})
    if CHEM not in df.columns:
        raise InputError(f"IMPROVE data: {path!r} has no column {CHEM}")
    df = df.set_index(CHEM)
    df.index = df.index.astype(str)
    return df


def _mordred_path(root: str) -> str | None:
    return next((_path(root, p) for p in MORDRED if _is_file(_path(root, p))), None)


def load_drug_files(root: str) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The drug feature files present: group name -> numeric table (index improve_chem_id), and their paths."""
    out, paths = {}, {}
    mordred = _mordred_path(root)
    if mordred:
        df = _drug_table(mordred)
        df = df.apply(pd.to_numeric, errors="coerce")  # Mordred's error strings -> NaN
        out["drug.descriptors"] = df[np.isfinite(df.to_numpy(dtype=np.float64)).any(axis=1)]  # no value: no features
        paths["drug.descriptors"] = mordred
    ecfp = _path(root, ECFP4)
    if _is_file(ecfp):
        df = _drug_table(ecfp).apply(pd.to_numeric, errors="coerce")
        out["drug.fingerprints"] = df[np.isfinite(df.to_numpy(dtype=np.float64)).all(axis=1)]
        paths["drug.fingerprints"] = ecfp
    for g, df in out.items():
        out[g], _ = _dedupe(df, paths[g], "drug(s)")
    return out, paths


def load_smiles(root: str) -> dict[str, str]:
    path = _path(root, SMILES)
    if not _is_file(path):
        raise InputError(f"IMPROVE data: no drug features: {path!r} does not exist and neither do "
                         f"{MORDRED[0]} nor {ECFP4} under {root!r}")
    df = _drug_table(path)
    if SMILES_COLUMN not in df.columns:
        raise InputError(f"IMPROVE data: {path!r} has no column {SMILES_COLUMN}")
    s = df[SMILES_COLUMN].dropna().astype(str)
    s = s[~s.index.duplicated()]
    return dict(zip(s.index, s.to_numpy()))


# ----------------------------------------------------------------------------- the build


@dataclass
class ImproveReport:
    """Counts per source of rows, cells and drugs kept and dropped, and where the features came from."""

    root: str
    sources: list[str]
    label: str
    screens: list[ScreenCounts]
    rows: int
    cells: int
    drugs: int
    expression_samples: int
    expression_nonfinite: list[str]
    genes: int
    drug_features: str  # "files" or "rdkit"
    drug_groups: dict  # group -> width
    smiles_unparsed: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        feats = ", ".join(f"{g} {w:,}" for g, w in self.drug_groups.items())
        out = [f"IMPROVE layout {self.root}: sources {', '.join(self.sources)}, label {self.label!r}; "
               f"{self.expression_samples} samples x {self.genes:,} genes of expression "
               f"({len(self.expression_nonfinite)} left out for non-finite values); drug features from "
               + ("the feature files" if self.drug_features == "files" else
                  f"SMILES by RDKit ({len(self.smiles_unparsed)} not parsed)") + f": {feats}"]
        for s in self.screens:
            out += s.lines("without features")
        out.append(f"total kept: {self.rows:,} rows, {self.cells} cells, {self.drugs} drugs")
        return out


def _drug_groups_from_files(tables: dict[str, pd.DataFrame], drugs: list[str]) -> tuple[list[FeatureGroup], dict]:
    groups, meta = [], {}
    for g, df in tables.items():
        x = df.loc[drugs]
        if g == "drug.descriptors":
            values, kept, imputed, logc, dropped = prepare_descriptors(x.to_numpy(dtype=np.float64),
                                                                       [str(c) for c in x.columns], drugs)
            groups.append(FeatureGroup(g, DRUG, [f"DD_{n}" for n in kept], np.ascontiguousarray(values)))
            meta[g] = {"imputed_median": imputed, "log1p_compressed": logc, "dropped": dropped,
                       "scaling": "z-score over the kept drugs"}
        else:
            groups.append(FeatureGroup(g, DRUG, [f"FP_{c}" for c in x.columns],
                                       np.ascontiguousarray(x.to_numpy(dtype=np.float32))))
    return groups, meta


def build_improve(root: str, sources: str, *, label: str = "auc", drug_features_from: str = "auto",
                  fp_bits: int = 2048, smiles_onehot: int = 0) -> tuple[Dataset, ImproveReport]:
    """Build the normalised data set from an IMPROVE benchmark folder (see the module docstring).

    ``sources``: ``CCLE``, ``GDSCv2,CCLE``, ..., or ``all``; ``label``: the response column;
    ``drug_features_from``: ``auto``, ``files`` (Mordred and/or ECFP4 files) or ``rdkit``
    (from ``drug_SMILES.tsv``); ``fp_bits``: Morgan bits with ``rdkit``; ``smiles_onehot`` > 0:
    add ``drug.smiles`` from ``drug_SMILES.tsv`` (``smiles.py``; a drug without one: zeros).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InputError(f"IMPROVE data directory {root!r} does not exist")
    if drug_features_from not in DRUG_FEATURES:
        raise InputError(f"drug features {drug_features_from!r}: choose from {', '.join(DRUG_FEATURES)}")
    resp, chosen = load_responses(root, sources, label)
    expr = load_expression(root)

    tables, _paths = ({}, {}) if drug_features_from == "rdkit" else load_drug_files(root)
    if drug_features_from == "files" and not tables:
        raise InputError(f"IMPROVE data: --drug-features files but neither {MORDRED[0]} nor {ECFP4} is under {root!r}")
    mode = "files" if tables else "rdkit"
    unparsed: list[str] = []
    if mode == "files":
        have = set.intersection(*(set(df.index) for df in tables.values()))
    else:
        fp_bits = check_fp_bits(fp_bits)
        mols, unparsed = parse_smiles(load_smiles(root))
        have = set(mols)

    cell_key = {c: c for c in expr.ids}
    prefixed = len(chosen) > 1
    parts, counts = [], []
    for src in chosen:
        df = resp[resp["source"] == src]
        drug_key = {d: d for d in pd.unique(df["drug"].to_numpy(dtype=object)) if d in have}
        p = f"{src}." if prefixed else ""
        rows, c = screen_rows(df, src, label, cell_key, set(), drug_key, p, p)
        parts.append(rows)
        counts.append(c)
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        raise InputError(f"IMPROVE data ({', '.join(chosen)}): no row has both a sample with expression and a drug "
                         "with features")

    # a finite label beyond float32 training's range (1e308) is named as such, not cast to inf
    check_values(rows["auc"].to_numpy(dtype=np.float64), f"{label} label(s)", f"IMPROVE data ({', '.join(chosen)})",
                 rows["cell"].to_numpy(dtype=object), rows["drug"].to_numpy(dtype=object))
    cell_ids, drug_ids, exp_of, name_of, molecules = response_ids(rows)
    at = {d: i for i, d in enumerate(molecules)}
    mol_row = np.array([at[name_of[d]] for d in drug_ids], dtype=np.int64)
    if mode == "files":
        drug_groups, feat_meta = _drug_groups_from_files(tables, molecules)
    else:
        f = drug_features(mols, molecules, fp_bits)
        drug_groups = [FeatureGroup("drug.descriptors", DRUG, [f"DD_{n}" for n in f.descriptor_names], f.descriptors),
                       FeatureGroup("drug.fingerprints", DRUG, [f"FP_{i:04d}" for i in range(fp_bits)], f.fingerprints)]
        feat_meta = {"drug.descriptors": {"imputed_median": f.imputed, "log1p_compressed": f.log_compressed,
                                          "dropped": f.dropped_descriptors, "scaling": "z-score over the kept drugs"},
                     "drug.fingerprints": {"morgan_radius": MORGAN_RADIUS, "fp_bits": fp_bits}}
    drug_groups = [FeatureGroup(g.name, DRUG, g.columns, np.ascontiguousarray(g.values[mol_row]))
                   for g in drug_groups]
    exp_row = {c: i for i, c in enumerate(expr.ids)}
    cell_values = expr.values[[exp_row[exp_of[c]] for c in cell_ids]]
    groups = [FeatureGroup("cell.rnaseq", CELL, expr.columns, np.ascontiguousarray(cell_values)), *drug_groups]
    if smiles_onehot:
        known = load_smiles(root)
        groups.append(smiles_group([known.get(name_of[d], "") for d in drug_ids], smiles_onehot))

    report = ImproveReport(
        root=root, sources=chosen, label=label, screens=counts, rows=len(rows), cells=len(cell_ids),
        drugs=len(drug_ids), expression_samples=len(expr.ids), expression_nonfinite=expr.nonfinite or [],
        genes=len(expr.columns), drug_features=mode, drug_groups={g.name: g.width for g in drug_groups},
        smiles_unparsed=unparsed)
    meta = {"generator": "improve", "sources": chosen, "labels": {s: label for s in chosen},
            "cell_ids": "source-prefixed" if prefixed else "plain", "replicates": "mean label",
            "drug_features": mode, "features": feat_meta,
            "counts": [{k: v for k, v in asdict(c).items() if not isinstance(v, list)} for c in counts]}
    ds = Dataset(cell_ids=cell_ids, drug_ids=drug_ids, groups=groups,
                 cell_index=pd.Index(cell_ids).get_indexer(rows["cell"]).astype(np.int32),
                 drug_index=pd.Index(drug_ids).get_indexer(rows["drug"]).astype(np.int32),
                 label=rows["auc"].to_numpy(dtype=np.float32), label_name="AUC",
                 source=f"improve:{','.join(chosen)}:{label}", meta=meta)
    return ds, report

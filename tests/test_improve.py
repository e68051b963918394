"""IMPROVE benchmark layout (docs/design.md §2.4): a small fixture in the exact layout improvelib reads,
with its quirks (three gene header rows, an empty header cell, a repeated gene symbol, ids
present in one file only, duplicated (source, sample, drug) rows, Mordred error strings),
round-tripped through ``data improve`` and checked against a plain pandas reading of the TSVs.
"""

import os
import re

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.__main__ import main
from hbl_mpi.data import read_uno
from hbl_mpi.data.improve import build_improve, gene_columns

# (source, improve_sample_id, improve_chem_id, auc, ic50)
RESPONSES = [
    ("CCLE", "ACH-000001", "Drug_1", 0.50, 1.0),
    ("CCLE", "ACH-000001", "Drug_1", 0.70, 2.0),  # duplicated (source, sample, drug): averaged to 0.60
    ("CCLE", "ACH-000001", "Drug_2", 0.40, 3.0),
    ("CCLE", "ACH-000002", "Drug_2", 0.30, 4.0),
    ("CCLE", "ACH-000002", "Drug_9", 0.20, 5.0),  # Drug_9: in response.tsv only (no features)
    ("CCLE", "ACH-999999", "Drug_1", 0.10, 6.0),  # ACH-999999: in response.tsv only (no expression)
    ("CCLE", "ACH-000003", "Drug_3", float("nan"), 7.0),  # no label
    ("GDSCv2", "ACH-000001", "Drug_1", 0.80, 8.0),  # the same pair in another study: kept apart
    ("GDSCv2", "ACH-000002", "Drug_3", 0.90, 9.0),
    ("GDSCv2", "ACH-000003", "Drug_2", 0.35, 10.0),
    ("GDSCv2", "ACH-000003", "Drug_2", 0.45, 11.0),
    ("GDSCv2", "ACH-000003", "Drug_2", 0.55, 12.0),  # three replicates: mean 0.45
    ("gCSI", "ACH-000002", "Drug_1", 0.65, 13.0),
]
SAMPLES = ["ACH-000001", "ACH-000002", "ACH-000003", "ACH-000004"]  # ACH-000004: in the expression file only
GENES = [("ENSG00000141510", "7157", "TP53"), ("ENSG00000146648", "1956", "EGFR"),
         ("ENSG00000136997", "4609", "MYC"), ("ENSG00000999999", "", "TP53")]  # no Entrez, repeated symbol
SMILES = {"Drug_1": "CCO", "Drug_2": "c1ccccc1O", "Drug_3": "CC(=O)O", "Drug_4": "CCN"}  # Drug_4: no response


def make_layout(root, *, index_row=False, mordred=True, ecfp=True, smiles=True, responses=RESPONSES):
    """A benchmark folder in IMPROVE's layout (y_data/, x_data/), written the way the real files are."""
    x, y = os.path.join(root, "x_data"), os.path.join(root, "y_data")
    os.makedirs(x, exist_ok=True)
    os.makedirs(y, exist_ok=True)
    resp = pd.DataFrame(responses, columns=["source", "improve_sample_id", "improve_chem_id", "auc", "ic50"])
    resp.insert(3, "study", "fake")
    resp.to_csv(os.path.join(y, "response.tsv"), sep="\t", index=False)
    rng = np.random.default_rng(0)
    lines = ["\t".join(["Ensembl"] + [g[0] for g in GENES]), "\t".join(["Entrez"] + [g[1] for g in GENES]),
             "\t".join(["Gene_Symbol"] + [g[2] for g in GENES])]
    if index_row:
        lines.append("improve_sample_id" + "\t" * len(GENES))
    expr = {s: rng.normal(size=len(GENES)).round(4) for s in SAMPLES}
    lines += ["\t".join([s] + [str(v) for v in expr[s]]) for s in SAMPLES]
    with open(os.path.join(x, "cancer_gene_expression.tsv"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    drugs = ["Drug_1", "Drug_2", "Drug_3", "Drug_4"]
    if mordred:
        m = pd.DataFrame({"improve_chem_id": drugs, "ABC": [1.0, 2.0, 3.0, 4.0], "nAcid": [0, 1, 0, 1],
                          "SpMax_A": ["1.5", "2.5", "invalid value encountered", "3.5"],  # Mordred error string
                          "Ipc": [1e3, 1e8, 1e9, 1e7]})
        m.to_csv(os.path.join(x, "drug_mordred.tsv"), sep="\t", index=False)
    if ecfp:
        bits = pd.DataFrame(rng.integers(0, 2, size=(4, 8)), columns=[f"ecfp4.{i}" for i in range(8)])
        bits.insert(0, "improve_chem_id", drugs)
        bits.to_csv(os.path.join(x, "drug_ecfp4_nbits512.tsv"), sep="\t", index=False)
    if smiles:
        pd.DataFrame({"improve_chem_id": list(SMILES), "canSMILES": list(SMILES.values())}).to_csv(
            os.path.join(x, "drug_SMILES.tsv"), sep="\t", index=False)
    return str(root), expr


def rows_of(ds):
    return {(ds.cell_ids[c], ds.drug_ids[d]): float(v) for c, d, v in zip(ds.cell_index, ds.drug_index, ds.label)}


def pandas_expected(root, sources, label="auc"):
    """What a plain pandas reading of the TSVs says the kept rows are (the round-trip's reference)."""
    resp = pd.read_csv(os.path.join(root, "y_data", "response.tsv"), sep="\t")
    expr = pd.read_csv(os.path.join(root, "x_data", "cancer_gene_expression.tsv"), sep="\t", header=[0, 1, 2],
                       index_col=0)
    feats = [pd.read_csv(os.path.join(root, "x_data", f), sep="\t", index_col="improve_chem_id")
             for f in ("drug_mordred.tsv", "drug_ecfp4_nbits512.tsv")
             if os.path.exists(os.path.join(root, "x_data", f))]
    drugs = set.intersection(*(set(f.index) for f in feats))
    r = resp[resp["source"].isin(sources) & resp[label].notna() & resp["improve_sample_id"].isin(expr.index)
             & resp["improve_chem_id"].isin(drugs)]
    return r.groupby(["source", "improve_sample_id", "improve_chem_id"])[label].mean()


def test_round_trip_counts_match_pandas(tmp_path):
    root, expr = make_layout(tmp_path / "csa")
    out = str(tmp_path / "multi.h5")
    assert main(["data", "improve", root, "--source", "CCLE,GDSCv2,gCSI", "--out", out]) == 0
    back = read_uno(out)
    exp = pandas_expected(root, ["CCLE", "GDSCv2", "gCSI"])
    assert back.n_rows == len(exp) == 7
    assert back.n_cells == len(exp.reset_index()[["source", "improve_sample_id"]].drop_duplicates())
    assert back.n_drugs == len(exp.reset_index()[["source", "improve_chem_id"]].drop_duplicates())
    want = {(f"{s}.{c}", f"{s}.{d}"): v for (s, c, d), v in exp.items()}
    assert rows_of(back) == pytest.approx(want, abs=1e-6)
    assert rows_of(back)[("CCLE.ACH-000001", "CCLE.Drug_1")] == pytest.approx(0.6)  # duplicates: mean
    assert rows_of(back)[("GDSCv2.ACH-000003", "GDSCv2.Drug_2")] == pytest.approx(0.45)
    # the prefixed instances of one sample share its expression row, as the file gives it
    ge = back.groups[0]
    assert ge.columns == ["GE_TP53|ENSG00000141510", "GE_EGFR", "GE_MYC", "GE_TP53|ENSG00000999999"]
    for cell in ("CCLE.ACH-000001", "GDSCv2.ACH-000001"):
        np.testing.assert_allclose(ge.values[list(back.cell_ids).index(cell)], expr["ACH-000001"], atol=1e-6)
    assert [g.name for g in back.groups] == ["cell.rnaseq", "drug.descriptors", "drug.fingerprints"]
    assert back.groups[2].columns == [f"FP_ecfp4.{i}" for i in range(8)]
    written = back.meta["written"]["meta"]
    assert written["labels"] == {"CCLE": "auc", "GDSCv2": "auc", "gCSI": "auc"} and written["generator"] == "improve"


def test_counts_per_source(tmp_path):
    root, _ = make_layout(tmp_path / "csa")
    ds, rep = build_improve(root, "ccle,GDSCV2")  # names match case-insensitively
    assert rep.sources == ["CCLE", "GDSCv2"]
    ccle, gdsc = rep.screens
    assert (ccle.rows_in, ccle.rows_bad_label, ccle.rows_no_expression, ccle.rows_no_drug_features,
            ccle.rows_merged, ccle.rows_kept) == (7, 1, 1, 1, 1, 3)
    assert ccle.cells_no_expression == ["ACH-999999"] and ccle.drugs_no_features == ["Drug_9"]
    assert (gdsc.rows_in, gdsc.rows_merged, gdsc.rows_kept, gdsc.max_replicate_spread) == (5, 2, 3, pytest.approx(0.2))
    for s in rep.screens:
        assert s.rows_in == s.rows_dropped + s.rows_merged + s.rows_kept
    assert (rep.rows, rep.cells, rep.drugs) == (6, 5, 5)
    assert any("total kept: 6 rows, 5 cells, 5 drugs" in line for line in rep.lines())


def test_one_source_plain_ids_other_label_and_index_row(tmp_path):
    root, _ = make_layout(tmp_path / "csa", index_row=True)  # a row naming the index after the headers
    ds, rep = build_improve(root, "GDSCv2", label="ic50")
    assert rows_of(ds) == pytest.approx({("ACH-000001", "Drug_1"): 8.0, ("ACH-000002", "Drug_3"): 9.0,
                                         ("ACH-000003", "Drug_2"): 11.0})
    assert ds.meta["labels"] == {"GDSCv2": "ic50"}


def test_mordred_error_strings_are_imputed_and_descriptors_scaled(tmp_path):
    root, _ = make_layout(tmp_path / "csa")
    ds, rep = build_improve(root, "all")
    desc = ds.groups[1]
    assert desc.columns == ["DD_ABC", "DD_nAcid", "DD_SpMax_A", "DD_Ipc"]
    assert np.isfinite(desc.values).all()
    assert "Drug_3" in ds.meta["features"]["drug.descriptors"]["imputed_median"]
    assert ds.meta["features"]["drug.descriptors"]["log1p_compressed"] == ["Ipc"]


def test_smiles_only_through_rdkit(tmp_path):
    pytest.importorskip("rdkit.Chem", reason="RDKit not installed (pip install -e '.[chem]')")
    root, _ = make_layout(tmp_path / "csa", mordred=False, ecfp=False)
    ds, rep = build_improve(root, "CCLE", fp_bits=32)
    assert rep.drug_features == "rdkit"
    assert ds.feature_widths()["drug.fingerprints"] == 32 and ds.feature_widths()["drug.descriptors"] >= 200
    assert sorted(ds.drug_ids) == ["Drug_1", "Drug_2"]  # Drug_9 has no SMILES
    # forced RDKit while the feature files exist
    root2, _ = make_layout(tmp_path / "csa2")
    assert build_improve(root2, "CCLE", drug_features_from="rdkit", fp_bits=16)[1].drug_features == "rdkit"


def test_gene_columns_fallbacks():
    cols = pd.MultiIndex.from_tuples([("E1", "1", "A"), ("E2", "2", "Unnamed: 2_level_2"),
                                      ("E3", "Unnamed: 3_level_1", "Unnamed: 3_level_2"), ("E4", "4", "A")])
    assert gene_columns(cols) == ["GE_A|E1", "GE_2", "GE_E3", "GE_A|E4"]


def _edit_responses(root, fn):
    path = os.path.join(root, "y_data", "response.tsv")
    fn(pd.read_csv(path, sep="\t", dtype={"improve_sample_id": str, "improve_chem_id": str})).to_csv(
        path, sep="\t", index=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage, argv_extra, expected", [
    (lambda r: os.remove(os.path.join(r, "y_data", "response.tsv")), [], "response.tsv' does not exist"),
    (lambda r: None, ["--source", "CTRPv2"], "IMPROVE source 'CTRPv2' is not in"),
    (lambda r: None, ["--label", "aac1"], "has no label column 'aac1'"),
    (lambda r: os.remove(os.path.join(r, "x_data", "cancer_gene_expression.tsv")), [],
     "cancer_gene_expression.tsv' does not exist"),
    (lambda r: pd.DataFrame({"improve_sample_id": SAMPLES, "TP53": [1.5, 2, 3, 4], "EGFR": [0.5, 1, 2, 3]}).to_csv(
        os.path.join(r, "x_data", "cancer_gene_expression.tsv"), sep="\t", index=False), [], "header rows"),
    (lambda r: [os.remove(os.path.join(r, "x_data", f)) for f in
                ("drug_mordred.tsv", "drug_ecfp4_nbits512.tsv", "drug_SMILES.tsv")], [], "no drug features"),
    (lambda r: pd.DataFrame({"improve_chem_id": ["Drug_1", "Drug_1"], "ABC": [1.0, 2.0]}).to_csv(
        os.path.join(r, "x_data", "drug_mordred.tsv"), sep="\t", index=False), [], "twice with different values"),
    # issue 28 items 7 and 8
    (lambda r: _edit_responses(r, lambda df: df.iloc[:0]), ["--source", "all"], "has a header but no rows"),
    (lambda r: _edit_responses(r, lambda df: df.assign(improve_sample_id=["NA"] + list(df.improve_sample_id[1:]))),
     [], "1 row(s) with an empty or NA improve_sample_id (first lines: 2)"),
    (lambda r: _edit_responses(r, lambda df: df.assign(improve_chem_id=list(df.improve_chem_id[:2]) + [""]
                                                       + list(df.improve_chem_id[3:]))),
     [], "1 row(s) with an empty or NA improve_chem_id (first lines: 4)"),
    (lambda r: _edit_responses(r, lambda df: df.assign(auc="high")), [], "label column 'auc' holds no number"),
    (lambda r: _edit_responses(r, lambda df: df.assign(auc=[1e308] + list(df.auc[1:]))), [],
     "IMPROVE data (CCLE): 1 auc label(s) beyond ±1e+18"),
    (lambda r: (os.remove(os.path.join(r, "x_data", "drug_mordred.tsv")),
                os.mkdir(os.path.join(r, "x_data", "drug_mordred.tsv"))), [], "drug_mordred.tsv' is not a regular file"),
    (lambda r: os.mkfifo(os.path.join(r, "x_data", "drug_ecfp4_nbits512.tsv.new")) or os.replace(
        os.path.join(r, "x_data", "drug_ecfp4_nbits512.tsv.new"), os.path.join(r, "x_data", "drug_ecfp4_nbits512.tsv")),
     [], "drug_ecfp4_nbits512.tsv' is not a regular file"),
])
def test_bad_inputs_exit_2_one_line(tmp_path, capsys, damage, argv_extra, expected):
    root, _ = make_layout(tmp_path / "csa")
    damage(root)
    out = tmp_path / "x.h5"
    argv = ["data", "improve", root, "--source", "CCLE", "--out", str(out)] + argv_extra
    if "--source" in argv_extra:
        argv = ["data", "improve", root, "--out", str(out)] + argv_extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hbl_mpi: error:") and re.search(re.escape(expected), err[0]), err
    assert not out.exists()

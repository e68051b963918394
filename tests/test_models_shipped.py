"""The shipped models (HiDRA-style pathway attention, tCNNs-style SMILES CNN) and the
one-hot SMILES group they read. The default tier checks the data and the models' parts;
the slow tier trains trees with them (serial, one mpiexec launch) and reports on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hbl_mpi.core.errors import InputError
from hbl_mpi.data.smiles import ALPHABET, GROUP, onehot, random_smiles, smiles_group, with_random_smiles
from hbl_mpi.models.plugin import check_model, resolve
from hbl_mpi.uno import InputSpec
from mpiutil import run_mpi, run_py
from tinyrun import write_tiny_run

A = len(ALPHABET)
TOP21 = (("cell.rnaseq", 942), ("drug.descriptors", 5270))
PATHWAY, CNN = "hbl_mpi.models.pathway:build", "hbl_mpi.models.smiles_cnn:build"

PAPER_PARAMETERS = {PATHWAY: 1_068_985, CNN: 3_387_609}
"""docs/models.md's counts at Top21 widths (the CNN with a 188-long SMILES group): kept equal here."""


def test_onehot_marks_one_character_per_position_and_counts_cuts():
    values, cut = onehot(["CC(=O)N", "c1ccccc1Br" * 3], 8)
    m = values.reshape(2, 8, A)
    assert cut == 1 and m.sum(axis=2).tolist() == [[1] * 7 + [0], [1] * 8]
    assert [ALPHABET[k] for k in m[0, :7].argmax(axis=1)] == list("CC(=O)N")
    assert m[0, 0, ALPHABET.index("C")] == 1 and np.all(values >= 0)
    assert ALPHABET[m[0].argmax(axis=1)[0]] == "C"
    assert onehot(["Cé"], 2)[0].reshape(2, A)[1, A - 1] == 1  # unknown characters: the last column
    with pytest.raises(InputError, match="padded SMILES length"):
        smiles_group(["C"], 0)


def test_smiles_group_stays_out_of_the_default_data_and_round_trips(tmp_path):
    from hbl_mpi.data import read_data, synthesize, write_uno

    plain = synthesize("small", seed=3, cells=12, drugs=6)
    before = plain.checksum()
    assert GROUP not in plain.feature_widths()
    ds = with_random_smiles(synthesize("small", seed=3, cells=12, drugs=6), 30, seed=3)
    assert [g.values.tobytes() for g in ds.groups[:-1]] == [g.values.tobytes() for g in plain.groups]
    assert synthesize("small", seed=3, cells=12, drugs=6).checksum() == before
    assert ds.feature_widths()[GROUP] == 30 * A
    write_uno(ds, str(tmp_path / "s.h5"), seed=3)
    back = read_data(str(tmp_path / "s.h5"))
    np.testing.assert_array_equal(back.groups[-1].values, ds.groups[-1].values)
    assert len(set(random_smiles(np.random.default_rng(1), 20))) == 20


def test_data_synth_cli_adds_the_group_only_when_asked(tmp_path):
    from hbl_mpi.data import read_data

    out = tmp_path / "s.h5"
    proc = run_py(["-m", "hbl_mpi", "data", "synth", "--cells", "10", "--drugs", "5", "--smiles-onehot", "24",
                   "--out", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_data(str(out)).feature_widths()[GROUP] == 24 * A
    bad = run_py(["-m", "hbl_mpi", "data", "synth", "--smiles-onehot", "-3", "--out", str(tmp_path / "b.h5")])
    assert bad.returncode == 2 and "padded SMILES length" in bad.stderr and not (tmp_path / "b.h5").exists()


@pytest.mark.slow
def test_paper_presets_have_the_documented_parameter_counts():
    assert check_model(resolve(PATHWAY, {"preset": "paper"}), InputSpec(TOP21)) == PAPER_PARAMETERS[PATHWAY]
    spec = InputSpec(TOP21 + ((GROUP, 188 * A),))
    assert check_model(resolve(CNN, {"preset": "paper"}), spec) == PAPER_PARAMETERS[CNN]
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for n in PAPER_PARAMETERS.values():
        assert f"{n:,}" in text


def test_pathway_sets_from_a_file_and_their_errors(tmp_path):
    from hbl_mpi.models.pathway import gene_sets

    assert gene_sets(10, 3, None) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    path = tmp_path / "sets.json"
    path.write_text(json.dumps({"a": [0, 5], "b": [1, 2, 3]}))
    spec = InputSpec((("cell.rnaseq", 6), ("drug.descriptors", 4)), has_dose=True)
    assert check_model(resolve(PATHWAY, {"preset": "tiny", "pathway_file": str(path)}), spec) > 0
    path.write_text(json.dumps({"a": [0, 6]}))
    with pytest.raises(InputError, match="column indices in"):
        check_model(resolve(PATHWAY, {"preset": "tiny", "pathway_file": str(path)}), spec)
    with pytest.raises(InputError, match="unknown model_params"):
        check_model(resolve(PATHWAY, {"widht": 3}), spec)
    with pytest.raises(InputError, match="--smiles-onehot|no feature group"):
        check_model(resolve(CNN, {"preset": "tiny"}), spec)


def test_pathway_attention_follows_the_sets():
    """A set-level perturbation moves the output only through that set: genes outside every
    set of a one-set model do not change the prediction (known by construction)."""
    from hbl_mpi.models.pathway import PathwayAttention, PRESETS

    spec = InputSpec((("cell.rnaseq", 8), ("drug.descriptors", 3)))
    torch.manual_seed(0)
    p = {**PRESETS["tiny"], "sets": 2}
    model = PathwayAttention(spec, p).eval()
    x, d = torch.randn(4, 8), torch.randn(4, 3)
    base = model(x, d)
    assert base.shape == (4,)
    model.mask[1] = False  # drop set 2 (genes 4..7) from the model
    model.mask[1, 0] = True  # (a set needs one gene for its softmax): keep gene 4 only
    y = x.clone()
    y[:, 5:] += 10.0
    assert torch.equal(model(x, d), model(y, d))


@pytest.fixture(scope="module")
def smiles_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smiles")
    cfg = write_tiny_run(root, tree={"n": 2, "s": 2, "strategy": "exp2:2"}, synth={"cells": 24, "drugs": 8})
    from hbl_mpi.data import read_data, write_uno

    ds = with_random_smiles(read_data(str(root / "tiny.h5")), 24, seed=3)
    write_uno(ds, str(root / "tiny.h5"), seed=3)
    return root, cfg


def _serial(root: Path, cfg: Path, model: str) -> Path:
    """The serial run of ``model`` (tiny preset) on the SMILES data, made once per module."""
    out = root / model.split(".")[-1].replace(":", "_")
    if not (out / "results.h5").exists():
        proc = run_py(["-m", "hbl_mpi", "run", str(cfg), "--serial", "--out", str(out), "--set", f"model={model}",
                       "--set", "model_params.preset='tiny'"], timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", [PATHWAY, CNN])
def test_shipped_model_trains_a_tree_serially(smiles_run, model):
    root, cfg = smiles_run
    nodes = pd.read_hdf(_serial(root, cfg, model) / "results.h5", "nodes")
    assert (nodes["status"] == "done").all() and np.isfinite(nodes["val_loss"]).all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smiles_cnn_under_mpiexec_matches_serial_bit_for_bit(smiles_run):
    root, cfg = smiles_run
    ref_out = _serial(root, cfg, CNN)
    out = root / "cnn_mpi"
    proc = run_mpi(3, ["-m", "hbl_mpi", "run", str(cfg), "--out", str(out), "--set", f"model={CNN}",
                       "--set", "model_params.preset='tiny'"], timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ref = pd.read_hdf(ref_out / "results.h5", "nodes").set_index("node")
    got = pd.read_hdf(out / "results.h5", "nodes").set_index("node").loc[ref.index]
    for col in ("val_loss", "test_loss", "train_loss"):
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
    assert list(got["inherit_checksum"]) == list(ref["inherit_checksum"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_report_compares_models_on_the_same_data(smiles_run):
    """Two models' runs on one data file: the run totals carry each model's line and the
    detection table has one row per model (labels say which run is which model)."""
    root, cfg = smiles_run
    runs = [_serial(root, cfg, m) / "results.h5" for m in (PATHWAY, CNN)]
    out = root / "report"
    proc = run_py(["-m", "hbl_mpi", "report", *map(str, runs), "--out", str(out)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    totals = pd.read_csv(out / "run_totals.csv")
    assert list(totals["model"]) == [PATHWAY, CNN]
    assert (totals["model_parameters"] > 0).all() and totals["model_source"].str.len().eq(16).all()
    assert totals["strategy"].str.contains("pathway:build").any()
    detection = [p for p in out.glob("*.csv") if "detection" in p.name]
    assert detection, sorted(p.name for p in out.glob("*.csv"))
    det = pd.read_csv(detection[0])
    assert det["method"].str.contains("pathway:build").any() and det["method"].str.contains("smiles_cnn:build").any()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_model_agreement_bench_matches_the_report(smiles_run):
    """bench/model_agreement.py's AUROCs are the ranking module's detection of each run, and its
    Jaccard is the overlap of the two runs' top-5 cells computed here."""
    root, cfg = smiles_run
    runs = [_serial(root, cfg, m) / "results.h5" for m in (PATHWAY, CNN)]
    bench = Path(__file__).resolve().parents[1] / "bench" / "model_agreement.py"
    proc = run_py([str(bench), *map(str, runs), "--top", "5"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(res["runs"]) == {PATHWAY, CNN}
    (pair, j), = res["jaccard_top5"].items()
    assert 0.0 <= j <= 1.0 and res["common_top5"] <= 5
    from hbl_mpi.analysis.ranking import detection_metrics, rank_cells
    from hbl_mpi.store.results import read_results

    tops = []
    for m, path in zip((PATHWAY, CNN), runs):
        run = read_results(str(path))
        ranking = rank_cells(run.cell_val, run.nodes, plan=run.plan)
        score = ranking.set_index("cell")["score"]
        assert res["runs"][m]["auroc"] == pytest.approx(detection_metrics(score, run.truth).set_index("kind").loc["all", "auroc"])
        tops.append(set(ranking.sort_values("rank")["cell"].astype(str).head(5)))
    assert j == pytest.approx(len(tops[0] & tops[1]) / len(tops[0] | tops[1]))

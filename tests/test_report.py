"""The report command on small fabricated results files (no training needed)."""

import argparse
import io
import os
import re

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.report import build as REP
from hbl_mpi.report.page import slug as _slug
from hbl_mpi.analysis import ranking as R
from hbl_mpi.commands import report as cmd
from hbl_mpi.core.errors import InputError
from hbl_mpi.store.results import read_results

from resultsutil import write_results

PLANTED = {"C03": "label_noise", "C11": "shift", "C20": "swap"}


def fake_run(path, strategy="EXP2", n=3, s=3, seed=0, planted=PLANTED, harm=None):
    """A results file shaped like the runtime's: N-ary tree over N^S cells, one planted-heavy MSE per cell.

    With ``harm`` (cell -> amount) it also has ``cell_test``: every node's holdout MSE of
    every cell rises by ``harm[j]`` for each harmful cell j it trained on (j != the cell).
    """
    rng = np.random.default_rng(seed)
    cells = [f"C{i:02d}" for i in range(n ** s)]
    order = list(rng.permutation(cells))
    nodes, cell_val, plan, history, cell_test = [], [], [], [], []
    budget = {"EXP2": lambda st: max(8 // 2 ** (st - 1), 1), "F-10": lambda st: 10}[strategy]
    t = 0.0

    def visit(name, val_cells, stage):
        nonlocal t
        if stage > 0:
            mse = {c: 0.1 / stage * rng.lognormal(0, 0.2) * (8.0 if c in planted else 1.0) for c in val_cells}
            val = float(np.mean(list(mse.values())))
            ep = int(min(budget(stage), rng.integers(2, 8)))
            nodes.append({"node": name, "parent": name.rpartition(".")[0], "stage": stage, "status": "done",
                          "group": 1 + len(nodes) % 2, "start": t, "stop": t + 5.0, "epochs_planned": budget(stage),
                          "epochs_run": ep, "stopped_early": ep < budget(stage), "train_loss": val / 2,
                          "val_loss": val, "val_loss_last": val * 1.1, "test_loss": val, "n_train_rows": 1000,
                          "n_val_rows": 10 * len(val_cells), "n_train_cells": len(cells) - len(val_cells),
                          "n_val_cells": len(val_cells), "steps": 4 * ep, "train_s": 5.0, "transfer_s": 0.1,
                          "error": ""})
            t += 2.5
            for c, m in mse.items():
                cell_val.append({"node": name, "cell": c, "n_rows": 10, "mse": m})
                plan.append({"node": name, "parent": name.rpartition(".")[0], "stage": stage, "cell": c,
                             "role": "val"})
            for e in range(ep):
                history.append({"node": name, "epoch": e, "loss": val, "val_loss": val, "seconds": 1.0})
            if harm is not None:
                trained = set(cells) - set(val_cells)
                for c in cells:
                    extra = sum(h for j, h in harm.items() if j in trained and j != c)
                    cell_test.append({"node": name, "cell": c, "n_rows": 3,
                                      "mse": 0.1 / stage * (1 + 0.01 * rng.random()) + extra})
        if stage == s:
            return
        k = len(val_cells) // n
        for i in range(n):
            visit(f"{name}.{i + 1}", val_cells[i * k:(i + 1) * k], stage + 1)

    visit("1", order, 0)
    truth = {"cell": list(planted), "kind": list(planted.values())} if planted else None
    config = {"strategy": strategy, "n": n, "s": s, "seed": seed, "data": "missing.h5", "group_size": 1}
    return write_results(path, nodes, history=history, cell_val=cell_val, cell_test=cell_test or None, plan=plan,
                         truth=truth,
                         config=config, versions={"hbl_mpi": "test"})


def args_for(argv):
    p = argparse.ArgumentParser()
    cmd.configure(p)
    return p.parse_args(argv)


def test_report_two_strategies(tmp_path, capsys):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)
    b = fake_run(tmp_path / "b.h5", "F-10", seed=2)
    out = tmp_path / "rep"
    assert cmd.run(args_for([a, b, "--out", str(out)])) == 0
    files = set(os.listdir(out))
    for f in ["fig07_trajectories.png", "fig08_early_stop.png", "fig09_epochs.png", "fig10_val_loss_percentiles.png",
              "fig11_increase_fraction.png", "fig12_increase_delta.png", "fig13_outlier_level.png",
              "fig14_busy_workers.png", "fig_cell_ranking.png", "fig_detection_roc.png", "stage_table.csv",
              "table2_best_trajectory.csv", "cell_ranking.csv", "detection.csv", "ranking_methods.csv",
              "report.md", "report.html", "cell_ranking_EXP2.csv", f"cell_ranking_{_slug('F-10')}.csv"]:
        assert f in files, f
    assert not [f for f in files if ".tmp" in f]
    for f in files:
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    st = pd.read_csv(out / "stage_table.csv")
    assert set(st["strategy"]) == {"EXP2", "F-10"} and set(st["stage"]) == {1, 2, 3}
    rk = pd.read_csv(out / "cell_ranking.csv")
    assert len(rk) == 27 and list(rk["rank"]) == list(range(1, 28))
    assert set(rk["cell"].head(3)) == set(PLANTED)  # 8x MSE at every stage
    det = pd.read_csv(out / "detection.csv")
    comb = det[(det["method"] == "HBL combined") & (det["kind"] == "all")].iloc[0]
    assert comb["auroc"] == 1.0 and comb["precision_at_k"] == 1.0 and comb["k"] == 3
    assert set(det["kind"]) == {"all", "label_noise", "shift", "swap"}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for fig in ["fig08_early_stop.png", "fig13_outlier_level.png", "fig_cell_ranking.png"]:
        assert f"]({fig})" in md and f"src='{fig}'" in html
    assert "Table 2" in md and "<table>" in html
    assert "AUROC 1.000" in capsys.readouterr().out


def test_report_has_the_impact_axis_when_cell_test_exists(tmp_path):
    a = fake_run(tmp_path / "a.h5", harm={"C20": 0.05})
    out = tmp_path / "rep"
    assert cmd.run(args_for([a, "--out", str(out)])) == 0
    rk = pd.read_csv(out / "cell_ranking.csv")
    for col in ("score", "impact", "impact_sd", "impact_z", "combined"):
        assert col in rk.columns, col
    assert rk.sort_values("impact", ascending=False)["cell"].iloc[0] == "C20"  # S = 3 over 27 cells: 1-cell leaves
    assert rk.set_index("cell").loc["C03", "impact"] == pytest.approx(0.0, abs=0.01)  # resists, harms nobody
    md = (out / "report.md").read_text()
    assert "## Impact on the other cells" in md and "](fig_impact_quadrant.png)" in md
    assert md.index("## Cell ranking") < md.index("## Impact on the other cells")
    assert "most harmful" in md and "most beneficial" in md
    assert (out / "impact_contrasts.csv").exists()


def test_report_without_cell_test_says_impact_is_unavailable(tmp_path):
    rep = REP.build([fake_run(tmp_path / "a.h5")])
    sec = next(x for x in rep.sections if x.title == "Impact on the other cells")
    assert "Not available" in sec.text and "impact" not in rep.files.get("cell_ranking.csv", b"").decode()


def test_report_without_truth(tmp_path):
    a = fake_run(tmp_path / "a.h5", planted={})
    rep = REP.build([a])
    assert "detection" not in rep.summary
    assert "detection.csv" not in rep.files and "cell_ranking.csv" in rep.files


def _missing(d):
    return str(d / "missing.h5")


def _not_hdf5(d):
    (d / "x.h5").write_text("hello")
    return str(d / "x.h5")


def _other_hdf5(d):
    pd.DataFrame({"a": [1]}).to_hdf(d / "y.h5", key="foo")
    return str(d / "y.h5")


@pytest.mark.parametrize("make,match", [(_missing, "does not exist"), (_not_hdf5, "not an HDF5"),
                                        (_other_hdf5, "missing key")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make, match):
    out = tmp_path / "rep"
    with pytest.raises(InputError, match=match):
        cmd.run(args_for([make(tmp_path), "--out", str(out)]))
    assert not out.exists()


def test_bad_arguments(tmp_path):
    a = fake_run(tmp_path / "a.h5")
    with pytest.raises(InputError, match="--method"):
        cmd.run(args_for([a, "--method", "nope"]))
    with pytest.raises(InputError, match="data file"):
        REP.build([a], baselines=True)  # the recorded data file does not exist


def test_markdown_table_formatting():
    t = pd.DataFrame({"a": [1, 2], "b": [0.000123456, np.nan], "c": ["x|y", "z"]})
    md = REP.markdown_table(t)
    assert md.splitlines()[0] == "| a | b | c |"
    assert "0.000123" in md and "x\\|y" in md


def test_report_reads_through_the_one_reader(tmp_path):
    """What read_results refuses the report refuses with the same line; what it reads the report uses."""
    a = fake_run(tmp_path / "a.h5", seed=1)
    run = REP.load_runs([a])[0]
    pd.testing.assert_frame_equal(run.nodes, read_results(a).nodes)
    assert run.nodes["epochs_run"].dtype == "float64"  # the reader's dtype, not the file's int64
    with pd.HDFStore(a, mode="a") as st:
        nodes = st["nodes"].drop(columns=["stage"])
        st.remove("nodes")
        st.put("nodes", nodes, format="table", track_times=False)
    with pytest.raises(InputError) as direct:
        read_results(a)
    with pytest.raises(InputError) as via_report:
        REP.build([a])
    assert str(via_report.value) == str(direct.value) and "lacks column(s) stage" in str(direct.value)


@pytest.mark.timeout(180)
def test_report_with_baselines_on_a_real_tiny_run(tmp_path, capsys):
    """End to end: synthetic data, a tiny serial tree, then `report --baselines` scores everything."""
    from hbl_mpi.commands import run as run_cmd
    from hbl_mpi.data import synthesize, write_uno

    data = tmp_path / "d.h5"
    write_uno(synthesize("small", seed=4, cells=24, drugs=10, cell_features=8, descriptors=6, fingerprints=0,
                         anomaly_fraction=0.25), str(data))
    ns = argparse.Namespace(config=None, out=str(tmp_path / "run"), serial=True, restart=False, overwrite=False,
                            overrides=[f"data={data}", "n=2", "s=2", "model=tiny", "strategy=flat:3",
                                       "batch_size=64", "threads=1", "seed=2"])
    assert run_cmd.run_serial_command(ns) == 0
    results = str(tmp_path / "run" / "results.h5")
    out = tmp_path / "rep"
    assert cmd.run(args_for([results, "--out", str(out), "--baselines", "--kfold", "3"])) == 0
    det = pd.read_csv(out / "detection.csv")
    methods = list(dict.fromkeys(det["method"]))
    assert methods[0].startswith("HBL ") and "K-fold OOF residual (K=3)" in methods
    assert {"IsolationForest features", "IsolationForest responses"} <= set(methods)
    allk = det[det["kind"] == "all"].set_index("method")
    assert (allk["k"] == 6).all() and allk["auroc"].between(0, 1).all()
    hbl = allk.loc[methods[0]]
    nodes = pd.read_hdf(results, "nodes")
    assert hbl["epochs"] == nodes["epochs_run"].sum()
    assert hbl["row_epochs"] == (nodes["epochs_run"] * nodes["n_train_rows"]).sum()
    kf = allk.loc["K-fold OOF residual (K=3)"]
    assert 3 <= kf["epochs"] <= 9 and kf["row_epochs"] > 0 and kf["seconds"] > 0
    assert allk.loc["IsolationForest features", "epochs"] == 0
    html = (out / "report.html").read_text()
    assert "K-fold OOF residual" in html


def test_summary_comes_first_and_html_is_readable(tmp_path):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)
    rep = REP.build([a], log=lambda *x: None)
    assert rep.sections[0].title == "Summary"
    top, det = rep.sections[0].tables[0][1], rep.sections[0].tables[1][1]
    assert set(top["cell"].head(3)) == set(PLANTED) and list(top["rank"]) == list(range(1, 11))
    assert list(det["method"]) == ["HBL EXP2"] and det["auroc"].iloc[0] == 1.0
    page = REP.render_html(rep)
    assert f"<code>{R.DEFAULT_METHOD}</code>" in page and "`" not in page  # code spans, no raw backticks
    assert page.count("<div class='tw'><table>") == sum(len(s.tables) for s in rep.sections)
    assert "<td class='t'>C03</td>" in page  # text cells left-aligned, numbers right


def test_sections_come_from_the_builders_and_a_new_part_is_one_more(tmp_path):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)

    def extra(inp, rep):  # what another module adds: it reads the shared ranking
        top3 = inp.ranking.head(3)
        rep.csv("extra.csv", top3)
        rep.sections.append(REP.Section("Extra", "the top 3 cells", None, [("extra.csv", top3)]))

    rep = REP.build([a], log=lambda *x: None, builders=REP.SECTION_BUILDERS + (extra,))
    titles = [s.title for s in rep.sections]
    assert titles == ["Summary", "Run totals", "Fig. 7: trajectories", "Fig. 8: early stopping",
                      "Fig. 9: epochs trained", "Fig. 10: val_loss percentiles",
                      "Table 2: the best final-stage trajectory", "Fig. 11: val_loss increases",
                      "Fig. 12: increase delta", "Fig. 13: outlier level", "Fig. 14: busy workers", "Cell ranking",
                      "Groups the suspects share", "Impact on the other cells", "Cell diagnosis", "Detection of the planted cells", "Extra"]
    ranking = pd.read_csv(io.BytesIO(rep.files["cell_ranking.csv"]))
    extra_csv = pd.read_csv(io.BytesIO(rep.files["extra.csv"]))
    pd.testing.assert_frame_equal(extra_csv, ranking.head(3))
    assert "## Extra" in REP.render_markdown(rep)


def add_cell_pred(path, n_drugs=12, seed=0):
    """Give a fake run the diagnosis inputs: held-out predictions per (node, cell, drug) and neighbours."""
    rng = np.random.default_rng(seed)
    cv = pd.read_hdf(path, "cell_val")
    cells = sorted(cv["cell"].unique())
    drugs = [f"D{j}" for j in range(n_drugs)]
    level = dict(zip(cells, rng.normal(0, 0.05, len(cells))))
    pot = rng.normal(0.6, 0.15, n_drugs)
    # a cell's measured labels are the same at every stage; each node predicts the clean part
    labels = {c: pot + level[c] + rng.normal(0, 0.05, n_drugs) + (0.3 if PLANTED.get(c) == "shift" else 0.0)
              for c in cells}
    rows = []
    for node, cell in cv[["node", "cell"]].itertuples(index=False):
        f = pot + level[cell] + rng.normal(0, 0.01, n_drugs)
        y = labels[cell]
        for j, d in enumerate(drugs):
            rows.append((node, cell, d, float(f[j]), float(y[j])))
    cp = pd.DataFrame(rows, columns=["node", "cell", "drug", "pred", "label"])
    nb = pd.DataFrame([(c, cells[(i + k) % len(cells)], k, 0.5) for i, c in enumerate(cells) for k in (1, 2, 3)],
                      columns=["cell", "neighbour", "rank", "similarity"])
    with pd.HDFStore(path, mode="a") as st:
        st.put("cell_pred", cp, format="table", track_times=False)
        st.put("cell_neighbours", nb, format="table", track_times=False)
    return cp


def reference_file(path, cp):
    """A second screen in Uno format: the same (cell, drug) labels on another scale, one cell scrambled."""
    from hbl_mpi.data import write_uno
    from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup

    m = cp.drop_duplicates(["cell", "drug"])
    cells, drugs = np.array(sorted(m["cell"].unique()), dtype=object), np.array(sorted(m["drug"].unique()), dtype=object)
    ci, di = pd.Index(cells).get_indexer(m["cell"]), pd.Index(drugs).get_indexer(m["drug"])
    y = m["label"].to_numpy(np.float32) * 0.8 + 0.1
    bad = m["cell"].to_numpy() == "C03"
    y[bad] = np.random.default_rng(1).permutation(y[bad])
    ds = Dataset(cells, drugs, [FeatureGroup("cell.rnaseq", CELL, ["g"], np.arange(len(cells), dtype=np.float32)[:, None]),
                                FeatureGroup("drug.descriptors", DRUG, ["z"], np.arange(len(drugs), dtype=np.float32)[:, None])],
                 ci.astype(np.int32), di.astype(np.int32), y)
    write_uno(ds, str(path))
    return str(path)


def test_report_diagnoses_cells_and_holds_them_against_a_reference(tmp_path):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)
    cp = add_cell_pred(a)
    ref = reference_file(tmp_path / "ref.h5", cp)
    out = tmp_path / "rep"
    assert cmd.run(args_for([a, "--out", str(out), "--reference", ref, "--cells", "5"])) == 0
    rk = pd.read_csv(out / "cell_ranking.csv")
    for col in ("diagnosis", "likely_identity", "confidence", "bias_t", "resid_pred_corr", "identity_gain",
                "neighbour_coherence", "screen_agreement"):
        assert col in rk.columns
    assert set(rk["diagnosis"]) <= {"label_noise", "shift", "swap", "distinct", "none", "replicate_disagreement"}
    assert rk.set_index("cell").loc["C11", "diagnosis"] == "shift"
    html = (out / "report.html").read_text()
    assert "Cross-screen agreement" in html and html.count("<h2 id=") >= 5 + 12
    xs = pd.read_csv(out / "cross_screen_methods.csv")
    assert list(xs["method"]) == ["HBL resist"] and xs.loc[0, "cells"] == 27
    agree = pd.read_csv(out / "cross_screen.csv").set_index("cell")["screen_agreement"]
    assert agree["C03"] < 0.5 < agree.drop("C03").min()
    pages = [f for f in os.listdir(out) if f.startswith("cell_") and f.endswith(".png")]
    assert 1 <= len(pages) == min(5, int(rk["flagged"].sum()))  # a page per flagged top cell
    assert "cell_C11.png" in pages


def test_reference_must_exist(tmp_path):
    a = fake_run(tmp_path / "a.h5", "EXP2", seed=1)
    with pytest.raises(InputError, match="--reference"):
        cmd.run(args_for([a, "--out", str(tmp_path / "r"), "--reference", str(tmp_path / "nope.h5")]))


def test_file_names_of_cells_are_one_per_id():
    """Issue 28 item 8: per-cell figures of ``HCC-1187`` and ``HCC_1187`` were one file."""
    ids = ["HCC-1187", "HCC_1187", "HCC 1187", "HCC.1187", "hcc_1187", "x" * 300, "x" * 301, "", "_", "细胞"]
    names = [_slug(c) for c in ids]
    assert len(set(names)) == len(ids), names
    assert _slug("HCC_1187") == "HCC_1187" and _slug("C11") == "C11"  # safe ids keep their name
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,100}", n) for n in names), names

"""The GDSC study's planted check (bench/gdsc_study.py): what is corrupted, and nothing else.

The study compares a clean and a planted run of the same tree, so the planted file must
differ from the clean one only in the chosen cells' labels, with rows in the same order
(the plan's holdout is drawn by row position).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.data import read_uno, synthesize, write_uno
from hbl_mpi.core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("gdsc_study", ROOT / "bench" / "gdsc_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clean():
    return synthesize("small", seed=3, cells=60, drugs=20, anomaly_fraction=0.0)


def test_plant_changes_only_the_chosen_cells(study, clean):
    planted, summary = study.plant_label_noise(clean, k=5, seed=11)
    chosen = set(planted.truth["cell"])
    assert len(chosen) == 5 and set(planted.truth["kind"]) == {"label_noise"}
    is_planted = np.isin(clean.cell_ids[clean.cell_index], sorted(chosen))
    assert np.array_equal(planted.label[~is_planted], clean.label[~is_planted])
    assert not np.array_equal(planted.label[is_planted], clean.label[is_planted])
    # every new label is a label of some unplanted row (drawn from the other cells)
    assert np.isin(planted.label[is_planted], clean.label[~is_planted]).all()
    assert planted.cell_ids is clean.cell_ids and planted.groups is clean.groups
    assert list(summary["cell"]) == sorted(chosen)
    assert (summary["mean_abs_change"] > 0).all()


def test_plant_is_deterministic_per_seed(study, clean):
    a, _ = study.plant_label_noise(clean, k=4, seed=1)
    b, _ = study.plant_label_noise(clean, k=4, seed=1)
    c, _ = study.plant_label_noise(clean, k=4, seed=2)
    assert np.array_equal(a.label, b.label) and list(a.truth["cell"]) == list(b.truth["cell"])
    assert not np.array_equal(a.label, c.label)


def test_plant_refuses_bad_k_and_already_planted_data(study, clean):
    with pytest.raises(InputError):
        study.plant_label_noise(clean, k=0, seed=1)
    with pytest.raises(InputError):
        study.plant_label_noise(clean, k=clean.n_cells, seed=1)
    dirty = synthesize("small", seed=3, cells=60, drugs=20, anomaly_fraction=0.1)
    with pytest.raises(InputError):
        study.plant_label_noise(dirty, k=2, seed=1)


def test_planted_file_keeps_the_clean_row_order(study, clean, tmp_path):
    write_uno(clean, tmp_path / "clean.h5", seed=5)  # the clean file: rows split 80/10/10
    ds = read_uno(tmp_path / "clean.h5")
    out = tmp_path / "planted.h5"
    assert study.main(["plant", str(tmp_path / "clean.h5"), "--k", "3", "--seed", "2", "--out", str(out)]) == 0
    back = read_uno(out)
    assert np.array_equal(back.cell_index, ds.cell_index) and np.array_equal(back.drug_index, ds.drug_index)
    changed = back.cell_ids[back.cell_index[back.label != ds.label]]
    assert set(changed) <= set(back.truth["cell"]) and len(back.truth) == 3


def test_tissue_join_on_normalised_names_leaves_shared_keys_unlabelled(study):
    cosmic = pd.DataFrame({"SAMPLE_NAME": ["PFSK-1", "KM-H2", "KMH-2", "A253"], "COSMIC_ID": [1, 2, 3, 4],
                           "GDSC1": ["nervous_system", "lymphoma", "thyroid", "aero_dig_tract"],
                           "GDSC2": ["pnet", "Hodgkin_lymphoma", "thyroid", "head and neck"],
                           "TCGA": [None, "DLBC", "THCA", "HNSC"]})
    t = study.tissue_table(["PFSK1", "KMH2", "A253", "NOSUCH"], cosmic).set_index("cell")
    assert t.loc["PFSK1", "tissue"] == "nervous_system" and t.loc["A253", "tcga"] == "HNSC"
    assert t.loc["KMH2"].isna().all() and t.loc["NOSUCH"].isna().all()


def test_cross_study_plant_corrupts_one_instance_of_shared_lines(study, clean, tmp_path):
    import dataclasses

    # 60 cells as two studies: A.L00..A.L29 and B.L10..B.L39, so L10..L29 are measured by both
    ids = np.array([f"A.L{i:02d}" if i < 30 else f"B.L{i - 20:02d}" for i in range(60)], dtype=object)
    multi = dataclasses.replace(clean, cell_ids=ids)
    among = study.cross_study_candidates(multi, seed=4)
    lines = [ids[i][2:] for i in among]
    assert len(among) == 20 and sorted(lines) == [f"L{i}" for i in range(10, 30)]
    planted, _ = study.plant_label_noise(multi, k=6, seed=4, among=among)
    cells = list(planted.truth["cell"])
    assert len({c[2:] for c in cells}) == 6 and all(10 <= int(c[3:]) < 30 for c in cells)
    # scoring: a ranking in which the planted instances come first and every other instance after
    order = cells + [c for c in ids if c not in cells]
    rep = tmp_path / "report"
    rep.mkdir()
    pd.DataFrame({"cell": order, "score": np.arange(len(order), 0, -1.0), "rank": np.arange(1, len(order) + 1)}
                 ).to_csv(rep / "cell_ranking.csv", index=False)
    got = study.cross_study_check(str(rep), planted.truth)
    assert got["planted"] == 6 and got["planted_flagged"] == got["planted_flagged_right_study"] >= 4
    with pytest.raises(InputError):
        study.cross_study_candidates(clean, seed=1)  # plain ids: not multi-study

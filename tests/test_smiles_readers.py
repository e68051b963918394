"""GDSC/CCLE and IMPROVE add the one-hot SMILES group on request, from the SMILES they ship,
and leave their default output unchanged."""

from __future__ import annotations

import numpy as np

from hbl_mpi.data.smiles import ALPHABET, GROUP, onehot
from test_gdsc import SMILES as GDSC_SMILES, make_dir
from test_improve import SMILES as IMPROVE_SMILES, make_layout


def _decoded(values: np.ndarray, length: int) -> str:
    m = values.reshape(length, len(ALPHABET))
    return "".join(ALPHABET[k] for k in m.argmax(axis=1)[m.sum(axis=1) > 0])


def test_gdsc_adds_each_drugs_smiles_only_when_asked(tmp_path):
    from hbl_mpi.data import build_gdsc

    d = make_dir(tmp_path / "dd")
    plain, _ = build_gdsc("gdsc2", data_dir=d, fp_bits=16)
    ds, _ = build_gdsc("gdsc2", data_dir=d, fp_bits=16, smiles_onehot=12)
    assert GROUP not in plain.feature_widths() and plain.checksum() != ds.checksum()
    assert [g.values.tobytes() for g in ds.groups[:-1]] == [g.values.tobytes() for g in plain.groups]
    group = ds.groups[-1]
    assert group.name == GROUP and group.width == 12 * len(ALPHABET)
    for drug, row in zip(ds.drug_ids, group.values):
        want = "".join(c if c in ALPHABET else "?" for c in GDSC_SMILES[str(drug)][:12])  # Pt's t: "?"
        assert _decoded(row, 12) == want, drug


def test_improve_adds_the_smiles_file_only_when_asked(tmp_path):
    from hbl_mpi.data.improve import build_improve

    root, _ = make_layout(tmp_path / "b")
    plain, _ = build_improve(root, "CCLE")
    ds, _ = build_improve(root, "CCLE", smiles_onehot=6)
    assert GROUP not in plain.feature_widths()
    assert [g.values.tobytes() for g in ds.groups[:-1]] == [g.values.tobytes() for g in plain.groups]
    for drug, row in zip(ds.drug_ids, ds.groups[-1].values):
        np.testing.assert_array_equal(row, onehot([IMPROVE_SMILES[str(drug)]], 6)[0][0])

"""``groups = "COLUMN"`` (issue 30 part 3): the grouped plan, the group-impact estimator on a
fabricated ``cell_test`` table whose answer is known, the config errors and
``curate --drop-group``. All in-process and fast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from hbl_mpi.analysis.group_impact import FLAG_Z, group_impact
from hbl_mpi.core.config import RunConfig, load_config
from hbl_mpi.core.errors import InputError
from hbl_mpi.data import synthesize
from hbl_mpi.tree.groups import MAX_GROUP_NODES, NA, group_parts
from hbl_mpi.tree.invariants import check_invariants
from hbl_mpi.tree.plan import ROOT, PlanSpec, plan_for

pytestmark = pytest.mark.timeout(120)


def labelled(cells=60, labs=6, seed=0, missing=0):
    """A tiny synthetic data set whose cells carry a ``lab`` column (lab_0 .. lab_{labs-1},
    dealt round-robin by cell id; the last ``missing`` cells have no value)."""
    ds = synthesize("small", seed=seed, cells=cells, drugs=8, cell_features=4, descriptors=4, fingerprints=0)
    ids = [str(c) for c in ds.cell_ids]
    lab = [f"lab_{i % labs}" for i in range(len(ids))]
    for i in range(missing):
        lab[-1 - i] = ""
    meta = pd.DataFrame({"cell": ids, "lab": lab, "one": "x"})
    return dataclasses.replace(ds, cell_metadata=meta)


# ------------------------------------------------------------------------------- the plan --

@pytest.mark.parametrize("n,s,labs,missing", [(4, 2, 6, 0), (2, 3, 3, 0), (4, 2, 6, 5), (8, 1, 3, 0)])
def test_grouped_plan_holds_out_one_whole_group_per_stage1_node_and_keeps_the_invariants(n, s, labs, missing):
    ds = labelled(labs=labs, missing=missing)
    plan = plan_for(ds, PlanSpec(n=n, s=s, groups="lab"))
    check_invariants(plan)
    lab = dict(zip(ds.cell_metadata["cell"], ds.cell_metadata["lab"].replace("", NA)))
    stage1 = plan.nodes[ROOT].children
    held = [{lab[str(plan.cell_ids[c])] for c in plan.val_cells(k)} for k in stage1]
    want = sorted(set(lab.values()))
    assert [h.pop() for h in held if len(h) == 1] == want  # one whole group per node, in label order
    assert len(stage1) == len(want)
    for k in stage1:  # each group's cells, exactly
        v = lab[str(plan.cell_ids[plan.val_cells(k)[0]])]
        assert sorted(map(str, plan.cell_ids[plan.val_cells(k)])) == sorted(c for c, x in lab.items() if x == v)
        if s >= 2:  # deeper stages cut inside the group into (at most) N parts
            assert 1 < len(plan.nodes[k].children) <= n


@pytest.mark.parametrize("spec,digest", [
    (dict(n=4, s=2), "909a7c49dae07e3e"), (dict(n=3, s=3, order="ordered"), "3971822f545b8192"),
    (dict(n=2, s=2, partition="cells+drugs"), "82fdbd5224625c18")])
def test_default_plan_is_bit_identical_to_the_plan_before_groups(spec, digest):
    """No ``groups``: plan.csv is byte for byte what the planner of 82e2bef (before the key)
    wrote for the same data (digests computed with that commit's plan.py)."""
    import hashlib

    ds = synthesize("small", seed=0, cells=60, drugs=8, cell_features=4, descriptors=4, fingerprints=0)
    plan = plan_for(ds, PlanSpec(**spec))
    assert plan.groups is None
    assert hashlib.sha256(plan.to_frame().to_csv(index=False).encode()).hexdigest()[:16] == digest


def test_pooling_rule_keeps_the_largest_groups_and_pools_the_rest():
    sizes = {f"g{i:02d}": 30 - i for i in range(20)}  # 20 groups > max(4, 16)
    labels = [g for g, n in sizes.items() for _ in range(n)]
    parts = group_parts(labels, 4, "c")
    assert len(parts.labels) == MAX_GROUP_NODES
    assert parts.labels[:-1] == tuple(sorted(f"g{i:02d}" for i in range(15)))
    assert parts.labels[-1] == "+".join(f"g{i:02d}" for i in range(15, 20))
    assert parts.members(len(parts.labels) - 1) == [f"g{i:02d}" for i in range(15, 20)]


def test_config_errors_are_one_line_input_errors(tmp_path):
    ds = labelled()
    with pytest.raises(InputError, match="no such cell metadata column"):
        plan_for(ds, PlanSpec(n=4, s=1, groups="tissue"))
    with pytest.raises(InputError, match="at least 2"):
        plan_for(ds, PlanSpec(n=4, s=1, groups="one"))
    with pytest.raises(InputError, match="no cell metadata"):
        plan_for(dataclasses.replace(ds, cell_metadata=None), PlanSpec(n=4, s=1, groups="lab"))
    with pytest.raises(InputError, match="needs partition = 'cells'"):
        load_config(None, ["data=x.h5", "groups=lab", "partition=cells+drugs"])
    assert load_config(None, ["data=x.h5", "groups=lab"]).groups == "lab"


def test_groups_stays_out_of_the_fingerprint_at_its_default_and_a_restart_may_not_change_it():
    from types import SimpleNamespace

    from hbl_mpi.checkpoint.restart import check_compatible, run_fingerprint

    cfg = RunConfig(data="x.h5")
    assert run_fingerprint(cfg, "abc") == "b43c15eec2190ec0"  # tests/test_restart.py's pinned value
    grouped = RunConfig(data="x.h5", groups="lab")
    assert run_fingerprint(grouped, "abc") != run_fingerprint(cfg, "abc")
    older = SimpleNamespace(config={k: v for k, v in cfg.as_dict().items() if k != "groups"}, data_checksum="abc")
    check_compatible(older, cfg, "abc")  # a run from before the key continues
    with pytest.raises(InputError, match="'groups' was ''"):
        check_compatible(older, grouped, "abc")


@pytest.mark.parametrize("seed", range(6))
def test_random_labels_n_and_s_keep_the_invariants(seed):
    """Random group counts (2..20, some beyond max(n, 16): pooled), sizes, missing values."""
    rng = np.random.default_rng(seed)
    ds = labelled(cells=int(rng.integers(30, 80)), seed=seed)
    g = int(rng.integers(2, 21))
    lab = [f"g{int(x)}" if x >= 0 else "" for x in rng.integers(-1, g, size=ds.n_cells)]
    ds = dataclasses.replace(ds, cell_metadata=ds.cell_metadata.assign(lab=lab))
    n, s = int(rng.integers(2, 5)), int(rng.integers(1, 4))
    plan = plan_for(ds, PlanSpec(n=n, s=s, groups="lab", seed=seed))
    check_invariants(plan)
    groups = len(set(v or NA for v in lab))
    assert len(plan.groups.labels) == min(groups, max(n, MAX_GROUP_NODES))


# -------------------------------------------------------------------------- the estimator --

def fabricated(harm: dict[int, float], noise: float, seed: int = 0, labs: int = 6, per_lab: int = 12,
               deeper_noise: float | None = None):
    """A plan table, cell_test and metadata of a grouped tree whose truth is known.

    Stage-1 child ``1.k`` held out lab k; learning lab j adds ``harm[j]`` to every *other*
    lab's cells' holdout MSE (and nothing to lab j's own cells). So child k's MSE on cell c
    (c not in lab k) is ``b_c + sum_{j != k, j != lab(c)} harm[j] + noise``; the impact of
    lab j relative to the median lab is ``harm[j] - median(harm)``. With ``deeper_noise``,
    each lab's node gets 3 children whose contrasts are pure noise of that sd."""
    rng = np.random.default_rng(seed)
    cells = [f"c{i:03d}" for i in range(labs * per_lab)]
    lab_of = {c: i // per_lab for i, c in enumerate(cells)}
    base = {c: rng.uniform(0.01, 0.05) for c in cells}
    plan, ct = [], []
    for k in range(labs):
        node = f"1.{k + 1}"
        plan += [(node, ROOT, 1, c, "val") for c in cells if lab_of[c] == k]
        for c in cells:
            if lab_of[c] == k:
                continue
            y = base[c] + sum(h for j, h in harm.items() if j not in (k, lab_of[c])) + rng.normal(0, noise)
            ct.append((node, c, 5, y))
        if deeper_noise is not None:
            own = [c for c in cells if lab_of[c] == k]
            for p in range(3):
                kid = f"{node}.{p + 1}"
                plan += [(kid, node, 2, c, "val") for c in own[p::3]]
                shift = rng.normal(0, deeper_noise)
                ct += [(kid, c, 5, base[c] + shift + rng.normal(0, noise)) for c in cells if c not in own[p::3]]
    plan = pd.DataFrame(plan, columns=["node", "parent", "stage", "cell", "role"])
    ct = pd.DataFrame(ct, columns=["node", "cell", "n_rows", "mse"])
    meta = pd.DataFrame({"cell": cells, "lab": [f"lab_{lab_of[c]}" for c in cells]})
    return plan, ct, meta


def test_the_estimator_recovers_a_known_harmful_group_and_leaves_clean_ones_in_noise():
    plan, ct, meta = fabricated({2: 0.02}, noise=0.002, deeper_noise=0.0005)
    gi = group_impact(ct, plan, meta, "lab", n=4)
    t = gi.table.set_index("value")
    assert t.loc["lab_2", "impact"] == pytest.approx(0.02, abs=0.002)
    assert t.loc["lab_2", "z"] > FLAG_Z
    clean = t.drop(index="lab_2")
    assert (clean["impact"].abs() < 0.002).all() and (clean["z"].abs() <= FLAG_Z).all()
    assert list(gi.flagged()["value"]) == ["lab_2"]
    assert 0 < gi.training_noise < 0.002  # the stage-2 floor is measured (pure noise of sd 0.0005 there)
    assert (t["n_cells"] == 12).all() and list(gi.table.columns[:6]) == ["column", "value", "n_cells", "impact",
                                                                          "impact_sd", "z"]


def test_two_harmful_groups_of_different_size_and_a_helpful_one():
    plan, ct, meta = fabricated({0: 0.03, 4: 0.01, 5: -0.02}, noise=0.001)
    t = group_impact(ct, plan, meta, "lab", n=4).table.set_index("value")
    for lab, want in {"lab_0": 0.03, "lab_4": 0.01, "lab_5": -0.02, "lab_1": 0.0}.items():
        assert t.loc[lab, "impact"] == pytest.approx(want, abs=0.0015)
    assert np.isnan(t["training_noise"]).all()  # one stage: the jackknife alone


def test_no_effect_means_no_flag():
    plan, ct, meta = fabricated({}, noise=0.002, seed=3, deeper_noise=0.001)
    t = group_impact(ct, plan, meta, "lab", n=4).table
    assert (t["z"].abs() <= FLAG_Z).all()


# ------------------------------------------------------------------------ curate --drop-group --

def test_curate_drop_group_writes_the_data_without_the_group_and_never_an_input(tmp_path, capsys):
    from hbl_mpi.__main__ import main
    from hbl_mpi.data import read_uno, write_uno

    ds = labelled(cells=30, labs=3, missing=2)
    src = tmp_path / "in.h5"
    write_uno(ds, str(src))
    out = tmp_path / "out.h5"
    assert main(["curate", "--data", str(src), "--drop-group", "lab=lab_1", "--out", str(out)]) == 0
    cur = read_uno(str(out))
    gone = set(ds.cell_metadata.loc[ds.cell_metadata["lab"] == "lab_1", "cell"])
    assert set(map(str, cur.cell_ids)) == set(map(str, ds.cell_ids)) - gone and len(gone) == 9  # cell 28 of lab_1 has no value
    assert set(pd.read_csv(tmp_path / "out.dropped.csv")["cell"]) == gone
    assert main(["curate", "--data", str(src), "--drop-group", "lab=NA", "--out", str(tmp_path / "na.h5")]) == 0
    assert read_uno(str(tmp_path / "na.h5")).n_cells == 28
    before = src.read_bytes()
    for args, msg in [(["lab=lab_9"], "no cell has lab = 'lab_9'"), (["tissue=x"], "no cell metadata column"),
                      (["lab"], "expected COLUMN=VALUE"), (["one=x"], "nothing would be left")]:
        capsys.readouterr()
        assert main(["curate", "--data", str(src), "--drop-group", *args, "--out", str(tmp_path / "x.h5")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert main(["curate", "--data", str(src), "--drop-group", "lab=lab_1", "--out", str(src)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "x.h5").exists()


def test_report_section_names_the_harmful_group_and_warns_on_uneven_training():
    from types import SimpleNamespace

    from hbl_mpi.report.group_impact import group_impact_sections
    from hbl_mpi.report.page import Report

    plan, ct, meta = fabricated({2: 0.02}, noise=0.002, deeper_noise=0.0005)
    kids = sorted(set(plan["node"]))
    nodes = pd.DataFrame({"node": kids, "status": "done",
                          "epochs_run": [16 if k != "1.3" else 4 for k in kids]})
    run = SimpleNamespace(config={"groups": "lab", "n": 4}, cell_test=ct, plan=plan, cell_metadata=meta, nodes=nodes)
    rep = Report("t", "")
    group_impact_sections(SimpleNamespace(runs=[run]), rep)
    text = rep.sections[-1].text
    assert "beyond 3 sd: lab_2" in text and "Within noise" in text and "Warning" in text
    table = pd.read_csv(__import__("io").BytesIO(rep.files["group_impact.csv"]))
    assert list(table.columns) == ["column", "value", "n_cells", "impact", "impact_sd", "z"]
    nodes["epochs_run"] = 16
    rep = Report("t", "")
    group_impact_sections(SimpleNamespace(runs=[run]), rep)
    assert "Warning" not in rep.sections[-1].text
    rep = Report("t", "")  # a run without groups: no section, the report as before
    group_impact_sections(SimpleNamespace(runs=[SimpleNamespace(config={"n": 4})]), rep)
    assert rep.sections == [] and "group_impact.csv" not in rep.files


def test_replicates_combine_to_the_mean_with_the_replicate_standard_error():
    from hbl_mpi.analysis.group_impact import combine_replicates, runs_group_impact
    from types import SimpleNamespace

    runs = []
    for seed in range(4):  # each replicate: the same true effect, its own noise
        plan, ct, meta = fabricated({1: 0.01}, noise=0.001, seed=seed)
        runs.append(SimpleNamespace(config={"groups": "lab", "n": 4}, cell_test=ct, plan=plan, cell_metadata=meta,
                                    nodes=None))
    single = [runs_group_impact([r]) for r in runs]
    both = runs_group_impact(runs)
    assert both.replicates == 4 and single[0].replicates == 1
    t = both.table.set_index("value")
    imps = np.array([s.table.set_index("value").loc["lab_1", "impact"] for s in single])
    assert t.loc["lab_1", "impact"] == pytest.approx(imps.mean())
    assert t.loc["lab_1", "impact_sd"] == pytest.approx(imps.std(ddof=1) / 2)
    assert t.loc["lab_1", "impact"] == pytest.approx(0.01, abs=0.001) and t.loc["lab_1", "z"] > FLAG_Z
    assert runs_group_impact(runs[:2]).replicates == 1  # fewer than 3: the first run alone
    with pytest.raises(ValueError):
        combine_replicates(single[:2])

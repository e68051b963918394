"""Print the paper's findings (§3) beside ours, from results files (one per epoch strategy).

    python bench/paper_findings.py /tmp/strat/{F-20,F-10,LINE,SQRT,EXP2}/results.h5

Every number comes from ``hbl_mpi.analysis.paper_stats`` (the same functions the report uses); this
script only lays them out as the table of docs/findings/paper.md. The paper's numbers are
quoted from seeds/high-bypass-learning.md (Figs. 8-13, Table 2).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402  (also puts the checkout first on sys.path)
from hbl_mpi.analysis import paper_stats as A  # noqa: E402
from hbl_mpi.report.build import markdown_table  # noqa: E402
from hbl_mpi.store.results import RunTables, read_results  # noqa: E402

#: one run per epoch strategy, as docs/findings/paper.md's table was made
RUN_FIRST = ("needs results.h5 files, one per epoch strategy: train them first, e.g. `for st in F-20 F-10 LINE SQRT "
             "EXP2; do mpiexec -n 4 python -m hbl_mpi run jobs/demo.toml --set strategy=$st --out "
             "/tmp/strat/$st; done`, then `python bench/paper_findings.py /tmp/strat/*/results.h5`")


def per_run(r: RunTables) -> dict:
    st = A.stage_table(r.nodes).set_index("stage")
    final = r.final_stage
    t2 = A.best_trajectory(r.nodes, final)
    oc = A.outlier_counts(r.nodes).set_index("threshold")
    tot = A.compute_totals(r.nodes)
    budget_big = st[st["epochs_planned"] > 6]
    return {
        "strategy": r.label,
        "nodes": tot["nodes_done"],
        "stage-1 stopped early": st.loc[1, "fraction_stopped_early"],
        "mean epochs run, stages with budget > 6": (budget_big["mean_epochs_run"] * budget_big["nodes"]).sum()
        / max(budget_big["nodes"].sum(), 1) if len(budget_big) else np.nan,
        "mean epochs run per stage": ", ".join(f"{v:.1f}" for v in st["mean_epochs_run"]),
        "stage-2 increase fraction": st.loc[2, "fraction_increased"] if 2 in st.index else np.nan,
        "final-stage increase fraction": st.loc[final, "fraction_increased"] if final in st.index else np.nan,
        "increase delta per stage": ", ".join(f"{v:.2f}" for v in st["increase_delta"].dropna()),
        "median val_loss stage 2 -> final": (f"{st.loc[2, 'p50']:.3g} -> {st.loc[final, 'p50']:.3g}"
                                              if 2 in st.index and final in st.index else ""),
        "best trajectory hours": float(t2["training_hours"].iloc[0]) if len(t2) else np.nan,
        "best trajectory steps": int(t2["steps"].iloc[0]) if len(t2) else 0,
        "best final val_loss": float(t2["val_loss"].iloc[0]) if len(t2) else np.nan,
        "best trajectory: its holdout test_loss": float(t2["test_loss"].iloc[0]) if len(t2) else np.nan,
        "final stage: mean holdout test_loss": float(r.nodes.loc[(r.nodes["stage"] == final)
                                                                 & (r.nodes["status"] == "done"), "test_loss"].mean()),
        "whole-run train hours": tot["train_hours"],
        "whole-run row-epochs": tot["row_epochs"],
        "outlier > 1 (of all nodes)": oc.loc[1.0, "fraction_of_all"],
        "outlier > 2 (of all nodes)": oc.loc[2.0, "fraction_of_all"],
        "outlier > 1 count": int(oc.loc[1.0, "nodes_above"]),
        "outlier > 2 count": int(oc.loc[2.0, "nodes_above"]),
    }


def main(paths: list[str]) -> None:
    runs = A.unique_labels([read_results(p) for p in paths])
    rows = pd.DataFrame([per_run(r) for r in runs])
    pooled_1 = rows["outlier > 1 count"].sum() / rows["nodes"].sum()
    pooled_2 = rows["outlier > 2 count"].sum() / rows["nodes"].sum()
    print(markdown_table(rows.set_index("strategy").T.reset_index().rename(columns={"index": "measure"})))
    print(f"\npooled over the {len(runs)} runs ({rows['nodes'].sum()} nodes): outlier level > 1: "
          f"{rows['outlier > 1 count'].sum()} ({100 * pooled_1:.1f} %), > 2: {rows['outlier > 2 count'].sum()} "
          f"({100 * pooled_2:.1f} %)")
    best = rows.loc[rows["best final val_loss"].idxmin(), "strategy"]
    cheap = rows.loc[rows["best trajectory steps"].idxmin(), "strategy"]
    cheap_run = rows.loc[rows["whole-run row-epochs"].idxmin(), "strategy"]
    print(f"best final-stage val_loss: {best}; fewest steps on the best trajectory: {cheap}; "
          f"cheapest whole run (row-epochs): {cheap_run}")
    print(json.dumps({"runs": json.loads(rows.to_json(orient="records")), "pooled_outlier_gt1": float(pooled_1),
                      "pooled_outlier_gt2": float(pooled_2), "best_final_val_loss": best,
                      "fewest_best_trajectory_steps": cheap, "cheapest_run": cheap_run}))


def check(paths: list[str]) -> list[str]:
    """The results files to read; none given or one missing: one line saying what to run first, exit 2."""
    if not paths:
        benchkit.need_first(__file__, RUN_FIRST)
    for p in paths:
        if not os.path.exists(p):
            benchkit.need_first(__file__, f"{p} does not exist; " + RUN_FIRST)
    return paths


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        sys.exit(print(__doc__))
    main(check(sys.argv[1:]))

"""Issue 30's real-data checks on a report directory: diagnosis kinds of the top cells and
their cross-screen agreement, error kinds against distinct kinds (one-sided Mann-Whitney),
the group_share distribution the distinct_group threshold is read from, and enrichment.

    python bench/real_data_study.py REPORT_DIR [--top 100] [--json OUT.json]

REPORT_DIR is a `report --reference OTHER.h5` output (cell_ranking.csv with diagnosis,
group_share and screen_agreement; enrichment.csv). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

RUN_FIRST = ("give a report directory: make one with `python -m hbl_mpi data gdsc --source gdsc2 --out g2.h5`, "
             "`mpiexec -n 3 python -m hbl_mpi run jobs/gdsc.toml --set data=\"g2.h5\"` and `python -m hbl_mpi report "
             "OUT/results.h5 --reference g1.h5 --out REPORT_DIR`")

ERROR = ("label_noise", "shift", "swap", "replicate_disagreement")
DISTINCT = ("distinct", "distinct_group")


def study(report_dir: str, top: int = 100) -> dict:
    from scipy.stats import mannwhitneyu

    rk = pd.read_csv(os.path.join(report_dir, "cell_ranking.csv")).sort_values("rank")
    head = rk.head(top)
    out: dict = {"cells": len(rk), "top": top, "kinds_top": head["diagnosis"].value_counts().to_dict(),
                 "kinds_all_flagged": rk[rk["flagged"]]["diagnosis"].value_counts().to_dict()}
    if "screen_agreement" in rk.columns:
        agree = head.groupby("diagnosis")["screen_agreement"].agg(["count", "median"])
        out["agreement_by_kind_top"] = {k: {"with_reference": int(r["count"]), "median": float(r["median"])}
                                        for k, r in agree.iterrows()}
        err = head[head["diagnosis"].isin(ERROR)]["screen_agreement"].dropna()
        dis = head[head["diagnosis"].isin(DISTINCT)]["screen_agreement"].dropna()
        test = {"error_cells": len(err), "distinct_cells": len(dis)}
        if len(err) >= 5 and len(dis) >= 5:
            test["p_error_agree_less"] = float(mannwhitneyu(err, dis, alternative="less").pvalue)
            test["median_error"], test["median_distinct"] = float(err.median()), float(dis.median())
        else:
            test["verdict"] = "not testable (< 5 cells on a side)"
        out["mann_whitney"] = test
        out["median_agreement_all"] = float(rk["screen_agreement"].median())
    if "group_share" in rk.columns:
        gs = rk["group_share"]
        out["group_share"] = {
            "all_quantiles": {q: float(gs.quantile(q)) for q in (0.5, 0.9, 0.95, 0.99)},
            "unflagged_q99": float(gs[~rk["flagged"]].quantile(0.99)),
            "flagged_quantiles": {q: float(gs[rk["flagged"]].quantile(q)) for q in (0.5, 0.75, 0.9)},
            "best_columns_flagged": rk[rk["flagged"]]["group_column"].value_counts().head(5).to_dict()}
    path = os.path.join(report_dir, "enrichment.csv")
    if os.path.exists(path):
        e = pd.read_csv(path)
        out["enrichment_q_lt_0.01"] = e[e["q"] < 0.01].head(10).to_dict("records")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report_dir", nargs="?")
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--json", dest="json_out")
    a = p.parse_args(argv)
    if a.report_dir is None:
        benchkit.need_first(__file__, RUN_FIRST)
    if not os.path.isfile(os.path.join(a.report_dir, "cell_ranking.csv")):
        benchkit.need_first(__file__, f"{a.report_dir} holds no cell_ranking.csv; " + RUN_FIRST)
    res = study(a.report_dir, a.top)
    text = json.dumps(res, indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput and data memory: the node trainer vs a plain torch DataLoader.

    python bench/train.py                 # default size (< 2 min on 2 cores)
    python bench/train.py --preset paper  # the 16.2 M-parameter paper model (slower steps)
    python bench/train.py --full          # all 529,940 Top21 rows duplicated (~13 GB RAM)

Same model (``hbl_mpi.uno``), same batch size, same torch thread count, same optimizer,
on the same response rows at the real Top21 feature widths (942 expression + 5,270 drug
descriptor columns). Three ways to feed the model, each in its own fresh subprocess so
their memory and allocator state cannot mix:

  trainer     ``hbl_mpi.train.trainer.train_node`` on ``DeviceTables``: normalised tables, each
              batch gathered by index (``features[entity_index[rows]]``); the epoch time
              includes the trainer's own per-epoch validation (on one batch of rows);
  dataloader  ``torch.utils.data.DataLoader(TensorDataset(x_cell, x_drug, y))`` over the
              duplicated rows (one feature row per response row, as the Uno HDF5 file
              stores them), ``SubsetRandomSampler`` over the training rows, default
              collate, ``num_workers = 0``;
  batched     the duplicated rows indexed a whole batch at a time (no DataLoader, no
              per-row Python): shows how much of the speedup is the DataLoader's per-row
              work and how much is the memory layout.

Measured per variant: training samples/s = batch / median time per optimizer step
(stamped after every step: the trainer's ``poll`` hook; epochs of ``--steps`` steps after a
warm-up epoch), and per epoch (median epoch; the trainer's own ``EpochRecord.seconds``,
which include its per-epoch validation on one batch of rows and its best-state copy);
data-path-only
batches/s (producing the batch, no model), and data memory two ways: the exact bytes of
the data tensors (``nbytes``, incl. one batch) and the measured growth of the process's
resident set (``/proc/self/statm``) from before the data is built to the peak sampled
during training (the model and optimizer are allocated before the baseline).

The memory ratio depends on rows per entity: at the default size the rows are a subset,
and cells/drugs are scaled with it to keep Top21's rows per cell and per drug (529,940
rows over ~1,000 cells and 800 drugs, the ``top21`` synthetic preset). The ratio at the
full Top21 shape is then *computed* from the measured per-row and per-entity bytes, and
labelled as computed. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchkit  # noqa: E402

TOP21_ROWS = 529_940
TOP21_CELLS = 1_000  # hbl_mpi.data.synth PRESETS["top21"], docs/design.md §2.1 (~1,000 cells)
TOP21_DRUGS = 800
TOP21_WIDTHS = (942, 5270)
VARIANTS = ("trainer", "dataloader", "batched")


def rss_bytes() -> int:
    """Resident set size of this process now (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shape_for(rows: int) -> tuple[int, int]:
    """Cells and drugs for ``rows`` response rows at Top21's rows per entity."""
    cells = max(2, round(rows * TOP21_CELLS / TOP21_ROWS))
    drugs = max(1, round(rows * TOP21_DRUGS / TOP21_ROWS))
    return cells, drugs


def make_dataset(rows: int, widths: tuple[int, int], seed: int):
    """A normalised data set with random features and a label the model can learn a little."""
    from hbl_mpi.data.dataset import CELL, DRUG, Dataset, FeatureGroup

    cells, drugs = shape_for(rows)
    rng = np.random.default_rng(seed)
    xc = rng.standard_normal((cells, widths[0]), dtype=np.float32)
    xd = rng.standard_normal((drugs, widths[1]), dtype=np.float32)
    # rows: distinct (cell, drug) pairs when there are enough, else with repeats
    if rows <= cells * drugs:
        pairs = rng.choice(cells * drugs, size=rows, replace=False)
    else:
        pairs = rng.integers(0, cells * drugs, size=rows)
    ci, di = (pairs // drugs).astype(np.int32), (pairs % drugs).astype(np.int32)
    label = (0.5 + 0.1 * np.tanh(xc[ci, 0] + xd[di, 0]) + 0.02 * rng.standard_normal(rows)).astype(np.float32)
    return Dataset(
        cell_ids=np.array([f"C{i:05d}" for i in range(cells)], dtype=object),
        drug_ids=np.array([f"D{i:05d}" for i in range(drugs)], dtype=object),
        groups=[FeatureGroup("cell.rnaseq", CELL, [f"g{i}" for i in range(widths[0])], xc),
                FeatureGroup("drug.descriptors", DRUG, [f"d{i}" for i in range(widths[1])], xd)],
        cell_index=ci, drug_index=di, label=label)


def split_rows(ds, n_train: int, batch: int, seed: int):
    """Training rows (``n_train``, drawn from all rows) and one batch of validation rows."""
    from hbl_mpi.tree.plan import NodeRows

    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(ds.n_rows)
    n_train = min(n_train, ds.n_rows - batch)
    train, val = np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + batch])
    return NodeRows(train=train.astype(np.int64), val=val.astype(np.int64), test=np.zeros(0, np.int64),
                    val_cells=np.unique(ds.cell_index[val]).astype(np.int64),
                    train_cells=np.unique(ds.cell_index[train]).astype(np.int64))


class RssPeak:
    """Peak RSS sampled at every call (cheap: one small /proc read)."""

    def __init__(self):
        self.base = rss_bytes()
        self.peak = self.base

    def __call__(self) -> None:
        r = rss_bytes()
        if r > self.peak:
            self.peak = r

    @property
    def delta(self) -> int:
        return self.peak - self.base


def one_variant(args) -> dict:
    """Run one variant in this process (the parent runs each in a fresh subprocess)."""
    import torch

    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.train.device_tables import DeviceTables
    from hbl_mpi.train.trainer import TrainSpec, train_node
    from hbl_mpi.uno import build_model, initial_state

    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    # the model, optimizer and their activations/gradients exist before the memory baseline
    init = initial_state(list(widths), args.preset, args.seed, 1e-3)
    ts = TrainState(build_model(list(widths), args.preset), 1e-3)
    ts.load(init)
    warm = [torch.zeros(args.batch, w) for w in widths]
    (ts.forward(*warm).square().sum()).backward()
    ts.zero_grad()
    del warm
    batch_bytes = args.batch * (sum(widths) + 1) * 4  # one gathered/collated batch
    v = args.variant
    mem = RssPeak()
    t_build = time.perf_counter()
    ds = make_dataset(args.rows, widths, args.seed)
    rows = split_rows(ds, args.steps * args.batch, args.batch, args.seed)
    if v == "trainer":
        # what a run keeps: the normalised Dataset and its DeviceTables (float32 tables are
        # shared with the Dataset on the CPU; the index columns become int64 copies)
        tables = DeviceTables.from_dataset(ds, "cpu")
        data_bytes = tables.nbytes + tables.cell_index_np.nbytes + ds.cell_index.nbytes + ds.drug_index.nbytes
    else:
        # what a DataLoader pipeline keeps: one feature row per response row (the Uno HDF5
        # layout); the small normalised arrays it was expanded from are dropped
        xc = torch.from_numpy(ds.groups[0].values[ds.cell_index])
        xd = torch.from_numpy(ds.groups[1].values[ds.drug_index])
        y = torch.from_numpy(ds.label.copy())
        n_rows, n_cells, n_drugs = ds.n_rows, ds.n_cells, ds.n_drugs
        del ds
        data_bytes = xc.nbytes + xd.nbytes + y.nbytes
    build_s = time.perf_counter() - t_build
    mem()
    build_rss = mem.delta
    n_batches = -(-len(rows.train) // args.batch)

    # data path alone: produce every batch of one epoch, no model
    t0 = time.perf_counter()
    if v == "trainer":
        order = rows.train[np.random.default_rng(0).permutation(len(rows.train))]
        for a in range(0, len(order), args.batch):
            xs, yy = tables.gather(tables.index(order[a:a + args.batch]))
            mem()
    elif v == "dataloader":
        from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

        loader = DataLoader(TensorDataset(xc, xd, y), batch_size=args.batch,
                            sampler=SubsetRandomSampler(rows.train.tolist(), generator=torch.Generator().manual_seed(0)),
                            num_workers=0)
        for b in loader:
            mem()
    else:
        order = torch.from_numpy(rows.train[np.random.default_rng(0).permutation(len(rows.train))])
        for a in range(0, len(order), args.batch):
            idx = order[a:a + args.batch]
            b = (xc.index_select(0, idx), xd.index_select(0, idx), y.index_select(0, idx))
            mem()
    data_s = time.perf_counter() - t0

    # training: a warm-up epoch, then the timed epochs. A time stamp after every optimizer
    # step (the trainer's ``poll`` hook runs right after each step): the median interval is
    # the steady-state step time, free of per-epoch work (shuffle, the trainer's validation)
    epochs = args.epochs + 1
    stamps: list[float] = []

    def step_done() -> None:
        stamps.append(time.perf_counter())
        mem()

    if v == "trainer":
        spec = TrainSpec(node="1.1", stage=1, max_epochs=epochs, patience=10**6, batch_size=args.batch,
                         seed=args.seed, preset=args.preset)
        out = train_node(tables, rows, init, spec, train_state=ts, poll=step_done)
        secs = [h.seconds for h in out.history[1:]]
        final_loss = out.history[-1].loss
        # per epoch: one stamp per step plus one after the epoch's validation
        stamps = stamps[n_batches + 1:]
    else:
        secs = []
        ts.module.train()
        for e in range(epochs):
            torch.manual_seed(e)
            if e == 1:
                stamps.clear()
            e0 = time.perf_counter()
            total = 0.0
            if v == "dataloader":
                batches = iter(loader)
            else:
                perm = torch.from_numpy(rows.train[np.random.default_rng(e).permutation(len(rows.train))])
                batches = ((xc.index_select(0, i), xd.index_select(0, i), y.index_select(0, i))
                           for i in perm.split(args.batch))
            for bc, bd, by in batches:
                sq = (ts.forward(bc, bd) - by).square().sum()
                (sq / len(by)).backward()
                ts.optimizer.step()
                ts.zero_grad()
                total += float(sq.detach())
                step_done()
            if e > 0:
                secs.append(time.perf_counter() - e0)
            final_loss = total / len(rows.train)
    train_s = sum(secs)
    step_s = statistics.median(np.diff(stamps).tolist())
    return {
        "variant": v, **({"rows": ds.n_rows, "cells": ds.n_cells, "drugs": ds.n_drugs} if v == "trainer"
                         else {"rows": n_rows, "cells": n_cells, "drugs": n_drugs}),
        "train_rows": len(rows.train), "batches_per_epoch": n_batches, "timed_epochs": len(secs),
        # median step: robust to bursts of load from other processes on a shared host
        "samples_per_s": args.batch / step_s, "step_s": step_s,
        "epoch_samples_per_s": len(rows.train) / statistics.median(secs), "train_s": train_s,
        "epoch_s": secs,
        "data_batches_per_s": n_batches / data_s, "data_path_s": data_s, "build_s": build_s,
        "data_tensor_bytes": int(data_bytes), "data_tensor_plus_batch_bytes": int(data_bytes + batch_bytes),
        "data_rss_build_bytes": int(build_rss), "data_rss_peak_bytes": int(mem.delta),
        "final_loss": float(final_loss), "threads": torch.get_num_threads(),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def full_shape_bytes(widths: tuple[int, int]) -> dict:
    """Data bytes at the full Top21 shape, computed from the per-row and per-entity layout
    the variants use (the same arithmetic the measured ``nbytes`` follow)."""
    # trainer: float32 entity tables + per row: int64 cell index, int64 drug index,
    # float32 label (DeviceTables), int64 host copy of the cell index (cell_index_np) and
    # the Dataset's own int32 cell and drug indices
    per_row_trainer = 8 + 8 + 4 + 8 + 4 + 4
    trainer = TOP21_CELLS * widths[0] * 4 + TOP21_DRUGS * widths[1] * 4 + TOP21_ROWS * per_row_trainer
    per_row_dup = (widths[0] + widths[1] + 1) * 4
    dup = TOP21_ROWS * per_row_dup
    return {"rows": TOP21_ROWS, "cells": TOP21_CELLS, "drugs": TOP21_DRUGS,
            "trainer_bytes": trainer, "duplicated_bytes": dup, "memory_ratio": dup / trainer,
            "per_row_trainer_bytes": per_row_trainer, "per_row_duplicated_bytes": per_row_dup}


def parser() -> argparse.ArgumentParser:
    """The command line; with no arguments: small model, 20,000 rows, batch 256, 1 thread (< 2 min)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="response rows held in memory (default 20,000)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per epoch (default: 100; paper preset 10)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch (samples/s: median)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--preset", default="small", help="model preset (small, paper, tiny)")
    ap.add_argument("--widths", default=",".join(map(str, TOP21_WIDTHS)), help="cell,drug feature widths")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (same for every variant)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help=f"all {TOP21_ROWS:,} rows (~13 GB duplicated), more steps")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.full:
        args.rows, args.steps = TOP21_ROWS, args.steps or 200
    if not args.steps:
        args.steps = 10 if args.preset == "paper" else 100
    if args.rows < args.batch * 2 or args.steps < 1 or args.batch < 1:
        ap.error("need --rows >= 2 x --batch, --steps >= 1, --batch >= 1")
    if args.variant:
        print(json.dumps(one_variant(args)))
        return

    benchkit.say(__file__, f"{len(VARIANTS)} variants ({', '.join(VARIANTS)}), each in a fresh process: model "
                           f"{args.preset}, {args.rows:,} rows, {args.steps} steps x {args.epochs} timed epochs")
    res: dict[str, dict] = {}
    for v in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", v, "--rows", str(args.rows),
               "--steps", str(args.steps), "--epochs", str(args.epochs), "--batch", str(args.batch),
               "--preset", args.preset, "--widths", args.widths, "--threads", str(args.threads),
               "--seed", str(args.seed)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            raise SystemExit(f"bench/train.py: variant {v} failed (exit {p.returncode})")
        res[v] = json.loads(p.stdout.strip().splitlines()[-1])
    tr, dl, bt = res["trainer"], res["dataloader"], res["batched"]
    widths = tuple(int(w) for w in args.widths.split(","))
    full = full_shape_bytes(widths)
    out = {
        "preset": args.preset, "batch": args.batch, "threads": args.threads, "widths": list(widths),
        "rows": tr["rows"], "cells": tr["cells"], "drugs": tr["drugs"], "train_rows": tr["train_rows"],
        "speedup_vs_dataloader": tr["samples_per_s"] / dl["samples_per_s"],
        "speedup_vs_batched_duplicated": tr["samples_per_s"] / bt["samples_per_s"],
        "epoch_speedup_vs_dataloader": tr["epoch_samples_per_s"] / dl["epoch_samples_per_s"],
        "data_path_speedup_vs_dataloader": tr["data_batches_per_s"] / dl["data_batches_per_s"],
        "memory_ratio": dl["data_tensor_plus_batch_bytes"] / tr["data_tensor_plus_batch_bytes"],
        "memory_ratio_tables_only": dl["data_tensor_bytes"] / tr["data_tensor_bytes"],
        "memory_ratio_rss_build": dl["data_rss_build_bytes"] / max(tr["data_rss_build_bytes"], 1),
        "memory_ratio_full_top21_computed": full["memory_ratio"],
        "full_top21_computed": full,
        "variants": res,
    }
    print(f"node trainer vs DataLoader: preset {args.preset}, batch {args.batch}, {args.threads} torch thread(s), "
          f"{tr['rows']:,} rows ({tr['cells']} cells x {widths[0]}, {tr['drugs']} drugs x {widths[1]}), "
          f"{tr['train_rows']:,} training rows/epoch")
    print(f"{'variant':<12}{'samples/s':>11}{'(per epoch)':>12}{'data batches/s':>16}{'data MB nbytes(+batch)':>24}"
          f"{'RSS MB build':>14}{'RSS MB peak':>13}")
    for v in VARIANTS:
        r = res[v]
        print(f"{v:<12}{r['samples_per_s']:>11.0f}{r['epoch_samples_per_s']:>12.0f}{r['data_batches_per_s']:>16.0f}"
              f"{r['data_tensor_bytes'] / 1e6:>15.1f} ({r['data_tensor_plus_batch_bytes'] / 1e6:.1f})"
              f"{r['data_rss_build_bytes'] / 1e6:>14.1f}{r['data_rss_peak_bytes'] / 1e6:>13.1f}")
    print("(RSS build: resident-set growth from building the data; RSS peak: the largest growth sampled during\n"
          " training, which also holds batch, activation and optimizer transients, and for the trainer its\n"
          " best-epoch state copy: state memory, not data memory)")
    print(f"speedup vs DataLoader: {out['speedup_vs_dataloader']:.2f}x per step "
          f"({out['epoch_speedup_vs_dataloader']:.2f}x per epoch), "
          f"{out['data_path_speedup_vs_dataloader']:.1f}x data path alone; "
          f"vs batched duplicated rows {out['speedup_vs_batched_duplicated']:.2f}x")
    print(f"data memory ratio at this size: {out['memory_ratio']:.1f}x (nbytes incl. one batch), "
          f"{out['memory_ratio_tables_only']:.0f}x (tables only), {out['memory_ratio_rss_build']:.0f}x (RSS build); "
          f"at the full Top21 shape (computed from per-row/per-entity bytes): "
          f"{full['duplicated_bytes'] / 1e9:.2f} GB / {full['trainer_bytes'] / 1e6:.1f} MB = {full['memory_ratio']:.0f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""The serial driver: the whole node tree in one process, without MPI.

It is the reference the MPI runtime must match bit for bit on CPU (same per-node seeds,
rows, epoch budgets and initial states; see ``context.py``), and the way to run small
trees where MPI is not wanted (``run --serial``, or ``run`` with one rank).

Nodes run depth-first so that only the states of the current path's parents are held
in memory (at most S states), each freed when its last child has started.
"""

from __future__ import annotations

import time

from .context import RunContext
from .errors import EXIT_PARTIAL
from .plan import ROOT, node_sort_key
from .policy import Status, TreeState
from .progress import Progress, fmt_seconds
from .results import ResultsWriter
from .state import ModelState


def run_serial(ctx: RunContext, writer: ResultsWriter, done_before: set[str] | None = None,
               log=print) -> dict:
    """Train every node not in ``done_before``; returns run statistics."""
    plan = ctx.plan
    tree = TreeState.from_plan(plan)
    done_before = done_before or set()
    for node in sorted(done_before, key=node_sort_key):
        if node in tree.status:
            tree.mark_done(node, None)
    todo = [n for n in plan.trained_nodes() if n not in done_before]
    unresumable = [n for n in todo if plan.nodes[n].parent in done_before]
    if unresumable:
        raise RuntimeError(
            f"restart needs the states of finished parents (e.g. of {unresumable[0]}); "
            "checkpoint-based restart is not available in the serial driver"
        )
    progress = Progress(len(plan.trained_nodes()), ctx.cfg.progress_every, already_done=len(done_before))
    train_state = ctx.new_train_state()
    held: dict[str, ModelState] = {}
    t0 = time.monotonic()
    wall0 = time.perf_counter()

    stack = [n for n in reversed(plan.nodes[ROOT].children) if n not in done_before]
    while stack:
        node = stack.pop()
        if tree.status[node] is not Status.READY:
            continue
        parent = plan.nodes[node].parent
        init = ctx.initial_state() if parent == ROOT else held[parent]
        tree.mark_running(node)
        start = time.monotonic() - t0
        try:
            outcome = ctx.train(node, init, train_state)
        except Exception as e:  # a node failure is contained: record, skip the subtree
            msg = f"{type(e).__name__}: {e}"
            skipped = tree.mark_failed(node)
            writer.add(ctx.node_row(node, "failed", group=0, rank=0, start=start,
                                    stop=time.monotonic() - t0, error=msg))
            for s in skipped:
                writer.add(ctx.node_row(s, "skipped", error=f"ancestor {node} failed"))
            log(f"[hbl_mpi] node {node} failed: {msg}")
        else:
            payload = ctx.payload(outcome)
            tree.mark_done(node, 0)
            row = ctx.node_row(node, "done", group=0, rank=0, start=start,
                               stop=time.monotonic() - t0, source="fresh" if parent == ROOT else "local",
                               **payload["row"])
            writer.add(row, payload["history"], ctx.cell_val_records(payload["cell_val"]))
            if ctx.has_children(node):
                held[node] = outcome.inherit_state
                stack.extend(reversed(plan.nodes[node].children))
        if parent in held and tree.unplaced_children[parent] == 0:
            del held[parent]
        writer.maybe_flush()
        c = tree.counts()
        progress.update(c["done"], 0, c["failed"], c["skipped"])
    writer.flush()
    c = tree.counts()
    return {"wall_s": time.perf_counter() - wall0, "counts": c,
            "elapsed": fmt_seconds(time.perf_counter() - wall0)}


def exit_code(counts: dict) -> int:
    return EXIT_PARTIAL if counts.get("failed", 0) or counts.get("skipped", 0) else 0

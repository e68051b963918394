"""The serial driver: the whole node tree in one process, without MPI.

It is the reference the MPI runtime must match bit for bit on CPU (same per-node seeds,
rows, epoch budgets and initial states; see ``context.py``), and the way to run small
trees where MPI is not wanted (``run --serial``, or ``run`` with one rank).

Nodes run depth-first so that only the states of the current path's parents are held
in memory (at most S states), each freed when its last child has started. On a restart
(``run --restart``) finished nodes are walked through, not trained; a finished parent's
state comes from its checkpoint, and an interrupted node resumes from its last epoch.
"""

from __future__ import annotations

import time

from hbl_mpi.run.context import RunContext
from hbl_mpi.core.errors import EXIT_PARTIAL
from hbl_mpi.run.lifecycle import Ledger, NodeRunner, ParentStates
from hbl_mpi.tree.plan import ROOT
from hbl_mpi.tree.policy import Status, source_for
from hbl_mpi.runtime.progress import Progress, fmt_seconds
from hbl_mpi.store.results import ResultsWriter

SERIAL_GROUP = 0
"""The serial driver is one "group" of one rank (0): its rows say group 0, rank 0."""


def run_serial(ctx: RunContext, writer: ResultsWriter, done_before: set[str] | None = None,
               log=print) -> dict:
    """Train every node not finished before; returns run statistics.

    ``done_before`` defaults to the restart's finished nodes (``ctx.run_info``). A finished
    node's children start from its checkpoint, loaded once and held until its last child
    has started (``NodeRunner(keep_loaded_parents=True)``).
    """
    plan = ctx.plan
    if done_before is None:
        done_before = set(ctx.run_info.done) if ctx.run_info is not None else set()
    ledger = Ledger(ctx, writer, done_before, log)
    tree = ledger.tree
    held = ParentStates()
    runner = NodeRunner(ctx, held, checkpoints=ctx.open_checkpointing(), rank=0, keep_loaded_parents=True)
    progress = Progress(len(plan.trained_nodes()), ctx.cfg.progress_every, already_done=len(ledger.done_before))
    wall0 = time.perf_counter()

    stack = list(reversed(plan.nodes[ROOT].children))
    try:
        while stack:
            node = stack.pop()
            if node in ledger.done_before:  # finished earlier: walk on into its unfinished subtree
                stack.extend(reversed(plan.nodes[node].children))
                continue
            if tree.status[node] is not Status.READY:
                continue
            placement = source_for(tree, node, SERIAL_GROUP)
            start = ledger.start(node)
            result = runner.run(node, placement.source)
            parent = plan.nodes[node].parent
            if parent in held and parent not in tree.holder:
                tree.hold(parent, SERIAL_GROUP)  # loaded from its checkpoint: its other children fork in place
            ledger.finish(result, group=SERIAL_GROUP, rank=0, start=start, source=placement.source)
            if result.ok:
                stack.extend(reversed(plan.nodes[node].children))
            else:  # a restart's finished children do not need this node: walk on into them
                stack.extend(reversed([c for c in plan.nodes[node].children if c in ledger.done_before]))
            if ledger.created:  # adaptive: a round ran; its new nodes (a repeat is skipped as not READY)
                stack.extend(reversed(ledger.created))
                progress.total = len(plan.trained_nodes())
            for p, _ in ledger.releasable():
                held.release(p)
            writer.maybe_flush()
            c = ledger.counts()
            progress.update(c["done"], 0, c["failed"], c["skipped"])
    finally:
        runner.close()  # the queued epoch writes reach the disk before we report
    writer.flush()
    c = ledger.counts()
    return {"wall_s": time.perf_counter() - wall0, "counts": c,
            "elapsed": fmt_seconds(time.perf_counter() - wall0)}


def exit_code(counts: dict) -> int:
    return EXIT_PARTIAL if counts.get("failed", 0) or counts.get("skipped", 0) else 0

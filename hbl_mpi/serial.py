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

from .context import RunContext
from .errors import EXIT_PARTIAL
from .plan import ROOT, node_sort_key
from .policy import Status, TreeState
from .progress import Progress, fmt_seconds
from .growth import Growth
from .results import ResultsWriter
from .state import ModelState


def run_serial(ctx: RunContext, writer: ResultsWriter, done_before: set[str] | None = None,
               log=print) -> dict:
    """Train every node not finished before; returns run statistics.

    ``done_before`` defaults to the restart's finished nodes (``ctx.run_info``). A finished
    node's children start from its checkpoint (``resume.parent_state_from_checkpoint``),
    loaded once and held until its last child has started.
    """
    from .resume import Checkpointing, parent_state_from_checkpoint

    plan = ctx.plan
    tree = TreeState.from_plan(plan)
    if done_before is None:
        done_before = set(ctx.run_info.done) if ctx.run_info is not None else set()
    done_before = set(done_before)
    for node in sorted(done_before, key=node_sort_key):
        if node in tree.status:
            tree.restore_done(node)
    progress = Progress(len(plan.trained_nodes()), ctx.cfg.progress_every, already_done=len(done_before))
    growth = Growth.of(ctx, tree, writer, progress)  # adaptive: children come from the rule
    train_state = ctx.new_train_state()
    checkpoints = Checkpointing(ctx)
    checkpoints = checkpoints if checkpoints.active else None
    held: dict[str, ModelState] = {}
    t0 = time.monotonic()
    wall0 = time.perf_counter()

    stack = list(reversed(plan.nodes[ROOT].children))
    try:
        while stack:
            node = stack.pop()
            if node in done_before:  # finished earlier: walk on into its unfinished subtree
                stack.extend(reversed(plan.nodes[node].children))
                continue
            if tree.status[node] is not Status.READY:
                continue
            parent = plan.nodes[node].parent
            tree.mark_running(node)
            start = time.monotonic() - t0
            source, transfer_s = ("fresh" if parent == ROOT else "local"), 0.0
            try:
                if parent == ROOT:
                    init = ctx.initial_state()
                elif parent in held:
                    init = held[parent]
                else:  # a parent finished in an earlier run: its state is in its checkpoint
                    t1 = time.perf_counter()
                    init = held[parent] = parent_state_from_checkpoint(ctx, parent)
                    source, transfer_s = "checkpoint", time.perf_counter() - t1
                outcome = ctx.train(node, init, train_state, checkpoints=checkpoints)
            except Exception as e:  # a node failure is contained: record, skip the subtree
                msg = f"{type(e).__name__}: {e}"
                skipped = tree.mark_failed(node)
                writer.add(ctx.node_row(node, "failed", group=0, rank=0, start=start,
                                        stop=time.monotonic() - t0, error=msg))
                for s in skipped:
                    writer.add(ctx.node_row(s, "skipped", error=f"ancestor {node} failed"))
                log(f"[hbl_mpi] node {node} failed: {msg}")
                # a restart's finished children do not need this node: walk on into them
                stack.extend(reversed([c for c in plan.nodes[node].children if c in done_before]))
                grown = [] if growth is None else [g for n in [node] + skipped
                                                   for g in growth.final(n, tree.status[n].value)]
            else:
                payload = ctx.payload(outcome, transfer_s)
                may_grow = growth is not None and growth.may_grow(node)
                tree.mark_done(node, 0, may_grow=may_grow)
                row = ctx.node_row(node, "done", group=0, rank=0, start=start,
                                   stop=time.monotonic() - t0, source=source, **payload["row"])
                cell_val = ctx.cell_val_records(payload["cell_val"])
                writer.add(row, payload["history"], cell_val)
                if ctx.has_children(node) or may_grow:
                    held[node] = outcome.inherit_state
                    stack.extend(reversed(plan.nodes[node].children))
                grown = [] if growth is None else growth.final(node, "done", cell_val)
            if growth is not None:  # a round ran: push the new nodes, free the declined states
                stack.extend(reversed(grown))
                for p in [p for p in held if tree.unplaced_children[p] == 0 and p not in tree.undecided]:
                    del held[p]
            elif parent in held and tree.unplaced_children[parent] == 0:
                del held[parent]
            writer.maybe_flush()
            c = tree.counts()
            progress.update(c["done"], 0, c["failed"], c["skipped"])
    finally:
        if checkpoints is not None:
            checkpoints.close()  # the queued epoch writes reach the disk before we report
    writer.flush()
    c = tree.counts()
    return {"wall_s": time.perf_counter() - wall0, "counts": c,
            "elapsed": fmt_seconds(time.perf_counter() - wall0)}


def exit_code(counts: dict) -> int:
    return EXIT_PARTIAL if counts.get("failed", 0) or counts.get("skipped", 0) else 0

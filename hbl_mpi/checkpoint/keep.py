"""The keep rule: which epochs are written, which one is ``best``, which are kept.

Pure functions of the parameters and the numbers (no files), so the store, the
training-time session and the tests apply the very same rule:

* ``wants``: the final epoch of a node always; otherwise nothing before
  ``ckpt_skip_epochs``, then every epoch that improves the best metric
  (``ckpt_save_best``) and every ``ckpt_save_interval``-th epoch;
* ``improves``: the one best-epoch rule. ``best`` is the best *checkpointed* epoch
  (CANDLE; epochs skipped by ``ckpt_skip_epochs`` do not count), lower is better
  (``val_loss``/``loss``), NaN never improves;
* ``keep_epochs``: after a write, ``last``, ``best`` and up to ``ckpt_keep_limit`` others.
"""

from __future__ import annotations

from hbl_mpi.checkpoint.params import CkptParams


def improves(params: CkptParams, value: float, best_metric: float) -> bool:
    """Does an epoch with metric ``value`` become the store's new ``best``?"""
    return params.ckpt_save_best and value < best_metric  # NaN never improves


def wants(params: CkptParams, epoch: int, value: float, best_metric: float, final: bool = False) -> bool:
    """Is epoch ``epoch`` (numbered from 1, as CANDLE) written?"""
    if final:
        return True
    if epoch < params.ckpt_skip_epochs:
        return False
    return improves(params, value, best_metric) or epoch % params.ckpt_save_interval == 0


def _v2(e: int) -> int:
    """2-adic valuation (trailing zero bits) of a positive integer."""
    return (e & -e).bit_length() - 1


def keep_epochs(epochs, last: int, best: int | None, mode: str, limit: int) -> set[int]:
    """The epochs to keep: ``last``, ``best`` and up to ``limit`` others.

    ``linear``: the newest ``limit`` others (CANDLE). ``exponential``: one epoch per
    octave of distance back from ``last`` (distance in [1,2), [2,4), [4,8), ...), the
    most power-of-two-aligned epoch in each octave, the nearest ``limit`` octaves. The
    alignment rule makes the choice stable as ``last`` advances (an epoch that is not
    kept now would not be chosen later), so saving every epoch leaves checkpoints at
    distances 1, 2, 4, 8, ... from ``last``. Epochs after ``last`` (a stale future left
    by a crash or a rewind) are never kept.
    """
    keep = {last}
    if best is not None and best in epochs and best <= last:
        keep.add(best)
    others = [e for e in epochs if e < last and e not in keep]
    if mode == "linear":
        return keep | set(sorted(others, reverse=True)[:limit])
    buckets: dict[int, int] = {}
    for e in others:
        j = (last - e).bit_length() - 1
        cur = buckets.get(j)
        if cur is None or (_v2(e), e) > (_v2(cur), cur):
            buckets[j] = e
    return keep | {buckets[j] for j in sorted(buckets)[:limit]}

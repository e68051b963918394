"""Were these results made from this data? The one check ``run --restart``, ``report`` and ``curate`` make.

A results file records the SHA-256 of the data it was trained on (``Dataset.checksum``,
the ``nodes`` table's ``data_checksum`` attribute). Anything that joins a results file
with a data file (continuing the run, scoring the baselines on the data, writing a curated
copy of it) must first see that the two belong together: a data file replaced at the
run's path (a new download, a re-normalised copy) would otherwise be scored, continued or
curated as if it were the run's, and every number would be silently wrong.

Files written before checksums existed record none. Then only the resolved paths can be
compared, and a warning says what cannot be verified (issue 28 item 6).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from hbl_mpi.core.errors import InputError


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_same_data(recorded_checksum: str, recorded_path: str, data_path: str, data_checksum: Callable[[], str] | str,
                    *, who: str, results: str, remedy: str, paths_must_agree: bool = False,
                    warn: Callable[[str], None] | None = _stderr) -> None:
    """InputError unless ``data_path`` holds the data the results at ``results`` were made from.

    ``recorded_checksum``/``recorded_path``: what the results file records ('' when it
    records nothing); ``data_checksum``: the data's checksum, or a function computing it
    (called only when there is a recorded one to compare). ``who`` starts the message
    (``--restart``, ``report``, ``curate``), ``remedy`` ends it. Without a recorded
    checksum: with ``paths_must_agree`` (a restart, run from the run's own folder) the
    resolved paths must agree when a path was recorded; ``warn`` receives one line naming
    the risk (``report`` and ``curate`` may be run from anywhere, where a recorded relative
    path resolves elsewhere: they warn only).
    """
    if recorded_checksum:
        now = data_checksum() if callable(data_checksum) else data_checksum
        if now != recorded_checksum:
            raise InputError(f"{who}: data {data_path!r} holds other data than the run's {recorded_path or '?'!r} "
                             f"that {results!r} was made from (data checksums differ: {now}, was "
                             f"{recorded_checksum}); {remedy}")
        return
    if paths_must_agree and recorded_path and os.path.realpath(str(recorded_path)) != os.path.realpath(str(data_path)):
        raise InputError(f"{who}: config key 'data' was {recorded_path!r} in the run of {results!r}, now "
                         f"{data_path!r}, and the results record no data checksum to show that both hold the "
                         f"same data; {remedy}")
    if warn is not None:
        warn(f"hbl_mpi: warning: {results!r} records no data checksum (written by an older version): it cannot "
             f"be verified that {data_path!r} still holds the data it was made from; if that file was replaced, "
             f"the {who} results are wrong")

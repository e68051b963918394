"""Progress output on rank 0: a bar on a TTY, otherwise a line every few nodes."""

from __future__ import annotations

import sys
import time


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
    """Reports done/total, running, failed, elapsed and ETA as nodes finish."""

    def __init__(self, total: int, every: int = 0, stream=None, already_done: int = 0):
        self.total = total
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every or max(1, total // 20)
        self.start = time.monotonic()
        self.base = already_done
        self._last_line = already_done

    def line(self, done: int, running: int, failed: int, skipped: int) -> str:
        elapsed = time.monotonic() - self.start
        fresh = done + failed + skipped - self.base
        left = self.total - done - failed - skipped
        eta = f"{fmt_seconds(elapsed / fresh * left)}" if fresh > 0 and left > 0 else "-"
        return (f"[hbl_mpi] {done}/{self.total} done, {running} running, {failed} failed, "
                f"{skipped} skipped, elapsed {fmt_seconds(elapsed)}, ETA {eta}")

    def update(self, done: int, running: int, failed: int, skipped: int, force: bool = False) -> None:
        finished = done + failed + skipped
        if self.tty:
            width = 30
            filled = int(width * finished / max(1, self.total))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] " + self.line(done, running, failed, skipped))
            if finished >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif force or finished - self._last_line >= self.every or finished >= self.total:
            self._last_line = finished
            print(self.line(done, running, failed, skipped), file=self.stream, flush=True)

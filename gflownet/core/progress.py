"""Progress of a long command as log lines: how far, how long so far, about how long to go.

    progress = Progress("sampling trained", total=len(records))
    for record in records:
        ...
        progress.step()

A line goes to stderr at most every ``every_s`` seconds and at the end (a file, a terminal or a
cluster log alike), e.g. ``sampling trained: 12/30 records, 4m10s elapsed, about 6m15s to go``.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, label: str, total: int, unit: str = "records", every_s: float = 30.0, stream=None,
                 clock=time.monotonic):
        self.label, self.total, self.unit, self.every_s = label, int(total), unit, float(every_s)
        self.stream, self.clock = stream, clock
        self.done = 0
        self.start = self.last = clock()

    def line(self, ended: bool = False) -> str:
        elapsed = self.clock() - self.start
        text = f"{self.label}: {self.done}/{self.total} {self.unit}, {duration(elapsed)} elapsed"
        if 0 < self.done < self.total and not ended:
            text += f", about {duration(elapsed / self.done * (self.total - self.done))} to go"
        return text

    def step(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)

    def finish(self, note: str = "") -> None:
        """The last line of work that ended before ``total`` (an early stop), with ``note`` saying why."""
        if self.done < self.total:
            print(self.line(ended=True) + (f" ({note})" if note else ""), file=self.stream or sys.stderr, flush=True)

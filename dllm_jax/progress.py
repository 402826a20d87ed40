"""Progress lines for long host loops (evaluation, sampling, sweeps), like training's."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """``label: i/total | elapsed | ETA`` at most every ``every_s`` seconds, and at the end.

    ``log`` None is silent (library default); the CLIs pass ``print``.
    """

    def __init__(self, label: str, total: int, log: Callable[[str], None] | None = None, every_s: float = 10.0):
        self.label, self.total, self.log, self.every_s = label, total, log, every_s
        self.done, self.t0 = 0, time.perf_counter()
        self._last = self.t0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.log is None:
            return
        now = time.perf_counter()
        if now - self._last < self.every_s and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        self.log(f"  {self.label}: {self.done}/{self.total} | {elapsed:.0f}s | ETA {eta:.0f}s")

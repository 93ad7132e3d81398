"""The run's clock: the one place the executor reads the time.

Two scales meet in a run: the scheduler, the timeline and the report count seconds
since the run started; deadlines, durations and the progress ETA use the monotonic
clock itself. The start is state here, read by whoever needs either.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshrun.records import record


@record(frozen=False)
class RunClock:
    """``read``: the monotonic clock (replaceable in tests); ``start()`` marks the run's
    start on it and on the wall clock (for the record)."""

    read: Callable[[], float] = time.monotonic
    started: float = 0.0
    started_wall: float = 0.0

    def start(self) -> None:
        self.started_wall = time.time()
        self.started = self.read()

    def monotonic(self) -> float:
        return self.read()

    def now(self) -> float:
        """Seconds since the run started: the scheduler's time."""
        return self.read() - self.started

    def offset(self, at: float) -> float:
        """``at`` (on the monotonic clock) in seconds since the run started, at least 0."""
        return max(0.0, at - self.started)

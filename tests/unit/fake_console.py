"""A clock the test moves by hand and a stream that says it is a terminal, for the tests
of what the console and the progress lines print."""

from __future__ import annotations

import io

#: What a live status line starts with when it redraws itself.
ERASE = "\r\x1b[K"


class Clock:
    """A ``time.monotonic`` stand-in: returns ``now``, which the test sets or advances."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    """A StringIO that is a terminal (so colour and live lines are on)."""

    def isatty(self) -> bool:
        return True

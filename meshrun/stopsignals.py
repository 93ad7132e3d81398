"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

CI systems cancel a job with SIGTERM (GitHub Actions, GitLab CI, Jenkins, Buildkite
all do, then SIGKILL after a grace period), and a closed terminal sends SIGHUP.
Python's default for both is to die on the spot: the hosts still clean up (their
connections drop), but no summary, no ``report.json``, no manifest and no history.

While a command runs, :func:`stop_on_signals` turns them into :class:`Stopped`, a
``KeyboardInterrupt``: every place that stops cleanly on Ctrl-C (stop starting work,
kill the running commands, write every record) does the same for them, and a second
signal of any of the three disconnects at once, as a second Ctrl-C does. The exit code
names the signal, as a shell reports it: 128 + its number (130 INT, 143 TERM, 129 HUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The signals a run ends on gracefully, besides SIGINT (Python's own KeyboardInterrupt).
HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGINT unless it is a :class:`Stopped`."""
    return exc.signum if isinstance(exc, Stopped) else int(signal.SIGINT)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code_for_signal(signum: int) -> int:
    """What a shell reports for a process ended by ``signum``: 128 + its number."""
    return 128 + signum


def how_stopped(signum: int) -> str:
    """``interrupted (Ctrl-C)``, ``terminated (SIGTERM)``, ``hung up (SIGHUP)``."""
    if signum == signal.SIGINT:
        return "interrupted (Ctrl-C)"
    if signum == signal.SIGHUP:
        return "hung up (SIGHUP)"
    if signum == signal.SIGTERM:
        return "terminated (SIGTERM)"
    return f"stopped ({signal_name(signum)})"


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread.

    Outside the main thread (a library caller's worker) nothing is installed: Python
    allows signal handlers only there. A signal the caller had set to be ignored (``nohup``
    sets SIGHUP so) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}
    for signum in HANDLED:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, _raise)
    try:
        yield
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)  # type: ignore[arg-type]


__all__ = [
    "HANDLED",
    "Stopped",
    "exit_code_for_signal",
    "how_stopped",
    "signal_name",
    "signal_of",
    "stop_on_signals",
]

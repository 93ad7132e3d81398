"""Timers wrapped around meshrun's own functions from outside, in an instrumented child.

bench/breakdown.py (``meshrun exec``) and ``bench/dispatch.py --breakdown`` (``meshrun
dispatch``) run the real CLI in a child process and split its wall clock into phases
without changing any meshrun code: a ``Probe`` keeps the marks (when a named point was
reached: the wall clock and the process's CPU, and with ``machine_busy`` also the whole
machine's busy CPU and the main thread's own) and the spans (per host: what, from when
to when), and wraps meshrun's functions to take them.

Only the standard library, and little of it: importing this is part of what the child
times before meshrun starts (the whole machine's CPU comes from the caller, so that
bench/harness.py is not imported here).
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from typing import Any


def process_cpu_s() -> float:
    """User + system CPU of this process so far, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def patch(owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` with ``wrap(owner.name)``."""
    setattr(owner, name, wrap(getattr(owner, name)))


class Probe:
    def __init__(
        self,
        marks: dict[str, float],
        cpus: dict[str, float],
        machine_busy: Callable[[], float] | None = None,
    ) -> None:
        self.marks, self.cpus = marks, cpus
        self.box: dict[str, float] = {}  # the machine's busy CPU s (with machine_busy)
        self.main_cpu: dict[str, float] = {}  # the main thread's CPU s (with machine_busy)
        self.spans: list[tuple[str, str, float, float]] = []  # (kind, host, start, end)
        self._machine_busy = machine_busy
        self._lock = threading.Lock()
        self._main = threading.main_thread()

    def mark(self, name: str, *, first: bool = False, at: float | None = None) -> None:
        """Note that ``name`` is reached now (its wall clock ``at``, if given); with
        ``first``, only the first time."""
        if first and name in self.marks:
            return
        self.marks[name] = time.time() if at is None else at
        self.cpus[name] = process_cpu_s()
        if self._machine_busy is not None:
            self.box[name] = self._machine_busy()
            if threading.current_thread() is self._main:
                self.main_cpu[name] = time.thread_time()

    def around(
        self,
        owner: Any,
        name: str,
        before: Callable[..., Any] | None = None,
        after: Callable[..., Any] | None = None,
    ) -> None:
        """Call ``before`` and ``after`` (with the same arguments) around ``owner.name``."""
        real = getattr(owner, name)

        def inner(*a: Any, **kw: Any) -> Any:
            if before is not None:
                before(*a, **kw)
            try:
                return real(*a, **kw)
            finally:
                if after is not None:
                    after(*a, **kw)

        setattr(owner, name, inner)

    def span(
        self, kind: str, owner: Any, name: str, host_of: Callable[[tuple[Any, ...]], str]
    ) -> None:
        """Record every call of ``owner.name`` as a ``kind`` span of the host that
        ``host_of(args)`` names (``args[0]`` is ``self`` for a method)."""
        real = getattr(owner, name)

        def inner(*a: Any, **kw: Any) -> Any:
            t0 = time.time()
            try:
                return real(*a, **kw)
            finally:
                with self._lock:
                    self.spans.append((kind, host_of(a), t0, time.time()))

        setattr(owner, name, inner)

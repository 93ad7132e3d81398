"""What ``fleet down`` needs of psutil, read from Linux's /proc instead.

``python -m meshrun.testing.fleet down`` (and ``scripts/fleet down``) must stop a fleet
with only the standard library, e.g. after ``scripts/demo``, whose environment has no
test extras. The checks are those of the psutil path: the pid must still be a live
``sshd`` started with the host's config (no pid reuse), and its whole process tree is
frozen, then killed, so no session process survives to re-fork.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Protocol

__all__ = ["descendants", "kill_tree", "listener_alive"]

_PROC = Path("/proc")


class _Listener(Protocol):
    pid: int
    config: Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None once it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def listener_alive(h: _Listener) -> bool:
    """Whether ``h.pid`` is a live sshd started with ``-f h.config`` (as psutil checks)."""
    if h.pid <= 0:
        return False
    state = _stat(h.pid)
    try:
        name = (_PROC / str(h.pid) / "comm").read_text().strip()
        argv = (_PROC / str(h.pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    if state is None or state[0] == "Z":
        return False
    return name == "sshd" and f" -f {h.config} " in f" {argv.strip()} "


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = children.get(pending.pop(), [])
        found.extend(kids)
        pending.extend(kids)
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def kill_tree(pid: int) -> None:
    """SIGSTOP ``pid`` and its descendants until none is new, SIGKILL them all, then
    wait (up to 10 s) until ``pid`` is gone or a zombie: its sockets are closed."""
    seen: set[int] = set()
    pending = [pid]
    while pending:
        for p in pending:
            _signal(p, signal.SIGSTOP)
        seen.update(pending)
        pending = [p for p in descendants(pid) if p not in seen]
    for p in seen:
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = _stat(pid)
        if state is None or state[0] == "Z":
            return
        time.sleep(0.01)

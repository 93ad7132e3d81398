"""What this process may hold (file descriptors, threads) and what a run needs of it.

A coordinator that runs out of descriptors mid-run fails in the worst way: ``socket()``
says EMFILE, and the error surfaces as a host fault ("cannot connect ... is sshd
running there", "cannot read identity file") or as a traceback. So every command that
fans out does three things, all here:

1. At start, :func:`raise_nofile_limit` raises the soft ``RLIMIT_NOFILE`` to the hard
   limit (never above it: only root may raise the hard one). Most shells start with a
   soft limit of 1,024 and a hard one far above it. Nothing in meshrun uses
   ``select.select`` (its 1,024-descriptor ceiling): sockets wait through poll.
2. Before it starts, a run sizes its pools to what is free: :func:`fit_parallel` lowers
   the parallelism (one warning line) when the asked-for number of hosts at once does
   not fit, and :func:`check_fits` refuses (:class:`DoesNotFit`, exit 2) when not even
   one at a time does, naming ``ulimit -n`` and ``--parallel`` with the numbers.
3. During the run, :func:`exhaustion` tells a coordinator-side shortage (EMFILE,
   ENFILE, ENOMEM, ENOBUFS, "can't start new thread", MemoryError) from a host's fault,
   and :func:`resource_error` turns it into :class:`~meshrun.errors.ResourceExhausted`,
   which is never counted against a host: the work is retried when resources free up.

The per-unit costs below were measured on Linux (paramiko 5.1, CPython 3.11) by
counting ``/proc/self/fd`` and ``threading.active_count()`` around real runs on a
loopback fleet; each constant says what it covers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sys
import threading
from collections.abc import Iterator

from meshrun.errors import DoesNotFit, ResourceExhausted

__all__ = [
    "EXEC_FDS_PER_HOST",
    "EXEC_THREADS_PER_HOST",
    "PULL_FDS_PER_HOST",
    "PULL_THREADS_PER_HOST",
    "RESERVE_FDS",
    "RESERVE_THREADS",
    "DoesNotFit",
    "ResourceExhausted",
    "check_fits",
    "exhaustion",
    "fds_available",
    "fds_in_use",
    "fit_parallel",
    "nofile_limits",
    "raise_nofile_limit",
    "resource_error",
    "shortage_raised",
    "threads_available",
]

#: Descriptors the process keeps for itself whatever the number of hosts: stdio (3),
#: paramiko's and Python's own (the urandom fd, a few pipes: 4-6 measured at rest),
#: the rsync relay's listener, the run's report/manifest/journal being written, the
#: console's log handler, and ``ssh -G`` resolution before the run (8 at once, 4 each
#: while they run). 64 leaves room over the 40-48 measured.
RESERVE_FDS = 64

#: Threads besides the per-host ones: the main thread, the liveness monitor, the relay's
#: acceptor, a keepalive probe now and then.
RESERVE_THREADS = 8

#: One host of ``exec``/``run``/``hosts`` at a time: its TCP socket (1) for the whole
#: run of the host, and while it dials, ssh-agent's socket (1) and a known_hosts or
#: identity file being read (1, each read once per run); a ProxyCommand adds its socket
#: pair and pipes (4). Measured: peak 4 and 8 descriptors over the start for ``-p 4``
#: and ``-p 8`` on 16 hosts (1 per host); 6 covers a ProxyCommand host's dial.
EXEC_FDS_PER_HOST = 6

#: One host of ``exec``/``run``/``hosts``: its worker and paramiko's reader thread
#: (measured: 2.0 per running host at ``-p 4`` and ``-p 8``), and a keepalive's
#: short-lived sender (or, with paramiko's own Transport, its handshake timer).
EXEC_THREADS_PER_HOST = 3

#: A host that also pulls files (``--pull``) with rsync: the rsync process's pipes (2
#: held, 4 more during its fork), the relay's accepted socket (1), rsync's three
#: descriptors passed to it (3), its wake pipe (2) and the list file (1), on top of
#: :data:`EXEC_FDS_PER_HOST`. Measured: 8.5 and 10 per host at the peak (``-p 4``,
#: ``-p 8``, 3 MB each). SFTP (no rsync) needs fewer: one file open at a time.
PULL_FDS_PER_HOST = EXEC_FDS_PER_HOST + 10

#: A pulling host: the relay's serving thread and its two pumps, on top of
#: :data:`EXEC_THREADS_PER_HOST` (measured: 4.5 and 5.1 per host at the peak).
PULL_THREADS_PER_HOST = EXEC_THREADS_PER_HOST + 3

#: macOS refuses a soft RLIMIT_NOFILE above OPEN_MAX when the hard limit is unlimited.
_OPEN_MAX = 10240

_EXHAUSTED_ERRNOS = {
    errno.EMFILE: "file descriptors (EMFILE: this process's `ulimit -n`)",
    errno.ENFILE: "file descriptors (ENFILE: the system's open-file table is full)",
    errno.ENOMEM: "memory (ENOMEM)",
    errno.ENOBUFS: "socket buffers (ENOBUFS)",
}


def nofile_limits() -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE (``resource.RLIM_INFINITY`` for unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def _ceiling(hard: int) -> int:
    """The highest soft limit the kernel will take under ``hard``."""
    if hard != resource.RLIM_INFINITY:
        return hard
    if sys.platform == "darwin":
        return _OPEN_MAX
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # Linux's default nr_open


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (never above it); the soft limit
    now in force. Harmless to call again; a refusal keeps the old limit."""
    soft, hard = nofile_limits()
    target = _ceiling(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        for wanted in (target, _OPEN_MAX):
            if wanted <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            except (ValueError, OSError):
                continue
            soft = wanted
            break
    return soft if soft != resource.RLIM_INFINITY else _ceiling(hard)


def fds_in_use() -> int:
    """Descriptors open in this process now (/proc/self/fd or /dev/fd)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(path)) - 1)  # listdir's own descriptor
        except OSError:
            continue
    return 3  # nowhere to count: assume stdio only


def fds_available() -> int:
    """Descriptors this process may still open under its soft limit."""
    soft, hard = nofile_limits()
    limit = soft if soft != resource.RLIM_INFINITY else _ceiling(hard)
    return max(0, limit - fds_in_use())


def threads_available() -> int | None:
    """Threads this process may still start, when a limit says (RLIMIT_NPROC counts
    every process and thread of the user; root is not held to it); None when none does.
    The user's other processes are not counted: this is an upper bound."""
    nproc = getattr(resource, "RLIMIT_NPROC", None)
    if nproc is None or os.geteuid() == 0:
        return None
    soft, _ = resource.getrlimit(nproc)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - threading.active_count())


def check_fits(needed_fds: int, what: str, *, option: str = "--parallel") -> None:
    """Refuse before starting (:class:`DoesNotFit`, exit 2) when ``needed_fds`` more
    descriptors than are free would be needed for ``what`` ("exec on 1 host at a time")."""
    free = fds_available()
    if needed_fds > free:
        soft, hard = nofile_limits()
        raise DoesNotFit(
            f"{what} needs about {needed_fds} file descriptors, but only {free} of "
            f"`ulimit -n` {_shown(soft)} are free",
            fix=f"raise the limit (`ulimit -n {needed_fds + (soft - free) + 64}`; the hard "
            f"limit is {_shown(hard)}, raised by root or /etc/security/limits.conf) or "
            f"lower {option}",
        )


def fit_parallel(
    wanted: int,
    *,
    fds_each: int,
    threads_each: int,
    what: str,
    option: str = "--parallel",
    reserve_fds: int = RESERVE_FDS,
    reserve_threads: int = RESERVE_THREADS,
) -> tuple[int, str | None]:
    """How many of ``wanted`` units (hosts at once) fit in what is free, and the one
    warning line to show when that is fewer (None when all fit).

    Each unit needs ``fds_each`` descriptors and ``threads_each`` threads; the process
    keeps ``reserve_*`` for itself. :class:`DoesNotFit` when not even one unit fits.
    """
    check_fits(reserve_fds + fds_each, f"{what} with 1 at a time")
    fit = (fds_available() - reserve_fds) // fds_each
    limit = "file descriptors"
    threads = threads_available()
    if threads is not None:
        by_threads = (threads - reserve_threads) // threads_each
        if by_threads < 1:
            raise DoesNotFit(
                f"{what} needs about {reserve_threads + threads_each} threads, but only "
                f"{threads} more may start (`ulimit -u`)",
                fix=f"raise `ulimit -u` or lower {option}",
            )
        if by_threads < fit:
            fit, limit = by_threads, "threads (`ulimit -u`)"
    if fit >= wanted:
        return wanted, None
    soft, _ = nofile_limits()
    if limit == "file descriptors":
        limit = f"file descriptors (`ulimit -n` {_shown(soft)}, about {fds_each} each)"
    warning = (
        f"{option} {wanted} does not fit in this process's {limit}: {what} runs {fit} "
        f"at once; raise the limit to run more"
    )
    return fit, warning


def exhaustion(exc: BaseException) -> str | None:
    """What the coordinator ran out of, when ``exc`` says it did ("file descriptors
    (EMFILE...)"); None for anything else (a host's fault, a bug)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ResourceExhausted):
            return current.resource
        if isinstance(current, MemoryError):
            return "memory (MemoryError)"
        if isinstance(current, RuntimeError) and "can't start new thread" in str(current):
            return "threads (can't start new thread)"
        if isinstance(current, OSError) and current.errno in _EXHAUSTED_ERRNOS:
            return _EXHAUSTED_ERRNOS[current.errno]
        current = current.__cause__ or current.__context__
    return None


def resource_error(exc: BaseException, doing: str) -> ResourceExhausted | None:
    """``exc`` as a :class:`ResourceExhausted` ("coordinator out of file descriptors
    while <doing>") when it is a shortage here; None otherwise. Raise it ``from exc``."""
    what = exhaustion(exc)
    if what is None:
        return None
    if isinstance(exc, ResourceExhausted):
        return exc
    return ResourceExhausted(what, doing)


@contextlib.contextmanager
def shortage_raised(doing: str) -> Iterator[None]:
    """Within the block, a shortage here (:func:`exhaustion`) is raised as
    :class:`ResourceExhausted` (from the original error); anything else as it was."""
    try:
        yield
    except ResourceExhausted:
        raise
    except Exception as exc:
        shortage = resource_error(exc, doing)
        if shortage is None:
            raise
        raise shortage from exc


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)

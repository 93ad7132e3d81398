"""Each task's log: in memory while it is small, in a file of its own when it is big or
the task did not succeed, in one shared file when it succeeded.

Why: a log opened per running task held one file descriptor per slot for as long as the
task ran (256 hosts x 4 slots: 1,287 fds, and EMFILE under ``ulimit -n 1024``), and a
file per task left 10,000 files (~44 MB) per 10,000-task run, almost all of them the
few lines of tasks that passed and that nobody opens. So:

- a task's output (every attempt's, headers included) is kept in memory up to
  ``MEMORY_BOUND``; past it, and whenever the run's buffers together pass
  ``MEMORY_BUDGET``, it goes to ``logs/<task>.log`` by open, append, close: no fd is
  held between writes, whatever the number of running tasks;
- when a task ends, a failed, cancelled or skipped task's log is ``logs/<task>.log``
  (what people open); a succeeded task's log, still in memory, is appended to
  ``logs/succeeded.log`` (one fd for the whole run) and the report says where:
  ``log`` (the path), ``log_offset`` and ``log_bytes`` (the slice). A succeeded task
  whose log was already spilled keeps its own file (offset and bytes None: the
  whole file);
- a task still running or waiting for a retry when the run ends gets its own file.

``log_chunks`` and ``log_tail`` read a log back, whole file or slice, for the replay of
failed tasks, JUnit and anything else. A coordinator killed outright (SIGKILL) loses
what running tasks printed that was still in memory; the journal still says which tasks
ended how.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from meshrun.records import record

log = logging.getLogger("meshrun.dispatch.executor")

#: A task's log stays in memory up to this many bytes, then goes to its own file. 64 KiB
#: holds the whole output of almost every task that passes (a 10,000-task run of
#: `true`: 60 bytes each; a unit-test shard: a few KiB), and bounds memory at 64 MiB
#: even with 1,024 tasks running at once. Spilled, a log is appended in writes of about
#: this size, so a 1 GB output costs ~16,000 open/close pairs (~0.2 s), not one fd.
MEMORY_BOUND = 64 * 1024
#: The run's in-memory logs together; past it, the log being written is spilled. Bounds
#: the coordinator's memory whatever the slots (4,096 running tasks x 64 KiB would be
#: 256 MiB).
MEMORY_BUDGET = 64 << 20
#: The one file that holds the logs of succeeded tasks, one slice each.
SUCCEEDED_LOG = "succeeded.log"
#: Reading a log back: this much at a time (a log may be larger than memory).
READ_CHUNK = 1 << 20


@record
class LogPlace:
    """Where a task's log is: the whole file ``path``, or ``size`` bytes of it from
    ``offset`` (the shared file of succeeded tasks)."""

    path: str
    offset: int | None = None
    size: int | None = None


@record(frozen=False)
class _Buffer:
    data: bytearray
    spilled: bool = False  # its own file holds the start of it
    warned: bool = False  # a write to its file failed, said once


class TaskLogs:
    """The run's task logs. Used from the coordinator's thread only."""

    def __init__(self, logs_dir: Path) -> None:
        self._dir = logs_dir
        self._shared_path = str(logs_dir / SUCCEEDED_LOG)  # said of every succeeded task
        self._open: dict[str, _Buffer] = {}  # task -> what is not in a file yet
        self._held = 0  # bytes in memory, every task together
        self._slices: dict[str, tuple[int, int]] = {}  # task -> (offset, size) in SUCCEEDED_LOG
        self._shared: BinaryIO | None = None
        self._shared_size = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of output in memory now."""
        return self._held

    def write(self, task: str, data: bytes) -> None:
        buffer = self._open.get(task)
        if buffer is None:
            buffer = self._open[task] = _Buffer(bytearray())
        buffer.data += data
        self._held += len(data)
        if len(buffer.data) > MEMORY_BOUND or self._held > MEMORY_BUDGET:
            self._spill(task, buffer)

    def finish(self, task: str, succeeded: bool) -> None:
        """``task`` reached its final state: its log leaves memory (see the module)."""
        buffer = self._open.get(task)
        if buffer is None:
            return
        if succeeded and not buffer.spilled and self._append_shared(task, buffer):
            del self._open[task]
            return
        if self._spill(task, buffer):
            del self._open[task]

    def place(self, task: str) -> LogPlace:
        """Where ``task``'s log is (its own file when it has none yet: never ran)."""
        where = self._slices.get(task)
        if where is not None:
            return LogPlace(self._shared_path, *where)
        return LogPlace(str(self.path(task)))

    def slice(self, task: str) -> tuple[int, int] | None:
        """(offset, bytes) of a succeeded task's log in ``SUCCEEDED_LOG``; None if it
        has a file of its own (or is still running)."""
        return self._slices.get(task)

    def path(self, task: str) -> Path:
        return self._dir / f"{task}.log"

    def close(self) -> None:
        """The run ended: every log still in memory goes to its own file."""
        for task, buffer in list(self._open.items()):
            if self._spill(task, buffer):
                del self._open[task]
        if self._shared is not None:
            try:
                self._shared.close()
            except OSError as exc:
                log.warning("could not finish %s: %s", self._dir / SUCCEEDED_LOG, exc)
            self._shared = None

    # -- writing -------------------------------------------------------------------------

    def _spill(self, task: str, buffer: _Buffer) -> bool:
        """Append what ``task`` has in memory to its own file; False if that failed (out
        of fds or disk: kept in memory, tried again on its next write or end)."""
        try:
            with open(self.path(task), "ab") as f:
                f.write(buffer.data)
        except OSError as exc:
            if not buffer.warned:
                buffer.warned = True
                log.warning("cannot write the log of %s (kept in memory for now): %s", task, exc)
            return False
        self._held -= len(buffer.data)
        buffer.data = bytearray()
        buffer.spilled = True
        return True

    def _append_shared(self, task: str, buffer: _Buffer) -> bool:
        try:
            if self._shared is None:
                path = self._dir / SUCCEEDED_LOG
                self._shared = open(path, "ab")  # noqa: SIM115 (open for the whole run)
                self._shared_size = self._shared.seek(0, os.SEEK_END)
            self._shared.write(buffer.data)
        except OSError as exc:
            if not buffer.warned:
                buffer.warned = True
                log.warning("cannot write the log of %s to %s: %s", task, SUCCEEDED_LOG, exc)
            return False
        size = len(buffer.data)
        self._slices[task] = (self._shared_size, size)
        self._shared_size += size
        self._held -= size
        return True


# -- reading --------------------------------------------------------------------------------


def log_chunks(
    path: str, offset: int | None = None, size: int | None = None, *, chunk: int = READ_CHUNK
) -> Iterator[bytes]:
    """A log read back a chunk at a time: the whole file, or ``size`` bytes from
    ``offset``. OSError if it cannot be opened (the task never ran)."""
    with open(path, "rb") as f:
        if offset is not None:
            f.seek(offset)
        left = size
        while left is None or left > 0:
            data = f.read(chunk if left is None else min(chunk, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


def log_tail(
    path: str, offset: int | None = None, size: int | None = None, *, limit: int
) -> tuple[bytes, bool]:
    """The last ``limit`` bytes of a log (whole file or slice), and whether earlier
    bytes were left out. OSError if it cannot be opened."""
    with open(path, "rb") as f:
        start = offset or 0
        end = f.seek(0, os.SEEK_END) if size is None else start + size
        cut = end - start > limit
        f.seek(max(start, end - limit))
        return f.read(min(limit, end - start)), cut

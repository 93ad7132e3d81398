"""The run journal: which task ended how, written while the run goes.

The history database and report.json are written when a run ends. A run that never
ends — SIGKILL, an out-of-memory kill, a CI runner that vanished — would leave no
record, and ``--rerun-failed`` would pick an older run. So every run also appends to
``runs/<run-id>/journal.jsonl``, one JSON object a line::

    {"event": "start", "run_id": "...", "started": 1733389200.1, "tasks": ["build", ...]}
    {"event": "end", "task": "build", "status": "succeeded", "host": "h1", "exit_code": 0,
     "duration_s": 1.2, "log_offset": 0, "log_bytes": 60}

``log_offset``/``log_bytes`` (a succeeded task's only): where its log is in
``logs/succeeded.log``, so a killed run's shared log still has an index.

The lines of the tasks that ended in one turn of the coordinator's loop are written
together and flushed to the operating system at the end of that turn (``flush``),
before the coordinator waits for anything else: one write per turn instead of one per
task (each write also hands the GIL to the runners' threads), and they survive the
coordinator being killed. A kill in the middle of a turn loses at most that turn's
lines: those tasks count as never finished and run again on ``--rerun-failed``, which
is safe. The file is fsync'd at most once a second and at the end (what a power cut
could cost is the last second). A journal is read back leniently: a torn last line is
ignored. Tasks that have no ``end`` line never finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from meshrun.records import record
from meshrun.rundir import JOURNAL_NAME, RunDir

__all__ = ["JOURNAL_NAME", "Journal", "JournalRecord", "latest_journal", "read_journal"]

log = logging.getLogger(__name__)

#: At most one fsync per this many seconds while the run goes.
SYNC_EVERY_S = 1.0

#: One encoder for every line (``json.dumps`` with options builds one per call).
_encode = json.JSONEncoder(ensure_ascii=False).encode


class Journal:
    """Appends a run's task ends to its journal. Never fails the run: a journal that
    cannot be written is logged once and then skipped."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        tasks: Sequence[str],
        started: float,
        scope: str = "",
    ) -> None:
        self.path = RunDir(Path(run_dir)).journal
        self._file: IO[str] | None = None
        self._pending: list[str] = []  # lines of this turn, not yet written
        self._synced = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        except OSError as exc:
            log.warning("cannot write the run journal %s: %s", self.path, exc)
            return
        self._write(
            {
                "event": "start",
                "run_id": run_id,
                "started": started,
                "tasks": list(tasks),
                "scope": scope,
            },
            sync=True,
        )

    def task_ended(
        self,
        task: str,
        status: str,
        host: str | None,
        exit_code: int | None,
        duration_s: float,
        log_slice: tuple[int, int] | None = None,
    ) -> None:
        """A task's end, written at the next ``flush``; ``log_slice``: (offset, bytes)
        of its log in logs/succeeded.log."""
        if self._file is None:
            return
        record: dict[str, Any] = {
            "event": "end",
            "task": task,
            "status": status,
            "host": host,
            "exit_code": exit_code,
            "duration_s": round(duration_s, 3),
        }
        if log_slice is not None:
            record["log_offset"], record["log_bytes"] = log_slice
        self._pending.append(_encode(record) + "\n")

    def flush(self) -> None:
        """Write the ends recorded since the last flush (once per turn of the loop)."""
        if self._pending:
            lines = "".join(self._pending)
            self._pending.clear()
            self._write(lines, sync=False)

    def close(self) -> None:
        self.flush()
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            log.warning("could not finish the run journal %s: %s", self.path, exc)
        self._file = None

    def _write(self, lines: str | dict[str, Any], *, sync: bool) -> None:
        if self._file is None:
            return
        if not isinstance(lines, str):
            lines = _encode(lines) + "\n"
        try:
            self._file.write(lines)
            self._file.flush()
            now = time.monotonic()
            if sync or now - self._synced >= SYNC_EVERY_S:
                os.fsync(self._file.fileno())
                self._synced = now
        except OSError as exc:
            log.warning("cannot write the run journal %s: %s; going on without", self.path, exc)
            self._file.close()
            self._file = None


@record
class JournalRecord:
    """What a journal says of its run: the tasks it had, and those that ended, how."""

    run_id: str
    started: float
    tasks: tuple[str, ...]
    ended: dict[str, str]  # task -> its last status
    scope: str = ""  # the task file it ran (TaskGraph.scope); "" before scopes existed


def read_journal(run_dir: Path) -> JournalRecord | None:
    """The journal in ``run_dir``; None if there is none or it has no start line."""
    path = RunDir(Path(run_dir)).journal
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    start: dict[str, Any] | None = None
    ended: dict[str, str] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill
        if not isinstance(record, dict):
            continue
        if record.get("event") == "start" and start is None:
            start = record
        elif record.get("event") == "end" and isinstance(record.get("task"), str):
            ended[record["task"]] = str(record.get("status"))
    if start is None:
        return None
    try:
        return JournalRecord(
            run_id=str(start["run_id"]),
            started=float(start["started"]),
            tasks=tuple(str(t) for t in start["tasks"]),
            ended=ended,
            scope=str(start.get("scope", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def latest_journal(runs_dir: Path, scope: str | None = None) -> JournalRecord | None:
    """The journal of the run that started last under ``runs_dir`` (``runs/``); with
    ``scope``, of the last run of that task file (or of one from before scopes)."""
    newest: tuple[float, Path] | None = None
    try:
        children = list(Path(runs_dir).iterdir())
    except OSError:
        return None
    for child in children:
        head = _head(child / JOURNAL_NAME)
        if head is None or (scope is not None and head[1] not in (scope, "")):
            continue
        if newest is None or head[0] > newest[0]:
            newest = (head[0], child)
    return None if newest is None else read_journal(newest[1])


def _head(path: Path) -> tuple[float, str] | None:
    """The start time and scope on a journal's first line, without reading the rest."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            record = json.loads(f.readline())
        if record.get("event") != "start":
            return None
        return float(record["started"]), str(record.get("scope", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None

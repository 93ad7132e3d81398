"""Past task durations and run records, in an embedded SQLite database.

The scheduler's expected durations come from here. A duration estimate is an
exponentially weighted mean whose samples are clamped to a band around the current
estimate, so one hung or cached run does not swing it; tasks never seen get the median
of the known ones. WAL mode and a busy timeout let two runs (two CI jobs sharing a
cache) write at once; every write is one short transaction.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshrun.records import record

#: Weight of the newest sample in the moving estimate.
ALPHA = 0.3
#: After this many samples, a new one is clamped to [estimate / BAND, estimate * BAND].
BAND = 4.0
WARM_SAMPLES = 3
#: The guess when nothing at all is known yet.
DEFAULT_EXPECTED_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS durations (
    task TEXT PRIMARY KEY,
    estimate_s REAL NOT NULL,
    samples INTEGER NOT NULL,
    last_s REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    exit_code INTEGER,
    document TEXT
);
CREATE TABLE IF NOT EXISTS run_tasks (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    host TEXT,
    exit_code INTEGER,
    attempts INTEGER NOT NULL,
    duration_s REAL,
    PRIMARY KEY (run_id, task)
);
"""


def updated_estimate(estimate_s: float | None, samples: int, sample_s: float) -> float:
    """The next estimate after ``sample_s`` (pure; see the module docstring)."""
    if estimate_s is None or samples == 0:
        return sample_s
    if samples >= WARM_SAMPLES:
        sample_s = min(max(sample_s, estimate_s / BAND), estimate_s * BAND)
    return ALPHA * sample_s + (1 - ALPHA) * estimate_s


@record
class DurationRecord:
    task: str
    estimate_s: float
    samples: int
    last_s: float
    updated: float


@record
class TaskOutcome:
    task: str
    status: str
    host: str | None
    exit_code: int | None
    attempts: int
    duration_s: float | None


class History:
    """One history database; cheap to open, safe to share between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- durations -----------------------------------------------------------------

    def durations(self) -> list[DurationRecord]:
        rows = self._db.execute(
            "SELECT task, estimate_s, samples, last_s, updated FROM durations ORDER BY task"
        ).fetchall()
        return [DurationRecord(*row) for row in rows]

    def expected(self, tasks: Iterable[str]) -> dict[str, float]:
        """Expected seconds per task: learned, else the median of known tasks."""
        known = {r.task: r.estimate_s for r in self.durations()}
        fallback = statistics.median(known.values()) if known else DEFAULT_EXPECTED_S
        return {name: known.get(name, fallback) for name in tasks}

    def record_durations(self, samples: Mapping[str, float]) -> None:
        """Fold successful tasks' durations into their estimates, atomically."""
        now = time.time()
        with self._transaction():
            for task, seconds in samples.items():
                row = self._db.execute(
                    "SELECT estimate_s, samples FROM durations WHERE task = ?", (task,)
                ).fetchone()
                estimate, count = (row[0], row[1]) if row else (None, 0)
                self._db.execute(
                    "INSERT INTO durations (task, estimate_s, samples, last_s, updated) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(task) DO UPDATE SET "
                    "estimate_s = excluded.estimate_s, samples = excluded.samples, "
                    "last_s = excluded.last_s, updated = excluded.updated",
                    (task, updated_estimate(estimate, count, seconds), count + 1, seconds, now),
                )

    # -- runs ----------------------------------------------------------------------

    def record_run(
        self,
        run_id: str,
        started: float,
        ended: float,
        exit_code: int,
        outcomes: Sequence[TaskOutcome],
        document: Mapping[str, Any] | None = None,
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO runs (run_id, started, ended, exit_code, document) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, started, ended, exit_code, json.dumps(document) if document else None),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO run_tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, o.task, o.status, o.host, o.exit_code, o.attempts, o.duration_s)
                    for o in outcomes
                ],
            )

    def last_run_id(self) -> str | None:
        last = self.last_run()
        return None if last is None else last[0]

    def last_run(self) -> tuple[str, float] | None:
        """The run that started last, and when (epoch seconds)."""
        row = self._db.execute(
            "SELECT run_id, started FROM runs ORDER BY started DESC, run_id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def run_outcomes(self, run_id: str) -> list[TaskOutcome] | None:
        """What each task of ``run_id`` ended as; None if there is no such run."""
        if self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            return None
        rows = self._db.execute(
            "SELECT task, status, host, exit_code, attempts, duration_s FROM run_tasks "
            "WHERE run_id = ? ORDER BY rowid",
            (run_id,),
        ).fetchall()
        return [TaskOutcome(*row) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so concurrent writers
    wait (busy_timeout) instead of failing halfway."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")

"""Past task durations and run records, in an embedded SQLite database.

The scheduler's expected durations come from here. A duration estimate is an
exponentially weighted mean whose samples are clamped to a band around the current
estimate, so one hung or cached run does not swing it; tasks never seen get the median
of the known ones. WAL mode and a busy timeout let two runs (two CI jobs sharing a
cache) write at once; every write is one short transaction.

Everything is kept per *scope*: the task file's path within its workspace
(``TaskGraph.scope``), so two task files in one directory with the same task names keep
apart, and ``--rerun-failed`` of one never reruns what another file's run failed.
Databases written before scopes existed are migrated in place (schema 2): their rows
get the empty scope, and a scope with nothing of its own falls back to them, so an
upgrade loses no learned duration.
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

SCHEMA_VERSION = 2
LEGACY_SCOPE = ""  # rows written before scopes existed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS durations (
    scope TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL,
    estimate_s REAL NOT NULL,
    samples INTEGER NOT NULL,
    last_s REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (scope, task)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    exit_code INTEGER,
    document TEXT,
    scope TEXT NOT NULL DEFAULT ''
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
    """One history database seen from one ``scope`` (a task file; see the module
    docstring), or, with ``scope`` None, all of it (what it was before scopes: the
    latest estimate of each task name); cheap to open, safe to share between processes."""

    def __init__(self, path: str | Path, scope: str | None = None) -> None:
        self.path = Path(path)
        self.scope = scope
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._use_wal()
        self._migrate()

    def _use_wal(self) -> None:
        """WAL mode, waiting for a second run that is switching the same new database
        at the same moment: SQLite answers "locked" then without waiting itself."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring any older database to :data:`SCHEMA_VERSION`, once, under the write lock
        (two runs opening it at once: the second finds it done)."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._transaction():
            if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if "durations" in tables and "scope" not in self._columns("durations"):
                self._db.execute("ALTER TABLE durations RENAME TO durations_v1")
            if "runs" in tables and "scope" not in self._columns("runs"):
                self._db.execute("ALTER TABLE runs ADD COLUMN scope TEXT NOT NULL DEFAULT ''")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if "durations_v1" in {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}:
                self._db.execute(
                    "INSERT OR IGNORE INTO durations "
                    "SELECT '', task, estimate_s, samples, last_s, updated FROM durations_v1"
                )
                self._db.execute("DROP TABLE durations_v1")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- durations -----------------------------------------------------------------

    def durations(self) -> list[DurationRecord]:
        """This scope's learned durations (before any: what an older meshrun learned)."""
        rows = self._durations(self.scope)
        if not rows and self.scope not in (None, LEGACY_SCOPE):
            rows = self._durations(LEGACY_SCOPE)
        return rows

    def _durations(self, scope: str | None) -> list[DurationRecord]:
        if scope is None:  # every scope: the latest estimate of each name
            rows = self._db.execute(
                "SELECT task, estimate_s, samples, last_s, MAX(updated) FROM durations "
                "GROUP BY task ORDER BY task"
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT task, estimate_s, samples, last_s, updated FROM durations "
                "WHERE scope = ? ORDER BY task",
                (scope,),
            ).fetchall()
        return [DurationRecord(*row) for row in rows]

    def expected(self, tasks: Iterable[str]) -> dict[str, float]:
        """Expected seconds per task: learned (in this scope, else before scopes
        existed), else the median of this scope's known tasks."""
        known = {r.task: r.estimate_s for r in self._durations(self.scope)}
        legacy = (
            {r.task: r.estimate_s for r in self._durations(LEGACY_SCOPE)}
            if self.scope not in (None, LEGACY_SCOPE)
            else {}
        )
        pool = known or legacy
        fallback = statistics.median(pool.values()) if pool else DEFAULT_EXPECTED_S
        return {name: known.get(name, legacy.get(name, fallback)) for name in tasks}

    def record_durations(self, samples: Mapping[str, float]) -> None:
        """Fold successful tasks' durations into their estimates, atomically."""
        now = time.time()
        with self._transaction():
            # One read of the scope and one batched write: a statement pair per task
            # was 20,000 statements for a 10,000-task run.
            known = {
                task: (estimate, count)
                for task, estimate, count in self._db.execute(
                    "SELECT task, estimate_s, samples FROM durations WHERE scope = ?",
                    (self._writing,),
                )
            }
            rows = []
            for task, seconds in samples.items():
                estimate, count = known.get(task, (None, 0))
                rows.append(
                    (
                        self._writing,
                        task,
                        updated_estimate(estimate, count, seconds),
                        count + 1,
                        seconds,
                        now,
                    )
                )
            self._db.executemany(
                "INSERT INTO durations (scope, task, estimate_s, samples, last_s, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(scope, task) DO UPDATE SET "
                "estimate_s = excluded.estimate_s, samples = excluded.samples, "
                "last_s = excluded.last_s, updated = excluded.updated",
                rows,
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
                "INSERT OR REPLACE INTO runs (run_id, started, ended, exit_code, document, scope) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    started,
                    ended,
                    exit_code,
                    json.dumps(document) if document else None,
                    self._writing,
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO run_tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, o.task, o.status, o.host, o.exit_code, o.attempts, o.duration_s)
                    for o in outcomes
                ],
            )

    @property
    def _writing(self) -> str:
        return LEGACY_SCOPE if self.scope is None else self.scope

    def last_run_id(self, scope: str | None = None) -> str | None:
        last = self.last_run(scope)
        return None if last is None else last[0]

    def last_run(self, scope: str | None = None) -> tuple[str, float] | None:
        """The run of ``scope`` (default: this history's) that started last, and when
        (epoch seconds); with none, the last one recorded before scopes existed.
        Unscoped: the last run of any."""
        scope = self.scope if scope is None else scope
        if scope is None:
            row = self._db.execute(
                "SELECT run_id, started FROM runs ORDER BY started DESC, run_id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else (str(row[0]), float(row[1]))
        for one in dict.fromkeys((scope, LEGACY_SCOPE)):
            row = self._db.execute(
                "SELECT run_id, started FROM runs WHERE scope = ? "
                "ORDER BY started DESC, run_id DESC LIMIT 1",
                (one,),
            ).fetchone()
            if row is not None:
                return str(row[0]), float(row[1])
        return None

    def last_success(self, task: str, scope: str | None = None) -> str | None:
        """The latest run of ``scope`` (default: this history's) in which ``task``
        succeeded, or one recorded before scopes existed; None if none did."""
        scope = self.scope if scope is None else scope
        scopes = (LEGACY_SCOPE,) if scope is None else tuple(dict.fromkeys((scope, LEGACY_SCOPE)))
        for one in scopes:
            row = self._db.execute(
                "SELECT r.run_id FROM run_tasks t JOIN runs r ON r.run_id = t.run_id "
                "WHERE t.task = ? AND t.status = 'succeeded' AND r.scope = ? "
                "ORDER BY r.started DESC, r.run_id DESC LIMIT 1",
                (task, one),
            ).fetchone()
            if row is not None:
                return str(row[0])
        return None

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

    # -- retention (dispatch/retention.py) -------------------------------------------

    def run_ids(self) -> dict[str, tuple[float, float]]:
        """Every recorded run (all scopes) -> (when it started, when it ended or, not
        known, started)."""
        rows = self._db.execute("SELECT run_id, started, COALESCE(ended, started) FROM runs")
        return {str(run_id): (float(started), float(ended)) for run_id, started, ended in rows}

    def scopes(self) -> list[str]:
        """The task files (scopes) with recorded runs."""
        return [str(row[0]) for row in self._db.execute("SELECT DISTINCT scope FROM runs")]

    def rerun_runs(self) -> set[str]:
        """The runs ``--rerun-failed`` may read, in every scope: the latest run of each
        scope (its outcomes say what to rerun) and, for each task, the latest run it
        succeeded in (a rerun pushes that run's outputs to the tasks that need them).
        SQLite gives the row of the MAX() for the bare columns."""
        latest = self._db.execute("SELECT run_id, MAX(started) FROM runs GROUP BY scope").fetchall()
        succeeded = self._db.execute(
            "SELECT r.run_id, MAX(r.started) FROM run_tasks t JOIN runs r "
            "ON r.run_id = t.run_id WHERE t.status = 'succeeded' GROUP BY r.scope, t.task"
        ).fetchall()
        return {str(row[0]) for row in (*latest, *succeeded)}

    def forget_runs(self, run_ids: Sequence[str]) -> int:
        """Delete these runs and their tasks' rows, in one transaction: the rows gone."""
        if not run_ids:
            return 0
        removed = 0
        with self._transaction():
            for run_id in run_ids:
                removed += self._db.execute(
                    "DELETE FROM run_tasks WHERE run_id = ?", (run_id,)
                ).rowcount
                removed += self._db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount
        return removed

    def compact(self) -> bool:
        """VACUUM: give the freed pages back to the file system; False when another
        connection is using the database (nothing is lost, the pages are reused)."""
        try:
            self._db.execute("PRAGMA busy_timeout=1000")
            self._db.execute("VACUUM")
        except sqlite3.OperationalError:
            return False
        finally:
            self._db.execute("PRAGMA busy_timeout=30000")
        return True

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

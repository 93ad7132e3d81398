import multiprocessing
from pathlib import Path

import pytest

from meshrun.dispatch.history import (
    BAND,
    DEFAULT_EXPECTED_S,
    History,
    TaskOutcome,
    updated_estimate,
)


def test_first_sample_is_the_estimate_then_a_moving_mean() -> None:
    assert updated_estimate(None, 0, 12.0) == 12.0
    assert updated_estimate(10.0, 1, 20.0) == pytest.approx(13.0)


def test_an_outlier_moves_a_warm_estimate_only_a_little() -> None:
    estimate = 10.0
    for _ in range(5):
        estimate = updated_estimate(estimate, 5, 10.0)
    hung = updated_estimate(estimate, 5, 10_000.0)  # one hung run
    assert hung <= 10.0 * (1 + 0.3 * (BAND - 1)) + 1e-9


def test_unknown_tasks_get_the_median_of_known_ones(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        assert h.expected(["a"]) == {"a": DEFAULT_EXPECTED_S}
        h.record_durations({"a": 1.0, "b": 3.0, "c": 10.0})
        assert h.expected(["a", "new"]) == {"a": 1.0, "new": 3.0}


def test_runs_are_recorded_and_the_last_one_is_found(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        assert h.last_run_id() is None and h.run_outcomes("nope") is None
        h.record_run("r1", 1.0, 2.0, 1, [TaskOutcome("a", "failed", "h1", 2, 1, 0.5)])
        h.record_run("r2", 3.0, 4.0, 0, [TaskOutcome("a", "succeeded", "h2", 0, 1, 0.4)])
        assert h.last_run_id() == "r2"
        assert h.run_outcomes("r1") == [TaskOutcome("a", "failed", "h1", 2, 1, 0.5)]


def _writer(path: str, name: str) -> None:
    with History(path) as h:
        for i in range(50):
            h.record_durations({f"{name}-{i % 5}": float(i + 1), "shared": 1.0})


def test_two_processes_can_write_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    History(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, n)) for n in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, "a writer failed (database locked?)"
    with History(path) as h:
        records = {r.task: r for r in h.durations()}
    assert records["shared"].samples == 100
    assert {f"x-{i}" for i in range(5)} <= set(records)


def test_scopes_keep_two_task_files_apart(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with History(path, scope="tasks.toml") as h:
        h.record_durations({"core": 2.0})
        h.record_run("r1", 1.0, 2.0, 1, [TaskOutcome("core", "failed", "h1", 1, 1, 2.0)])
    with History(path, scope="other.toml") as h:
        h.record_durations({"core": 45.0})
        h.record_run("r2", 3.0, 4.0, 0, [TaskOutcome("core", "succeeded", "h1", 0, 1, 45.0)])
    with History(path, scope="tasks.toml") as h:
        assert [(r.task, r.estimate_s, r.last_s) for r in h.durations()] == [("core", 2.0, 2.0)]
        assert h.expected(["core"]) == {"core": 2.0}
        assert h.last_run_id() == "r1"  # not the later run of the other file
        assert h.last_run_id(scope="other.toml") == "r2"
    with History(path) as everything:  # unscoped: as before scopes, the latest of all
        assert everything.last_run_id() == "r2"


def test_an_older_database_is_migrated_and_its_durations_kept(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # schema 1, as meshrun wrote it before scopes
        db.executescript(
            """
            CREATE TABLE durations (task TEXT PRIMARY KEY, estimate_s REAL NOT NULL,
                samples INTEGER NOT NULL, last_s REAL NOT NULL, updated REAL NOT NULL);
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, started REAL NOT NULL, ended REAL,
                exit_code INTEGER, document TEXT);
            CREATE TABLE run_tasks (run_id TEXT NOT NULL, task TEXT NOT NULL,
                status TEXT NOT NULL, host TEXT, exit_code INTEGER, attempts INTEGER NOT NULL,
                duration_s REAL, PRIMARY KEY (run_id, task));
            INSERT INTO durations VALUES ('build', 30.0, 5, 31.0, 1.0);
            INSERT INTO runs VALUES ('old-run', 1.0, 2.0, 1, NULL);
            INSERT INTO run_tasks VALUES ('old-run', 'build', 'failed', 'h1', 1, 1, 31.0);
            """
        )
    db.close()
    with History(path, scope="tasks.toml") as h:
        assert h.expected(["build", "new"]) == {"build": 30.0, "new": 30.0}
        assert h.last_run_id() == "old-run"  # nothing of its own yet: the old record
        assert [o.task for o in h.run_outcomes("old-run") or []] == ["build"]
        h.record_durations({"build": 10.0})
        h.record_run("r1", 5.0, 6.0, 0, [TaskOutcome("build", "succeeded", "h1", 0, 1, 10.0)])
        assert h.expected(["build"]) == {"build": 10.0}
        assert h.last_run_id() == "r1"
    with History(path, scope="tasks.toml") as again:  # opening a migrated one is a no-op
        assert again.expected(["build"]) == {"build": 10.0}

import multiprocessing
from pathlib import Path

import pytest

from meshrun.history import BAND, DEFAULT_EXPECTED_S, History, TaskOutcome, updated_estimate


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

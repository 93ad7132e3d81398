"""The progress line's numbers (executor.progress.snapshot) and what the console draws
from them: done/total, failures, what runs, and the ETA from expected durations. Pure:
records and times are made up, no run, no clock."""

from __future__ import annotations

import io

import pytest
from fake_console import ERASE, Clock, Tty

from meshrun.cli.console import DispatchConsole
from meshrun.config.tasks import Task
from meshrun.dispatch.executor import Progress, TaskStarted
from meshrun.dispatch.executor.progress import snapshot
from meshrun.dispatch.scheduler import TaskRecord, TaskStatus


def record(name: str, expected_s: float, status: TaskStatus, weight: int = 1) -> TaskRecord:
    task = Task(name=name, run="true", weight=weight)
    return TaskRecord(task, priority=expected_s, expected_s=expected_s, status=status)


def records() -> dict[str, TaskRecord]:
    """Four tasks: one passed, one failed, ``build`` (10 s expected) running, ``pack``
    (8 s, weight 2) queued."""
    return {
        "lint": record("lint", 3.0, TaskStatus.SUCCEEDED),
        "test": record("test", 5.0, TaskStatus.FAILED),
        "build": record("build", 10.0, TaskStatus.RUNNING),
        "pack": record("pack", 8.0, TaskStatus.QUEUED, weight=2),
    }


def drawn(err: str) -> list[str]:
    return [part.split("\n")[0] for part in err.split(ERASE)[1:] if part.split("\n")[0]]


def test_the_eta_is_the_work_left_over_the_capacity() -> None:
    # build has run 4 of its 10 s: 6 left; pack 8 s x weight 2 = 16; 22 units of work
    # over capacity 2 (two weight-1 hosts of one slot) = 11 s.
    snap = snapshot(records(), [("build", "h1", 100.0)], capacity=2.0, now=104.0)
    assert snap == Progress(done=2, total=4, failed=1, running=(("h1", 1),), eta_s=11.0)


def test_running_tasks_are_counted_per_host_in_name_order() -> None:
    running = [("build", "h2", 0.0), ("pack", "h1", 0.0), ("x", "h2", 0.0)]
    assert snapshot(records(), running, 1.0, 0.0).running == (("h1", 1), ("h2", 2))


@pytest.mark.parametrize(
    ("running", "capacity", "why"),
    [
        ([("build", "h1", 0.0)], 0.0, "no host takes tasks yet (or all were lost)"),
        ([("build", "h1", 0.0), ("pack", "h1", 0.0)], 2.0, "both ran past their estimate"),
    ],
)
def test_the_eta_is_unknown_without_capacity_or_once_tasks_overrun(
    running: list[tuple[str, str, float]], capacity: float, why: str
) -> None:
    assert snapshot(records(), running, capacity, now=60.0).eta_s is None, why


def test_a_finished_run_has_nothing_left() -> None:
    done = {n: record(n, 1.0, TaskStatus.SUCCEEDED) for n in "ab"}
    assert snapshot(done, [], 4.0, 0.0) == Progress(2, 2, 0, (), None)


def test_the_status_line_shows_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    err = Tty()
    console = DispatchConsole(total=4, out=io.StringIO(), err=err, clock=Clock())
    console(TaskStarted("build", "h1", 1))
    console(snapshot(records(), [("build", "h1", 100.0)], 2.0, now=104.0))
    # 11.2 s rounds up to 12: what is left is never shown shorter than it is.
    console(snapshot(records(), [("build", "h1", 100.0)], 2.0, now=103.6))
    assert drawn(err.getvalue()) == [
        "meshrun: 2/4 done · 1 failed · ETA 11s · running: build",
        "meshrun: 2/4 done · 1 failed · ETA 12s · running: build",
    ]


def test_the_plain_line_for_ci_logs_shows_the_same_numbers() -> None:
    clock = Clock()
    err = io.StringIO()
    console = DispatchConsole(
        total=4, out=io.StringIO(), err=err, clock=clock, progress_interval_s=15.0
    )
    console(TaskStarted("build", "h1", 1))
    snap = snapshot(records(), [("build", "h1", 100.0)], 2.0, now=104.0)
    console(snap)  # the first line comes an interval after the start
    clock.now += 15.0
    console(snap)
    assert err.getvalue().splitlines() == [
        "meshrun: 2/4 done, 1 failed, running: build (15s); ETA 11s"
    ]

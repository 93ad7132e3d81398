"""The run journal and what --rerun-failed picks from it."""

from __future__ import annotations

import json
from pathlib import Path

from meshrun.config.tasks import SyncSpec, Task, TaskGraph
from meshrun.dispatch.history import History, TaskOutcome
from meshrun.dispatch.journal import Journal, latest_journal, read_journal
from meshrun.dispatch.run import select_rerun


def _graph(*names: str) -> TaskGraph:
    return TaskGraph(tasks={n: Task(name=n, run="true") for n in names}, sync=SyncSpec(Path(".")))


def test_a_journal_reads_back_what_ended_and_ignores_a_torn_line(tmp_path: Path) -> None:
    j = Journal(tmp_path / "r1", "r1", ["a", "b", "c"], started=100.0)
    j.task_ended("a", "succeeded", "h1", 0, 0.5)
    j.task_ended("b", "failed", "h2", 1, 0.7)
    j.close()
    with open(tmp_path / "r1" / "journal.jsonl", "a") as f:
        f.write('{"event": "end", "task": "c", "sta')  # killed mid-write
    record = read_journal(tmp_path / "r1")
    assert record is not None
    assert (record.run_id, record.started, record.tasks) == ("r1", 100.0, ("a", "b", "c"))
    assert record.ended == {"a": "succeeded", "b": "failed"}


def test_a_turns_ends_are_written_together_with_a_succeeded_tasks_log_slice(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "r1", "r1", ["a", "b"], started=100.0)
    path = tmp_path / "r1" / "journal.jsonl"
    j.task_ended("a", "succeeded", "h1", 0, 0.5, log_slice=(120, 60))
    j.task_ended("b", "failed", "h2", 1, 0.7)
    assert len(path.read_text().splitlines()) == 1  # the start line only, until the flush
    j.flush()
    ends = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert [(e["task"], e.get("log_offset"), e.get("log_bytes")) for e in ends] == [
        ("a", 120, 60),
        ("b", None, None),
    ]
    j.task_ended("c", "succeeded", "h1", 0, 0.1)
    j.close()  # what is left goes at the end
    assert json.loads(path.read_text().splitlines()[-1])["task"] == "c"


def test_the_latest_journal_is_the_run_that_started_last(tmp_path: Path) -> None:
    for run_id, started in (("old", 1.0), ("new", 3.0), ("mid", 2.0)):
        Journal(tmp_path / run_id, run_id, ["a"], started=started).close()
    (tmp_path / "junk").mkdir()
    latest = latest_journal(tmp_path)
    assert latest is not None and latest.run_id == "new"


def test_rerun_picks_a_killed_run_over_an_older_recorded_one(tmp_path: Path) -> None:
    graph = _graph("a", "b", "c", "d")
    runs = tmp_path / "runs"
    with History(tmp_path / "history.sqlite") as history:
        history.record_run("finished", 10.0, 11.0, 1, [TaskOutcome("d", "failed", "h1", 1, 1, 0.1)])
        killed = Journal(runs / "killed", "killed", ["a", "b", "c"], started=20.0)
        killed.task_ended("a", "succeeded", "h1", 0, 0.1)
        killed.task_ended("b", "failed", "h1", 2, 0.1)
        killed.close()
        # Killed: b failed, c never ended; a passed.
        assert set(select_rerun(graph, history, None, runs_dir=runs).tasks) == {"b", "c"}
        # By name, the recorded run is still what it was.
        assert set(select_rerun(graph, history, "finished", runs_dir=runs).tasks) == {"d"}
        # A run recorded after the killed one is the last run again.
        history.record_run("later", 30.0, 31.0, 1, [TaskOutcome("a", "failed", "h1", 1, 1, 0.1)])
        assert set(select_rerun(graph, history, None, runs_dir=runs).tasks) == {"a"}

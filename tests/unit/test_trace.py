"""The run's timeline as a Chrome trace: one track per host, one lane per slot used."""

from __future__ import annotations

import json

from meshrun.dispatch.executor import DispatchReport, HostSummary, TaskResult
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.dispatch.trace import chrome_trace
from meshrun.integrity.manifest import AttemptEntry, TaskEntry


def _task(name: str, *attempts: AttemptEntry) -> TaskResult:
    last = attempts[-1]
    return TaskResult(
        name,
        TaskStatus.SUCCEEDED,
        last.host,
        0,
        len(attempts),
        1.0,
        "log",
        None,
        timeline=attempts,
    )


def _report(*tasks: TaskResult) -> DispatchReport:
    hosts = (
        HostSummary("h1", "lost", "agent", 2, 1),
        HostSummary("h2", "ok", "agent", 2, 3),
        HostSummary("idle", "ok", "agent", 2, 0),
    )
    return DispatchReport("run-1", 0.0, 9.0, tasks, hosts, "/tmp/run")


def test_overlapping_attempts_get_their_own_lanes_and_lanes_are_reused() -> None:
    report = _report(
        _task("a", AttemptEntry("h2", 0.0, 2.0, "succeeded", 0)),
        _task("b", AttemptEntry("h2", 1.0, 3.0, "succeeded", 0)),
        _task("c", AttemptEntry("h2", 2.0, 4.0, "succeeded", 0)),  # a's lane is free again
        _task(
            "d",
            AttemptEntry("h1", 0.5, 1.5, "lost"),
            AttemptEntry("h2", 3.0, 4.5, "succeeded", 0),  # b's lane is free at 3.0
        ),
    )
    trace = chrome_trace(report)
    json.dumps(trace)  # it is JSON
    names = {
        e["pid"]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "process_name"
    }
    assert sorted(names.values()) == ["h1", "h2", "idle"]  # a host with nothing is shown
    boxes = {
        (e["name"], names[e["pid"]], e["cat"]): (e["tid"], e["ts"], e["dur"])
        for e in trace["traceEvents"]
        if e["ph"] == "X"
    }
    assert boxes == {
        ("a", "h2", "succeeded"): (1, 0, 2_000_000),
        ("b", "h2", "succeeded"): (2, 1_000_000, 2_000_000),
        ("c", "h2", "succeeded"): (1, 2_000_000, 2_000_000),
        ("d", "h1", "lost"): (1, 500_000, 1_000_000),
        ("d", "h2", "succeeded"): (2, 3_000_000, 1_500_000),
    }
    lanes = [e for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"]
    assert sorted((names[e["pid"]], e["args"]["name"]) for e in lanes) == [
        ("h1", "slot 1"),
        ("h2", "slot 1"),
        ("h2", "slot 2"),
    ]


def test_the_timeline_round_trips_through_the_manifest_and_old_ones_still_read() -> None:
    timeline = (AttemptEntry("h1", 0.0, 1.25, "lost"), AttemptEntry("h2", 1.5, 2.0, "failed", 1))
    entry = TaskEntry("t", "h2", "make", "failed", 1, 2, 0.5, (), timeline)
    assert TaskEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    old = entry.to_dict()
    del old["timeline"]  # written before the timeline existed
    assert TaskEntry.from_dict(old).timeline == ()


def test_a_malformed_attempt_is_refused() -> None:
    import pytest

    from meshrun.errors import IntegrityError

    with pytest.raises(IntegrityError, match="ends before it starts"):
        AttemptEntry("h1", 2.0, 1.0, "failed")
    with pytest.raises(IntegrityError, match="outcome"):
        AttemptEntry("h1", 0.0, 1.0, "exploded")

"""What ``-v`` says about a dispatch: every line names its host, and placement, steals,
slot changes and transfers are on the record.

The scheduler reports steals (``Start.stolen_from``) and concurrency changes
(``Decisions.limit_changes``); the executor logs them with the host first. Local hosts
through the real agent subprocess; no SSH here (the SSH side is in
tests/integration/test_progress.py).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from meshrun.config.inventory import Host
from meshrun.config.tasks import parse_tasks
from meshrun.dispatch.executor import Dispatcher, DispatchOptions
from meshrun.dispatch.scheduler import (
    HostLoad,
    HostsJoined,
    HostSpec,
    LimitChanged,
    RunStarted,
    Scheduler,
    Start,
    TaskFailed,
    TaskSucceeded,
)
from meshrun.transport.local import LocalConnector

FOUR = "\n".join(f'[[task]]\nname = "{n}"\nrun = "RUN_{n}"\n' for n in "abcd")


def graph(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_tasks(text, source="tasks.toml", root=tmp_path)


def test_a_stolen_task_says_whose_queue_it_came_from(tmp_path: Path) -> None:
    # Four tasks expected at 5s each, two hosts of one slot: a and c queue on h1, b and
    # d on h2. b and d end at once, so h2 takes c from h1's queue while a still runs.
    s = Scheduler(graph(FOUR, tmp_path), dict.fromkeys("abcd", 5.0))
    assert s.handle(RunStarted(), 0.0).actions == []  # no host yet
    first = s.handle(HostsJoined((HostSpec("h1", 1), HostSpec("h2", 1))), 0.0).actions
    assert first == [Start("a", "h1", 1), Start("b", "h2", 1)]
    assert s.handle(TaskSucceeded("b", "h2", 0.1), 0.1).actions == [Start("d", "h2", 1)]
    assert s.handle(TaskSucceeded("d", "h2", 0.1), 0.2).actions == [Start("c", "h2", 1, "h1")]


def test_concurrency_changes_are_reported_with_why(tmp_path: Path) -> None:
    s = Scheduler(graph(FOUR, tmp_path), dict.fromkeys("abcd", 5.0))
    s.handle(RunStarted(), 0.0)
    joined = s.handle(HostsJoined((HostSpec("h1", 4),)), 0.0)
    assert len(joined.actions) == 4
    assert joined.limit_changes == []
    changes = s.handle(HostLoad("h1", 9.5, 2), 1.0).limit_changes
    failed = TaskFailed("a", "h1", None, "timed out after 1s", infrastructure=True)
    changes += s.handle(failed, 10.0).limit_changes
    changes += s.handle(TaskSucceeded("b", "h1", 1.0), 11.0).limit_changes
    assert changes == [
        LimitChanged("h1", 4, 2, "load 9.5 above its 2 CPUs"),
        LimitChanged("h1", 2, 1, "a: timed out after 1s"),
        LimitChanged("h1", 1, 2, "b succeeded"),
    ]
    # Said once, by the event that caused it: an event that changes nothing says nothing.
    assert s.handle(HostLoad("h1", 0.5, 2), 11.5).limit_changes == []
    changes = s.handle(TaskSucceeded("c", "h1", 1.0), 12.0).limit_changes
    changes += s.handle(TaskSucceeded("d", "h1", 1.0), 13.0).limit_changes
    # Back at its slots: a success changes nothing more, and says nothing.
    assert [c.after for c in changes] == [3, 4]


def local(name: str, tmp_path: Path, slots: int) -> Host:
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return Host(name=name, local=True, workdir=str(workdir), slots=slots)


HOST_FIRST = re.compile(r"^(n1|n2): ")


def test_the_executor_logs_placement_steals_and_slot_changes_naming_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = """
[[task]]
name = "a"
run = "sleep 1.5"

[[task]]
name = "b"
run = "true"

[[task]]
name = "c"
run = "true"

[[task]]
name = "d"
run = "true"
"""
    d = Dispatcher(
        graph=graph(tasks, tmp_path),
        hosts=[local("n1", tmp_path, 1), local("n2", tmp_path, 1)],
        connector=LocalConnector(),
        run_id="r1",
        run_dir=tmp_path / "run",
        expected_s=dict.fromkeys("abcd", 5.0),
        options=DispatchOptions(sync=False),
    )
    with caplog.at_level(logging.INFO, logger="meshrun.dispatch.executor"):
        report = d.run()
    by_task = {t.name: t for t in report.tasks}
    assert by_task["c"].host == "n2", "the scenario needs c stolen by n2"
    messages = [r.getMessage() for r in caplog.records if r.name == "meshrun.dispatch.executor"]
    assert messages, "expected -v records from the executor"
    unnamed = [m for m in messages if not HOST_FIRST.match(m)]
    assert unnamed == [], f"every line should start with its host: {unnamed}"
    for name in ("n1", "n2"):
        assert f"{name}: ready (agent runner, 1 slot)" in messages, messages
    for task in ("a", "b", "d"):
        assert f"{by_task[task].host}: starts {task} (attempt 1)" in messages, messages
    assert "n2: starts c (attempt 1, taken from n1's queue)" in messages, messages


def test_slot_changes_are_logged_naming_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = """
[[task]]
name = "hang"
run = "sleep 30"
timeout = "0.3s"
retries = 0

[[task]]
name = "after"
run = "true"
needs = ["hang"]

[[task]]
name = "ok"
run = "sleep 0.5"
"""
    d = Dispatcher(
        graph=graph(tasks, tmp_path),
        hosts=[local("n1", tmp_path, 2)],
        connector=LocalConnector(),
        run_id="r1",
        run_dir=tmp_path / "run",
        expected_s={"hang": 5.0, "ok": 1.0},
        options=DispatchOptions(sync=False),
    )
    with caplog.at_level(logging.INFO, logger="meshrun.dispatch.executor"):
        d.run()
    messages = [r.getMessage() for r in caplog.records if r.name == "meshrun.dispatch.executor"]
    assert "n1: slots 2 -> 1: hang: timed out after 0.3s; its processes were killed" in messages
    assert "n1: slots 1 -> 2: ok succeeded" in messages, messages

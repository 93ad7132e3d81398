"""Hosts that join or leave while a dispatch runs (what ``--discover`` feeds in).

Local hosts through the real agent subprocess; no SSH and no zeroconf here.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from meshrun.config.inventory import Host
from meshrun.config.tasks import parse_tasks
from meshrun.dispatch.executor import (
    Dispatcher,
    DispatchEvent,
    DispatchOptions,
    DispatchReport,
    Notice,
    TaskStarted,
)
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.transport.local import LocalConnector


def dispatcher(
    tmp_path: Path,
    tasks: str,
    hosts: list[Host],
    expected_s: dict[str, float] | None = None,
    **options: object,
) -> Dispatcher:
    graph = parse_tasks(tasks, source="tasks.toml", root=tmp_path)
    return Dispatcher(
        graph=graph,
        hosts=hosts,
        connector=LocalConnector(),
        run_id="r1",
        run_dir=tmp_path / "run",
        expected_s=expected_s or {},
        options=DispatchOptions(sync=False, **options),  # type: ignore[arg-type]
    )


def local(name: str, tmp_path: Path) -> Host:
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return Host(name=name, local=True, workdir=str(workdir))


def run_in_thread(d: Dispatcher) -> tuple[threading.Thread, list[DispatchReport]]:
    out: list[DispatchReport] = []
    thread = threading.Thread(target=lambda: out.append(d.run()), daemon=True)
    thread.start()
    return thread, out


TWO = """
[[task]]
name = "a"
run = "echo a"

[[task]]
name = "b"
run = "echo b"
needs = ["a"]
"""


def test_tasks_wait_for_a_host_that_appears_during_the_run(tmp_path: Path) -> None:
    d = dispatcher(tmp_path, TWO, [], wait_for_hosts_s=30.0)
    thread, out = run_in_thread(d)
    thread.join(0.5)
    assert thread.is_alive(), "with no host yet the run must wait, not give up"
    d.add_host(local("late", tmp_path))
    thread.join(20)
    (report,) = out
    assert report.exit_code == 0
    assert {t.name: (t.status, t.host) for t in report.tasks} == {
        "a": (TaskStatus.SUCCEEDED, "late"),
        "b": (TaskStatus.SUCCEEDED, "late"),
    }


def test_without_a_wait_and_without_hosts_the_run_ends_with_exit_3(tmp_path: Path) -> None:
    report = dispatcher(tmp_path, TWO, []).run()
    assert report.exit_code == 3
    assert {t.status for t in report.tasks} == {TaskStatus.CANCELLED, TaskStatus.SKIPPED}


def test_a_host_that_leaves_is_lost_and_its_task_finishes_on_a_newcomer(tmp_path: Path) -> None:
    tasks = """
[[task]]
name = "t"
run = 'if [ "$MESHRUN_HOST" = first ]; then sleep 30; fi; echo done'
"""
    started = threading.Event()

    def observe(event: DispatchEvent) -> None:
        if isinstance(event, TaskStarted) and event.host == "first":
            started.set()

    d = dispatcher(tmp_path, tasks, [local("first", tmp_path)])
    d.observer = observe
    thread, out = run_in_thread(d)
    assert started.wait(10), "the task never started on the first host"
    d.add_host(local("second", tmp_path))
    d.remove_host("first", "its agent left the network")
    d.remove_host("never-heard-of", "ignored")
    thread.join(20)
    (report,) = out
    assert report.exit_code == 0
    (t,) = report.tasks
    # The attempt lost with its host counts and is in the timeline (issue 11: it was
    # visible only in the log, and attempts stayed 1).
    assert (t.status, t.host, t.attempts) == (TaskStatus.SUCCEEDED, "second", 2)
    assert [(a.host, a.outcome) for a in t.timeline] == [
        ("first", "lost"),
        ("second", "succeeded"),
    ]
    lost, done = t.timeline
    assert lost.start_s <= lost.end_s <= done.start_s <= done.end_s
    hosts = {h.name: (h.status, h.error) for h in report.hosts}
    assert hosts["first"] == ("lost", "its agent left the network")
    assert hosts["second"][0] == "ok"


def test_a_much_faster_host_that_joins_takes_over_a_long_running_task(tmp_path: Path) -> None:
    tasks = """
[[task]]
name = "long"
run = 'if [ "$MESHRUN_HOST" = slow ]; then sleep 30; fi; echo done on $MESHRUN_HOST'
"""
    started = threading.Event()
    notices: list[str] = []

    def observe(event: DispatchEvent) -> None:
        if isinstance(event, TaskStarted) and event.host == "slow":
            started.set()
        if isinstance(event, Notice):
            notices.append(event.text)

    slow = local("slow", tmp_path)
    # Known from history: a 40 s task on a weight-1 host.
    d = dispatcher(tmp_path, tasks, [slow], expected_s={"long": 40.0})
    d.observer = observe
    thread, out = run_in_thread(d)
    assert started.wait(10), "the task never started on the slow host"
    d.add_host(replace(local("fast", tmp_path), weight=4.0))
    thread.join(20)
    (report,) = out
    assert report.exit_code == 0
    (t,) = report.tasks
    assert (t.status, t.host, t.attempts) == (TaskStatus.SUCCEEDED, "fast", 2)
    assert [(a.host, a.outcome) for a in t.timeline] == [("slow", "moved"), ("fast", "succeeded")]
    assert any("moved from slow" in n for n in notices), notices


def test_a_link_that_drops_once_during_set_up_is_dialled_again_not_refused(
    tmp_path: Path,
) -> None:
    """It connected, then the link dropped while the agent started: one more try."""
    from meshrun.errors import HostUnreachable
    from meshrun.transport.local import LocalConnection

    drops = {"left": 1}

    class DropsOnce(LocalConnection):
        def open_process(self, command: str):  # type: ignore[no-untyped-def]
            if drops["left"]:
                drops["left"] -= 1
                raise HostUnreachable(self.host.name, "could not open an SSH channel: EOFError")
            return super().open_process(command)

    class Connector(LocalConnector):
        def connect(self, host: Host) -> LocalConnection:
            return DropsOnce(host)

    d = dispatcher(tmp_path, TWO, [local("only", tmp_path)])
    d.connector = Connector()
    report = d.run()
    assert drops["left"] == 0, "the drop was not exercised"
    assert report.exit_code == 0, report
    assert {h.name: (h.status, h.refused) for h in report.hosts} == {"only": ("ok", False)}

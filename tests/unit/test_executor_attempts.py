"""Attempts: how each start of a task on a host ends (success, failure, timeout, stop,
a lost link) and is retried, first on its own with a made-up clock, then through whole
dispatch runs on the in-memory connector (no process, no SSH)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from fake_console import Clock

from meshrun.agent.client import RunnerEvent, RunnerGone, TaskExited
from meshrun.config.inventory import Host
from meshrun.config.tasks import parse_tasks
from meshrun.dispatch.executor import (
    STOP_GRACE_S,
    Dispatcher,
    DispatchEvent,
    DispatchOptions,
    DispatchReport,
    TaskEnded,
)
from meshrun.dispatch.executor import hosts as hosts_module
from meshrun.dispatch.executor.attempts import Attempts
from meshrun.dispatch.executor.clock import RunClock
from meshrun.dispatch.scheduler import Start, TaskFailed, TaskStatus, TaskSucceeded
from meshrun.errors import HostUnreachable
from meshrun.testing.fake import STOPPED_EXIT, FakeConnector, Responder, Scripted

TASKS = """
[[task]]
name = "a"
run = "make a"

[[task]]
name = "slow"
run = "make slow"
timeout = "5s"
"""


class StubRunner:
    host = "h1"
    cpus = 1
    kind = "exec"

    def __init__(self) -> None:
        self.ran: list[tuple[str, str, Mapping[str, str]]] = []
        self.cancelled: list[str] = []

    def run(self, task_id: str, command: str, cwd: str, env: Mapping[str, str]) -> None:
        self.ran.append((task_id, command, env))

    def flush(self) -> None:
        """Nothing is held back."""

    def cancel(self, task_id: str) -> None:
        self.cancelled.append(task_id)

    def request_load(self) -> None:
        """No load here."""

    def close(self) -> None:
        """Nothing to close."""


def attempts(tmp_path: Path) -> tuple[Attempts, Clock, list[RunnerEvent]]:
    clock = Clock(50.0)
    run_clock = RunClock(read=clock)
    run_clock.start()
    put: list[RunnerEvent] = []
    made = Attempts(
        parse_tasks(TASKS, source="tasks.toml", root=tmp_path),
        run_id="r1",
        default_timeout_s=None,
        logs_dir=tmp_path,
        clock=run_clock,
        put=put.append,
    )
    return made, clock, put


def test_an_attempt_has_a_unique_id_a_log_and_the_task_environment(tmp_path: Path) -> None:
    made, clock, _ = attempts(tmp_path)
    runner = StubRunner()
    first, attempt = made.open(Start("a", "h1", 1), weight=2.0)
    second, _ = made.open(Start("slow", "h2", 1, stolen_from="h1"), weight=1.0)
    assert (first, second) == ("a#1", "slow#2")  # never reused: late reports match nothing
    made.launch(first, attempt, runner, "/w")
    assert runner.ran == [
        (
            "a#1",
            "make a",
            {
                "MESHRUN_HOST": "h1",
                "MESHRUN_RUN_ID": "r1",
                "MESHRUN_TASK": "a",
                "MESHRUN_ATTEMPT": "1",
            },
        )
    ]
    clock.now += 4.0
    end = made.exited(TaskExited("h1", "a#1", 0))
    assert end is not None and end.outcome == TaskSucceeded("a", "h1", 4.0)
    assert made.learned == {"a": 8.0}  # 4 s on a host twice as fast as weight 1
    made.record(end.attempt, "succeeded", 0, end.duration_s)
    assert [(e.host, e.start_s, e.end_s, e.outcome) for e in made.timeline["a"]] == [
        ("h1", 0.0, 4.0, "succeeded")
    ]
    made.close_logs()  # slow#2 never ran
    assert (tmp_path / "a.log").read_text() == (
        "# meshrun: attempt 1 on h1: make a\n\n# meshrun: exit 0 after 4.00s\n"
    )


class BrokenLink(StubRunner):
    """Starts are held back for the end of the turn; sending them finds the link gone."""

    def flush(self) -> None:
        raise HostUnreachable("h1", "the agent channel is closed")


def test_starts_go_out_once_per_turn_and_a_broken_link_loses_the_host(tmp_path: Path) -> None:
    made, _, put = attempts(tmp_path)
    flushed: list[str] = []
    runner = StubRunner()
    runner.flush = lambda: flushed.append("h1")  # type: ignore[method-assign]
    for task in ("a", "slow"):
        task_id, attempt = made.open(Start(task, "h1", 1), 1.0)
        assert made.launch(task_id, attempt, runner, "/w") is None
    made.flush()
    made.flush()  # nothing new: nothing sent
    assert flushed == ["h1"]  # both starts in one send
    task_id, attempt = made.open(Start("a", "h1", 2), 1.0)
    made.launch(task_id, attempt, BrokenLink(), "/w")
    made.flush()
    assert put == [RunnerGone("h1", "h1: the agent channel is closed")]


def test_how_an_attempt_ended_is_what_the_scheduler_hears(tmp_path: Path) -> None:
    made, _, _ = attempts(tmp_path)
    failed, _ = made.open(Start("a", "h1", 1), 1.0)
    end = made.exited(TaskExited("h1", failed, 2))
    assert end is not None and end.outcome == TaskFailed("a", "h1", 2, "exit code 2", False)
    stopped, attempt = made.open(Start("a", "h1", 2), 1.0)
    attempt.cancelled = True
    end = made.exited(TaskExited("h1", stopped, STOPPED_EXIT))
    assert end is not None and (end.outcome, end.lost) == (None, False)  # moved or cancelled
    lost, _ = made.open(Start("a", "h1", 3), 1.0)
    assert made.exited(TaskExited("h2", lost, 0)) is None  # not from its host: ignored
    end = made.exited(TaskExited("h1", lost, None, "the connection was lost"))
    assert end is not None and (end.outcome, end.lost) == (None, True)  # a RunnerGone follows
    assert made.exited(TaskExited("h1", lost, 0)) is None  # it ended already
    assert made.running == {}


def test_a_timed_out_attempt_is_stopped_and_fails_as_distress(tmp_path: Path) -> None:
    made, clock, put = attempts(tmp_path)
    runner = StubRunner()
    task_id, attempt = made.open(Start("slow", "h1", 1), 1.0)
    made.launch(task_id, attempt, runner, "/w")
    assert made.next_deadline() == clock.now + 5.0
    clock.now += 4.9
    made.check_deadlines(lambda host: runner)
    assert runner.cancelled == []
    clock.now += 0.1
    made.check_deadlines(lambda host: runner)
    assert runner.cancelled == ["slow#1"] and attempt.timed_out
    assert made.next_deadline() is None  # nothing more to wait for
    clock.now += STOP_GRACE_S + 1
    made.check_deadlines(lambda host: runner)  # the host does not even answer a kill
    assert put == [RunnerGone("h1", f"did not stop a task within {STOP_GRACE_S:g}s; it seems hung")]
    end = made.exited(TaskExited("h1", task_id, STOPPED_EXIT))
    assert end is not None
    assert end.outcome == TaskFailed(
        "slow", "h1", STOPPED_EXIT, "timed out after 5s; its processes were killed", True
    )
    made.close_logs()
    assert "# meshrun: timed out after 5s: killed, exit 143" in (tmp_path / "slow.log").read_text()


def test_attempts_on_a_lost_host_end_there(tmp_path: Path) -> None:
    made, clock, _ = attempts(tmp_path)
    made.open(Start("a", "h1", 1), 1.0)
    made.open(Start("slow", "h2", 1), 1.0)
    clock.now += 2.0
    made.lose_host("h1", "stopped answering")
    assert [a.task for a in made.running.values()] == ["slow"]
    made.close_logs()
    assert [(e.host, e.outcome) for e in made.timeline["a"]] == [("h1", "lost")]
    assert "# meshrun: h1 was lost: stopped answering" in (tmp_path / "a.log").read_text()


# -- whole runs on the in-memory connector ------------------------------------------------


@pytest.fixture
def every_host_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run starts once every host is ready, however long connecting takes here
    (the scenario needs both hosts from the start)."""
    monkeypatch.setattr(hosts_module, "GATHER_S", 3600.0)


def run(
    tmp_path: Path,
    tasks: str,
    script: Mapping[str, Scripted | list[Scripted]] | Responder,
    hosts: int = 2,
    cpus: int = 1,
    **options: object,
) -> tuple[DispatchReport, FakeConnector, list[DispatchEvent]]:
    connector = FakeConnector(script, cpus=cpus)
    seen: list[DispatchEvent] = []
    dispatcher = Dispatcher(
        graph=parse_tasks(tasks, source="tasks.toml", root=tmp_path),
        hosts=[Host(name=f"h{i}", workdir="~/w") for i in range(1, hosts + 1)],
        connector=connector,
        run_id="r1",
        run_dir=tmp_path / "run",
        expected_s={},
        options=DispatchOptions(sync=False, use_agent=False, **options),  # type: ignore[arg-type]
        observer=seen.append,
    )
    return dispatcher.run(), connector, seen


FLAKY = """
[[task]]
name = "flaky"
run = "make flaky"
retries = 1

[[task]]
name = "after"
run = "make after"
needs = ["flaky"]
"""


@pytest.mark.usefixtures("every_host_first")
def test_a_failed_attempt_is_retried_on_another_host(tmp_path: Path) -> None:
    script = {"make flaky": [Scripted(1, stderr=b"flaked\n"), Scripted(0, b"fine\n")]}
    report, connector, seen = run(tmp_path, FLAKY, script)
    assert report.exit_code == 0
    flaky = next(t for t in report.tasks if t.name == "flaky")
    assert (flaky.status, flaky.attempts) == (TaskStatus.SUCCEEDED, 2)
    (first, second) = flaky.timeline
    assert (first.outcome, first.exit_code, second.outcome) == ("failed", 1, "succeeded")
    assert first.host != second.host, "a retry prefers a host it did not fail on"
    attempts_env = [r.env["MESHRUN_ATTEMPT"] for r in connector.runs if r.command == "make flaky"]
    assert attempts_env == ["1", "2"]
    ended = [(e.task, e.status) for e in seen if isinstance(e, TaskEnded)]
    assert ended == [
        ("flaky", None),  # will be retried
        ("flaky", TaskStatus.SUCCEEDED),
        ("after", TaskStatus.SUCCEEDED),
    ]
    log = b"".join(flaky.log_chunks()).decode()
    assert "flaked\n" in log and "fine\n" in log


def test_a_task_past_its_timeout_is_stopped_and_its_dependents_skipped(tmp_path: Path) -> None:
    tasks = """
[[task]]
name = "hang"
run = "make hang"
timeout = "0.2s"

[[task]]
name = "after"
run = "make after"
needs = ["hang"]
"""
    report, _, _ = run(tmp_path, tasks, {"make hang": Scripted(wait=True)}, hosts=1)
    assert report.exit_code == 1
    hang, after = report.tasks
    assert (hang.status, hang.exit_code, hang.error) == (
        TaskStatus.FAILED,
        STOPPED_EXIT,
        "timed out after 0.2s; its processes were killed",
    )
    assert [e.outcome for e in hang.timeline] == ["timed out"]
    assert after.status is TaskStatus.SKIPPED


def test_fail_fast_stops_the_tasks_still_running(tmp_path: Path) -> None:
    tasks = """
[[task]]
name = "bad"
run = "make bad"

[[task]]
name = "long"
run = "make long"
"""
    script = {"make bad": Scripted(3), "make long": Scripted(wait=True)}
    report, _, seen = run(tmp_path, tasks, script, hosts=1, cpus=2, fail_fast=True)
    assert report.exit_code == 1
    by_name = {t.name: t for t in report.tasks}
    assert by_name["bad"].status is TaskStatus.FAILED
    assert by_name["long"].status is TaskStatus.CANCELLED
    assert [e.outcome for e in by_name["long"].timeline] == ["cancelled"]
    long_ended = [
        (e.status, e.error) for e in seen if isinstance(e, TaskEnded) and e.task == "long"
    ]
    assert long_ended == [(TaskStatus.CANCELLED, "cancelled")]


@pytest.mark.usefixtures("every_host_first")
def test_a_task_whose_link_drops_runs_again_on_another_host(tmp_path: Path) -> None:
    tasks = '[[task]]\nname = "t"\nrun = "make t"\n'
    script = {"make t": [Scripted(lost="stopped answering (3 keepalives unanswered)"), Scripted()]}
    report, connector, _ = run(tmp_path, tasks, script)
    assert report.exit_code == 0
    (t,) = report.tasks
    assert t.status is TaskStatus.SUCCEEDED
    ran_on = [r.host for r in connector.runs]
    assert len(ran_on) == 2 and ran_on[1] == t.host != ran_on[0]
    lost = {h.name: (h.status, h.error) for h in report.hosts}[ran_on[0]]
    assert lost == ("lost", "stopped answering (3 keepalives unanswered)")

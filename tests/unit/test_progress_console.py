"""Progress for people and for CI logs (issue 11).

On a terminal the status line is redrawn only when its text changes and names what
runs (as many as fit the width, then "+N more"); without one, a plain progress line
with the same facts comes at an interval, so a CI log is never silent for minutes.
A fake clock drives time: no sleeps, no timing assertions.
"""

from __future__ import annotations

import io
import logging
import re

import pytest
from cli_runner import run_cli
from fake_console import ERASE, Clock, Tty

from meshrun.cli.console import (
    ConsoleLogHandler,
    DispatchConsole,
    FleetConsole,
    OutputMode,
    clock_text,
    pack_names,
)
from meshrun.dispatch.executor import (
    HostDown,
    HostReady,
    Progress,
    TaskEnded,
    TaskLine,
    TaskStarted,
)
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.fleet.run import HostFinished, HostOutput, HostResult, HostStarted, HostStatus, Tick

ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def drawn(err: str) -> list[str]:
    """Every status line drawn, in order (what follows each erase, up to the next)."""
    return [part.split("\n")[0] for part in err.split(ERASE)[1:] if part.split("\n")[0]]


def plain_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("meshrun: ")]


def ended(task: str, host: str = "h1") -> TaskEnded:
    return TaskEnded(task, host, TaskStatus.SUCCEEDED, 0, 1.0, None)


# -- pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "room", "expected"),
    [
        (["a", "b", "c"], 80, "a, b, c"),
        (["lint", "test-core", "build-everything"], 23, "lint, +2 more"),
        (["lint", "test-core", "build-everything"], 32, "lint, test-core, +1 more"),
        (["lint", "test-core", "build-everything"], 33, "lint, test-core, build-everything"),
        (["a-very-long-task-name", "b"], 16, "a-very…, +1 more"),  # the first is cut, not left out
        (["a-very-long-task-name", "b"], 12, "2"),  # no room for a name: how many
        ([], 10, ""),
    ],
)
def test_pack_names_keeps_as_many_as_fit_then_counts_the_rest(
    names: list[str], room: int, expected: str
) -> None:
    assert pack_names(names, room) == expected
    assert len(expected) <= room


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (5.2, "5s"), (59.6, "1m00s"), (130, "2m10s"), (3725, "1h02m")],
)
def test_clock_text_is_whole_seconds(seconds: float, text: str) -> None:
    assert clock_text(seconds) == text


# -- on a terminal -------------------------------------------------------------------------------


def test_identical_progress_snapshots_draw_the_status_line_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    err = Tty()
    console = DispatchConsole(total=3, out=io.StringIO(), err=err, clock=Clock())
    console(TaskStarted("build", "h1", 1))
    for _ in range(50):  # the executor sends a snapshot every 0.5 s
        console(Progress(0, 3, 0, (("h1", 1),), 30.0))
        console(TaskLine("build", "stdout", b"compiling\n"))  # group mode: held, not shown
    assert drawn(err.getvalue()) == ["meshrun: 0/3 done · ETA 30s · running: build"]
    console(Progress(0, 3, 0, (("h1", 1),), 29.0))  # what shows changed: drawn again
    assert drawn(err.getvalue())[1:] == ["meshrun: 0/3 done · ETA 29s · running: build"]
    assert err.getvalue().count(ERASE) == 2


def test_the_status_line_is_drawn_again_after_anything_else_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    err = Tty()
    out = io.StringIO()
    console = DispatchConsole(total=2, out=out, err=err, clock=Clock())
    console(TaskStarted("a", "h1", 1))
    console(Progress(0, 2, 0, (("h1", 1),), None))
    console(TaskLine("a", "stdout", b"hello\n"))
    console(ended("a"))  # the block goes to stdout: the status line is erased first
    assert "── a (succeeded on h1" in ESCAPE.sub("", out.getvalue())
    console(Progress(1, 2, 0, (), None))
    assert drawn(err.getvalue()) == [
        "meshrun: 0/2 done · running: a",
        "meshrun: 0/2 done",  # drawn again below the block (a no longer runs)
        "meshrun: 1/2 done",
    ]


def test_running_tasks_are_named_oldest_first_and_cut_to_the_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    err = Tty()
    console = DispatchConsole(total=40, out=io.StringIO(), err=err, clock=Clock())
    names = [f"test-shard-{i}" for i in range(1, 11)]
    for name in names:
        console(TaskStarted(name, "h1", 1))
    console(Progress(12, 40, 1, (("h1", 10),), 200.0))
    line = drawn(err.getvalue())[-1]
    assert len(line) < 80, line
    assert line == "meshrun: 12/40 done · 1 failed · ETA 3m20s · running: test-shard-1, +9 more"
    monkeypatch.setenv("COLUMNS", "60")  # narrower: no room for a name, the count stays
    console(Progress(12, 40, 1, (("h1", 10),), 200.0))
    assert drawn(err.getvalue())[-1] == "meshrun: 12/40 done · 1 failed · ETA 3m20s · running: 10"
    monkeypatch.setenv("COLUMNS", "80")
    console(ended("test-shard-1"))
    console(HostDown("h2", "gone", ever_ready=True))  # not where they run: nothing moves
    line = drawn(err.getvalue())[-1]
    assert line.endswith("running: test-shard-2, +8 more"), line
    monkeypatch.setenv("COLUMNS", "200")  # the terminal grew: more names fit
    console(Progress(13, 40, 1, (("h1", 9),), 190.0))
    line = drawn(err.getvalue())[-1]
    assert line.endswith("running: " + ", ".join(names[1:])), line
    console(HostDown("h1", "stopped answering", ever_ready=True))  # its tasks re-queued
    assert drawn(err.getvalue())[-1] == "meshrun: 13/40 done · 1 failed · ETA 3m10s"


def test_fleet_status_line_names_hosts_and_redraws_only_on_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    clock = Clock()
    err = Tty()
    console = FleetConsole(
        mode=OutputMode.GROUP, host_names=["web1", "web2", "db1"], out=io.StringIO(), err=err,
        clock=clock,
    )  # fmt: skip
    console(HostStarted("web1"))
    console(HostStarted("web2"))
    for _ in range(20):
        console(HostOutput("web1", "stdout", b"x\n"))  # group mode: held
        console(Tick())
    assert drawn(err.getvalue()) == [
        "meshrun: 0/3 done · running: web1",
        "meshrun: 0/3 done · running: web1, web2",
    ]


# -- without a terminal: the heartbeat ----------------------------------------------------------


def test_without_a_terminal_a_progress_line_comes_at_the_interval_with_the_facts() -> None:
    clock = Clock()
    err = io.StringIO()  # not a terminal
    console = DispatchConsole(
        total=40, out=io.StringIO(), err=err, clock=clock, progress_interval_s=15.0
    )
    console(Progress(11, 40, 1, (), 200.0))  # the interval starts here
    console(HostReady("h1", "agent", 4))
    console(TaskStarted("test-core", "h1", 1))
    clock.now += 10
    console(TaskStarted("lint", "h1", 1))
    console(Progress(11, 40, 1, (("h1", 2),), 190.0))
    assert plain_lines(err.getvalue()) == [], "nothing before the first interval"
    assert ERASE not in err.getvalue(), "no status line without a terminal"
    clock.now += 5
    console(Progress(12, 40, 1, (("h1", 2),), 180.0))
    assert plain_lines(err.getvalue()) == [
        "meshrun: 12/40 done, 1 failed, running: test-core (15s), lint (5s); ETA 3m00s"
    ]
    clock.now += 14.5
    console(Progress(12, 40, 1, (("h1", 2),), 180.0))
    assert len(plain_lines(err.getvalue())) == 1, "not before the next interval"
    clock.now += 0.5
    # Unchanged facts still print: a heartbeat says the run is alive.
    console(Progress(12, 40, 1, (("h1", 2),), 180.0))
    assert plain_lines(err.getvalue())[-1] == (
        "meshrun: 12/40 done, 1 failed, running: test-core (30s), lint (20s); ETA 3m00s"
    )
    console(ended("test-core"))
    console(ended("lint"))
    clock.now += 15
    console(Progress(40, 40, 1, (), None))
    assert len(plain_lines(err.getvalue())) == 2, "nothing once every task is done"


def test_the_heartbeat_counts_what_fits_and_says_when_nothing_runs() -> None:
    clock = Clock()
    err = io.StringIO()
    console = DispatchConsole(total=200, out=io.StringIO(), err=err, clock=clock)
    console(Progress(0, 200, 0, (), None))
    clock.now += 15
    console(Progress(0, 200, 0, (), None))
    assert plain_lines(err.getvalue()) == ["meshrun: 0/200 done, no host ready yet"]
    console(HostReady("h1", "agent", 64))
    for i in range(64):
        console(TaskStarted(f"shard-{i:03d}", "h1", 1))
    clock.now += 15
    console(Progress(0, 200, 0, (("h1", 64),), 600.0))
    line = plain_lines(err.getvalue())[-1]
    assert line.startswith("meshrun: 0/200 done, running: shard-000 (15s), shard-001 (15s), ")
    assert re.search(r", \+\d+ more; ETA 10m00s$", line), line
    assert len(line) <= 160, line


@pytest.mark.parametrize("interval", [0.0, None])
def test_interval_zero_turns_the_heartbeat_off(interval: float | None) -> None:
    clock = Clock()
    err = io.StringIO()
    console = DispatchConsole(
        total=2, out=io.StringIO(), err=err, clock=clock, progress_interval_s=interval
    )
    console(TaskStarted("a", "h1", 1))
    for _ in range(10):
        console(Progress(0, 2, 0, (("h1", 1),), None))
        clock.now += 60
    assert err.getvalue() == ""


def test_quiet_and_an_explicit_no_progress_print_no_heartbeat() -> None:
    for options in ({"quiet": True}, {"progress": False}):
        clock = Clock()
        err = io.StringIO()
        console = DispatchConsole(total=2, out=io.StringIO(), err=err, clock=clock, **options)  # type: ignore[arg-type]
        console(TaskStarted("a", "h1", 1))
        for _ in range(10):
            console(Progress(0, 2, 0, (("h1", 1),), None))
            clock.now += 60
        assert err.getvalue() == "", options


def test_exec_and_run_have_the_same_heartbeat_driven_by_ticks() -> None:
    clock = Clock()
    err = io.StringIO()
    console = FleetConsole(
        mode=OutputMode.GROUP,
        host_names=["web1", "web2", "db1"],
        out=io.StringIO(),
        err=err,
        clock=clock,
        progress_interval_s=15.0,
    )
    console(HostStarted("web1"))
    console(HostStarted("web2"))
    clock.now += 10
    console(HostFinished(HostResult("web2", HostStatus.FAILED, exit_code=1, duration_s=10.0)))
    console(HostStarted("db1"))
    clock.now += 4.9
    console(Tick())
    assert plain_lines(err.getvalue()) == []
    clock.now += 0.1
    console(Tick())
    assert plain_lines(err.getvalue()) == [
        "meshrun: 1/3 done, 1 failed, running: web1 (15s), db1 (5s); ETA 5s"
    ]
    clock.now += 15
    console(Tick())  # web1 overran the typical 10 s: no ETA
    assert plain_lines(err.getvalue())[-1] == (
        "meshrun: 1/3 done, 1 failed, running: web1 (30s), db1 (20s)"
    )


# -- log records and the status line ------------------------------------------------------------


def test_a_log_record_erases_the_status_line_which_comes_back_on_the_next_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    err = Tty()
    console = DispatchConsole(total=2, out=io.StringIO(), err=err, clock=Clock())
    handler = ConsoleLogHandler(err)
    handler.setFormatter(logging.Formatter("meshrun: %(levelname)s: %(message)s"))
    console(TaskStarted("a", "h1", 1))
    console(Progress(0, 2, 0, (("h1", 1),), None))
    record = logging.LogRecord(
        "meshrun.dispatch.executor", logging.INFO, "", 0, "h2: ready", (), None
    )
    handler.handle(record)
    console(Progress(0, 2, 0, (("h1", 1),), None))  # the same text: drawn again all the same
    status = "meshrun: 0/2 done · running: a"
    assert err.getvalue() == f"{ERASE}{status}{ERASE}meshrun: INFO: h2: ready\n{ERASE}{status}"


# -- the option --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["exec", "run", "dispatch"])
def test_progress_interval_is_in_the_help(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, command, "--help", columns=100)
    assert code == 0
    assert "--progress-interval DURATION" in out
    assert "0 turns it off" in " ".join(out.split())


def test_a_bad_progress_interval_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        monkeypatch, capsys, "exec", "--progress-interval", "soon", "--", "echo", "ran"
    )
    assert (code, out) == (2, "")
    assert "--progress-interval: not a duration: 'soon'" in err
    code, out, err = run_cli(
        monkeypatch, capsys, "exec", "--progress-interval", "0", "--", "echo", "ran"
    )
    assert (code, out) == (0, "local | ran\n"), err

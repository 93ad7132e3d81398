"""The in-memory connector (meshrun.testing.fake): scripted commands and a host's files,
through the same calls as a real host. No process, no socket."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from meshrun.agent.client import ExecRunner, RunnerEvent, TaskExited, start_runner
from meshrun.config.inventory import Host
from meshrun.errors import AuthError, CommandError, Interrupted
from meshrun.testing.fake import STOPPED_EXIT, FakeConnector, Scripted
from meshrun.transport.base import CommandRequest, expand_home
from meshrun.transport.files import make_dirs

H1 = Host(name="h1", workdir="~/work")


def test_a_command_takes_its_outcomes_in_order_then_keeps_the_last() -> None:
    connector = FakeConnector({"make": [Scripted(2, stderr=b"boom\n"), Scripted(0, b"ok\n")]})
    conn = connector.connect(H1)
    seen: list[tuple[str, bytes]] = []
    first = conn.run(CommandRequest("make"), on_output=lambda s, d: seen.append((s, d)))
    assert (first.exit_code, first.stderr) == (2, b"boom\n")
    assert seen == [("stderr", b"boom\n")]
    assert [conn.run(CommandRequest("make")).exit_code for _ in range(2)] == [0, 0]
    assert conn.run(CommandRequest("anything else")).exit_code == 0
    assert [r.command for r in connector.runs] == ["make"] * 3 + ["anything else"]


def test_a_waiting_command_runs_until_cancelled_or_timed_out() -> None:
    conn = FakeConnector({"sleep": Scripted(wait=True)}).connect(H1)
    cancel = threading.Event()
    cancel.set()
    stopped = conn.run(CommandRequest("sleep"), cancel=cancel)
    assert (stopped.exit_code, stopped.cancelled, stopped.timed_out) == (STOPPED_EXIT, True, False)
    late = conn.run(CommandRequest("sleep", timeout_s=0.01))
    assert (late.exit_code, late.cancelled, late.timed_out) == (STOPPED_EXIT, False, True)


def test_a_lost_link_has_no_exit_status_and_says_why() -> None:
    conn = FakeConnector({"x": Scripted(lost="stopped answering")}).connect(H1)
    out = conn.run(CommandRequest("x"))
    assert (out.exit_code, out.lost, out.lost_reason) == (None, True, "stopped answering")


def test_a_refused_host_raises_its_error_and_others_share_one_connection() -> None:
    connector = FakeConnector(refuse={"bad": AuthError("bad", "no key was accepted")})
    with pytest.raises(AuthError):
        connector.connect(Host(name="bad"))
    assert connector.connect(H1) is connector.connect(H1)
    assert connector.connects == ["bad", "h1", "h1"]


def test_without_an_agent_the_runner_runs_each_task_over_its_own_channel() -> None:
    events: list[RunnerEvent] = []
    done = threading.Event()

    def sink(event: RunnerEvent) -> None:
        events.append(event)
        if isinstance(event, TaskExited):
            done.set()

    connector = FakeConnector({"true": Scripted(0)}, cpus=6)
    runner = start_runner(connector.connect(H1), H1.workdir, sink)  # the agent is tried
    assert isinstance(runner, ExecRunner) and runner.cpus == 6
    runner.run("t#1", "true", H1.workdir, {"MESHRUN_TASK": "t"})
    assert done.wait(10)
    runner.close()
    assert events == [TaskExited("h1", "t#1", 0)]
    assert connector.runs[-1].env == {"MESHRUN_TASK": "t"}


def test_files_go_to_a_host_and_come_back(tmp_path: Path) -> None:
    connector = FakeConnector()
    conn = connector.connect(H1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"alpha")
    work = expand_home(conn, H1.workdir)
    assert work == "/home/h1/work"
    conn.put_files(tmp_path / "out", [("a.txt", 0o600)], work)
    assert connector.disk("h1").read("work/a.txt") == b"alpha"
    with conn.open_files() as files:
        assert files.stat("work/a.txt").st_size == 5
        assert [a.filename for a in files.listdir_attr("work")] == ["a.txt"]
        make_dirs(files, "/home/h1/work/deep/er", set())
        files.symlink("../a.txt", "work/deep/link")
        assert files.readlink("work/deep/link") == "../a.txt"
        with pytest.raises(OSError):
            files.rmdir("work")  # not empty
    assert files.closed
    conn.get_files(work, ["a.txt", "deep/link"], tmp_path / "back")
    assert (tmp_path / "back" / "deep" / "link").read_bytes() == b"alpha"
    with pytest.raises(CommandError, match="cannot fetch 'gone'"):
        conn.get_files(work, ["gone"], tmp_path / "back")
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        conn.get_files(work, ["a.txt"], tmp_path / "back", cancel=stop)

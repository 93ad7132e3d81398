"""``meshrun.Fleet`` on this machine and on the fake connector: values checked before any
host is contacted, results and their properties, callbacks, ``check=True``, and who
closes which connection when."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import meshrun
from meshrun import resources
from meshrun.errors import HostUnreachable
from meshrun.testing.fake import FakeConnector, Scripted


def local_hosts(tmp_path: Path, count: int) -> list[meshrun.Host]:
    hosts = []
    for i in range(1, count + 1):
        (tmp_path / f"n{i}").mkdir(parents=True, exist_ok=True)
        hosts.append(meshrun.Host(name=f"n{i}", local=True, workdir=str(tmp_path / f"n{i}")))
    return hosts


def fake_hosts(count: int) -> list[meshrun.Host]:
    return [meshrun.Host(name=f"f{i}", address="192.0.2.1") for i in range(1, count + 1)]


def test_run_reports_every_host_with_succeeded_failed_and_the_exit_code(tmp_path: Path) -> None:
    with meshrun.Fleet(local_hosts(tmp_path, 3)) as fleet:
        report = fleet.run('echo "out $MESHRUN_HOST"; echo err >&2; [ "$MESHRUN_HOST" != n2 ]')
    assert isinstance(report, meshrun.FleetReport)
    assert [h.name for h in report.succeeded] == ["n1", "n3"]
    (failed,) = report.failed
    assert (failed.name, failed.exit_code, failed.stdout, failed.stderr) == (
        "n2",
        1,
        b"out n2\n",
        b"err\n",
    )
    assert failed.status is meshrun.HostStatus.FAILED
    assert report.exit_code == meshrun.ExitCode.FAILED


def test_a_list_is_an_argv_each_word_quoted(tmp_path: Path) -> None:
    with meshrun.Fleet(local_hosts(tmp_path, 1)) as fleet:
        report = fleet.run(["printf", "%s|", "a b", "$HOME", ";"])
    assert report.results[0].stdout == b"a b|$HOME|;|"
    assert report.exit_code == 0


def test_script_uploads_and_runs_with_its_arguments(tmp_path: Path) -> None:
    script = tmp_path / "deploy.sh"
    script.write_text('#!/bin/sh\necho "deploying $1 on $MESHRUN_HOST"\n')
    with meshrun.Fleet(local_hosts(tmp_path / "hosts", 2)) as fleet:
        report = fleet.script(script, "v42", env={"STAGE": "x"})
    assert [r.stdout for r in report.results] == [
        b"deploying v42 on n1\n",
        b"deploying v42 on n2\n",
    ]
    assert report.command == "deploy.sh v42"


def test_callbacks_see_output_and_events_in_order_on_the_calling_thread(tmp_path: Path) -> None:
    chunks: list[tuple[str, str, bytes]] = []
    events: list[Any] = []
    threads: set[threading.Thread] = set()

    def on_output(host: str, stream: str, data: bytes) -> None:
        threads.add(threading.current_thread())
        chunks.append((host, stream, data))

    with meshrun.Fleet(local_hosts(tmp_path, 2)) as fleet:
        fleet.run("echo hi; echo oops >&2", on_output=on_output, on_event=events.append)
    assert threads == {threading.current_thread()}
    assert sorted(chunks) == [
        ("n1", "stderr", b"oops\n"),
        ("n1", "stdout", b"hi\n"),
        ("n2", "stderr", b"oops\n"),
        ("n2", "stdout", b"hi\n"),
    ]
    kinds = [type(e).__name__ for e in events if not isinstance(e, meshrun.Tick)]
    assert kinds.count("HostStarted") == 2 and kinds.count("HostFinished") == 2
    for name in ("n1", "n2"):  # each host: started, its output, then finished
        mine = [
            type(e).__name__
            for e in events
            if getattr(e, "name", None) == name
            or (isinstance(e, meshrun.HostFinished) and e.result.name == name)
        ]
        assert mine[0] == "HostStarted" and mine[-1] == "HostFinished"
        assert mine.count("HostOutput") >= 1


def test_check_raises_run_failed_with_the_report_and_its_exit_code(tmp_path: Path) -> None:
    with meshrun.Fleet(local_hosts(tmp_path, 2)) as fleet:
        assert fleet.run("true", check=True).exit_code == 0
        with pytest.raises(meshrun.RunFailed) as caught:
            fleet.run('[ "$MESHRUN_HOST" = n1 ]', check=True)
    error = caught.value
    assert isinstance(error, meshrun.CommandError)
    assert error.exit_code == 1
    assert [h.name for h in error.report.failed] == ["n2"]
    assert "1 of 2 hosts did not succeed: n2 (failed)" in str(error)


def test_unreachable_hosts_are_results_and_check_carries_exit_3() -> None:
    connector = FakeConnector(refuse={"f2": HostUnreachable("f2", "connection refused")})
    with meshrun.Fleet(fake_hosts(3), connector=connector) as fleet:
        report = fleet.run("uptime")
        assert [(h.name, h.status.value) for h in report.failed] == [("f2", "unreachable")]
        assert report.exit_code == meshrun.ExitCode.CONNECT
        with pytest.raises(meshrun.RunFailed) as caught:
            fleet.run("uptime", check=True)
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ({"timeout": "soon"}, ["timeout:", "'soon'", "30s"]),
        ({"timeout": -1}, ["timeout:", "positive"]),
        ({"timeout": float("nan")}, ["timeout:", "positive"]),
        ({"timeout": True}, ["timeout:"]),
        ({"parallel": 0}, ["parallel must be at least 1"]),
        ({"parallel": "4"}, ["parallel:", "whole number"]),
        ({"batch": "1,x"}, ["batch:", "'x'"]),
        ({"batch": [2, 0]}, ["batch:", "at least 1"]),
        ({"max_fail": "lots"}, ["max_fail:", "'lots'"]),
        ({"max_fail": -1}, ["max_fail:"]),
        ({"env": {"1A": "x"}}, ["env:", "'1A' is not a variable name"]),
        ({"env": ["A=1"]}, ["env:", "mapping"]),
        ({"env": {"A": "x\x00y"}}, ["NUL"]),
        ({"pull_max_bytes": "lots"}, ["pull_max_bytes", "'lots'"]),
        ({"pull": ["/etc/passwd"]}, ["pull pattern", "/etc/passwd"]),
        ({"pull_dir": "out"}, ["pull_dir needs pull patterns"]),
        ({"sign_key": "/nonexistent/key"}, ["/nonexistent/key"]),
    ],
)
def test_bad_values_are_input_errors_naming_the_keyword_before_any_host_is_contacted(
    call: dict[str, Any], words: list[str]
) -> None:
    connector = FakeConnector()
    fleet = meshrun.Fleet(fake_hosts(2), connector=connector)
    with fleet, pytest.raises(meshrun.InputError) as caught:
        fleet.run("true", **call)
    for word in words:
        assert word in str(caught.value)
    assert connector.connects == [] and connector.runs == []


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"connect_timeout": "soon"}, ["connect_timeout:", "'soon'"]),
        ({"connect_timeout": 0}, ["connect_timeout:", "positive"]),
        ({"server_alive_interval": "x"}, ["server_alive_interval:"]),
        ({"server_alive_count_max": -1}, ["server_alive_count_max must be at least 0"]),
    ],
)
def test_bad_connection_options_are_input_errors(options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(meshrun.InputError) as caught:
        meshrun.Fleet(fake_hosts(1), **options)
    for word in words:
        assert word in str(caught.value)


def test_keepalives_turn_off_with_zero_and_durations_take_text_or_seconds() -> None:
    fleet = meshrun.Fleet(fake_hosts(1), server_alive_interval=0, connect_timeout="1m30s")
    assert (fleet._alive_s, fleet._connect_timeout_s) == (0.0, 90.0)
    fleet = meshrun.Fleet(fake_hosts(1), server_alive_interval="off", connect_timeout=2.5)
    assert (fleet._alive_s, fleet._connect_timeout_s) == (0.0, 2.5)


def test_hosts_must_be_hosts() -> None:
    with pytest.raises(meshrun.InputError, match=r"meshrun\.Host"):
        meshrun.Fleet(["web1"])  # type: ignore[list-item]


def test_from_inventory_reads_inline_lists_and_limits_as_one_pattern_or_several() -> None:
    spec = "web1,web2,db1"
    assert [h.name for h in meshrun.Fleet.from_inventory(spec).hosts] == ["web1", "web2", "db1"]
    assert [h.name for h in meshrun.Fleet.from_inventory(spec, limit="web*").hosts] == [
        "web1",
        "web2",
    ]
    both = meshrun.Fleet.from_inventory(spec, limit=["web*,db1", "!web2"]).hosts
    assert [h.name for h in both] == ["web1", "db1"]
    with pytest.raises(meshrun.InventoryError):
        meshrun.Fleet.from_inventory(spec, limit="nothing*")
    (local,) = meshrun.Fleet.from_inventory().hosts
    assert local.local


def test_two_calls_in_one_with_share_the_connections_and_exit_closes_them() -> None:
    connector = FakeConnector()
    with meshrun.Fleet(fake_hosts(3), connector=connector) as fleet:
        fleet.run("one")
        fleet.run("two")
        assert connector.released == []  # each host's connection stayed for the next call
        assert not connector.closed
    assert connector.closed
    assert [r.command for r in connector.runs].count("two") == 3


def test_keep_connections_false_releases_each_host_when_done_as_the_cli_does() -> None:
    connector = FakeConnector()
    with meshrun.Fleet(fake_hosts(3), connector=connector, keep_connections=False) as fleet:
        fleet.run("one")
    assert sorted(connector.released) == ["f1", "f2", "f3"]


def test_connections_are_released_when_they_would_not_all_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resource budget decides: too few descriptors for every host's connection
    at once, so each goes as soon as its host is done (at most --parallel held)."""
    connector = FakeConnector()
    hosts = fake_hosts(40)
    fleet = meshrun.Fleet(hosts, connector=connector)
    free = resources.RESERVE_FDS + 8 * resources.EXEC_FDS_PER_HOST + 40
    monkeypatch.setattr(resources, "fds_available", lambda: free)
    assert fleet._keeps(8, resources.EXEC_FDS_PER_HOST, 3) is False
    monkeypatch.setattr(resources, "fds_available", lambda: free + 100)
    assert fleet._keeps(8, resources.EXEC_FDS_PER_HOST, 3) is True
    monkeypatch.setattr(resources, "fds_available", lambda: free)
    with fleet:
        fleet.run("true", parallel=8)
    assert sorted(connector.released) == sorted(h.name for h in hosts)


def test_an_exception_inside_the_with_closes_every_connection() -> None:
    connector = FakeConnector()
    fleet = meshrun.Fleet(fake_hosts(2), connector=connector)
    with pytest.raises(RuntimeError, match="boom"), fleet:
        fleet.run("true")
        raise RuntimeError("boom")
    assert connector.closed


def test_pull_runs_nothing_and_brings_the_files_home(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path / "hosts", 2)
    for host in hosts:
        (Path(host.workdir) / "logs").mkdir()
        (Path(host.workdir) / "logs" / "a.log").write_text(host.name)
    with meshrun.Fleet(hosts, state_dir=tmp_path / "state") as fleet:
        report = fleet.pull("logs/*.log", into=tmp_path / "out")
    assert report.exit_code == 0, report.failed
    assert report.command == ""
    assert [(r.exit_code, r.stdout, [f.path for f in r.files]) for r in report.results] == [
        (None, b"", ["logs/a.log"]),
        (None, b"", ["logs/a.log"]),
    ]
    assert (tmp_path / "out" / "n2" / "logs" / "a.log").read_text() == "n2"
    assert report.run_dir is not None and Path(report.run_dir, "manifest.json").is_file()


def test_pull_of_nothing_that_matches_fails_the_host(tmp_path: Path) -> None:
    with meshrun.Fleet(local_hosts(tmp_path / "hosts", 1), state_dir=tmp_path / "s") as fleet:
        report = fleet.pull(["logs/*.log"], into=tmp_path / "out")
    assert report.exit_code == 1
    assert "logs/*.log" in (report.failed[0].error or "")


def test_a_job_with_nothing_to_do_is_refused() -> None:
    with pytest.raises(meshrun.InputError, match="nothing to do"):
        meshrun.FleetJob()
    with pytest.raises(meshrun.InputError, match="not both"):
        meshrun.FleetJob(command="x", script=meshrun.Script("s", b""))
    with pytest.raises(meshrun.InputError, match="no patterns"):
        meshrun.Fleet(fake_hosts(1)).pull([])


def test_probe_reports_reachable_and_unreachable_hosts() -> None:
    connector = FakeConnector(
        {"*": Scripted()}, refuse={"f1": HostUnreachable("f1", "connection refused")}
    )
    with meshrun.Fleet(fake_hosts(2), connector=connector) as fleet:
        report = fleet.probe()
    assert [p.name for p in report.failed] == ["f1"]
    assert [p.name for p in report.succeeded] == ["f2"]
    assert report.exit_code == meshrun.ExitCode.CONNECT
    assert connector.released == []


def test_dispatch_runs_a_task_file_here_and_check_raises_for_a_failed_task(
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(
        '[[task]]\nname = "a"\nrun = "echo a > a.txt"\noutputs = ["a.txt"]\n\n'
        '[[task]]\nname = "b"\nrun = "cat a.txt && exit 3"\nneeds = ["a"]\n'
    )
    events: list[Any] = []
    with meshrun.Fleet.from_inventory() as fleet:
        report = fleet.dispatch(tasks, junit=tmp_path / "junit.xml", on_event=events.append)
        assert isinstance(report, meshrun.DispatchReport)
        assert [t.name for t in report.succeeded] == ["a"]
        assert [(t.name, t.exit_code) for t in report.failed] == [("b", 3)]
        assert report.exit_code == 1
        assert (tmp_path / "junit.xml").is_file()
        assert any(isinstance(e, meshrun.TaskEnded) for e in events)
        assert Path(report.run_dir).parent.parent == tmp_path / ".meshrun"
        with pytest.raises(meshrun.RunFailed) as caught:
            fleet.dispatch(tasks, rerun_failed=True, check=True)
    assert caught.value.exit_code == 1
    rerun = caught.value.report
    assert isinstance(rerun, meshrun.DispatchReport)
    assert [t.name for t in rerun.tasks] == ["b"]  # the rerun: b alone


def test_dispatch_takes_a_loaded_graph_and_checks_its_options(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[task]]\nname = "a"\nrun = "true"\n')
    graph = meshrun.load_tasks(str(tasks))
    with meshrun.Fleet.from_inventory() as fleet:
        assert fleet.dispatch(graph, check=True).exit_code == 0
        cases: list[tuple[dict[str, Any], str]] = [
            ({"timeout": "soon"}, "timeout:"),
            ({"fail_fast": True, "keep_going": True}, "contradict"),
            ({"rerun_failed": True, "resume": "x"}, "pass one"),
            ({"workdir_max_age": "old"}, "workdir_max_age:"),
            ({"max_fail": -1}, "max_fail"),
        ]
        for bad, word in cases:
            with pytest.raises(meshrun.InputError, match=word):
                fleet.dispatch(graph, **bad)


def test_a_second_call_while_one_runs_is_refused_at_once(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 1)
    go = tmp_path / "go"
    with meshrun.Fleet(hosts) as fleet:
        first: dict[str, Any] = {}
        waiting = threading.Thread(
            target=lambda: first.update(
                report=fleet.run(f"while [ ! -e {go} ]; do sleep 0.02; done; echo first")
            )
        )
        waiting.start()
        try:
            deadline = time.monotonic() + 30
            while not fleet._calling.locked():  # the first call has begun
                assert time.monotonic() < deadline, "the first call never started"
                time.sleep(0.01)
            for second in (lambda: fleet.run("true"), fleet.probe):
                with pytest.raises(RuntimeError, match="one call at a time"):
                    second()
        finally:
            go.touch()
            waiting.join(30)
        assert first["report"].results[0].stdout == b"first\n"
        assert fleet.run("echo again").results[0].stdout == b"again\n"  # free again

"""The coordinator loop, on several local hosts: real processes, no SSH."""

import io
import time
from pathlib import Path

import pytest

from meshrun import FailureBudget, FleetJob, Host, HostStatus, Script, batch_sizes, run_fleet
from meshrun.cli.console import FleetConsole, OutputMode
from meshrun.fleet.run import FleetEvent, HostFinished, HostStarted
from meshrun.transport.local import LocalConnector


def local_hosts(tmp_path: Path, count: int) -> list[Host]:
    return [
        Host(name=f"n{i}", local=True, workdir=str(tmp_path / f"n{i}")) for i in range(1, count + 1)
    ]


def run(hosts: list[Host], job: FleetJob, events: list[FleetEvent] | None = None):  # type: ignore[no-untyped-def]
    seen = events if events is not None else []
    return run_fleet(hosts, job, LocalConnector(), run_id="r-1", observer=seen.append)


def test_every_host_runs_in_its_workdir_with_its_env(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 3)
    report = run(
        hosts, FleetJob(command='echo "$MESHRUN_HOST $MESHRUN_RUN_ID $X"; pwd', env={"X": "y z"})
    )
    assert report.exit_code == 0 and report.ok
    for host, result in zip(hosts, report.results, strict=True):
        assert result.status is HostStatus.OK
        assert result.stdout.decode().splitlines() == [f"{host.name} r-1 y z", host.workdir]


def test_a_failure_is_exit_1_and_the_others_still_run(tmp_path: Path) -> None:
    report = run(
        local_hosts(tmp_path, 3), FleetJob(command='[ "$MESHRUN_HOST" = n2 ] && exit 7; echo ok')
    )
    assert [r.status for r in report.results] == [HostStatus.OK, HostStatus.FAILED, HostStatus.OK]
    assert report.results[1].exit_code == 7 and report.results[1].error == "exit code 7"
    assert report.exit_code == 1


def test_batches_run_one_after_another_and_max_fail_stops_later_ones(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 6)
    events: list[FleetEvent] = []
    job = FleetJob(
        command='[ "$MESHRUN_HOST" = n2 ] && exit 1; true',
        batches=batch_sizes("1,2", 6),
        max_fail=FailureBudget.parse("0"),
    )
    report = run(hosts, job, events)
    order = [
        (type(e).__name__, getattr(e, "name", None) or e.result.name)  # type: ignore[union-attr]
        for e in events
        if isinstance(e, HostStarted | HostFinished)
    ]
    # n1 alone, then n2 and n3 together; n2 failed so n4..n6 never start.
    assert order[:2] == [("HostStarted", "n1"), ("HostFinished", "n1")]
    assert {name for kind, name in order[2:4]} == {"n2", "n3"}
    assert all(kind == "HostFinished" for kind, _ in order[4:])
    assert [r.status for r in report.results[3:]] == [HostStatus.SKIPPED] * 3
    assert "max-fail" in (report.results[3].error or "")
    assert report.exit_code == 1


def test_fail_fast_cancels_running_hosts_and_skips_the_rest(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 4)
    job = FleetJob(
        command='[ "$MESHRUN_HOST" = n1 ] && exit 2; sleep 30', parallel=3, fail_fast=True
    )
    started = time.monotonic()
    report = run(hosts, job)
    assert time.monotonic() - started < 20, "the sleepers should have been stopped"
    statuses = [r.status for r in report.results]
    assert statuses == [
        HostStatus.FAILED,
        HostStatus.CANCELLED,
        HostStatus.CANCELLED,
        HostStatus.SKIPPED,
    ]
    assert report.exit_code == 1


def test_timeout_kills_and_fails(tmp_path: Path) -> None:
    report = run(local_hosts(tmp_path, 1), FleetJob(command="sleep 30", timeout_s=0.3))
    (result,) = report.results
    assert result.status is HostStatus.FAILED and "timed out after 0.3s" in (result.error or "")
    assert result.duration_s < 10


def test_script_is_uploaded_by_content_hash_and_gets_its_args(tmp_path: Path) -> None:
    script = Script("deploy.sh", b'#!/bin/sh\necho "deploy $1 $2"\n', ("v42", "a b"))
    report = run(local_hosts(tmp_path, 2), FleetJob(script=script))
    assert [r.stdout for r in report.results] == [b"deploy v42 a b\n"] * 2
    stored = tmp_path / "n1" / ".meshrun" / "scripts" / script.remote_name
    assert stored.read_bytes() == script.content
    assert script.remote_name.endswith("-deploy.sh") and len(script.remote_name) == 26


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (OutputMode.STREAM, ["n1 | same", "n2 | same", "n3 | other"]),
        (OutputMode.FOLD, ["── n[1-2] (ok, ", "same", "── n3 (ok, ", "other"]),
    ],
)
def test_console_modes(tmp_path: Path, mode: OutputMode, expected: list[str]) -> None:
    hosts = local_hosts(tmp_path, 3)
    out, err = io.StringIO(), io.StringIO()
    console = FleetConsole(mode=mode, host_names=[h.name for h in hosts], out=out, err=err)
    report = run_fleet(
        hosts,
        FleetJob(command='[ "$MESHRUN_HOST" = n3 ] && echo other || echo same', parallel=1),
        LocalConnector(),
        run_id="r",
        observer=console,
    )
    console.finish(report)
    lines = out.getvalue().splitlines()
    if mode is OutputMode.FOLD:
        assert lines[0].startswith(expected[0]) and lines[1] == expected[1]
        assert lines[2].startswith(expected[2]) and lines[3] == expected[3]
    else:
        assert sorted(lines) == expected
    assert "3 hosts: 3 ok" in err.getvalue()


def test_summary_names_failures_with_their_stderr(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 2)
    out, err = io.StringIO(), io.StringIO()
    console = FleetConsole(mode=OutputMode.GROUP, host_names=["n1", "n2"], out=out, err=err)
    report = run_fleet(
        hosts,
        FleetJob(command='[ "$MESHRUN_HOST" = n2 ] && { echo disk full >&2; exit 5; }; true'),
        LocalConnector(),
        run_id="r",
        observer=console,
    )
    console.finish(report)
    summary = err.getvalue()
    assert "1 ok, 1 failed" in summary
    assert "n2" in summary and "exit code 5" in summary and "│ disk full" in summary


def test_a_channel_that_cannot_open_once_is_tried_again_on_a_new_connection(
    tmp_path: Path,
) -> None:
    """Nothing ran when no channel opened, so one more try cannot run anything twice;
    a link that failed during the command is not retried (it may have run)."""
    from meshrun.errors import ChannelUnavailable, HostUnreachable
    from meshrun.transport.local import LocalConnection

    failures: list[Exception] = []

    class Flaky(LocalConnection):
        def run(self, request, **kwargs):  # type: ignore[no-untyped-def]
            if failures:
                raise failures.pop()
            return super().run(request, **kwargs)

    class Connector(LocalConnector):
        def connect(self, host: Host) -> LocalConnection:
            return Flaky(host)

    (host,) = local_hosts(tmp_path, 1)
    Path(host.workdir).mkdir()
    job = FleetJob(command="echo ran >> runs.txt")
    failures.append(ChannelUnavailable(host.name, "could not open an SSH channel: EOFError"))
    report = run_fleet([host], job, Connector(), run_id="r-1")
    assert report.exit_code == 0 and not failures
    assert (Path(host.workdir) / "runs.txt").read_text() == "ran\n"  # exactly once

    failures.append(HostUnreachable(host.name, "the SSH connection failed during the command"))
    report = run_fleet([host], job, Connector(), run_id="r-2")
    assert report.exit_code == 3, "a link lost mid-command is not retried"

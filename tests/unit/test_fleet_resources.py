"""exec/run/hosts when this process runs short (descriptors, threads): hosts released
as soon as they are done, a shortage never counted against a host, hosts retried, and
a run that cannot go on stops with every host in its report. Real local processes;
the transport's classification is tested with real EMFILEs (a lowered soft limit)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshrun import FleetJob, Host, HostStatus, fleet_document, run_fleet
from meshrun.errors import ResourceExhausted
from meshrun.fleet import probe
from meshrun.fleet import run as fleet_run
from meshrun.transport.identities import IdentityFiles
from meshrun.transport.knownhosts import KnownHosts
from meshrun.transport.local import LocalConnection, LocalConnector


def _hosts(tmp_path: Path, count: int) -> list[Host]:
    hosts = [
        Host(name=f"n{i}", local=True, workdir=str(tmp_path / f"n{i}")) for i in range(1, count + 1)
    ]
    for h in hosts:
        Path(h.workdir).mkdir()
    return hosts


def _emfile(name: str) -> ResourceExhausted:
    return ResourceExhausted(
        "file descriptors (EMFILE: this process's `ulimit -n`)", f"connecting to {name}"
    )


class Short(LocalConnector):
    """Hosts in ``short`` fail to connect for want of descriptors, ``times[name]``
    times each (for ever when absent); records connects and releases."""

    def __init__(self, short: dict[str, int | None]) -> None:
        self.short = short
        self.connects: list[str] = []
        self.released: list[str] = []
        self.lock = threading.Lock()

    def connect(self, host: Host) -> LocalConnection:
        with self.lock:
            self.connects.append(host.name)
            if host.name in self.short:
                left = self.short[host.name]
                if left is None or left > 0:
                    if left is not None:
                        self.short[host.name] = left - 1
                    raise _emfile(host.name)
        return LocalConnection(host)

    def release(self, host: Host) -> None:
        with self.lock:
            self.released.append(host.name)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_run, "SHORTAGE_WAIT_S", 0.01)


def test_every_host_is_released_once_done(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, 5)
    connector = Short({})
    report = run_fleet(hosts, FleetJob(command="true", parallel=2), connector, run_id="r")
    assert report.exit_code == 0
    assert sorted(connector.released) == [h.name for h in hosts]


def test_a_host_short_of_fds_is_retried_not_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hosts = _hosts(tmp_path, 4)
    connector = Short({"n2": 2})
    job = FleetJob(command="echo ran >> runs.txt; sleep 0.2", parallel=4)
    with caplog.at_level(logging.INFO, logger="meshrun.fleet.run"):
        report = run_fleet(hosts, job, connector, run_id="r")
    assert report.exit_code == 0, report
    assert [r.status for r in report.results] == [HostStatus.OK] * 4
    assert connector.connects.count("n2") == 3
    for h in hosts:  # each ran exactly once
        assert (Path(h.workdir) / "runs.txt").read_text() == "ran\n"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "ran out of file descriptors" in warnings[0].getMessage()
    assert "running at most" in warnings[0].getMessage()
    assert report.stop_reason is None


def test_a_shortage_that_stays_stops_the_run_with_every_host_reported(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, 3)
    connector = Short({"n1": None, "n2": None, "n3": None})
    report = run_fleet(hosts, FleetJob(command="true", parallel=3), connector, run_id="r")
    assert report.exit_code == 1  # not 3: no host is at fault
    assert [r.status for r in report.results] == [HostStatus.SKIPPED] * 3
    assert report.stop_reason is not None
    assert report.stop_reason.startswith("meshrun ran out of file descriptors")
    assert all("not started: meshrun ran out" in (r.error or "") for r in report.results)
    doc = fleet_document(report)
    assert doc["stop_reason"] == report.stop_reason
    assert [h["status"] for h in doc["hosts"]] == ["skipped"] * 3
    # All three once, then one at a time until the last try.
    assert len(connector.connects) == 3 + fleet_run.SHORTAGE_TRIES - 1


def test_a_thread_that_cannot_start_puts_the_host_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = _hosts(tmp_path, 3)
    refusals = [RuntimeError("can't start new thread")]
    start = threading.Thread.start

    def starting(self: threading.Thread) -> None:
        if self.name.startswith("meshrun-host-") and refusals:
            raise refusals.pop()
        start(self)

    monkeypatch.setattr(threading.Thread, "start", starting)
    report = run_fleet(hosts, FleetJob(command="true", parallel=3), Short({}), run_id="r")
    assert report.exit_code == 0 and not refusals
    assert [r.status for r in report.results] == [HostStatus.OK] * 3


def test_a_probe_short_of_fds_is_retried_then_marked_not_probed(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, 3)
    probes = probe.probe_hosts(hosts, Short({"n2": 1}), parallel=3)
    assert all(p.reachable and p.auth_ok and not p.shortage for p in probes)
    probes = probe.probe_hosts(hosts, Short({"n3": None}), parallel=3)
    assert [p.shortage for p in probes] == [False, False, True]
    assert probes[2].error is not None and "ran out of file descriptors" in probes[2].error


@contextlib.contextmanager
def no_fds() -> Iterator[None]:
    """This process can open nothing more: the soft RLIMIT_NOFILE just above the highest
    descriptor open, and every lower free number taken (restored on leaving)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, old[1]))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_an_identity_file_unread_for_want_of_fds_is_a_shortage_not_remembered(
    tmp_path: Path,
) -> None:
    key = tmp_path / "id"
    key.write_text("not a key\n")
    files = IdentityFiles()
    with no_fds(), pytest.raises(ResourceExhausted) as caught:
        files.get(str(key))
    assert "ran out of file descriptors" in str(caught.value)
    assert "reading " + str(key) in str(caught.value)
    found = files.get(str(key))  # read again now: the shortage was not cached
    assert found.exists and found.error is not None and "Too many open files" not in found.error


def test_known_hosts_unread_for_want_of_fds_is_a_shortage_not_an_empty_file(
    tmp_path: Path,
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        "h1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    store = KnownHosts()
    with no_fds(), pytest.raises(ResourceExhausted):
        store.listed_types([str(known)], "h1")
    assert store.listed_types([str(known)], "h1") == {"ssh-ed25519"}  # read again now


def test_the_fit_warning_reads_as_one_plain_line_without_v(tmp_path: Path) -> None:
    """Under a hard open-files limit too low for 20 hosts at once, exec says so in one
    line that names the numbers, not the module it came from; with -v it does."""
    hosts = ",".join(f"root@127.0.0.{i}:9" for i in range(1, 21))  # nothing listens on 9
    command = [sys.executable, "-c", "from meshrun.cli.app import main; main()", "exec"]
    command += ["-H", hosts, "--connect-timeout", "2s", "--", "true"]

    def run(*extra: str) -> str:
        def lower() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (90, 90))

        done = subprocess.run(
            [*command[:4], *extra, *command[4:]],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lower,
            cwd=tmp_path,
        )
        return done.stderr

    plain = run()
    assert "meshrun: WARNING: --parallel (default) 20 does not fit" in plain
    assert "`ulimit -n` 90" in plain
    assert "meshrun.fleet" not in plain
    assert "meshrun: WARNING: meshrun.fleet.run: --parallel" in run("-v")

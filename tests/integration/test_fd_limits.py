"""exec/run/hosts under a low open-files limit, against real sshd.

More hosts than the limit leaves descriptors for: either every host succeeds with the
parallelism fitted to the limit (one warning line), or the run is refused before it
starts (exit 2 naming `ulimit -n` and --parallel). Never an "unreachable" host, an
"identity file" or "is sshd running" error, nor a traceback. Many hosts are alias
names: several inventory entries on each of a few real sshd processes.

The limit is set with ``prlimit --nofile=N:N`` (soft and hard, so meshrun cannot
raise it) on the real ``meshrun`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import MakeFleet
from helpers import meshrun_argv

import meshrun
from meshrun.config.hostsfile import write_hosts
from meshrun.testing.fleet import LOOPBACK, Fleet
from meshrun.transport.ssh import SSHConnector

#: Hosts in the inventory: aliases spread over the fleet's sshd processes.
ALIASES = 48

_HOST_FAULTS = ("unreachable", "identity file", "sshd running", "Traceback", "internal error")


def _aliases(fleet: Fleet, path: Path, count: int = ALIASES) -> Path:
    """``count`` inventory entries a1..aN, round-robin over the fleet's hosts."""
    entries = []
    for i in range(count):
        h = fleet.hosts[i % len(fleet.hosts)]
        entries.append(
            {"name": f"a{i + 1}", "address": LOOPBACK, "port": h.port, "workdir": h.workdir}
        )
    defaults = {"user": fleet.user, "identity": fleet.client_key, "known_hosts": fleet.known_hosts}
    return write_hosts(path, entries, defaults=defaults)


def _limited(
    nofile: int | str, argv: list[str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``argv`` under RLIMIT_NOFILE ``nofile`` (soft and hard), or "SOFT:HARD"."""
    spec = nofile if isinstance(nofile, str) else f"{nofile}:{nofile}"
    return subprocess.run(
        ["prlimit", f"--nofile={spec}", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _no_host_fault(text: str) -> None:
    for word in _HOST_FAULTS:
        assert word not in text, f"{word!r} in:\n{text}"


@pytest.fixture
def fleet3(make_fleet: MakeFleet) -> Fleet:
    return make_fleet(3)


def test_exec_on_more_hosts_than_fds_runs_every_host_fewer_at_once(
    fleet3: Fleet, tmp_path: Path
) -> None:
    inventory = _aliases(fleet3, tmp_path / "hosts.toml")
    # 96 descriptors: about 80 free at start, the reserve (64) leaves room for 2-3
    # hosts at once; holding all 48 connections (the old way) needed ~60 more.
    done = _limited(96, [*meshrun_argv(), "exec", "-H", str(inventory), "--json", "--", "echo ok"])
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {h["status"] for h in doc["hosts"]} == {"ok"}, done.stdout
    assert len(doc["hosts"]) == ALIASES
    assert all(h["stdout"] == "ok\n" for h in doc["hosts"])
    warnings = [line for line in done.stderr.splitlines() if "does not fit" in line]
    assert len(warnings) == 1, done.stderr
    assert "--parallel (default) 48 does not fit" in warnings[0]
    assert "`ulimit -n` 96" in warnings[0]
    _no_host_fault(done.stderr + done.stdout)


def test_run_with_pull_under_a_low_limit_pulls_from_every_host(
    fleet3: Fleet, tmp_path: Path
) -> None:
    inventory = _aliases(fleet3, tmp_path / "hosts.toml", count=12)
    script = tmp_path / "make.sh"
    script.write_text(
        '#!/bin/sh\nmkdir -p "out/$MESHRUN_HOST" && echo "$MESHRUN_HOST" > "out/$MESHRUN_HOST/f"\n'
    )
    done = _limited(
        128,
        [
            *meshrun_argv(),
            "run",
            "-H",
            str(inventory),
            "-p",
            "12",
            "--json",
            "--state-dir",
            str(tmp_path / "state"),
            "--pull",
            "out/*/f",
            str(script),
        ],
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {h["status"] for h in doc["hosts"]} == {"ok"}, done.stdout
    assert "--parallel 12 does not fit" in done.stderr
    _no_host_fault(done.stderr + done.stdout)


def test_a_limit_too_low_for_one_host_is_refused_before_any_host_is_contacted(
    fleet3: Fleet, tmp_path: Path
) -> None:
    inventory = _aliases(fleet3, tmp_path / "hosts.toml")
    done = _limited(
        48, [*meshrun_argv(), "exec", "-H", str(inventory), "-p", "8", "--json", "--", "true"]
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("meshrun: error: exec on 48 hosts with 1 at a time needs about")
    assert "`ulimit -n` 48" in line and "--parallel" in line
    for h in fleet3.hosts:  # nobody dialled: sshd logged no connection
        assert "Accepted publickey" not in h.log.read_text()


def test_hosts_under_a_low_limit_checks_every_host(fleet3: Fleet, tmp_path: Path) -> None:
    inventory = _aliases(fleet3, tmp_path / "hosts.toml")
    done = _limited(96, [*meshrun_argv(), "hosts", "-H", str(inventory), "--json"])
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert all(h["reachable"] and h["auth_ok"] for h in doc["hosts"]), done.stdout
    assert not any(h["not_probed"] for h in doc["hosts"])
    assert "does not fit" in done.stderr
    _no_host_fault(done.stderr)


# A run whose fitting is switched off (it believes every host fits): the real EMFILE
# that follows mid-run must be told from a host fault, and the hosts retried.
_UNFITTED = textwrap.dedent(
    """
    import sys
    from meshrun import resources
    resources.fit_parallel = lambda wanted, **kw: (wanted, None)
    from meshrun.cli.app import main
    sys.argv = ["meshrun", *sys.argv[1:]]
    main()
    """
)


def test_running_out_of_fds_mid_run_retries_the_hosts_instead_of_failing_them(
    fleet3: Fleet, tmp_path: Path
) -> None:
    inventory = _aliases(fleet3, tmp_path / "hosts.toml")
    done = _limited(
        40,
        [
            *(sys.executable, "-c", _UNFITTED, "exec", "-H", str(inventory), "--json"),
            *("--", "sleep 1; echo ok"),  # long enough for all 48 to be connected at once
        ],
    )
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads(done.stdout)
    assert {h["status"] for h in doc["hosts"]} == {"ok"}, done.stdout
    shortages = [line for line in done.stderr.splitlines() if "ran out of file descriptors" in line]
    assert len(shortages) == 1, done.stderr  # it did run out, and says so once
    assert "running at most" in shortages[0] and "ulimit -n" in shortages[0]
    _no_host_fault(done.stderr + done.stdout)


def _peaks(stop: threading.Event, out: dict[str, int]) -> None:
    while not stop.is_set():
        out["fds"] = max(out["fds"], len(os.listdir("/proc/self/fd")))
        out["threads"] = max(out["threads"], threading.active_count())
        time.sleep(0.002)


def test_parallel_bounds_the_run_s_threads_and_fds(fleet3: Fleet, tmp_path: Path) -> None:
    """-p 3 on 24 hosts: no more than 3 hosts' connections, threads and descriptors at
    once, and none left when the run is over (paramiko's threads included)."""
    hosts = meshrun.resolve_hosts(str(_aliases(fleet3, tmp_path / "hosts.toml", count=24)))
    connector = SSHConnector()
    connector.prepare(hosts)
    base_fds, base_threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    peaks = {"fds": 0, "threads": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_peaks, args=(stop, peaks), daemon=True)
    sampler.start()
    try:
        report = meshrun.run_fleet(
            hosts, meshrun.FleetJob(command="sleep 0.05", parallel=3), connector, run_id="t"
        )
        after_fds, after_threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    finally:
        stop.set()
        sampler.join()
        connector.close()
    assert report.exit_code == 0
    # 3 hosts x (worker, paramiko's reader, its handshake Timer while it dials) + the
    # sampler + the liveness monitor; all 24 at once would be 48 or more.
    assert peaks["threads"] - base_threads <= 3 * 3 + 2, peaks
    # 3 sockets (+ the ssh-agent socket of a dial, the listdir's own).
    assert peaks["fds"] - base_fds <= 3 * 2 + 2, peaks
    assert after_threads - base_threads <= 2  # the sampler and the liveness monitor
    assert after_fds - base_fds <= 1


def test_the_soft_limit_is_raised_to_the_hard_one_at_start(fleet3: Fleet, tmp_path: Path) -> None:
    """A soft limit of 96 under a hard one of 4096 (most shells: 1,024 under far more):
    meshrun takes the hard limit, so all 48 hosts run at once, with no warning."""
    inventory = _aliases(fleet3, tmp_path / "hosts.toml")
    argv = [*meshrun_argv(), "exec", "-H", str(inventory), "-p", "48", "--json", "--", "echo ok"]
    done = _limited("96:4096", argv)
    assert done.returncode == 0, done.stderr
    assert {h["status"] for h in json.loads(done.stdout)["hosts"]} == {"ok"}
    assert "does not fit" not in done.stderr
    _no_host_fault(done.stderr)

"""Hosts that stop answering mid-run (SIGSTOPped sshd: TCP stays up, nothing comes
back): keepalives that want a reply find them, like OpenSSH's ServerAliveInterval /
ServerAliveCountMax, and the run goes on without them — no task timeout, no --timeout.

Short intervals (1 s x 2: a silent host is given up after about 3 s) keep the tests
quick; the bounds asserted are generous (a hang would be minutes, or forever).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Pause
from dispatch_helpers import (
    finish_when_running,
    spawn_dispatch,
    task_statuses,
    tasks_of,
    wait_host_runs,
    write_project,
)
from helpers import marker_seconds, spawn_meshrun

from meshrun.config.inventory import load_inventory
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector

MakeFleet = Callable[..., Fleet]

FAST = ("--server-alive-interval", "1", "--server-alive-count-max", "2")
#: A run must end well within this once a host stops answering (about 3 s with FAST).
BOUND_S = 60.0


@pytest.mark.parametrize(
    "flags", [pytest.param([], id="agent"), pytest.param(["--no-agent"], id="exec")]
)
def test_dispatch_requeues_the_tasks_of_a_host_that_stops_answering(
    make_fleet: MakeFleet,
    tmp_path: Path,
    flags: list[str],
    pause: Pause,
) -> None:
    fleet = make_fleet(3)
    marker = marker_seconds(1)
    tasks = [{"name": f"t{i:02d}", "run": f"sleep {marker}"} for i in range(1, 10)]
    tasks_file = write_project(tmp_path / "proj", tasks)  # no timeout anywhere

    proc = spawn_dispatch(tasks_file, fleet.hosts_toml, *FAST, *flags)
    r = finish_when_running(proc, fleet, "h1", marker, pause, timeout_s=BOUND_S)

    assert r.rc == 0, f"expected exit 0: h1's tasks re-run on h2 and h3{r.describe()}"
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert all(t["host"] != "h1" for t in tasks_of(r).values()), r.describe()
    h1 = r.hosts["h1"]
    assert h1["status"] == "lost", f"expected h1 lost{r.describe()}"
    assert "stopped answering" in (h1["error"] or ""), h1
    assert "timed out" not in (h1["error"] or ""), h1
    assert "h1 lost: stopped answering" in r.stderr, r.describe()


def test_exec_reports_a_host_that_stops_answering_and_exits_3(
    make_fleet: MakeFleet, tmp_path: Path, pause: Pause
) -> None:
    fleet = make_fleet(3)
    marker = marker_seconds(3)
    proc = spawn_meshrun("exec", "-H", fleet.hosts_toml, "--json", *FAST, "--", f"sleep {marker}")
    r = finish_when_running(proc, fleet, "h2", marker, pause, timeout_s=BOUND_S)

    assert r.rc == 3, f"expected exit 3 for the host that stopped answering{r.describe()}"
    h2 = r.hosts["h2"]
    assert h2["status"] == "unreachable", r.describe()
    assert h2["error"] == "stopped answering (no reply to 2 keepalives in 2s)", h2
    assert {r.hosts[n]["status"] for n in ("h1", "h3")} == {"ok"}, r.describe()
    assert r.duration_s < BOUND_S


def test_exec_timeout_on_a_hung_host_does_not_claim_it_killed_anything(
    make_fleet: MakeFleet, tmp_path: Path, pause: Pause
) -> None:
    """With keepalives off, --timeout finds the hung host: no exit status comes after
    the stop request, so it is a host failure (3), not a killed command (1)."""
    fleet = make_fleet(2)
    marker = marker_seconds(3)
    argv = ["exec", "-H", fleet.hosts_toml, "--json", "-t", "2s", "--server-alive-interval", "0"]
    proc = spawn_meshrun(*argv, "--", f"sleep {marker}; echo done")
    r = finish_when_running(proc, fleet, "h2", marker, pause, timeout_s=BOUND_S)

    assert r.rc == 3, f"expected exit 3 for the hung host{r.describe()}"
    h2 = r.hosts["h2"]
    assert h2["status"] == "unreachable", r.describe()
    assert "did not answer the request to stop it" in h2["error"], h2
    assert "were killed" not in h2["error"], h2
    assert r.hosts["h1"]["status"] == "failed", "h1 timed out normally: exit 1 alone"
    assert "its processes were killed" in r.hosts["h1"]["error"], r.describe()


def test_a_transfer_ends_when_its_host_stops_answering(make_fleet: MakeFleet, pause: Pause) -> None:
    """rsync's remote shell (the relay over the pooled connection) ends with ssh's 255
    and says why, instead of waiting for the host forever."""
    fleet = make_fleet(1)
    (host,) = load_inventory(fleet.hosts_toml)
    connector = SSHConnector(
        ssh_config_path="/nonexistent", server_alive_interval_s=1, server_alive_count_max=2
    )
    try:
        rsh = connector.rsync_ssh(host)
        marker = marker_seconds(50)
        helper = subprocess.Popen(
            [*rsh.argv, rsh.host, f"sleep {marker}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **rsh.env},
        )
        try:
            wait_host_runs(fleet, "h1", marker)
            pause(fleet, "h1")
            _, err = helper.communicate(timeout=BOUND_S)
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
    finally:
        connector.close()

    assert helper.returncode == 255, err
    assert b"stopped answering" in err, err

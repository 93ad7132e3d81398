"""Ctrl-C and a killed coordinator: exit 130, a summary, and nothing left running.

The coordinator is started in its own process group with SIGINT at its default and
the group is signalled, as a terminal does on Ctrl-C.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from helpers import (
    assert_gone,
    finish,
    interrupt,
    marker_seconds,
    spawn_meshrun,
    wait_running,
)

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]


def _running(proc: subprocess.Popen[str], argv_text: str, count: int) -> None:
    """Wait until the commands run; on failure stop the coordinator and show its output."""
    try:
        wait_running(argv_text, count)
    except AssertionError as exc:
        interrupt(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{exc}\n--- stdout ---\n{out}\n--- stderr ---\n{err}") from None


def test_ctrl_c_stops_every_host_exits_130_and_prints_the_summary(fleet4: Fleet) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--hosts", fleet4.hosts_toml, "--json", "--", f"sleep {marker}")
    _running(proc, f"sleep {marker}", 4)

    interrupt(proc, signal.SIGINT)
    r = finish(proc, timeout_s=10)
    assert r.rc == 130, f"expected exit 130 after Ctrl-C{r.describe()}"
    assert r.doc["interrupted"] is True and r.doc["exit_code"] == 130, r.describe()
    assert r.statuses() == dict.fromkeys(fleet4.names, "cancelled"), (
        f"expected every host cancelled{r.describe()}"
    )
    assert "interrupted" in r.stderr and "4 hosts: 4 cancelled" in r.stderr, (
        f"expected the interruption and the summary on stderr{r.describe()}"
    )
    assert_gone(marker, f"expected no 'sleep {marker}' left after Ctrl-C")


def _kill_and_expect_cleanup(proc: subprocess.Popen[str], marker: str, count: int) -> None:
    """SIGKILL the coordinator once ``count`` commands run; the ``sleep MARKER`` commands
    must then go (their wrappers see the connection or pipe close)."""
    _running(proc, f"sleep {marker}", count)
    interrupt(proc, signal.SIGKILL)
    rc = finish(proc, timeout_s=5).rc
    assert rc == -signal.SIGKILL, f"expected the coordinator killed, got rc {rc}"


def test_killed_coordinator_leaves_nothing_on_the_hosts(fleet4: Fleet) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--hosts", fleet4.hosts_toml, "--", f"sleep {marker}")
    _kill_and_expect_cleanup(proc, marker, 4)
    assert_gone(
        marker,
        f"expected the wrappers to kill 'sleep {marker}' once the connections dropped",
    )


def test_killed_local_coordinator_leaves_nothing(tmp_path: Path) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--", f"sleep {marker}", cwd=tmp_path)
    _kill_and_expect_cleanup(proc, marker, 1)
    assert_gone(marker, f"expected the local wrapper to kill 'sleep {marker}' when its pipe closed")


def test_ctrl_c_locally_exits_130(tmp_path: Path) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--", f"sleep {marker}", cwd=tmp_path)
    _running(proc, f"sleep {marker}", 1)

    interrupt(proc, signal.SIGINT)
    r = finish(proc, timeout_s=10)
    assert r.rc == 130, f"expected exit 130{r.describe()}"
    assert "1 host: 1 cancelled" in r.stderr, f"expected the summary on stderr{r.describe()}"
    assert_gone(marker, f"expected no 'sleep {marker}' left")


def test_second_ctrl_c_disconnects_at_once_and_the_hosts_still_clean_up(fleet4: Fleet) -> None:
    marker = marker_seconds()
    # Ignores SIGTERM: after the first Ctrl-C the wrapper waits its grace period before
    # SIGKILL, so the run is still going when the second Ctrl-C disconnects.
    proc = spawn_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, "--json", "--", f"trap '' TERM; sleep {marker}"
    )
    _running(proc, f"sleep {marker}", 4)

    interrupt(proc, signal.SIGINT)
    time.sleep(0.3)
    interrupt(proc, signal.SIGINT)
    r = finish(proc, timeout_s=10)
    assert r.rc == 130, f"expected exit 130{r.describe()}"
    assert r.duration_s < 2.0, f"expected the second Ctrl-C to end the run at once{r.describe()}"
    assert r.statuses() == dict.fromkeys(fleet4.names, "cancelled"), (
        f"expected all cancelled{r.describe()}"
    )
    assert_gone(
        marker,
        f"expected the wrappers to SIGKILL the TERM-proof 'sleep {marker}' after the disconnect",
    )


def test_second_ctrl_c_does_not_wait_for_a_hung_host(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    marker = marker_seconds()
    fleet.pause("h2")  # TCP connects, no banner: h2 stays "connecting"
    try:
        proc = spawn_meshrun(
            "exec",
            "--hosts",
            fleet.hosts_toml,
            "--json",
            "--connect-timeout",
            "4s",
            "--",
            f"sleep {marker}",
        )
        _running(proc, f"sleep {marker}", 1)  # h1 runs; h2 is still in its handshake
        interrupt(proc, signal.SIGINT)
        time.sleep(0.3)
        interrupt(proc, signal.SIGINT)
        r = finish(proc, timeout_s=15)
        assert r.rc == 130, f"expected exit 130{r.describe()}"
        assert r.duration_s < 2.0, (
            f"expected a second Ctrl-C to disconnect at once (the connect timeout is 4s)"
            f"{r.describe()}"
        )
    finally:
        fleet.resume("h2")
    assert_gone(marker, f"expected no 'sleep {marker}' left")

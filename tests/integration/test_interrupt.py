"""Ctrl-C and a killed coordinator: exit 130, a summary, and nothing left running.

The coordinator is started in its own process group with SIGINT at its default and
the group is signalled, as a terminal does on Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from helpers import (
    describe_procs,
    interrupt,
    marker_seconds,
    spawn_meshrun,
    wait_gone,
    wait_running,
)

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str, float]:
    """Wait for the coordinator; (rc, stdout, stderr, seconds waited). Kills it on timeout."""
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        interrupt(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"expected meshrun to exit within {timeout_s}s of the signal; it did not"
            f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        ) from None
    return proc.returncode, out, err, time.monotonic() - started


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
    rc, out, err, waited = _finish(proc, timeout_s=10)
    shown = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert rc == 130, f"expected exit 130 after Ctrl-C, got {rc} after {waited:.2f}s{shown}"
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["exit_code"] == 130, shown
    assert {h["name"]: h["status"] for h in doc["hosts"]} == dict.fromkeys(
        fleet4.names, "cancelled"
    ), f"expected every host cancelled{shown}"
    assert "interrupted" in err and "4 hosts: 4 cancelled" in err, (
        f"expected the interruption and the summary on stderr{shown}"
    )
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left after Ctrl-C:\n{describe_procs(left)}"


def test_killed_coordinator_leaves_nothing_on_the_hosts(fleet4: Fleet) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--hosts", fleet4.hosts_toml, "--", f"sleep {marker}")
    _running(proc, f"sleep {marker}", 4)

    interrupt(proc, signal.SIGKILL)
    rc, _, _, _ = _finish(proc, timeout_s=5)
    assert rc == -signal.SIGKILL, f"expected the coordinator killed, got rc {rc}"
    left = wait_gone(marker)
    assert not left, (
        f"expected the wrappers to kill 'sleep {marker}' once the connections dropped, "
        f"still running:\n{describe_procs(left)}"
    )


def test_killed_local_coordinator_leaves_nothing(tmp_path: Path) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--", f"sleep {marker}", cwd=tmp_path)
    _running(proc, f"sleep {marker}", 1)

    interrupt(proc, signal.SIGKILL)
    rc, _, _, _ = _finish(proc, timeout_s=5)
    assert rc == -signal.SIGKILL, f"expected the coordinator killed, got rc {rc}"
    left = wait_gone(marker)
    assert not left, (
        f"expected the local wrapper to kill 'sleep {marker}' when its pipe closed, "
        f"still running:\n{describe_procs(left)}"
    )


def test_ctrl_c_locally_exits_130(tmp_path: Path) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--", f"sleep {marker}", cwd=tmp_path)
    _running(proc, f"sleep {marker}", 1)

    interrupt(proc, signal.SIGINT)
    rc, _, err, _ = _finish(proc, timeout_s=10)
    assert rc == 130, f"expected exit 130, got {rc}\n--- stderr ---\n{err}"
    assert "1 host: 1 cancelled" in err, f"expected the summary on stderr:\n{err}"
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"


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
    rc, out, err, waited = _finish(proc, timeout_s=10)
    shown = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert rc == 130, f"expected exit 130, got {rc}{shown}"
    assert waited < 2.0, f"expected the second Ctrl-C to end the run at once, took {waited:.2f}s"
    statuses = {h["name"]: h["status"] for h in json.loads(out)["hosts"]}
    assert statuses == dict.fromkeys(fleet4.names, "cancelled"), f"expected all cancelled{shown}"
    left = wait_gone(marker)
    assert not left, (
        f"expected the wrappers to SIGKILL the TERM-proof 'sleep {marker}' after the "
        f"disconnect, still running:\n{describe_procs(left)}"
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
        rc, out, err, waited = _finish(proc, timeout_s=15)
        shown = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        assert rc == 130, f"expected exit 130, got {rc}{shown}"
        assert waited < 2.0, (
            f"expected a second Ctrl-C to disconnect at once, meshrun took {waited:.2f}s "
            f"(the connect timeout is 4s){shown}"
        )
    finally:
        fleet.resume("h2")
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"

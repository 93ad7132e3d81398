"""A CI cancel (SIGTERM) and a closed terminal (SIGHUP) end a run as Ctrl-C does.

The coordinator alone is signalled, as a CI runner signals its job's main process:
every running command is killed on the hosts, and the run still writes its summary,
report.json, manifest, history and JUnit, and exits 128 + the signal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from dispatch_helpers import kill_on_error, spawn_dispatch, task_statuses, write_project
from helpers import (
    describe_procs,
    finish,
    interrupt,
    marker_seconds,
    spawn_meshrun,
    wait_gone,
    wait_running,
)

from meshrun.testing.fleet import Fleet

STOPS = [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGHUP, 129, "hung up (SIGHUP)")]


@pytest.mark.parametrize(("signum", "code", "said"), STOPS)
def test_dispatch_stopped_by_a_signal_writes_every_record(
    fleet4: Fleet, tmp_path: Path, signum: int, code: int, said: str
) -> None:
    marker = marker_seconds()
    tasks = [
        {"name": "quick", "run": "echo done"},
        *({"name": f"t{i}", "run": f"sleep {marker}", "needs": ["quick"]} for i in range(4)),
        {"name": "later", "run": "echo x", "needs": ["t0"]},
    ]
    tasks_file = write_project(tmp_path / "proj", tasks)
    junit = tmp_path / "junit.xml"
    proc = spawn_dispatch(tasks_file, fleet4.hosts_toml, "--junit", junit)
    try:
        wait_running(f"sleep {marker}", 4)
        os.kill(proc.pid, signum)  # the coordinator only, as a CI runner does
        r = finish(proc, timeout_s=15)
    finally:
        kill_on_error(proc)

    assert r.rc == code, f"expected exit {code} after {signal.Signals(signum).name}{r.describe()}"
    assert r.doc["interrupted"] is True and r.doc["exit_code"] == code, r.describe()
    assert r.doc["signal"] == signal.Signals(signum).name, r.describe()
    statuses = task_statuses(r)
    assert statuses["quick"] == "succeeded", r.describe()
    assert {statuses[f"t{i}"] for i in range(4)} == {"cancelled"}, r.describe()
    assert said in r.stderr, f"expected {said!r} on stderr{r.describe()}"
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"

    run_dir = Path(r.doc["run_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["exit_code"] == code and report["signal"] == signal.Signals(signum).name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {t["name"]: t["status"] for t in manifest["tasks"]} == statuses
    assert "<testsuites" in junit.read_text(), "expected the JUnit report written"
    history = tasks_file.parent / ".meshrun" / "history.sqlite"
    with sqlite3.connect(history) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert names, "expected the history written"


@pytest.mark.parametrize(("signum", "code", "said"), STOPS)
def test_exec_stopped_by_a_signal_kills_every_command_and_reports(
    fleet4: Fleet, signum: int, code: int, said: str
) -> None:
    marker = marker_seconds()
    proc = spawn_meshrun("exec", "--hosts", fleet4.hosts_toml, "--json", "--", f"sleep {marker}")
    try:
        wait_running(f"sleep {marker}", 4)
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=15)
    except BaseException:
        interrupt(proc, signal.SIGKILL)
        proc.communicate()
        raise
    shown = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert proc.returncode == code, shown
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["exit_code"] == code, shown
    assert doc["signal"] == signal.Signals(signum).name, shown
    assert {h["status"] for h in doc["hosts"]} == {"cancelled"}, shown
    assert said in err and "press Ctrl-C again" in err, shown
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"


def test_a_second_signal_disconnects_at_once(fleet4: Fleet) -> None:
    """A task that ignores the stop: the second SIGTERM does not wait for it."""
    marker = marker_seconds()
    command = f"trap '' TERM INT; sleep {marker}"
    proc = spawn_meshrun("exec", "--hosts", fleet4.hosts_toml, "--json", "--", command)
    try:
        wait_running(f"sleep {marker}", 4)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        interrupt(proc, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"meshrun did not end after a second SIGTERM\n{err}") from None
    assert proc.returncode == 143, err
    assert time.monotonic() - started < 8, err
    left = wait_gone(marker, timeout_s=10)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"

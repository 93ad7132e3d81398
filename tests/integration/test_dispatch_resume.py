"""A dispatch killed outright (SIGKILL: no report, no history) can still be resumed.

The run's journal (``runs/<id>/journal.jsonl``) is written as tasks end, so
``--rerun-failed`` after the kill reruns exactly what did not succeed: the task that
failed and those that never finished, not the ones that passed.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from dispatch_helpers import dispatch, kill_on_error, spawn_dispatch, task_statuses, write_project
from helpers import interrupt, marker_seconds, wait_gone

from meshrun.testing.fleet import Fleet


def _ended(state: Path) -> dict[str, str]:
    """Task -> status, from the journals under ``state`` (the killed run has one)."""
    ended: dict[str, str] = {}
    for journal in state.glob("runs/*/journal.jsonl"):
        for line in journal.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "end":
                ended[record["task"]] = record["status"]
    return ended


def test_rerun_failed_after_a_sigkill_reruns_the_failed_and_the_unfinished(
    fleet4: Fleet, tmp_path: Path
) -> None:
    marker = marker_seconds(60)
    quick = [{"name": f"ok{i}", "run": f"echo ok{i}"} for i in range(4)]
    long = [{"name": f"long{i}", "run": f"sleep {marker}"} for i in range(2)]
    broken = [{"name": "broken", "run": "echo no >&2; exit 3"}]
    project = tmp_path / "proj"
    tasks_file = write_project(project, quick + broken + long)

    proc = spawn_dispatch(tasks_file, fleet4.hosts_toml, "--no-sync")
    try:
        deadline = time.monotonic() + 30
        while set(_ended(project / ".meshrun")) != {"ok0", "ok1", "ok2", "ok3", "broken"}:
            assert time.monotonic() < deadline, f"tasks did not end: {_ended(project / '.meshrun')}"
            time.sleep(0.1)
        interrupt(proc, signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        kill_on_error(proc)
    assert not list(project.glob(".meshrun/runs/*/report.json")), "a killed run writes no report"
    assert not wait_gone(marker), "the agents should have stopped the long tasks"

    # The long tasks are quick now: the rerun is the same graph, fixed.
    fixed = [*quick, {"name": "broken", "run": "echo fixed"}]
    fixed += [{"name": f"long{i}", "run": f"echo long{i}"} for i in range(2)]
    write_project(project, fixed)
    r = dispatch(tasks_file, fleet4.hosts_toml, "--no-sync", "--rerun-failed", timeout_s=60)

    assert r.rc == 0, r.describe()
    assert task_statuses(r) == {
        "broken": "succeeded",
        "long0": "succeeded",
        "long1": "succeeded",
    }, f"expected only the failed and unfinished tasks rerun{r.describe()}"

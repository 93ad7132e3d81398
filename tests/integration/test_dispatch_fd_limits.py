"""dispatch under a low open-files limit, against real sshd.

Many slots mean many tasks running at once; the coordinator must not hold a descriptor
per running task (their logs stay in memory), so a run with more running tasks than the
limit has descriptors succeeds: every task, no host lost or unreachable for want of the
coordinator's fds, never a traceback. A run whose hosts' connections cannot fit at all
is refused before it starts (exit 2 naming `ulimit -n`).

The limit is set with ``prlimit --nofile=N:N`` (soft and hard, so meshrun cannot raise
it) on the real ``meshrun`` command.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dispatch_helpers import write_hosts, write_project
from helpers import meshrun_argv

from meshrun.testing.fleet import Fleet

#: Slots per host: 4 hosts x 40 = 160 tasks running at once, more than the limit below
#: leaves descriptors for (one open log each needed ~160 more).
SLOTS = 40
#: Open files allowed: about 85 free once meshrun has started, enough for the reserve
#: (64) and the hosts' 4 connections, far from one per running task.
NOFILE = 100


def _limited(nofile: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["prlimit", f"--nofile={nofile}:{nofile}", *meshrun_argv(), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _project(tmp_path: Path, fleet: Fleet, tasks: int) -> tuple[Path, Path]:
    hosts = write_hosts(tmp_path / "hosts.toml", fleet, {h: {"slots": SLOTS} for h in fleet.names})
    # Each task prints and then waits, so they all run at once (4 x SLOTS slots).
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": f"t{n}", "run": f"echo start {n}; sleep 3; echo done {n}"} for n in range(tasks)],
    )
    return tasks_file, hosts


def test_more_running_tasks_than_fds_all_succeed(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file, hosts = _project(tmp_path, fleet4, 4 * SLOTS)
    done = _limited(NOFILE, "dispatch", tasks_file, "--hosts", hosts, "--no-sync", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    doc = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert {t["status"] for t in doc["tasks"]} == {"succeeded"}
    assert {h["status"] for h in doc["hosts"]} == {"ok"}, doc["hosts"]
    assert max(len(t["timeline"]) for t in doc["tasks"]) == 1, "no task ran twice"
    # Their logs are slices of the one shared file; each has its own output.
    shared = {t["log"] for t in doc["tasks"]}
    assert len(shared) == 1 and shared.pop().endswith("/logs/succeeded.log")
    for t in doc["tasks"][:3]:
        with open(t["log"], "rb") as f:
            f.seek(t["log_offset"])
            text = f.read(t["log_bytes"]).decode()
        n = t["name"][1:]
        assert f"start {n}\ndone {n}\n" in text and text.startswith("# meshrun: attempt 1")


def test_a_run_whose_hosts_cannot_fit_is_refused_before_it_starts(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tasks_file, hosts = _project(tmp_path, fleet4, 4)
    refused = _limited(40, "dispatch", tasks_file, "--hosts", hosts, "--no-sync", "--json")
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert "ulimit -n" in refused.stderr and "dispatch on 4 hosts" in refused.stderr
    assert not (tmp_path / "proj" / ".meshrun" / "runs").exists(), "nothing started"

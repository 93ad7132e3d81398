"""Tasks shaped like real CI scripts, dispatched to real hosts through the agent.

A task that redirects its own output, leaves a child holding stdout, daemonises or
ignores SIGTERM once stalled the host agent (it waited on pipes, then on the process),
so a timeout lost the host and the next one, and so on. The agent now follows each
task's process, not its pipes (its own tests: tests/unit/test_agent_process.py); here
the whole run is checked: no host lost, the right task failed, nothing left anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dispatch_helpers import dispatch, log_text, task_statuses, tasks_of, write_project
from helpers import describe_procs, marker_seconds, wait_gone

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]


def test_a_self_redirecting_task_times_out_alone_and_no_host_is_lost(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(6)
    marker = marker_seconds(60)
    tasks: list[dict[str, object]] = [
        {"name": "selflog", "run": f"exec >selflog.txt 2>&1; sleep {marker}", "timeout": "3s"}
    ]
    tasks += [{"name": f"q{i}", "run": f"echo {i}"} for i in range(30)]
    tasks_file = write_project(tmp_path / "proj", tasks)

    r = dispatch(tasks_file, fleet.hosts_toml, "--no-sync", timeout_s=60)

    assert r.rc == 1, f"expected exit 1: one task timed out{r.describe()}"
    statuses = task_statuses(r)
    assert statuses.pop("selflog") == "failed", r.describe()
    assert set(statuses.values()) == {"succeeded"}, r.describe()
    assert "timed out after 3s" in (tasks_of(r)["selflog"]["error"] or ""), r.describe()
    assert "# meshrun: timed out after 3s: killed, exit" in log_text(r, "selflog")
    assert tasks_of(r)["selflog"]["attempts"] == 1, "a timeout is not a lost host: no rerun"
    assert {h["status"] for h in r.hosts.values()} == {"ok"}, f"a host was lost{r.describe()}"
    left = wait_gone(marker)
    assert not left, f"expected 'sleep {marker}' killed:\n{describe_procs(left)}"


def test_daemonising_tasks_end_with_their_process_and_leave_nothing(
    fleet4: Fleet, tmp_path: Path
) -> None:
    marker = marker_seconds(60)
    shapes = {
        "nohup": f"nohup sleep {marker} >/dev/null 2>&1 & echo started",
        "holds-stdout": f"(sleep {marker}; echo late) & echo early",
        "setsid": f"setsid sleep {marker} & echo detached",
        "redirected": f"exec >own.log 2>&1; sleep {marker} & echo hidden",
    }
    tasks_file = write_project(
        tmp_path / "proj", [{"name": n, "run": r} for n, r in shapes.items()]
    )

    r = dispatch(tasks_file, fleet4.hosts_toml, "--no-sync", timeout_s=60)

    assert r.rc == 0, r.describe()
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    # Each ended with its shell, not with the 60 s sleep it left behind.
    assert r.doc is not None and r.doc["duration_s"] < 30, r.describe()
    left = wait_gone(marker)
    assert not left, f"expected every 'sleep {marker}' killed:\n{describe_procs(left)}"

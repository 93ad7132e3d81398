"""``meshrun dispatch`` when things go wrong: failing tasks, retries, reruns, hosts that
die or hang, Ctrl-C and a killed coordinator — exit codes, statuses, nothing left over.

Tests that damage hosts (kill, pause) use their own fleet from ``make_fleet``; the
others share ``fleet4``. "Nothing left on any host" is checked with ``ps`` for a
marker unique to the test: every simulated host runs on this machine.
"""

from __future__ import annotations

import json
import random
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Pause
from dispatch_helpers import (
    dispatch,
    finish_when_running,
    kill_on_error,
    log_text,
    running_per_host,
    spawn_dispatch,
    task_statuses,
    tasks_of,
    write_project,
)
from helpers import (
    Result,
    describe_procs,
    finish,
    interrupt,
    marker_seconds,
    run_meshrun,
    wait_gone,
    wait_running,
    write_inventory,
)

from meshrun.dispatch.executor import STOP_GRACE_S
from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]

RUNNERS = [pytest.param([], id="agent"), pytest.param(["--no-agent"], id="exec")]


# -- failing tasks: keep going, fail fast ---------------------------------------------------


def _shards(failing_run: str) -> list[dict[str, object]]:
    """build -> shard-1..4 -> package (+ its upload), and a lint needing nothing."""
    shards = [f"shard-{i}" for i in range(1, 5)]
    tasks: list[dict[str, object]] = [
        {"name": "lint", "run": "echo lint ok"},
        {"name": "build", "run": "echo built"},
    ]
    for name in shards:
        run = failing_run if name == "shard-3" else f"echo {name} passed"
        tasks.append({"name": name, "run": run, "needs": ["build"]})
    tasks.append({"name": "package", "run": "echo package", "needs": shards})
    tasks.append({"name": "upload", "run": "echo upload", "needs": ["package"]})
    return tasks


def _run_without_json(tasks_file: Path, hosts: Path, *args: str | Path) -> Result:
    """A run as a person sees it (-o group); the document comes from report.json."""
    r = run_meshrun("dispatch", tasks_file, "--hosts", hosts, *args)
    reports = list((tasks_file.parent / ".meshrun" / "runs").glob("*/report.json"))
    assert len(reports) == 1, f"expected one report.json, found {reports}{r.describe()}"
    r.doc = json.loads(reports[0].read_text())
    return r


@pytest.mark.parametrize("as_json", [True, False], ids=["default-json", "keep-going-group"])
def test_a_failing_shard_skips_its_dependents_and_the_rest_still_runs(
    fleet4: Fleet, tmp_path: Path, as_json: bool
) -> None:
    tasks_file = write_project(
        tmp_path / "proj", _shards("echo 'shard-3: 1 test failed' >&2; exit 7")
    )
    junit = tmp_path / "junit.xml"

    if as_json:  # the default is --keep-going
        r = dispatch(tasks_file, fleet4.hosts_toml, "--junit", junit)
    else:
        r = _run_without_json(tasks_file, fleet4.hosts_toml, "--keep-going", "--junit", junit)

    assert r.rc == 1, f"expected exit 1 when a task fails{r.describe()}"
    assert task_statuses(r) == {
        "lint": "succeeded",
        "build": "succeeded",
        "shard-1": "succeeded",
        "shard-2": "succeeded",
        "shard-3": "failed",
        "shard-4": "succeeded",
        "package": "skipped",
        "upload": "skipped",
    }, r.describe()
    failed = tasks_of(r)["shard-3"]
    assert failed["exit_code"] == 7 and failed["error"] == "exit code 7", failed
    assert "1 test failed" in log_text(r, "shard-3")
    assert "shard-3" in (tasks_of(r)["package"]["error"] or ""), tasks_of(r)["package"]
    assert "shard-3  failed  exit code 7" in r.stderr, f"expected the summary{r.describe()}"
    if not as_json:
        assert "shard-2 passed" in r.stdout and "lint ok" in r.stdout, (
            f"expected each task's output grouped on stdout{r.describe()}"
        )
        replay = r.stderr.split("output of failed tasks:", 1)
        assert len(replay) == 2 and "1 test failed" in replay[1], (
            f"expected the failed task's log replayed on stderr{r.describe()}"
        )
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "1", "2")
    failure = suite.find("testcase[@name='shard-3']/failure")
    assert failure is not None and "1 test failed" in (failure.text or ""), junit.read_text()


def test_fail_fast_cancels_a_running_task_at_once_and_kills_it_on_its_host(
    fleet4: Fleet, tmp_path: Path
) -> None:
    marker = marker_seconds(30)
    started = tmp_path / "sleeper-started"  # every simulated host shares this machine
    tasks = [
        {"name": "sleeper", "run": f"touch {started}; sleep {marker}"},
        {
            "name": "bad",
            # Fails only once the sleeper runs, so the cancel has something to stop.
            "run": f"i=0; while [ ! -e {started} ] && [ $i -lt 200 ]; do sleep 0.05; "
            "i=$((i+1)); done; exit 3",
        },
        {"name": "after-bad", "run": "echo never", "needs": ["bad"]},
        {"name": "after-sleeper", "run": "echo never", "needs": ["sleeper"]},
    ]
    tasks_file = write_project(tmp_path / "proj", tasks)

    r = dispatch(tasks_file, fleet4.hosts_toml, "--fail-fast", timeout_s=30)

    assert r.rc == 1, f"expected exit 1{r.describe()}"
    assert task_statuses(r) == {
        "sleeper": "cancelled",
        "bad": "failed",
        "after-bad": "skipped",
        "after-sleeper": "cancelled",
    }, r.describe()
    assert "attempt 1 on" in log_text(r, "sleeper"), "expected the sleeper to have started"
    assert r.doc["duration_s"] < 10, (
        f"expected --fail-fast to stop the 30 s sleeper at once, the run took "
        f"{r.doc['duration_s']}s{r.describe()}"
    )
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left on any host:\n{describe_procs(left)}"


# -- reruns and retries ------------------------------------------------------------------


def test_rerun_failed_runs_only_the_failed_and_skipped_tasks(fleet4: Fleet, tmp_path: Path) -> None:
    # The cause is fixed by adding a file: rsync never deletes on the hosts.
    tasks_file = write_project(
        tmp_path / "proj", _shards("test -f fixed || { echo 'not fixed' >&2; exit 7; }")
    )
    first = dispatch(tasks_file, fleet4.hosts_toml)
    assert first.rc == 1, f"expected the first run to fail{first.describe()}"
    assert {n for n, s in task_statuses(first).items() if s != "succeeded"} == {
        "shard-3",
        "package",
        "upload",
    }, first.describe()

    (tmp_path / "proj" / "fixed").write_text("")
    rerun = dispatch(tasks_file, fleet4.hosts_toml, "--rerun-failed")
    assert rerun.rc == 0, f"expected the rerun to succeed once fixed{rerun.describe()}"
    assert task_statuses(rerun) == dict.fromkeys(["shard-3", "package", "upload"], "succeeded"), (
        f"expected only the failed and skipped tasks to run again{rerun.describe()}"
    )
    assert rerun.doc["run_id"] != first.doc["run_id"]

    # --resume names the run: the first one's failures again, whatever ran since.
    resumed = dispatch(tasks_file, fleet4.hosts_toml, "--resume", first.doc["run_id"])
    assert resumed.rc == 0, resumed.describe()
    assert sorted(task_statuses(resumed)) == ["package", "shard-3", "upload"], resumed.describe()


def test_a_retry_runs_again_elsewhere_and_succeeds(fleet4: Fleet, tmp_path: Path) -> None:
    flaky = (
        'echo "attempt $MESHRUN_ATTEMPT on $MESHRUN_HOST"; sleep 0.3; '
        '[ "$MESHRUN_ATTEMPT" = 1 ] && { echo first attempt fails >&2; exit 5; }; echo fine'
    )
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "flaky", "run": flaky, "retries": 1},
            {"name": "no-retries", "run": flaky},
            {"name": "after", "run": "echo after", "needs": ["flaky"]},
        ],
    )

    r = dispatch(tasks_file, fleet4.hosts_toml)

    assert r.rc == 1, f"expected exit 1 (no-retries fails){r.describe()}"
    tasks = tasks_of(r)
    assert (tasks["flaky"]["status"], tasks["flaky"]["attempts"]) == ("succeeded", 2), tasks
    assert tasks["flaky"]["exit_code"] == 0 and tasks["flaky"]["error"] is None, tasks["flaky"]
    assert (tasks["no-retries"]["status"], tasks["no-retries"]["attempts"]) == ("failed", 1)
    assert tasks["after"]["status"] == "succeeded", tasks["after"]
    log = log_text(r, "flaky")
    assert "attempt 1 on h" in log and "attempt 2 on h" in log and "fine" in log, log
    first_host = log.split("attempt 1 on ", 1)[1].split()[0].rstrip(":")
    assert tasks["flaky"]["host"] != first_host, (
        f"expected the retry on another host than {first_host} (retries prefer another "
        f"host), it ran on {tasks['flaky']['host']}:\n{log}"
    )


@pytest.mark.parametrize("flags", RUNNERS)
def test_timeout_fails_the_task_and_kills_it_on_its_host(
    fleet4: Fleet, tmp_path: Path, flags: list[str]
) -> None:
    marker = marker_seconds(30)
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "hangs", "run": f"echo started; sleep {marker}"},
            {"name": "quick", "run": "echo quick"},
            {"name": "own-limit", "run": "sleep 0.3; echo within", "timeout": "20s"},
        ],
    )

    r = dispatch(tasks_file, fleet4.hosts_toml, "--timeout", "1s", *flags, timeout_s=30)

    assert r.rc == 1, f"expected exit 1 for a timed-out task{r.describe()}"
    assert task_statuses(r) == {
        "hangs": "failed",
        "quick": "succeeded",
        "own-limit": "succeeded",
    }, r.describe()
    hangs = tasks_of(r)["hangs"]
    assert "timed out after 1s" in (hangs["error"] or ""), hangs
    assert hangs["duration_s"] < 8, f"expected the task stopped soon after 1 s: {hangs}"
    assert "started" in log_text(r, "hangs"), log_text(r, "hangs")
    left = wait_gone(marker)
    assert not left, f"expected the timed-out 'sleep {marker}' killed:\n{describe_procs(left)}"


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param([], id="agent"),
        pytest.param(["--no-agent"], id="exec"),
    ],
)
def test_a_timed_out_task_that_ignores_sigterm_is_killed_and_its_host_kept(
    fleet4: Fleet, tmp_path: Path, flags: list[str]
) -> None:
    marker = marker_seconds(30)
    hosts = write_inventory(tmp_path / "hosts.toml", fleet4, names=["h1"])
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": "stubborn", "run": f"trap '' TERM; sleep {marker}", "timeout": "1s"}],
    )

    r = dispatch(tasks_file, hosts, "--no-sync", *flags, timeout_s=40)

    assert r.rc == 1, r.describe()
    stubborn = tasks_of(r)["stubborn"]
    assert (stubborn["status"], stubborn["host"]) == ("failed", "h1"), r.describe()
    assert "timed out after 1s" in (stubborn["error"] or ""), r.describe()
    assert r.hosts["h1"]["status"] == "ok", (
        f"expected h1 kept: it is healthy, its task just ignores SIGTERM{r.describe()}"
    )
    # The wrapper's grace between SIGTERM and SIGKILL is 3 s.
    assert r.doc["duration_s"] < 8, r.describe()
    left = wait_gone(marker)
    assert not left, f"expected 'sleep {marker}' killed:\n{describe_procs(left)}"


def test_max_fail_starts_nothing_new_but_lets_running_tasks_finish(
    fleet4: Fleet, tmp_path: Path
) -> None:
    started = tmp_path / "slow-started"
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "slow", "run": f"touch {started}; sleep 1; echo slow done"},
            {
                "name": "bad",
                "run": f"i=0; while [ ! -e {started} ] && [ $i -lt 200 ]; do sleep 0.05; "
                "i=$((i+1)); done; exit 1",
            },
            {"name": "after-slow", "run": "echo after", "needs": ["slow"]},
        ],
    )

    r = dispatch(tasks_file, fleet4.hosts_toml, "--max-fail", "0")

    assert r.rc == 1, r.describe()
    assert task_statuses(r) == {
        "slow": "succeeded",
        "bad": "failed",
        "after-slow": "cancelled",
    }, f"expected --max-fail 0 to start nothing after the failure{r.describe()}"
    assert "--max-fail 0" in (tasks_of(r)["after-slow"]["error"] or ""), r.describe()


# -- hosts that die or hang ----------------------------------------------------------------


def _short_marker() -> str:
    """A sleep of 0.8-0.9 s unique to this test, usable as a ps marker."""
    return f"0.8{random.randrange(10_000, 100_000)}"


def _sleepers(count: int, marker: str) -> list[dict[str, object]]:
    return [{"name": f"t{i:02d}", "run": f"sleep {marker}"} for i in range(1, count + 1)]


@pytest.mark.parametrize("flags", RUNNERS)
def test_a_host_killed_mid_run_is_lost_and_its_tasks_finish_elsewhere(
    make_fleet: MakeFleet, tmp_path: Path, flags: list[str]
) -> None:
    fleet = make_fleet(3)
    marker = _short_marker()
    tasks_file = write_project(tmp_path / "proj", _sleepers(12, marker))

    trace_file = tmp_path / "trace.json"
    proc = spawn_dispatch(tasks_file, fleet.hosts_toml, "--trace", trace_file, *flags)
    r = finish_when_running(proc, fleet, "h1", marker, Fleet.kill, timeout_s=30)

    assert r.rc == 0, f"expected exit 0: every task completed elsewhere{r.describe()}"
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert r.hosts["h1"]["status"] == "lost", f"expected h1 reported lost{r.describe()}"
    assert r.hosts["h1"]["error"], r.hosts["h1"]
    assert {r.hosts[n]["status"] for n in ("h2", "h3")} == {"ok"}, r.describe()
    assert "h1" in r.stderr and "lost" in r.stderr, f"expected the loss on stderr{r.describe()}"
    moved = [n for n in tasks_of(r) if "# meshrun: h1 was lost" in log_text(r, n)]
    assert moved, f"expected the tasks h1 was running to say so in their logs{r.describe()}"
    for name in moved:
        assert tasks_of(r)[name]["host"] != "h1", tasks_of(r)[name]
    # The lost attempts are in the timeline: --json, the manifest and the trace.
    manifest = json.loads((Path(r.doc["run_dir"]) / "manifest.json").read_text())
    in_manifest = {t["name"]: t for t in manifest["tasks"]}
    trace = json.loads(trace_file.read_text())
    h1_pid = next(
        e["pid"] for e in trace["traceEvents"] if e["ph"] == "M" and e["args"]["name"] == "h1"
    )
    lost_boxes = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == h1_pid}
    for name in moved:
        for entry in (tasks_of(r)[name], in_manifest[name]):
            outcomes = [(a["host"], a["outcome"]) for a in entry["timeline"]]
            assert outcomes[0] == ("h1", "lost") and outcomes[-1][1] == "succeeded", entry
            assert entry["attempts"] == len(outcomes) >= 2, entry
        assert name in lost_boxes, f"expected {name}'s lost attempt on h1's track in the trace"


def _wait_spread(fleet: Fleet, marker: str, total: int, timeout_s: float = 10.0) -> dict[str, int]:
    """Poll until ``total`` tasks run and every host runs at least one of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = running_per_host(fleet, marker)
        if sum(counts.values()) >= total and all(counts.values()):
            return counts
        if time.monotonic() >= deadline:
            raise AssertionError(f"expected {total} x {marker!r} on every host, saw {counts}")
        time.sleep(0.02)


@pytest.mark.parametrize("flags", RUNNERS)
def test_tasks_of_a_killed_host_restart_at_once_on_hosts_with_room(
    make_fleet: MakeFleet, tmp_path: Path, flags: list[str]
) -> None:
    fleet = make_fleet(3)
    hosts = write_inventory(
        tmp_path / "hosts.toml", fleet, extra={n: {"slots": 3} for n in fleet.names}
    )
    marker = f"1.5{random.randrange(10_000, 100_000)}"
    # 7 tasks on 9 slots. Tasks start only on hosts that are ready, so once each host
    # runs one, all are; the busiest host then dies with 2 or 3 tasks while the others
    # have 2 free slots, and its tasks start again elsewhere straight away.
    tasks_file = write_project(tmp_path / "proj", _sleepers(7, marker))

    proc = spawn_dispatch(tasks_file, hosts, "--no-sync", *flags)
    try:
        counts = _wait_spread(fleet, marker, 7)
        victim = max(counts, key=lambda name: counts[name])
        fleet.kill(victim)
        r = finish(proc, timeout_s=8)  # about 3.5 s when it works
    finally:
        kill_on_error(proc)

    assert r.rc == 0, f"expected exit 0: every task completed elsewhere{r.describe()}"
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert r.hosts[victim]["status"] == "lost", r.describe()


@pytest.mark.parametrize("flags", RUNNERS)
def test_a_hung_host_times_out_its_tasks_and_they_are_retried_elsewhere(
    make_fleet: MakeFleet,
    tmp_path: Path,
    flags: list[str],
    pause: Pause,
) -> None:
    fleet = make_fleet(3)
    marker = _short_marker()
    tasks_file = write_project(
        tmp_path / "proj",
        _sleepers(6, marker),
        defaults={"timeout": "2s", "retries": 1},
    )

    proc = spawn_dispatch(tasks_file, fleet.hosts_toml, *flags)
    # The timeout (2 s), then the coordinator's grace for a host that does not stop a task
    # (the wrapper's kill grace without the agent is shorter), then a retry.
    r = finish_when_running(proc, fleet, "h1", marker, pause, timeout_s=2 + STOP_GRACE_S + 6)

    # The contract: a host lost mid-run whose tasks all completed elsewhere leaves exit 0.
    assert r.rc == 0, f"expected exit 0: h1's tasks time out and are retried{r.describe()}"
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert all(t["host"] != "h1" for t in tasks_of(r).values()), r.describe()
    assert r.hosts["h1"]["status"] == "lost" and r.hosts["h1"]["error"], (
        f"expected the hung h1 written off as lost{r.describe()}"
    )


def test_a_host_hung_from_the_start_does_not_hold_up_the_end_of_the_run(
    make_fleet: MakeFleet, tmp_path: Path, pause: Pause
) -> None:
    fleet = make_fleet(3)
    pause(fleet, "h1")  # TCP connects, no SSH banner ever comes
    tasks_file = write_project(
        tmp_path / "proj", [{"name": f"t{i}", "run": "sleep 0.2"} for i in range(4)]
    )

    r = dispatch(tasks_file, fleet.hosts_toml, "--connect-timeout", "4s", timeout_s=30)

    # Still connecting when the run ended, h1 is "unused" (exit 0); had its handshake
    # already failed, it would be an unreachable host, which makes the run exit 3.
    h1 = r.hosts["h1"]
    assert h1["status"] in ("unused", "unreachable"), r.describe()
    expected_rc = 3 if h1["status"] == "unreachable" else 0
    assert r.rc == expected_rc, (
        f"expected exit {expected_rc}: h2 and h3 run everything{r.describe()}"
    )
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    # The tasks need well under a second on h2 and h3; the handshake limit is 4 s.
    assert r.duration_s < 3.0, (
        f"expected the run to end once its tasks are done, it took {r.duration_s:.2f}s "
        f"(report: {r.doc['duration_s']}s) — waiting for h1's 4 s connect timeout"
        f"{r.describe()}"
    )


# -- Ctrl-C and a killed coordinator ---------------------------------------------------


@pytest.mark.parametrize("flags", RUNNERS)
def test_ctrl_c_cancels_every_task_exits_130_and_leaves_nothing(
    fleet4: Fleet, tmp_path: Path, flags: list[str]
) -> None:
    marker = marker_seconds()
    tasks = [*_sleepers(4, marker), {"name": "later", "run": "echo x", "needs": ["t01"]}]
    tasks_file = write_project(tmp_path / "proj", tasks)

    proc = spawn_dispatch(tasks_file, fleet4.hosts_toml, *flags)
    try:
        wait_running(f"sleep {marker}", 4)
        interrupt(proc, signal.SIGINT)
        r = finish(proc, timeout_s=10)
    finally:
        kill_on_error(proc)

    assert r.rc == 130, f"expected exit 130 after Ctrl-C{r.describe()}"
    assert r.doc["interrupted"] is True and r.doc["exit_code"] == 130, r.describe()
    assert set(task_statuses(r).values()) == {"cancelled"}, r.describe()
    assert "interrupted" in r.stderr, f"expected the interruption on stderr{r.describe()}"
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left after Ctrl-C:\n{describe_procs(left)}"
    # The manifest of an interrupted run is written and says how each task ended.
    manifest = json.loads((Path(r.doc["run_dir"]) / "manifest.json").read_text())
    assert {t["name"]: t["status"] for t in manifest["tasks"]} == task_statuses(r)


@pytest.mark.parametrize("flags", RUNNERS)
def test_a_killed_coordinator_leaves_nothing_on_the_hosts(
    fleet4: Fleet, tmp_path: Path, flags: list[str]
) -> None:
    marker = marker_seconds()
    tasks_file = write_project(tmp_path / "proj", _sleepers(4, marker))

    proc = spawn_dispatch(tasks_file, fleet4.hosts_toml, *flags)
    try:
        wait_running(f"sleep {marker}", 4)
        interrupt(proc, signal.SIGKILL)
        proc.communicate(timeout=5)
    finally:
        kill_on_error(proc)

    assert proc.returncode == -signal.SIGKILL, f"expected the coordinator killed: {proc.returncode}"
    left = wait_gone(marker, timeout_s=8)
    assert not left, (
        f"expected the agents (or the exec wrappers) to kill 'sleep {marker}' once the "
        "coordinator's channels closed, "
        f"still running:\n{describe_procs(left)}"
    )


@pytest.mark.parametrize("fault", ["changed-key", "connection-refused"])
def test_a_refused_host_fails_the_run_though_the_others_did_the_work(
    make_fleet: MakeFleet, tmp_path: Path, fault: str
) -> None:
    """A changed key may be a man in the middle: the run must not pass CI green because
    the other hosts finished the work. The summary names the refused host first."""
    fleet = make_fleet(2)
    if fault == "changed-key":
        fleet.restart("h2", new_host_key=True)
    else:
        fleet.kill("h2")
    tasks_file = write_project(
        tmp_path / "proj", [{"name": f"t{i}", "run": f"echo t{i}"} for i in range(3)]
    )

    r = dispatch(tasks_file, fleet.hosts_toml, "--accept-new-host-keys", timeout_s=30)

    assert r.rc == 3, f"expected exit 3 for a refused host{r.describe()}"
    assert r.doc["exit_code"] == 3 and r.doc["ok"] is True, r.describe()
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert all(t["host"] == "h1" for t in tasks_of(r).values()), r.describe()
    h2 = r.hosts["h2"]
    assert (h2["status"], h2["refused"]) == ("unreachable", True), r.describe()
    assert r.hosts["h1"]["refused"] is False, r.describe()
    if fault == "changed-key":
        assert "changed" in (h2["error"] or "").lower(), r.describe()
    summary = r.stderr[r.stderr.index("meshrun: 3 tasks:") :]
    first_detail = summary.splitlines()[1]
    assert first_detail.split()[:3] == ["host", "h2", "refused"], (
        f"expected the summary to name h2 first as refused{r.describe()}"
    )


def test_no_host_reachable_exits_3(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    for name in fleet.names:
        fleet.kill(name)
    tasks_file = write_project(
        tmp_path / "proj", [{"name": "a", "run": "echo a"}, {"name": "b", "run": "echo b"}]
    )

    r = dispatch(tasks_file, fleet.hosts_toml, timeout_s=30)

    assert r.rc == 3, f"expected exit 3 when no host can be reached{r.describe()}"
    assert r.statuses() == {"h1": "unreachable", "h2": "unreachable"}, r.describe()
    assert all("refused" in (h["error"] or "") for h in r.hosts.values()), r.describe()
    assert set(task_statuses(r).values()) == {"cancelled"}, r.describe()


def test_no_host_reachable_exits_3_for_a_graph_with_needs(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    for name in fleet.names:
        fleet.kill(name)
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": "a", "run": "echo a"}, {"name": "b", "run": "echo b", "needs": ["a"]}],
    )

    proc = spawn_dispatch(tasks_file, fleet.hosts_toml)
    try:
        r = finish(proc, timeout_s=5)  # about 1 s when it works
    finally:
        kill_on_error(proc)

    assert r.rc == 3, f"expected exit 3 when no host can be reached{r.describe()}"
    assert r.statuses() == {"h1": "unreachable", "h2": "unreachable"}, r.describe()
    assert task_statuses(r)["a"] == "cancelled", r.describe()
    assert task_statuses(r)["b"] in ("cancelled", "skipped"), r.describe()

"""``meshrun dispatch`` of a task graph over real sshd hosts: order, logs, reports, sync.

Every run goes through the installed console script with ``--json``; the hosts are
real OpenSSH servers on loopback (``meshrun.testing.fleet``) and the workspace goes
over with real rsync.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispatch_helpers import (
    STAMP_END,
    STAMP_START,
    dispatch,
    log_text,
    stamps,
    task_statuses,
    tasks_of,
    workdir_of,
    write_hosts,
    write_project,
)
from helpers import run_meshrun, write_inventory

from meshrun.testing.fleet import Fleet
from meshrun.workspace.workdirs import WORKDIRS

MakeFleet = Callable[..., Fleet]

LINTS = ["lint-style", "lint-types"]
BUILDS = ["build-core", "build-cli"]
SHARDS = [f"test-shard-{i}" for i in range(1, 7)]
PACKAGE = "package"
ALL = [*LINTS, *BUILDS, *SHARDS, PACKAGE]


def _graph(out_dir: str) -> list[dict[str, Any]]:
    """2 lints, 2 builds, 6 shards needing both builds, a package needing every shard.

    Each task stamps its start and end, writes $MESHRUN_HOST to OUT/<task>.host in the
    host's workdir, and says something recognisable.
    """

    def run(name: str) -> str:
        return (
            f"{STAMP_START}; mkdir -p {out_dir}; "
            f'echo "$MESHRUN_HOST" > {out_dir}/{name}.host; '
            f'echo "{name} says hello from $MESHRUN_HOST"; '
            'echo "task=$MESHRUN_TASK run=$MESHRUN_RUN_ID attempt=$MESHRUN_ATTEMPT"; '
            f"sleep 0.2; {STAMP_END}"
        )

    tasks: list[dict[str, Any]] = []
    tasks += [{"name": n, "run": run(n)} for n in LINTS]
    tasks += [{"name": n, "run": run(n)} for n in BUILDS]
    tasks += [{"name": n, "run": run(n), "needs": BUILDS} for n in SHARDS]
    tasks.append({"name": PACKAGE, "run": run(PACKAGE), "needs": SHARDS})
    return tasks


def test_a_realistic_graph_runs_in_order_over_several_hosts(fleet4: Fleet, tmp_path: Path) -> None:
    out_dir = f"out-{uuid.uuid4().hex[:8]}"
    graph = _graph(out_dir)
    tasks_file = write_project(tmp_path / "proj", graph)
    junit = tmp_path / "junit.xml"

    r = dispatch(tasks_file, fleet4.hosts_toml, "--junit", junit)

    assert r.rc == 0, f"expected exit 0 for a graph that all succeeds{r.describe()}"
    assert r.doc["ok"] is True and r.doc["exit_code"] == 0, r.describe()
    assert task_statuses(r) == dict.fromkeys(ALL, "succeeded"), r.describe()
    by_name = tasks_of(r)
    hosts_used = {t["host"] for t in by_name.values()}
    assert len(hosts_used) > 1, f"expected the graph spread over hosts, all ran on {hosts_used}"
    assert hosts_used <= set(fleet4.names), hosts_used

    times: dict[str, dict[str, float]] = {}
    for name, task in by_name.items():
        log = log_text(r, name)
        assert f"{name} says hello from {task['host']}" in log, (
            f"expected {name}'s own output (from {task['host']}) in its log:\n{log}"
        )
        assert f"task={name} run={r.doc['run_id']} attempt=1" in log, (
            f"expected MESHRUN_TASK, MESHRUN_RUN_ID and MESHRUN_ATTEMPT set for {name}:\n{log}"
        )
        times[name] = stamps(log)
        assert set(times[name]) == {"start", "end"}, f"expected both stamps in:\n{log}"
        # The file the task wrote is in the workdir of the host the report names.
        written = workdir_of(r, task["host"]) / out_dir / f"{name}.host"
        assert written.read_text().strip() == task["host"], (
            f"expected {written} to hold {task['host']!r} ($MESHRUN_HOST)"
        )
    for spec in graph:
        name = spec["name"]
        for need in spec.get("needs", []):
            assert times[need]["end"] <= times[name]["start"], (
                f"expected {need} to end (at {times[need]['end']:.3f}) before {name} "
                f"started (at {times[name]['start']:.3f})"
            )

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None, f"expected <testsuites><testsuite> in {junit.read_text()}"
    cases = suite.findall("testcase")
    assert sorted(c.get("name") or "" for c in cases) == sorted(ALL), junit.read_text()
    assert suite.get("tests") == "11" and suite.get("failures") == "0", junit.read_text()
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases)

    report_json = Path(r.doc["run_dir"]) / "report.json"
    assert json.loads(report_json.read_text())["tasks"] == r.doc["tasks"], (
        f"expected {report_json} to hold the same tasks as --json"
    )

    h = run_meshrun("history", tasks_file, "--json")
    assert h.rc == 0, f"expected `meshrun history` to succeed after a run{h.describe()}"
    assert sorted(t["name"] for t in h.doc["tasks"]) == sorted(ALL), h.describe()
    assert all(t["samples"] == 1 and t["expected_s"] > 0 for t in h.doc["tasks"]), h.describe()


def test_weights_and_labels_are_respected_on_every_host(fleet4: Fleet, tmp_path: Path) -> None:
    """No host ever runs more load units than its slots; labelled tasks stay on their hosts."""
    slots = 2
    big = {"h1", "h2"}
    hosts = write_hosts(
        tmp_path / "hosts.toml",
        fleet4,
        {n: {"slots": slots, "labels": ["big"] if n in big else []} for n in fleet4.names},
    )
    run = f"{STAMP_START}; sleep 0.3; {STAMP_END}"
    tasks: list[dict[str, Any]] = [
        *({"name": f"heavy-{i}", "run": run, "weight": 2} for i in range(4)),
        *({"name": f"light-{i}", "run": run} for i in range(6)),
        *({"name": f"big-{i}", "run": run, "labels": ["big"]} for i in range(3)),
    ]
    tasks_file = write_project(tmp_path / "proj", tasks)

    r = dispatch(tasks_file, hosts)

    assert r.rc == 0, r.describe()
    weight = {t["name"]: t.get("weight", 1) for t in tasks}
    spans: dict[str, list[tuple[float, float, int]]] = {}
    for name, task in tasks_of(r).items():
        t = stamps(log_text(r, name))
        spans.setdefault(task["host"], []).append((t["start"], t["end"], weight[name]))
        if name.startswith("big-"):
            assert task["host"] in big, f"expected {name} on a 'big' host, ran on {task['host']}"
    for host, intervals in spans.items():
        for start, _, _ in intervals:
            load = sum(w for s, e, w in intervals if s <= start < e)
            assert load <= slots, (
                f"expected at most {slots} load units on {host}, {load} ran at {start:.3f}: "
                f"{sorted(intervals)}"
            )


UNICODE_DIR = "dir with space"
UNICODE_FILE = f"{UNICODE_DIR}/ünïcode file.txt"


def test_the_workspace_is_synced_without_git_or_state_and_no_sync_skips_it(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    tasks = [
        {"name": f"read-{i}", "run": f'sleep 0.2; ls -a; cat "{UNICODE_FILE}"'} for i in (1, 2)
    ]
    tasks_file = write_project(
        tmp_path / "proj",
        tasks,
        files={
            UNICODE_FILE: "contents ünïcode ✓\n",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".git/config": "[core]\n",
            "keys/api.secret": "do not ship\n",
        },
        sync={"exclude": ["*.secret"]},
    )

    r = dispatch(tasks_file, fleet.hosts_toml, "--no-sync")
    assert r.rc == 1, f"expected exit 1: without sync the file is not on the hosts{r.describe()}"
    assert set(task_statuses(r).values()) == {"failed"}, r.describe()
    assert "No such file" in log_text(r, "read-1"), log_text(r, "read-1")
    for h in fleet.hosts:
        assert not (h.workdir / UNICODE_DIR).exists(), f"--no-sync still pushed to {h.name}"
        assert not (h.workdir / "tasks.toml").exists(), f"--no-sync still pushed to {h.name}"

    r = dispatch(tasks_file, fleet.hosts_toml)
    assert r.rc == 0, f"expected exit 0 once the workspace is synced{r.describe()}"
    for name in ("read-1", "read-2"):
        assert "contents ünïcode ✓" in log_text(r, name), log_text(r, name)
    for name, host in r.hosts.items():
        if host["status"] != "ok":
            continue  # a host the run did not need may still have been connecting
        work = workdir_of(r, name)
        assert (work / UNICODE_FILE).read_text() == "contents ünïcode ✓\n", name
        assert not (work / ".git").exists(), f"expected .git not synced to {name}"
        assert (work / "keys").is_dir() and not (work / "keys" / "api.secret").exists(), (
            f"expected [sync] exclude to keep *.secret off {name}"
        )
        # The coordinator's state dir (.meshrun beside tasks.toml) stays home too.
        assert not (work / ".meshrun" / "history.sqlite").exists(), name
        assert not (work / ".meshrun" / "runs").exists(), name
    ran_on = {t["host"] for t in tasks_of(r).values()}
    assert all(r.hosts[h]["status"] == "ok" for h in ran_on), r.describe()


def test_a_state_dir_inside_the_workspace_stays_off_the_hosts(
    fleet4: Fleet, tmp_path: Path
) -> None:
    state_name = f"ci-state-{uuid.uuid4().hex[:8]}"  # fleet4's workdirs are shared
    project = tmp_path / "proj"
    tasks_file = write_project(project, [{"name": "a", "run": "echo a"}])

    r = dispatch(tasks_file, fleet4.hosts_toml, "--state-dir", project / state_name)

    assert r.rc == 0, r.describe()
    assert (project / state_name / "history.sqlite").is_file(), "expected the state there"
    ok = [name for name, host in r.hosts.items() if host["status"] == "ok"]
    synced = [name for name in ok if (workdir_of(r, name) / state_name).exists()]
    assert not synced, (
        f"expected the state dir (history, logs of every run) kept off the hosts, "
        f"found {state_name}/ on {synced}"
    )


def _same_outcome(doc: Any) -> dict[str, tuple[str, int | None]]:
    """Each task's (status, exit code) from a --json document."""
    return {t["name"]: (t["status"], t["exit_code"]) for t in doc["tasks"]}


def _small_graph() -> list[dict[str, object]]:
    return [
        {"name": "build", "run": "echo built; echo task $MESHRUN_TASK"},
        {"name": "test-a", "run": "echo a; echo attempt $MESHRUN_ATTEMPT", "needs": ["build"]},
        {"name": "test-b", "run": "echo b >&2; exit 3", "needs": ["build"]},
        {"name": "ship", "run": "echo ship", "needs": ["test-a", "test-b"]},
        {"name": "docs", "run": 'sleep 0.2; echo "$GREETING"', "env": {"GREETING": "docs ✓"}},
    ]


OUTPUTS = {"build": "built\ntask build\n", "test-a": "a\nattempt 1\n", "docs": "docs ✓\n"}


def test_no_agent_runs_the_same_graph_over_exec_channels(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = write_project(tmp_path / "proj", _small_graph())

    with_agent = dispatch(tasks_file, fleet4.hosts_toml)
    without = dispatch(tasks_file, fleet4.hosts_toml, "--no-agent")

    expected = {
        "build": ("succeeded", 0),
        "test-a": ("succeeded", 0),
        "test-b": ("failed", 3),
        "ship": ("skipped", None),
        "docs": ("succeeded", 0),
    }
    for r in (with_agent, without):
        assert r.rc == 1, f"expected exit 1 (test-b fails){r.describe()}"
        assert _same_outcome(r.doc) == expected, r.describe()
        assert "b" in log_text(r, "test-b"), "expected stderr in the log"
    assert {h["runner"] for h in with_agent.hosts.values() if h["status"] == "ok"} == {"agent"}
    assert {h["runner"] for h in without.hosts.values() if h["status"] == "ok"} == {"exec"}, (
        without.describe()
    )
    for name, expected_out in OUTPUTS.items():
        for r in (with_agent, without):
            assert expected_out in log_text(r, name), (
                f"expected {expected_out!r} in {name}'s log:\n{log_text(r, name)}"
            )


def _toolbox(root: Path) -> Path:
    """A bin directory with what the exec runner and rsync need on a host, but no python3."""
    root.mkdir(parents=True)
    for tool in (
        "sh", "cat", "mkdir", "chmod", "mv", "rm", "ls", "rsync", "setsid", "sleep",
        "getconf", "nproc", "date",
    ):  # fmt: skip
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        assert found, f"expected {tool} on this machine"
        (root / tool).symlink_to(found)
    return root


def test_a_host_without_python3_falls_back_to_exec_channels(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    toolbox = _toolbox(tmp_path / "toolbox")
    home = tmp_path / "remote-home"
    home.mkdir()
    # sshd keeps only the first SetEnv line, so this one replaces the fleet's own
    # (HOME and MESHRUN_TEST_HOST): give HOME again, or root's ~/.bashrc puts pyenv's
    # python3 back on PATH.
    fleet = make_fleet(2, extra_config=[f"SetEnv HOME={home} PATH={toolbox}"])
    probe = run_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--", "command -v python3 || echo none"
    )
    assert probe.rc == 0 and {h["stdout"].strip() for h in probe.doc["hosts"]} == {"none"}, (
        f"test setup: expected no python3 on the hosts' PATH{probe.describe()}"
    )
    tasks_file = write_project(tmp_path / "proj", _small_graph())

    r = dispatch(tasks_file, fleet.hosts_toml)

    assert r.rc == 1, f"expected exit 1 (test-b fails){r.describe()}"
    assert _same_outcome(r.doc) == {
        "build": ("succeeded", 0),
        "test-a": ("succeeded", 0),
        "test-b": ("failed", 3),
        "ship": ("skipped", None),
        "docs": ("succeeded", 0),
    }, r.describe()
    used = {h["name"]: h["runner"] for h in r.doc["hosts"] if h["status"] == "ok"}
    assert used and set(used.values()) == {"exec"}, (
        f"expected every host to fall back to exec channels, got {used}{r.describe()}"
    )
    for name in used:
        assert f"{name}: the agent did not start (is python3 installed?)" in r.stderr, (
            f"expected a warning naming {name} and the missing python3{r.describe()}"
        )
    for name, expected_out in OUTPUTS.items():
        assert expected_out in log_text(r, name), log_text(r, name)


def test_a_tilde_workdir_gets_the_workspace_where_its_tasks_run(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # The simulated hosts set HOME to a directory of their own (sshd SetEnv), while
    # sshd still starts sessions in the user's login directory.
    fleet = make_fleet(1)
    name = f"meshrun-test-ws-{uuid.uuid4().hex[:8]}"
    hosts = write_inventory(
        tmp_path / "hosts.toml", fleet, extra={"h1": {"workdir": f"~/{name} dir"}}
    )
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": "read", "run": 'pwd; cat "synced file.txt"'}],
        files={"synced file.txt": "synced ✓\n"},
    )
    # Where a sync resolved against the login directory would put it (outside tmp_path).
    stray = Path(pwd.getpwuid(os.getuid()).pw_dir) / f"{name} dir"
    try:
        r = dispatch(tasks_file, hosts)
        leaked = stray.exists()
    finally:
        if stray.is_dir():
            shutil.rmtree(stray)

    assert not leaked, f"expected nothing synced to the login directory, found {stray}"
    assert r.rc == 0, f"expected the task to read the synced file{r.describe()}"
    workdir = workdir_of(r, "h1")  # the run's own, under the host's "~/NAME dir"
    assert workdir.parent == fleet.host("h1").home / f"{name} dir" / WORKDIRS, workdir
    assert f"{workdir}\nsynced ✓\n" in log_text(r, "read"), log_text(r, "read")

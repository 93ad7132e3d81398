"""Progress a CI log can show, and ``-v`` lines that name their host, over real sshd.

stdout and stderr are pipes here, as in a CI job: no terminal, so no status line, and
``--progress-interval`` decides how often a plain progress line comes.
"""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

from dispatch_helpers import (
    dispatch,
    kill_on_error,
    spawn_dispatch,
    task_statuses,
    tasks_of,
    write_project,
)
from helpers import finish, run_meshrun

from meshrun.testing.fleet import Fleet


def test_without_a_terminal_a_progress_line_names_the_running_task_before_it_ends(
    fleet4: Fleet, tmp_path: Path
) -> None:
    # The task runs until this test has seen a progress line naming it (at most 30 s),
    # so the line provably came while it ran, whatever the machine's speed.
    gate = tmp_path / f"gate-{uuid.uuid4().hex[:8]}"
    wait = f"for i in $(seq 300); do [ -e {gate} ] && exit 0; sleep 0.1; done; exit 1"
    tasks_file = write_project(tmp_path / "proj", [{"name": "wait-for-gate", "run": wait}])
    progress = re.compile(r"^meshrun: 0/1 done, running: wait-for-gate \((\d+)s\)")
    proc = spawn_dispatch(tasks_file, fleet4.hosts_toml, "--progress-interval", "1s")
    seen = threading.Event()
    lines: list[str] = []

    def read() -> None:  # stderr as it comes; stdout (--json) is read at the end
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if progress.match(line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(30), f"expected a progress line while the task ran; stderr: {lines}"
        gate.touch()
        r = finish(proc, timeout_s=60)
    finally:
        kill_on_error(proc)
    reader.join(10)
    # The task's status, not the exit code: a host of the shared fleet refused at set-up
    # (seen now and then, old code too) makes the exit 3 with the task done elsewhere.
    assert task_statuses(r) == {"wait-for-gate": "succeeded"}, (
        f"{r.describe()}\n--- stderr as read ---\n{''.join(lines)}"
    )
    assert "\r" not in "".join(lines), "no status line is drawn without a terminal"


def test_progress_interval_zero_keeps_a_ci_log_to_what_happened(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tasks_file = write_project(tmp_path / "proj", [{"name": "nap", "run": "sleep 2.5"}])
    r = dispatch(tasks_file, fleet4.hosts_toml, "--progress-interval", "0")
    assert task_statuses(r) == {"nap": "succeeded"}, r.describe()
    assert "running:" not in r.stderr, r.describe()


HOSTS = re.compile(r"^meshrun: (?:INFO|DEBUG|WARNING): [\w.]+: (h[1-4]): (.*)$")


def test_verbose_lines_name_their_host_and_tell_placement_sync_and_transfers(
    fleet4: Fleet, tmp_path: Path
) -> None:
    out = f"out-{uuid.uuid4().hex[:8]}.txt"
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "make", "run": f"echo made > {out}", "outputs": [out]},
            {"name": "use", "run": f"cat {out}", "needs": ["make"]},
            {"name": "lint", "run": "true"},
        ],
        files={"src/a.txt": "a\n"},
    )
    r = dispatch(tasks_file, fleet4.hosts_toml, "-v")
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert r.doc is not None
    took_part = [h["name"] for h in r.doc["hosts"] if h["status"] == "ok"]
    assert took_part, r.describe()
    logged = [line for line in r.stderr.splitlines() if line.startswith("meshrun: INFO: ")]
    unnamed = [line for line in logged if not HOSTS.match(line)]
    assert logged and unnamed == [], f"every -v line should name its host: {unnamed}"
    said: dict[str, list[str]] = {}
    for line in logged:
        match = HOSTS.match(line)
        assert match is not None
        said.setdefault(match.group(1), []).append(match.group(2))
    for host in took_part:
        what = said.get(host, [])
        assert any(w.startswith("connected (") for w in what), (host, what)
        assert "pushing the workspace" in what, (host, what)
        assert any(w.startswith("workspace pushed in ") for w in what), (host, what)
        assert any(w.startswith("ready (agent runner, ") for w in what), (host, what)
    placed = tasks_of(r)
    for task, entry in placed.items():
        assert f"starts {task} (attempt 1" in " | ".join(said[entry["host"]]), (task, said)
    make_host = placed["make"]["host"]
    assert "bringing the outputs of make home" in said[make_host], said[make_host]
    assert any(w.startswith("outputs of make home: 1 file, ") for w in said[make_host])
    if placed["use"]["host"] != make_host:  # the scheduler may keep the chain on one host
        assert any(w.startswith("inputs of use pushed: ") for w in said[placed["use"]["host"]])


def test_exec_verbose_names_each_host(fleet4: Fleet) -> None:
    r = run_meshrun("exec", "--hosts", fleet4.hosts_toml, "-v", "--", "true")
    assert r.rc == 0, r.describe()
    logged = [line for line in r.stderr.splitlines() if line.startswith("meshrun: INFO: ")]
    assert sorted(HOSTS.match(line).group(1) for line in logged if HOSTS.match(line)) == sorted(
        fleet4.names
    ), r.describe()
    assert all(HOSTS.match(line) for line in logged), logged

"""Helpers for the ``meshrun dispatch`` integration tests: projects, runs, logs.

A test project is a directory with a tasks.toml (written from plain dicts here) and
whatever workspace files the test needs. Runs go through the installed console script
(``helpers.run_meshrun``) with ``--json``, so every assertion reads the real document.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from helpers import Result, finish, interrupt, run_meshrun, spawn_meshrun

from meshrun.testing.fleet import Fleet

#: Echoed by tasks that want their start/end on the record (``date +%s.%N``).
STAMP_START = 'echo "meshrun-test-start $(date +%s.%N)"'
STAMP_END = 'echo "meshrun-test-end $(date +%s.%N)"'
_STAMP_RE = re.compile(r"^meshrun-test-(start|end) (\d+\.\d+)$", re.MULTILINE)


def _toml(value: object) -> str:
    """A TOML value: str, int, bool, lists, and dicts as inline tables (JSON escapes are
    valid TOML)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def tasks_toml(
    tasks: Sequence[Mapping[str, object]],
    *,
    defaults: Mapping[str, object] | None = None,
    sync: Mapping[str, object] | None = None,
) -> str:
    """tasks.toml text: optional [defaults] and [sync] tables, then one [[task]] each."""
    lines: list[str] = []
    for table, keys in (("defaults", defaults), ("sync", sync)):
        if keys:
            lines += [f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in keys.items()), ""]
    for task in tasks:
        lines += ["[[task]]", *(f"{k} = {_toml(v)}" for k, v in task.items()), ""]
    return "\n".join(lines)


def write_project(
    root: Path,
    tasks: Sequence[Mapping[str, object]],
    *,
    defaults: Mapping[str, object] | None = None,
    sync: Mapping[str, object] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Create ``root`` with tasks.toml and ``files`` (relative path -> text); the toml path."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    tasks_file = root / "tasks.toml"
    tasks_file.write_text(tasks_toml(tasks, defaults=defaults, sync=sync))
    return tasks_file


def dispatch(
    tasks_file: Path,
    hosts: Path | str,
    *args: str | os.PathLike[str],
    timeout_s: float = 60.0,
) -> Result:
    """``meshrun dispatch TASKS --hosts HOSTS --json ARGS`` to completion."""
    return run_meshrun(
        "dispatch", tasks_file, "--hosts", hosts, "--json", *args, timeout_s=timeout_s
    )


def tasks_of(result: Result) -> dict[str, dict[str, Any]]:
    """The --json document's task entries by name."""
    assert result.doc is not None, f"expected a JSON document on stdout{result.describe()}"
    return {t["name"]: t for t in result.doc["tasks"]}


def task_statuses(result: Result) -> dict[str, str]:
    return {name: t["status"] for name, t in tasks_of(result).items()}


def workdir_of(result: Result, host: str) -> Path:
    """Where ``host`` ran this run's tasks: the workdir the report names for it (the
    run's own workdir under the host's, meshrun.workspace.workdirs)."""
    assert result.doc is not None, f"expected a JSON document on stdout{result.describe()}"
    for entry in result.doc["hosts"]:
        if entry["name"] == host:
            assert entry.get("workdir"), f"expected a workdir for {host}{result.describe()}"
            return Path(entry["workdir"])
    raise AssertionError(f"no host {host!r} in the report{result.describe()}")


def log_text(result: Result, task: str) -> str:
    """The log the report names for ``task``: its file, or its slice of the shared file
    (``log_offset``, ``log_bytes``) when it succeeded."""
    entry = tasks_of(result)[task]
    path = Path(entry["log"])
    assert path.is_file(), f"expected a log file for {task} at {path}{result.describe()}"
    with path.open("rb") as f:
        f.seek(entry["log_offset"] or 0)
        data = f.read() if entry["log_bytes"] is None else f.read(entry["log_bytes"])
    return data.decode(errors="replace")


def stamps(log: str) -> dict[str, float]:
    """``{"start": t, "end": t}`` from the STAMP_* lines of the last attempt in ``log``."""
    found: dict[str, float] = {}
    for kind, value in _STAMP_RE.findall(log):
        found[kind] = float(value)
    return found


def running_per_host(fleet: Fleet, marker: str) -> dict[str, int]:
    """How many live processes under each host's sshd have ``marker`` in their argv."""
    counts = dict.fromkeys(fleet.names, 0)
    for name in fleet.names:
        for proc in fleet.descendants(name):
            try:
                counts[name] += marker in " ".join(proc.cmdline())
            except psutil.Error:  # exited between listing and reading: not running
                continue
    return counts


def wait_host_runs(fleet: Fleet, host: str, marker: str, timeout_s: float = 10.0) -> int:
    """Poll until a process under ``host``'s sshd has ``marker`` in its command line.

    Returns how many such processes were seen; AssertionError at the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        seen = running_per_host(fleet, marker)[host]
        if seen:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(f"expected {marker!r} running on {host} within {timeout_s}s")
        time.sleep(0.05)


def spawn_dispatch(
    tasks_file: Path, hosts: Path | str, *args: str | os.PathLike[str]
) -> subprocess.Popen[str]:
    """``meshrun dispatch ... --json`` in its own process group (see ``spawn_meshrun``)."""
    return spawn_meshrun("dispatch", tasks_file, "--hosts", hosts, "--json", *args)


def kill_on_error(proc: subprocess.Popen[str]) -> None:
    """Stop a spawned meshrun that a failed wait leaves running (test teardown)."""
    if proc.poll() is None:
        interrupt(proc, signal.SIGKILL)
        proc.communicate()


def finish_when_running(
    proc: subprocess.Popen[str],
    fleet: Fleet,
    host: str,
    marker: str,
    then: Callable[[Fleet, str], None],
    timeout_s: float,
) -> Result:
    """Once ``marker`` runs on ``host``, do ``then(fleet, host)`` to it (pause it, kill
    it); then :func:`~helpers.finish` the spawned run, stopping it should anything fail."""
    try:
        wait_host_runs(fleet, host, marker)
        then(fleet, host)
        return finish(proc, timeout_s=timeout_s)
    finally:
        kill_on_error(proc)


def write_hosts(
    path: Path, fleet: Fleet, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """A hosts.toml for ``fleet`` whose per-host ``extra`` keys may be lists (labels)."""
    return fleet.write_hosts_toml(path, extra=extra)

"""Drive the installed ``meshrun`` command as a real subprocess, and watch processes.

Integration tests call the CLI exactly as a user would (the console script, a fresh
process, real exit codes) and parse ``--json``. The process helpers look at the whole
machine with ``ps``: every simulated host runs on this machine, so "nothing is left
running on any host" is "no live process has the marker in its command line".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshrun.config.hostsfile import Value
from meshrun.testing.fleet import Fleet

#: How long to poll for processes to go away: exited processes here can take ~1.5 s
#: to be reaped, and the wrapper gives a group 3 s between SIGTERM and SIGKILL.
GONE_TIMEOUT_S = 8.0

# Resets SIGINT to its default, then becomes the real command: a process started from
# a background job inherits SIGINT *ignored*, and Python would then never raise
# KeyboardInterrupt. A terminal's Ctrl-C reaches a process with SIGINT at
# its default, so that is what the Ctrl-C tests must start.
_SIGINT_DEFAULT_EXEC = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def bin_dir_without(root: Path, *, without: str, wrappers: dict[str, str] | None = None) -> Path:
    """A PATH directory: everything in /usr/bin but ``without``, plus shell wrappers
    (``name`` -> script body). ``SetEnv PATH=...`` in a host's sshd_config, or a
    coordinator's PATH, makes a machine without that program."""
    root.mkdir(parents=True)
    for entry in os.scandir("/usr/bin"):
        if entry.name != without:
            (root / entry.name).symlink_to(entry.path)
    for name, body in (wrappers or {}).items():
        (root / name).write_text(f"#!/bin/sh\n{body}\n")
        (root / name).chmod(0o755)
    return root


def meshrun_argv() -> list[str]:
    """The installed console script: next to this Python first, else on PATH.

    The PATH entry may be a pyenv shim, which works but costs a bash and a pyenv exec
    per call, so the script beside ``sys.executable`` is preferred.
    """
    beside = Path(sys.executable).parent / "meshrun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("meshrun")
    if found:
        return [found]
    return [sys.executable, "-c", "from meshrun.cli.app import main; main()"]


@dataclass
class Result:
    """One finished ``meshrun`` invocation."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    duration_s: float
    doc: Any = None  # the parsed --json document, when stdout was one

    def describe(self) -> str:
        """Everything a failing assertion needs to show what happened."""
        return (
            f"\n$ {' '.join(self.argv)}\n"
            f"rc={self.rc} after {self.duration_s:.2f}s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        """The --json document's host entries by name."""
        assert self.doc is not None, f"expected a JSON document on stdout{self.describe()}"
        return {h["name"]: h for h in self.doc["hosts"]}

    def statuses(self) -> dict[str, str]:
        return {name: h["status"] for name, h in self.hosts.items()}


def run_meshrun(
    *args: str | os.PathLike[str],
    timeout_s: float = 60.0,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``meshrun ARGS`` to completion; with ``--json``, stdout must be one document."""
    argv = [*meshrun_argv(), *map(str, args)]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    result = Result(
        argv=argv,
        rc=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        duration_s=time.monotonic() - started,
    )
    if "--json" in argv:
        try:
            result.doc = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"expected exactly one JSON document on stdout, got: {exc}{result.describe()}"
            ) from None
    return result


def spawn_meshrun(
    *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None
) -> subprocess.Popen[str]:
    """Start ``meshrun ARGS`` in its own process group with SIGINT at its default.

    Signal the group (``os.killpg(proc.pid, ...)``) as a terminal's Ctrl-C would.
    """
    argv = [*meshrun_argv(), *map(str, args)]
    return subprocess.Popen(
        [sys.executable, "-c", _SIGINT_DEFAULT_EXEC, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )


def interrupt(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """Send ``sig`` to the process group of a ``spawn_meshrun`` process."""
    os.killpg(proc.pid, sig)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> Result:
    """Wait for a spawned meshrun; on timeout kill its group and raise AssertionError.

    The message says the run hung and shows what it printed, so a hang is a clean
    test failure rather than a stuck test session.
    """
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        interrupt(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"expected meshrun to finish within {timeout_s}s; it hung and was killed"
            f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        ) from None
    result = Result(
        argv=[str(a) for a in proc.args],
        rc=proc.returncode,
        stdout=out,
        stderr=err,
        duration_s=time.monotonic() - started,
    )
    if out.strip():
        try:
            result.doc = json.loads(out)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"expected one JSON document on stdout: {exc}{result.describe()}"
            ) from None
    return result


# -- processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    stat: str
    args: str

    def __str__(self) -> str:
        return f"{self.pid} [{self.stat}] {self.args}"


def processes_with(marker: str) -> list[Proc]:
    """Live (not zombie) processes whose command line contains ``marker``, right now."""
    out = subprocess.run(
        ["ps", "-e", "-ww", "-o", "pid=,stat=,args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    me = os.getpid()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        pid, stat, args = int(parts[0]), parts[1], parts[2]
        if stat.startswith("Z") or pid == me or marker not in args:
            continue
        found.append(Proc(pid, stat, args))
    return found


def wait_gone(marker: str, timeout_s: float = GONE_TIMEOUT_S) -> list[Proc]:
    """Poll until no live process has ``marker``; what is left at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def assert_gone(marker: str, expected: str, timeout_s: float = GONE_TIMEOUT_S) -> None:
    """Assert that no live process has ``marker`` (waiting up to ``timeout_s``); the
    message is ``expected`` and what is still running."""
    left = wait_gone(marker, timeout_s)
    assert not left, f"{expected}, still running:\n{describe_procs(left)}"


def wait_running(argv_text: str, count: int, timeout_s: float = 10.0) -> list[Proc]:
    """Poll until ``count`` live processes have exactly the command line ``argv_text``.

    Exact, so the coordinator and the wrappers (whose command lines merely contain the
    text) do not count. Raises AssertionError with what was seen at the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        seen = [p for p in processes_with(argv_text) if p.args == argv_text]
        if len(seen) >= count:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"expected {count} processes {argv_text!r} within {timeout_s}s, "
                f"found {len(seen)}: {[str(p) for p in processes_with(argv_text)]}"
            )
        time.sleep(0.05)


def marker_seconds(whole: int = 60) -> str:
    """A sleep duration unique to this test, e.g. ``60.482913``, usable as a ps marker."""
    return f"{whole}.{random.randrange(100_000, 1_000_000)}"


def describe_procs(procs: list[Proc]) -> str:
    return "\n".join(str(p) for p in procs) or "(none)"


# -- inventories ----------------------------------------------------------------------


def write_inventory(
    path: Path,
    fleet: Fleet,
    *,
    names: list[str] | None = None,
    identity: str | os.PathLike[str] | None = None,
    known_hosts: str | os.PathLike[str] | None = None,
    extra: dict[str, dict[str, Value]] | None = None,
) -> Path:
    """A hosts.toml for (some of) ``fleet``; ``extra`` adds or replaces per-host keys."""
    login: dict[str, Value] = {}
    if identity:
        login["identity"] = identity
    if known_hosts:
        login["known_hosts"] = known_hosts
    return fleet.write_hosts_toml(path, names=names, defaults=login, extra=extra)


def stranger_inventory(tmp_path: Path, fleet: Fleet) -> tuple[Path, Path]:
    """(a new key no host authorizes, a hosts.toml of h1 that logs in with it)."""
    stranger = tmp_path / "stranger_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    inventory = write_inventory(tmp_path / "hosts.toml", fleet, names=["h1"], identity=stranger)
    return stranger, inventory

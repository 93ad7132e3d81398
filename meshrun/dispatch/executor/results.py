"""What a dispatch run is given and what it returns: options in, a report out.

These are result objects, read by the console, the run record (report.json, JUnit,
the manifest) and history; the documents are written from them elsewhere.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterator

from meshrun import stopsignals
from meshrun.dispatch.executor.logs import log_chunks, log_tail
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.errors import ExitCode
from meshrun.integrity.manifest import AttemptEntry, FileEntry
from meshrun.records import record


@record
class DispatchOptions:
    fail_fast: bool = False
    max_fail: int | None = None
    default_timeout_s: float | None = None  # a task's own timeout wins
    use_agent: bool = True
    sync: bool = True
    load_poll_s: float = 2.0
    #: How long tasks no host can run yet wait for one to appear (``--discover``):
    #: until then a run with no usable host is not given up.
    wait_for_hosts_s: float = 0.0


class HostState(enum.StrEnum):
    """Where a host stands in a run. A str: report.json and the console show the value."""

    CONNECTING = "connecting"  # connecting and setting up (runner, workspace)
    OK = "ok"  # ready: takes tasks
    LOST = "lost"  # went away after it was ready, or left while connecting
    UNREACHABLE = "unreachable"  # connecting or setting it up failed
    UNUSED = "unused"  # in the report: still connecting when the run ended


@record
class TaskResult:
    name: str
    status: TaskStatus
    host: str | None
    exit_code: int | None
    attempts: int
    duration_s: float | None  # of the last attempt
    #: The file that holds its log: ``logs/<task>.log``, or for a task that succeeded
    #: with a small log the run's ``logs/succeeded.log``, of which its log is the
    #: ``log_bytes`` bytes from ``log_offset`` (None: the whole file).
    log: str
    error: str | None
    files: tuple[FileEntry, ...] = ()  # collected outputs, verified on arrival
    timeline: tuple[AttemptEntry, ...] = ()  # every attempt, lost and moved ones too
    log_offset: int | None = None
    log_bytes: int | None = None

    def log_chunks(self) -> Iterator[bytes]:
        """Its log, a chunk at a time (a log may be larger than memory). OSError if
        there is none (it never ran)."""
        return log_chunks(self.log, self.log_offset, self.log_bytes)

    def log_tail(self, limit_bytes: int) -> tuple[bytes, bool]:
        """The last ``limit_bytes`` of its log, and whether earlier output was cut.
        OSError if there is none."""
        return log_tail(self.log, self.log_offset, self.log_bytes, limit=limit_bytes)


@record
class HostSummary:
    """How a host took part. ``refused``: connecting to it failed (network, host key,
    auth: a ConnectError), which makes the run exit 3 whatever the other hosts did."""

    name: str
    status: HostState  # OK, LOST, UNREACHABLE or UNUSED
    runner: str | None  # "agent" | "exec"
    slots: int | None
    tasks_run: int
    error: str | None = None
    address: str = ""
    host_key_fingerprint: str | None = None
    refused: bool = False
    #: Where its tasks ran: the workdir this run claimed there (meshrun.workspace.workdirs).
    workdir: str | None = None


@record
class DispatchReport:
    run_id: str
    started_at: float  # wall clock, for the record
    duration_s: float
    tasks: tuple[TaskResult, ...]
    hosts: tuple[HostSummary, ...]
    run_dir: str
    interrupted: bool = False  # by Ctrl-C, SIGTERM or SIGHUP: ``stop_signal`` says which
    integrity_failures: tuple[str, ...] = ()  # tasks whose outputs failed verification
    stop_signal: int | None = None  # the signal that interrupted it (2, 15, 1)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(t.status is TaskStatus.SUCCEEDED for t in self.tasks)

    @property
    def succeeded(self) -> tuple[TaskResult, ...]:
        """The tasks that succeeded, in the graph's order."""
        return tuple(t for t in self.tasks if t.status is TaskStatus.SUCCEEDED)

    @property
    def failed(self) -> tuple[TaskResult, ...]:
        """Every other task: failed, timed out, cancelled or skipped (``status`` and
        ``error`` say which and why)."""
        return tuple(t for t in self.tasks if t.status is not TaskStatus.SUCCEEDED)

    @property
    def refused_hosts(self) -> tuple[HostSummary, ...]:
        """Hosts that could not be connected to or refused us (key, auth, network)."""
        return tuple(h for h in self.hosts if h.refused)

    @property
    def exit_code(self) -> int:
        """The exit-code contract for dispatch (docs/ARCHITECTURE.md): 128 + the signal
        that interrupted it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 4, then 3 if
        any host was refused or unreachable when connecting (a changed key may be an
        attack, so the other hosts finishing the work does not make the run green) or
        no host could be reached (or none was found), then 1."""
        if self.interrupted:
            return stopsignals.exit_code_for_signal(self.stop_signal or signal.SIGINT)
        if self.integrity_failures:
            return ExitCode.INTEGRITY
        if self.refused_hosts:
            return ExitCode.CONNECT
        if not self.ok and all(h.status == HostState.UNREACHABLE for h in self.hosts):
            return ExitCode.CONNECT
        return ExitCode.OK if self.ok else ExitCode.FAILED

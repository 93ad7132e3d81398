"""The dispatch executor: the only place that joins the scheduler to the world.

Threads connect to hosts (sync the workspace, start a runner) and runners report task
output and exits; everything lands in one queue. This thread owns the scheduler: it
turns what arrives into scheduler events, carries out the decisions (start a task on a
runner, cancel one), enforces timeouts with the clock, writes each task's log, and
hands progress to an observer (the console). Ctrl-C once: cancel every running task
(their process groups are killed on the hosts) and collect; twice: close every link.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import BinaryIO

from meshrun import stopsignals
from meshrun.agent.client import (
    LoadReport,
    Runner,
    RunnerEvent,
    RunnerGone,
    TaskExited,
    TaskOutput,
    start_runner,
)
from meshrun.config.inventory import Host
from meshrun.config.sizes import format_size
from meshrun.config.tasks import Task, TaskGraph
from meshrun.dispatch.scheduler import (
    Abandon,
    Cancel,
    CancelAll,
    Decisions,
    Ended,
    HostJoined,
    HostLoad,
    HostLost,
    HostsJoined,
    HostSpec,
    Policy,
    RunStarted,
    Scheduler,
    Start,
    TaskFailed,
    TaskStatus,
    TaskStopped,
    TaskSucceeded,
)
from meshrun.errors import (
    ConnectError,
    HostUnreachable,
    IntegrityError,
    MeshrunError,
    in_context,
)
from meshrun.integrity.manifest import AttemptEntry, FileEntry
from meshrun.records import record
from meshrun.transport.base import Connection, Connector, Stream

log = logging.getLogger(__name__)

#: After asking a host to stop a task (timeout, cancel), how long to wait for its exit
#: before the host counts as lost (hung) and its tasks are re-queued elsewhere.
STOP_GRACE_S = 10.0
#: At the start of a run, hosts that connect within this long after the first one join
#: together, so the first to connect does not start the longest tasks before faster
#: hosts are known. Later hosts join as they come.
GATHER_S = 0.5


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


@record
class TaskResult:
    name: str
    status: TaskStatus
    host: str | None
    exit_code: int | None
    attempts: int
    duration_s: float | None  # of the last attempt
    log: str
    error: str | None
    files: tuple[FileEntry, ...] = ()  # collected outputs, verified on arrival
    timeline: tuple[AttemptEntry, ...] = ()  # every attempt, lost and moved ones too


@record
class HostSummary:
    """How a host took part. ``refused``: connecting to it failed (network, host key,
    auth: a ConnectError), which makes the run exit 3 whatever the other hosts did."""

    name: str
    status: str  # "ok" | "lost" | "unreachable" | "unused"
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
            return 4
        if self.refused_hosts:
            return 3
        if not self.ok and all(h.status == "unreachable" for h in self.hosts):
            return 3
        return 0 if self.ok else 1


# -- what the observer sees -----------------------------------------------------------


@record
class HostReady:
    name: str
    runner: str
    slots: int


@record
class HostDown:
    name: str
    reason: str
    ever_ready: bool
    refused: bool = False  # connecting failed (key, auth, network): the run exits 3


@record
class TaskStarted:
    task: str
    host: str
    attempt: int


@record
class TaskLine:
    task: str
    stream: Stream
    data: bytes


@record
class TaskEnded:
    task: str
    host: str | None
    status: TaskStatus | None  # None: will be retried
    exit_code: int | None
    duration_s: float
    error: str | None


@record
class Notice:
    text: str


@record
class Progress:
    """A snapshot for the progress line; ``eta_s`` from expected durations."""

    done: int
    total: int
    failed: int
    running: tuple[tuple[str, int], ...]  # (host, tasks running there)
    eta_s: float | None


DispatchEvent = HostReady | HostDown | TaskStarted | TaskLine | TaskEnded | Notice | Progress
Observer = Callable[[DispatchEvent], None]


def _ignore(event: DispatchEvent) -> None:
    """The default observer."""


# -- internal queue items ---------------------------------------------------------------


@record
class _Ready:
    host: Host
    runner: Runner
    fingerprint: str | None
    workdir: str  # where its tasks run (the run's own workdir there, when it claimed one)


@record
class _Unreachable:
    host: Host
    error: str
    refused: bool = False  # a ConnectError: the run exits 3


@record
class _Collected:
    """Outputs of a finished task came home (``files``) or could not (``error``)."""

    task_id: str
    files: tuple[FileEntry, ...]
    error: str | None = None
    integrity: bool = False


@record
class _AddHost:
    host: Host


@record
class _RemoveHost:
    name: str
    reason: str


@record
class _Staged:
    """A task's inputs reached its host (``error`` None) or could not."""

    task_id: str
    sent_bytes: int = 0
    error: str | None = None
    integrity: bool = False


_Item = RunnerEvent | _Ready | _Unreachable | _Collected | _Staged | _AddHost | _RemoveHost


@record(frozen=False)
class _Attempt:
    task: str
    host: str
    number: int
    started: float
    deadline: float | None
    log: BinaryIO
    timed_out: bool = False
    cancelled: bool = False
    stop_sent: float | None = None  # when we asked the host to stop it
    staging: bool = False  # its needs' outputs are still being pushed to the host


@record(frozen=False)
class _HostInfo:
    host: Host
    runner: Runner | None = None
    status: str = "connecting"
    slots: int | None = None
    tasks_run: int = 0
    error: str | None = None
    fingerprint: str | None = None
    refused: bool = False  # kept when the host joins again (discovery): exit 3 stands
    workdir: str | None = None  # where its tasks run, once ready

    @property
    def placed(self) -> Host:
        """The host as its tasks see it: with the workdir they run in."""
        if self.workdir is None or self.workdir == self.host.workdir:
            return self.host
        return replace(self.host, workdir=self.workdir)


def _without_host(error: str, host: Host) -> str:
    """An error about ``host`` without its leading ``NAME: ``: the report and the console
    name the host already ("h2 refused: h2: ..." said it twice)."""
    return error.removeprefix(f"{host.name}: ")


#: Readies a connected host for tasks once its runner is up: claims the run's workdir
#: there and pushes the workspace into it; returns the workdir its tasks run in.
PrepareFn = Callable[[Host, Connection, Runner], str]
#: Collects a task's outputs on its host and brings them home, verified.
#: ``succeeded`` False: the task failed; what it left is brought home all the same (a
#: failing test report is the file a CI run needs most), and missing outputs are no error.
CollectFn = Callable[[Host, Task, bool], tuple[FileEntry, ...]]
#: Pushes needs' outputs (need name, its verified files) to a host; returns bytes sent.
StageFn = Callable[[Host, Sequence[tuple[str, tuple[FileEntry, ...]]]], int]


@record(frozen=False, slots=False)
class Dispatcher:
    """One dispatch run. Build it, then call ``run()`` once."""

    graph: TaskGraph
    hosts: Sequence[Host]
    connector: Connector
    run_id: str
    run_dir: Path
    expected_s: Mapping[str, float]
    options: DispatchOptions = field(default_factory=DispatchOptions)
    observer: Observer = _ignore
    prepare: PrepareFn | None = None  # pushes the workspace to a host before it joins
    collect: CollectFn | None = None  # brings an ended task's outputs home
    stage: StageFn | None = None  # pushes needs' outputs to a dependent's host
    #: Outputs of needs that passed in an earlier run (``graph.done_needs``; a rerun):
    #: pushed before each dependent starts, wherever it runs, as a full run would.
    prior_outputs: Mapping[str, tuple[FileEntry, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._connectors: list[threading.Thread] = []
        self._wait_for_hosts_until = 0.0  # monotonic; set by run()
        self._info = {h.name: _HostInfo(h) for h in self.hosts}
        self._running: dict[str, _Attempt] = {}  # runner task id -> attempt
        self._durations: dict[str, float] = {}  # successful attempt durations
        self._last_duration: dict[str, float] = {}
        self._announced: set[str] = set()  # tasks whose end the observer has seen
        self._gathering: list[HostSpec] = []  # ready hosts held back at the start
        self._gather_until: float | None = None  # None: not started; inf: done
        self._starts = 0
        self._collecting: dict[str, tuple[_Attempt, float, TaskFailed | None]] = {}
        self._timeline: dict[str, list[AttemptEntry]] = {}
        self._collectors: list[threading.Thread] = []
        self._files: dict[str, tuple[FileEntry, ...]] = {}
        self._integrity: list[str] = []
        self._interrupted = False
        self._stop_signal: int = signal.SIGINT
        self._closing = False
        self._scheduler = Scheduler(
            self.graph,
            self.expected_s,
            Policy(fail_fast=self.options.fail_fast, max_fail=self.options.max_fail),
        )
        self.logs_dir = self.run_dir / "logs"

    # -- public ------------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        """A host that appeared during the run (discovery): connect and let it join.

        Thread-safe. A host already in the run is ignored; one that was lost or
        unreachable joins again.
        """
        self._queue.put(_AddHost(host))

    def remove_host(self, name: str, reason: str) -> None:
        """A host that left (discovery): handled as lost, its tasks re-queued. Thread-safe."""
        self._queue.put(_RemoveHost(name, reason))

    def run(self) -> DispatchReport:
        started_wall = time.time()
        started = time.monotonic()
        self._wait_for_hosts_until = started + self.options.wait_for_hosts_s
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            self._start_connecting(host)
        self._apply(self._scheduler.handle(RunStarted(), self._now(started)), started)
        next_load_poll = time.monotonic() + self.options.load_poll_s
        next_progress = time.monotonic()
        while not self._scheduler.finished:
            try:
                self._step(started)
                if time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + 0.5
                    self.observer(self._progress())
                if time.monotonic() >= next_load_poll:
                    next_load_poll = time.monotonic() + self.options.load_poll_s
                    self._poll_load()
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (stopsignals)
                if not self._interrupted:
                    self._interrupted = True
                    self._stop_signal = stopsignals.signal_of(exc)
                    self.observer(
                        Notice(
                            f"{self._stop_reason()}: stopping every running task "
                            "(Ctrl-C again to disconnect at once)"
                        )
                    )
                    self._apply(
                        self._scheduler.handle(CancelAll(self._stop_reason()), self._now(started)),
                        started,
                    )
                else:
                    self.observer(Notice("disconnecting"))
                    self._abort_running(started)
                    break
        self._shutdown(self._connectors)
        return self._report(started_wall, time.monotonic() - started)

    # -- the loop --------------------------------------------------------------------

    @staticmethod
    def _now(started: float) -> float:
        return time.monotonic() - started

    def _step(self, started: float) -> None:
        waiting_hosts = any(i.status == "connecting" for i in self._info.values())
        if (
            not waiting_hosts
            and not self._gathering
            and not self._running
            and self._scheduler.stalled
            and time.monotonic() >= self._wait_for_hosts_until
        ):
            live = [n for n, i in self._info.items() if i.status == "ok"]
            reason = (
                "no reachable host matches its labels or weight" if live else "no host is reachable"
            )
            self._apply(self._scheduler.handle(Abandon(reason), self._now(started)), started)
            return
        try:
            item = self._queue.get(timeout=self._wait_s())
        except queue.Empty:
            item = None
        if item is not None:
            self._handle(item, started)
            # Drain what else is there before deciding: fewer, larger batches.
            while True:
                try:
                    self._handle(self._queue.get_nowait(), started)
                except queue.Empty:
                    break
        self._join_gathered(started)
        self._check_deadlines()

    def _join_gathered(self, started: float) -> None:
        """Join the hosts held back at the start once all connected, or GATHER_S passed."""
        if self._gather_until is None or self._gather_until == float("inf"):
            return
        connecting = any(i.status == "connecting" for i in self._info.values())
        if connecting and time.monotonic() < self._gather_until:
            return
        self._gather_until = float("inf")
        joined = HostsJoined(tuple(self._gathering))
        self._gathering.clear()
        self._apply(self._scheduler.handle(joined, self._now(started)), started)

    def _progress(self) -> Progress:
        records = self._scheduler.records.values()
        done = sum(1 for r in records if r.status.final)
        failed = sum(1 for r in records if r.status is TaskStatus.FAILED)
        per_host: dict[str, int] = {}
        for attempt in self._running.values():
            per_host[attempt.host] = per_host.get(attempt.host, 0) + 1
        now = time.monotonic()
        elapsed = {a.task: now - a.started for a in self._running.values()}
        work = sum(
            max(0.0, r.expected_s - elapsed.get(name, 0.0)) * r.task.weight
            for name, r in self._scheduler.records.items()
            if not r.status.final
        )
        capacity = sum(
            self._scheduler.limit(name) * info.host.weight
            for name, info in self._info.items()
            if info.status == "ok" and name in self._scheduler.hosts  # not while gathering
        )
        # Unknown when nothing is left by the estimates but tasks still run (overruns).
        eta = work / capacity if capacity and work > 0 else None
        return Progress(
            done, len(self._scheduler.records), failed, tuple(sorted(per_host.items())), eta
        )

    def _wait_s(self) -> float:
        deadlines = [
            a.deadline for a in self._running.values() if a.deadline is not None and not a.timed_out
        ]
        if self._gather_until not in (None, float("inf")):
            deadlines.append(self._gather_until)
        if not deadlines:
            return 0.2
        return max(0.0, min(0.2, min(deadlines) - time.monotonic()))

    def _handle(self, item: _Item, started: float) -> None:
        now = self._now(started)
        if isinstance(item, _Ready):
            info = self._info[item.host.name]
            if info.status != "connecting" or info.host is not item.host:
                # It left (or was replaced) while connecting: not part of the run.
                threading.Thread(target=item.runner.close, daemon=True).start()
                return
            info.runner = item.runner
            info.fingerprint = item.fingerprint
            info.workdir = item.workdir
            info.status = "ok"
            info.slots = item.host.slots or item.runner.cpus or 1
            slots = f"{info.slots} slot{'s' * (info.slots != 1)}"
            log.info("%s: ready (%s runner, %s)", item.host.name, item.runner.kind, slots)
            self.observer(HostReady(item.host.name, item.runner.kind, info.slots))
            spec = HostSpec(item.host.name, info.slots, item.host.weight, item.host.labels)
            if self._gather_until == float("inf"):
                self._apply(self._scheduler.handle(HostJoined(spec), now), started)
            else:
                self._gathering.append(spec)
                if self._gather_until is None:
                    self._gather_until = time.monotonic() + GATHER_S
        elif isinstance(item, _Unreachable):
            info = self._info[item.host.name]
            if info.host is not item.host:
                return
            # A host that left while connecting (discovery) was not refused: it went away.
            info.refused = info.refused or (item.refused and info.status == "connecting")
            info.status = "unreachable"
            info.error = item.error
            self.observer(
                HostDown(item.host.name, item.error, ever_ready=False, refused=item.refused)
            )
        elif isinstance(item, TaskOutput):
            attempt = self._running.get(item.task_id)
            if attempt is not None:
                attempt.log.write(item.data)
                self.observer(TaskLine(attempt.task, item.stream, item.data))
        elif isinstance(item, TaskExited):
            self._exited(item, started)
        elif isinstance(item, LoadReport):
            self._apply(
                self._scheduler.handle(HostLoad(item.host, item.load1, item.cpus), now), started
            )
        elif isinstance(item, RunnerGone):
            self._host_lost(item.host, item.reason, started)
        elif isinstance(item, _Collected):
            self._collected(item, started)
        elif isinstance(item, _Staged):
            self._staged(item, started)
        elif isinstance(item, _AddHost):
            known = self._info.get(item.host.name)
            if known is None or known.status in ("lost", "unreachable"):
                refused = known is not None and known.refused
                self._info[item.host.name] = _HostInfo(item.host, refused=refused)
                self._start_connecting(item.host)
        elif isinstance(item, _RemoveHost):
            known = self._info.get(item.name)
            if known is not None and known.status == "connecting":
                known.status = "lost"
                known.error = item.reason
            else:
                self._host_lost(item.name, item.reason, started)

    def _exited(self, event: TaskExited, started: float) -> None:
        attempt = self._running.get(event.task_id)
        if attempt is None or attempt.host != event.host:
            return  # a late report from a host already written off
        del self._running[event.task_id]
        duration = time.monotonic() - attempt.started
        self._last_duration[attempt.task] = duration
        ending = f"exit {event.exit_code} after {duration:.2f}s"
        if attempt.timed_out:  # its exit code is the kill's, not an answer of its own
            ending = f"timed out after {self._timeout_of(attempt.task):g}s: killed, {ending}"
        attempt.log.write(f"\n# meshrun: {ending}\n".encode())
        attempt.log.close()
        info = self._info[attempt.host]
        info.tasks_run += 1
        if event.exit_code is None and not (attempt.timed_out or attempt.cancelled):
            # The runner lost it; a RunnerGone follows and re-queues it.
            return
        if attempt.cancelled and not attempt.timed_out:
            self._stopped(attempt, event.exit_code, duration, started)
            return
        if attempt.timed_out:
            timeout = self._timeout_of(attempt.task)
            event_out: TaskFailed | TaskSucceeded = TaskFailed(
                attempt.task,
                attempt.host,
                event.exit_code,
                f"timed out after {timeout:g}s; its processes were killed",
                infrastructure=True,
            )
        elif event.exit_code == 0:
            self._durations[attempt.task] = duration * self._speed(attempt.host)
            task = self.graph.tasks[attempt.task]
            if self.collect is not None and (task.outputs or task.outputs_on_success):
                # Bring the outputs home before the task counts as succeeded; its slot
                # stays taken meanwhile. The result comes back as a _Collected.
                self._start_collecting(event.task_id, attempt, duration, None)
                return
            event_out = TaskSucceeded(attempt.task, attempt.host, duration)
        else:
            event_out = TaskFailed(
                attempt.task, attempt.host, event.exit_code, f"exit code {event.exit_code}"
            )
        failed_with_outputs = isinstance(event_out, TaskFailed) and bool(
            self.graph.tasks[attempt.task].outputs
        )
        if failed_with_outputs and self.collect is not None:
            assert isinstance(event_out, TaskFailed)
            self._start_collecting(event.task_id, attempt, duration, event_out)
            return
        self._conclude(attempt, duration, event_out, event.exit_code, started)

    def _start_collecting(
        self, task_id: str, attempt: _Attempt, duration: float, failed: TaskFailed | None
    ) -> None:
        """Collect an ended attempt's outputs off this thread; a _Collected comes back.
        ``failed``: how the attempt failed (it stays failed, whatever comes home)."""
        self._collecting[task_id] = (attempt, duration, failed)
        thread = threading.Thread(
            target=self._collect_outputs,
            args=(task_id, self._info[attempt.host].placed, self.graph.tasks[attempt.task]),
            kwargs={"succeeded": failed is None},
            name=f"meshrun-collect-{attempt.task}",
            daemon=True,
        )
        self._collectors.append(thread)
        thread.start()

    def _stopped(
        self, attempt: _Attempt, exit_code: int | None, duration: float, started: float
    ) -> None:
        """A cancelled attempt has stopped: the task ends cancelled, or, when the
        scheduler moved it to a host that joined, starts again there."""
        stopped = TaskStopped(attempt.task, attempt.host, self._stop_reason())
        decisions = self._scheduler.handle(stopped, self._now(started))
        final = self._scheduler.records[attempt.task].status.final
        self._add_to_timeline(
            attempt, "cancelled" if final else "moved", exit_code, duration, started
        )
        if final:
            self._announced.add(attempt.task)
            self.observer(
                TaskEnded(
                    attempt.task,
                    attempt.host,
                    TaskStatus.CANCELLED,
                    exit_code,
                    duration,
                    "cancelled",
                )
            )
        else:
            self.observer(
                Notice(f"{attempt.task}: moved from {attempt.host} to a faster host that joined")
            )
        self._apply(decisions, started)

    def _collect_outputs(self, task_id: str, host: Host, task: Task, *, succeeded: bool) -> None:
        assert self.collect is not None
        log.info("%s: bringing the outputs of %s home", host.name, task.name)
        began = time.monotonic()
        try:
            files = self.collect(host, task, succeeded)
        except IntegrityError as exc:
            log.info("%s: the outputs of %s failed verification", host.name, task.name)
            self._queue.put(_Collected(task_id, (), str(exc), integrity=True))
        except MeshrunError as exc:
            log.info("%s: the outputs of %s did not come home: %s", host.name, task.name, exc)
            error = in_context("collecting outputs failed", str(exc), host=host.name)
            self._queue.put(_Collected(task_id, (), error))
        except Exception as exc:  # a bug must not leave the task running forever
            log.exception("%s: collecting the outputs of %s failed", host.name, task.name)
            self._queue.put(_Collected(task_id, (), f"internal error: {exc!r}"))
        else:
            took = time.monotonic() - began
            size = format_size(sum(f.size for f in files))
            log.info(
                "%s: outputs of %s home: %d file%s, %s in %.2fs",
                host.name,
                task.name,
                len(files),
                "s" * (len(files) != 1),
                size,
                took,
            )
            self._queue.put(_Collected(task_id, files))

    def _collected(self, item: _Collected, started: float) -> None:
        attempt, duration, failed = self._collecting.pop(item.task_id)
        if failed is not None:  # it stays failed; what it left is kept (or why not)
            self._files[attempt.task] = item.files
            if item.integrity:
                self._integrity.append(attempt.task)
            if item.error is not None:
                failed = replace(failed, error=f"{failed.error}; {item.error}")
            self._conclude(attempt, duration, failed, failed.exit_code, started)
            return
        if item.error is None:
            self._files[attempt.task] = item.files
            event_out: TaskFailed | TaskSucceeded = TaskSucceeded(
                attempt.task,
                attempt.host,
                duration,
                output_files=len(item.files),
                output_bytes=sum(f.size for f in item.files),
            )
        else:
            if item.integrity:
                self._integrity.append(attempt.task)
            # It exited 0 but its outputs failed: the error says so, not an exit code.
            event_out = TaskFailed(attempt.task, attempt.host, 0, item.error)
        self._conclude(attempt, duration, event_out, 0, started)

    def _conclude(
        self,
        attempt: _Attempt,
        duration: float,
        event_out: TaskFailed | TaskSucceeded,
        exit_code: int | None,
        started: float,
    ) -> None:
        """Tell the scheduler how an attempt ended, then the observer, then act."""
        if isinstance(event_out, TaskSucceeded):
            outcome = "succeeded"
        else:
            outcome = "timed out" if attempt.timed_out else "failed"
        self._add_to_timeline(attempt, outcome, exit_code, duration, started)
        decisions = self._scheduler.handle(event_out, self._now(started))
        record = self._scheduler.records[attempt.task]
        final = record.status if record.status.final else None
        self.observer(
            TaskEnded(
                attempt.task,
                attempt.host,
                final,
                exit_code,
                duration,
                record.error if final is not TaskStatus.SUCCEEDED else None,
            )
        )
        self._announce_ends(decisions.ended)
        self._apply(decisions, started)

    def _add_to_timeline(
        self, attempt: _Attempt, outcome: str, exit_code: int | None, took: float, started: float
    ) -> None:
        """Keep one attempt's host, start, end (seconds from the run's start) and end."""
        start = max(0.0, attempt.started - started)
        self._timeline.setdefault(attempt.task, []).append(
            AttemptEntry(attempt.host, start, start + max(0.0, took), outcome, exit_code)
        )

    def _announce_ends(self, ended: list[Ended]) -> None:
        """Tell the observer about tasks that ended without running (skipped/cancelled)."""
        for end in ended:
            if (
                end.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED)
                and end.task not in self._announced
            ):
                self._announced.add(end.task)
                self.observer(TaskEnded(end.task, end.host, end.status, None, 0.0, end.error))

    def _stop_reason(self) -> str:
        if self._interrupted:
            return stopsignals.how_stopped(self._stop_signal)
        return "stopped by --fail-fast"

    def _speed(self, host: str) -> float:
        return self._info[host].host.weight

    def _timeout_of(self, task: str) -> float:
        return self.graph.tasks[task].timeout_s or self.options.default_timeout_s or 0.0

    def _host_lost(self, host: str, reason: str, started: float) -> None:
        info = self._info.get(host)
        if info is None or info.status != "ok":
            return
        info.status = "lost"
        info.error = reason
        lost = [tid for tid, a in self._running.items() if a.host == host]
        for tid in lost:
            attempt = self._running.pop(tid)
            attempt.log.write(f"\n# meshrun: {host} was lost: {reason}\n".encode())
            attempt.log.close()
            took = time.monotonic() - attempt.started
            self._add_to_timeline(attempt, "lost", None, took, started)
        self.observer(HostDown(host, reason, ever_ready=True))
        if info.runner is not None:
            threading.Thread(target=info.runner.close, daemon=True).start()
        self._apply(self._scheduler.handle(HostLost(host, reason), self._now(started)), started)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for task_id, attempt in self._running.items():
            if attempt.deadline is not None and now >= attempt.deadline and not attempt.timed_out:
                attempt.timed_out = True
                self._stop_attempt(task_id, attempt)
        hung = {
            a.host
            for a in self._running.values()
            if a.stop_sent is not None and now - a.stop_sent > STOP_GRACE_S
        }
        for host in hung:
            # A host that does not even answer a kill is hung: write it off; its tasks
            # are re-queued elsewhere (or cancelled when the run is stopping).
            self._queue.put(
                RunnerGone(host, f"did not stop a task within {STOP_GRACE_S:g}s; it seems hung")
            )
            for attempt in self._running.values():
                if attempt.host == host:
                    attempt.stop_sent = None

    def _stop_attempt(self, task_id: str, attempt: _Attempt) -> None:
        if attempt.staging:
            return  # nothing runs yet; _staged sees the flag and does not start it
        attempt.stop_sent = time.monotonic()
        runner = self._info[attempt.host].runner
        if runner is not None:
            self._safe(attempt.host, runner.cancel, task_id)

    def _poll_load(self) -> None:
        for info in self._info.values():
            if info.status == "ok" and info.runner is not None:
                self._safe(info.host.name, info.runner.request_load)

    def _safe(self, host: str, fn: Callable[..., None], *args: str) -> None:
        try:
            fn(*args)
        except MeshrunError as exc:
            log.warning("%s: %s", host, str(exc).removeprefix(f"{host}: "))

    # -- decisions -------------------------------------------------------------------

    def _apply(self, decisions: Decisions, started: float) -> None:
        for decision in decisions.actions:
            if isinstance(decision, Start):
                self._start(decision, started)
            elif isinstance(decision, Cancel):
                log.info("%s: stopping %s: %s", decision.host, decision.task, decision.reason)
                for task_id, attempt in self._running.items():
                    if attempt.task == decision.task and attempt.host == decision.host:
                        attempt.cancelled = True
                        self._stop_attempt(task_id, attempt)
        for change in decisions.limit_changes:
            log.info("%s: slots %d -> %d: %s", change.host, change.before, change.after, change.why)
        self._announce_ends(decisions.ended)

    def _start(self, decision: Start, started: float) -> None:
        task = self.graph.tasks[decision.task]
        info = self._info[decision.host]
        # Unique per start: a re-queued task must never share an id with the attempt
        # on a lost host, whose late reports would otherwise be taken for the new one.
        self._starts += 1
        task_id = f"{decision.task}#{self._starts}"
        stolen = f", taken from {decision.stolen_from}'s queue" if decision.stolen_from else ""
        log.info(
            "%s: starts %s (attempt %d%s)", decision.host, decision.task, decision.attempt, stolen
        )
        log_file = (self.logs_dir / f"{decision.task}.log").open("ab")
        log_file.write(
            f"# meshrun: attempt {decision.attempt} on {decision.host}: {task.run}\n".encode()
        )
        attempt = _Attempt(
            decision.task, decision.host, decision.attempt, time.monotonic(), None, log_file
        )
        self._running[task_id] = attempt
        self.observer(TaskStarted(decision.task, decision.host, decision.attempt))
        moves = [
            (need, self._files[need])
            for need in task.needs
            if self._files.get(need) and self._scheduler.records[need].host != decision.host
        ] + [
            (need, self.prior_outputs[need])
            for need in self.graph.done_needs.get(decision.task, ())
            if self.prior_outputs.get(need)
        ]
        if moves and self.stage is not None:
            # The needs ran elsewhere: push their outputs first, off this thread. The
            # slot stays taken meanwhile; the command starts when _Staged arrives.
            attempt.staging = True
            attempt.deadline = None
            thread = threading.Thread(
                target=self._stage_inputs,
                args=(task_id, info.placed, moves),
                name=f"meshrun-stage-{decision.task}",
                daemon=True,
            )
            self._collectors.append(thread)
            thread.start()
            return
        self._launch(task_id, attempt)

    def _stage_inputs(
        self, task_id: str, host: Host, moves: Sequence[tuple[str, tuple[FileEntry, ...]]]
    ) -> None:
        assert self.stage is not None
        task, needs = task_id.rpartition("#")[0], ", ".join(need for need, _ in moves)
        log.info("%s: pushing the outputs of %s for %s", host.name, needs, task)
        began = time.monotonic()
        try:
            sent = self.stage(host, moves)
        except IntegrityError as exc:
            log.info("%s: the inputs of %s failed verification", host.name, task)
            self._queue.put(_Staged(task_id, error=str(exc), integrity=True))
        except MeshrunError as exc:
            log.info("%s: the inputs of %s could not be pushed: %s", host.name, task, exc)
            error = in_context("pushing its inputs failed", str(exc), host=host.name)
            self._queue.put(_Staged(task_id, error=error))
        except Exception as exc:  # a bug must not leave the task staging forever
            log.exception("%s: pushing the inputs of %s failed", host.name, task)
            self._queue.put(_Staged(task_id, error=f"internal error: {exc!r}"))
        else:
            took = time.monotonic() - began
            log.info(
                "%s: inputs of %s pushed: %s in %.2fs", host.name, task, format_size(sent), took
            )
            self._queue.put(_Staged(task_id, sent_bytes=sent))

    def _staged(self, item: _Staged, started: float) -> None:
        attempt = self._running.get(item.task_id)
        if attempt is None or not attempt.staging:
            return  # its host was lost meanwhile (the task is re-queued), or interrupted
        attempt.staging = False
        took = time.monotonic() - attempt.started
        if attempt.cancelled:
            del self._running[item.task_id]
            attempt.log.close()
            self._stopped(attempt, None, took, started)
            return
        if item.error is not None:
            del self._running[item.task_id]
            attempt.log.write(f"# meshrun: {item.error}\n".encode())
            attempt.log.close()
            self._last_duration[attempt.task] = took
            if item.integrity:
                self._integrity.append(attempt.task)
            failed = TaskFailed(
                attempt.task, attempt.host, None, item.error, infrastructure=not item.integrity
            )
            self._conclude(attempt, took, failed, None, started)
            return
        note = f"# meshrun: its needs' outputs pushed here ({item.sent_bytes} bytes, {took:.2f}s)\n"
        attempt.log.write(note.encode())
        self._launch(item.task_id, attempt)

    def _launch(self, task_id: str, attempt: _Attempt) -> None:
        """Run the attempt's command on its host; its clock and timeout start now."""
        task = self.graph.tasks[attempt.task]
        info = self._info[attempt.host]
        assert info.runner is not None
        timeout = task.timeout_s or self.options.default_timeout_s
        attempt.started = time.monotonic()
        attempt.deadline = None if timeout is None else attempt.started + timeout
        env = {
            **task.env,
            "MESHRUN_HOST": attempt.host,
            "MESHRUN_RUN_ID": self.run_id,
            "MESHRUN_TASK": attempt.task,
            "MESHRUN_ATTEMPT": str(attempt.number),
        }
        try:
            info.runner.run(task_id, task.run, info.placed.workdir, env)
        except MeshrunError as exc:
            self._queue.put(TaskExited(attempt.host, task_id, None, str(exc)))
            self._queue.put(RunnerGone(attempt.host, str(exc)))

    # -- connecting and closing ----------------------------------------------------------

    def _start_connecting(self, host: Host) -> None:
        if self._closing:
            return
        thread = threading.Thread(
            target=self._connect, args=(host,), name=f"meshrun-connect-{host.name}", daemon=True
        )
        self._connectors.append(thread)
        thread.start()

    def _connect(self, host: Host) -> None:
        try:
            conn = self.connector.connect(host)
            try:
                runner, workdir = self._set_up(host, conn)
            except HostUnreachable as exc:
                if self._closing:
                    raise
                # It connected and authenticated, then the link dropped while the agent
                # started or the workspace went over: once, take it for a blip and
                # connect again (a host that drops again is given up as before).
                log.info("%s: lost while setting up (%s); connecting again", host.name, exc)
                conn = self.connector.connect(host)
                runner, workdir = self._set_up(host, conn)
        except ConnectError as exc:
            self._queue.put(_Unreachable(host, _without_host(str(exc), host), refused=True))
            return
        except MeshrunError as exc:
            self._queue.put(_Unreachable(host, _without_host(str(exc), host)))
            return
        except Exception as exc:  # never hang the run on a bug in one host's set-up
            log.exception("%s: setting up failed", host.name)
            self._queue.put(_Unreachable(host, f"internal error: {exc!r}"))
            return
        if self._closing:
            runner.close()
            return
        self._queue.put(_Ready(host, runner, conn.host_key_fingerprint, workdir))

    def _set_up(self, host: Host, conn: Connection) -> tuple[Runner, str]:
        """Start the host's runner, then push the workspace through it (``prepare``);
        the runner and the workdir its tasks run in. No task starts before both."""
        runner = start_runner(conn, host.workdir, self._queue.put, use_agent=self.options.use_agent)
        if self.prepare is None:
            return runner, host.workdir
        log.info("%s: pushing the workspace", host.name)
        began = time.monotonic()
        try:
            workdir = self.prepare(host, conn, runner)
        except BaseException:
            runner.close()
            raise
        log.info(
            "%s: workspace pushed in %.2fs to %s", host.name, time.monotonic() - began, workdir
        )
        return runner, workdir

    def _abort_running(self, started: float) -> None:
        for info in self._info.values():
            if info.runner is not None:
                threading.Thread(target=info.runner.close, daemon=True).start()
        # Stop first, so that no task being moved is queued again.
        self._scheduler.handle(CancelAll(self._stop_reason()), self._now(started))
        for attempt in list(self._running.values()):
            attempt.log.close()
            took = time.monotonic() - attempt.started
            self._add_to_timeline(attempt, "cancelled", None, took, started)
            stopped = TaskStopped(attempt.task, attempt.host, self._stop_reason())
            self._scheduler.handle(stopped, self._now(started))
        self._running.clear()

    def _shutdown(self, connectors: list[threading.Thread]) -> None:
        self._closing = True
        closers = []
        for info in self._info.values():
            if info.runner is not None and info.status == "ok":
                closer = threading.Thread(target=info.runner.close, daemon=True)
                closer.start()
                closers.append(closer)
        for thread in [*closers, *self._collectors]:
            thread.join(timeout=15)
        # Hosts still connecting (hung in a handshake) are not waited for: the caller
        # closes the connector, which aborts them, and a runner handed over late is
        # closed below or by _connect itself.
        for thread in connectors:
            thread.join(timeout=0.1)
        # A host still connecting when the run ended hands its runner over late.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Ready):
                item.runner.close()
        for attempt in self._running.values():
            attempt.log.close()

    def _report(self, started_wall: float, duration_s: float) -> DispatchReport:
        tasks = tuple(
            TaskResult(
                name=name,
                status=record.status,
                host=record.host,
                exit_code=record.exit_code if record.status is not TaskStatus.SUCCEEDED else 0,
                # Every attempt counts here, a lost or moved one too (the scheduler's
                # count, which bounds retries, leaves those out).
                attempts=len(self._timeline.get(name, ())) or record.attempts,
                duration_s=self._last_duration.get(name),
                log=str(self.logs_dir / f"{name}.log"),
                error=record.error if record.status is not TaskStatus.SUCCEEDED else None,
                files=self._files.get(name, ()),
                timeline=tuple(self._timeline.get(name, ())),
            )
            for name, record in self._scheduler.records.items()
        )
        hosts = tuple(
            HostSummary(
                name,
                "unused" if i.status == "connecting" else i.status,
                i.runner.kind if i.runner else None,
                i.slots,
                i.tasks_run,
                i.error,
                address=i.host.address or i.host.name,
                host_key_fingerprint=i.fingerprint,
                refused=i.refused,
                workdir=i.workdir,
            )
            for name, i in self._info.items()
        )
        return DispatchReport(
            self.run_id,
            started_wall,
            duration_s,
            tasks,
            hosts,
            str(self.run_dir),
            self._interrupted,
            # Only tasks that ended failed on an integrity error: a retry may rescue one.
            tuple(
                name
                for name in dict.fromkeys(self._integrity)
                if self._scheduler.records[name].status is TaskStatus.FAILED
            ),
            stop_signal=self._stop_signal if self._interrupted else None,
        )

    @property
    def learned_durations(self) -> dict[str, float]:
        """Successful attempts' durations, normalised to a weight-1 host."""
        return dict(self._durations)


def state_paths(tasks_file: str | os.PathLike[str], state_dir: str | None) -> Path:
    """Where history and runs live: ``--state-dir``, else ``.meshrun`` beside tasks.toml."""
    if state_dir:
        return Path(state_dir)
    return Path(tasks_file).resolve().parent / ".meshrun"

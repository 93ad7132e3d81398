"""Fleet runs: one command or script on many hosts (``meshrun exec`` / ``meshrun run``).

The coordinator loop lives here. Worker threads (one per host being run, at most
``parallel``) connect, upload, run, and report through a queue; the calling thread
owns every decision — what starts next, rolling batches, the failure budget,
fail-fast, Ctrl-C — and hands events to an observer (the console) in order.
Partial failure is data: every host ends with a HostResult in the FleetReport.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshrun.errors import ConnectError, MeshrunError
from meshrun.inventory import Host
from meshrun.rollout import FailureBudget
from meshrun.transport.base import CommandRequest, Connector, Stream, tail_text
from meshrun.transport.wrapper import WORKDIR_FAILED, upload_script

log = logging.getLogger(__name__)

#: Hosts run at once when --parallel is not given.
DEFAULT_PARALLEL_CAP = 256


class HostStatus(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class HostResult:
    name: str
    status: HostStatus
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    duration_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Script:
    """A local script to upload (once per host, under its content hash) and run."""

    name: str
    content: bytes
    args: tuple[str, ...] = ()

    @property
    def remote_name(self) -> str:
        digest = hashlib.sha256(self.content).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)
        return f"{digest}-{safe or 'script'}"


@dataclass(frozen=True, slots=True)
class FleetJob:
    """What to run and how. Exactly one of ``command`` and ``script`` is set."""

    command: str | None = None
    script: Script | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    parallel: int | None = None
    batches: Sequence[int] | None = None  # sizes from rollout.batch_sizes
    max_fail: FailureBudget | None = None
    fail_fast: bool = False

    def describe(self) -> str:
        if self.script is not None:
            return shlex.join([self.script.name, *self.script.args])
        return self.command or ""


@dataclass(frozen=True, slots=True)
class FleetReport:
    run_id: str
    command: str
    results: tuple[HostResult, ...]
    duration_s: float
    interrupted: bool = False

    def count(self, status: HostStatus) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status is HostStatus.OK for r in self.results)

    @property
    def exit_code(self) -> int:
        """DESIGN.md: the first of 130, 3, 1 that applies, else 0."""
        if self.interrupted:
            return 130
        if self.count(HostStatus.UNREACHABLE):
            return 3
        if any(r.status is not HostStatus.OK for r in self.results):
            return 1
        return 0


# -- events the observer sees, always on the coordinator's thread -----------------


@dataclass(frozen=True, slots=True)
class HostStarted:
    name: str


@dataclass(frozen=True, slots=True)
class HostOutput:
    name: str
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class HostFinished:
    result: HostResult


@dataclass(frozen=True, slots=True)
class RunStopping:
    """No new hosts will start; ``reason`` says why (fail-fast, budget, Ctrl-C)."""

    reason: str


FleetEvent = HostStarted | HostOutput | HostFinished | RunStopping
Observer = Callable[[FleetEvent], None]


def _ignore(event: FleetEvent) -> None:
    """The default observer."""


class _Worker:
    """Runs the job on one host in its own thread; reports through the queue."""

    def __init__(
        self,
        host: Host,
        job: FleetJob,
        env: Mapping[str, str],
        connector: Connector,
        events: queue.Queue[FleetEvent],
        cancel: threading.Event,
    ) -> None:
        self.host = host
        self.job = job
        self.env = env
        self.connector = connector
        self.events = events
        self.cancel = cancel
        self.thread = threading.Thread(
            target=self._main, name=f"meshrun-host-{host.name}", daemon=True
        )

    def _main(self) -> None:
        started = time.monotonic()
        try:
            result = self._run(started)
        except ConnectError as exc:
            result = HostResult(
                self.host.name,
                HostStatus.UNREACHABLE,
                error=str(exc),
                duration_s=time.monotonic() - started,
            )
        except MeshrunError as exc:
            result = HostResult(self.host.name, HostStatus.FAILED, error=str(exc))
        except Exception as exc:  # a bug must not hang the run: report it on the host
            log.exception("internal error on %s", self.host.name)
            result = HostResult(self.host.name, HostStatus.FAILED, error=f"internal error: {exc!r}")
        self.events.put(HostFinished(result))

    def _run(self, started: float) -> HostResult:
        name = self.host.name
        conn = self.connector.connect(self.host)
        if self.cancel.is_set():
            return HostResult(name, HostStatus.CANCELLED, error="cancelled before it started")
        command = self.job.command
        if self.job.script is not None:
            script = self.job.script
            up = conn.run_raw(
                upload_script(self.host.workdir, script.remote_name), stdin=script.content
            )
            if up.exit_code != 0:
                return HostResult(
                    name,
                    HostStatus.FAILED,
                    up.exit_code,
                    up.stdout,
                    up.stderr,
                    time.monotonic() - started,
                    error=f"could not upload {script.name}: {tail_text(up.stderr, 2)}",
                )
            remote_path = up.stdout.decode().strip().splitlines()[-1]
            command = shlex.join([remote_path, *script.args])
        assert command is not None

        def forward(stream: Stream, data: bytes) -> None:
            self.events.put(HostOutput(name, stream, data))

        out = conn.run(
            CommandRequest(command, env=self.env, timeout_s=self.job.timeout_s),
            on_output=forward,
            cancel=self.cancel,
        )
        duration = time.monotonic() - started

        def ended(status: HostStatus, error: str | None = None) -> HostResult:
            return HostResult(name, status, out.exit_code, out.stdout, out.stderr, duration, error)

        if out.lost:
            return ended(HostStatus.UNREACHABLE, "the connection was lost while the command ran")
        if out.timed_out:
            return ended(
                HostStatus.FAILED,
                f"timed out after {self.job.timeout_s:g}s; its processes were killed",
            )
        if out.cancelled:
            return ended(HostStatus.CANCELLED, "stopped; its processes were killed")
        if out.exit_code == 0:
            return ended(HostStatus.OK)
        if out.exit_code == WORKDIR_FAILED:
            return ended(
                HostStatus.FAILED, tail_text(out.stderr, 1) or "cannot enter the work directory"
            )
        return ended(HostStatus.FAILED, f"exit code {out.exit_code}")


def run_fleet(
    hosts: Sequence[Host],
    job: FleetJob,
    connector: Connector,
    *,
    run_id: str,
    observer: Observer = _ignore,
) -> FleetReport:
    """Run ``job`` on ``hosts`` (in inventory order) and report every host's end.

    Ctrl-C (KeyboardInterrupt in this thread) once: start nothing more and stop the
    running commands (their process groups are killed); twice: close every connection.
    The report is returned either way, with ``interrupted`` set.
    """
    started = time.monotonic()
    parallel = job.parallel or min(len(hosts), DEFAULT_PARALLEL_CAP) or 1
    batches = list(job.batches) if job.batches else [len(hosts)]
    events: queue.Queue[FleetEvent] = queue.Queue()
    cancel = threading.Event()
    results: dict[str, HostResult] = {}
    workers: list[_Worker] = []
    failed = 0
    stop_reason: str | None = None
    interrupted = False
    forced = False
    order = list(hosts)
    position = 0

    def env_for(host: Host) -> dict[str, str]:
        return {**job.env, "MESHRUN_HOST": host.name, "MESHRUN_RUN_ID": run_id}

    def stop(reason: str, *, cancel_running: bool) -> None:
        nonlocal stop_reason
        if stop_reason is None:
            stop_reason = reason
            observer(RunStopping(reason))
        if cancel_running:
            cancel.set()

    for batch_size in batches:
        batch = order[position : position + batch_size]
        position += batch_size
        waiting = list(batch)
        running = 0
        while waiting or running:
            try:
                while waiting and running < parallel and stop_reason is None:
                    host = waiting.pop(0)
                    worker = _Worker(host, job, env_for(host), connector, events, cancel)
                    workers.append(worker)
                    worker.thread.start()
                    running += 1
                    observer(HostStarted(host.name))
                if stop_reason is not None and waiting:
                    for host in waiting:
                        results[host.name] = HostResult(
                            host.name, HostStatus.SKIPPED, error=f"not started: {stop_reason}"
                        )
                    waiting = []
                if not running:
                    break
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(event, HostFinished):
                    running -= 1
                    results[event.result.name] = event.result
                    if event.result.status in (HostStatus.FAILED, HostStatus.UNREACHABLE):
                        failed += 1
                        if job.fail_fast:
                            stop(
                                f"--fail-fast after {event.result.name} failed", cancel_running=True
                            )
                        elif job.max_fail and job.max_fail.exceeded(failed, len(order)):
                            stop(f"--max-fail exceeded ({failed} failed)", cancel_running=False)
                observer(event)
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = True
                    stop(
                        "interrupted (Ctrl-C); press Ctrl-C again to disconnect at once",
                        cancel_running=True,
                    )
                elif not forced:
                    forced = True
                    connector.close()
        if stop_reason is not None:
            break

    for host in order[position:]:
        results[host.name] = HostResult(
            host.name, HostStatus.SKIPPED, error=f"not started: {stop_reason}"
        )
    for worker in workers:
        while worker.thread.is_alive():
            try:
                worker.thread.join(0.2)
            except KeyboardInterrupt:
                interrupted = forced = True
                cancel.set()
                connector.close()
    # A second Ctrl-C may have closed connections under running commands; those
    # hosts were stopped on purpose, not lost.
    final = []
    for host in order:
        result = results[host.name]
        if interrupted and result.status is HostStatus.UNREACHABLE and forced:
            result = HostResult(
                host.name,
                HostStatus.CANCELLED,
                result.exit_code,
                result.stdout,
                result.stderr,
                result.duration_s,
                "disconnected by a second Ctrl-C",
            )
        final.append(result)
    return FleetReport(
        run_id=run_id,
        command=job.describe(),
        results=tuple(final),
        duration_s=time.monotonic() - started,
        interrupted=interrupted,
    )


def read_script(path: str, args: Sequence[str]) -> Script:
    """Load a local script for ``meshrun run``; a clear InputError when it cannot."""
    from meshrun.errors import InputError

    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise InputError(
            f"cannot read script {path}: {exc.strerror or exc}",
            fix="pass the path of a local script file",
        ) from exc
    return Script(os.path.basename(path), content, tuple(args))


def parse_env(assignments: Sequence[str]) -> dict[str, str]:
    """``--env K=V`` values -> a mapping; a clear InputError for anything else."""
    from meshrun.errors import InputError

    env: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(
                f"--env {item!r} is not NAME=VALUE",
                fix="write e.g. --env RELEASE=v42 (names: letters, digits, underscore)",
            )
        env[key] = value
    return env

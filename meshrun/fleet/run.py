"""Fleet runs: one command or script on many hosts (``meshrun exec`` / ``meshrun run``).

The coordinator loop lives here. Worker threads (one per host being run, at most
``parallel``) connect, upload, run, and report through a queue; the calling thread
owns every decision — what starts next, rolling batches, the failure budget,
fail-fast, Ctrl-C — and hands events to an observer (the console) in order.
Partial failure is data: every host ends with a HostResult in the FleetReport.

With ``FleetJob.pull``, each worker brings files home after its host's command ended
(whatever its exit code), on the same pooled connection: see :mod:`meshrun.fleet.pull`.

Resources stay bounded by ``parallel``: a worker releases its host's connection (its
socket, paramiko's thread, any extra connection) as soon as the host is done, pull
included, so the run holds at most ``parallel`` hosts' descriptors and threads, and
``parallel`` is first fitted to what this process may open
(:func:`effective_parallel`). A host whose connect or start fails because *this
process* ran out of descriptors, threads or memory
(:class:`~meshrun.errors.ResourceExhausted`) is not a failed host: it goes back to
the front of the queue and starts again when another host finishes, and from then on
no more hosts run at once than were running then. When nothing else runs and the
shortage stays, the run stops starting hosts: the ones left are ``skipped``, naming
what ran out (exit 1), and the report is complete.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import queue
import shlex
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from meshrun import resources, stopsignals
from meshrun.config.inventory import Host
from meshrun.errors import (
    ChannelUnavailable,
    ConnectError,
    ExitCode,
    InputError,
    MeshrunError,
    ResourceExhausted,
)
from meshrun.fleet.rollout import FailureBudget
from meshrun.records import record
from meshrun.transport.base import CommandRequest, Connection, Connector, Stream
from meshrun.transport.capture import tail_text
from meshrun.transport.wrapper import WORKDIR_FAILED, upload_script

if TYPE_CHECKING:
    from meshrun.fleet.pull import HostPull
    from meshrun.integrity.manifest import FileEntry

log = logging.getLogger(__name__)

#: Hosts run at once when --parallel is not given.
DEFAULT_PARALLEL_CAP = 256

#: How often a run with no host running tries again to start one that failed for want
#: of descriptors or threads here, and how long it waits between tries, before it
#: stops starting hosts: something outside the run holds what it needs.
SHORTAGE_TRIES = 3
SHORTAGE_WAIT_S = 0.5


class HostStatus(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@record
class HostResult:
    """How one host ended. ``duration_s`` covers its connect, command and pull.

    ``files`` are the files pulled from it (``FleetJob.pull``), verified and installed
    under ``pull_dir/<name>/``; ``pull_error`` says why a pull failed or was partial
    (a pattern matched nothing: the matching files still came home), and
    ``integrity_failed`` marks a refused or changed file (exit 4). A pull problem turns
    an ``ok`` host into ``failed`` (``cancelled`` for Ctrl-C, ``unreachable`` for a lost
    link); a failed command stays ``failed`` with its own ``error``.
    """

    name: str
    status: HostStatus
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    duration_s: float = 0.0
    error: str | None = None
    files: tuple[FileEntry, ...] = ()
    pull_error: str | None = None
    integrity_failed: bool = False
    host_key_fingerprint: str | None = None  # SHA256:...; None for local or never reached


@record
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


@record
class FleetJob:
    """What to run and how. At most one of ``command`` and ``script`` is set; a job
    with neither only pulls (``pull`` is then required): nothing runs on the hosts,
    their files come home.

    ``pull``: globs relative to the host's workdir (rsync/gitignore habits, a leading
    ``?`` marks one optional; see :mod:`meshrun.integrity.collect`), brought home after the
    command into ``pull_dir/<host>/<path>``. Patterns that cannot stay inside a workdir
    (absolute, ``..``) are an InputError here, before any host is contacted.
    ``timeout_s`` limits the command only; a pull is limited by ``pull_timeout_s``.
    """

    command: str | None = None
    script: Script | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    parallel: int | None = None
    batches: Sequence[int] | None = None  # sizes from rollout.batch_sizes
    max_fail: FailureBudget | None = None
    fail_fast: bool = False
    pull: Sequence[str] = ()
    pull_dir: Path | None = None  # required with ``pull`` (run_fleet_recorded defaults it)
    pull_timeout_s: float = 3600.0
    #: A host whose matched files add up to more is refused before anything is written
    #: (``--pull-max-bytes``): a hostile or runaway host cannot fill the disk.
    pull_max_bytes: int = 10 << 30

    def __post_init__(self) -> None:
        _refuse_nul(self)
        patterns = (self.pull,) if isinstance(self.pull, str) else tuple(self.pull)
        if patterns:
            from meshrun.integrity.collect import check_patterns

            patterns = check_patterns(patterns, what="pull pattern")
        object.__setattr__(self, "pull", patterns)
        if self.command is not None and self.script is not None:
            raise InputError(
                "a job runs a command or a script, not both", fix="pass one of the two"
            )
        if self.pull_only and not patterns:
            raise InputError(
                "nothing to do: no command, no script and nothing to pull",
                fix="pass a command, a script or pull patterns",
            )

    @property
    def pull_only(self) -> bool:
        """Nothing runs on the hosts: their files (``pull``) come home."""
        return self.command is None and self.script is None

    def describe(self) -> str:
        if self.script is not None:
            return shlex.join([self.script.name, *self.script.args])
        if self.pull_only:
            return ""
        return self.command or ""


_NUL_FIX = "remove it: a NUL ends a C string, so no shell, program or environment can take one"


def _refuse_nul(job: FleetJob) -> None:
    """A NUL in the command, its arguments or its environment would fail on every host
    (or be cut short by its shell): refused here, before any host is contacted."""
    if job.command is not None and "\x00" in job.command:
        raise InputError("the command contains a NUL character (\\x00)", fix=_NUL_FIX)
    if job.script is not None:
        for number, arg in enumerate(job.script.args, start=1):
            if "\x00" in arg:
                raise InputError(
                    f"argument #{number} of {job.script.name} contains a NUL character (\\x00)",
                    fix=_NUL_FIX,
                )
    for key, value in job.env.items():
        if "\x00" in key or "\x00" in value:
            raise InputError(
                f"environment variable {key!r} contains a NUL character (\\x00)", fix=_NUL_FIX
            )


@record
class FleetReport:
    """Every host's end. ``started_at`` is wall-clock (``time.time()``); ``pull_dir``
    is set when files were pulled; ``run_dir`` and ``manifest_path`` when the run was
    recorded (:func:`meshrun.fleet.record.run_fleet_recorded`)."""

    run_id: str
    command: str
    results: tuple[HostResult, ...]
    duration_s: float
    interrupted: bool = False  # by Ctrl-C, SIGTERM or SIGHUP: ``stop_signal`` says which
    started_at: float = 0.0
    pull_dir: str | None = None
    run_dir: str | None = None
    manifest_path: str | None = None
    stop_signal: int | None = None  # the signal that interrupted it (2, 15, 1)
    #: Why hosts stopped being started (fail-fast, --max-fail, a signal, this process
    #: out of descriptors); None when every host was started.
    stop_reason: str | None = None

    def count(self, status: HostStatus) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def files_pulled(self) -> int:
        return sum(len(r.files) for r in self.results)

    @property
    def succeeded(self) -> tuple[HostResult, ...]:
        """The hosts that ended ``ok``, in inventory order."""
        return tuple(r for r in self.results if r.status is HostStatus.OK)

    @property
    def failed(self) -> tuple[HostResult, ...]:
        """Every other host: failed, unreachable, cancelled or skipped (``status`` and
        ``error`` say which and why), in inventory order."""
        return tuple(r for r in self.results if r.status is not HostStatus.OK)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status is HostStatus.OK for r in self.results)

    @property
    def exit_code(self) -> int:
        """The exit-code contract (docs/ARCHITECTURE.md): the first of 128 + the signal
        that interrupted it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 4, 3, 1 that applies,
        else 0."""
        if self.interrupted:
            return stopsignals.exit_code_for_signal(self.stop_signal or signal.SIGINT)
        if any(r.integrity_failed for r in self.results):
            return ExitCode.INTEGRITY
        if self.count(HostStatus.UNREACHABLE):
            return ExitCode.CONNECT
        if any(r.status is not HostStatus.OK for r in self.results):
            return ExitCode.FAILED
        return ExitCode.OK


# -- events the observer sees, always on the coordinator's thread -----------------


@record
class HostStarted:
    name: str


@record
class HostOutput:
    name: str
    stream: Stream
    data: bytes


@record
class HostFinished:
    result: HostResult


@record
class RunStopping:
    """No new hosts will start; ``reason`` says why (fail-fast, budget, Ctrl-C)."""

    reason: str


@record
class Tick:
    """Time passed with nothing to report (about every 0.2 s while hosts run): a console
    moves its ETA and running times on, and prints its progress line when one is due."""


@record
class _Deferred:
    """A worker's host could not start for want of resources here (never shown)."""

    host: Host
    shortage: ResourceExhausted


FleetEvent = HostStarted | HostOutput | HostFinished | RunStopping | Tick
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
        events: queue.Queue[FleetEvent | _Deferred],
        cancel: threading.Event,
        interrupt: threading.Event,
        release: bool = True,
    ) -> None:
        self.host = host
        self.release = release  # close the host's connection once it is done
        self.job = job
        self.env = env
        self.connector = connector
        self.events = events
        self.cancel = cancel  # stop the command (fail-fast, Ctrl-C)
        self.interrupt = interrupt  # Ctrl-C: stop a pull too
        self.fingerprint: str | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"meshrun-host-{host.name}", daemon=True
        )

    def _main(self) -> None:
        started = time.monotonic()
        try:
            result = self._run(started)
        except ResourceExhausted as exc:  # nothing ran: the coordinator tries it again
            self._release()
            self.events.put(_Deferred(self.host, exc))
            return
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
        # Done with the host: its connection goes before the coordinator counts it out,
        # so no more than ``parallel`` hosts' sockets and threads are ever held.
        self._release()
        self.events.put(HostFinished(replace(result, host_key_fingerprint=self.fingerprint)))

    def _release(self) -> None:
        if not self.release:
            return
        try:
            self.connector.release(self.host)
        except Exception:  # closing must not lose the host's result
            log.exception("closing the connection to %s failed", self.host.name)

    def _connect(self) -> Connection:
        """The host's connection; ResourceExhausted when this process lacks what a
        dial needs (descriptors, a thread, memory): never the host's fault."""
        with resources.shortage_raised(f"connecting to {self.host.name}"):
            return self.connector.connect(self.host)

    def _run(self, started: float) -> HostResult:
        conn = self._connect()
        self.fingerprint = conn.host_key_fingerprint
        try:
            result, ran = self._command(conn, started)
        except ChannelUnavailable as exc:
            if self.cancel.is_set() or self.interrupt.is_set():
                raise
            # The link dropped before the command could start (nothing ran): once,
            # take it for a blip and connect again.
            log.info("%s: %s; connecting again", self.host.name, exc)
            conn = self._connect()
            result, ran = self._command(conn, started)
        if not (ran and self.job.pull):
            return result
        from meshrun.fleet.pull import pull_host

        assert self.job.pull_dir is not None  # run_fleet checks
        for attempt in range(1, SHORTAGE_TRIES + 1):
            try:
                pulled = pull_host(
                    self.connector,
                    self.host,
                    self.job.pull,
                    Path(self.job.pull_dir) / self.host.name,
                    cancel=self.interrupt,
                    timeout_s=self.job.pull_timeout_s,
                    max_bytes=self.job.pull_max_bytes,
                )
            except Exception as exc:  # a bug must not lose the command's result
                log.exception("internal error pulling from %s", self.host.name)
                from meshrun.fleet.pull import HostPull

                pulled = HostPull(error=f"internal error: {exc!r}")
            # Short of descriptors here (not the host's fault): other hosts finishing
            # free some; the command is not run again, only its pull.
            if not pulled.shortage or attempt == SHORTAGE_TRIES or self.interrupt.is_set():
                break
            log.info("%s: %s; pulling again", self.host.name, pulled.error)
            self.interrupt.wait(SHORTAGE_WAIT_S * 2**attempt)
        return with_pull(result, pulled, time.monotonic() - started)

    def _command(self, conn: Connection, started: float) -> tuple[HostResult, bool]:
        """Upload (a script) and run the command: its result, and whether it ran to an
        end (exit status, timeout, fail-fast stop) so that there may be files to pull."""
        name = self.host.name
        if self.cancel.is_set():
            return HostResult(
                name, HostStatus.CANCELLED, error="cancelled before it started"
            ), False
        if self.job.pull_only:  # nothing to run: straight to the pull
            return HostResult(name, HostStatus.OK, duration_s=time.monotonic() - started), True
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
                ), False
            remote_path = up.stdout.decode().strip().splitlines()[-1]
            command = shlex.join([remote_path, *script.args])
        assert command is not None

        def forward(stream: Stream, data: bytes) -> None:
            self.events.put(HostOutput(name, stream, data))

        # A ResourceExhausted from here on means the command could not start (a local
        # process that could not be made): the coordinator starts it again later.
        out = conn.run(
            CommandRequest(command, env=self.env, timeout_s=self.job.timeout_s),
            on_output=forward,
            cancel=self.cancel,
        )
        duration = time.monotonic() - started

        def ended(status: HostStatus, error: str | None = None) -> HostResult:
            return HostResult(name, status, out.exit_code, out.stdout, out.stderr, duration, error)

        if out.lost:
            return ended(
                HostStatus.UNREACHABLE,
                out.lost_reason or "the connection was lost while the command ran",
            ), False
        if out.timed_out and out.exit_code is None:
            # Asked to stop, the host never said the command ended: it is hung (or its
            # link is), and nothing says its processes are gone.
            return ended(
                HostStatus.UNREACHABLE,
                f"timed out after {self.job.timeout_s:g}s, then did not answer the request "
                "to stop it: the host seems hung, and its processes may still run",
            ), False
        if out.timed_out:
            return ended(
                HostStatus.FAILED,
                f"timed out after {self.job.timeout_s:g}s; its processes were killed",
            ), True
        if out.cancelled:
            return ended(HostStatus.CANCELLED, "stopped; its processes were killed"), True
        if out.exit_code == 0:
            return ended(HostStatus.OK), True
        if out.exit_code == WORKDIR_FAILED:
            return ended(
                HostStatus.FAILED, tail_text(out.stderr, 1) or "cannot enter the work directory"
            ), False
        return ended(HostStatus.FAILED, f"exit code {out.exit_code}"), True


def with_pull(result: HostResult, pulled: HostPull, duration_s: float) -> HostResult:
    """``result`` (the command's) with what its pull brought; pure.

    A pull problem only changes an ``ok`` host: to ``cancelled`` when Ctrl-C stopped
    it, ``unreachable`` when the link was lost, else ``failed`` (with the pull's error).
    A host that already failed keeps its status and its command's error.
    """
    status, error = result.status, result.error
    if pulled.error is not None and status is HostStatus.OK:
        if pulled.interrupted:
            status = HostStatus.CANCELLED
        elif pulled.lost:
            status = HostStatus.UNREACHABLE
        else:
            status = HostStatus.FAILED
        error = pulled.error
    return replace(
        result,
        status=status,
        error=error,
        duration_s=duration_s,
        files=pulled.files,
        pull_error=pulled.error,
        integrity_failed=pulled.integrity,
    )


def effective_parallel(hosts: Sequence[Host], job: FleetJob) -> tuple[int, str | None]:
    """Hosts to run at once: ``job.parallel`` (default: every host, at most
    :data:`DEFAULT_PARALLEL_CAP`) fitted to the descriptors and threads this process may
    still have (:func:`meshrun.resources.fit_parallel`; a pulling host needs more), and
    the one warning line to show when that is fewer than asked. DoesNotFit (exit 2)
    when not even one host at a time fits: before any host is contacted."""
    wanted = min(job.parallel or DEFAULT_PARALLEL_CAP, max(1, len(hosts)))
    pulls = bool(job.pull)
    return resources.fit_parallel(
        wanted,
        fds_each=resources.PULL_FDS_PER_HOST if pulls else resources.EXEC_FDS_PER_HOST,
        threads_each=resources.PULL_THREADS_PER_HOST if pulls else resources.EXEC_THREADS_PER_HOST,
        what=f"{'run' if job.script is not None else 'exec'} on {len(hosts)} hosts"
        + (" with --pull" if pulls else ""),
        option="--parallel" if job.parallel else "--parallel (default)",
    )


def run_fleet(
    hosts: Sequence[Host],
    job: FleetJob,
    connector: Connector,
    *,
    run_id: str,
    observer: Observer = _ignore,
    release: bool = True,
) -> FleetReport:
    """Run ``job`` on ``hosts`` (in inventory order) and report every host's end.

    Ctrl-C (KeyboardInterrupt in this thread) once: start nothing more, stop the
    running commands (their process groups are killed) and the running pulls (nothing
    half-transferred is installed); twice: close every connection. The report is
    returned either way, with ``interrupted`` set.

    With ``job.pull``, ``job.pull_dir`` must be set; each host's files land in
    ``pull_dir/<host name>/``.

    At most ``job.parallel`` hosts (fitted: :func:`effective_parallel`) hold a
    connection at once: each host's is released when it is done. With ``release``
    False they stay in the connector's pool for a next run (:class:`meshrun.Fleet`
    decides when they fit). DoesNotFit (an InputError) before any host is contacted
    when not even one fits this process's limits.
    """
    if job.pull:
        if job.pull_dir is None:
            raise ValueError("FleetJob.pull needs FleetJob.pull_dir (where files land)")
        for host in hosts:
            if "/" in host.name or host.name in ("", ".", ".."):
                raise InputError(
                    f"host name {host.name!r} cannot name a directory under the pull directory",
                    fix="give the host a plain name (letters, digits, '.', '_', '-')",
                )
    parallel, too_many = effective_parallel(hosts, job)
    if too_many is not None:
        log.warning("%s", too_many)
    started_at = time.time()
    started = time.monotonic()
    batches = list(job.batches) if job.batches else [len(hosts)]
    events: queue.Queue[FleetEvent | _Deferred] = queue.Queue()
    cancel = threading.Event()
    interrupt = threading.Event()
    results: dict[str, HostResult] = {}
    workers: list[_Worker] = []
    failed = 0
    stop_reason: str | None = None
    interrupted = False
    stop_signal: int | None = None
    forced = False
    order = list(hosts)
    position = 0
    announced: set[str] = set()  # HostStarted once, even for a host started again
    short_tries = 0  # shortages in a row with no host running
    short_warned = False

    def env_for(host: Host) -> dict[str, str]:
        return {**job.env, "MESHRUN_HOST": host.name, "MESHRUN_RUN_ID": run_id}

    def stop(reason: str, *, cancel_running: bool, hint: str = "") -> None:
        nonlocal stop_reason
        if stop_reason is None:
            stop_reason = reason
            observer(RunStopping(reason + hint))
        if cancel_running:
            cancel.set()

    def short_of(shortage: ResourceExhausted, running: int) -> None:
        """A host could not start for want of resources here (it is back in front
        of the queue): run no more at once than run now; with none running, wait and
        try again, a few times, then stop starting hosts."""
        nonlocal parallel, short_tries, short_warned
        if running < parallel:
            parallel = max(1, running)
            # One warning line for the run; each later lowering only with -v.
            log.log(
                logging.INFO if short_warned else logging.WARNING,
                "%s; running at most %d host%s at once from now on (%s)",
                shortage.message,
                parallel,
                "" if parallel == 1 else "s",
                shortage.fix,
            )
            short_warned = True
        if running:
            return
        short_tries += 1
        if short_tries >= SHORTAGE_TRIES:
            stop(
                f"{shortage.message}, with no other host running",
                cancel_running=False,
                hint=f" — {shortage.fix}",
            )
        else:
            time.sleep(SHORTAGE_WAIT_S * short_tries)

    for batch_size in batches:
        batch = order[position : position + batch_size]
        position += batch_size
        waiting = list(batch)
        running = 0
        while waiting or running:
            try:
                while waiting and running < parallel and stop_reason is None:
                    host = waiting.pop(0)
                    worker = _Worker(
                        host, job, env_for(host), connector, events, cancel, interrupt, release
                    )
                    try:
                        worker.thread.start()
                    except RuntimeError as exc:  # "can't start new thread"
                        shortage = resources.resource_error(exc, f"starting {host.name}")
                        if shortage is None:
                            raise
                        waiting.insert(0, host)
                        short_of(shortage, running)
                        continue
                    workers.append(worker)
                    running += 1
                    if host.name not in announced:
                        announced.add(host.name)
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
                    observer(Tick())
                    continue
                if isinstance(event, _Deferred):
                    running -= 1
                    waiting.insert(0, event.host)
                    short_of(event.shortage, running)
                    continue
                if isinstance(event, HostFinished):
                    running -= 1
                    short_tries = 0
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
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (stopsignals)
                interrupt.set()
                if not interrupted:
                    interrupted = True
                    stop_signal = stopsignals.signal_of(exc)
                    stop(
                        stopsignals.how_stopped(stop_signal),
                        cancel_running=True,
                        hint="; press Ctrl-C again to disconnect at once",
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
            except KeyboardInterrupt as exc:
                if not interrupted:
                    stop_signal = stopsignals.signal_of(exc)
                interrupted = forced = True
                interrupt.set()
                cancel.set()
                connector.close()
    # A second Ctrl-C may have closed connections under running commands; those
    # hosts were stopped on purpose, not lost.
    final = []
    for host in order:
        result = results[host.name]
        if interrupted and result.status is HostStatus.UNREACHABLE and forced:
            result = replace(
                result,
                status=HostStatus.CANCELLED,
                error="disconnected at once: stopped a second time",
            )
        final.append(result)
    return FleetReport(
        run_id=run_id,
        command=job.describe(),
        results=tuple(final),
        duration_s=time.monotonic() - started,
        interrupted=interrupted,
        stop_signal=stop_signal,
        started_at=started_at,
        pull_dir=str(job.pull_dir) if job.pull and job.pull_dir is not None else None,
        stop_reason=stop_reason,
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
        if "\x00" in value:
            raise InputError(
                f"--env {item!r}: the value contains a NUL character (\\x00)", fix=_NUL_FIX
            )
        env[key] = value
    return env

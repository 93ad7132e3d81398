"""The dispatch run loop: the only place that joins the scheduler to the world.

Threads connect to hosts (hosts.py), runners report task output and exits, transfers
(transfers.py) report files that moved; everything lands in one queue. The loop's
thread owns the scheduler: it turns what arrives into scheduler events, carries out
the decisions (start an attempt, cancel one: attempts.py), enforces timeouts with the
clock, and hands what happened to an observer (the console; progress.py). Ctrl-C
once: cancel every running task (their process groups are killed on the hosts) and
collect; twice: close every link.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path

from meshrun import stopsignals
from meshrun.agent.client import LoadReport, RunnerEvent, RunnerGone, TaskExited, TaskOutput
from meshrun.config.inventory import Host
from meshrun.config.tasks import TaskGraph
from meshrun.dispatch.executor.attempts import Attempt, Attempts
from meshrun.dispatch.executor.clock import RunClock
from meshrun.dispatch.executor.hosts import (
    SHORTAGE_RETRY_S,
    AddHost,
    Connected,
    HostPool,
    PrepareFn,
    RemoveHost,
    Starved,
    Unreachable,
)
from meshrun.dispatch.executor.progress import (
    HostDown,
    HostReady,
    Notice,
    Observer,
    Progress,
    TaskEnded,
    TaskLine,
    TaskStarted,
    ignore,
    snapshot,
)
from meshrun.dispatch.executor.results import (
    DispatchOptions,
    DispatchReport,
    TaskResult,
)
from meshrun.dispatch.executor.transfers import (
    Collected,
    CollectFn,
    Staged,
    StageFn,
    Transfers,
)
from meshrun.dispatch.scheduler import (
    Abandon,
    Cancel,
    CancelAll,
    Decisions,
    Ended,
    HostLoad,
    HostLost,
    Policy,
    RunStarted,
    Scheduler,
    Start,
    TaskFailed,
    TaskStatus,
    TaskStopped,
    TaskSucceeded,
)
from meshrun.integrity.manifest import FileEntry
from meshrun.records import record
from meshrun.rundir import RunDir
from meshrun.transport.base import Connector

#: One logger for the whole executor: ``-v`` shows its records, each naming its host.
log = logging.getLogger("meshrun.dispatch.executor")

#: How often the observer gets a progress snapshot while the run lasts.
PROGRESS_EVERY_S = 0.5
#: A snapshot reads every task (the ETA sums the work left), so on a big graph it is
#: taken at most this share of the time: 10,000 tasks cost ~5 ms a snapshot, 100,000
#: ~50 ms, which every 0.5 s would be a tenth of the coordinator's CPU.
PROGRESS_SHARE = 0.02
#: The longest the loop waits for news: the stalled-task check and the gathering of
#: the first hosts run at least this often.
IDLE_WAIT_S = 0.2
#: At the end, how long the runners (together) and each transfer get to finish.
CLOSE_WAIT_S = 15.0

_Item = RunnerEvent | Connected | Unreachable | Starved | Collected | Staged | AddHost | RemoveHost


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
    observer: Observer = ignore
    prepare: PrepareFn | None = None  # pushes the workspace to a host before it joins
    collect: CollectFn | None = None  # brings an ended task's outputs home
    stage: StageFn | None = None  # pushes needs' outputs to a dependent's host
    #: Outputs of needs that passed in an earlier run (``graph.done_needs``; a rerun):
    #: pushed before each dependent starts, wherever it runs, as a full run would.
    prior_outputs: Mapping[str, tuple[FileEntry, ...]] = field(default_factory=dict)
    #: Called once per turn of the loop, after what it decided went out (the journal
    #: writes the ends it was told of then: one write per turn, not one per task).
    after_turn: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._clock = RunClock()
        self._wait_for_hosts_until = 0.0  # monotonic; set by run()
        self._announced: set[str] = set()  # tasks whose end the observer has seen
        # Calls due later on this thread (retries after a shortage): (when, n, call).
        self._later: list[tuple[float, int, Callable[[], None]]] = []
        self._later_n = itertools.count()
        self._interrupted = False
        self._stop_signal: int = signal.SIGINT
        self._scheduler = Scheduler(
            self.graph,
            self.expected_s,
            Policy(fail_fast=self.options.fail_fast, max_fail=self.options.max_fail),
        )
        self.logs_dir = RunDir(self.run_dir).logs
        self._attempts = Attempts(
            self.graph,
            run_id=self.run_id,
            default_timeout_s=self.options.default_timeout_s,
            logs_dir=self.logs_dir,
            clock=self._clock,
            put=self._queue.put,
        )

    # -- public ------------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        """A host that appeared during the run (discovery): connect and let it join.

        Thread-safe. A host already in the run is ignored; one that was lost or
        unreachable joins again.
        """
        self._queue.put(AddHost(host))

    def remove_host(self, name: str, reason: str) -> None:
        """A host that left (discovery): handled as lost, its tasks re-queued. Thread-safe."""
        self._queue.put(RemoveHost(name, reason))

    def run(self) -> DispatchReport:
        clock = self._clock
        clock.start()
        self._wait_for_hosts_until = clock.started + self.options.wait_for_hosts_s
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Built now, not with the Dispatcher: its connector and hooks may be set until
        # the run starts.
        self._pool = HostPool(
            self.hosts,
            self.connector,
            self._queue.put,
            prepare=self.prepare,
            use_agent=self.options.use_agent,
            later=self._call_later,
        )
        self._transfers = Transfers(
            self.graph,
            self._queue.put,
            collect=self.collect,
            stage=self.stage,
            prior_outputs=self.prior_outputs,
            later=self._call_later,
        )
        self._pool.connect_all()
        self._apply(self._scheduler.handle(RunStarted(), clock.now()))
        self._attempts.flush()
        next_load_poll = clock.monotonic() + self.options.load_poll_s
        next_progress = clock.monotonic()
        while not self._scheduler.finished:
            try:
                self._step()
                # What this turn decided goes out now, one write per host, before the
                # loop waits again.
                self._attempts.flush()
                if self.after_turn is not None:
                    self.after_turn()
                if clock.monotonic() >= next_progress:
                    took = clock.monotonic()
                    progress = self._progress()
                    took = clock.monotonic() - took
                    next_progress = clock.monotonic() + max(PROGRESS_EVERY_S, took / PROGRESS_SHARE)
                    self.observer(progress)
                if clock.monotonic() >= next_load_poll:
                    next_load_poll = clock.monotonic() + self.options.load_poll_s
                    self._pool.poll_load()
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
                    self._apply(self._scheduler.handle(CancelAll(self._stop_reason()), clock.now()))
                    self._attempts.flush()
                else:
                    self.observer(Notice("disconnecting"))
                    self._abort_running()
                    break
        # The report first, while the hosts' threads are quiet: built while 256 hosts'
        # links closed, its 0.1 s of CPU took 4-6 s, the coordinator's thread waiting
        # for the GIL behind every thread that handled a closing channel.
        self._attempts.close_logs()
        report = self._report(clock.started_wall, clock.monotonic() - clock.started)
        self._shutdown()
        return report

    @property
    def learned_durations(self) -> dict[str, float]:
        """Successful attempts' durations, normalised to a weight-1 host."""
        return dict(self._attempts.learned)

    # -- the loop --------------------------------------------------------------------

    def _step(self) -> None:
        if (
            not self._pool.connecting
            and not self._pool.gathering
            and not self._attempts.running
            and self._scheduler.stalled
            and self._clock.monotonic() >= self._wait_for_hosts_until
        ):
            if self._pool.live():
                reason = "no reachable host matches its labels or weight"
            elif self._pool.shortage is not None:
                reason = f"no host could be set up: {self._pool.shortage} (raise `ulimit -n`)"
            else:
                reason = "no host is reachable"
            self._apply(self._scheduler.handle(Abandon(reason), self._clock.now()))
            return
        try:
            item = self._queue.get(timeout=self._wait_s())
        except queue.Empty:
            item = None
        if item is not None:
            self._handle(item)
            # Drain what else is there before deciding: fewer, larger batches.
            while True:
                try:
                    self._handle(self._queue.get_nowait())
                except queue.Empty:
                    break
        now = self._clock.monotonic()
        while self._later and self._later[0][0] <= now:
            heapq.heappop(self._later)[2]()
        joined = self._pool.gathered(self._clock.monotonic())
        if joined is not None:
            self._apply(self._scheduler.handle(joined, self._clock.now()))
        self._attempts.check_deadlines(self._pool.runner)

    def _call_later(self, delay_s: float, call: Callable[[], None]) -> None:
        """Run ``call`` on this thread ``delay_s`` from now (a retry after a shortage)."""
        when = self._clock.monotonic() + delay_s
        heapq.heappush(self._later, (when, next(self._later_n), call))

    def _wait_s(self) -> float:
        later = self._later[0][0] if self._later else None
        deadlines = [
            d
            for d in (self._attempts.next_deadline(), self._pool.gather_deadline, later)
            if d is not None
        ]
        if not deadlines:
            return IDLE_WAIT_S
        return max(0.0, min(IDLE_WAIT_S, min(deadlines) - self._clock.monotonic()))

    def _progress(self) -> Progress:
        capacity = sum(
            self._scheduler.limit(name) * weight
            for name, weight in self._pool.ready_weights()
            if name in self._scheduler.hosts  # not while gathering
        )
        return snapshot(
            self._scheduler.records,
            self._attempts.holding_slots(),
            capacity,
            self._clock.monotonic(),
        )

    def _handle(self, item: _Item) -> None:
        now = self._clock.now()
        if isinstance(item, Connected):
            info = self._pool.ready(item)
            if info is None:
                return
            assert info.runner is not None and info.slots is not None
            self.observer(HostReady(item.host.name, info.runner.kind, info.slots))
            joined = self._pool.join(info, self._clock.monotonic())
            if joined is not None:
                self._apply(self._scheduler.handle(joined, now))
        elif isinstance(item, Starved):
            if self._pool.starved(item, self._clock.monotonic()):
                self.observer(
                    Notice(
                        f"{item.error}: hosts wait and connect again as resources free up "
                        "(raise `ulimit -n` to connect them all at once)"
                    )
                )
        elif isinstance(item, Unreachable):
            if self._pool.unreachable(item):
                self.observer(
                    HostDown(item.host.name, item.error, ever_ready=False, refused=item.refused)
                )
        elif isinstance(item, TaskOutput):
            attempt = self._attempts.output(item)
            if attempt is not None:
                self.observer(TaskLine(attempt.task, item.stream, item.data))
        elif isinstance(item, TaskExited):
            self._exited(item)
        elif isinstance(item, LoadReport):
            self._apply(self._scheduler.handle(HostLoad(item.host, item.load1, item.cpus), now))
        elif isinstance(item, RunnerGone):
            self._host_lost(item.host, item.reason)
        elif isinstance(item, Collected):
            end = self._transfers.collected(item)
            assert end.outcome is not None
            self._conclude(end.attempt, end.duration_s, end.outcome, end.exit_code)
        elif isinstance(item, Staged):
            self._staged(item)
        elif isinstance(item, AddHost):
            self._pool.add(item.host)
        elif isinstance(item, RemoveHost):
            self._host_left(item.name, item.reason)

    # -- decisions -------------------------------------------------------------------

    def _apply(self, decisions: Decisions) -> None:
        for action in decisions.actions:
            if isinstance(action, Start):
                self._start(action)
            elif isinstance(action, Cancel):
                log.info("%s: stopping %s: %s", action.host, action.task, action.reason)
                self._attempts.cancel(action.task, action.host, self._pool.runner)
        for change in decisions.limit_changes:
            log.info("%s: slots %d -> %d: %s", change.host, change.before, change.after, change.why)
        self._announce_ends(decisions.ended)

    def _announce_ends(self, ended: list[Ended]) -> None:
        """Tell the observer about tasks that ended without running (skipped/cancelled)."""
        for end in ended:
            if (
                end.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED)
                and end.task not in self._announced
            ):
                self._announced.add(end.task)
                self._ended(end.task, end.host, end.status, None, 0.0, end.error)

    def _start(self, decision: Start) -> None:
        task = self.graph.tasks[decision.task]
        placed = self._pool.placed(decision.host)
        task_id, attempt = self._attempts.open(decision, placed.weight)
        self.observer(TaskStarted(decision.task, decision.host, decision.attempt))
        inputs = self._transfers.inputs(task, decision.host, self._scheduler.records)
        if inputs:
            # The needs ran elsewhere: push their outputs first, off this thread. The
            # slot stays taken meanwhile; the command starts when Staged arrives.
            attempt.staging = True
            attempt.deadline = None
            self._transfers.stage(task_id, placed, inputs)
            return
        self._launch(task_id, attempt)

    def _launch(self, task_id: str, attempt: Attempt) -> None:
        if self._attempts.running.get(task_id) is not attempt:
            return  # ended while it waited (its host lost, the run interrupted)
        if attempt.cancelled:  # stopped while it waited for resources to start
            self._attempts.drop(task_id, "stopped before it started")
            self._stopped(attempt, None, 0.0)
            return
        runner = self._pool.runner(attempt.host)
        assert runner is not None
        workdir = self._pool.placed(attempt.host).workdir
        shortage = self._attempts.launch(task_id, attempt, runner, workdir)
        attempt.staging = shortage is not None
        if shortage is None:
            return
        # Out of threads or fds here: the slot stays taken and the command starts when
        # some free up (a cancel meanwhile only marks it); the task has not failed and
        # its host is fine.
        log.info(
            "%s: %s; starting %s in %gs", attempt.host, shortage, attempt.task, SHORTAGE_RETRY_S
        )
        self._call_later(SHORTAGE_RETRY_S, lambda: self._launch(task_id, attempt))

    def _staged(self, item: Staged) -> None:
        attempt = self._attempts.unstage(item.task_id)
        if attempt is None:
            return  # its host was lost meanwhile (the task is re-queued), or interrupted
        took = self._clock.monotonic() - attempt.started
        if attempt.cancelled:
            self._attempts.drop(item.task_id)
            self._stopped(attempt, None, took)
            return
        if item.error is not None:
            self._attempts.drop(item.task_id, item.error)
            self._attempts.last_duration[attempt.task] = took
            if item.integrity:
                self._transfers.integrity.append(attempt.task)
            failed = TaskFailed(
                attempt.task, attempt.host, None, item.error, infrastructure=not item.integrity
            )
            self._conclude(attempt, took, failed, None)
            return
        note = f"# meshrun: its needs' outputs pushed here ({item.sent_bytes} bytes, {took:.2f}s)\n"
        self._attempts.note(attempt, note)
        self._launch(item.task_id, attempt)

    def _exited(self, event: TaskExited) -> None:
        end = self._attempts.exited(event)
        if end is None:
            return  # a late report from a host already written off
        self._pool.ran_task(end.attempt.host)
        if end.lost:
            return  # a RunnerGone follows and re-queues it
        if end.outcome is None:
            self._stopped(end.attempt, end.exit_code, end.duration_s)
            return
        if self._transfers.collects(self.graph.tasks[end.attempt.task], end.outcome):
            # Bring the outputs home before the task counts as ended; its slot stays
            # taken meanwhile. The result comes back as a Collected.
            self._transfers.collect(end, self._pool.placed(end.attempt.host))
            return
        self._conclude(end.attempt, end.duration_s, end.outcome, end.exit_code)

    def _stopped(self, attempt: Attempt, exit_code: int | None, duration: float) -> None:
        """A cancelled attempt has stopped: the task ends cancelled, or, when the
        scheduler moved it to a host that joined, starts again there."""
        stopped = TaskStopped(attempt.task, attempt.host, self._stop_reason())
        decisions = self._scheduler.handle(stopped, self._clock.now())
        final = self._scheduler.records[attempt.task].status.final
        self._attempts.record(attempt, "cancelled" if final else "moved", exit_code, duration)
        if final:
            self._announced.add(attempt.task)
            self._ended(
                attempt.task, attempt.host, TaskStatus.CANCELLED, exit_code, duration, "cancelled"
            )
        else:
            self.observer(
                Notice(f"{attempt.task}: moved from {attempt.host} to a faster host that joined")
            )
        self._apply(decisions)

    def _conclude(
        self,
        attempt: Attempt,
        duration: float,
        outcome: TaskFailed | TaskSucceeded,
        exit_code: int | None,
    ) -> None:
        """Tell the scheduler how an attempt ended, then the observer, then act."""
        if isinstance(outcome, TaskSucceeded):
            how = "succeeded"
        else:
            how = "timed out" if attempt.timed_out else "failed"
        self._attempts.record(attempt, how, exit_code, duration)
        decisions = self._scheduler.handle(outcome, self._clock.now())
        record = self._scheduler.records[attempt.task]
        final = record.status if record.status.final else None
        self._ended(
            attempt.task,
            attempt.host,
            final,
            exit_code,
            duration,
            record.error if final is not TaskStatus.SUCCEEDED else None,
        )
        self._announce_ends(decisions.ended)
        self._apply(decisions)

    def _ended(
        self,
        task: str,
        host: str | None,
        status: TaskStatus | None,
        exit_code: int | None,
        duration_s: float,
        error: str | None,
    ) -> None:
        """Tell the observer a task ended; once it is final, its log leaves memory (a
        succeeded task's: a slice of the shared log, which the event names)."""
        where = None
        if status is not None:
            succeeded = status is TaskStatus.SUCCEEDED
            self._attempts.logs.finish(task, succeeded)
            if succeeded:
                where = self._attempts.logs.slice(task)
        self.observer(TaskEnded(task, host, status, exit_code, duration_s, error, where))

    def _host_lost(self, host: str, reason: str) -> None:
        if not self._pool.lose(host, reason):
            return
        self._attempts.lose_host(host, reason)
        self.observer(HostDown(host, reason, ever_ready=True))
        self._pool.release(host)
        self._apply(self._scheduler.handle(HostLost(host, reason), self._clock.now()))

    def _host_left(self, name: str, reason: str) -> None:
        """A host left (discovery): recorded if it was still connecting, else lost."""
        if not self._pool.leave(name, reason):
            self._host_lost(name, reason)

    def _stop_reason(self) -> str:
        if self._interrupted:
            return stopsignals.how_stopped(self._stop_signal)
        return "stopped by --fail-fast"

    # -- the end -------------------------------------------------------------------------

    def _abort_running(self) -> None:
        self._pool.abort()
        # Stop first, so that no task being moved is queued again.
        self._scheduler.handle(CancelAll(self._stop_reason()), self._clock.now())
        for attempt in self._attempts.abort():
            stopped = TaskStopped(attempt.task, attempt.host, self._stop_reason())
            self._scheduler.handle(stopped, self._clock.now())

    def _shutdown(self) -> None:
        deadline = self._clock.monotonic() + CLOSE_WAIT_S
        for runner in self._pool.close():
            runner.join(max(0.0, deadline - self._clock.monotonic()))
        for thread in self._transfers.threads:
            thread.join(timeout=CLOSE_WAIT_S)
        self._pool.join_connecting(0.1)
        # A host still connecting when the run ended hands its runner over late.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Connected):
                item.runner.close()

    def _report(self, started_wall: float, duration_s: float) -> DispatchReport:
        timeline = self._attempts.timeline
        tasks = []
        for name, rec in self._scheduler.records.items():
            place = self._attempts.logs.place(name)
            tasks.append(
                TaskResult(
                    name=name,
                    status=rec.status,
                    host=rec.host,
                    exit_code=rec.exit_code if rec.status is not TaskStatus.SUCCEEDED else 0,
                    # Every attempt counts here, a lost or moved one too (the scheduler's
                    # count, which bounds retries, leaves those out).
                    attempts=len(timeline.get(name, ())) or rec.attempts,
                    duration_s=self._attempts.last_duration.get(name),
                    log=place.path,
                    error=rec.error if rec.status is not TaskStatus.SUCCEEDED else None,
                    files=self._transfers.files.get(name, ()),
                    timeline=tuple(timeline.get(name, ())),
                    log_offset=place.offset,
                    log_bytes=place.size,
                )
            )
        return DispatchReport(
            self.run_id,
            started_wall,
            duration_s,
            tuple(tasks),
            self._pool.summaries(),
            str(self.run_dir),
            self._interrupted,
            # Only tasks that ended failed on an integrity error: a retry may rescue one.
            tuple(
                name
                for name in dict.fromkeys(self._transfers.integrity)
                if self._scheduler.records[name].status is TaskStatus.FAILED
            ),
            stop_signal=self._stop_signal if self._interrupted else None,
        )

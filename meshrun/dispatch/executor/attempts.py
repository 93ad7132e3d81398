"""The attempts of a dispatch run: one per start of a task on a host.

An attempt has a runner id unique in the run (a re-queued task must never share one
with its attempt on a lost host, whose late reports would be taken for the new one),
appends to its task's log (every attempt of a task in one log: ``logs.TaskLogs``),
gets a deadline from its timeout once its command runs, and leaves an entry in its
task's timeline when it ends. ``exited`` turns the runner's report into what the
scheduler hears; whether a failed task runs again is the scheduler's call (retries).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from meshrun import resources
from meshrun.agent.client import Runner, RunnerEvent, RunnerGone, TaskExited, TaskOutput
from meshrun.config.tasks import TaskGraph
from meshrun.dispatch.executor.clock import RunClock
from meshrun.dispatch.executor.hosts import call_safely
from meshrun.dispatch.executor.logs import TaskLogs
from meshrun.dispatch.scheduler import Start, TaskFailed, TaskSucceeded
from meshrun.errors import MeshrunError
from meshrun.integrity.manifest import AttemptEntry
from meshrun.records import record

#: One logger for the whole executor: ``-v`` shows its records, each naming its host.
log = logging.getLogger("meshrun.dispatch.executor")

#: After asking a host to stop a task (timeout, cancel), how long to wait for its exit
#: before the host counts as lost (hung) and its tasks are re-queued elsewhere.
STOP_GRACE_S = 10.0


@record(frozen=False)
class Attempt:
    task: str
    host: str
    number: int
    started: float  # monotonic: when it was started, then when its command was
    deadline: float | None
    weight: float = 1.0  # its host's speed (durations are learned per weight-1 host)
    timed_out: bool = False
    cancelled: bool = False
    stop_sent: float | None = None  # when we asked the host to stop it
    #: Its command has not started: its needs' outputs are being pushed to the host, or
    #: it waits for this process's resources (a cancel only marks it).
    staging: bool = False


@record
class AttemptEnd:
    """How an attempt's command ended, in the scheduler's terms."""

    task_id: str
    attempt: Attempt
    duration_s: float
    exit_code: int | None
    #: What the scheduler is told; None when it was stopped on request (cancelled or
    #: moved) or lost.
    outcome: TaskSucceeded | TaskFailed | None
    #: The runner lost it (no exit status): a RunnerGone follows and re-queues it.
    lost: bool = False


#: Who can stop an attempt on a host: its runner, while it has one.
RunnerOf = Callable[[str], Runner | None]


class Attempts:
    """The attempts running now (by runner id), and every attempt's trace."""

    def __init__(
        self,
        graph: TaskGraph,
        *,
        run_id: str,
        default_timeout_s: float | None,
        logs_dir: Path,
        clock: RunClock,
        put: Callable[[RunnerEvent], None],
    ) -> None:
        self._graph = graph
        self._run_id = run_id
        self._default_timeout_s = default_timeout_s
        self.logs = TaskLogs(logs_dir)
        self._clock = clock
        self._put = put
        self._starts = 0
        self.running: dict[str, Attempt] = {}  # runner task id -> attempt
        self._unsent: dict[str, Runner] = {}  # host -> its runner, holding starts back
        # (deadline, runner task id) of attempts launched with a timeout: the next one is
        # found without reading every running attempt on each pass of the loop. Entries
        # of attempts that ended stay until they reach the top.
        self._deadlines: list[tuple[float, str]] = []
        self._stopping: dict[str, Attempt] = {}  # asked to stop, not yet ended
        self.timeline: dict[str, list[AttemptEntry]] = {}  # task -> every attempt
        self.last_duration: dict[str, float] = {}  # task -> its last attempt's
        self.learned: dict[str, float] = {}  # task -> successful duration on a weight-1 host

    # -- starting ------------------------------------------------------------------------

    def open(self, start: Start, weight: float) -> tuple[str, Attempt]:
        """A new attempt for ``start`` (its header in the task's log): its id, itself."""
        self._starts += 1
        task_id = f"{start.task}#{self._starts}"
        stolen = f", taken from {start.stolen_from}'s queue" if start.stolen_from else ""
        log.info("%s: starts %s (attempt %d%s)", start.host, start.task, start.attempt, stolen)
        command = self._graph.tasks[start.task].run
        header = f"# meshrun: attempt {start.attempt} on {start.host}: {command}\n"
        self.logs.write(start.task, header.encode())
        attempt = Attempt(
            start.task, start.host, start.attempt, self._clock.monotonic(), None, weight
        )
        self.running[task_id] = attempt
        return task_id, attempt

    def launch(self, task_id: str, attempt: Attempt, runner: Runner, workdir: str) -> str | None:
        """Run the attempt's command on its host; its clock and timeout start now. What
        this process ran short of (fds, threads) when it could not start it, else None."""
        task = self._graph.tasks[attempt.task]
        timeout = task.timeout_s or self._default_timeout_s
        attempt.started = self._clock.monotonic()
        attempt.deadline = None if timeout is None else attempt.started + timeout
        if attempt.deadline is not None:
            heapq.heappush(self._deadlines, (attempt.deadline, task_id))
        env = {
            **task.env,
            "MESHRUN_HOST": attempt.host,
            "MESHRUN_RUN_ID": self._run_id,
            "MESHRUN_TASK": attempt.task,
            "MESHRUN_ATTEMPT": str(attempt.number),
        }
        try:
            runner.run(task_id, task.run, workdir, env)
            self._unsent[attempt.host] = runner
        except Exception as exc:
            shortage = resources.resource_error(exc, f"starting {attempt.task}")
            if shortage is not None:
                attempt.deadline = None
                return str(shortage)
            if not isinstance(exc, MeshrunError):
                raise
            self._put(TaskExited(attempt.host, task_id, None, str(exc)))
            self._put(RunnerGone(attempt.host, str(exc)))
        return None

    def flush(self) -> None:
        """Send the starts runners held back (once per turn of the loop: the tasks
        started on a host in one turn go out together). A host whose link broke is
        lost: a RunnerGone re-queues what runs there."""
        while self._unsent:
            host, runner = self._unsent.popitem()
            try:
                runner.flush()
            except (MeshrunError, OSError) as exc:
                self._put(RunnerGone(host, str(exc)))

    def unstage(self, task_id: str) -> Attempt | None:
        """The attempt whose inputs were being pushed, now done with that; None if it is
        gone meanwhile (its host was lost, the run interrupted)."""
        attempt = self.running.get(task_id)
        if attempt is None or not attempt.staging:
            return None
        attempt.staging = False
        return attempt

    def drop(self, task_id: str, note: str | None = None) -> None:
        """End an attempt whose command never ran (``note`` for its log)."""
        attempt = self.running.pop(task_id)
        if note is not None:
            self.note(attempt, f"# meshrun: {note}\n")

    def note(self, attempt: Attempt, text: str) -> None:
        """A line of meshrun's own in the attempt's log."""
        self.logs.write(attempt.task, text.encode())

    # -- while it runs --------------------------------------------------------------------

    def output(self, item: TaskOutput) -> Attempt | None:
        """Output of a running attempt, appended to its log; None if it is not ours."""
        attempt = self.running.get(item.task_id)
        if attempt is not None:
            self.logs.write(attempt.task, item.data)
        return attempt

    def cancel(self, task: str, host: str, runner_of: RunnerOf) -> None:
        for task_id, attempt in self.running.items():
            if attempt.task == task and attempt.host == host:
                attempt.cancelled = True
                self.stop(task_id, attempt, runner_of)

    def stop(self, task_id: str, attempt: Attempt, runner_of: RunnerOf) -> None:
        if attempt.staging:
            return  # nothing runs yet; the coordinator sees the flag and does not start it
        attempt.stop_sent = self._clock.monotonic()
        self._stopping[task_id] = attempt
        runner = runner_of(attempt.host)
        if runner is not None:
            call_safely(attempt.host, runner.cancel, task_id)

    def check_deadlines(self, runner_of: RunnerOf) -> None:
        """Stop attempts past their timeout; write off hosts that do not stop one."""
        now = self._clock.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            attempt = self.running.get(task_id)
            if attempt is not None and not attempt.timed_out and attempt.deadline is not None:
                attempt.timed_out = True
                self.stop(task_id, attempt, runner_of)
        for task_id, attempt in list(self._stopping.items()):
            if self.running.get(task_id) is not attempt or attempt.stop_sent is None:
                del self._stopping[task_id]
        hung = {
            a.host
            for a in self._stopping.values()
            if a.stop_sent is not None and now - a.stop_sent > STOP_GRACE_S
        }
        for host in hung:
            # A host that does not even answer a kill is hung: write it off; its tasks
            # are re-queued elsewhere (or cancelled when the run is stopping).
            self._put(
                RunnerGone(host, f"did not stop a task within {STOP_GRACE_S:g}s; it seems hung")
            )
            for attempt in self.running.values():
                if attempt.host == host:
                    attempt.stop_sent = None

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, task_id = self._deadlines[0]
            attempt = self.running.get(task_id)
            if attempt is not None and not attempt.timed_out and attempt.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)  # ended, or stopped already
        return None

    def holding_slots(self) -> Iterator[tuple[str, str, float]]:
        """(task, host, started) of each attempt running or staging (for progress)."""
        for attempt in self.running.values():
            yield attempt.task, attempt.host, attempt.started

    # -- ending --------------------------------------------------------------------------

    def exited(self, event: TaskExited) -> AttemptEnd | None:
        """A runner reports an exit: the attempt's log says how, and how it ended comes
        back; None for a late report from a host already written off."""
        attempt = self.running.get(event.task_id)
        if attempt is None or attempt.host != event.host:
            return None
        del self.running[event.task_id]
        duration = self._clock.monotonic() - attempt.started
        self.last_duration[attempt.task] = duration
        ending = f"exit {event.exit_code} after {duration:.2f}s"
        if attempt.timed_out:  # its exit code is the kill's, not an answer of its own
            ending = f"timed out after {self.timeout_of(attempt.task):g}s: killed, {ending}"
        self.note(attempt, f"\n# meshrun: {ending}\n")
        if event.exit_code is None and not (attempt.timed_out or attempt.cancelled):
            return AttemptEnd(event.task_id, attempt, duration, None, None, lost=True)
        if attempt.cancelled and not attempt.timed_out:
            return AttemptEnd(event.task_id, attempt, duration, event.exit_code, None)
        outcome: TaskFailed | TaskSucceeded
        if attempt.timed_out:
            outcome = TaskFailed(
                attempt.task,
                attempt.host,
                event.exit_code,
                f"timed out after {self.timeout_of(attempt.task):g}s; its processes were killed",
                infrastructure=True,
            )
        elif event.exit_code == 0:
            self.learned[attempt.task] = duration * attempt.weight
            outcome = TaskSucceeded(attempt.task, attempt.host, duration)
        else:
            outcome = TaskFailed(
                attempt.task, attempt.host, event.exit_code, f"exit code {event.exit_code}"
            )
        return AttemptEnd(event.task_id, attempt, duration, event.exit_code, outcome)

    def lose_host(self, host: str, reason: str) -> None:
        """Every attempt on a host that was lost ends there (each is re-queued)."""
        for task_id in [tid for tid, a in self.running.items() if a.host == host]:
            attempt = self.running.pop(task_id)
            self.note(attempt, f"\n# meshrun: {host} was lost: {reason}\n")
            took = self._clock.monotonic() - attempt.started
            self.record(attempt, "lost", None, took)

    def record(self, attempt: Attempt, outcome: str, exit_code: int | None, took: float) -> None:
        """Keep one attempt's host, start, end (seconds from the run's start) and end."""
        start = self._clock.offset(attempt.started)
        self.timeline.setdefault(attempt.task, []).append(
            AttemptEntry(attempt.host, start, start + max(0.0, took), outcome, exit_code)
        )

    def abort(self) -> list[Attempt]:
        """Every running attempt ends cancelled at once (a second Ctrl-C); returned."""
        aborted = list(self.running.values())
        for attempt in aborted:
            took = self._clock.monotonic() - attempt.started
            self.record(attempt, "cancelled", None, took)
        self.running.clear()
        return aborted

    def close_logs(self) -> None:
        """The run ended: every log still in memory goes to a file."""
        self.logs.close()

    def timeout_of(self, task: str) -> float:
        return self._graph.tasks[task].timeout_s or self._default_timeout_s or 0.0

"""What the observer (the console, the journal) sees of a dispatch run, and the numbers
of its progress line.

Events are handed to the observer on the coordinator's thread, in the order things
happened. ``snapshot`` computes a ``Progress`` from the scheduler's records and the
attempts holding a slot; it reads no clock (``now`` is an argument), so the ETA is
tested without a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from meshrun.dispatch.scheduler import TaskRecord, TaskStatus
from meshrun.records import record
from meshrun.transport.base import Stream


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
    #: A succeeded task's log: (offset, bytes) in logs/succeeded.log (the journal keeps
    #: it); None when its log is a file of its own.
    log_slice: tuple[int, int] | None = None


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


def ignore(event: DispatchEvent) -> None:
    """The default observer."""


def snapshot(
    records: Mapping[str, TaskRecord],
    running: Iterable[tuple[str, str, float]],
    capacity: float,
    now: float,
) -> Progress:
    """The progress line's numbers.

    ``running``: (task, host, started) of every attempt whose command runs or whose
    inputs are being pushed; ``capacity``: the sum over the hosts taking tasks of their
    concurrency limit times their speed; ``now`` on the clock ``started`` was read on.

    The ETA is the work left by the expected durations (a running task's less the time
    it has run, times its weight) over that capacity. Unknown (None) with no capacity,
    and when the estimates leave nothing but tasks still run (they overran).
    """
    per_host: dict[str, int] = {}
    elapsed: dict[str, float] = {}
    for task, host, started in running:
        per_host[host] = per_host.get(host, 0) + 1
        elapsed[task] = now - started
    done = failed = 0
    work = 0.0
    for name, r in records.items():
        if r.status.final:
            done += 1
            failed += r.status is TaskStatus.FAILED
        else:
            work += max(0.0, r.expected_s - elapsed.get(name, 0.0)) * r.task.weight
    eta = work / capacity if capacity and work > 0 else None
    return Progress(done, len(records), failed, tuple(sorted(per_host.items())), eta)

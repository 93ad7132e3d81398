"""The dispatch scheduler: a pure state machine (no I/O, threads, sockets or clock).

It has one entry point: it is told what happened — ``handle(event, now)``, the run's
start and a stopped task included — and answers with ``Decisions``, values only: what
to do (``Start``, ``Cancel``), which tasks reached a final state (``Ended``) and which
concurrency limits moved (``LimitChanged``), each said once, by the event that caused
it. Time is an argument, so a simulator can replay thousands of tasks in milliseconds
and property tests can check its invariants.

How work is placed:

- **priority** of a task is its *bottom level*: its expected duration plus the longest
  chain of expected durations that depends on it. Ready tasks with the longest tail
  start first, which for independent tasks is longest-processing-time-first.
- **placement**: a task that becomes ready goes into the queue of the host expected to
  finish it soonest, given that host's queued work, its speed ``weight`` and its
  current concurrency limit; tasks that failed on a host prefer another one.
- **work stealing**: a host with free capacity and nothing of its own to start takes
  the lowest-priority task it can run from the queue with the most work (the task that
  would otherwise start last).
- **transfer cost**: a task whose needs produced outputs on another host waits for
  them to be pushed to its host, so every finish estimate above adds that transfer
  (``Policy.transfer_setup_s`` per need plus bytes at ``transfer_bytes_per_s``). A
  chain therefore stays on one host unless another host would still end it sooner.
- **moving a running task**: a host that joins mid-run (a discovered agent) with
  nothing to do takes over running tasks it would end clearly sooner (a long task
  that started on a slow host just before a fast one arrived): the task is stopped
  where it runs and started again there, as after a lost host (not an attempt).
- **dynamic concurrency**: each host starts at ``slots`` load units; distress
  (an infrastructure failure, a timeout, load above its CPUs) halves the limit, at most
  once per ``distress_cooldown_s``; each clean success adds one back, up to ``slots``.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import field

from meshrun import records
from meshrun.config.tasks import Task, TaskGraph
from meshrun.dispatch.scheduler.index import LazyHeap


class TaskStatus(enum.Enum):
    WAITING = "waiting"  # needs not yet succeeded
    QUEUED = "queued"  # ready, in a host's queue (or stalled: no host can take it)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # a need failed or was skipped
    CANCELLED = "cancelled"  # fail-fast, --max-fail, Ctrl-C, or no host left

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED}


#: An idle host steals a task only if no other host would finish it within this
#: fraction of the thief's time (a slow host leaves long tasks to faster ones). 1.0:
#: only when it ends no later than anywhere else; 0.8 was measured worse on mixed
#: speeds (bench/schedule: 1.09 -> 1.07 mean, build graph 1.24 -> 1.21) and no better
#: elsewhere.
STEAL_MARGIN = 1.0

#: How far down a blocked queue backfilling looks for a task that fits.
BACKFILL_LOOKAHEAD = 32

#: A host that joins mid-run with nothing queued takes over a running task (which is
#: stopped and started again there) only if that ends it this much sooner: at least
#: MOVE_MIN_GAIN_S, and MOVE_MIN_GAIN of the time the task still has where it runs.
MOVE_MIN_GAIN_S = 1.0
MOVE_MIN_GAIN = 0.25

#: Up to this many (queued tasks x hosts), a join places every queued task again.
REPLACE_MAX_WORK = 200_000

#: Above that, a joining host looks at this many times its fair share of the queued
#: tasks (the most urgent first) for ones it would finish sooner. 2: 10,000 tasks with
#: 256 or 1,000 hosts joining one by one end as soon as with a pass over every queued
#: task (makespan / lower bound 1.000, bench/schedule's simulate_joined), at a tenth
#: of the CPU.
REBALANCE_SHARES = 2

#: How many hosts of one group a placement (or a steal's "would another host finish it
#: sooner?") looks at beyond the first candidate, when the task would jump ahead of
#: queued work there (its finish then depends on the task's priority, which no heap
#: key can know). Exhaustive, hence exact, for groups up to this size (every host of
#: bench/schedule and the property tests); on 1,000 hosts it bounds the search.
SEARCH_BUDGET = 16

#: How many queued tasks one idle host looks at when it tries to steal (from the back of
#: the most loaded queues first). Only hosts that refuse tasks (a slow host, a label
#: it lacks, a task that failed there) ever look further than the first.
STEAL_LOOKAHEAD = 64


@records.record
class HostSpec:
    """What the scheduler knows of a host."""

    name: str
    slots: int
    speed: float = 1.0  # the inventory's ``weight``: relative speed
    labels: frozenset[str] = frozenset()


@records.record
class Policy:
    fail_fast: bool = False
    max_fail: int | None = None  # stop starting new tasks once more than this many failed
    distress_cooldown_s: float = 5.0
    #: What moving one need's outputs to another host costs: a fixed set-up (connect
    #: rsync, verify on arrival) plus the bytes at a LAN-ish rate, hashing included.
    transfer_setup_s: float = 0.2
    transfer_bytes_per_s: float = 50e6
    #: A counterfactual, measured by bench/schedule ("join + re-place"): every queued
    #: task is placed again each time one host is added, however many are queued.
    #: Off (the policy): once per join event, and only up to REPLACE_MAX_WORK.
    replace_per_host: bool = False


_DEFAULT_POLICY = Policy()

# -- events (facts) -----------------------------------------------------------------


@records.record
class RunStarted:
    """The run begins: every task with no needs is queued, then the hosts are filled.

    Placed highest priority first (longest-processing-time-first for independent
    tasks): each host's expected finish is then known when the next one is placed.
    """


@records.record
class HostJoined:
    host: HostSpec


@records.record
class HostsJoined:
    """Several hosts at once (the start of a run): placed before anything starts."""

    hosts: tuple[HostSpec, ...]


@records.record
class HostLost:
    host: str
    reason: str = "connection lost"


@records.record
class TaskSucceeded:
    """``output_files``/``output_bytes``: what it left for its dependents (collected
    outputs); a dependent placed on another host must wait for them to be pushed."""

    task: str
    host: str
    duration_s: float
    output_files: int = 0
    output_bytes: int = 0


@records.record
class TaskFailed:
    task: str
    host: str
    exit_code: int | None
    error: str = ""
    infrastructure: bool = False  # timeout or transport trouble: the host is in distress


@records.record
class HostLoad:
    host: str
    load1: float
    cpus: int


@records.record
class CancelAll:
    """Stop on request (Ctrl-C, SIGTERM): nothing new starts, running tasks are cancelled."""

    reason: str


@records.record
class TaskStopped:
    """A task the scheduler cancelled (a ``Cancel``) has stopped where it ran.

    A task being moved is queued on its new host (its attempt does not count) and the
    answer may start it; any other ends cancelled, with ``reason``.
    """

    task: str
    host: str
    reason: str


@records.record
class Abandon:
    """No host will ever come for the tasks still queued (e.g. every host is lost)."""

    reason: str


Event = (
    RunStarted
    | HostJoined
    | HostsJoined
    | HostLost
    | TaskSucceeded
    | TaskFailed
    | HostLoad
    | CancelAll
    | TaskStopped
    | Abandon
)


# -- decisions (instructions) -------------------------------------------------------


@records.record
class Start:
    task: str
    host: str
    attempt: int  # 1-based; host-loss re-queues do not count as attempts
    stolen_from: str | None = None  # the host whose queue it was taken from (stealing)


@records.record
class LimitChanged:
    """A host's concurrency limit moved: halved under distress, one back after a clean
    success."""

    host: str
    before: int
    after: int
    why: str


@records.record
class Cancel:
    """Stop a running task: the run stops (``CancelAll``, --fail-fast), or it moves to a
    host that joined. The executor answers with ``TaskStopped`` once it has stopped."""

    task: str
    host: str
    reason: str


#: What the executor carries out, in order.
Action = Start | Cancel


@records.record
class Ended:
    """A task reached its final state (for progress reports and the journal)."""

    task: str
    status: TaskStatus
    host: str | None  # where it ran last; None if it never ran
    error: str | None


@records.record
class Decisions:
    """The whole answer to one event: ``actions`` to carry out, in order; the tasks that
    reached a final state (``ended``) and the limits that moved (``limit_changes``)
    because of it."""

    actions: list[Action] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    limit_changes: list[LimitChanged] = field(default_factory=list)


@records.record(frozen=False)
class TaskRecord:
    """The scheduler's view of one task; ``status`` ends in exactly one final state."""

    task: Task
    priority: float
    expected_s: float
    status: TaskStatus = TaskStatus.WAITING
    attempts: int = 0
    host: str | None = None  # where it runs or last ran
    avoid: set[str] = field(default_factory=set)  # hosts it failed on
    error: str | None = None
    exit_code: int | None = None
    waiting_on: int = 0  # needs not yet succeeded


@records.record(frozen=False)
class _HostState:
    spec: HostSpec
    limit: int
    alive: bool = True
    queue: list[tuple[float, int, str]] = field(default_factory=list)  # (-priority, seq, task)
    works: list[float] = field(default_factory=list)  # each queued task's _work, in step
    running: dict[str, int] = field(default_factory=dict)  # task -> load units
    expected_end: dict[str, float] = field(default_factory=dict)  # task -> when it should end
    last_distress: float = float("-inf")
    used: int = 0  # load units of running tasks
    queued_work: float = 0.0  # sum of expected_s * weight over the queue
    running_work: float = 0.0  # the same over running tasks
    order: int = 0  # its position among the hosts (the indexes' name for it)
    stealable: bool = False  # queued tasks it cannot start itself now (as indexed)
    idle: bool = False  # free room and nothing queued: it may steal (as indexed)


@records.record(frozen=False, eq=False)
class _Group:
    """Hosts that can run the same tasks at the same speed: one (labels, slots, speed).

    Each heap holds ``(key, name, order, version)`` (``lowest``: ``(key, order,
    version)``): ``backlog`` every live host by ``_backlog_s`` (its expected finish of a
    task queued behind everything there), ``running`` the hosts with a queue by their
    running work alone (the earliest a task could finish there, ahead of the whole
    queue), ``lowest`` the same hosts by the lowest priority they hold queued.
    """

    labels: frozenset[str]
    slots: int
    speed: float
    backlog: LazyHeap
    running: LazyHeap
    lowest: LazyHeap


class Scheduler:
    """Events in, decisions out. See the module docstring for the placement rules."""

    def __init__(
        self,
        graph: TaskGraph,
        expected_s: Mapping[str, float],
        policy: Policy = _DEFAULT_POLICY,
        hosts: Iterable[HostSpec] = (),
    ) -> None:
        self.graph = graph
        self.policy = policy
        self._seq = 0
        self._failures = 0
        self._stopping: str | None = None
        self.hosts: dict[str, _HostState] = {}
        bottom = _bottom_levels(graph, expected_s)
        self.records: dict[str, TaskRecord] = {
            name: TaskRecord(task, bottom[name], expected_s.get(name, 1.0))
            for name, task in graph.tasks.items()
        }
        self._outputs: dict[str, int] = {}  # succeeded task -> bytes of outputs it left
        self._stalled: list[str] = []  # ready but no live host can run them
        self._moving: dict[str, str] = {}  # running task being stopped -> its new host
        # What the event being handled ended and changed (its Decisions).
        self._ended: list[Ended] = []
        self._limit_changes: list[LimitChanged] = []
        self._final = 0  # records in a final state (``finished`` without a pass over them)
        # The indexes (index.py): hosts by order, each one's current version, the
        # groups, the hosts with stealable tasks (most work first), the idle hosts that
        # might steal, and what changed since the indexes were last brought up to date
        # (``_changed``) or since ``_fill`` last looked at a host (``_dirty``).
        self._by_order: list[_HostState] = []
        self._versions: list[int] = []
        self._groups: dict[tuple[frozenset[str], int, float], _Group] = {}
        self._groups_for_task: dict[tuple[frozenset[str], int], list[_Group]] = {}
        self._victims = LazyHeap(self._versions)  # (-backlog, order, version)
        self._stealable = 0  # hosts with stealable tasks
        self._idle: list[int] = []  # orders of the idle hosts (free room, empty queue), sorted
        self._changed: dict[int, _HostState] = {}
        self._dirty: set[int] = set()
        for record in self.records.values():
            record.waiting_on = len(record.task.needs)
        for spec in hosts:
            self._add_host(spec)

    # -- queries ----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._final == len(self.records)

    @property
    def stalled(self) -> list[str]:
        """Ready tasks no live host can run (waiting for a host to join)."""
        return list(self._stalled)

    def running_on(self, host: str) -> dict[str, int]:
        return dict(self.hosts[host].running)

    def limit(self, host: str) -> int:
        return self.hosts[host].limit

    # -- the one entry point ------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Decisions:
        """What ``event`` (at ``now``, seconds on the caller's clock) decides."""
        self._ended = []
        self._limit_changes = []
        actions = self._react(event, now)
        return Decisions(actions, self._ended, self._limit_changes)

    def _react(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, RunStarted):
            self._queue_ready()
            return self._fill(now)
        if isinstance(event, TaskStopped):
            return self._stopped(event, now)
        actions: list[Action] = []
        if isinstance(event, HostJoined | HostsJoined):
            joined = (event.host,) if isinstance(event, HostJoined) else event.hosts
            for spec in joined:
                self._add_host(spec)
            self._replace_queued([self.hosts[spec.name] for spec in joined])
            for spec in joined:
                actions += self._move_onto(self.hosts[spec.name], now)
        elif isinstance(event, HostLost):
            self._lose_host(event.host)
        elif isinstance(event, TaskSucceeded):
            self._succeeded(event)
        elif isinstance(event, TaskFailed):
            actions += self._failed(event, now)
        elif isinstance(event, HostLoad):
            host = self.hosts.get(event.host)
            if host is not None and event.cpus > 0 and event.load1 > event.cpus:
                self._distress(host, now, f"load {event.load1:g} above its {event.cpus} CPUs")
        elif isinstance(event, CancelAll):
            actions += self._stop(event.reason, cancel_running=True)
        elif isinstance(event, Abandon):
            for name in self._stalled:
                self._end(name, TaskStatus.CANCELLED, f"no host could run it: {event.reason}")
                self._skip_dependents(name)
            self._stalled.clear()
        return actions + self._fill(now)

    def _queue_ready(self) -> None:
        """Queue every task with no needs, highest priority first (``RunStarted``)."""
        ready = [
            name
            for name, record in self.records.items()
            if record.status is TaskStatus.WAITING and record.waiting_on == 0
        ]
        for name in self._by_priority(ready):
            self._make_ready(name)

    def _by_priority(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=lambda name: -self.records[name].priority)

    # -- state changes -----------------------------------------------------------------

    def _add_host(self, spec: HostSpec) -> None:
        existing = self.hosts.get(spec.name)
        if existing is None or not existing.alive:
            state = _HostState(spec, limit=max(1, spec.slots))
            if existing is None:
                state.order = len(self._by_order)
                self._by_order.append(state)
                self._versions.append(0)
            else:  # a lost host back: same place among the hosts, as in ``hosts``
                state.order = existing.order
                self._by_order[state.order] = state
            self.hosts[spec.name] = state
            self._touch(state)
        if self.policy.replace_per_host:
            self._replace_all(stalled_first=False)

    def _eligible(self, host: _HostState, task: Task) -> bool:
        return host.alive and task.labels <= host.spec.labels and task.weight <= host.spec.slots

    def _make_ready(self, name: str) -> None:
        if self._stopping is not None:
            self._end(name, TaskStatus.CANCELLED, self._stopping)
            return
        self.records[name].status = TaskStatus.QUEUED
        self._place(name)

    def _work(self, name: str) -> float:
        record = self.records[name]
        return record.expected_s * record.task.weight

    def _backlog_s(self, host: _HostState) -> float:
        """Expected seconds until ``host`` could start something new.

        Running tasks count half: on average they are half done.
        """
        work = host.queued_work + host.running_work / 2
        return work / (host.spec.speed * max(1, host.limit))

    def transfer_s(self, name: str, host: str) -> float:
        """Expected seconds to bring the outputs of ``name``'s needs to ``host``."""
        total = 0.0
        for need in self.records[name].task.needs:
            size = self._outputs.get(need)
            if size is not None and self.records[need].host != host:
                total += self.policy.transfer_setup_s + size / self.policy.transfer_bytes_per_s
        return total

    def _finish_s(self, host: _HostState, record: TaskRecord) -> float:
        """When ``host`` is expected to finish ``record`` if queued there now.

        Only the queued work that would start before it counts (the queue runs
        highest priority first): a short queue of urgent tasks delays it, a long one of
        lesser tasks does not.
        """
        ahead = self._work_ahead(host, record.priority) + host.running_work / 2
        return (
            ahead / (host.spec.speed * max(1, host.limit))
            + record.expected_s / host.spec.speed
            + self.transfer_s(record.task.name, host.spec.name)
        )

    def _work_ahead(self, host: _HostState, priority: float) -> float:
        """The queued work on ``host`` of at least ``priority``; O(the shorter side)."""
        index = bisect.bisect_right(host.queue, (-priority, float("inf"), ""))
        if index == len(host.queue):
            return host.queued_work
        if index <= len(host.queue) - index:
            return sum(host.works[:index])
        behind = sum(host.works[index:])
        return max(0.0, host.queued_work - behind)

    def _enqueue(self, host: _HostState, name: str) -> None:
        self._seq += 1
        entry = (-self.records[name].priority, self._seq, name)
        index = bisect.bisect_right(host.queue, entry)
        host.queue.insert(index, entry)
        work = self._work(name)
        host.works.insert(index, work)
        host.queued_work += work
        self._touch(host)

    def _dequeue(self, host: _HostState, index: int) -> str:
        _, _, name = host.queue.pop(index)
        del host.works[index]
        host.queued_work = max(0.0, host.queued_work - self._work(name))
        self._touch(host)
        return name

    def _release(self, host: _HostState, name: str) -> None:
        """``name`` no longer runs on ``host``."""
        units = host.running.pop(name, None)
        host.expected_end.pop(name, None)
        if units is not None:
            host.used -= units
            host.running_work = max(0.0, host.running_work - self._work(name))
            self._touch(host)

    def _place(self, name: str) -> None:
        """Queue ``name`` on the host expected to finish it soonest (ties: the one with
        less backlog, then by name), one where it has not failed if there is one."""
        record = self.records[name]
        best = self._soonest(record, avoid=record.avoid)
        if best is None and record.avoid:
            best = self._soonest(record, avoid=frozenset())
        if best is None:
            self._stalled.append(name)
            return
        self._enqueue(best, name)

    def _replace_queued(self, newcomers: list[_HostState]) -> None:
        """Place every queued (and stalled) task again now that ``newcomers`` joined,
        highest priority first, as if all hosts had been there from the start.

        Above REPLACE_MAX_WORK (queued tasks x hosts) each newcomer only takes over the
        queued tasks it would finish sooner: many hosts joining one by one must not
        make each join cost a full placement.
        """
        queued = sum(len(h.queue) for h in self.hosts.values()) + len(self._stalled)
        if queued * len(self.hosts) > REPLACE_MAX_WORK:
            stalled, self._stalled = self._stalled, []
            for name in self._by_priority(stalled):
                self._place(name)
            for newcomer in newcomers:
                self._rebalance_onto(newcomer)
            return
        self._replace_all(stalled_first=True)

    def _replace_all(self, *, stalled_first: bool) -> None:
        """Take every queued and stalled task out and place it again, highest priority
        first (ties in the order taken: ``stalled_first`` or after the queues)."""
        stalled, self._stalled = self._stalled, []
        queued = []
        for host in self.hosts.values():
            queued += [name for _, _, name in host.queue]
            host.queue.clear()
            host.works.clear()
            host.queued_work = 0.0
            self._touch(host)
        names = stalled + queued if stalled_first else queued + stalled
        for name in self._by_priority(names):
            self._place(name)

    def _rebalance_onto(self, newcomer: _HostState) -> None:
        """Give a joining host the queued tasks it would finish sooner.

        Hosts join one by one as they connect; without this the first one to join
        would keep every task queued so far. In priority order, each of the most urgent
        queued tasks moves if the newcomer's expected finish beats its current host's.
        It looks at REBALANCE_SHARES times its fair share of the queue (queued tasks /
        hosts) plus BACKFILL_LOOKAHEAD: a pass over every queued task on each of 1,000
        joins cost 63 CPU-s for 10,000 tasks (the queues, already sorted, are merged
        lazily); what it leaves, it can still steal once idle.
        """
        others = [h for h in self.hosts.values() if h is not newcomer and h.queue]
        queued = sum(len(h.queue) for h in others)
        look = REBALANCE_SHARES * queued // len(self.hosts) + BACKFILL_LOOKAHEAD
        merged = heapq.merge(*(zip(list(h.queue), itertools.repeat(h)) for h in others))
        for entry, host in itertools.islice(merged, look):
            name = entry[2]
            record = self.records[name]
            if not self._eligible(newcomer, record.task) or newcomer.spec.name in record.avoid:
                continue
            if self._finish_s(newcomer, record) < self._finish_s(host, record):
                self._dequeue(host, host.queue.index(entry))
                self._enqueue(newcomer, name)

    def _move_onto(self, newcomer: _HostState, now: float) -> list[Action]:
        """Stop running tasks that ``newcomer`` would end clearly sooner; they start
        again there once stopped (see :class:`TaskStopped`).

        Only tasks that would start on the newcomer at once count (its free room after
        the queued tasks of higher priority), biggest gain first.
        """
        if self._stopping is not None:
            return []
        gains: list[tuple[float, str]] = []
        for host in self.hosts.values():
            if host is newcomer or not host.alive:
                continue
            for name, end in host.expected_end.items():
                record = self.records[name]
                if name in self._moving or not self._eligible(newcomer, record.task):
                    continue
                if newcomer.spec.name in record.avoid:
                    continue
                left = end - now
                there = record.expected_s / newcomer.spec.speed + self.transfer_s(
                    name, newcomer.spec.name
                )
                gain = left - there
                if gain >= max(MOVE_MIN_GAIN_S, MOVE_MIN_GAIN * left):
                    gains.append((gain, name))
        actions: list[Action] = []
        taken = newcomer.used
        for _, name in sorted(gains, key=lambda g: (-g[0], g[1])):
            record = self.records[name]
            ahead = sum(
                self.records[queued].task.weight
                for _, _, queued in newcomer.queue
                if self.records[queued].priority > record.priority
            )
            if taken + ahead + record.task.weight > newcomer.limit:
                continue
            taken += record.task.weight
            assert record.host is not None
            self._moving[name] = newcomer.spec.name
            actions.append(Cancel(name, record.host, f"moved to {newcomer.spec.name}"))
        return actions

    def _succeeded(self, event: TaskSucceeded) -> None:
        record = self.records[event.task]
        host = self.hosts.get(event.host)
        if record.status is not TaskStatus.RUNNING or record.host != event.host:
            return  # a late report for a task already re-queued elsewhere
        self._moving.pop(event.task, None)  # it ended before the stop landed
        if host is not None:
            self._release(host, event.task)
            if host.limit < host.spec.slots:
                self._set_limit(host, host.limit + 1, f"{event.task} succeeded")
        if event.output_files:
            self._outputs[event.task] = event.output_bytes
        self._end(event.task, TaskStatus.SUCCEEDED, None)
        now_ready = []
        for dependent in self.graph.dependents(event.task):
            dep = self.records[dependent]
            dep.waiting_on -= 1
            if dep.waiting_on == 0 and dep.status is TaskStatus.WAITING:
                now_ready.append(dependent)
        for dependent in self._by_priority(now_ready):
            self._make_ready(dependent)

    def _failed(self, event: TaskFailed, now: float) -> list[Action]:
        record = self.records[event.task]
        if record.status is not TaskStatus.RUNNING or record.host != event.host:
            return []
        self._moving.pop(event.task, None)
        host = self.hosts.get(event.host)
        if host is not None:
            self._release(host, event.task)
            if event.infrastructure:
                self._distress(host, now, f"{event.task}: {event.error or 'failed'}")
        record.exit_code = event.exit_code
        record.avoid.add(event.host)
        if record.attempts <= record.task.retries and self._stopping is None:
            record.status = TaskStatus.QUEUED
            record.error = event.error
            self._place(event.task)
            return []
        self._end(event.task, TaskStatus.FAILED, event.error or f"exit code {event.exit_code}")
        self._failures += 1
        self._skip_dependents(event.task)
        if self.policy.fail_fast:
            return self._stop(f"--fail-fast: {event.task} failed", cancel_running=True)
        if self.policy.max_fail is not None and self._failures > self.policy.max_fail:
            # Running tasks finish: their results still count.
            return self._stop(f"--max-fail {self.policy.max_fail} exceeded", cancel_running=False)
        return []

    def _skip_dependents(self, name: str) -> None:
        stack = list(self.graph.dependents(name))
        while stack:
            dependent = stack.pop()
            record = self.records[dependent]
            if record.status is TaskStatus.WAITING:
                self._end(dependent, TaskStatus.SKIPPED, f"needs {name}, which did not succeed")
                stack.extend(self.graph.dependents(dependent))

    def _distress(self, host: _HostState, now: float, why: str) -> None:
        if now - host.last_distress < self.policy.distress_cooldown_s:
            return
        host.last_distress = now
        self._set_limit(host, max(1, host.limit // 2), why)

    def _set_limit(self, host: _HostState, limit: int, why: str) -> None:
        if limit != host.limit:
            self._limit_changes.append(LimitChanged(host.spec.name, host.limit, limit, why))
            host.limit = limit
            self._touch(host)

    def _lose_host(self, name: str) -> None:
        host = self.hosts.get(name)
        if host is None or not host.alive:
            return
        host.alive = False
        orphans = [n for _, _, n in host.queue] + list(host.running)
        host.queue.clear()
        host.works.clear()
        host.running.clear()
        host.expected_end.clear()
        host.used = 0
        host.queued_work = host.running_work = 0.0
        self._touch(host)
        for task in orphans:
            record = self.records[task]
            self._moving.pop(task, None)
            if record.status is TaskStatus.RUNNING:
                record.attempts -= 1  # a lost host is not the task's failure
            if self._stopping is not None:
                self._end(task, TaskStatus.CANCELLED, self._stopping)
                continue
            record.status = TaskStatus.QUEUED
            record.host = None
            self._place(task)

    def _stop(self, reason: str, *, cancel_running: bool) -> list[Action]:
        """No new starts: queued and waiting tasks are cancelled, running ones too when
        ``cancel_running`` (a stop request, --fail-fast; not --max-fail)."""
        if self._stopping is None:
            self._stopping = reason
        actions: list[Action] = []
        for host in self.hosts.values():
            for _, _, name in host.queue:
                self._end(name, TaskStatus.CANCELLED, reason)
            host.queue.clear()
            host.works.clear()
            host.queued_work = 0.0
            self._touch(host)  # once per host: a stop is rare
        for name in self._stalled:
            self._end(name, TaskStatus.CANCELLED, reason)
        self._stalled.clear()
        for name, record in self.records.items():
            if record.status is TaskStatus.WAITING:
                self._end(name, TaskStatus.CANCELLED, reason)
        if cancel_running:
            for host in self.hosts.values():
                for name in list(host.running):
                    actions.append(Cancel(name, host.spec.name, reason))
        return actions

    def _stopped(self, event: TaskStopped, now: float) -> list[Action]:
        """A cancelled task has stopped: queued on its new host if it was being moved
        (may start at once), else it ends cancelled (see :class:`TaskStopped`)."""
        record = self.records[event.task]
        state = self.hosts.get(event.host)
        if state is not None:
            self._release(state, event.task)
        target = self._moving.pop(event.task, None)
        if target is not None and not record.status.final and self._stopping is None:
            record.status = TaskStatus.QUEUED
            record.attempts -= 1
            record.host = None
            new = self.hosts.get(target)
            if new is not None and self._eligible(new, record.task):
                self._enqueue(new, event.task)
            else:
                self._place(event.task)
            return self._fill(now)
        if not record.status.final:
            self._end(event.task, TaskStatus.CANCELLED, event.reason)
        return []

    def _end(self, name: str, status: TaskStatus, error: str | None) -> None:
        record = self.records[name]
        if record.status.final:
            return
        record.status = status
        record.error = error
        self._final += 1
        self._ended.append(Ended(name, status, record.host, error))

    # -- filling hosts ---------------------------------------------------------------

    def _fill(self, now: float) -> list[Action]:
        """Start what can start, host by host in their order, pass after pass until a
        pass starts nothing.

        Only hosts that may start something are visited: those whose own state changed
        since they last had nothing to start (``_dirty``: what a queued host can start
        depends on nothing else), and, while some host has tasks it cannot start itself,
        the idle hosts that might steal them. A host that becomes one of these during a
        pass is visited in this pass if it comes later, else in the next: the order
        and the outcome are those of visiting every host on every pass.
        """
        if self._stopping is not None:
            return []
        actions: list[Action] = []
        later = self._dirty
        self._dirty = set()
        while True:
            current = list(later)  # the changed hosts this pass visits, by order
            heapq.heapify(current)
            pending = set(later)
            later = set()
            position = -1
            progress = False
            while True:
                self._reindex()
                order = current[0] if current else None
                if self._stealable:  # the next idle host after ``position`` may steal
                    i = bisect.bisect_right(self._idle, position)
                    if i < len(self._idle) and (order is None or self._idle[i] < order):
                        order = self._idle[i]
                if order is None:
                    break
                if current and current[0] == order:
                    heapq.heappop(current)
                position = order
                host = self._by_order[order]
                if not host.alive or (host.running and host.used >= host.limit):
                    continue  # full: nothing can start there
                chosen = self._next_for(host, now)
                if chosen is None:
                    continue
                actions.append(self._start(host, *chosen, now))
                progress = True
                for other in self._dirty:
                    if other <= order:
                        later.add(other)
                    elif other not in pending:
                        heapq.heappush(current, other)
                        pending.add(other)
                self._dirty = set()
            if not progress:
                return actions

    def _start(self, host: _HostState, name: str, stolen_from: str | None, now: float) -> Start:
        record = self.records[name]
        record.status = TaskStatus.RUNNING
        record.host = host.spec.name
        record.attempts += 1
        host.running[name] = record.task.weight
        host.expected_end[name] = (
            now + record.expected_s / host.spec.speed + self.transfer_s(name, host.spec.name)
        )
        host.used += record.task.weight
        host.running_work += self._work(name)
        self._touch(host)
        return Start(name, host.spec.name, record.attempts, stolen_from)

    def _fits(self, host: _HostState, task: Task) -> bool:
        free = host.limit - host.used
        # A task heavier than the (shrunk) limit may run alone on an idle host.
        return task.weight <= free or (not host.running and task.weight <= host.spec.slots)

    def _reserved_start(self, host: _HostState, units: int, now: float) -> float:
        """When ``units`` load units should be free on ``host``, from expected ends."""
        free = host.limit - host.used
        for name, end in sorted(host.expected_end.items(), key=lambda item: item[1]):
            if free >= units:
                break
            free += host.running[name]
            now = max(now, end)
        return now

    def _next_for(self, host: _HostState, now: float) -> tuple[str, str | None] | None:
        """The head of this host's queue if it fits, else a backfill or a stolen task
        (with the host it was stolen from).

        A head too heavy for the free room keeps its place (it is not starved): smaller
        queued tasks may run before it only if they should end before its reserved
        start (EASY backfilling).
        """
        if host.queue:
            _, _, head = host.queue[0]
            head_task = self.records[head].task
            if self._fits(host, head_task):
                return self._dequeue(host, 0), None
            units = min(head_task.weight, host.limit) if host.running else head_task.weight
            shadow = self._reserved_start(host, units, now)
            for i in range(1, min(len(host.queue), BACKFILL_LOOKAHEAD + 1)):
                name = host.queue[i][2]
                record = self.records[name]
                if self._fits(host, record.task) and (
                    now + record.expected_s / host.spec.speed <= shadow
                ):
                    return self._dequeue(host, i), None
            return None
        if host.used >= host.limit:
            return None
        self._reindex()
        if not self._stealable:
            return None
        chosen = self._steal_for(host)
        if chosen is None:
            return None
        victim, i = chosen
        return self._dequeue(victim, i), victim.spec.name

    def _steal_for(self, host: _HostState) -> tuple[_HostState, int] | None:
        """The victim and the index in its queue of what idle ``host`` would steal."""
        looked = 0
        # The hosts with stealable tasks, most backlog first (ties: in their order).
        with self._victims.walk() as victims:
            for _, order, _ in victims:
                victim = self._by_order[order]
                for i in range(len(victim.queue) - 1, self._own(victim) - 1, -1):
                    looked += 1
                    if looked > STEAL_LOOKAHEAD:
                        return None
                    name = victim.queue[i][2]
                    record = self.records[name]
                    if host.spec.name in record.avoid:
                        continue  # it failed here; its retry was placed elsewhere on purpose
                    if not (self._eligible(host, record.task) and self._fits(host, record.task)):
                        continue
                    # Steal only what no other host would clearly finish sooner: a slow
                    # host must not grab a long task that a fast one would end earlier.
                    mine = record.expected_s / host.spec.speed + self.transfer_s(
                        name, host.spec.name
                    )
                    if self._sooner_elsewhere(record, host, mine * STEAL_MARGIN):
                        continue
                    return victim, i
        return None

    # -- the indexes (index.py) --------------------------------------------------------

    def _touch(self, host: _HostState) -> None:
        """``host``'s state changed: re-index it before the next question, and let
        ``_fill`` look at it again."""
        self._changed[host.order] = host
        self._dirty.add(host.order)

    def _reindex(self) -> None:
        """New entries for the hosts that changed; their old ones become stale."""
        if not self._changed:
            return
        for order, host in self._changed.items():
            self._versions[order] += 1
            version = self._versions[order]
            stealable = host.alive and len(host.queue) > self._own(host)
            self._stealable += stealable - host.stealable
            host.stealable = stealable
            idle = host.alive and not host.queue and host.used < host.limit
            if idle and not host.idle:
                bisect.insort(self._idle, order)
            elif host.idle and not idle:
                del self._idle[bisect.bisect_left(self._idle, order)]
            host.idle = idle
            if not host.alive:
                continue
            group = self._group(host.spec)
            name = host.spec.name
            backlog = self._backlog_s(host)
            group.backlog.push((backlog, name, order, version))
            if host.queue:
                # The first term of _finish_s with nothing queued ahead: a lower bound.
                running = host.running_work / 2 / (host.spec.speed * max(1, host.limit))
                group.running.push((running, name, order, version))
                group.lowest.push((-host.queue[-1][0], order, version))
                if stealable:
                    self._victims.push((-backlog, order, version))
        self._changed.clear()

    def _own(self, host: _HostState) -> int:
        """How many tasks from the head of ``host``'s queue it can start itself now
        (its free room): those are not stolen, that would only move a task that starts
        anyway."""
        room = host.limit - host.used
        own = 0
        for _, _, queued in host.queue:
            room -= self.records[queued].task.weight
            if room < 0:
                break
            own += 1
        return own

    def _group(self, spec: HostSpec) -> _Group:
        key = (spec.labels, spec.slots, spec.speed)
        group = self._groups.get(key)
        if group is None:
            heaps = [LazyHeap(self._versions) for _ in range(3)]
            group = self._groups[key] = _Group(spec.labels, spec.slots, spec.speed, *heaps)
            self._groups_for_task.clear()
        return group

    def _eligible_groups(self, task: Task) -> list[_Group]:
        key = (task.labels, task.weight)
        groups = self._groups_for_task.get(key)
        if groups is None:
            groups = [
                g
                for g in self._groups.values()
                if task.labels <= g.labels and task.weight <= g.slots
            ]
            self._groups_for_task[key] = groups
        return groups

    def _holders(self, record: TaskRecord) -> tuple[set[str], float]:
        """The hosts holding outputs of ``record``'s needs, and ``transfer_s`` to any
        other host (the same sum, in the same order)."""
        holders: set[str] = set()
        total = 0.0
        for need in record.task.needs:
            size = self._outputs.get(need)
            if size is not None:
                total += self.policy.transfer_setup_s + size / self.policy.transfer_bytes_per_s
                holder = self.records[need].host
                if holder is not None:
                    holders.add(holder)
        return holders, total

    @staticmethod
    def _ahead_of_some(host: _HostState, priority: float) -> bool:
        """Would a task of ``priority`` go ahead of queued work on ``host``? Only then
        is its finish there less than ``_backlog_s`` + its own time."""
        return bool(host.queue) and -host.queue[-1][0] < priority

    def _soonest(self, record: TaskRecord, *, avoid: Iterable[str]) -> _HostState | None:
        """The live host that can run ``record`` and is expected to finish it first
        (``_finish_s``, ties by name), skipping ``avoid``.

        In each group, two walks: the hosts where the task would go ahead of queued work
        by their running work (a lower bound of its finish there), and the others by
        backlog (their finish is that backlog plus the task's own time), each while its
        bound can still match the best so far and, once there is a best, for at most
        SEARCH_BUDGET hosts. Hosts holding needs' outputs pay less transfer: each is
        looked at on its own.
        """
        self._reindex()
        avoid = set(avoid)
        priority = record.priority
        holders, transfer = self._holders(record)
        best: tuple[float, str] | None = None
        chosen: _HostState | None = None
        for name in holders:
            host = self.hosts.get(name)
            if host is not None and name not in avoid and self._eligible(host, record.task):
                key = (self._finish_s(host, record), name)
                if best is None or key < best:
                    best, chosen = key, host
        skip = holders | avoid
        for group in self._eligible_groups(record.task):
            own_s = record.expected_s / group.speed
            lowest = group.lowest.top()
            if lowest is not None and lowest[0] < priority:
                looked = 0
                with group.running.walk() as entries:
                    for bound, name, order, _ in entries:
                        if best is not None and (
                            (bound + own_s) + transfer > best[0] or looked >= SEARCH_BUDGET
                        ):
                            break
                        looked += 1
                        host = self._by_order[order]
                        if name in skip or not self._ahead_of_some(host, priority):
                            continue
                        key = (self._finish_s(host, record), name)
                        if best is None or key < best:
                            best, chosen = key, host
            looked = 0
            with group.backlog.walk() as entries:
                for backlog, name, order, _ in entries:
                    finish = (backlog + own_s) + transfer  # _finish_s where it queues last
                    if best is not None and (finish > best[0] or looked >= SEARCH_BUDGET):
                        break
                    looked += 1
                    host = self._by_order[order]
                    if name in skip or self._ahead_of_some(host, priority):
                        continue  # looked at on its own, or in the walk above
                    if best is None or (finish, name) < best:
                        best, chosen = (finish, name), host
        return chosen

    def _sooner_elsewhere(self, record: TaskRecord, exclude: _HostState, threshold: float) -> bool:
        """Is another live host that can run ``record`` expected to finish it before
        ``threshold``? The search of ``_soonest``, stopped at the first such host."""
        priority = record.priority
        holders, transfer = self._holders(record)
        for name in holders:
            host = self.hosts.get(name)
            if host is None or host is exclude or not self._eligible(host, record.task):
                continue
            if self._finish_s(host, record) < threshold:
                return True
        for group in self._eligible_groups(record.task):
            own_s = record.expected_s / group.speed
            looked = 0
            with group.backlog.walk() as entries:
                for backlog, name, order, _ in entries:
                    if (backlog + own_s) + transfer >= threshold or looked >= SEARCH_BUDGET:
                        break
                    looked += 1
                    host = self._by_order[order]
                    if host is exclude or name in holders or self._ahead_of_some(host, priority):
                        continue  # looked at on its own, or in the walk below
                    return True  # its finish is that bound
            lowest = group.lowest.top()
            if lowest is None or not lowest[0] < priority:
                continue
            looked = 0
            with group.running.walk() as entries:
                for bound, name, order, _ in entries:
                    if (bound + own_s) + transfer >= threshold or looked >= SEARCH_BUDGET:
                        break
                    looked += 1
                    host = self._by_order[order]
                    if host is exclude or name in holders:
                        continue
                    if (
                        self._ahead_of_some(host, priority)
                        and self._finish_s(host, record) < threshold
                    ):
                        return True
        return False


def _bottom_levels(graph: TaskGraph, expected_s: Mapping[str, float]) -> dict[str, float]:
    """Each task's expected duration plus the longest expected chain after it."""
    bottom: dict[str, float] = {}
    for name in reversed(graph.topological_order()):
        tail = max((bottom[d] for d in graph.dependents(name)), default=0.0)
        bottom[name] = expected_s.get(name, 1.0) + tail
    return bottom

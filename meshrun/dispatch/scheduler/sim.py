"""A discrete-event simulator for the scheduler: virtual time, no I/O.

It plays the executor's part — starts what the scheduler decides, finishes each task
``actual_s / speed`` later (plus the time to push its needs' outputs when they were
made on another host, at the policy's transfer rate), injects failures and host
losses — and records a trace that tests check invariants on and benchmarks measure
makespans with.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import field

from meshrun.config.tasks import TaskGraph
from meshrun.dispatch.scheduler.core import (
    Abandon,
    Action,
    Cancel,
    Event,
    HostJoined,
    HostLost,
    HostSpec,
    Policy,
    RunStarted,
    Scheduler,
    Start,
    TaskFailed,
    TaskRecord,
    TaskStopped,
    TaskSucceeded,
)
from meshrun.records import record


@record
class Interval:
    """One attempt of a task on a host, as it really ran."""

    task: str
    host: str
    start: float
    end: float
    outcome: str  # "succeeded" | "failed" | "lost" | "cancelled"
    units: int


@record(frozen=False, slots=False)
class SimResult:
    makespan: float
    records: dict[str, TaskRecord]
    intervals: list[Interval] = field(default_factory=list)
    decisions: int = 0


def lower_bound(
    graph: TaskGraph, actual_s: Mapping[str, float], hosts: Sequence[HostSpec]
) -> float:
    """No schedule beats max(longest chain on the fastest host, total work / capacity)."""
    fastest = max(h.speed for h in hosts)
    chain = graph.critical_path_s(actual_s) / fastest
    work = sum(actual_s[n] * t.weight for n, t in graph.tasks.items())
    capacity = sum(h.slots * h.speed for h in hosts)
    return max(chain, work / capacity)


def simulate(
    graph: TaskGraph,
    actual_s: Mapping[str, float],
    hosts: Sequence[HostSpec],
    *,
    expected_s: Mapping[str, float] | None = None,
    policy: Policy | None = None,
    failures: Mapping[str, int] | None = None,
    lose_hosts: Mapping[str, float] | None = None,
    join_at: Mapping[str, float] | None = None,
    output_bytes: Mapping[str, int] | None = None,
) -> SimResult:
    """Run ``graph`` to the end in virtual time.

    ``failures[task] = n``: the task's first n attempts fail (exit 1).
    ``lose_hosts[host] = t``: the host dies at time t; its running attempts are lost.
    ``join_at[host] = t``: the host joins at time t (as ``meshrun dispatch`` sees hosts
    arrive one by one while they connect) instead of being there from the start.
    ``output_bytes[task] = n``: the task leaves n bytes of outputs that a dependent on
    another host must have pushed to it first.
    """
    outputs = dict(output_bytes or {})
    failures = dict(failures or {})
    joining = dict(join_at or {})
    scheduler = Scheduler(
        graph,
        expected_s or actual_s,
        policy or Policy(),
        [h for h in hosts if h.name not in joining],
    )
    speeds = {h.name: h.speed for h in hosts}
    heap: list[tuple[float, int, Event | None, tuple[str, str, int] | None]] = []
    seq = 0
    running: dict[tuple[str, str, int], float] = {}  # (task, host, attempt) -> start
    result = SimResult(0.0, scheduler.records)
    attempts_seen: dict[str, int] = {}

    def push(at: float, event: Event | None, key: tuple[str, str, int] | None = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, event, key))

    def apply(actions: list[Action], now: float) -> None:
        result.decisions += len(actions)
        for d in actions:
            if isinstance(d, Start):
                key = (d.task, d.host, d.attempt)
                running[key] = now
                n = attempts_seen.get(d.task, 0) + 1
                attempts_seen[d.task] = n
                staging = scheduler.transfer_s(d.task, d.host)
                duration = actual_s[d.task] / speeds[d.host] + staging
                if failures.get(d.task, 0) > 0:
                    failures[d.task] -= 1
                    push(now + duration, TaskFailed(d.task, d.host, 1, "exit code 1"), key)
                else:
                    size = outputs.get(d.task)
                    done = TaskSucceeded(d.task, d.host, duration, int(size is not None), size or 0)
                    push(now + duration, done, key)
            elif isinstance(d, Cancel):
                for key in [k for k in running if k[0] == d.task and k[1] == d.host]:
                    start = running.pop(key)
                    units = graph.tasks[d.task].weight
                    result.intervals.append(
                        Interval(d.task, d.host, start, now, "cancelled", units)
                    )
                apply(scheduler.handle(TaskStopped(d.task, d.host, d.reason), now).actions, now)

    for host, at in (lose_hosts or {}).items():
        push(at, HostLost(host, "simulated loss"))
    for spec in hosts:
        if spec.name in joining:
            push(joining[spec.name], HostJoined(spec))
    now = 0.0
    apply(scheduler.handle(RunStarted(), now).actions, now)
    while heap:
        now, _, event, key = heapq.heappop(heap)
        if isinstance(event, HostLost):
            for k in [k for k in running if k[1] == event.host]:
                start = running.pop(k)
                result.intervals.append(
                    Interval(k[0], k[1], start, now, "lost", graph.tasks[k[0]].weight)
                )
            speeds_alive = {h: s for h, s in speeds.items() if h != event.host}
            speeds.clear()
            speeds.update(speeds_alive)
        elif isinstance(event, HostJoined) and event.host.name not in speeds:
            event = None  # lost before it joined: it never comes
        elif key is not None:
            if key not in running:
                event = None  # the attempt was lost, cancelled or moved meanwhile
            else:
                start = running.pop(key)
                outcome = "succeeded" if isinstance(event, TaskSucceeded) else "failed"
                result.intervals.append(
                    Interval(key[0], key[1], start, now, outcome, graph.tasks[key[0]].weight)
                )
        if event is not None:
            apply(scheduler.handle(event, now).actions, now)
        if not heap and not scheduler.finished:
            apply(scheduler.handle(Abandon("every host is gone"), now).actions, now)
    result.makespan = max((i.end for i in result.intervals), default=0.0)
    return result

"""The scheduler's host indexes: the same choices as looking at every host, and a cost
per event that does not grow with the number of hosts.

The reference functions below are the scheduler's rules written the obvious way (every
host, every queue); hypothesis drives the simulator over small random runs and checks
every placement, every "would another host finish it sooner?" and every steal the
indexed scheduler makes against them. The cost tests count, without timing anything,
how many hosts the scheduler looks at per event on 1,000 hosts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.config.tasks import SyncSpec, Task, TaskGraph
from meshrun.dispatch.scheduler import HostSpec, Policy, Scheduler, TaskStatus
from meshrun.dispatch.scheduler.core import STEAL_MARGIN, TaskRecord
from meshrun.dispatch.scheduler.sim import simulate


def graph(tasks: list[Task]) -> TaskGraph:
    return TaskGraph(tasks={t.name: t for t in tasks}, sync=SyncSpec(root=Path(".")), source=None)


# -- the rules, looking at every host --------------------------------------------------


def reference_place(s: Scheduler, record: TaskRecord, avoid: set[str]) -> str | None:
    """Where ``_place`` queues ``record``: soonest expected finish, ties by name."""
    hosts = [h for h in s.hosts.values() if s._eligible(h, record.task)]
    hosts = [h for h in hosts if h.spec.name not in avoid]
    best = min(hosts, key=lambda h: (s._finish_s(h, record), h.spec.name), default=None)
    return None if best is None else best.spec.name


def reference_sooner(s: Scheduler, record: TaskRecord, exclude: str, threshold: float) -> bool:
    """Would any other host that can run ``record`` finish it before ``threshold``?"""
    return any(
        s._finish_s(h, record) < threshold
        for h in s.hosts.values()
        if h.spec.name != exclude and s._eligible(h, record.task)
    )


def reference_steal(s: Scheduler, thief: str) -> tuple[str, str] | None:
    """(victim, task) an idle host steals: from the queue with the most backlog (ties in
    host order), the last task the victim cannot start itself that the thief may run
    and no other host would finish sooner."""
    host = s.hosts[thief]
    victims = sorted(
        (h for h in s.hosts.values() if h is not host and h.alive and h.queue),
        key=s._backlog_s,
        reverse=True,
    )
    for victim in victims:
        room, own = victim.limit - victim.used, 0
        for _, _, queued in victim.queue:
            room -= s.records[queued].task.weight
            if room < 0:
                break
            own += 1
        for i in range(len(victim.queue) - 1, own - 1, -1):
            name = victim.queue[i][2]
            record = s.records[name]
            if thief in record.avoid or not s._eligible(host, record.task):
                continue
            if not s._fits(host, record.task):
                continue
            mine = record.expected_s / host.spec.speed + s.transfer_s(name, thief)
            if reference_sooner(s, record, thief, mine * STEAL_MARGIN):
                continue
            return victim.spec.name, name
    return None


@contextmanager
def checked_against_reference() -> Iterator[Counter[str]]:
    """Every indexed choice the scheduler makes meanwhile is compared with the
    reference; yields how many of each were checked."""
    checked: Counter[str] = Counter()
    soonest, sooner, steal = Scheduler._soonest, Scheduler._sooner_elsewhere, Scheduler._steal_for

    def soonest_checked(self: Scheduler, record: TaskRecord, *, avoid: Any) -> Any:
        got = soonest(self, record, avoid=avoid)
        want = reference_place(self, record, set(avoid))
        assert (got and got.spec.name) == want, (record.task.name, got, want)
        checked["place"] += 1
        return got

    def sooner_checked(self: Scheduler, record: TaskRecord, exclude: Any, threshold: float) -> bool:
        got = sooner(self, record, exclude, threshold)
        assert got == reference_sooner(self, record, exclude.spec.name, threshold)
        checked["sooner"] += 1
        return got

    def steal_checked(self: Scheduler, host: Any) -> Any:
        want = reference_steal(self, host.spec.name)
        got = steal(self, host)
        assert (got and (got[0].spec.name, got[0].queue[got[1]][2])) == want
        checked["steal"] += 1
        return got

    with (
        mock.patch.object(Scheduler, "_soonest", soonest_checked),
        mock.patch.object(Scheduler, "_sooner_elsewhere", sooner_checked),
        mock.patch.object(Scheduler, "_steal_for", steal_checked),
    ):
        yield checked


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    """Small runs with many ties (whole-second durations, equal speeds), labels,
    weights, failures, lost and late hosts, and outputs that cost a transfer."""
    n = draw(st.integers(1, 30))
    names = [f"t{i}" for i in range(n)]
    tasks = []
    for i, name in enumerate(names):
        needs = draw(st.lists(st.sampled_from(names[:i]), max_size=3, unique=True)) if i else []
        tasks.append(
            Task(
                name=name,
                run="true",
                needs=tuple(needs),
                weight=draw(st.integers(1, 3)),
                labels=frozenset(draw(st.lists(st.sampled_from(["gpu", "arm"]), max_size=1))),
                retries=draw(st.integers(0, 2)),
            )
        )
    seconds = st.one_of(st.integers(1, 6).map(float), st.floats(0.1, 10))
    durations = {name: draw(seconds) for name in names}
    fleet = [
        HostSpec(
            f"h{i}",
            draw(st.integers(3, 5)),
            draw(st.sampled_from([0.5, 1.0, 1.0, 2.0])),
            frozenset(draw(st.lists(st.sampled_from(["gpu", "arm"]), unique=True))),
        )
        for i in range(draw(st.integers(1, 10)))
    ]
    hosts = [h.name for h in fleet]
    lost = draw(st.lists(st.sampled_from(hosts), unique=True, max_size=len(hosts) - 1))
    late = draw(st.lists(st.sampled_from(hosts), unique=True))
    return {
        "graph": graph(tasks),
        "actual_s": durations,
        "hosts": fleet,
        "failures": draw(st.dictionaries(st.sampled_from(names), st.integers(1, 3), max_size=4)),
        "lose_hosts": {h: draw(st.floats(0, 20)) for h in lost},
        "join_at": {h: draw(st.floats(0, 15)) for h in late},
        "output_bytes": draw(
            st.dictionaries(st.sampled_from(names), st.integers(0, 10**9), max_size=n)
        ),
        "policy": Policy(fail_fast=draw(st.booleans())),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_indexed_choices_equal_looking_at_every_host(run: dict[str, Any]) -> None:
    with checked_against_reference() as checked:
        simulate(**run)
    assert checked["place"] >= 1


def test_the_reference_check_sees_steals_and_refusals() -> None:
    # A slow host and a fast one: the slow one steals short tasks and refuses long ones.
    tasks = [Task(name=f"t{i}", run="true") for i in range(40)]
    durations = {t.name: float(1 + i % 7) for i, t in enumerate(tasks)}
    fleet = [HostSpec("fast", 2, 2.0), HostSpec("slow", 2, 0.5), HostSpec("mid", 1, 1.0)]
    with checked_against_reference() as checked:
        simulate(graph(tasks), durations, fleet)
    assert checked["steal"] > 0 and checked["sooner"] > 0


# -- cost per event on 1,000 hosts, counted --------------------------------------------

HOSTS = 1_000


def _shapes() -> dict[str, tuple[TaskGraph, dict[str, float]]]:
    rng = random.Random(4)
    out = {}
    independent = [Task(name=f"i{i}", run="true") for i in range(6_000)]
    out["independent"] = (
        graph(independent),
        {t.name: rng.lognormvariate(2, 1.2) for t in independent},
    )
    chains = [
        Task(name=f"c{i}", run="true", needs=(f"c{i - 1}",) if i % 5 else ()) for i in range(6_000)
    ]
    out["chains of 5"] = graph(chains), {t.name: rng.lognormvariate(2, 1) for t in chains}
    names = [f"d{i}" for i in range(6_000)]
    dag = [
        Task(name=n, run="true", needs=tuple(rng.sample(names[:i], k=2)) if i > 100 else ())
        for i, n in enumerate(names)
    ]
    out["random DAG"] = graph(dag), {n: rng.expovariate(1.0) for n in names}
    return out


def _counting(calls: Counter[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def counted(self: Scheduler, *args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return method(self, *args, **kwargs)

    return counted


def test_hosts_looked_at_per_event_stay_logarithmic_on_a_thousand_hosts() -> None:
    """Per event (amortised): how many hosts' finish times the scheduler works out
    (``_finish_s``), how many hosts ``_fill`` visits (``_next_for``) and how many
    backlogs it computes (``_backlog_s``: what sorting victims costs). Looking at every
    host would be >= 1,000 each; the bound is c * log2(hosts) + k."""
    bound = 4 * math.log2(HOSTS) + 16  # 56
    fleet = [HostSpec(f"h{i}", 2) for i in range(HOSTS)]
    for shape, (g, durations) in _shapes().items():
        calls: Counter[str] = Counter()
        patches = [
            mock.patch.object(Scheduler, name, _counting(calls, name, getattr(Scheduler, name)))
            for name in ("handle", "_finish_s", "_next_for", "_backlog_s")
        ]
        for patch in patches:
            patch.start()
        try:
            result = simulate(g, durations, fleet)
        finally:
            for patch in patches:
                patch.stop()
        assert all(r.status is TaskStatus.SUCCEEDED for r in result.records.values())
        events = calls["handle"]
        per_event = {
            name: calls[name] / events for name in ("_finish_s", "_next_for", "_backlog_s")
        }
        assert all(count < bound for count in per_event.values()), (shape, per_event, bound)
        # Every host that could be busy got work: as many hosts as tasks ever ran at once.
        edges = sorted(
            [(i.start, 1) for i in result.intervals] + [(i.end, -1) for i in result.intervals]
        )
        running = peak = 0
        for _, step in edges:
            running += step
            peak = max(peak, running)
        assert len({i.host for i in result.intervals}) >= min(HOSTS, peak), shape

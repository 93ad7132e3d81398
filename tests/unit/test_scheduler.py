"""The scheduler, through the simulator: scenarios as data, then hypothesis properties."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.config.tasks import SyncSpec, Task, TaskGraph
from meshrun.dispatch.scheduler import (
    HostJoined,
    HostLoad,
    HostLost,
    HostSpec,
    Policy,
    RunStarted,
    Scheduler,
    Start,
    TaskFailed,
    TaskStatus,
    TaskSucceeded,
)
from meshrun.dispatch.scheduler.sim import Interval, SimResult, lower_bound, simulate


def graph(*tasks: Task) -> TaskGraph:
    return TaskGraph(tasks={t.name: t for t in tasks}, sync=SyncSpec(root=Path(".")), source=None)


def task(
    name: str, *needs: str, weight: int = 1, labels: Sequence[str] = (), retries: int = 0
) -> Task:
    return Task(
        name=name,
        run="true",
        needs=tuple(needs),
        weight=weight,
        labels=frozenset(labels),
        retries=retries,
    )


def hosts(n: int, slots: int = 1, speed: float = 1.0) -> list[HostSpec]:
    return [HostSpec(f"h{i}", slots, speed) for i in range(1, n + 1)]


def statuses(result: SimResult) -> dict[str, str]:
    return {name: r.status.value for name, r in result.records.items()}


# -- scenarios ----------------------------------------------------------------------


def test_longest_tasks_first_balances_two_hosts() -> None:
    durations = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 2.0, "f": 1.0}
    g = graph(*(task(n) for n in durations))
    result = simulate(g, durations, hosts(2))
    assert result.makespan == 9.0  # 18 units of work on 2 hosts: optimal
    assert set(statuses(result).values()) == {"succeeded"}


def test_a_chain_runs_in_order() -> None:
    g = graph(task("build"), task("test", "build"), task("ship", "test"))
    result = simulate(g, {"build": 2, "test": 1, "ship": 1}, hosts(3))
    starts = {i.task: i.start for i in result.intervals}
    assert starts["build"] < starts["test"] < starts["ship"]
    assert result.makespan == 4


def test_a_faster_host_takes_more_work() -> None:
    g = graph(*(task(f"t{i}") for i in range(30)))
    fleet = [HostSpec("fast", 1, 2.0), HostSpec("slow", 1, 1.0)]
    result = simulate(g, {f"t{i}": 1.0 for i in range(30)}, fleet)
    done = defaultdict(int)
    for i in result.intervals:
        done[i.host] += 1
    assert done["fast"] == 20 and done["slow"] == 10
    assert result.makespan == 10


def test_keep_going_skips_only_the_dependents_of_a_failure() -> None:
    g = graph(task("lint"), task("build"), task("test", "build"), task("pkg", "test"))
    result = simulate(g, dict.fromkeys(g.tasks, 1.0), hosts(2), failures={"build": 1})
    assert statuses(result) == {
        "lint": "succeeded",
        "build": "failed",
        "test": "skipped",
        "pkg": "skipped",
    }


def test_fail_fast_cancels_running_and_queued_tasks() -> None:
    g = graph(task("quick"), task("slow1"), task("slow2"), task("later", "slow1"))
    result = simulate(
        g,
        {"quick": 1, "slow1": 10, "slow2": 10, "later": 1},
        hosts(3),
        policy=Policy(fail_fast=True),
        failures={"quick": 1},
    )
    assert statuses(result) == {
        "quick": "failed",
        "slow1": "cancelled",
        "slow2": "cancelled",
        "later": "cancelled",
    }
    assert result.makespan == 1


def test_max_fail_stops_new_starts_but_lets_running_tasks_finish() -> None:
    g = graph(task("a"), task("b"), task("c"), task("d"))
    result = simulate(
        g, {"a": 1, "b": 5, "c": 1, "d": 1}, hosts(2), policy=Policy(max_fail=0), failures={"a": 1}
    )
    s = statuses(result)
    assert s["a"] == "failed" and s["b"] == "succeeded"
    assert s["c"] == s["d"] == "cancelled"


def test_a_retry_goes_to_another_host() -> None:
    g = graph(task("flaky", retries=1))
    result = simulate(g, {"flaky": 1}, hosts(2), failures={"flaky": 1})
    attempts = [i for i in result.intervals if i.task == "flaky"]
    assert [a.outcome for a in attempts] == ["failed", "succeeded"]
    assert attempts[0].host != attempts[1].host
    assert result.records["flaky"].attempts == 2


def test_a_lost_host_is_not_a_failure_and_its_tasks_complete_elsewhere() -> None:
    g = graph(*(task(f"t{i}") for i in range(6)))
    result = simulate(g, {f"t{i}": 4.0 for i in range(6)}, hosts(3), lose_hosts={"h1": 1.0})
    assert set(statuses(result).values()) == {"succeeded"}
    assert all(r.attempts == 1 for r in result.records.values())
    assert any(i.outcome == "lost" for i in result.intervals)
    assert all(i.host != "h1" for i in result.intervals if i.outcome == "succeeded")


def test_a_task_no_host_can_run_is_cancelled_when_abandoned() -> None:
    g = graph(task("gpu", labels=["gpu"]), task("cpu"))
    result = simulate(g, {"gpu": 1, "cpu": 1}, hosts(1))
    assert statuses(result) == {"gpu": "cancelled", "cpu": "succeeded"}
    assert "no host could run it" in (result.records["gpu"].error or "")


def test_a_host_that_joins_takes_stalled_work() -> None:
    g = graph(task("gpu", labels=["gpu"]))
    s = Scheduler(g, {"gpu": 1.0}, hosts=hosts(1))
    assert s.handle(RunStarted(), 0).actions == [] and s.stalled == ["gpu"]
    decisions = s.handle(HostJoined(HostSpec("g1", 1, 1.0, frozenset({"gpu"}))), 1).actions
    assert decisions == [Start("gpu", "g1", 1)]


def test_distress_halves_the_limit_and_successes_restore_it() -> None:
    g = graph(*(task(f"t{i}") for i in range(20)))
    s = Scheduler(g, dict.fromkeys(g.tasks, 1.0), hosts=[HostSpec("h", 8)])
    first = s.handle(RunStarted(), 0).actions
    assert len(first) == 8 and s.limit("h") == 8
    s.handle(TaskFailed(first[0].task, "h", None, "timeout", infrastructure=True), 1)
    assert s.limit("h") == 4
    s.handle(HostLoad("h", load1=9.0, cpus=2), 2)  # within the cool-down: no second halving
    assert s.limit("h") == 4
    s.handle(HostLoad("h", load1=9.0, cpus=2), 10)
    assert s.limit("h") == 2
    running = list(s.running_on("h"))
    for i, name in enumerate(running):
        s.handle(TaskSucceeded(name, "h", 1.0), 11 + i)
    assert s.limit("h") == min(8, 2 + len(running))


def test_a_heavy_long_task_starts_first_and_alone() -> None:
    g = graph(*(task(f"s{i}") for i in range(8)), task("big", weight=4))
    durations = {"big": 3.0, **{f"s{i}": 1.0 for i in range(8)}}
    result = simulate(g, durations, [HostSpec("h", 4)])
    big = next(i for i in result.intervals if i.task == "big")
    assert big.start == 0.0
    assert all(i.start >= 3.0 for i in result.intervals if i.task != "big")


def test_a_heavy_task_at_the_head_is_not_starved_by_later_small_ones() -> None:
    g = graph(task("first"), task("big", weight=4), *(task(f"s{i}") for i in range(8)))
    durations = {"first": 5.0, "big": 4.0, **{f"s{i}": 1.0 for i in range(8)}}
    result = simulate(g, durations, [HostSpec("h", 4)])
    big = next(i for i in result.intervals if i.task == "big")
    # "first" runs 0..5; big keeps its place at the head and starts at 5; the small
    # tasks backfill the three free slots only because they end before 5.
    assert big.start == 5.0
    assert all(i.end <= 5.0 for i in result.intervals if i.task.startswith("s"))
    assert result.makespan == 9.0


def test_schedule_quality_with_known_heavy_tailed_durations() -> None:
    rng = random.Random(7)
    durations = {f"t{i}": rng.lognormvariate(0, 1.2) for i in range(400)}
    g = graph(*(task(n) for n in durations))
    fleet = hosts(8, slots=4)
    result = simulate(g, durations, fleet)
    assert result.makespan / lower_bound(g, durations, fleet) < 1.10


def test_ten_thousand_tasks_over_a_hundred_hosts() -> None:
    rng = random.Random(1)
    names = [f"t{i}" for i in range(10_000)]
    tasks = [
        task(n, *(rng.sample(names[:i], k=min(i, 2)) if i > 100 else ()))
        for i, n in enumerate(names)
    ]
    g = graph(*tasks)
    durations = {n: rng.expovariate(1.0) for n in names}
    result = simulate(g, durations, hosts(100, slots=2))
    assert set(statuses(result).values()) == {"succeeded"}


# -- properties ----------------------------------------------------------------------


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[
    TaskGraph,
    dict[str, float],
    list[HostSpec],
    dict[str, int],
    dict[str, float],
    Policy,
    dict[str, int],
    dict[str, float],
]:
    n = draw(st.integers(1, 25))
    names = [f"t{i}" for i in range(n)]
    tasks = []
    for i, name in enumerate(names):
        needs = draw(st.lists(st.sampled_from(names[:i]), max_size=3, unique=True)) if i else []
        tasks.append(
            task(name, *needs, weight=draw(st.integers(1, 3)), retries=draw(st.integers(0, 2)))
        )
    durations = {name: draw(st.floats(0.1, 10)) for name in names}
    fleet = [
        HostSpec(f"h{i}", draw(st.integers(3, 5)), draw(st.sampled_from([0.5, 1.0, 2.0])))
        for i in range(draw(st.integers(1, 5)))
    ]
    failures = draw(st.dictionaries(st.sampled_from(names), st.integers(1, 3), max_size=4))
    lost_names = draw(
        st.lists(st.sampled_from([h.name for h in fleet]), unique=True, max_size=len(fleet) - 1)
    )
    lose = {h: draw(st.floats(0, 20)) for h in lost_names}
    policy = Policy(fail_fast=draw(st.booleans()))
    outputs = draw(st.dictionaries(st.sampled_from(names), st.integers(0, 10**9), max_size=n))
    # Some hosts join later (a discovered agent): queued work is placed again and
    # running tasks may move to them.
    late = draw(st.lists(st.sampled_from([h.name for h in fleet]), unique=True))
    join = {h: draw(st.floats(0, 15)) for h in late}
    return graph(*tasks), durations, fleet, failures, lose, policy, outputs, join


def _check_capacity(intervals: list[Interval], fleet: list[HostSpec]) -> None:
    slots = {h.name: h.slots for h in fleet}
    for host, limit in slots.items():
        points = sorted({i.start for i in intervals if i.host == host})
        for t in points:
            used = sum(i.units for i in intervals if i.host == host and i.start <= t < i.end)
            assert used <= limit, f"{host} used {used} units at t={t}, limit {limit}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_for_any_graph_fleet_failures_and_losses(scenario) -> None:  # type: ignore[no-untyped-def]
    g, durations, fleet, failures, lose, policy, outputs, join = scenario
    result = simulate(
        g,
        durations,
        fleet,
        policy=policy,
        failures=failures,
        lose_hosts=lose,
        output_bytes=outputs,
        join_at=join,
    )
    records = result.records
    # every task ends in exactly one final state
    assert all(r.status.final for r in records.values())
    # a task succeeds at most once, and the record agrees with what ran
    wins = defaultdict(list)
    for i in result.intervals:
        if i.outcome == "succeeded":
            wins[i.task].append(i)
    for name, r in records.items():
        assert len(wins[name]) == (1 if r.status is TaskStatus.SUCCEEDED else 0), name
    # needs finish before their dependents start
    for i in result.intervals:
        for need in g.tasks[i.task].needs:
            assert wins[need] and wins[need][0].end <= i.start, (i, need)
    # no host over its slots; nothing runs on a host after it was lost
    _check_capacity(result.intervals, fleet)
    for host, at in lose.items():
        assert all(i.start <= at or i.host != host for i in result.intervals)
    for host, at in join.items():  # nothing runs on a host before it joined
        assert all(i.start >= at or i.host != host for i in result.intervals)
    # failures are bounded by retries; without failures and fail-fast, everything succeeds
    if not failures:
        assert all(r.status is TaskStatus.SUCCEEDED for r in records.values())
    for r in records.values():
        assert r.attempts <= r.task.retries + 1
        if r.status is TaskStatus.SKIPPED:
            assert any(records[n].status is not TaskStatus.SUCCEEDED for n in r.task.needs)


def test_abandoning_a_task_skips_its_dependents_so_the_run_ends() -> None:
    g = graph(task("gpu-build", labels=["gpu"]), task("gpu-test", "gpu-build"), task("cpu"))
    result = simulate(g, {"gpu-build": 1, "gpu-test": 1, "cpu": 1}, hosts(1))
    assert statuses(result) == {"gpu-build": "cancelled", "gpu-test": "skipped", "cpu": "succeeded"}


def test_a_host_lost_while_the_run_stops_cancels_its_tasks_instead_of_requeueing() -> None:
    g = graph(task("bad"), task("slow"), task("other"))
    s = Scheduler(g, {"bad": 1.0, "slow": 5.0, "other": 5.0}, Policy(max_fail=0), hosts=hosts(3))
    started = {d.task: d.host for d in s.handle(RunStarted(), 0).actions if isinstance(d, Start)}
    s.handle(TaskFailed("bad", started["bad"], 1, "exit code 1"), 1)
    s.handle(HostLost(started["slow"]), 2)
    assert s.records["slow"].status is TaskStatus.CANCELLED
    s.handle(TaskSucceeded("other", started["other"], 5.0), 5)
    assert s.finished


def test_hosts_joining_one_by_one_still_share_the_queue() -> None:
    rng = random.Random(3)
    durations = {f"t{i}": rng.lognormvariate(0, 1.2) for i in range(400)}
    g = graph(*(task(n) for n in durations))
    fleet = hosts(8, slots=4)
    joins = {h.name: 0.001 * i for i, h in enumerate(fleet)}  # as hosts finish connecting
    result = simulate(g, durations, fleet, join_at=joins)
    # Without re-balancing on join, the first host kept every long task (ratio ~1.5).
    assert result.makespan / lower_bound(g, durations, fleet) < 1.10


def test_a_slow_host_does_not_steal_a_long_task_a_fast_host_finishes_sooner() -> None:
    g = graph(task("long"), task("short"))
    fleet = [HostSpec("fast", 1, 4.0), HostSpec("slow", 1, 0.25)]
    result = simulate(g, {"long": 8.0, "short": 0.5}, fleet)
    ran = {i.task: i.host for i in result.intervals}
    assert ran["long"] == "fast"
    assert result.makespan <= 2.5  # long on fast: 2 s (short runs beside it on slow)


def test_mixed_host_speeds_stay_near_the_bound_when_durations_are_known() -> None:
    rng = random.Random(5)
    durations = {f"t{i}": rng.lognormvariate(0, 1.2) for i in range(400)}
    g = graph(*(task(n) for n in durations))
    speeds = [1.0, 1.0, 2.0, 0.5]
    fleet = [HostSpec(f"h{i}", 4, speeds[i % 4]) for i in range(8)]
    result = simulate(g, durations, fleet)
    assert result.makespan / lower_bound(g, durations, fleet) < 1.25


# -- transfer cost: moving a need's outputs to another host ----------------------------


def _hosts_of(result: SimResult) -> dict[str, str]:
    return {i.task: i.host for i in result.intervals if i.outcome == "succeeded"}


def test_a_chain_with_big_outputs_stays_on_its_host_when_that_is_not_slower() -> None:
    # ``build`` must run on h1 (label); h1 has a slot left beside ``long``, h2 is idle.
    # Without a transfer cost ``test`` goes to the idle h2; with 2 GB of outputs to
    # move (~40 s) it stays on h1, where it starts just as soon.
    g = graph(task("long"), task("build", labels=["x"]), task("test", "build"))
    durations = {"long": 10.0, "build": 1.0, "test": 2.0}
    fleet = [HostSpec("h1", 2, 1.0, frozenset({"x"})), HostSpec("h2", 1, 1.0)]
    cheap = _hosts_of(simulate(g, durations, fleet, output_bytes={"build": 1}))
    costly = simulate(g, durations, fleet, output_bytes={"build": 2 * 10**9})
    assert (cheap["build"], cheap["test"]) == ("h1", "h2")
    assert _hosts_of(costly)["test"] == "h1"
    assert costly.makespan == 10.0


def test_a_fan_out_spreads_when_moving_the_outputs_is_cheap() -> None:
    # One build, eight 10 s tests, two hosts: 1 MB moves in ~0.2 s, far less than
    # waiting for the build's host, so the tests spread over both hosts.
    g = graph(task("build"), *(task(f"test{i}", "build") for i in range(8)))
    durations = {"build": 1.0, **{f"test{i}": 10.0 for i in range(8)}}
    result = simulate(g, durations, hosts(2), output_bytes={"build": 10**6})
    where = _hosts_of(result)
    tests_per_host = {
        h: sum(1 for t, w in where.items() if t != "build" and w == h) for h in where.values()
    }
    assert sorted(tests_per_host.values()) == [4, 4]
    assert result.makespan < 1.0 + 4 * 10.0 + 1.0  # the 0.2 s push paid once per test at most


def test_a_fan_out_stays_home_when_moving_the_outputs_costs_more_than_waiting() -> None:
    # Two quick tests after a build with 20 GB of outputs (~400 s to move): running
    # both where the build ran (2 s) beats pushing the outputs to the idle host.
    g = graph(task("build"), task("t1", "build"), task("t2", "build"))
    durations = {"build": 1.0, "t1": 1.0, "t2": 1.0}
    result = simulate(g, durations, hosts(2), output_bytes={"build": 20 * 10**9})
    where = _hosts_of(result)
    assert where["t1"] == where["t2"] == where["build"]
    assert result.makespan == 3.0


def test_transfer_cost_counts_only_needs_that_left_outputs_elsewhere() -> None:
    g = graph(task("a"), task("b"), task("c", "a", "b"))
    scheduler = Scheduler(g, {"a": 1.0, "b": 1.0, "c": 1.0}, Policy(), hosts(2))
    decisions = scheduler.handle(RunStarted(), 0.0).actions
    placed = {d.task: d.host for d in decisions if isinstance(d, Start)}
    scheduler.handle(TaskSucceeded("a", placed["a"], 1.0, output_files=3, output_bytes=10**8), 1.0)
    scheduler.handle(TaskSucceeded("b", placed["b"], 1.0), 1.0)  # no outputs
    policy = scheduler.policy
    moved = policy.transfer_setup_s + 10**8 / policy.transfer_bytes_per_s
    assert scheduler.transfer_s("c", placed["a"]) == 0.0
    assert scheduler.transfer_s("c", placed["b"]) == moved


def test_tasks_ready_at_the_start_are_placed_longest_first_whatever_the_file_order() -> None:
    # tasks.toml lists the short ones first. Placed in that order, the long task
    # would join a short one's queue (h1: a then c); placed longest first, it gets a
    # host of its own and both short ones share the other: makespan 2, not 3.
    g = graph(task("a"), task("b"), task("c"))
    scheduler = Scheduler(g, {"a": 1.0, "b": 1.0, "c": 2.0}, Policy(), hosts(2))
    started = {
        d.task: d.host for d in scheduler.handle(RunStarted(), 0.0).actions if isinstance(d, Start)
    }
    assert "c" in started
    queued = {name: h for h, state in scheduler.hosts.items() for _, _, name in state.queue}
    assert len(queued) == 1 and next(iter(queued.values())) != started["c"], (started, queued)


def test_a_fast_host_that_joins_mid_run_takes_over_a_long_task_a_slow_host_just_started() -> None:
    g = graph(task("long"))
    durations = {"long": 40.0}
    fleet = [HostSpec("slow", 1, 1.0), HostSpec("fast", 1, 4.0)]
    result = simulate(g, durations, fleet, join_at={"fast": 2.0})
    runs = [(i.task, i.host, i.outcome) for i in result.intervals if i.task == "long"]
    assert runs == [("long", "slow", "cancelled"), ("long", "fast", "succeeded")]
    assert result.makespan == 12.0  # 2 s on the slow host, then 40 / 4 on the fast one
    assert result.records["long"].attempts == 1  # a move is not an attempt


def test_a_running_task_is_not_moved_for_a_small_gain() -> None:
    g = graph(task("long"))
    fleet = [HostSpec("slow", 1, 1.0), HostSpec("fast", 1, 1.2)]
    result = simulate(g, {"long": 10.0}, fleet, join_at={"fast": 1.0})
    assert [(i.host, i.outcome) for i in result.intervals] == [("slow", "succeeded")]

"""Schedule quality: makespan / lower bound for meshrun's scheduler, round-robin and FIFO.

The lower bound of a graph on a set of hosts is max(longest dependency chain on the
fastest host, total work / total capacity) (``meshrun.dispatch.scheduler.sim.lower_bound``): no
schedule can finish sooner, so makespan / lower bound >= 1 and 1.10 means "within 10%".

Part 1, in the simulator (pure, virtual time, no I/O), several seeds per workload:

- meshrun: ``meshrun.dispatch.scheduler.sim.simulate`` (the real Scheduler), with durations
  *known* (expected = actual: what the history gives once a task has run) and
  *unknown* (expected = the median, the same for every task: a first run; the history
  then gives every unseen task the median of the known ones);
- round-robin: one static bin per host, task i (file order) to host i mod N; each host
  runs its bin in order on its slots; a task waits for its needs wherever they run
  (a host starts the first task of its bin whose needs are done);
- FIFO: one global queue in file order; any free slot takes the first ready task —
  what GNU parallel does (it has no dependencies; here it gets them for free).

Round-robin and FIFO are small simulators below, in the same event-loop style as
sim.py; they know nothing of durations, so known/unknown does not change them.

meshrun is simulated twice: with every host handed to the Scheduler up front (what
``sim.simulate`` does) and with the hosts joining after ``RunStarted``, one
``HostJoined`` each, which is how ``meshrun dispatch`` drives it (the executor builds
the Scheduler with no host; each host joins once connected and its agent is up). Two
more rows help read the numbers: a counterfactual meshrun that re-places every queued
task (highest priority first) whenever a host joins (``Policy.replace_per_host``), and a
speed-aware list scheduler that knows every duration (earliest finish time), as a
reference for what is reachable under the same lower bound.

Workloads: (a) 400 independent tasks, lognormal (sigma 1.2) and Pareto (alpha 1.5)
durations; (b) a build graph, 20 builds -> 200 test shards (each needs 1-2 builds) -> 5
packages; both on 8 hosts x 4 slots; (c) the lognormal set and the build graph on 8
hosts x 4 slots of mixed speeds (weights 1, 1, 2, 0.5, twice).

Part 2, on a loopback fleet (real sshd, real processes): 60 ``sleep`` tasks with
heavy-tailed durations summing to ~40 s, over 4 hosts x 2 slots. Each task writes
its start and end time, so the task phase (first start -> last end) and the lower
bound of the work as it really ran (measured durations) come from the tasks
themselves. Rows: meshrun dispatch with a fresh --state-dir every run (durations
unknown), meshrun dispatch with one state dir that a first, untimed run taught the
durations (known), the re-place counterfactual (``Policy.replace_per_host`` set in the
`meshrun dispatch` process), round-robin and FIFO as one Fabric script (same
connections and threads, only the policy differs), and GNU parallel (FIFO, -j per host,
ControlMaster). The simulator's prediction for the same instance is shown beside them.

    bench/schedule                      # both parts, ~1.5 minutes
    bench/schedule --seeds 50 --no-real # the simulator only
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from competitors import gnu_parallel
from harness import (
    BENCH,
    Tool,
    fleet_spec,
    fmt,
    hosts_toml_with_slots,
    med,
    meshrun_executable,
    new_doc,
    rotated,
    round_tag,
    run_benchmark,
    running_fleet,
    tail,
    time_once,
    tool_env,
)

from meshrun.config.tasks import SyncSpec, Task, TaskGraph
from meshrun.dispatch.scheduler import HostSpec
from meshrun.dispatch.scheduler.sim import lower_bound, simulate

if TYPE_CHECKING:
    from meshrun.testing.fleet import Fleet

#: The issue's target: within this factor of the lower bound once durations are known.
TARGET = 1.10
RUN_TIMEOUT_S = 300.0
#: (key, label); "joined": hosts join after RunStarted, one HostJoined event each, as the
#: dispatch executor drives the scheduler; otherwise every host is known up front, as in
#: meshrun.dispatch.scheduler.sim.simulate.
POLICIES = [
    ("known", "meshrun, known, hosts up front"),
    ("known-joined", "meshrun, known, hosts join"),
    ("known-replace", "meshrun, known, join + re-place*"),
    ("unknown", "meshrun, unknown, hosts up front"),
    ("unknown-joined", "meshrun, unknown, hosts join"),
    ("rr", "round-robin"),
    ("fifo", "FIFO"),
    ("eft", "EFT list scheduler (reference)"),
]
#: Seconds between two hosts' HostJoined events in the "joined" runs (on the loopback
#: fleet the 8 agents say hello within ~100 ms of each other).
JOIN_GAP_S = 0.01


# -- workloads --------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    graph: TaskGraph
    actual: dict[str, float]
    hosts: list[HostSpec]


def make_graph(specs: Sequence[tuple[str, Sequence[str]]]) -> TaskGraph:
    tasks = {name: Task(name=name, run="true", needs=tuple(needs)) for name, needs in specs}
    return TaskGraph(tasks=tasks, sync=SyncSpec(root=Path(".")), source=None)


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def pareto(rng: random.Random, minimum: float, alpha: float) -> float:
    return minimum * rng.paretovariate(alpha)


def independent(
    rng: random.Random, n: int, draw: Callable[[random.Random], float]
) -> tuple[TaskGraph, dict[str, float]]:
    names = [f"t{i}" for i in range(n)]
    return make_graph([(n, ()) for n in names]), {n: draw(rng) for n in names}


def build_graph(
    rng: random.Random, builds: int = 20, shards: int = 200, packages: int = 5
) -> tuple[TaskGraph, dict[str, float]]:
    """builds -> test shards (each needs 1-2 builds) -> packages (each needs 1/5 of them).

    File order is builds, shards, packages, as a person would write it.
    """
    specs: list[tuple[str, Sequence[str]]] = []
    actual: dict[str, float] = {}
    build_names = [f"build{i}" for i in range(builds)]
    for name in build_names:
        specs.append((name, ()))
        actual[name] = lognormal(rng, 30.0, 0.5)
    shard_names = [f"test{i}" for i in range(shards)]
    for name in shard_names:
        specs.append((name, tuple(rng.sample(build_names, rng.choice((1, 2))))))
        actual[name] = lognormal(rng, 8.0, 1.0)
    for p in range(packages):
        name = f"package{p}"
        specs.append((name, tuple(shard_names[p::packages])))
        actual[name] = lognormal(rng, 20.0, 0.3)
    return make_graph(specs), actual


def uniform_hosts(n: int, slots: int) -> list[HostSpec]:
    return [HostSpec(f"h{i + 1}", slots) for i in range(n)]


def mixed_hosts(n: int, slots: int, speeds: Sequence[float] = (1, 1, 2, 0.5)) -> list[HostSpec]:
    return [HostSpec(f"h{i + 1}", slots, float(speeds[i % len(speeds)])) for i in range(n)]


def workloads(seed: int) -> list[Workload]:
    """Every simulated workload for one seed (each draws from its own generator)."""

    def rng(k: int) -> random.Random:
        return random.Random(seed * 1000 + k)

    uniform, mixed = uniform_hosts(8, 4), mixed_hosts(8, 4)
    out = []
    g, a = independent(rng(1), 400, lambda r: lognormal(r, 10.0, 1.2))
    out.append(Workload("400 independent, lognormal s=1.2", g, a, uniform))
    g, a = independent(rng(2), 400, lambda r: pareto(r, 5.0, 1.5))
    out.append(Workload("400 independent, Pareto a=1.5", g, a, uniform))
    g, a = build_graph(rng(3))
    out.append(Workload("build graph 20 -> 200 -> 5", g, a, uniform))
    g, a = independent(rng(4), 400, lambda r: lognormal(r, 10.0, 1.2))
    out.append(Workload("mixed speeds: 400 indep. lognormal", g, a, mixed))
    g, a = build_graph(rng(5))
    out.append(Workload("mixed speeds: build graph", g, a, mixed))
    return out


# -- the baselines, as small event-loop simulators ---------------------------------------


def simulate_static(
    graph: TaskGraph, actual: Mapping[str, float], hosts: Sequence[HostSpec], policy: str
) -> float:
    """Makespan of round-robin ("rr": static bins) or FIFO ("fifo": one global queue).

    A host (slot) never waits for a task that is not ready: it starts the first ready
    task of its queue, so neither baseline loses time to head-of-line blocking.
    """
    import heapq

    names = list(graph.tasks)
    waiting = {n: len(graph.tasks[n].needs) for n in names}
    if policy == "rr":
        queues: dict[str, list[str]] = {h.name: [] for h in hosts}
        for i, name in enumerate(names):
            queues[hosts[i % len(hosts)].name].append(name)

        def queue_of(host: str) -> list[str]:
            return queues[host]
    elif policy == "fifo":
        shared = list(names)

        def queue_of(host: str) -> list[str]:
            return shared
    else:
        raise ValueError(policy)
    free = {h.name: h.slots for h in hosts}
    speed = {h.name: h.speed for h in hosts}
    heap: list[tuple[float, int, str, str]] = []  # (end, seq, task, host)
    seq = 0
    now = 0.0
    makespan = 0.0
    done = 0

    def fill() -> None:
        nonlocal seq
        for h in hosts:
            q = queue_of(h.name)
            while free[h.name] > 0:
                pick = next((i for i, n in enumerate(q) if waiting[n] == 0), None)
                if pick is None:
                    break
                name = q.pop(pick)
                free[h.name] -= 1
                seq += 1
                heapq.heappush(heap, (now + actual[name] / speed[h.name], seq, name, h.name))

    fill()
    while heap:
        now, _, name, host = heapq.heappop(heap)
        makespan = now
        done += 1
        free[host] += 1
        for dependent in graph.dependents(name):
            waiting[dependent] -= 1
        fill()
    if done != len(names):
        raise RuntimeError(f"{policy}: only {done} of {len(names)} tasks ran")
    return makespan


def simulate_eft(graph: TaskGraph, actual: Mapping[str, float], hosts: Sequence[HostSpec]) -> float:
    """Makespan of a speed-aware list scheduler that knows every duration (a reference).

    Ready tasks go in order of bottom level (own duration + longest chain after it);
    each goes to the host where it would *finish* first (earliest finish time, counting
    when that host's next slot frees up). If that host has no free slot now, the task
    waits for it and holds the slot (lower-priority tasks cannot take it), instead of
    starting on a slower host right away. Not meshrun: it shows how much of the gap
    to the lower bound on mixed speeds a scheduler can close, and how much is the
    bound's own slack (it assumes the whole chain runs on the fastest host).
    """
    import heapq

    bottom: dict[str, float] = {}
    for name in reversed(graph.topological_order()):
        tail = max((bottom[d] for d in graph.dependents(name)), default=0.0)
        bottom[name] = actual[name] + tail
    waiting = {n: len(t.needs) for n, t in graph.tasks.items()}
    ready = [n for n, k in waiting.items() if k == 0]
    busy = {h.name: [0.0] * h.slots for h in hosts}  # each slot's busy-until
    speed = {h.name: h.speed for h in hosts}
    heap: list[tuple[float, int, str]] = []
    seq = 0
    now = 0.0
    done = 0
    lookahead = 2 * sum(h.slots for h in hosts)

    def fill() -> None:
        nonlocal seq
        ready.sort(key=lambda n: -bottom[n])
        plan = {h: sorted(times) for h, times in busy.items()}
        started = []
        for name in ready[:lookahead]:
            if all(plan[h][0] > now for h in plan):
                break
            best = min(
                plan, key=lambda h: (max(now, plan[h][0]) + actual[name] / speed[h], -speed[h])
            )
            end = max(now, plan[best][0]) + actual[name] / speed[best]
            if plan[best][0] <= now:
                busy[best].remove(min(busy[best]))
                busy[best].append(end)
                seq += 1
                heapq.heappush(heap, (end, seq, name))
                started.append(name)
            heapq.heapreplace(plan[best], end)  # taken now, or held for this task
        for name in started:
            ready.remove(name)

    fill()
    while heap:
        now, _, name = heapq.heappop(heap)
        done += 1
        for dependent in graph.dependents(name):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
        fill()
    if done != len(graph.tasks):
        raise RuntimeError(f"eft: only {done} of {len(graph.tasks)} tasks ran")
    return now


def simulate_joined(
    graph: TaskGraph,
    actual: Mapping[str, float],
    hosts: Sequence[HostSpec],
    expected: Mapping[str, float],
    join_gap_s: float = JOIN_GAP_S,
    *,
    replace_on_join: bool = False,
) -> float:
    """meshrun's Scheduler driven the way the dispatch executor drives it.

    ``Dispatcher`` builds the Scheduler without hosts and sends ``RunStarted`` at once;
    every host joins later with a ``HostJoined`` event (after its connect and agent
    start), here host i at ``i * join_gap_s``. ``sim.simulate`` instead hands every host
    to the constructor, so all of them are there when ``RunStarted`` places the tasks.
    ``replace_on_join``: the counterfactual ``Policy.replace_per_host`` (every queued
    task placed again, highest priority first, each time a host is added).
    """
    import heapq

    from meshrun.dispatch.scheduler import (
        Cancel,
        HostJoined,
        Policy,
        RunStarted,
        Scheduler,
        Start,
        TaskStopped,
        TaskSucceeded,
    )

    scheduler = Scheduler(graph, expected, Policy(replace_per_host=replace_on_join))
    speed = {h.name: h.speed for h in hosts}
    heap: list[tuple[float, int, Any]] = []
    seq = 0
    stopped: set[tuple[str, str]] = set()  # (task, host) runs stopped (moved) early

    def apply(decisions: Sequence[Any], now: float) -> None:
        nonlocal seq
        for d in decisions:
            if isinstance(d, Start):
                stopped.discard((d.task, d.host))
                took = actual[d.task] / speed[d.host]
                seq += 1
                heapq.heappush(heap, (now + took, seq, TaskSucceeded(d.task, d.host, took)))
            elif isinstance(d, Cancel):  # a running task moved to a host that joined
                stopped.add((d.task, d.host))
                apply(scheduler.handle(TaskStopped(d.task, d.host, d.reason), now).actions, now)

    apply(scheduler.handle(RunStarted(), 0.0).actions, 0.0)
    for i, h in enumerate(hosts):
        seq += 1
        heapq.heappush(heap, (i * join_gap_s, seq, HostJoined(h)))
    makespan = 0.0
    while heap:
        now, _, event = heapq.heappop(heap)
        if isinstance(event, TaskSucceeded):
            if (event.task, event.host) in stopped:
                continue
            makespan = now
        apply(scheduler.handle(event, now).actions, now)
    if not scheduler.finished:
        raise RuntimeError("joined: the scheduler did not finish")
    return makespan


#: The same counterfactual for a real `meshrun dispatch` process: every Scheduler it
#: builds gets ``Policy.replace_per_host`` before meshrun.cli.app.main runs (argv: the
#: dispatch arguments).
REPLACE_ON_JOIN = """\
import dataclasses
import sys

from meshrun.dispatch.scheduler import core

real = core.Scheduler.__init__


def init(self, graph, expected_s, policy=core.Policy(), hosts=()):
    real(self, graph, expected_s, dataclasses.replace(policy, replace_per_host=True), hosts)


core.Scheduler.__init__ = init
import meshrun.cli.app

sys.argv = ["meshrun", *sys.argv[1:]]
sys.exit(meshrun.cli.app.main())
"""


def makespans(w: Workload) -> dict[str, float]:
    """Every policy's makespan on ``w`` (keys of POLICIES)."""
    median = statistics.median(w.actual.values())
    out = {}
    for key, expected in [("known", w.actual), ("unknown", dict.fromkeys(w.actual, median))]:
        result = simulate(w.graph, w.actual, w.hosts, expected_s=expected)
        bad = [n for n, r in result.records.items() if r.status.value != "succeeded"]
        if bad:
            raise RuntimeError(f"{key}: {len(bad)} tasks did not succeed: {bad[:3]}")
        out[key] = result.makespan
        out[f"{key}-joined"] = simulate_joined(w.graph, w.actual, w.hosts, expected)
    out["known-replace"] = simulate_joined(
        w.graph, w.actual, w.hosts, w.actual, replace_on_join=True
    )
    out["rr"] = simulate_static(w.graph, w.actual, w.hosts, "rr")
    out["fifo"] = simulate_static(w.graph, w.actual, w.hosts, "fifo")
    out["eft"] = simulate_eft(w.graph, w.actual, w.hosts)
    return out


@dataclass
class SimRow:
    workload: str
    ratios: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in POLICIES})
    bounds: list[float] = field(default_factory=list)


def run_sim(seeds: Sequence[int]) -> list[SimRow]:
    rows: dict[str, SimRow] = {}
    for seed in seeds:
        for w in workloads(seed):
            row = rows.setdefault(w.name, SimRow(w.name))
            bound = lower_bound(w.graph, w.actual, w.hosts)
            row.bounds.append(bound)
            for key, makespan in makespans(w).items():
                row.ratios[key].append(makespan / bound)
    return list(rows.values())


#: Short column names for the workloads of workloads(), in order.
SHORT = ["indep logn", "indep Pareto", "build graph", "mixed: logn", "mixed: build"]


def render_sim(rows: Sequence[SimRow], seeds: int) -> str:
    width = 14
    out = [
        f"\n== simulator: makespan / lower bound, mean / worst of {seeds} seeds ==",
        "columns: " + "; ".join(f"{s} = {r.workload}" for s, r in zip(SHORT, rows, strict=True)),
        f"{'policy':<32}" + "".join(f"{s:>{width}}" for s in SHORT),
        f"{'lower bound, median s':<32}"
        + "".join(f"{statistics.median(r.bounds):>{width}.0f}" for r in rows),
    ]
    for key, label in POLICIES:
        cells = [f"{statistics.fmean(r.ratios[key]):.2f} / {max(r.ratios[key]):.2f}" for r in rows]
        out.append(f"{label:<32}" + "".join(f"{c:>{width}}" for c in cells))
    out.append(
        "LB = max(longest chain on the fastest host, work / capacity); known: expected = "
        "actual; unknown: expected = the median for every task; hosts up front: as "
        "sim.simulate; hosts join: as `meshrun dispatch` drives the scheduler (RunStarted "
        f"with no host, then one HostJoined per host, {JOIN_GAP_S * 1000:.0f} ms apart); "
        "* counterfactual (Policy.replace_per_host): every queued task placed again, highest "
        "priority first, whenever a host joins"
    )
    for key, label in [("known", "hosts up front"), ("known-joined", "hosts joining")]:
        ratios = [x for row in rows for x in row.ratios[key]]
        within = [
            sum(1 for x in row.ratios[key] if x <= TARGET) / len(row.ratios[key]) for row in rows
        ]
        verdict = "MET" if max(ratios) <= TARGET else "NOT MET"
        out.append(
            f"target meshrun (known) within {TARGET - 1:.0%} of LB, {label}: worst "
            f"{max(ratios):.3f}; seeds within per workload: "
            + ", ".join(f"{w:.0%}" for w in within)
            + f" — {verdict}"
        )
    return "\n".join(out)


# -- scale: the scheduler's own cost -------------------------------------------------------

#: What --scale runs: (tasks, hosts) for each of SCALE_SHAPES (issue 13's sizes).
SCALE_SIZES = [(10_000, 100), (10_000, 1_000), (100_000, 1_000)]
SCALE_SHAPES = ["independent", "chains", "build", "dag"]
#: Slots per host in the scale runs (as the dispatch benchmarks' hosts).
SCALE_SLOTS = 2
#: Tasks per chain in the "chains" shape: tasks / 10 chains, enough to keep every slot
#: of 1,000 hosts busy at 100,000 tasks and half of them at 10,000.
CHAIN_LENGTH = 10


def scale_workload(tasks: int, shape: str, seed: int = 1) -> tuple[TaskGraph, dict[str, float]]:
    """``tasks`` tasks, lognormal durations: "independent"; "chains" of CHAIN_LENGTH;
    "build": builds (a tenth) -> test shards (each needs 1-2 builds) -> packages (a
    hundredth), the shape of ``build_graph`` scaled up; "dag": after the first 100, each
    task needs two earlier ones at random, exponential durations (mean 1 s)."""
    rng = random.Random(seed)
    if shape == "independent":
        return independent(rng, tasks, lambda r: lognormal(r, 10.0, 1.2))
    if shape == "chains":
        specs = [
            (
                f"c{i // CHAIN_LENGTH}-{i % CHAIN_LENGTH}",
                () if i % CHAIN_LENGTH == 0 else (f"c{i // CHAIN_LENGTH}-{i % CHAIN_LENGTH - 1}",),
            )
            for i in range(tasks)
        ]
        return make_graph(specs), {name: lognormal(rng, 10.0, 1.0) for name, _ in specs}
    if shape == "build":
        builds, packages = max(1, tasks // 10), max(1, tasks // 100)
        return build_graph(rng, builds, tasks - builds - packages, packages)
    if shape == "dag":
        names = [f"t{i}" for i in range(tasks)]
        specs = [(n, rng.sample(names[:i], k=2) if i > 100 else ()) for i, n in enumerate(names)]
        return make_graph(specs), {n: rng.expovariate(1.0) for n in names}
    raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SCALE_SHAPES)}")


def simulate_scale(tasks: int, hosts: int, shape: str) -> dict[str, Any]:
    """The simulator on ``tasks`` tasks of ``shape`` (see scale_workload) over ``hosts``
    hosts x SCALE_SLOTS slots, every host there from the start and durations known.

    ``cpu_s``: process CPU time of the simulation alone (the scheduler and the
    simulator's own event loop; not building the graph); ``hosts_used``: hosts that
    ran at least one task (every host should, when there are more tasks than slots).
    """
    graph, actual = scale_workload(tasks, shape)
    fleet = uniform_hosts(hosts, SCALE_SLOTS)
    start = time.process_time()
    result = simulate(graph, actual, fleet)
    cpu_s = time.process_time() - start
    bad = sum(1 for r in result.records.values() if r.status.value != "succeeded")
    if bad:
        raise RuntimeError(f"scale {tasks}x{hosts} {shape}: {bad} tasks did not succeed")
    return {
        "tasks": tasks,
        "hosts": hosts,
        "shape": shape,
        "cpu_s": cpu_s,
        "makespan_s": result.makespan,
        "lower_bound_s": lower_bound(graph, actual, fleet),
        "hosts_used": len({i.host for i in result.intervals if i.outcome == "succeeded"}),
    }


def render_scale(rows: Sequence[Mapping[str, Any]]) -> str:
    out = [
        f"\n== simulator at scale: {SCALE_SLOTS} slots per host, durations known ==",
        f"{'tasks':>8} {'hosts':>6} {'shape':<12} {'CPU s':>8} {'ms/task':>8} "
        f"{'makespan/LB':>11} {'hosts used':>10}",
    ]
    for r in rows:
        out.append(
            f"{r['tasks']:>8} {r['hosts']:>6} {r['shape']:<12} {r['cpu_s']:>8.2f} "
            f"{1000 * r['cpu_s'] / r['tasks']:>8.3f} {r['makespan_s'] / r['lower_bound_s']:>11.3f} "
            f"{r['hosts_used']:>10}"
        )
    out.append(
        "CPU s = process CPU time of sim.simulate (scheduler + simulator); issue 13's target: "
        "100,000 tasks x 1,000 hosts under 60 s"
    )
    return "\n".join(out)


# -- part 2: real hosts -----------------------------------------------------------------


def real_durations(n: int, total_s: float, seed: int) -> list[float]:
    """Heavy-tailed (lognormal sigma 1.2) durations scaled to sum to ``total_s``."""
    rng = random.Random(seed)
    raw = [lognormal(rng, 1.0, 1.2) for _ in range(n)]
    scale = total_s / sum(raw)
    return [round(max(0.05, x * scale), 2) for x in raw]


@dataclass
class RealResult:
    tool: Tool
    walls: list[float] = field(default_factory=list)
    phases: list[float] = field(default_factory=list)  # first task start -> last end
    bounds: list[float] = field(default_factory=list)  # from the measured durations
    failures: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [p / b for p, b in zip(self.phases, self.bounds, strict=True)]


def read_stamps(stamps: Path, n: int) -> tuple[list[float], list[float]]:
    starts, ends = [], []
    for i in range(n):
        starts.append(float((stamps / f"{i}.start").read_text().strip()))
        ends.append(float((stamps / f"{i}.end").read_text().strip()))
    return starts, ends


def run_real_once(
    tool: Tool, env: dict[str, str], stamps: Path, n: int, slots_total: int, scratch: Path
) -> tuple[float, float, float] | str:
    """(wall, task phase, lower bound) or an error text."""
    shutil.rmtree(stamps, ignore_errors=True)
    stamps.mkdir()
    sample = time_once(tool, env, scratch, RUN_TIMEOUT_S)
    if sample.exit_code != 0:
        return f"exit {sample.exit_code}: {tail(sample.stderr)}"
    try:
        starts, ends = read_stamps(stamps, n)
    except (OSError, ValueError) as exc:
        return f"missing time stamps: {exc}"
    durations = [e - s for s, e in zip(starts, ends, strict=True)]
    bound = max(max(durations), sum(durations) / slots_total)
    return sample.wall_s, max(ends) - min(starts), bound


def real_part(
    fleet: Fleet,
    root: Path,
    env: dict[str, str],
    *,
    tasks: int,
    work_s: float,
    slots: int,
    repeat: int,
    seed: int,
) -> tuple[list[RealResult], dict[str, Any]]:
    durations = real_durations(tasks, work_s, seed)
    stamps = root / "stamps"
    commands = [
        f"date +%s.%N > {stamps}/{i}.start; sleep {d:.2f}; date +%s.%N > {stamps}/{i}.end"
        for i, d in enumerate(durations)
    ]
    work = root / "real"
    work.mkdir()
    lines = ["[sync]", "paths = []", ""]
    for i, command in enumerate(commands):
        lines += ["[[task]]", f'name = "sleep{i}"', f"run = {json.dumps(command)}", ""]
    tasks_toml = work / "tasks.toml"
    tasks_toml.write_text("\n".join(lines))
    hosts_toml = hosts_toml_with_slots(fleet, work / "hosts.toml", slots)
    fabric = [sys.executable, str(BENCH / "competitors" / "fabric_client.py")]
    control_dir = work / "cm"
    control_dir.mkdir()
    sshlogins = gnu_parallel.write_sshlogins(
        fleet, work / "sshlogins", kex=gnu_parallel.X25519, control_dir=control_dir
    )
    commands_file = work / "commands.txt"
    commands_file.write_text("".join(c + "\n" for c in commands))
    meshrun = meshrun_executable()
    known_state = work / "state-known"
    fresh_state = work / "state-fresh"

    def mesh_argv(state: Path) -> list[str]:
        argv = [meshrun, "dispatch", str(tasks_toml), "--hosts", str(hosts_toml), "-q"]
        return [*argv, "-o", "none", "--state-dir", str(state)]

    def fresh() -> None:
        shutil.rmtree(fresh_state, ignore_errors=True)

    replace_state = work / "state-replace"
    replace_argv = [sys.executable, "-c", REPLACE_ON_JOIN]
    replace_argv += mesh_argv(replace_state)[1:]

    spec_json = fleet_spec(fleet, slots=slots, commands=commands)
    tools = [
        Tool("meshrun-known", "meshrun, durations known", mesh_argv(known_state)),
        Tool("meshrun-unknown", "meshrun, durations unknown", mesh_argv(fresh_state), before=fresh),
        Tool("meshrun-replace", "meshrun, known, re-place*", replace_argv),
        Tool("rr", "round-robin (Fabric)", [*fabric, "rr", spec_json]),
        Tool("fifo", "FIFO (Fabric)", [*fabric, "fifo", spec_json]),
        Tool(
            "parallel",
            "FIFO (GNU parallel)",
            [
                gnu_parallel.executable(),
                f"-j{slots}",
                "--no-notice",
                "--sshloginfile",
                str(sshlogins),
                "::::",
                str(commands_file),
            ],
            after=lambda: gnu_parallel.stop_masters(fleet, control_dir),
        ),
    ]
    slots_total = slots * len(fleet.hosts)
    # The lesson: one untimed run teaches the history every task's duration.
    learn = run_real_once(tools[0], env, stamps, tasks, slots_total, root)
    if isinstance(learn, str):
        raise RuntimeError(f"meshrun's learning run failed: {learn}")
    shutil.copytree(known_state, replace_state)  # the counterfactual starts as taught
    print(
        f"  learning run (meshrun, fresh history): task phase {learn[1]:.2f}s, LB {learn[2]:.2f}s",
        file=sys.stderr,
        flush=True,
    )
    results = [RealResult(t) for t in tools]
    try:
        for rep in range(repeat):
            line = []
            for r in rotated(results, rep):
                got = run_real_once(r.tool, env, stamps, tasks, slots_total, root)
                if isinstance(got, str):
                    r.failures.append(got)
                    line.append(f"{r.tool.key} FAIL")
                    continue
                wall, phase, bound = got
                r.walls.append(wall)
                r.phases.append(phase)
                r.bounds.append(bound)
                line.append(f"{r.tool.key} {phase:.2f}/{bound:.2f}")
            print(f"  {round_tag(rep, 0, repeat)}: " + ", ".join(line), file=sys.stderr, flush=True)
    finally:
        gnu_parallel.stop_masters(fleet, control_dir)
    # What the simulator predicts for the same instance (nominal durations).
    graph = make_graph([(f"sleep{i}", ()) for i in range(tasks)])
    actual = {f"sleep{i}": d for i, d in enumerate(durations)}
    hosts = uniform_hosts(len(fleet.hosts), slots)
    w = Workload("real", graph, actual, hosts)
    bound = lower_bound(graph, actual, hosts)
    predicted = {p: m / bound for p, m in makespans(w).items()}
    info = {
        "durations": durations,
        "nominal_bound_s": bound,
        "sum_s": sum(durations),
        "max_s": max(durations),
        "learning_run": {"phase_s": learn[1], "bound_s": learn[2], "wall_s": learn[0]},
        "sim_ratio": predicted,
    }
    return results, info


def render_real(
    results: Sequence[RealResult], info: Mapping[str, Any], hosts: int, slots: int
) -> str:
    d = info["durations"]
    sim = info["sim_ratio"]
    sim_of = {  # (hosts up front, hosts joining)
        "meshrun-known": (sim["known"], sim["known-joined"]),
        "meshrun-unknown": (sim["unknown"], sim["unknown-joined"]),
        "meshrun-replace": (sim["known"], sim["known-replace"]),
        "rr": (sim["rr"], sim["rr"]),
        "fifo": (sim["fifo"], sim["fifo"]),
        "parallel": (sim["fifo"], sim["fifo"]),
    }
    out = [
        f"\n== real hosts: {len(d)} sleep tasks, {sum(d):.1f}s of work (longest {max(d):.2f}s) "
        f"over {hosts} hosts x {slots} slots; nominal LB {info['nominal_bound_s']:.2f}s ==",
        f"{'policy':<28} {'phase s':>8} {'LB s':>6} {'ratio':>6} {'worst':>6} "
        f"{'sim: up front':>13} {'sim: join':>9} {'wall s':>7}  runs",
    ]
    for r in results:
        ok = len(r.phases)
        runs = f"{ok}" + (f" ({len(r.failures)} failed)" if r.failures else "")
        up_front, joined = sim_of[r.tool.key]
        out.append(
            f"{r.tool.label:<28} {fmt(med(r.phases), '.2f'):>8} {fmt(med(r.bounds), '.2f'):>6} "
            f"{fmt(med(r.ratios), '.3f'):>6} {fmt(max(r.ratios) if r.ratios else None, '.3f'):>6} "
            f"{up_front:>13.3f} {joined:>9.3f} {fmt(med(r.walls), '.2f'):>7}  {runs}"
        )
    learn = info["learning_run"]
    out.append(
        f"(the untimed learning run, meshrun with an empty history: phase {learn['phase_s']:.2f}s"
        f" / LB {learn['bound_s']:.2f}s = {learn['phase_s'] / learn['bound_s']:.3f})"
    )
    out.append(
        "phase = first task start -> last task end, from the tasks' own time stamps; LB = "
        "max(longest task, work / slots) of the durations measured in that run; ratio = "
        "median of phase/LB per run; sim = the simulator's makespan/LB on the nominal "
        "durations, with every host known up front (sim.simulate) or joining after "
        "RunStarted as in `meshrun dispatch`; wall = the whole process; * counterfactual: "
        "`meshrun dispatch` with Policy.replace_per_host, which places every queued task "
        "again, highest priority first, whenever a host joins"
    )
    known = next((r for r in results if r.tool.key == "meshrun-known"), None)
    if known is not None and known.ratios:
        worst = max(known.ratios)
        verdict = "MET" if worst <= TARGET else "NOT MET"
        out.append(
            f"target: meshrun within {TARGET - 1:.0%} of the LB once durations are known: "
            f"median {med(known.ratios):.3f}, worst {worst:.3f} — {verdict}"
        )
    for r in results:
        if r.failures:
            out.append(f"!! {r.tool.label}: {r.failures[0]}")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/schedule", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=30, help="simulated seeds per workload (30)")
    parser.add_argument("--no-real", action="store_true", help="the simulator only")
    parser.add_argument("--no-sim", action="store_true", help="the real hosts only")
    parser.add_argument("--real-tasks", type=int, default=60, help="sleep tasks (60)")
    parser.add_argument("--real-work", type=float, default=40.0, help="their total seconds (40)")
    parser.add_argument("--real-hosts", type=int, default=4, help="hosts (4)")
    parser.add_argument("--real-slots", type=int, default=2, help="slots per host (2)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per real row (2)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the real durations (7)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the scheduler's cost at scale: the simulator on 10k/100k tasks x 100/1,000 "
        "hosts, independent tasks, chains and a build graph (CPU s, makespan/LB, hosts used)",
    )
    parser.add_argument(
        "--scale-size",
        action="append",
        metavar="TASKSxHOSTS",
        help="with --scale: these sizes instead (repeatable, e.g. 10000x200)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.repeat < 1:
        parser.error("--seeds and --repeat must be >= 1")
    doc = new_doc("schedule")

    def body() -> int:
        failed = False
        if args.scale:
            sizes = SCALE_SIZES
            if args.scale_size:
                sizes = [
                    (int(size.split("x")[0]), int(size.split("x")[1])) for size in args.scale_size
                ]
            rows = []
            for tasks, hosts in sizes:
                for shape in SCALE_SHAPES:
                    rows.append(simulate_scale(tasks, hosts, shape))
                    print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            print(render_scale(rows), flush=True)
            doc["scale"] = rows
            return 0
        if not args.no_sim:
            t0 = time.perf_counter()
            rows = run_sim(range(args.seeds))
            print(render_sim(rows, args.seeds), flush=True)
            print(f"(simulated in {time.perf_counter() - t0:.1f}s)", file=sys.stderr)
            doc["sim"] = {row.workload: row.ratios | {"bounds": row.bounds} for row in rows}
        if not args.no_real:
            with tempfile.TemporaryDirectory(prefix="meshrun-schedule-") as tmp:
                root = Path(tmp)
                env = tool_env(root / "pycache")
                print(f"starting {args.real_hosts} hosts ...", file=sys.stderr, flush=True)
                with running_fleet(args.real_hosts, root / "fleet") as fleet:
                    results, info = real_part(
                        fleet,
                        root,
                        env,
                        tasks=args.real_tasks,
                        work_s=args.real_work,
                        slots=args.real_slots,
                        repeat=args.repeat,
                        seed=args.seed,
                    )
                print(render_real(results, info, args.real_hosts, args.real_slots), flush=True)
                doc["real"] = info | {
                    r.tool.key: {
                        "argv": r.tool.argv[:4],
                        "walls": r.walls,
                        "phases": r.phases,
                        "bounds": r.bounds,
                        "failures": r.failures,
                    }
                    for r in results
                }
                failed = any(r.failures for r in results)
        return 1 if failed else 0

    return run_benchmark("schedule", body, doc, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""Scale: what one more host and one more task cost the coordinator, from 8 to 1,024 hosts.

Three parts, each optional (``--only``):

- **fanout**: ``true`` on every host, meshrun exec against parallel-ssh and Fabric
  (``bench/competitors/``), whole processes, tools interleaved round by round. Per tool
  and size: wall time, ratio to meshrun, the client's CPU (user+sys of its process
  tree, from ``wait4``), CPU per host, and the peaks of RSS, threads and open fds of its
  process tree, sampled from /proc every 25 ms. Then meshrun's *marginal* CPU per host
  between sizes (what one more host costs, start-up excluded) and whether it is flat.
- **dispatch**: 10,000 independent ``true`` tasks (nothing synced) over 16/64/256 hosts:
  wall time, the coordinator's CPU, tasks/s, time relative to the smallest size.
- **sim**: ``simulate_scale`` of bench/schedule.py (the scheduler alone, in virtual
  time) at 10k tasks x 100 and x 1,000 hosts and 100k x 1,000.

    bench/scale                                  # fanout 8,64,256; dispatch 16,64,256; sim
    bench/scale --big                            # fanout also at 512 and 1,024 hosts
    bench/scale --only fanout --hosts 8,64 --repeat 3 --json /tmp/scale.json

Only ``--max-sshd`` (256) real sshd processes are started: a bigger fleet reuses them
under alias names (``h3-1`` is a second inventory entry for h3's sshd, with its own
work directory), which their MaxStartups (200) and MaxSessions (64) allow. Every
tool sees the same aliases (the competitors get the port list with repeats). The sshd
side of every connection runs on this machine too, so wall times are the box's, not
the client's: read the client CPU columns for the coordinator's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fanout import SSH_CONFIG_CHOICES, parse_sizes, write_ssh_config
from harness import (
    BENCH,
    LOOPBACK,
    add_bytecode_option,
    fmt,
    machine_busy_s,
    med,
    meshrun_executable,
    new_doc,
    rotated,
    round_tag,
    run_benchmark,
    running_fleet,
    tail,
    tool_env,
)

from meshrun.testing.fleet import Fleet

COMPETITORS = BENCH / "competitors"
#: Real sshd processes at most; bigger fleets reuse them under alias names.
MAX_SSHD = 256
#: How often a tool's process tree is sampled (its peaks of RSS, threads and fds).
SAMPLE_S = 0.025
#: A tool that takes longer has hung (Fabric on 1,024 hosts takes ~1 min here).
RUN_TIMEOUT_S = 900.0
#: issue 13's targets.
CPU_PER_HOST_TARGET_MS = 2.5
FLAT_WITHIN = 1.2
DISPATCH_WITHIN = 1.2
SIM_TARGET_S = 60.0
SIM_SIZES = [(10_000, 100), (10_000, 1_000), (100_000, 1_000)]


# -- a process tree, sampled ---------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (through /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return found


def _status(pid: int) -> tuple[int, int]:
    """(VmRSS in kB, threads) of one process; zeros once it is gone."""
    rss = threads = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


class Peaks(threading.Thread):
    """Samples a process tree until stopped: the most RSS, threads and fds at once."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rss_kb = self.threads = self.fds = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = threads = fds = 0
            for p in _tree(self.pid):
                r, t = _status(p)
                rss, threads = rss + r, threads + t
                with contextlib.suppress(OSError):
                    fds += len(os.listdir(f"/proc/{p}/fd"))
            self.rss_kb = max(self.rss_kb, rss)
            self.threads = max(self.threads, threads)
            self.fds = max(self.fds, fds)
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Run:
    wall_s: float
    exit_code: int | None  # None: timed out (killed)
    cpu_s: float  # user+sys of the tool and every descendant it waited for
    box_s: float  # busy CPU of the whole machine meanwhile
    rss_mb: float
    threads: int
    fds: int
    stderr: bytes


def run_sampled(argv: Sequence[str], env: dict[str, str], scratch: Path) -> Run:
    """One whole process: its wall clock, its tree's CPU (``wait4``) and peaks."""
    err_path = scratch / "stderr.txt"
    with err_path.open("wb") as err:
        busy0 = machine_busy_s()
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        peaks = Peaks(proc.pid)
        peaks.start()
        killer = threading.Timer(RUN_TIMEOUT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            peaks.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        box = machine_busy_s() - busy0
    code = None if proc.returncode == -9 and wall >= RUN_TIMEOUT_S else proc.returncode
    return Run(
        wall,
        code,
        usage.ru_utime + usage.ru_stime,
        box,
        peaks.rss_kb / 1024,
        peaks.threads,
        peaks.fds,
        err_path.read_bytes(),
    )


@dataclass
class Row:
    key: str
    label: str
    argv: list[str]
    note: str = ""
    runs: list[Run] = field(default_factory=list)
    failures: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float | None:
        return med([float(getattr(r, attr)) for r in self.runs])

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "argv": self.argv,
            "note": self.note,
            "runs": [{k: v for k, v in vars(r).items() if k != "stderr"} for r in self.runs],
            "failures": [
                {"exit_code": r.exit_code, "wall_s": r.wall_s, "stderr_tail": tail(r.stderr)}
                for r in self.failures
            ],
        }


def time_rows(
    rows: Sequence[Row], repeat: int, warmup: int, env: dict[str, str], scratch: Path
) -> None:
    """Every row once a round, the first rotating; a row failing twice in a row stops."""
    streak = {r.key: 0 for r in rows}
    for rep in range(warmup + repeat):
        line = []
        for row in rotated(list(rows), rep):
            if streak[row.key] >= 2:
                continue
            run = run_sampled(row.argv, env, scratch)
            if run.exit_code == 0:
                streak[row.key] = 0
                if rep >= warmup:
                    row.runs.append(run)
                line.append(f"{row.key} {run.wall_s:.2f}s/{run.cpu_s:.2f}cpu")
            else:
                streak[row.key] += 1
                row.failures.append(run)
                line.append(f"{row.key} FAIL({run.exit_code})")
        print(f"  {round_tag(rep, warmup, repeat)}: " + ", ".join(line), file=sys.stderr)


def failure_notes(rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        for f in r.failures[:1]:
            out.append(
                f"!! {r.label} failed {len(r.failures)} run(s) (exit {f.exit_code}); "
                "stderr tail:\n" + "\n".join("   " + x for x in tail(f.stderr).splitlines())
            )
    return out


# -- the fleet, with aliases ------------------------------------------------------------------


def entries(fleet: Fleet, count: int) -> list[tuple[str, int, Path]]:
    """``count`` (name, port, workdir): the fleet's hosts, then aliases of them, each
    alias working in a directory of its own under its host's (the wrapper creates it)."""
    out = []
    for i in range(count):
        h = fleet.hosts[i % len(fleet.hosts)]
        k = i // len(fleet.hosts)
        name = f"{h.name}-{k}" if k else h.name
        out.append((name, h.port, h.workdir / name if k else h.workdir))
    return out


def write_inventory(fleet: Fleet, count: int, path: Path, slots: int | None = None) -> Path:
    """hosts.toml for ``count`` hosts (aliases past the fleet's size), by meshrun's writer."""
    from meshrun.config import hostsfile

    defaults: dict[str, hostsfile.Value] = {
        "user": fleet.user,
        "identity": fleet.client_key,
        "known_hosts": fleet.known_hosts,
    }
    if slots is not None:
        defaults["slots"] = slots
    hosts: list[dict[str, hostsfile.Value]] = [
        {"name": name, "address": LOOPBACK, "port": port, "workdir": workdir}
        for name, port, workdir in entries(fleet, count)
    ]
    return hostsfile.write_hosts(path, hosts, defaults=defaults)


def competitor_spec(fleet: Fleet, count: int) -> str:
    """The competitor scripts' JSON for ``count`` hosts: an alias is its port again."""
    return json.dumps(
        {
            "address": LOOPBACK,
            "user": fleet.user,
            "key": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "ports": [port for _, port, _ in entries(fleet, count)],
        }
    )


# -- part 1: fan-out ----------------------------------------------------------------------------


FANOUT_TOOLS = ("meshrun", "pssh", "fabric")


def fanout_rows(fleet: Fleet, count: int, work: Path, tools: Sequence[str]) -> list[Row]:
    hosts = write_inventory(fleet, count, work / f"hosts{count}.toml")
    spec = competitor_spec(fleet, count)
    python = sys.executable
    every = [
        Row(
            "meshrun",
            "meshrun exec",
            [meshrun_executable(), "exec", "--hosts", str(hosts), "-q", "--", "true"],
            "host keys checked",
        ),
        Row(
            "pssh",
            "parallel-ssh",
            [python, str(COMPETITORS / "parallel_ssh.py"), "true", spec],
            "host keys NOT checked",
        ),
        Row(
            "fabric",
            "fabric ThreadingGroup",
            [python, str(COMPETITORS / "fabric_client.py"), "true", spec],
            "host keys checked",
        ),
    ]
    return [r for r in every if r.key in tools]


def render_fanout(count: int, rows: Sequence[Row], sshd: int) -> str:
    mesh = next(r for r in rows if r.key == "meshrun")
    base = mesh.med("wall_s")
    out = [
        f"\n== fanout: `true` on {count} hosts"
        + (f" ({sshd} sshd processes, the rest alias names)" if count > sshd else "")
        + f", {len(mesh.runs)} runs ==",
        f"{'tool':<22} {'wall s':>7} {'ratio':>6} {'cpu s':>7} {'ms/host':>8} {'RSS MB':>7} "
        f"{'threads':>7} {'fds':>6} {'box s':>7}  note",
    ]
    for r in rows:
        wall, cpu = r.med("wall_s"), r.med("cpu_s")
        ratio = wall / base if wall is not None and base else None
        per_host = cpu * 1000 / count if cpu is not None else None
        out.append(
            f"{r.label:<22} {fmt(wall, '.2f'):>7} {fmt(ratio, '.2f'):>6} {fmt(cpu, '.2f'):>7} "
            f"{fmt(per_host, '.2f'):>8} {fmt(r.med('rss_mb'), '.0f'):>7} "
            f"{fmt(r.med('threads'), '.0f'):>7} {fmt(r.med('fds'), '.0f'):>6} "
            f"{fmt(r.med('box_s'), '.2f'):>7}  {r.note}"
            + (f"  FAILED {len(r.failures)} run(s)" if r.failures else "")
        )
    out.append(
        "ratio = tool wall / meshrun wall (>1: meshrun is faster); cpu s = user+sys of the "
        "tool's process tree; ms/host = cpu / hosts (start-up included); RSS, threads, fds: "
        "peaks of the tree; box s = busy CPU of the machine (tool + sshd + noise); medians"
    )
    return "\n".join(out + failure_notes(rows))


def marginal(sizes: Sequence[int], cpu: dict[int, float]) -> list[tuple[int, int, float]]:
    """(from, to, ms of CPU per added host) between consecutive measured sizes."""
    known = [n for n in sizes if n in cpu]
    return [(a, b, (cpu[b] - cpu[a]) * 1000 / (b - a)) for a, b in itertools.pairwise(known)]


def render_marginal(tool: str, sizes: Sequence[int], cpu: dict[int, float]) -> str:
    steps = marginal(sizes, cpu)
    if not steps:
        return f"{tool}: one size only, no marginal cost"
    parts = [f"{a}->{b}: {ms:.2f}" for a, b, ms in steps]
    values = [ms for _, _, ms in steps]
    spread = max(values) / min(values) if min(values) > 0 else float("inf")
    line = f"{tool}: client CPU per added host (ms), " + ", ".join(parts)
    if tool == "meshrun exec":
        flat = "met" if spread <= FLAT_WITHIN else "NOT met"
        low = "met" if max(values) <= CPU_PER_HOST_TARGET_MS else "NOT met"
        line += (
            f"\n  target: flat within {FLAT_WITHIN:g}x — max/min {spread:.2f}: {flat}; "
            f"at most {CPU_PER_HOST_TARGET_MS} ms — max {max(values):.2f}: {low}"
        )
    return line


# -- part 2: dispatch ---------------------------------------------------------------------------


def write_tasks(work: Path, tasks: int) -> Path:
    """``tasks`` independent ``true`` tasks, nothing to sync, in a project of their own."""
    project = work / "dispatch-project"
    project.mkdir(parents=True, exist_ok=True)
    lines = [f"# bench/scale: {tasks} independent `true` tasks", "[sync]", "paths = []", ""]
    for i in range(tasks):
        lines += ["[[task]]", f'name = "t{i}"', 'run = "true"', ""]
    path = project / "tasks.toml"
    path.write_text("\n".join(lines))
    return path


def hosts_cpu_s(fleet: Fleet) -> float:
    """CPU the hosts' side has spent so far: each sshd listener's own time plus its reaped
    children's (``cutime``/``cstime``), which take in every connection's sshd, shell and
    agent once that connection has closed. On a real fleet this runs on the hosts."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for h in fleet.hosts:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{h.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / tick


@dataclass
class Phases:
    """Where a dispatch run's wall time went, from its report.json timelines."""

    setup_s: float  # run start to the first task's start: connecting, agents starting
    work_s: float  # first task start to last task end
    hosts_used: int


def run_phases(state: Path) -> list[Phases]:
    out = []
    for report in sorted(state.glob("runs/*/report.json")):
        doc = json.loads(report.read_text())
        spans = [(t["start_s"], t["end_s"]) for task in doc["tasks"] for t in task["timeline"]]
        if not spans:
            continue
        first = min(s for s, _ in spans)
        last = max(e for _, e in spans if e is not None)
        used = sum(1 for h in doc["hosts"] if h.get("tasks_run"))
        out.append(Phases(first, last - first, used))
    return out


def render_dispatch(
    tasks: int,
    slots: int,
    by_size: dict[int, Row],
    phases: dict[int, list[Phases]],
    host_cpu: dict[int, float],
) -> str:
    sizes = sorted(by_size)
    first = by_size[sizes[0]].med("wall_s") if sizes else None
    out = [
        f"\n== dispatch: {tasks} independent `true` tasks, slots = {slots} per host ==",
        f"{'hosts':>6} {'wall s':>8} {'÷ first':>8} {'tasks/s':>8} {'cpu s':>7} "
        f"{'ms/task':>8} {'RSS MB':>7} {'threads':>7} {'fds':>6} {'runs':>5} "
        f"{'setup s':>8} {'work s':>7} {'work ÷':>7} {'used':>5} {'hosts cpu':>9}",
    ]
    work = {n: med([p.work_s for p in phases.get(n, [])]) for n in sizes}
    first_work = work[sizes[0]] if sizes else None
    for n in sizes:
        r = by_size[n]
        wall, cpu = r.med("wall_s"), r.med("cpu_s")
        out.append(
            f"{n:>6} {fmt(wall, '.2f'):>8} "
            f"{fmt(wall / first if wall and first else None, '.2f'):>8} "
            f"{fmt(tasks / wall if wall else None, '.0f'):>8} {fmt(cpu, '.2f'):>7} "
            f"{fmt(cpu * 1000 / tasks if cpu is not None else None, '.3f'):>8} "
            f"{fmt(r.med('rss_mb'), '.0f'):>7} {fmt(r.med('threads'), '.0f'):>7} "
            f"{fmt(r.med('fds'), '.0f'):>6} {len(r.runs):>5} "
            f"{fmt(med([p.setup_s for p in phases.get(n, [])]), '.2f'):>8} "
            f"{fmt(work[n], '.2f'):>7} "
            f"{fmt(work[n] / first_work if work[n] and first_work else None, '.2f'):>7} "
            f"{fmt(med([float(p.hosts_used) for p in phases.get(n, [])]), '.0f'):>5} "
            f"{fmt(host_cpu.get(n), '.1f'):>9}"
        )
    last = by_size[sizes[-1]].med("wall_s") if sizes else None
    if first and last and len(sizes) > 1:
        verdict = "met" if last / first <= DISPATCH_WITHIN else "NOT met"
        out.append(
            f"target: {sizes[-1]} hosts within {DISPATCH_WITHIN:g}x the time on {sizes[0]} — "
            f"{last / first:.2f}x: {verdict}"
        )
    last_work = work[sizes[-1]] if sizes else None
    if first_work and last_work and len(sizes) > 1:
        verdict = "met" if last_work / first_work <= DISPATCH_WITHIN else "NOT met"
        out.append(
            f"work phase: {sizes[-1]} hosts within {DISPATCH_WITHIN:g}x of {sizes[0]} — "
            f"{last_work / first_work:.2f}x: {verdict}"
        )
    out.append(
        "cpu s = the coordinator's user+sys (meshrun's process tree); wall includes start-up, "
        "connecting every host and starting its agent.\nsetup s = run start to the first "
        "task's start; work s = first task start to last task end (work ÷ = against the "
        "first size); used = hosts that ran a task; hosts cpu = CPU-s of the hosts' side per "
        "run (sshd, shells, agents: all on this machine's cores here, on their own machines "
        "in a real fleet)"
    )
    rows = [by_size[n] for n in sizes]
    return "\n".join(out + failure_notes(rows))


# -- part 3: the simulator ------------------------------------------------------------------------


def simulate(shapes: Sequence[str] | None) -> tuple[str, list[dict[str, Any]]]:
    """bench/schedule's ``simulate_scale`` at SIM_SIZES, for each shape."""
    import schedule

    run = getattr(schedule, "simulate_scale", None)
    if run is None:
        return "\n== sim: bench/schedule.py has no simulate_scale yet: not run ==", []
    shapes = list(shapes or getattr(schedule, "SCALE_SHAPES", ["independent"]))
    rows = []
    for tasks, hosts in SIM_SIZES:
        for shape in shapes:
            print(f"  sim {tasks} x {hosts} {shape} ...", file=sys.stderr, flush=True)
            rows.append(run(tasks, hosts, shape))
    text = schedule.render_scale(rows) if hasattr(schedule, "render_scale") else json.dumps(rows)
    worst = max((r["cpu_s"] for r in rows if r["tasks"] == 100_000), default=None)
    if worst is not None:
        verdict = "met" if worst < SIM_TARGET_S else "NOT met"
        text += (
            f"\ntarget: 100k tasks x 1,000 hosts under {SIM_TARGET_S:g} s — worst "
            f"{worst:.1f} s: {verdict}"
        )
    return text, rows


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="fanout,dispatch,sim", help="parts to run")
    parser.add_argument("--hosts", type=parse_sizes, default=[8, 64, 256], help="fan-out sizes")
    parser.add_argument("--big", action="store_true", help="fan-out also at 512 and 1,024 hosts")
    parser.add_argument("--tools", default=",".join(FANOUT_TOOLS), help="fan-out rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed fan-out rounds (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed fan-out rounds (1)")
    parser.add_argument(
        "--dispatch-hosts", type=parse_sizes, default=[16, 64, 256], help="dispatch sizes"
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="dispatch tasks (10000)")
    parser.add_argument("--slots", type=int, default=4, help="dispatch slots per host (4)")
    parser.add_argument("--dispatch-repeat", type=int, default=1, help="dispatch runs (1)")
    parser.add_argument("--sim-shapes", help="simulator shapes (default: bench/schedule's all)")
    parser.add_argument("--max-sshd", type=int, default=MAX_SSHD, help="real sshd at most")
    parser.add_argument(
        "--ssh-config",
        choices=SSH_CONFIG_CHOICES,
        default="200",
        help="the ssh_config meshrun reads, as in bench/fanout (200 Host blocks)",
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    add_bytecode_option(parser, "as in bench/fanout (cache: .pyc files in a private temp dir)")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    sizes = sorted(set(args.hosts + ([512, 1024] if args.big else [])))
    tools = [t for t in args.tools.split(",") if t]
    if "meshrun" not in tools:
        tools.insert(0, "meshrun")
    doc = new_doc("scale", args, "repeat", "warmup", "tasks", "slots", "bytecode", fanout={})
    doc["dispatch"], doc["sim"] = {}, []

    def body() -> int:
        failed = False
        with tempfile.TemporaryDirectory(prefix="meshrun-scale-") as tmp:
            work = Path(tmp)
            env = tool_env(work / "pycache" if args.bytecode == "cache" else None)
            ssh_config = write_ssh_config(work / "ssh_config", args.ssh_config)
            if ssh_config is not None:
                env["MESHRUN_SSH_CONFIG"] = str(ssh_config)
            wanted = (sizes if "fanout" in parts else []) + (
                args.dispatch_hosts if "dispatch" in parts else []
            )
            if wanted:
                count = min(max(wanted), args.max_sshd)
                print(f"starting a fleet of {count} hosts ...", file=sys.stderr, flush=True)
                with running_fleet(count, work / "fleet") as fleet:
                    if "fanout" in parts:
                        failed |= fanout_part(fleet, sizes, tools, args, env, work, doc)
                    if "dispatch" in parts:
                        failed |= dispatch_part(fleet, args, env, work, doc)
            if "sim" in parts:
                text, rows = simulate(args.sim_shapes.split(",") if args.sim_shapes else None)
                print(text, flush=True)
                doc["sim"] = rows
        return 1 if failed else 0

    return run_benchmark("scale", body, doc, args.json, stopped="fleet stopped")


def fanout_part(
    fleet: Fleet,
    sizes: Sequence[int],
    tools: Sequence[str],
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    doc: dict[str, Any],
) -> bool:
    cpu: dict[str, dict[int, float]] = {}
    labels: dict[str, str] = {}
    failed = False
    for count in sizes:
        print(f"fanout on {count} hosts ...", file=sys.stderr, flush=True)
        rows = fanout_rows(fleet, count, work, tools)
        time_rows(rows, args.repeat, args.warmup, env, work)
        print(render_fanout(count, rows, sshd=len(fleet.hosts)), flush=True)
        doc["fanout"][str(count)] = {r.key: r.as_json() for r in rows}
        for r in rows:
            failed |= bool(r.failures)
            labels[r.key] = r.label
            value = r.med("cpu_s")
            if value is not None:
                cpu.setdefault(r.key, {})[count] = value
    print("\n== fanout: marginal client CPU ==")
    for key, by_size in cpu.items():
        print(render_marginal(labels[key], sizes, by_size))
    doc["fanout_marginal_ms"] = {k: marginal(sizes, v) for k, v in cpu.items()}
    return failed


def dispatch_part(
    fleet: Fleet, args: argparse.Namespace, env: dict[str, str], work: Path, doc: dict[str, Any]
) -> bool:
    tasks_toml = write_tasks(work, args.tasks)
    by_size: dict[int, Row] = {}
    phases: dict[int, list[Phases]] = {}
    host_cpu: dict[int, float] = {}
    for count in sorted(args.dispatch_hosts):
        print(f"dispatch {args.tasks} tasks on {count} hosts ...", file=sys.stderr, flush=True)
        hosts = write_inventory(fleet, count, work / f"dispatch-hosts{count}.toml", args.slots)
        argv = [meshrun_executable(), "dispatch", str(tasks_toml), "--hosts", str(hosts), "-q"]
        argv += ["-o", "none", "--state-dir", str(work / f"state{count}")]
        row = Row("meshrun", f"meshrun dispatch, {count} hosts", argv)
        before = hosts_cpu_s(fleet)
        time_rows([row], args.dispatch_repeat, 0, env, work)
        time.sleep(1.0)  # the hosts' side of the last connections exits and is reaped
        host_cpu[count] = (hosts_cpu_s(fleet) - before) / max(1, args.dispatch_repeat)
        phases[count] = run_phases(work / f"state{count}")
        by_size[count] = row
    print(render_dispatch(args.tasks, args.slots, by_size, phases, host_cpu), flush=True)
    doc["dispatch"] = {
        str(n): {
            **r.as_json(),
            "hosts_cpu_s": host_cpu.get(n),
            "phases": [vars(p) for p in phases.get(n, [])],
        }
        for n, r in by_size.items()
    }
    return any(r.failures for r in by_size.values())


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark in bench/ shares, so each benchmark file keeps only its own work.

- a throwaway fleet of real sshd hosts that is stopped on every way out (``running_fleet``);
- timing a tool as a whole process (``time_once``) and timing several of them round by
  round, the first one rotating (``rotated``, ``time_tools``), so machine noise lands on
  all of them instead of one;
- medians, the ``-`` of a missing figure, stderr tails, failure notes under a table;
- CPU accounting: the tool's process tree and the whole machine's busy time;
- the JSON document's header, the interrupt handling and the ``--bytecode`` option.

Only the standard library at module level: ``bench/dispatch.py --breakdown`` imports this
file in a child process before it starts timing meshrun's own imports, so nothing of
meshrun (and nothing a benchmark does not need) may be imported before it is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The meshrun of this checkout, whatever is installed: the benchmarks measure the tree.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from meshrun.testing.fleet import Fleet

#: meshrun.testing.fleet.LOOPBACK, repeated so that this module imports nothing of meshrun.
LOOPBACK = "127.0.0.1"
#: A tool that takes longer has hung (the slowest row, GNU parallel on 64 hosts, takes ~7 s).
RUN_TIMEOUT_S = 180.0
#: A tool that failed this many runs in a row is not run again (its error is in the table).
GIVE_UP_AFTER = 2
#: Lines of a failed tool's stderr shown under the table: enough for a Python traceback's end.
STDERR_TAIL_LINES = 8
#: How long the teardown waits for a killed sshd listener to be reaped.
REAP_TIMEOUT_S = 10.0

T = TypeVar("T")


# -- figures ----------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".3f") -> str:
    """A figure for a table, or ``-`` where there is none (a tool that never succeeded)."""
    return "-" if x is None else format(x, spec)


def med(values: Sequence[float]) -> float | None:
    """The median, or None of nothing."""
    return statistics.median(values) if values else None


def tail(text: bytes, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a tool's stderr, decoded."""
    return "\n".join(text.decode("utf-8", "replace").rstrip().splitlines()[-lines:])


# -- CPU accounting -----------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, from /proc/stat).

    The fleet's sshd sessions and the hosts' commands run on this machine too, so a
    tool's own CPU time misses what it makes the servers do; this counts everything
    (and whatever else runs: read it as "the box", not the tool).
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU of every child process waited for so far (and theirs)."""
    import resource  # here, not at the top: see the module docstring

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# -- the tools' environment ----------------------------------------------------------------


def meshrun_executable() -> str:
    """The meshrun console script of this interpreter (not a pyenv shim, if possible).

    A pyenv shim alone adds ~0.1 s to every run, which no user of an installed meshrun
    pays.
    """
    beside = Path(sys.executable).parent / "meshrun"
    if beside.exists():
        return str(beside)
    found = shutil.which("meshrun")
    if found is None:
        sys.exit("bench: meshrun is not installed (pip install -e .)")
    return found


def add_rounds_options(parser: argparse.ArgumentParser, what: str = "runs per tool") -> None:
    """``--repeat`` timed and ``--warmup`` untimed rounds (7 and 1)."""
    parser.add_argument("--repeat", type=int, default=7, help=f"timed {what} (7)")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed {what} first (1)")


def add_output_options(parser: argparse.ArgumentParser, only_help: str) -> None:
    """``--only KEYS`` (see ``keep_only``) and ``--json FILE`` (see ``run_benchmark``)."""
    parser.add_argument("--only", metavar="KEYS", help=only_help)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")


def add_bytecode_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--bytecode cache|env``: whether Python may cache the tools' .pyc files (``tool_env``)."""
    parser.add_argument("--bytecode", choices=["cache", "env"], default="cache", help=help)


def tool_env(pyc_prefix: Path | None) -> dict[str, str]:
    """The environment every tool runs in.

    No ssh-agent: every tool uses the fleet's key file only. With ``pyc_prefix``, Python
    may cache bytecode there (and only there: nothing is written into the repository),
    as it does for any pip-installed package; without it the caller's environment
    decides (PYTHONDONTWRITEBYTECODE=1 makes an editable meshrun compile its own
    sources on every run, while the competitors' site-packages keep their .pyc files).
    """
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("SSH_AUTH_SOCK", None)
    if pyc_prefix is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pyc_prefix)
    return env


# -- the fleet ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so that every
    ``finally`` (the fleet's teardown first of all) runs on them too."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP during the block are noted, and raised as
    KeyboardInterrupt once it is over: a teardown is not cut short by them."""
    held: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        if held:
            raise KeyboardInterrupt(f"signal {held[0]}")


@contextlib.contextmanager
def running_fleet(count: int, base: Path) -> Iterator[Fleet]:
    """A fleet of ``count`` hosts under ``base``, stopped on every way out of the block.

    That is: normal exit, an exception, Ctrl-C, SIGTERM and SIGHUP (``stop_on_signals``),
    an interrupt while the fleet is still starting, and a second Ctrl-C during the
    teardown (held until it is done). Every sshd is killed even where psutil, which
    ``Fleet.stop`` needs, is not installed: see ``stop_fleet``.
    """
    from meshrun.testing.fleet import Fleet

    stop_on_signals()
    base = Path(base).resolve()  # as Fleet.start does: the sshd configs are named by it
    try:
        fleet = Fleet.start(count, base)
    except BaseException as exc:
        with _signals_held():
            _kill_listeners_under(base)
        # Without psutil, Fleet.start's own clean-up fails with ImportError while it
        # handles the real cause (Ctrl-C, say): that cause is what the caller must see.
        if isinstance(exc, ImportError) and isinstance(exc.__context__, BaseException):
            raise exc.__context__ from None
        raise
    try:
        yield fleet
    finally:
        stop_fleet(fleet)


def stop_fleet(fleet: Fleet) -> None:
    """Kill every sshd of ``fleet`` and its sessions; RuntimeError if one survives.

    ``Fleet.stop`` first; then every sshd listener started with a config under the
    fleet's directory is found in /proc and killed with its whole process tree
    (``meshrun.testing.procfs``: frozen, then killed). Without psutil ``Fleet.stop``
    raises ImportError having killed nothing, which is how a benchmark once left 64
    sshd processes running; the /proc pass does not need psutil.
    """
    with _signals_held():
        with contextlib.suppress(Exception):
            fleet.stop()
        _kill_listeners_under(fleet.base_dir)
        for h in fleet.hosts:
            if h.proc is not None:  # our child: reap it, so no zombie is left either
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.proc.wait(timeout=REAP_TIMEOUT_S)
        left = _listeners_under(fleet.base_dir)
    if left:
        raise RuntimeError(f"bench: sshd processes survived the teardown: {left}")


def _listeners_under(base: Path) -> list[int]:
    """Live processes that are (or are about to exec) an sshd with a config under ``base``.

    Matched on the command line (``sshd -D -e -f BASE/hN/sshd_config``), not on the
    process name: a host being started may still be the ``unshare``/``sh`` that execs
    its sshd. The listener's sessions are found later, as its descendants.
    """
    needle = f" -f {base}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            continue  # gone meanwhile, or a kernel thread
        if state != "Z" and needle in f" {argv}" and "sshd_config" in argv:
            found.append(int(entry.name))
    return found


def _kill_listeners_under(base: Path) -> None:
    """Freeze and kill each listener's whole tree (``meshrun.testing.procfs``: no psutil)."""
    from meshrun.testing.procfs import kill_tree

    for pid in _listeners_under(base):
        kill_tree(pid)


def fleet_spec(fleet: Fleet, **extra: Any) -> str:
    """The JSON argument of the competitor scripts: how to reach every host of the fleet."""
    return json.dumps(
        {
            "address": LOOPBACK,
            "user": fleet.user,
            "key": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "ports": [h.port for h in fleet.hosts],
            **extra,
        }
    )


def hosts_toml_with_slots(fleet: Fleet, path: Path, slots: int) -> Path:
    """The fleet's inventory, as ``Fleet.write_hosts_toml`` writes it, with ``slots`` in
    [defaults] (which that cannot add), written by meshrun's one hosts.toml writer."""
    from meshrun.config import hostsfile

    defaults: dict[str, hostsfile.Value] = {
        "slots": slots,
        "user": fleet.user,
        "identity": fleet.client_key,
        "known_hosts": fleet.known_hosts,
    }
    hosts: list[dict[str, hostsfile.Value]] = [
        {"name": h.name, "address": LOOPBACK, "port": h.port, "workdir": h.workdir}
        for h in fleet.hosts
    ]
    return hostsfile.write_hosts(path, hosts, defaults=defaults)


# -- timing a tool ------------------------------------------------------------------------


@dataclass
class Tool:
    """One command line to time; ``competitor`` rows compete for "fastest other tool"."""

    key: str
    label: str
    argv: list[str]
    competitor: bool = False
    note: str = ""
    before: Callable[[], None] | None = None  # before every run, not timed (set-up)
    after: Callable[[], None] | None = None  # after every run, not timed (cleanup)
    #: Called before every run; what it returns is called with the run's stderr after it
    #: and says the tool's own duration of the run (None: the run counts as failed).
    own_duration: Callable[[], Callable[[bytes], float | None]] | None = None


@dataclass
class Sample:
    wall_s: float
    exit_code: int | None  # None: timed out
    stderr: bytes
    client_cpu_s: float  # user+sys of the tool's whole process tree (reaped children)
    machine_cpu_s: float  # every CPU on the machine, busy: client + sshd + noise


def time_once(
    tool: Tool, env: dict[str, str], scratch: Path, timeout_s: float = RUN_TIMEOUT_S
) -> Sample:
    """Wall clock of the whole process, from spawn to exit (``before``/``after`` outside).

    stderr goes to a file, not a pipe: an OpenSSH master that goes to the background
    (ControlPersist) keeps it open, and waiting for EOF would then wait for the master.
    """
    if tool.before is not None:
        tool.before()
    err_path = scratch / "stderr.txt"
    with err_path.open("wb") as err:
        cpu0, busy0 = children_cpu_s(), machine_busy_s()
        start = time.perf_counter()
        code: int | None
        try:
            proc = subprocess.run(
                tool.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                timeout=timeout_s,
                check=False,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        except OSError as exc:
            code = 127
            err.write(str(exc).encode())
        wall = time.perf_counter() - start
        sample = Sample(wall, code, b"", children_cpu_s() - cpu0, machine_busy_s() - busy0)
    sample.stderr = err_path.read_bytes() + (b"\n(timed out)" if code is None else b"")
    if tool.after is not None:
        tool.after()
    return sample


@dataclass
class ToolResult:
    tool: Tool
    times_s: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    own_s: list[float] = field(default_factory=list)  # the tool's own durations, if any
    client_cpu_s: list[float] = field(default_factory=list)
    machine_cpu_s: list[float] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    consecutive_failures: int = 0

    @property
    def gave_up(self) -> bool:
        return self.consecutive_failures >= GIVE_UP_AFTER

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    @property
    def median(self) -> float | None:
        return med(self.times_s)

    @property
    def minimum(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    def ratio_to(self, base: ToolResult) -> float | None:
        """This tool's median / ``base``'s (> 1: ``base`` is faster)."""
        return self.median / base.median if self.median is not None and base.median else None

    def as_json(self, **extra: Any) -> dict[str, Any]:
        """The tool's figures for ``--json``, ``extra`` (the benchmark's own) before the
        failures."""
        return {
            "label": self.tool.label,
            "argv": self.tool.argv,
            "competitor": self.tool.competitor,
            "note": self.tool.note,
            "times_s": self.times_s,
            "warmup_s": self.warmup_s,
            "median_s": self.median,
            "min_s": self.minimum,
            "client_cpu_s": self.client_cpu_s,
            "machine_cpu_s": self.machine_cpu_s,
            **extra,
            "failures": self.failures,
        }


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` starting at ``rep % len(items)``: the first of a round rotates each round."""
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


def round_tag(rep: int, warmup: int, repeat: int, word: str = "rep") -> str:
    """``warmup`` or ``rep 2/5``: the start of a round's progress line."""
    return "warmup" if rep < warmup else f"{word} {rep - warmup + 1}/{repeat}"


def time_tools(
    tools: Sequence[Tool], repeat: int, warmup: int, env: dict[str, str], scratch: Path
) -> list[ToolResult]:
    """Every tool once a round, in rotated order; ``warmup`` rounds are not counted.

    A round's times go to stderr as it ends; a tool that failed ``GIVE_UP_AFTER`` runs
    in a row is not run again.
    """
    results = [ToolResult(t) for t in tools]
    for rep in range(warmup + repeat):
        is_warmup = rep < warmup
        line = []
        for r in rotated(results, rep):
            if r.gave_up:
                continue
            measure = r.tool.own_duration() if r.tool.own_duration is not None else None
            s = time_once(r.tool, env, scratch)
            own = measure(s.stderr) if measure is not None else None
            if s.exit_code == 0 and (measure is None or own is not None):
                r.consecutive_failures = 0
                if is_warmup:
                    r.warmup_s.append(s.wall_s)
                else:
                    r.times_s.append(s.wall_s)
                    r.client_cpu_s.append(s.client_cpu_s)
                    r.machine_cpu_s.append(s.machine_cpu_s)
                    if own is not None:
                        r.own_s.append(own)
                line.append(f"{r.tool.key} {s.wall_s:.2f}")
            else:
                r.consecutive_failures += 1
                r.failures.append(
                    {
                        "rep": rep,
                        "warmup": is_warmup,
                        "exit_code": s.exit_code,
                        "wall_s": s.wall_s,
                        "stderr_tail": tail(s.stderr),
                    }
                )
                line.append(f"{r.tool.key} FAIL({s.exit_code})")
        print(
            f"  {round_tag(rep, warmup, repeat)}: " + ", ".join(line), file=sys.stderr, flush=True
        )
    return results


def failure_notes(results: Sequence[ToolResult]) -> list[str]:
    """Under a table: each failed tool's first failure, with the tail of its stderr."""
    out = []
    for r in results:
        for f in r.failures[:1]:
            out.append(
                f"\n!! {r.tool.label} failed (exit {f['exit_code']}, "
                f"{len(r.failures)} failing run(s)); stderr tail:\n"
                + "\n".join("   " + x for x in (f["stderr_tail"] or "(empty)").splitlines())
            )
    return out


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


K = TypeVar("K", bound=Keyed)


def keep_only(items: Sequence[K], only: str | None) -> list[K]:
    """``--only KEYS``: the rows named (comma-separated) and meshrun's, which is always run."""
    if not only:
        return list(items)
    keep = set(only.split(",")) | {"meshrun"}
    return [x for x in items if x.key in keep]


# -- the run's record ---------------------------------------------------------------------


def tree_state() -> dict[str, Any]:
    """Which meshrun was measured: HEAD and the files changed in the working tree."""

    def git(*argv: str) -> str:
        try:
            r = subprocess.run(
                ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
            )
        except OSError:
            return ""
        return r.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "meshrun").splitlines()]
    summary = f"{head or '?'}" + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")
    return {"head": head, "uncommitted": dirty, "summary": summary}


def new_doc(
    benchmark: str, args: argparse.Namespace | None = None, *options: str, **fields: Any
) -> dict[str, Any]:
    """The JSON document's header (``--json FILE``): when, on what, which meshrun, with
    the command line's ``options`` (by their ``args`` names) and ``fields``."""
    return {
        "benchmark": benchmark,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        **{name: getattr(args, name) for name in options},
        **fields,
        "meshrun_tree": tree_state(),
    }


def run_benchmark(
    name: str,
    body: Callable[[], int],
    doc: dict[str, Any] | None = None,
    json_path: Path | None = None,
    *,
    stopped: str = "fleet stopped",
) -> int:
    """Run a benchmark's body: exit code 130 on Ctrl-C/SIGTERM/SIGHUP (the fleets are
    stopped by then), and ``doc`` written to ``json_path`` whatever happened."""
    stop_on_signals()
    try:
        return body()
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; {stopped}", file=sys.stderr)
        return 130
    finally:
        if json_path and doc is not None:
            json_path.write_text(json.dumps(doc, indent=2) + "\n")

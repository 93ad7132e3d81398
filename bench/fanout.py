"""Fan-out benchmark: ``true`` on every host of a loopback fleet, meshrun vs the others.

Every tool runs as a whole process and is timed by wall clock from spawn to exit, so
interpreter start-up, imports, handshakes, the command and teardown all count, as they
do for a user at a shell prompt. Within each repetition the tools run one after another
(round-robin, the starting tool rotating each repetition) so that machine noise is
spread over all of them instead of landing on one.

    bench/fanout --hosts 8,64 --repeat 7 --warmup 1 --json /tmp/fanout.json

Rows (the competitors are parallel-ssh, Fabric and both GNU parallel rows; the last three
rows are references, not competitors):

- meshrun exec --hosts HOSTS_TOML -q -- true      (checks host keys)
- parallel-ssh ParallelSSHClient script           (does NOT check host keys)
- Fabric ThreadingGroup script                    (checks host keys: RejectPolicy)
- GNU parallel --nonall -S ...                    (OpenSSH, checks host keys)
  - once with OpenSSH's default key exchange, once with curve25519-sha256, the kex
    paramiko negotiates, so the handshake CPU cost is the same as meshrun's
- meshrun --help, python3 -c pass                 (start-up cost and the floor)
- meshrun exec -q -- true without --hosts         (start-up + real CLI parse, runs locally:
                                                   --help skips the option parsing)

The fleet's sshd processes run on this machine too, so server-side work (fork, kex,
session shell) competes for the same CPUs as the client under test.

By default Python may cache bytecode in a private temp dir (--bytecode cache), as for any
pip-installed package, even if the environment sets PYTHONDONTWRITEBYTECODE=1;
--bytecode env measures the environment as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshrun.testing.fleet import LOOPBACK, Fleet  # noqa: E402

RUN_TIMEOUT_S = 180.0
HELP_TARGET_S = 0.3
STDERR_TAIL_LINES = 8
#: A tool that failed this many runs in a row is not run again for that fleet size.
GIVE_UP_AFTER = 2

PSSH_SCRIPT = '''\
"""parallel-ssh: `true` on every host. NOTE: parallel-ssh does not check host keys."""
import json
import sys

from pssh.clients import ParallelSSHClient
from pssh.config import HostConfig

spec = json.loads(sys.argv[1])
ports = spec["ports"]
client = ParallelSSHClient(
    [spec["address"]] * len(ports),
    user=spec["user"],
    pkey=spec["key"],
    host_config=[HostConfig(port=p, user=spec["user"], private_key=spec["key"]) for p in ports],
    pool_size=max(10, len(ports)),
    allow_agent=False,
    num_retries=1,
    timeout=30,
)
output = client.run_command("true", stop_on_errors=True)
client.join(output)
bad = [(o.host, o.exit_code, o.exception) for o in output if o.exit_code != 0]
if bad:
    sys.exit(f"parallel-ssh: {len(bad)} host(s) failed: {bad[:5]}")
'''

FABRIC_SCRIPT = '''\
"""Fabric ThreadingGroup: `true` on every host, host keys checked against known_hosts."""
import json
import sys

import paramiko
from fabric import Connection, ThreadingGroup
from fabric.exceptions import GroupException

spec = json.loads(sys.argv[1])
connections = []
for port in spec["ports"]:
    c = Connection(
        spec["address"],
        user=spec["user"],
        port=port,
        connect_timeout=30,
        connect_kwargs={"key_filename": spec["key"], "look_for_keys": False, "allow_agent": False},
    )
    # Fabric auto-adds unknown keys by default; check them like OpenSSH would instead.
    c.client.load_host_keys(spec["known_hosts"])
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    connections.append(c)
group = ThreadingGroup.from_connections(connections)
try:
    results = group.run("true", hide=True, in_stream=False)
except GroupException as exc:
    bad = {str(c.port): repr(r) for c, r in exc.result.items() if not getattr(r, "ok", False)}
    sys.exit(f"fabric: {len(bad)} host(s) failed: {list(bad.items())[:5]}")
finally:
    group.close()
bad_codes = [r.exited for r in results.values() if r.exited != 0]
if bad_codes or len(results) != len(spec["ports"]):
    sys.exit(f"fabric: bad results: {bad_codes}")
'''


@dataclass
class Tool:
    """One command line to time; ``competitor`` rows compete for "fastest other tool"."""

    key: str
    label: str
    argv: list[str]
    competitor: bool = False
    note: str = ""


@dataclass
class ToolResult:
    tool: Tool
    times_s: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
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
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.client_cpu_s) if self.client_cpu_s else None

    @property
    def machine_cpu(self) -> float | None:
        return statistics.median(self.machine_cpu_s) if self.machine_cpu_s else None

    @property
    def minimum(self) -> float | None:
        return min(self.times_s) if self.times_s else None


# -- tool command lines -----------------------------------------------------------------


def meshrun_executable() -> str:
    """The meshrun console script of this interpreter (not a pyenv shim, if possible)."""
    beside = Path(sys.executable).parent / "meshrun"
    if beside.exists():
        return str(beside)
    found = shutil.which("meshrun")
    if found is None:
        sys.exit("fanout: meshrun is not installed (pip install -e .)")
    return found


def sshlogin_file(fleet: Fleet, path: Path, *, kex: str | None) -> Path:
    """One GNU parallel --sshlogin per host: ``1/ssh -p PORT ... user@127.0.0.1``."""
    lines = []
    for h in fleet.hosts:
        ssh = [
            "ssh",
            "-p",
            str(h.port),
            "-i",
            str(fleet.client_key),
            "-o",
            f"UserKnownHostsFile={fleet.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ]
        if kex:
            ssh += ["-o", f"KexAlgorithms={kex}"]
        lines.append(f"1/{shlex.join(ssh)} {fleet.user}@{LOOPBACK}\n")
    path.write_text("".join(lines))
    return path


def build_tools(fleet: Fleet, workdir: Path, python: str) -> list[Tool]:
    spec = json.dumps(
        {
            "address": LOOPBACK,
            "user": fleet.user,
            "key": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "ports": [h.port for h in fleet.hosts],
        }
    )
    pssh_py = workdir / "pssh_true.py"
    pssh_py.write_text(PSSH_SCRIPT)
    fabric_py = workdir / "fabric_true.py"
    fabric_py.write_text(FABRIC_SCRIPT)
    parallel = shutil.which("parallel") or "parallel"
    gnu = [parallel, "--nonall", "-j0", "--no-notice"]
    meshrun = meshrun_executable()
    tools = [
        Tool(
            "meshrun",
            "meshrun exec",
            [meshrun, "exec", "--hosts", str(fleet.hosts_toml), "-q", "--", "true"],
            note="host keys checked",
        ),
        Tool(
            "pssh",
            "parallel-ssh",
            [python, str(pssh_py), spec],
            competitor=True,
            note="host keys NOT checked",
        ),
        Tool(
            "fabric",
            "fabric ThreadingGroup",
            [python, str(fabric_py), spec],
            competitor=True,
            note="host keys checked (RejectPolicy)",
        ),
        Tool(
            "parallel",
            "GNU parallel",
            [
                *gnu,
                "--sshloginfile",
                str(sshlogin_file(fleet, workdir / "ssh.default", kex=None)),
                "true",
            ],
            competitor=True,
            note="OpenSSH default kex",
        ),
        Tool(
            "parallel-x25519",
            "GNU parallel x25519",
            [
                *gnu,
                "--sshloginfile",
                str(sshlogin_file(fleet, workdir / "ssh.x25519", kex="curve25519-sha256")),
                "true",
            ],
            competitor=True,
            note="KexAlgorithms=curve25519-sha256",
        ),
        Tool("meshrun-help", "meshrun --help", [meshrun, "--help"], note="start-up"),
        Tool(
            "meshrun-local",
            "meshrun exec (local)",
            [meshrun, "exec", "-q", "--", "true"],
            note="no --hosts: start-up + CLI parse + local run, no SSH",
        ),
        Tool("python", "python3 -c pass", [python, "-c", "pass"], note="floor"),
    ]
    return tools


# -- running ----------------------------------------------------------------------------


def tail(text: bytes, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.decode("utf-8", "replace").rstrip().splitlines()[-lines:])


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Sample:
    wall_s: float
    exit_code: int | None  # None: timed out
    stderr: bytes
    client_cpu_s: float  # user+sys of the tool's whole process tree (reaped children)
    machine_cpu_s: float  # every CPU on the machine, busy: client + sshd + noise


def time_once(tool: Tool, env: dict[str, str]) -> Sample:
    """Wall clock of the whole process, from spawn to exit."""
    cpu0, busy0 = children_cpu_s(), machine_busy_s()
    start = time.perf_counter()
    code: int | None
    try:
        proc = subprocess.run(
            tool.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = None, (exc.stderr or b"") + b"\n(timed out)"
    except OSError as exc:
        code, err = 127, str(exc).encode()
    wall = time.perf_counter() - start
    return Sample(wall, code, err, children_cpu_s() - cpu0, machine_busy_s() - busy0)


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


def bench_fleet(
    tools: Sequence[Tool], repeat: int, warmup: int, env: dict[str, str]
) -> list[ToolResult]:
    results = [ToolResult(t) for t in tools]
    total = warmup + repeat
    for rep in range(total):
        is_warmup = rep < warmup
        shift = rep % len(results)
        order = results[shift:] + results[:shift]
        line = []
        for r in order:
            if r.gave_up:
                continue
            sample = time_once(r.tool, env)
            if sample.exit_code == 0:
                r.consecutive_failures = 0
                if is_warmup:
                    r.warmup_s.append(sample.wall_s)
                else:
                    r.times_s.append(sample.wall_s)
                    r.client_cpu_s.append(sample.client_cpu_s)
                    r.machine_cpu_s.append(sample.machine_cpu_s)
                line.append(f"{r.tool.key} {sample.wall_s:.2f}")
            else:
                r.consecutive_failures += 1
                r.failures.append(
                    {
                        "rep": rep,
                        "warmup": is_warmup,
                        "exit_code": sample.exit_code,
                        "wall_s": sample.wall_s,
                        "stderr_tail": tail(sample.stderr),
                    }
                )
                line.append(f"{r.tool.key} FAIL({sample.exit_code})")
        tag = "warmup" if is_warmup else f"rep {rep - warmup + 1}/{repeat}"
        print(f"  {tag}: " + ", ".join(line), file=sys.stderr, flush=True)
    return results


# -- reporting --------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def render(hosts: int, results: Sequence[ToolResult], repeat: int, bytecode: str = "") -> str:
    mesh = next(r for r in results if r.tool.key == "meshrun")
    base = mesh.median
    out = [
        f"\n== {hosts} hosts: `true` on every host, wall clock of the whole process, "
        f"{repeat} runs{', bytecode ' + bytecode if bytecode else ''} ==",
        f"{'tool':<24} {'median s':>9} {'min s':>8} {'ratio':>7} {'cpu s':>7} {'box s':>7}"
        f"  {'ok':>5}  note",
    ]
    for r in results:
        ratio = r.median / base if (r.median is not None and base) else None
        ok = f"{len(r.times_s)}/{repeat}"
        status = ""
        if r.failed:
            status = f"  FAILED {len(r.failures)} run(s)"
            if r.gave_up:
                status += f" (not run again after {GIVE_UP_AFTER} failures in a row)"
        out.append(
            f"{r.tool.label:<24} {fmt(r.median):>9} {fmt(r.minimum):>8} {fmt(ratio, '.2f'):>7} "
            f"{fmt(r.cpu, '.2f'):>7} {fmt(r.machine_cpu, '.2f'):>7}  {ok:>5}  {r.tool.note}{status}"
        )
    out.append(
        "ratio = tool median / meshrun exec median (>1: meshrun is faster); cpu s = user+sys "
        "of the tool's process tree;\nbox s = busy CPU of the whole machine during the run "
        "(the tool + the fleet's sshd sessions + noise), medians"
    )
    rivals = [r for r in results if r.tool.competitor and r.median is not None]
    if mesh.failed or base is None:
        out.append("meshrun exec FAILED: no verdict")
    elif rivals:
        best = min(rivals, key=lambda r: r.median or 0.0)
        assert best.median is not None
        verdict = "YES" if base <= best.median else "NO"
        flaky = " (it failed some runs)" if best.failed else ""
        out.append(
            f"fastest competitor: {best.tool.label}{flaky} {best.median:.3f}s; "
            f"meshrun {base:.3f}s — meshrun at or below it: {verdict} "
            f"(meshrun/best = {base / best.median:.2f})"
        )
    helprow = next((r for r in results if r.tool.key == "meshrun-help"), None)
    if helprow is not None and helprow.median is not None:
        verdict = "ok" if helprow.median < HELP_TARGET_S else "OVER TARGET"
        out.append(
            f"meshrun --help median {helprow.median:.3f}s (target < {HELP_TARGET_S}s: {verdict})"
        )
    for r in results:
        for f in r.failures[:1]:
            out.append(
                f"\n!! {r.tool.label} failed (exit {f['exit_code']}, "
                f"{len(r.failures)} failing run(s)); stderr tail:\n"
                + "\n".join("   " + x for x in (f["stderr_tail"] or "(empty)").splitlines())
            )
    return "\n".join(out)


def as_json(hosts: int, results: Sequence[ToolResult]) -> dict[str, Any]:
    mesh = next(r for r in results if r.tool.key == "meshrun")
    return {
        "hosts": hosts,
        "tools": {
            r.tool.key: {
                "label": r.tool.label,
                "argv": r.tool.argv,
                "competitor": r.tool.competitor,
                "note": r.tool.note,
                "times_s": r.times_s,
                "warmup_s": r.warmup_s,
                "median_s": r.median,
                "min_s": r.minimum,
                "client_cpu_s": r.client_cpu_s,
                "machine_cpu_s": r.machine_cpu_s,
                "ratio_to_meshrun": (
                    r.median / mesh.median if r.median is not None and mesh.median else None
                ),
                "failures": r.failures,
            }
            for r in results
        },
    }


# -- main -------------------------------------------------------------------------------


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


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def running_fleet(count: int, base: Path) -> Iterator[Fleet]:
    fleet = Fleet.start(count, base)
    try:
        yield fleet
    finally:
        fleet.stop()


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("host counts must be >= 1")
    return sizes


SSH_CONFIG_CHOICES = ("none", "200", "200-all")


def write_ssh_config(path: Path, kind: str) -> Path | None:
    """A user's ssh_config of 200 ``Host`` blocks (other machines, as most people's is).

    ``200``: none of them is a fleet host, so meshrun's scan skips ``ssh -G``;
    ``200-all``: a ``Host *`` block also sets ServerAliveInterval (a common habit),
    which can change how every host is reached: ``ssh -G`` runs once per host.
    """
    if kind == "none":
        return None
    blocks = []
    for i in range(200):
        blocks.append(
            f"Host srv-{i:03d} srv-{i:03d}.corp\n  HostName 10.{i // 250}.{i % 250}.9\n"
            f"  User deploy\n  Port {2200 + i % 7}\n  IdentityFile ~/.ssh/corp_{i % 5}\n"
            + ("  ProxyJump bastion.corp\n" if i % 3 == 0 else "")
        )
    if kind == "200-all":
        blocks.append("Host *\n  ServerAliveInterval 60\n")
    path.write_text("\n".join(blocks))
    return path


def resolution_cost(fleet: Fleet, config: Path | None, repeat: int = 5) -> str:
    """meshrun's ssh_config resolution for the fleet, in process: the per-host cost."""
    from meshrun.config.inventory import load_inventory
    from meshrun.transport.ssh import SSHConnector

    hosts = load_inventory(fleet.hosts_toml)
    times = []
    connector = None
    for _ in range(repeat):
        started = time.perf_counter()
        connector = SSHConnector(ssh_config_path=str(config) if config else "/nonexistent")
        connector.prepare(hosts)
        times.append(time.perf_counter() - started)
        connector.close()
    assert connector is not None
    scan = connector._resolver.scan
    asked = sum(1 for h in hosts if scan.may_change(h.ssh_alias, frozenset()))
    median = statistics.median(times)
    return (
        f"ssh_config resolution ({'no config' if config is None else config.name}): "
        f"{median * 1000:.1f} ms for {len(hosts)} hosts = {median * 1000 / len(hosts):.2f} "
        f"ms/host (median of {repeat}; ssh -G asked for {asked} of {len(hosts)} hosts)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=parse_sizes, default=[8, 64], help="fleet sizes (8,64)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per tool (7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per tool first (1)")
    parser.add_argument(
        "--only",
        metavar="KEYS",
        help="comma-separated tool keys to run besides meshrun (pssh, fabric, parallel, "
        "parallel-x25519, meshrun-help, meshrun-local, python; default: all)",
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--ssh-config",
        choices=SSH_CONFIG_CHOICES,
        default="200",
        help="the ssh_config meshrun reads (MESHRUN_SSH_CONFIG): 200 Host blocks for other "
        "machines (200, default), the same plus `Host *` with ServerAliveInterval "
        "(200-all: ssh -G runs for every host), or none",
    )
    parser.add_argument(
        "--bytecode",
        choices=["cache", "env"],
        default="cache",
        help="cache: let Python cache .pyc files in a private temp dir, as a normal "
        "install does (default; warmed by --warmup); env: leave PYTHONDONTWRITEBYTECODE "
        "as it is in the environment",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    python = sys.executable
    doc: dict[str, Any] = {
        "benchmark": "fanout",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "repeat": args.repeat,
        "warmup": args.warmup,
        "bytecode": args.bytecode,
        "pythondontwritebytecode_in_env": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "meshrun_tree": tree_state(),
        "runs": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="meshrun-fanout-") as tmp:
            env = tool_env(Path(tmp) / "pycache" if args.bytecode == "cache" else None)
            ssh_config = write_ssh_config(Path(tmp) / "ssh_config", args.ssh_config)
            if ssh_config is not None:
                env["MESHRUN_SSH_CONFIG"] = str(ssh_config)
            doc["ssh_config"] = args.ssh_config
            print(
                f"bytecode: {args.bytecode}; meshrun tree: {doc['meshrun_tree']['summary']}",
                file=sys.stderr,
            )
            for count in args.hosts:
                base = Path(tmp) / f"fleet{count}"
                print(f"starting a fleet of {count} hosts ...", file=sys.stderr, flush=True)
                with running_fleet(count, base) as fleet:
                    tools = build_tools(fleet, base, python)
                    if args.only:
                        keep = set(args.only.split(",")) | {"meshrun"}
                        tools = [t for t in tools if t.key in keep]
                    results = bench_fleet(tools, args.repeat, args.warmup, env)
                    cost = resolution_cost(fleet, ssh_config)
                table = render(count, results, args.repeat, args.bytecode)
                print(table, flush=True)
                print(cost, flush=True)
                doc["runs"].append(as_json(count, results))
    except KeyboardInterrupt:
        print("\nfanout: interrupted; fleets stopped", file=sys.stderr)
        return 130
    finally:
        if args.json:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = any(t["failures"] for run in doc["runs"] for t in run["tools"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

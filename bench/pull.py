"""Pull benchmark: bring ~200 MB of mixed-size files home from 4 hosts, meshrun vs the others.

Every host of a loopback fleet gets the same shape of data in its workdir, created once
(incompressible, ``os.urandom``): many small files (1-64 KiB, log-uniform, in nested
directories) and a few large ones filling the rest of the host's share. Each round, every
contender pulls all hosts at once (one thread per host) into a fresh empty local
directory; the contenders take turns, the first one rotating every round, so machine
noise is spread over all of them. Figures are medians over the rounds.

    bench/pull --repeat 7 --warmup 1 --profile 3 --json /tmp/pull.json

Contenders:

- meshrun                ``integrity.collect`` (hash every file on the host) then
                         ``integrity.pull`` (rsync carried over meshrun's own pooled
                         SSH connection through the channel relay, every
                         sha256 verified on arrival, renamed into place): what
                         ``meshrun dispatch`` does for a task's outputs. A fresh
                         SSHConnector per round, so its SSH handshake is counted.
- meshrun, conn. open    the same on a connector whose connections are already open, as
                         in a dispatch run (the tasks have just run on them). Reference.
- rsync -a               plain ``rsync -a`` of the whole directory over OpenSSH's ssh with
                         meshrun's settings for the host (its key, port, user, known_hosts,
                         strict checking: ``rsync.ssh_command``), as users run rsync.
- Fabric get             one ``fabric.Connection`` per host (host keys checked, TCP_NODELAY
                         set like the other benches do), one ``find`` to list the files,
                         then ``Connection.get`` per file.
- meshrun stream*        counterfactual, not meshrun code: collect as meshrun does, then
                         stream the files over that same SSH connection (no rsync, no
                         second handshake), hash them while writing, compare with the
                         host's sha256, install with ``publish.install_received``. Sizes what a
                         transfer without rsync would be worth. Reference.

Every contender's result is checked after its timer stops: the same files with the same
sizes (and, on the first round, the same bytes) as on the hosts.

``--profile N`` then runs meshrun N more times on one host at a time (no concurrency) with
timers around its phases, to show where its time and the machine's CPU go: connect,
remote hashing, the rsync probe, the transfer, local verification, installing.

Everything runs in this one process (meshrun and Fabric as libraries, rsync as child
processes); the fleet's sshd processes share this machine's CPUs with it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import filecmp
import functools
import hashlib
import os
import random
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from competitors.fabric_client import connection, open_nodelay
from competitors.rsync_ssh import new_connector, remote_shell
from harness import (
    LOOPBACK,
    add_output_options,
    add_rounds_options,
    fmt,
    keep_only,
    machine_busy_s,
    med,
    new_doc,
    rotated,
    round_tag,
    run_benchmark,
    running_fleet,
)

from meshrun.config.inventory import Host, load_inventory
from meshrun.integrity import collect, publish
from meshrun.integrity import pull as pulling
from meshrun.testing.fleet import Fleet, SimHost
from meshrun.transport import rsync as rsync_module
from meshrun.transport import sftp as sftp_module
from meshrun.transport.ssh import SSHConnection, SSHConnector

MB = 1_000_000
KIB = 1024
#: meshrun should reach at least this fraction of rsync's throughput (the issue's target).
TARGET_VS_RSYNC = 0.8
#: Where the data lives in each host's workdir; what meshrun collects (``OUT_DIR/**``).
OUT_DIR = "out"


# -- the data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What each host holds: ``small`` files of SMALL_MIN..SMALL_MAX bytes, ``large`` big ones."""

    hosts: int
    total_bytes: int
    small: int
    small_min: int
    small_max: int
    large: int

    def files(self, index: int) -> list[tuple[str, int]]:
        """(relative path, size) of host ``index``'s files; the same seed, the same sizes."""
        rng = random.Random(7919 * (index + 1))
        out: list[tuple[str, int]] = []
        for i in range(self.small):
            size = int(self.small_min * (self.small_max / self.small_min) ** rng.random())
            out.append((f"{OUT_DIR}/small/d{i % 16:02d}/e{(i // 16) % 8}/f{i:04d}.bin", size))
        rest = self.total_bytes // self.hosts - sum(s for _, s in out)
        if self.large:
            if rest < self.large * self.small_max:
                raise SystemExit(
                    f"pull: {self.small} small files leave {rest} bytes per host for "
                    f"{self.large} large ones; raise --total-mb or lower --small-files"
                )
            weights = [1.0 + 0.25 * k for k in range(self.large)]  # 1 : 1.25 : 1.5 ...
            sizes = [int(rest * w / sum(weights)) for w in weights]
            sizes[-1] += rest - sum(sizes)
            out += [(f"{OUT_DIR}/large/big{k}.bin", s) for k, s in enumerate(sizes)]
        return out


def make_data(root: Path, files: Sequence[tuple[str, int]]) -> None:
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 << 20))
                f.write(chunk)
                left -= len(chunk)


@dataclass
class Target:
    """One host as every contender sees it."""

    sim: SimHost
    host: Host
    files: list[tuple[str, int]]

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def source(self) -> Path:
        return self.sim.workdir

    @property
    def nbytes(self) -> int:
        return sum(s for _, s in self.files)


@dataclass
class Bench:
    fleet: Fleet
    targets: list[Target]
    warm: SSHConnector  # connections opened before the clock starts ("conn. open")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.targets)

    @property
    def nfiles(self) -> int:
        return sum(len(t.files) for t in self.targets)


def check(dest: Path, targets: Sequence[Target], *, contents: bool) -> str | None:
    """None when ``dest/<host>/`` holds exactly each host's files (sizes; bytes too)."""
    for t in targets:
        base = dest / t.name
        got = {
            str(p.relative_to(base)): p for p in base.rglob("*") if p.is_file() or p.is_symlink()
        }
        want = dict(t.files)
        if set(got) != set(want):
            missing = sorted(set(want) - set(got))[:3]
            extra = sorted(set(got) - set(want))[:3]
            return f"{t.name}: {len(got)} files, want {len(want)}; missing {missing} extra {extra}"
        for rel, path in got.items():
            if path.is_symlink() or path.stat().st_size != want[rel]:
                return f"{t.name}: {rel}: wrong size or not a regular file"
            if contents and not filecmp.cmp(t.source / rel, path, shallow=False):
                return f"{t.name}: {rel}: content differs"
    return None


# -- meshrun's phases, timed from outside -------------------------------------------------


class PhaseClock:
    """Per-thread inclusive timers (wall s, machine busy CPU s) around named phases."""

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self) -> dict[str, list[float]]:
        phases: dict[str, list[float]] = {}
        self._local.phases = phases
        return phases

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        phases: dict[str, list[float]] | None = getattr(self._local, "phases", None)
        t0, c0 = time.perf_counter(), machine_busy_s()
        try:
            yield
        finally:
            if phases is not None:
                acc = phases.setdefault(name, [0.0, 0.0])
                acc[0] += time.perf_counter() - t0
                acc[1] += machine_busy_s() - c0

    def wrap(self, module: Any, attr: str, name: str) -> None:
        """Time ``module.attr`` as phase ``name`` (skipped if meshrun renamed it)."""
        original = getattr(module, attr, None)
        if original is None or getattr(original, "_bench_phase", None):
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return original(*args, **kwargs)

        timed._bench_phase = name  # type: ignore[attr-defined]
        setattr(module, attr, timed)


CLOCK = PhaseClock()
CLOCK.wrap(SSHConnection, "get_files", "pull_rsync")  # the rsync probe, then the transfer
CLOCK.wrap(sftp_module, "get_files", "pull_sftp")
CLOCK.wrap(pulling, "_verify", "verify")
CLOCK.wrap(pulling, "install_received", "install")
CLOCK.wrap(rsync_module, "run", "transfer")

#: Exclusive phases derived from the inclusive timers: (label, what it is).
PHASES = [
    ("connect", "TCP + kex + host key + auth (paramiko), the cold row only"),
    ("remote hash", "integrity.collect: python3 on the host walks + sha256s every file"),
    ("rsync probe", "`command -v rsync` on the host + the NUL list file"),
    ("transfer", "rsync --files-from over the pooled connection (channel relay)"),
    ("sftp", "SFTP fallback (only if rsync is missing)"),
    ("verify", "local sha256 + size of every file that arrived"),
    ("install", "chmod + rename every file into place"),
    ("pull other", "temp dir create/remove, mkdirs"),
]


def exclusive(raw: dict[str, list[float]], col: int) -> dict[str, float]:
    def g(k: str) -> float:
        return raw.get(k, [0.0, 0.0])[col]

    out = {
        "connect": g("connect"),
        "remote hash": g("collect"),
        "rsync probe": g("pull_rsync") - g("transfer") - g("pull_sftp"),
        "transfer": g("transfer"),
        "sftp": g("pull_sftp"),
        "verify": g("verify"),
        "install": g("install"),
    }
    # The SFTP fallback runs inside get_files ("pull_rsync"), as rsync does.
    out["pull other"] = g("pull") - g("pull_rsync") - g("verify") - g("install")
    out["total"] = g("connect") + g("collect") + g("pull")
    return out


# -- contenders ---------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    label: str
    note: str
    run: Callable[[Bench, Path], list[dict[str, list[float]]]]


def per_host(bench: Bench, fn: Callable[[Target], dict[str, list[float]]]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(len(bench.targets)) as pool:
        return list(pool.map(fn, bench.targets))


def meshrun_one(connector: SSHConnector, target: Target, dest: Path) -> dict[str, list[float]]:
    """What dispatch's ``collect`` does for one task: collect, then pull (verify inside)."""
    phases = CLOCK.begin()
    host = target.host
    with CLOCK.phase("connect"):
        conn = connector.connect(host)
    with CLOCK.phase("collect"):
        files = collect.collect(conn, host.workdir, [f"{OUT_DIR}/**"])
    with CLOCK.phase("pull"):
        pulling.pull(connector, host, files, dest / host.name)
    return phases


def on_new_connector(
    bench: Bench, one: Callable[[SSHConnector, Target], dict[str, list[float]]]
) -> list[dict[str, list[float]]]:
    """``one(connector, target)`` for every host at once, on a connector made for it."""
    connector = new_connector()
    try:
        return per_host(bench, lambda t: one(connector, t))
    finally:
        connector.close()


def run_meshrun(bench: Bench, dest: Path) -> list[dict[str, list[float]]]:
    return on_new_connector(bench, lambda c, t: meshrun_one(c, t, dest))


def run_meshrun_warm(bench: Bench, dest: Path) -> list[dict[str, list[float]]]:
    return per_host(bench, lambda t: meshrun_one(bench.warm, t, dest))


def rsync_argv(connector: SSHConnector, target: Target, dest: Path) -> list[str]:
    rsh, login = remote_shell(target.host, connector)
    source = f"{login}:{target.host.workdir.rstrip('/')}/{OUT_DIR}/"
    return ["rsync", "-a", "-e", rsh, source, f"{dest / target.name / OUT_DIR}/"]


def run_rsync(bench: Bench, dest: Path) -> list[dict[str, list[float]]]:
    connector = new_connector()  # never connects: only builds the argv, as meshrun does
    argvs = {t.name: rsync_argv(connector, t, dest) for t in bench.targets}

    def one(t: Target) -> dict[str, list[float]]:
        done = subprocess.run(argvs[t.name], capture_output=True, check=False)
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise RuntimeError(f"{t.name}: rsync exit {done.returncode}: {err}")
        return {}

    return per_host(bench, one)


def fabric_one(bench: Bench, t: Target, dest: Path) -> dict[str, list[float]]:
    fleet = bench.fleet
    c = connection(LOOPBACK, fleet.user, t.sim.port, str(fleet.client_key), str(fleet.known_hosts))
    try:
        open_nodelay(c)
        root = t.host.workdir.rstrip("/")
        listing = c.run(
            f"cd {shlex.quote(root)} && find {OUT_DIR} -type f -print0",
            hide=True,
            in_stream=False,
        )
        for rel in (n for n in listing.stdout.split("\0") if n):
            c.get(f"{root}/{rel}", local=str(dest / t.name / rel))
    finally:
        c.close()
    return {}


def run_fabric(bench: Bench, dest: Path) -> list[dict[str, list[float]]]:
    return per_host(bench, lambda t: fabric_one(bench, t, dest))


# -- counterfactual: pull over the open SSH connection, no rsync -----------------------------
#
# Not meshrun code: sizes a suggestion. pull() always fetches into an empty private
# directory, so rsync's delta transfer never helps it; what it costs is a second SSH
# connection (OpenSSH's handshake), a probe, five processes in the data path and a
# second read of every file to verify it. This row streams the collected files over the
# connection collect already used (one python3 on the host, chunk-framed), hashes them
# while writing, compares with collect's sha256 and installs them with meshrun's own
# publish.install_received: the same guarantees (hash on host, verify on arrival, all or
# nothing).

STREAM_SENDER = r"""
import os, struct, sys
out = sys.stdout.buffer
for name in sys.stdin.buffer.read().split(b"\0")[:-1]:
    try:
        handle = open(name, "rb", buffering=0)
    except OSError as exc:
        out.write(struct.pack(">I", 0xFFFFFFFF) + str(exc).encode("utf-8", "replace"))
        break
    with handle:
        while True:
            chunk = handle.read(1 << 20)
            out.write(struct.pack(">I", len(chunk)))
            if not chunk:
                break
            out.write(chunk)
out.flush()
"""
STREAM_ERROR = 0xFFFFFFFF


class ChannelReader:
    """Framed reads from a paramiko channel without copying the payload around."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.buf = b""
        self.pos = 0

    def _fill(self) -> None:
        data: bytes = self.channel.recv(1 << 20)
        if not data:
            raise EOFError("the host closed the stream early")
        self.buf = self.buf[self.pos :] + data
        self.pos = 0

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._fill()
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def pieces(self, n: int) -> Iterator[memoryview]:
        while n:
            if self.pos == len(self.buf):
                self._fill()
            k = min(n, len(self.buf) - self.pos)
            yield memoryview(self.buf)[self.pos : self.pos + k]
            self.pos += k
            n -= k


def stream_one(connector: SSHConnector, target: Target, dest: Path) -> dict[str, list[float]]:
    host = target.host
    conn = connector.connect(host)
    entries = sorted(collect.collect(conn, host.workdir, [f"{OUT_DIR}/**"]), key=lambda e: e.path)
    home = dest / host.name
    with tempfile.TemporaryDirectory(prefix=".bench-stream-", dir=home) as tmp:
        recv = Path(tmp)
        channel: Any = conn.transport.open_session()
        try:
            channel.exec_command(
                f"cd {shlex.quote(host.workdir)} && exec python3 -c {shlex.quote(STREAM_SENDER)}"
            )
            channel.sendall(b"".join(e.path.encode("utf-8") + b"\0" for e in entries))
            channel.shutdown_write()
            reader = ChannelReader(channel)
            made: set[str] = set()
            for e in entries:
                path = recv / e.path
                if path.parent.as_posix() not in made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(path.parent.as_posix())
                digest, size = hashlib.sha256(), 0
                with open(path, "wb", buffering=0) as f:
                    while True:
                        (n,) = struct.unpack(">I", reader.take(4))
                        if n == 0:
                            break
                        if n == STREAM_ERROR:
                            raise RuntimeError(f"{host.name}: {e.path}: cannot read on host")
                        for piece in reader.pieces(n):
                            digest.update(piece)
                            f.write(piece)
                            size += len(piece)
                if (size, digest.hexdigest()) != (e.size, e.sha256):
                    raise RuntimeError(f"{host.name}: {e.path} changed in transit")
            if channel.recv_exit_status() != 0:
                raise RuntimeError(f"{host.name}: the sender failed")
        finally:
            channel.close()
        publish.install_received(entries, recv, home, {})
    return {}


def run_stream(bench: Bench, dest: Path) -> list[dict[str, list[float]]]:
    return on_new_connector(bench, lambda c, t: stream_one(c, t, dest))


CONTENDERS = [
    Contender(
        "meshrun",
        "meshrun",
        "collect (hash on host) + pull (rsync) + verify; new connection",
        run_meshrun,
    ),
    Contender(
        "meshrun-open",
        "meshrun, conn. open",
        "the same on an open connection, as in dispatch",
        run_meshrun_warm,
    ),
    Contender("rsync", "rsync -a", "whole dir, OpenSSH with meshrun's settings", run_rsync),
    Contender("fabric", "Fabric get", "find + Connection.get per file", run_fabric),
    Contender(
        "stream",
        "meshrun stream*",
        "counterfactual: collect, then stream over the same connection, hash while writing",
        run_stream,
    ),
]


# -- rounds -------------------------------------------------------------------------------


@dataclass
class Result:
    contender: Contender
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    box_s: list[float] = field(default_factory=list)
    phases: list[dict[str, list[float]]] = field(default_factory=list)  # per host, per round
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return med(self.times_s)

    def mbps(self, nbytes: int) -> float | None:
        m = self.median
        return nbytes / MB / m if m else None


def own_cpu_s() -> float:
    """This process's CPU, its threads and its waited-for children (rsync, ssh) included."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_one(
    bench: Bench, contender: Contender, dest: Path, *, contents: bool
) -> tuple[float, float, float, list[dict[str, list[float]]], str | None]:
    for t in bench.targets:
        (dest / t.name).mkdir(parents=True)
    cpu0, box0 = own_cpu_s(), machine_busy_s()
    start = time.perf_counter()
    error: str | None = None
    phases: list[dict[str, list[float]]] = []
    try:
        phases = contender.run(bench, dest)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - start
    cpu, box = own_cpu_s() - cpu0, machine_busy_s() - box0
    if error is None:
        error = check(dest, bench.targets, contents=contents)
    shutil.rmtree(dest, ignore_errors=True)
    return wall, cpu, box, phases, error


def run_rounds(
    bench: Bench, contenders: Sequence[Contender], repeat: int, warmup: int, scratch: Path
) -> list[Result]:
    results = [Result(c) for c in contenders]
    for rep in range(warmup + repeat):
        is_warmup = rep < warmup
        line = []
        for r in rotated(results, rep):
            if len(r.failures) >= 2:
                continue
            dest = scratch / f"round{rep}-{r.contender.key}"
            wall, cpu, box, phases, error = time_one(bench, r.contender, dest, contents=(rep == 0))
            if error is not None:
                r.failures.append(error)
                line.append(f"{r.contender.key} FAILED")
                continue
            if not is_warmup:
                r.times_s.append(wall)
                r.cpu_s.append(cpu)
                r.box_s.append(box)
                r.phases.extend(phases)
            line.append(f"{r.contender.key} {wall:.2f}s")
        print(
            f"  {round_tag(rep, warmup, repeat, 'round')}: " + ", ".join(line),
            file=sys.stderr,
            flush=True,
        )
    return results


def run_profile(bench: Bench, rounds: int, scratch: Path) -> list[dict[str, list[float]]]:
    """meshrun on one host at a time (cold connector each), phases with box CPU."""
    samples: list[dict[str, list[float]]] = []
    for rep in range(rounds):
        for t in bench.targets:
            dest = scratch / f"profile{rep}-{t.name}"
            (dest / t.name).mkdir(parents=True)
            connector = new_connector()
            try:
                samples.append(meshrun_one(connector, t, dest))
            finally:
                connector.close()
                shutil.rmtree(dest, ignore_errors=True)
    return samples


# -- reporting ----------------------------------------------------------------------------


def render(bench: Bench, shape: Shape, results: Sequence[Result], repeat: int) -> str:
    nbytes = bench.nbytes
    large = bench.targets[0].files[shape.small :]
    out = [
        f"\n== pull {nbytes / MB:.1f} MB, {bench.nfiles} files from {shape.hosts} hosts at once: "
        f"per host {shape.small} files of {shape.small_min // KIB}-{shape.small_max // KIB} KiB "
        f"+ {len(large)} of {', '.join(f'{s / MB:.1f}' for _, s in large)} MB; "
        f"median of {repeat} rounds ==",
        f"{'contender':<22} {'median s':>8} {'min s':>7} {'MB/s':>7} {'÷rsync':>7} "
        f"{'mesh÷':>6} {'cpu s':>6} {'box s':>6} {'ok':>5}  note",
    ]
    by_key = {r.contender.key: r for r in results}
    rsync_mbps = by_key["rsync"].mbps(nbytes) if "rsync" in by_key else None
    mesh_mbps = by_key["meshrun"].mbps(nbytes) if "meshrun" in by_key else None
    for r in results:
        mbps = r.mbps(nbytes)
        vs_rsync = mbps / rsync_mbps if mbps and rsync_mbps else None
        mesh_vs = mesh_mbps / mbps if mbps and mesh_mbps else None
        status = f"  FAILED: {r.failures[0]}" if r.failures else ""
        out.append(
            f"{r.contender.label:<22} {fmt(r.median, '.3f'):>8} "
            f"{fmt(min(r.times_s) if r.times_s else None, '.3f'):>7} {fmt(mbps, '.1f'):>7} "
            f"{fmt(vs_rsync, '.2f'):>7} {fmt(mesh_vs, '.2f'):>6} "
            f"{fmt(med(r.cpu_s), '.2f'):>6} {fmt(med(r.box_s), '.2f'):>6} "
            f"{len(r.times_s):>2}/{repeat:<2}  {r.contender.note}{status}"
        )
    out.append(
        "MB/s = total MB / median s (MB = 10^6 bytes); ÷rsync = its MB/s / rsync's; "
        "mesh÷ = meshrun's MB/s / its MB/s;\ncpu s = this process + its children "
        "(rsync, ssh); box s = busy CPU of the whole machine (all sshd + remote work too)"
    )
    if mesh_mbps and rsync_mbps:
        ratio = mesh_mbps / rsync_mbps
        verdict = "MET" if ratio >= TARGET_VS_RSYNC else "NOT MET"
        out.append(
            f"target meshrun >= {TARGET_VS_RSYNC}x rsync throughput: meshrun {mesh_mbps:.1f} "
            f"MB/s, rsync {rsync_mbps:.1f} MB/s = {ratio:.2f}x — {verdict}"
        )
    fab = by_key.get("fabric")
    fab_mbps = fab.mbps(nbytes) if fab else None
    if mesh_mbps and fab_mbps:
        out.append(f"meshrun vs Fabric get: {mesh_mbps / fab_mbps:.2f}x Fabric's throughput")
    stream = by_key.get("stream")
    stream_mbps = stream.mbps(nbytes) if stream else None
    if stream_mbps and rsync_mbps and mesh_mbps:
        out.append(
            f"counterfactual meshrun stream*: {stream_mbps:.1f} MB/s = "
            f"{stream_mbps / rsync_mbps:.2f}x rsync, {stream_mbps / mesh_mbps:.2f}x meshrun today"
        )
    for key in ("meshrun", "meshrun-open"):
        row = by_key.get(key)
        if row is not None and row.phases:
            title = f"{row.contender.label}: per host, {shape.hosts} at once"
            out.append(phase_table(title, row.phases, False))
    return "\n".join(out)


def phase_table(title: str, samples: Sequence[dict[str, list[float]]], with_cpu: bool) -> str:
    walls = [exclusive(s, 0) for s in samples]
    cpus = [exclusive(s, 1) for s in samples]
    total = statistics.median(w["total"] for w in walls)
    head = f"{'phase':<12} {'ms':>7} {'share':>6}" + (f" {'box cpu ms':>10}" if with_cpu else "")
    out = [f"\n-- {title} (medians of {len(samples)} host pulls) --", head + "  what"]
    for name, what in [*PHASES, ("total", "")]:
        values = [w[name] for w in walls]
        if name == "sftp" and not any(values):
            continue
        ms = statistics.median(values) * 1000
        line = f"{name:<12} {ms:>7.0f} {ms / 10 / total if total else 0:>5.0f}%"
        if with_cpu:
            line += f" {statistics.median(c[name] for c in cpus) * 1000:>10.0f}"
        out.append(f"{line}  {what}")
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------


def setup(fleet: Fleet, shape: Shape) -> Bench:
    hosts = {h.name: h for h in load_inventory(fleet.hosts_toml)}
    targets = [
        Target(sim=sim, host=hosts[sim.name], files=shape.files(i))
        for i, sim in enumerate(fleet.hosts)
    ]
    for t in targets:
        make_data(t.source, t.files)
    warm = new_connector()
    for t in targets:
        warm.connect(t.host).run_raw("true")  # open, authenticated, first channel done
    return Bench(fleet=fleet, targets=targets, warm=warm)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/pull", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=4, help="hosts, pulled at once (4)")
    parser.add_argument("--total-mb", type=float, default=200, help="MB over all hosts (200)")
    parser.add_argument("--small-files", type=int, default=1000, help="per host (1000)")
    parser.add_argument("--small-kib", default="1,64", help="small file sizes, KiB (1,64)")
    parser.add_argument("--large-files", type=int, default=3, help="per host (3)")
    add_rounds_options(parser, "rounds")
    parser.add_argument(
        "--profile", type=int, default=3, help="rounds of meshrun one host at a time (3)"
    )
    add_output_options(
        parser,
        "comma-separated contenders besides meshrun (meshrun-open, rsync, fabric, "
        "stream; default: all)",
    )
    args = parser.parse_args(argv)
    try:
        lo, hi = (int(x) for x in args.small_kib.split(","))
    except ValueError:
        parser.error("--small-kib is MIN,MAX in KiB")
    if args.repeat < 1 or args.warmup < 0 or args.hosts < 1 or not 1 <= lo <= hi:
        parser.error("--repeat and --hosts must be >= 1, --warmup >= 0, 1 <= MIN <= MAX")
    shape = Shape(
        hosts=args.hosts,
        total_bytes=int(args.total_mb * MB),
        small=args.small_files,
        small_min=lo * KIB,
        small_max=hi * KIB,
        large=args.large_files,
    )
    contenders = keep_only(CONTENDERS, args.only)
    if shutil.which("rsync") is None:
        sys.exit("pull: rsync is not installed (apt-get install -y rsync)")
    doc = new_doc("pull", args, "repeat", "warmup", shape=shape.__dict__)

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="meshrun-pull-") as tmp:
            print(
                f"meshrun tree: {doc['meshrun_tree']['summary']}; starting {args.hosts} hosts "
                "and writing their data ...",
                file=sys.stderr,
                flush=True,
            )
            with running_fleet(args.hosts, Path(tmp) / "fleet") as fleet:
                bench = setup(fleet, shape)
                try:
                    results = run_rounds(
                        bench, contenders, args.repeat, args.warmup, Path(tmp) / "dest"
                    )
                    print(render(bench, shape, results, args.repeat), flush=True)
                    doc["machine"]["loadavg_after_rounds"] = os.getloadavg()
                    print(
                        "load average at start {:.1f}, after the rounds {:.1f}".format(
                            doc["machine"]["loadavg_at_start"][0], os.getloadavg()[0]
                        )
                    )
                    profile = []
                    if args.profile:
                        print(f"profiling: {args.profile} rounds ...", file=sys.stderr)
                        profile = run_profile(bench, args.profile, Path(tmp) / "profile")
                        title = "meshrun alone: one host at a time, new connection each"
                        print(phase_table(title, profile, True), flush=True)
                        print(
                            "box cpu ms = busy CPU of the whole machine in the phase "
                            "(this process, sshd, the host's python3, rsync, ssh)"
                        )
                finally:
                    bench.warm.close()
            doc["total_bytes"] = bench.nbytes
            doc["files"] = bench.nfiles
            doc["results"] = {
                r.contender.key: {
                    "label": r.contender.label,
                    "times_s": r.times_s,
                    "cpu_s": r.cpu_s,
                    "box_s": r.box_s,
                    "median_s": r.median,
                    "mb_per_s": r.mbps(bench.nbytes),
                    "failures": r.failures,
                    "phases": r.phases,
                }
                for r in results
            }
            doc["profile"] = profile
        return 1 if any(r.failures for r in results) else 0

    return run_benchmark("pull", body, doc, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""Push benchmark: what an exact workspace copy costs, meshrun's mirror vs rsync.

One loopback host; a workspace of many small files (1-64 KiB, nested) and a few large
ones (incompressible). Each contender keeps its own copy on the host and, each round,
pushes three times, timed separately:

- first:  into an empty directory (a new host, or a new checkout's workdir);
- same:   again, nothing changed (a rerun);
- edit:   one file rewritten with the same size and mtime, one deleted (a branch
          switch that an unpacker or ``touch -r`` left with old times).

After every push the host's copy is compared with the workspace, byte for byte: a
contender whose copy differs is marked ``NOT EXACT`` (rsync's quick check misses the
same-size same-mtime edit; without ``--delete`` the deleted file stays).

Contenders (each starts from nothing every push, as a ``dispatch`` run does):

- meshrun mirror      a fresh SSH connection, the agent started, the workspace hashed
                      (a hash cache in a state directory, as ``dispatch`` keeps it),
                      the host scanned, the difference streamed (``meshrun.workspace.mirror``).
- rsync -a            OpenSSH's ssh with the same key and host-key checking: fast, but
                      neither deletes nor sees the edit.
- rsync exact         ``rsync -a --delete --checksum``: exact, hashes both sides every time.

    bench/push.py --repeat 5 --small-files 2000 --total-mb 40
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from competitors.rsync_ssh import new_connector, remote_shell
from harness import rotated, run_benchmark, running_fleet, tree_state

from meshrun.agent.client import AgentRunner, start_runner
from meshrun.config.inventory import Host, load_inventory
from meshrun.workspace import mirror
from meshrun.workspace.excludes import Excludes

KIB = 1024
SCENARIOS = ("first", "same", "edit")


def make_workspace(root: Path, small: int, total: int, large: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    used = 0
    for i in range(small):
        size = int(2 ** rng.uniform(10, 16))  # 1-64 KiB, log-uniform
        path = root / f"d{i % 17}" / f"s{i % 5}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        used += size
    each = max(0, (total - used) // max(large, 1))
    for i in range(large):
        (root / f"big{i}.bin").write_bytes(os.urandom(each))


def edit(root: Path, round_no: int) -> None:
    """Same size, same mtime, other bytes; and one file deleted."""
    target = root / "d1" / "s1" / "f1.txt"
    st = target.stat()
    target.write_bytes(os.urandom(st.st_size))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    victims = sorted((root / "d2").rglob("*.txt"))
    if victims:
        victims[round_no % len(victims)].unlink()


def exact(a: Path, b: Path) -> bool:
    """The two trees hold the same files with the same bytes."""
    left = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    right = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and ".meshrun" not in p.parts}
    if left != right:
        return False
    return all(filecmp.cmp(a / p, b / p, shallow=False) for p in left)


class Mesh:
    name = "meshrun mirror"

    def __init__(self, host: Host, state: Path) -> None:
        self.host, self.state = host, state

    def push(self, src: Path, dest: Path) -> None:
        connector = new_connector()
        try:
            conn = connector.connect(self.host)
            runner = start_runner(conn, self.host.workdir, lambda event: None)
            assert isinstance(runner, AgentRunner)
            cache = mirror.HashCache(self.state / mirror.CACHE_FILE)
            tree = mirror.build_tree(src, (".",), Excludes.compile([]), cache=cache)
            mirror.push(runner, str(dest), tree, Excludes.compile([]))
            runner.close()
        finally:
            connector.close()


class Rsync:
    def __init__(self, host: Host, name: str, flags: list[str]) -> None:
        self.name, self.flags = name, flags
        self.rsh, self.login = remote_shell(host)

    def push(self, src: Path, dest: Path) -> None:
        argv = ["rsync", "-a", *self.flags, "-e", self.rsh, f"{src}/", f"{self.login}:{dest}/"]
        subprocess.run(argv, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/push", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (5)")
    parser.add_argument("--small-files", type=int, default=2000, help="(2000)")
    parser.add_argument("--total-mb", type=float, default=40, help="workspace size (40)")
    parser.add_argument("--large-files", type=int, default=2, help="(2)")
    args = parser.parse_args()
    return run_benchmark("push", lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    head = tree_state()
    print(f"meshrun tree: {head['head']} + {len(head['uncommitted'])} uncommitted file(s)")
    with tempfile.TemporaryDirectory(prefix="meshrun-push-bench-") as scratch_text:
        scratch = Path(scratch_text)
        src = scratch / "workspace"
        make_workspace(src, args.small_files, int(args.total_mb * 1e6), args.large_files)
        nfiles = sum(1 for p in src.rglob("*") if p.is_file())
        with running_fleet(1, scratch / "fleet") as fleet:
            host = load_inventory(fleet.hosts_toml)[0]
            (scratch / "state").mkdir()
            tools: list[Mesh | Rsync] = [
                Mesh(host, scratch / "state"),
                Rsync(host, "rsync -a", []),
                Rsync(host, "rsync exact", ["--delete", "--checksum"]),
            ]
            times: dict[tuple[str, str], list[float]] = {}
            wrong: dict[tuple[str, str], int] = {}
            hostdir = Path(fleet.hosts[0].workdir)
            for round_no in range(args.repeat):
                work = scratch / f"round{round_no}"
                shutil.copytree(src, work, copy_function=shutil.copy2)
                dests = {t.name: hostdir / f"copy-{i}" for i, t in enumerate(tools)}
                for d in dests.values():
                    shutil.rmtree(d, ignore_errors=True)
                for scenario in SCENARIOS:
                    if scenario == "edit":
                        edit(work, round_no)
                    for tool in rotated(tools, round_no):
                        push: Callable[[Path, Path], None] = tool.push
                        began = time.perf_counter()
                        push(work, dests[tool.name])
                        took = time.perf_counter() - began
                        times.setdefault((tool.name, scenario), []).append(took)
                        if not exact(work, dests[tool.name]):
                            wrong[(tool.name, scenario)] = wrong.get((tool.name, scenario), 0) + 1
                shutil.rmtree(work)
                print(f"  round {round_no + 1}/{args.repeat} done", flush=True)
    print(
        f"\n== push of {nfiles} files, {args.total_mb:g} MB to 1 host: median s over "
        f"{args.repeat} rounds (÷m: the tool's time / meshrun's) =="
    )
    print(f"{'tool':<16}" + "".join(f"{s:>18}" for s in SCENARIOS))
    mesh = {s: statistics.median(times[("meshrun mirror", s)]) for s in SCENARIOS}
    for tool in tools:
        cells = []
        for s in SCENARIOS:
            med = statistics.median(times[(tool.name, s)])
            mark = " NOT EXACT" if wrong.get((tool.name, s)) else ""
            cells.append(f"{med:6.3f} ({med / mesh[s]:4.2f}x){mark}")
        print(f"{tool.name:<16}" + "".join(f"{c:>18}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

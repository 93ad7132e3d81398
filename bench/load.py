"""Loading big task files: CPU time and peak memory of ``meshrun.load_tasks``.

Issue 13 asks for a 100,000-task graph that loads in under a second of CPU and keeps
memory under 300 MB. This writes task files of each size in three shapes:

- ``independent``: ``name`` and ``run`` only;
- ``chained``: each task ``needs`` the one before (the longest dependency chain, so the
  needs checks and the cycle search see every task);
- ``typical``: chained, plus ``outputs``, ``timeout`` and ``labels`` on every task, as
  generated CI graphs write them;

and loads each file in a fresh Python process (``--repeat`` times, the files and trees
taking turns, the first rotating every round, so machine noise lands on all of them).
The child imports meshrun first, then measures only ``load_tasks(path)``: its CPU time
(``time.process_time``: user + system of the process, less sensitive than the wall
clock to the other work on a shared box), its wall time and the process's peak RSS
(``ru_maxrss``: interpreter and imports included, since that is what a user's run
holds). Each cell is a median; ``per task`` is the median CPU divided by the size.

``--tree NAME=PATH`` (repeatable) measures another checkout of meshrun too, e.g. the
commit before a change (``git worktree add --detach /tmp/old HEAD~3``), in the same
rounds; the table then shows each tree and its ratio to the first one.

    bench/load                          # 10k and 100k tasks, 5 rounds, ~1 minute
    bench/load --sizes 100000 --repeat 9 --json /tmp/load.json
    bench/load --tree new=. --tree old=/tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import REPO, fmt, new_doc, rotated, run_benchmark

SHAPES = ("independent", "chained", "typical")
#: The issue's targets for a 100,000-task graph.
TARGET_CPU_S = 1.0
TARGET_RSS_MB = 300.0

#: Runs in the child: meshrun imported before the clock starts; one JSON line out.
CHILD = """
import json, resource, sys, time
import meshrun
t0, w0 = time.process_time(), time.perf_counter()
graph = meshrun.load_tasks(sys.argv[1])
cpu, wall = time.process_time() - t0, time.perf_counter() - w0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "rss_mb": rss, "tasks": len(graph.tasks),
                  "meshrun": meshrun.__file__}))
"""


def write_tasks(path: Path, size: int, shape: str) -> None:
    """A task file of ``size`` tasks of ``shape`` (see the module docstring)."""
    with path.open("w") as out:
        for i in range(size):
            out.write(f'[[task]]\nname = "task-{i}"\nrun = "make part N={i}"\n')
            if shape != "independent" and i:
                out.write(f'needs = ["task-{i - 1}"]\n')
            if shape == "typical":
                out.write(f'outputs = ["reports/{i}.xml"]\ntimeout = "10m"\nlabels = ["linux"]\n')
            out.write("\n")


def load_once(python: str, tree: Path, path: Path) -> dict[str, Any]:
    """One load of ``path`` by the meshrun in ``tree``, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    env["PYTHONPATH"] = str(tree)
    # In the files' directory: ``python -c`` puts the working directory first on the
    # path, which in a checkout would be its meshrun, whatever the tree.
    done = subprocess.run(
        [python, "-c", CHILD, str(path)],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench/load: loading {path} with {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if not Path(result.pop("meshrun")).is_relative_to(tree):
        sys.exit(f"bench/load: the child did not import the meshrun of {tree}")
    return result


def parse_trees(values: Sequence[str] | None) -> dict[str, Path]:
    if not values:
        return {"meshrun": REPO}
    trees: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            sys.exit(f"bench/load: --tree {value!r}: write NAME=PATH, e.g. --tree old=/tmp/old")
        if not (Path(path) / "meshrun" / "__init__.py").is_file():
            sys.exit(f"bench/load: --tree {value!r}: no meshrun package in {path}")
        trees[name] = Path(path).resolve()
    return trees


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
    )
    parser.add_argument("--sizes", default="10000,100000", help="tasks per file (10000,100000)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="which files (all three)")
    parser.add_argument("--repeat", type=int, default=5, help="loads of each file (5)")
    parser.add_argument(
        "--tree", action="append", metavar="NAME=PATH", help="a meshrun checkout to measure"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter (this one)")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    if unknown := set(shapes) - set(SHAPES):
        parser.error(f"--shapes: unknown {', '.join(sorted(unknown))} (choose from {SHAPES})")
    trees = parse_trees(args.tree)
    doc = new_doc(
        "load", args, "sizes", "shapes", "repeat", python=args.python, samples=[], trees={}
    )
    doc["trees"] = {name: str(path) for name, path in trees.items()}

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="meshrun-bench-load-") as tmp:
            files = {}
            for size in sizes:
                for shape in shapes:
                    files[size, shape] = Path(tmp) / f"{shape}-{size}.toml"
                    write_tasks(files[size, shape], size, shape)
            cells = [(key, tree) for key in files for tree in trees]
            for rep in range(args.repeat):
                print(f"round {rep + 1}/{args.repeat}", file=sys.stderr)
                for (size, shape), tree in rotated(cells, rep):
                    sample = load_once(args.python, trees[tree], files[size, shape])
                    doc["samples"].append(
                        {"size": size, "shape": shape, "tree": tree, "round": rep, **sample}
                    )
        print_table(doc["samples"], sizes, shapes, list(trees))
        return 0

    return run_benchmark("bench/load", body, doc, args.json, stopped="stopped")


def print_table(
    samples: list[dict[str, Any]], sizes: list[int], shapes: list[str], trees: list[str]
) -> None:
    head = f"{'tasks':>7} {'shape':<12} {'tree':<10} {'cpu s':>7} {'min':>7} {'wall s':>7}"
    head += f" {'us/task':>7} {'rss MB':>7}" + (f" {'ratio':>6}" if len(trees) > 1 else "")
    print(head)
    for size in sizes:
        for shape in shapes:
            first: float | None = None
            for tree in trees:
                mine = [
                    s
                    for s in samples
                    if s["size"] == size and s["shape"] == shape and s["tree"] == tree
                ]
                if not mine:
                    continue
                cpu = statistics.median(s["cpu_s"] for s in mine)
                wall = statistics.median(s["wall_s"] for s in mine)
                rss = statistics.median(s["rss_mb"] for s in mine)
                first = cpu if first is None else first
                line = f"{size:>7} {shape:<12} {tree:<10} {fmt(cpu):>7}"
                line += f" {fmt(min(s['cpu_s'] for s in mine)):>7} {fmt(wall):>7}"
                line += f" {fmt(cpu / size * 1e6, '.1f'):>7} {fmt(rss, '.0f'):>7}"
                if len(trees) > 1:
                    line += f" {fmt(cpu / first, '.2f'):>6}"
                print(line)
    print(
        f"\ntargets (issue 13) for 100,000 tasks: under {TARGET_CPU_S:.1f} s CPU "
        f"and {TARGET_RSS_MB:.0f} MB; ratio = tree cpu / first tree cpu (< 1: faster)"
    )


if __name__ == "__main__":
    sys.exit(main())

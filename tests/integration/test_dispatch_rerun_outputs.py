"""A rerun equals a full run: the outputs of needs that passed earlier reach the rerun.

A merge task needs four shards that passed in the first run; only the merge failed. On
hosts wiped clean in between (no leftovers to lean on), ``--rerun-failed`` must give the
merge the shards' outputs from the run that produced them and produce exactly the file
a full run produces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dispatch_helpers import dispatch, task_statuses, write_project

from meshrun.testing.fleet import Fleet

SHARDS = [
    {
        "name": f"p{i}",
        "run": f"mkdir -p out && echo shard-{i} > out/p{i}.txt",
        "outputs": [f"out/p{i}.txt"],
    }
    for i in range(1, 5)
]
MERGE = {
    "name": "merge",
    "run": "[ -f go ] && cat out/p1.txt out/p2.txt out/p3.txt out/p4.txt > merged.txt",
    "needs": [f"p{i}" for i in range(1, 5)],
    "outputs": ["merged.txt"],
}


def _wipe_hosts(fleet: Fleet) -> None:
    for name in fleet.names:
        workdir = fleet.host(name).workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)


def test_rerun_failed_gives_the_merge_its_needs_outputs_and_equals_a_full_run(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tasks_file = write_project(tmp_path / "proj", [*SHARDS, MERGE])
    project = tasks_file.parent
    first = dispatch(tasks_file, fleet4.hosts_toml)
    assert first.rc == 1, first.describe()
    statuses = task_statuses(first)
    assert statuses.pop("merge") == "failed" and set(statuses.values()) == {"succeeded"}

    _wipe_hosts(fleet4)
    for shard in range(1, 5):  # the workspace copies do not help either: not synced back
        (project / "out" / f"p{shard}.txt").unlink()
    (project / "go").write_text("")
    rerun = dispatch(tasks_file, fleet4.hosts_toml, "--rerun-failed")
    assert rerun.rc == 0, rerun.describe()
    assert task_statuses(rerun) == {"merge": "succeeded"}, rerun.describe()
    merged_by_rerun = (project / "merged.txt").read_text()

    _wipe_hosts(fleet4)
    full = dispatch(tasks_file, fleet4.hosts_toml)
    assert full.rc == 0, full.describe()
    assert merged_by_rerun == (project / "merged.txt").read_text()
    assert merged_by_rerun == "".join(f"shard-{i}\n" for i in range(1, 5))

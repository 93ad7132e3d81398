"""Retention end to end: real `meshrun dispatch` runs (on this machine, each in a fresh
process) keep at most --keep-runs runs, yet --rerun-failed still finds the outputs of
the run a need last passed in; `meshrun history --prune` says what it removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ENTRY = "from meshrun.cli.app import main; main()"

TASKS = """\
[[task]]
name = "make"
run = "echo built > out.txt"
outputs = ["out.txt"]

[[task]]
name = "check"
needs = ["make"]
run = "test -f out.txt && test -f {marker}"
"""


def meshrun(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def runs(project: Path) -> list[str]:
    return sorted(path.name for path in (project / ".meshrun" / "runs").iterdir())


def test_rerun_failed_still_works_after_more_runs_than_kept(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "pass"
    (project / "tasks.toml").write_text(TASKS.format(marker=marker))

    first = meshrun(project, "dispatch", "tasks.toml", "--keep-runs", "2", "--json")
    assert first.returncode == 1, first.stderr
    first_run = json.loads(first.stdout)["run_id"]
    # Four reruns of the failing task alone: "make" last passed in the first run.
    for _ in range(4):
        again = meshrun(
            project, "dispatch", "tasks.toml", "--rerun-failed", "--keep-runs", "2", "--json"
        )
        assert again.returncode == 1, again.stderr
        assert [t["name"] for t in json.loads(again.stdout)["tasks"]] == ["check"]
    kept = runs(project)
    assert len(kept) == 3  # two newest, and the one whose outputs a rerun pushes
    assert first_run in kept

    marker.write_text("")
    last = meshrun(project, "dispatch", "tasks.toml", "--rerun-failed", "--keep-runs", "2")
    assert last.returncode == 0, last.stderr

    pruned = meshrun(project, "history", "--prune", "--keep-runs", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    document = json.loads(pruned.stdout)
    assert first_run in document["pruned_runs"] or first_run in runs(project)
    assert document["kept_runs"] == len(runs(project))
    assert document["history_rows"] > 0
    assert len(runs(project)) <= 2  # the newest, and where "make" last passed

    said = meshrun(project, "history", "--prune", "--keep-runs", "1")
    assert said.returncode == 0, said.stderr
    assert "pruned 0 runs" in said.stdout

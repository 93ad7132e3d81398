"""The workspace push makes an exact, isolated copy (through the host's agent).

Real sshd hosts. A deleted file is deleted on the host, a change that keeps size and
mtime arrives, a task's in-place edit on the host is undone by the next push, an
exclude protects what the host built, an earlier run's output is never collected as
this run's; each workspace gets its own workdir, a second run of the same workspace
at the same time gets another, and a workdir no run used for too long is removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dispatch_helpers import (
    dispatch,
    log_text,
    spawn_dispatch,
    task_statuses,
    workdir_of,
    write_hosts,
    write_project,
)
from helpers import finish

from meshrun.testing.fleet import Fleet
from meshrun.workspace.workdirs import WORKDIRS


def _same_times(path: Path, text: str) -> None:
    """Rewrite ``path`` with ``text`` (same length) and put its mtime back."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_deletions_and_same_size_same_mtime_changes_reach_the_host(
    make_fleet: object, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": "show", "run": "cat src/a.txt; ls"}],
        sync={"exclude": ["*.log"]},
        files={"src/a.txt": "AAAA\n", "gone.txt": "bye\n", "keep.txt": "one\n"},
    )
    project = tasks_file.parent
    first = dispatch(tasks_file, hosts)
    assert first.rc == 0, first.describe()
    work = workdir_of(first, "h1")
    assert (work / "gone.txt").is_file(), f"expected the first push to bring gone.txt to {work}"

    (work / "build.log").write_text("built on the host\n")  # excluded: stays
    (work / "stray.txt").write_text("not in the workspace\n")  # not excluded: goes
    (project / "gone.txt").unlink()
    _same_times(project / "src" / "a.txt", "BBBB\n")
    _same_times(work / "keep.txt", "two\n")  # a task edited it in place on the host

    second = dispatch(tasks_file, hosts)
    assert second.rc == 0, second.describe()
    assert workdir_of(second, "h1") == work, "expected the same workspace to reuse its workdir"
    assert "BBBB" in log_text(second, "show"), log_text(second, "show")
    assert (work / "src" / "a.txt").read_text() == "BBBB\n"
    assert not (work / "gone.txt").exists(), "expected the deleted file deleted on the host"
    assert not (work / "stray.txt").exists(), "expected a file the workspace lacks deleted"
    assert (work / "build.log").read_text() == "built on the host\n", "an exclude protects"
    assert (work / "keep.txt").read_text() == "one\n", "expected the host's edit undone"
    assert (work / "src" / "a.txt").stat().st_mtime_ns == (
        project / "src" / "a.txt"
    ).stat().st_mtime_ns


def test_an_earlier_runs_output_is_never_collected_as_this_runs(
    make_fleet: object, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    report = {
        "name": "test",
        "run": "[ -f fail ] && exit 1; mkdir -p reports && echo pass > reports/test.xml",
        "outputs": ["reports/test.xml"],
    }
    lint = {
        "name": "lint",
        "run": "[ -f fail ] && exit 1; mkdir -p out && echo clean > out/lint.txt",
        "outputs": ["out/lint.txt"],
    }
    tasks_file = write_project(tmp_path / "proj", [report, lint], sync={"exclude": ["out/"]})
    project = tasks_file.parent
    first = dispatch(tasks_file, hosts)
    assert first.rc == 0, first.describe()
    assert (project / "reports" / "test.xml").read_text() == "pass\n"
    work = workdir_of(first, "h1")

    (project / "fail").write_text("")
    second = dispatch(tasks_file, hosts)
    assert second.rc == 1, second.describe()
    assert task_statuses(second) == {"test": "failed", "lint": "failed"}, second.describe()
    # Not pushed back to the host (it is meshrun's output), not left there by run 1
    # (excluded out/ included): nothing stale came home, nothing stale stays here.
    assert not (work / "reports" / "test.xml").exists()
    assert not (work / "out" / "lint.txt").exists()
    assert not (project / "reports" / "test.xml").exists(), "a stale passing report stayed"
    assert not (project / "out" / "lint.txt").exists()


def test_two_workspaces_with_the_same_task_names_do_not_mix(
    make_fleet: object, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    task = [{"name": "t", "run": "sleep 1; cat data.txt"}]
    a = write_project(tmp_path / "a" / "proj", task, files={"data.txt": "from a\n"})
    b = write_project(tmp_path / "b" / "proj", task, files={"data.txt": "from b\n"})
    runs = [spawn_dispatch(a, hosts), spawn_dispatch(b, hosts)]
    ra, rb = (finish(p, 60) for p in runs)
    assert ra.rc == 0 and rb.rc == 0, ra.describe() + rb.describe()
    assert "from a" in log_text(ra, "t") and "from b" not in log_text(ra, "t")
    assert "from b" in log_text(rb, "t") and "from a" not in log_text(rb, "t")
    assert workdir_of(ra, "h1") != workdir_of(rb, "h1")


def test_the_same_workspace_twice_at_once_gets_two_workdirs(
    make_fleet: object, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    tasks_file = write_project(
        tmp_path / "proj", [{"name": "t", "run": "echo $$ > pid; sleep 2; cat pid"}]
    )
    runs = [spawn_dispatch(tasks_file, hosts), spawn_dispatch(tasks_file, hosts)]
    first, second = (finish(p, 60) for p in runs)
    assert first.rc == 0 and second.rc == 0, first.describe() + second.describe()
    dirs = {workdir_of(first, "h1"), workdir_of(second, "h1")}
    assert len(dirs) == 2, f"expected two workdirs for two runs at once, got {dirs}"
    names = sorted(d.name for d in dirs)
    assert names[1] == names[0] + ".2", names

    again = dispatch(tasks_file, hosts)  # both ended: the first workdir is free again
    assert again.rc == 0, again.describe()
    assert workdir_of(again, "h1").name == names[0]


def test_a_workdir_no_run_used_for_too_long_is_removed(make_fleet: object, tmp_path: Path) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    root = fleet.host("h1").workdir / WORKDIRS
    old, recent = root / "old-0123456789ab", root / "recent-0123456789ab"
    for where, age_days in ((old, 8), (recent, 1)):
        (where / "sub").mkdir(parents=True)
        (where / "sub" / "file").write_text("x")
        lock = where.with_name(where.name + ".lock")
        lock.write_text("")
        then = time.time() - age_days * 86400
        os.utime(lock, (then, then))
    tasks_file = write_project(tmp_path / "proj", [{"name": "t", "run": "true"}])
    r = dispatch(tasks_file, hosts)
    assert r.rc == 0, r.describe()
    deadline = time.monotonic() + 10  # removed by the agent in the background
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not old.exists() and not old.with_name(old.name + ".lock").exists()
    assert (recent / "sub" / "file").is_file(), "a workdir used a day ago must stay"
    assert not list(root.glob(".trash-*")), list(root.iterdir())

    short = dispatch(tasks_file, hosts, "--workdir-max-age", "1h")
    assert short.rc == 0, short.describe()
    deadline = time.monotonic() + 10
    while recent.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not recent.exists(), "expected --workdir-max-age 1h to remove a day-old workdir"
    assert workdir_of(short, "h1").is_dir(), "the run's own workdir stays"


def test_isolate_false_runs_in_the_hosts_workdir(make_fleet: object, tmp_path: Path) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    tasks_file = write_project(
        tmp_path / "proj",
        [{"name": "t", "run": "cat data.txt"}],
        sync={"isolate": False},
        files={"data.txt": "shared\n"},
    )
    other = write_project(tmp_path / "other", [{"name": "t", "run": "sleep 3"}])
    isolated = spawn_dispatch(other, hosts)  # holds a workdir under the shared one
    claims = fleet.host("h1").workdir / WORKDIRS
    deadline = time.monotonic() + 20
    while not list(claims.glob("other-*.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(claims.glob("other-*.lock")), "test setup: the isolated run never claimed"
    r = dispatch(tasks_file, hosts)
    assert r.rc == 0, r.describe()
    assert workdir_of(r, "h1") == fleet.host("h1").workdir
    assert (fleet.host("h1").workdir / "data.txt").read_text() == "shared\n"
    held = finish(isolated, 60)
    assert held.rc == 0, held.describe()
    # The shared workdir's exact copy left the isolated runs' workdirs alone.
    assert workdir_of(held, "h1").is_dir(), "the push into the shared workdir deleted it"
    assert workdir_of(held, "h1").is_relative_to(fleet.host("h1").workdir / WORKDIRS)

"""``meshrun dispatch`` with bad input: exit 2, one line naming the file, line and task.

Each case points at a real fleet, so a check that came too late would show up as tasks
that ran (a runs/ directory) instead of exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dispatch_helpers import dispatch, kill_on_error, spawn_dispatch, task_statuses
from helpers import Result, finish, run_meshrun, write_inventory

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]

CYCLE = """\
[[task]]
name = "build"
run = "make"
needs = ["test"]

[[task]]
name = "test"
run = "make test"
needs = ["build"]
"""

UNKNOWN_NEED = """\
[[task]]
name = "build"
run = "make"

[[task]]
name = "test"
run = "make test"
needs = ["biuld"]
"""

DUPLICATE = """\
[[task]]
name = "build"
run = "make"

[[task]]
name = "build"
run = "make again"
"""

BAD_DURATION = """\
[[task]]
name = "build"
run = "make"
timeout = "5 parsecs"
"""

GPU = """\
[[task]]
name = "build"
run = "make"

[[task]]
name = "train"
run = "python train.py"
labels = ["gpu"]
"""

HEAVY = """\
[[task]]
name = "build"
run = "make"

[[task]]
name = "link"
run = "ld"
weight = 4
"""

SIMPLE = """\
[[task]]
name = "build"
run = "echo build"
"""


def _run(project: Path, text: str, hosts: Path, *args: str) -> Result:
    project.mkdir(parents=True, exist_ok=True)
    (project / "tasks.toml").write_text(text)
    return run_meshrun("dispatch", project / "tasks.toml", "--hosts", hosts, *args)


def _assert_bad_input(r: Result, project: Path, *fragments: str) -> None:
    assert r.rc == 2, f"expected exit 2 for bad input{r.describe()}"
    line = r.stderr.strip()
    assert line.startswith("meshrun: error: ") and "\n" not in line, (
        f"expected one error line on stderr{r.describe()}"
    )
    for fragment in fragments:
        assert fragment in line, f"expected {fragment!r} in the message{r.describe()}"
    assert not (project / ".meshrun" / "runs").exists(), (
        f"expected nothing to run on bad input, found {project / '.meshrun' / 'runs'}"
    )


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            CYCLE,
            ["tasks.toml:4: task 'build': needs: dependency cycle build -> test -> build"],
            id="cycle",
        ),
        pytest.param(
            UNKNOWN_NEED,
            ["tasks.toml:8: task 'test': needs: 'biuld' is not a task", "'build'"],
            id="unknown-need",
        ),
        pytest.param(
            DUPLICATE,
            ["tasks.toml:6: task 'build': name: task name 'build' is used twice", "lines 2 and 6"],
            id="duplicate-name",
        ),
        pytest.param(
            BAD_DURATION,
            ["tasks.toml:4: task 'build': timeout:", "5 parsecs", 'timeout = "10m"'],
            id="bad-duration",
        ),
        pytest.param(
            GPU,
            ["tasks.toml:5: task 'train': labels: needs label gpu, which no host carries"],
            id="labels-no-host-has",
        ),
    ],
)
def test_a_bad_task_file_is_refused_with_file_line_and_task(
    fleet4: Fleet, tmp_path: Path, text: str, fragments: list[str]
) -> None:
    project = tmp_path / "proj"
    r = _run(project, text, fleet4.hosts_toml)
    _assert_bad_input(r, project, *fragments)


def test_a_weight_above_every_hosts_slots_is_refused(fleet4: Fleet, tmp_path: Path) -> None:
    hosts = write_inventory(
        tmp_path / "hosts.toml", fleet4, extra={n: {"slots": 2} for n in fleet4.names}
    )
    project = tmp_path / "proj"
    r = _run(project, HEAVY, hosts)
    _assert_bad_input(
        r,
        project,
        "tasks.toml:5: task 'link': weight: weight 4 is more than any host can take",
        "most slots: 2",
        "slots = 4",
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(
            ["--rerun-failed"],
            ["no previous run is recorded", "history.sqlite", "without --rerun-failed"],
            id="rerun-failed-without-history",
        ),
        pytest.param(
            ["--fail-fast", "--keep-going"],
            ["--fail-fast and --keep-going contradict each other"],
            id="fail-fast-and-keep-going",
        ),
        pytest.param(
            ["--rerun-failed", "--resume", "20260101T000000Z-abcdef"],
            ["--rerun-failed and --resume"],
            id="rerun-failed-and-resume",
        ),
        pytest.param(["--timeout", "soon"], ["--timeout", "soon"], id="bad-timeout-option"),
    ],
)
def test_contradicting_or_impossible_options_are_refused(
    fleet4: Fleet, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    project = tmp_path / "proj"
    r = _run(project, SIMPLE, fleet4.hosts_toml, *args)
    _assert_bad_input(r, project, *fragments)


def test_resume_of_an_unknown_run_is_refused(fleet4: Fleet, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    first = _run(project, SIMPLE, fleet4.hosts_toml)
    assert first.rc == 0, first.describe()
    r = run_meshrun(
        "dispatch", project / "tasks.toml", "--hosts", fleet4.hosts_toml, "--resume", "nope-1"
    )
    assert r.rc == 2, f"expected exit 2 for an unknown run id{r.describe()}"
    assert "no run 'nope-1' is recorded" in r.stderr, r.describe()


def test_a_missing_task_file_is_refused(fleet4: Fleet, tmp_path: Path) -> None:
    r = run_meshrun("dispatch", tmp_path / "nope.toml", "--hosts", fleet4.hosts_toml)
    assert r.rc == 2, f"expected exit 2 for a missing file{r.describe()}"
    assert f"{tmp_path / 'nope.toml'}: no such file" in r.stderr, r.describe()


# -- a weight only the connected hosts can refuse (slots = "auto") -----------------------

TOO_HEAVY = 1000  # more load units than any test machine has CPUs


def test_a_weight_above_every_hosts_cpus_cancels_the_task(fleet4: Fleet, tmp_path: Path) -> None:
    """slots = "auto" is only known once connected: the task is cancelled, exit 1."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tasks.toml").write_text(
        SIMPLE + f'\n[[task]]\nname = "huge"\nrun = "echo huge"\nweight = {TOO_HEAVY}\n'
    )
    r = dispatch(project / "tasks.toml", fleet4.hosts_toml, timeout_s=30)
    assert r.rc == 1, f"expected exit 1 (a task cancelled){r.describe()}"
    assert task_statuses(r) == {"build": "succeeded", "huge": "cancelled"}, r.describe()
    assert "no reachable host matches its labels or weight" in r.stderr, r.describe()


def test_a_weight_above_every_hosts_cpus_with_a_dependent_ends_the_run(
    fleet4: Fleet, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tasks.toml").write_text(
        SIMPLE + f'\n[[task]]\nname = "huge"\nrun = "echo huge"\nweight = {TOO_HEAVY}\n'
        '\n[[task]]\nname = "after-huge"\nrun = "echo after"\nneeds = ["huge"]\n'
    )
    proc = spawn_dispatch(project / "tasks.toml", fleet4.hosts_toml)
    try:
        r = finish(proc, timeout_s=5)  # about 1 s when it works
    finally:
        kill_on_error(proc)
    assert r.rc == 1, f"expected exit 1 (tasks cancelled){r.describe()}"
    statuses = task_statuses(r)
    assert statuses["build"] == "succeeded" and statuses["huge"] == "cancelled", r.describe()
    assert statuses["after-huge"] in ("cancelled", "skipped"), r.describe()

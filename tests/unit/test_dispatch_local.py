"""meshrun dispatch on the local machine: the real agent subprocess, no SSH."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_runner import run_cli

from meshrun import (
    DispatchOptions,
    History,
    Host,
    InputError,
    StateDir,
    TaskStatus,
    load_tasks,
    run_dispatch,
    select_rerun,
)
from meshrun.dispatch.executor import DispatchReport, HostSummary, TaskResult
from meshrun.transport.local import LocalConnector

TASKS = """
[[task]]
name = "build"
run = "echo building; echo built > out.txt"

[[task]]
name = "test"
run = "cat out.txt; [ -f fail ] && exit 4; echo tested"
needs = ["build"]

[[task]]
name = "ship"
run = "echo shipping"
needs = ["test"]

[[task]]
name = "lint"
run = "echo lint >&2"
"""


def dispatch(project: Path, hosts: list[Host] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    graph = kw.pop("graph", None) or load_tasks(project / "tasks.toml")
    hosts = hosts or [Host(name="local", local=True, workdir=str(project))]
    return run_dispatch(
        graph,
        hosts,
        LocalConnector(),
        state=StateDir(project / ".meshrun"),
        run_id=str(kw.pop("run_id", "r1")),
        options=DispatchOptions(**kw),  # type: ignore[arg-type]
        junit_path=str(project / "junit.xml"),
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.toml").write_text(TASKS)
    return tmp_path


def test_a_graph_runs_in_order_with_logs_report_junit_and_history(project: Path) -> None:
    report = dispatch(project)
    assert report.exit_code == 0, report
    assert {t.name: t.status for t in report.tasks} == dict.fromkeys(
        ["build", "test", "ship", "lint"], TaskStatus.SUCCEEDED
    )
    test = next(t for t in report.tasks if t.name == "test")
    assert test.log == str(project / ".meshrun/runs/r1/logs/succeeded.log")
    log = b"".join(test.log_chunks()).decode()
    assert "built\ntested\n" in log and "attempt 1 on local" in log
    saved = json.loads((project / ".meshrun/runs/r1/report.json").read_text())
    assert saved["schema"] == 1 and saved["ok"] is True and len(saved["tasks"]) == 4
    suite = ET.parse(project / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"
    with History(project / ".meshrun/history.sqlite") as h:
        assert {r.task for r in h.durations()} == {"build", "test", "ship", "lint"}
    # The journal indexes succeeded.log too (a killed run has no report.json).
    journal = (project / ".meshrun/runs/r1/journal.jsonl").read_text().splitlines()
    ends = {e["task"]: e for e in map(json.loads, journal) if e["event"] == "end"}
    assert {t["name"]: (t["log_offset"], t["log_bytes"]) for t in saved["tasks"]} == {
        name: (e["log_offset"], e["log_bytes"]) for name, e in ends.items()
    }


def test_keep_going_skips_dependents_and_rerun_failed_runs_only_those(project: Path) -> None:
    (project / "fail").write_text("")
    first = dispatch(project)
    statuses = {t.name: t.status.value for t in first.tasks}
    assert statuses == {
        "build": "succeeded",
        "test": "failed",
        "ship": "skipped",
        "lint": "succeeded",
    }
    assert first.exit_code == 1
    junit = ET.parse(project / "junit.xml").getroot()
    failure = junit.find("./testsuite/testcase[@name='test']/failure")
    assert failure is not None and "built" in (failure.text or "")
    (project / "fail").unlink()
    with History(project / ".meshrun/history.sqlite") as h:
        graph = select_rerun(load_tasks(project / "tasks.toml"), h, None)
    assert list(graph.tasks) == ["test", "ship"]
    second = dispatch(project, graph=graph, run_id="r2")
    assert second.exit_code == 0 and [t.name for t in second.tasks] == ["test", "ship"]


def test_rerun_without_history_is_an_input_error(project: Path) -> None:
    with History(project / "h.sqlite") as h, pytest.raises(InputError, match="no previous run"):
        select_rerun(load_tasks(project / "tasks.toml"), h, None)


def test_fail_fast_cancels_what_is_still_running(project: Path) -> None:
    (project / "tasks.toml").write_text("""
[[task]]
name = "slow"
run = "sleep 30"
[[task]]
name = "bad"
run = "sleep 0.3; exit 1"
""")
    report = dispatch(project, fail_fast=True)
    statuses = {t.name: t.status.value for t in report.tasks}
    assert statuses == {"slow": "cancelled", "bad": "failed"}
    assert report.duration_s < 20 and report.exit_code == 1


def test_a_timeout_fails_the_task_and_retries_run_it_again(project: Path) -> None:
    (project / "tasks.toml").write_text("""
[[task]]
name = "hang"
run = "sleep 30"
timeout = "0.5s"
retries = 1
""")
    report = dispatch(project)
    (task,) = report.tasks
    assert task.status is TaskStatus.FAILED and task.attempts == 2
    assert "timed out after 0.5s" in (task.error or "")
    log = Path(task.log).read_text()
    assert "attempt 1" in log and "attempt 2" in log


def test_the_fallback_without_the_agent_gives_the_same_results(project: Path) -> None:
    report = dispatch(project, use_agent=False)
    assert report.exit_code == 0
    assert {h.runner for h in report.hosts} == {"exec"}


# -- the exit-code contract -------------------------------------------------------------


def _report(
    *,
    refused: bool = False,
    failed: bool = False,
    integrity: bool = False,
    interrupted: bool = False,
) -> DispatchReport:
    status = TaskStatus.FAILED if failed else TaskStatus.SUCCEEDED
    task = TaskResult("t", status, "h1", 1 if failed else 0, 1, 0.1, "t.log", None)
    hosts = (
        HostSummary("h1", "ok", "agent", 2, 1),
        HostSummary("h2", "unreachable", None, None, 0, "HOST KEY CHANGED", refused=refused),
    )
    return DispatchReport(
        "run", 0.0, 1.0, (task,), hosts, "/runs/run", interrupted, ("t",) if integrity else ()
    )


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({}, 0),  # h2 unreachable but not refused (e.g. its push failed): the tasks decide
        ({"refused": True}, 3),  # the other host did all the work: still a failed run
        ({"refused": True, "failed": True}, 3),
        ({"refused": True, "integrity": True, "failed": True}, 4),
        ({"refused": True, "interrupted": True, "integrity": True}, 130),
        ({"failed": True}, 1),
    ],
)
def test_a_refused_host_exits_3_in_the_documented_precedence(
    kwargs: dict[str, bool], code: int
) -> None:
    """130, then 4, then 3, then 1 (docs/ARCHITECTURE.md, "Exit codes")."""
    assert _report(**kwargs).exit_code == code


@pytest.mark.parametrize("name", ["manifest.json", "manifest.json.sig", "report.json"])
def test_with_artifacts_dir_a_task_named_like_a_record_is_refused_before_anything_starts(
    tmp_path: Path, name: str
) -> None:
    """Its outputs would go to DIR/manifest.json/, where the manifest's copy is written
    (as for exec/run --pull-dir and a host so named): bad input, said before any task runs."""
    (tmp_path / "tasks.toml").write_text(
        f'[[task]]\nname = "{name}"\nrun = "touch started; echo x > out.txt"\n'
        'outputs = ["out.txt"]\n'
    )
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        run_dispatch(
            load_tasks(tmp_path / "tasks.toml"),
            [Host(name="local", local=True, workdir=str(tmp_path))],
            LocalConnector(),
            state=StateDir(tmp_path / ".meshrun"),
            run_id="r1",
            options=DispatchOptions(),
            artifacts_dir=out,
        )
    assert f"task {name!r}: its outputs would go to {out}/{name}, where meshrun writes" in str(
        caught.value
    ), caught.value
    assert caught.value.fix == "give the task another name, or leave out --artifacts"
    assert not (tmp_path / "started").exists(), "no task may run"
    assert not out.exists() and not (tmp_path / ".meshrun").exists(), "nothing may be written"


def test_the_cli_refuses_such_a_task_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tasks.toml").write_text(
        '[[task]]\nname = "manifest.json"\nrun = "touch started"\n'
    )
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, "dispatch", str(tmp_path / "tasks.toml"), "--artifacts", str(out)
    )
    assert (code, stdout) == (2, ""), stderr
    assert "task 'manifest.json': its outputs would go to" in stderr, stderr
    assert "give the task another name, or leave out --artifacts" in stderr, stderr
    assert not (tmp_path / "started").exists() and not out.exists()
    # Without --artifacts the outputs go to the workspace: the name is fine.
    code, _, stderr = run_cli(monkeypatch, capsys, "dispatch", str(tmp_path / "tasks.toml"))
    assert code == 0, stderr


def test_two_task_files_in_one_directory_keep_their_history_and_reruns_apart(
    project: Path,
) -> None:
    """The same task name in two files: durations and --rerun-failed stay per file."""
    (project / "other.toml").write_text(
        '[[task]]\nname = "test"\nrun = "sleep 0.5"\n\n[[task]]\nname = "lint"\nrun = "exit 3"\n'
    )
    first = dispatch(project, run_id="r1")  # tasks.toml: all succeed, "test" at once
    assert first.exit_code == 0
    other = dispatch(project, graph=load_tasks(project / "other.toml"), run_id="r2")
    assert other.exit_code == 1  # other.toml's "lint" failed, and its run is the last

    history = project / ".meshrun/history.sqlite"
    with History(history) as h:
        graph = select_rerun(load_tasks(project / "tasks.toml"), h, None)
    assert list(graph.tasks) == [], "only another file's run failed 'lint'"
    with History(history, scope="tasks.toml") as h:
        learned = {r.task: r.last_s for r in h.durations()}
    assert set(learned) == {"build", "test", "ship", "lint"}
    assert learned["test"] < 0.5, "other.toml's 0.5 s 'test' must not be this file's"
    with History(history, scope="other.toml") as h:
        assert {r.task: r.last_s >= 0.5 for r in h.durations()} == {"test": True}
        assert list(select_rerun(load_tasks(project / "other.toml"), h, None).tasks) == ["lint"]


def test_meshrun_history_shows_only_that_files_tasks(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "other.toml").write_text('[[task]]\nname = "solo"\nrun = "true"\n')
    dispatch(project, run_id="r1")
    dispatch(project, graph=load_tasks(project / "other.toml"), run_id="r2")
    code, out, _ = run_cli(monkeypatch, capsys, "history", str(project / "other.toml"), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["scope"] == "other.toml" and [t["name"] for t in doc["tasks"]] == ["solo"]


def test_the_agent_is_imported_with_its_bytecode_kept_and_a_json_py_cannot_shadow_it(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent starts in the login directory, as over SSH. There a json.py must not
    # replace the agent's json: python3 -c puts the current directory first on
    # sys.path, so the agent's own directory takes that place.
    home = tmp_path_factory.mktemp("home")
    (home / "json.py").write_text("raise SystemExit('the login directory shadowed json')\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    report = dispatch(project)
    assert report.exit_code == 0, report
    assert [h.runner for h in report.hosts] == ["agent"]
    cached = list((project / ".meshrun/scripts/__pycache__").glob("agent_*.pyc"))
    assert len(cached) == 1, cached


def test_the_agent_is_uploaded_once_and_then_started_in_one_session(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshrun.agent import client

    uploads: list[str] = []
    real_upload = client.upload_script

    def counted(workdir: str, name: str) -> str:
        uploads.append(name)
        return real_upload(workdir, name)

    monkeypatch.setattr(client, "upload_script", counted)
    for run_id, expected in (("r1", 1), ("r2", 1)):  # installed by the first run only
        report = dispatch(project, run_id=run_id)
        assert report.exit_code == 0, report
        assert [h.runner for h in report.hosts] == ["agent"], run_id
        assert len(uploads) == expected, (run_id, uploads)

"""The replay of failed tasks says what ended each: an exit code, or the reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshrun.cli.console import DispatchConsole
from meshrun.dispatch.executor import DispatchReport, TaskResult
from meshrun.dispatch.scheduler import TaskStatus


@pytest.mark.parametrize(
    ("exit_code", "error", "header"),
    [
        (1, "exit code 1", "(on h1, exit 1, attempt 1)"),
        (
            0,
            "h1: output 'dist/**': matched no file",
            "(on h1, h1: output 'dist/**': matched no file, attempt 1)",
        ),
        (
            143,
            "timed out after 3s; its processes were killed",
            "(on h1, timed out after 3s; its processes were killed, attempt 1)",
        ),
    ],
)
def test_the_replay_header_names_what_ended_the_task(
    tmp_path: Path, exit_code: int, error: str, header: str
) -> None:
    log = tmp_path / "t.log"
    log.write_text("the task's output\n")
    task = TaskResult("t", TaskStatus.FAILED, "h1", exit_code, 1, 0.5, str(log), error)
    report = DispatchReport("run", 0.0, 1.0, (task,), (), str(tmp_path))
    err = io.StringIO()
    DispatchConsole(total=1, out=io.StringIO(), err=err, progress=False).finish(report)
    assert header in err.getvalue()
    assert "exit 0" not in err.getvalue()
    assert "the task's output" in err.getvalue()


@pytest.mark.parametrize(
    ("statuses", "last_line"),
    [
        ([TaskStatus.FAILED, TaskStatus.SUCCEEDED], "meshrun: log of t0: {logs}/t0.log"),
        (
            [TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED],
            "meshrun: logs of the 2 tasks that did not succeed: {logs}/<task>.log",
        ),
        (
            [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED],
            "meshrun: output of succeeded tasks: {logs}/succeeded.log, a slice each "
            "(log_offset, log_bytes in {run}/report.json)",
        ),
    ],
)
def test_the_last_line_points_at_the_logs_worth_opening(
    tmp_path: Path, statuses: list[TaskStatus], last_line: str
) -> None:
    logs = tmp_path / "logs"
    tasks = []
    for n, status in enumerate(statuses):
        ran = 0 if status is TaskStatus.SKIPPED else 1  # a skipped task never ran: no log
        if status is TaskStatus.SUCCEEDED:
            log, offset, size = str(logs / "succeeded.log"), 60 * n, 60
        else:
            log, offset, size = str(logs / f"t{n}.log"), None, None
        tasks.append(
            TaskResult(
                f"t{n}", status, "h1", 0, ran, 0.5, log, None, log_offset=offset, log_bytes=size
            )
        )
    report = DispatchReport("run", 0.0, 1.0, tuple(tasks), (), str(tmp_path))
    err = io.StringIO()
    DispatchConsole(total=len(tasks), out=io.StringIO(), err=err, progress=False).finish(report)
    assert err.getvalue().splitlines()[-1] == last_line.format(logs=logs, run=tmp_path)

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

"""Task logs: small ones in memory, then one shared file of slices for tasks that
succeeded; a file of their own for big logs and for tasks that did not succeed; no file
descriptor held between writes; and every reader (replay, JUnit) reading the slice."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from meshrun.cli.console import DispatchConsole
from meshrun.dispatch.executor import DispatchReport, TaskResult
from meshrun.dispatch.executor import logs as logs_module
from meshrun.dispatch.executor.logs import (
    MEMORY_BOUND,
    SUCCEEDED_LOG,
    LogPlace,
    TaskLogs,
    log_chunks,
    log_tail,
)
from meshrun.dispatch.record import _log_text, dispatch_document
from meshrun.dispatch.scheduler import TaskStatus


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    made = tmp_path / "logs"
    made.mkdir()
    return made


def _read(place: LogPlace) -> bytes:
    return b"".join(log_chunks(place.path, place.offset, place.size))


def _open_paths() -> set[str]:
    """Every file this process holds open now."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return found


def test_succeeded_tasks_share_one_file_and_each_reads_back_its_own_slice(
    logs_dir: Path,
) -> None:
    logs = TaskLogs(logs_dir)
    logs.write("a", b"# attempt 1\n")
    logs.write("b", b"b's output\n")
    logs.write("a", b"a's output\n")
    assert list(logs_dir.iterdir()) == [], "nothing is written while the logs are small"
    logs.finish("b", succeeded=True)
    logs.finish("a", succeeded=True)
    logs.close()
    assert [p.name for p in logs_dir.iterdir()] == [SUCCEEDED_LOG]
    shared = str(logs_dir / SUCCEEDED_LOG)
    assert logs.place("b") == LogPlace(shared, 0, len(b"b's output\n"))
    assert logs.place("a") == LogPlace(shared, 11, len(b"# attempt 1\na's output\n"))
    assert _read(logs.place("a")) == b"# attempt 1\na's output\n"
    assert _read(logs.place("b")) == b"b's output\n"
    assert logs.held_bytes == 0


def test_a_task_that_did_not_succeed_has_a_file_of_its_own(logs_dir: Path) -> None:
    logs = TaskLogs(logs_dir)
    logs.write("bad", b"boom\n")
    logs.write("good", b"fine\n")
    logs.finish("bad", succeeded=False)
    logs.finish("good", succeeded=True)
    logs.close()
    assert (logs_dir / "bad.log").read_bytes() == b"boom\n"
    assert logs.place("bad") == LogPlace(str(logs_dir / "bad.log"))
    assert logs.place("never-ran") == LogPlace(str(logs_dir / "never-ran.log"))


def test_a_big_log_goes_to_its_own_file_without_holding_an_fd(logs_dir: Path) -> None:
    logs = TaskLogs(logs_dir)
    chunk = b"x" * 1000 + b"\n"
    written = b""
    while len(written) <= 3 * MEMORY_BOUND:
        logs.write("big", chunk)
        written += chunk
        assert str(logs_dir / "big.log") not in _open_paths(), "no fd held between writes"
    assert logs.held_bytes <= MEMORY_BOUND, "what went to the file left memory"
    logs.finish("big", succeeded=True)  # too big for the shared file: stays its own
    logs.close()
    assert logs.place("big") == LogPlace(str(logs_dir / "big.log"))
    assert (logs_dir / "big.log").read_bytes() == written
    assert not (logs_dir / SUCCEEDED_LOG).exists()


def test_the_run_budget_spills_the_log_being_written(
    logs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs_module, "MEMORY_BUDGET", 100)
    logs = TaskLogs(logs_dir)
    for n in range(5):
        logs.write(f"t{n}", b"y" * 30)
    assert logs.held_bytes <= 100
    assert sorted(p.name for p in logs_dir.iterdir()) == ["t3.log", "t4.log"]
    logs.finish("t3", succeeded=True)
    logs.finish("t0", succeeded=True)
    logs.close()
    assert logs.place("t3") == LogPlace(str(logs_dir / "t3.log"))
    assert _read(logs.place("t0")) == b"y" * 30


def test_logs_still_in_memory_when_the_run_ends_get_their_own_file(logs_dir: Path) -> None:
    logs = TaskLogs(logs_dir)
    logs.write("running", b"half done\n")
    logs.close()
    assert (logs_dir / "running.log").read_bytes() == b"half done\n"


def test_a_log_that_cannot_be_written_stays_in_memory_until_it_can(tmp_path: Path) -> None:
    logs_dir = tmp_path / "logs"  # missing: every write fails, as with EMFILE or ENOSPC
    logs = TaskLogs(logs_dir)
    logs.write("bad", b"first\n")
    logs.finish("bad", succeeded=False)
    logs.write("big", b"z" * (MEMORY_BOUND + 1))
    assert logs.held_bytes == len(b"first\n") + MEMORY_BOUND + 1, "nothing is lost"
    logs_dir.mkdir()
    logs.write("big", b"end\n")
    logs.close()
    assert (logs_dir / "bad.log").read_bytes() == b"first\n"
    assert (logs_dir / "big.log").read_bytes() == b"z" * (MEMORY_BOUND + 1) + b"end\n"


def test_the_tail_of_a_slice_stays_inside_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    path.write_bytes(b"before|0123456789|after")
    assert log_tail(str(path), 7, 10, limit=4) == (b"6789", True)
    assert log_tail(str(path), 7, 10, limit=10) == (b"0123456789", False)
    assert log_tail(str(path), limit=5) == (b"after", True)
    assert b"".join(log_chunks(str(path), 7, 10, chunk=3)) == b"0123456789"


def _sliced_task(tmp_path: Path, status: TaskStatus) -> TaskResult:
    shared = tmp_path / SUCCEEDED_LOG
    shared.write_bytes(b"other task\n" + "héllo from t\n".encode() + b"another\n")
    size = len("héllo from t\n".encode())
    return TaskResult(
        "t", status, "h1", 1, 1, 0.5, str(shared), "exit code 1", log_offset=11, log_bytes=size
    )


def test_the_report_and_its_readers_take_the_slice(tmp_path: Path) -> None:
    task = _sliced_task(tmp_path, TaskStatus.FAILED)
    report = DispatchReport("run", 0.0, 1.0, (task,), (), str(tmp_path))
    (entry,) = dispatch_document(report)["tasks"]
    assert (entry["log"], entry["log_offset"], entry["log_bytes"]) == (task.log, 11, 14)
    assert _log_text(task) == "héllo from t\n"
    err = io.StringIO()
    DispatchConsole(total=1, out=io.StringIO(), err=err, progress=False).finish(report)
    assert "héllo from t\n" in err.getvalue()
    assert "other task" not in err.getvalue() and "another" not in err.getvalue()

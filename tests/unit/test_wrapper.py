"""The shell wrapper, run by the real /bin/sh (no SSH involved)."""

import subprocess
import time
from pathlib import Path

import pytest

from meshrun.transport.wrapper import (
    WORKDIR_FAILED,
    build_wrapper,
    shell_command,
    upload_script,
    workdir_expr,
)


def sh(script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` with ``stdin`` written and then closed (uploads, plain scripts)."""
    return subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, check=False)


def wrapped(script: str) -> subprocess.CompletedProcess[bytes]:
    """Run a wrapper the way a channel does: stdin stays open until the command ends
    (closing it early means "the coordinator is gone" and kills the command)."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    code = proc.wait(timeout=30)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    return subprocess.CompletedProcess(proc.args, code, out, err)


def test_one_argument_is_a_shell_line_several_are_quoted() -> None:
    assert shell_command(["echo a | tr a b"]) == "echo a | tr a b"
    assert shell_command(["printf", "%s\n", "a b", "c'd"]) == "printf '%s\n' 'a b' 'c'\"'\"'d'"
    with pytest.raises(ValueError):
        shell_command([])


def test_workdir_tilde_means_remote_home(tmp_path: Path) -> None:
    out = sh(f"HOME={tmp_path}; echo {workdir_expr('~/a b')}")
    assert out.stdout.decode().strip() == f"{tmp_path}/a b"
    assert workdir_expr("/x;rm -rf /") == "'/x;rm -rf /'"


def test_wrapper_runs_in_workdir_with_env_and_status(tmp_path: Path) -> None:
    work = tmp_path / "w d"
    script = build_wrapper(
        'pwd; echo "$GREETING"; exit 3', workdir=str(work), env={"GREETING": "hi 'x'"}
    )
    out = wrapped(script)
    assert out.returncode == 3, out.stderr
    assert out.stdout.decode().splitlines() == [str(work), "hi 'x'"]
    assert work.is_dir()


def test_wrapper_reports_an_unusable_workdir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = wrapped(build_wrapper("true", workdir=str(blocker / "sub"), env={}))
    assert out.returncode == WORKDIR_FAILED
    assert b"cannot enter work directory" in out.stderr


def test_wrapper_rejects_bad_env_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="environment variable"):
        build_wrapper("true", workdir=str(tmp_path), env={"A-B": "x"})


def test_closing_stdin_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = f"{time.time_ns() % 10**6}.125"
    script = build_wrapper(
        f"sleep {marker} & sleep {marker}; echo never", workdir=str(tmp_path), env={}
    )
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _running(marker):
        time.sleep(0.05)
    assert len(_running(marker)) == 2, "both sleeps should have started"
    assert proc.stdin is not None
    proc.stdin.close()  # what a dropped SSH channel looks like to the wrapper
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 143 and b"never" not in out
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(marker):
        time.sleep(0.1)
    assert _running(marker) == [], "the wrapper left processes behind"


def _running(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [
        line
        for line in ps.splitlines()
        if marker in line and not line.startswith("Z") and "/bin/sh" not in line
    ]


def test_upload_stores_once_and_reports_the_path(tmp_path: Path) -> None:
    cmd = upload_script(str(tmp_path), "abc-deploy.sh")
    first = sh(cmd, stdin=b"#!/bin/sh\necho one\n")
    path = Path(first.stdout.decode().strip())
    assert first.returncode == 0 and path == tmp_path / ".meshrun/scripts/abc-deploy.sh"
    assert path.read_bytes() == b"#!/bin/sh\necho one\n"
    mtime = path.stat().st_mtime_ns
    second = sh(cmd, stdin=b"other bytes are ignored: the name is the content's hash")
    assert second.returncode == 0 and Path(second.stdout.decode().strip()) == path
    assert path.stat().st_mtime_ns == mtime and path.read_bytes().startswith(b"#!/bin/sh")
    with pytest.raises(ValueError):
        upload_script(str(tmp_path), "../escape")

"""The consoles with output of any size: lines capped, group blocks bounded."""

from __future__ import annotations

import io

from meshrun.cli.console import DispatchConsole, FleetConsole, OutputMode
from meshrun.dispatch.executor import TaskEnded, TaskLine
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.fleet.run import HostFinished, HostOutput, HostResult, HostStatus
from meshrun.transport.capture import HEAD_BYTES, MAX_LINE_BYTES, TAIL_BYTES


def test_a_host_printing_megabytes_without_a_newline_streams_in_capped_lines() -> None:
    out = io.StringIO()
    console = FleetConsole(host_names=["h1"], out=out, err=io.StringIO(), progress=False)
    chunk = b"z" * 4096
    for _ in range(1024):  # 4 MiB, no newline
        console(HostOutput("h1", "stdout", chunk))
    console(HostOutput("h1", "stdout", b"end"))
    console(HostFinished(HostResult("h1", HostStatus.OK, exit_code=0, duration_s=1.0)))
    lines = out.getvalue().splitlines()
    assert all(line.startswith("h1 | ") for line in lines)
    assert max(len(line) for line in lines) == len("h1 | ") + MAX_LINE_BYTES
    assert sum(len(line) - len("h1 | ") for line in lines) == 4 * 1024 * 1024 + len("end")
    assert lines[-1] == "h1 | end"  # 4 MiB is 64 pieces exactly; the rest ends it


def test_a_task_block_keeps_the_head_and_tail_and_says_what_it_left_out() -> None:
    out = io.StringIO()
    console = DispatchConsole(
        total=1, mode=OutputMode.GROUP, out=out, err=io.StringIO(), progress=False
    )
    line = b"x" * 1023 + b"\n"
    count = 4 * (HEAD_BYTES + TAIL_BYTES) // len(line)
    console(TaskLine("t", "stdout", b"first line\n"))
    for _ in range(count):
        console(TaskLine("t", "stdout", line))
    console(TaskLine("t", "stdout", b"last line\n"))
    console(TaskEnded("t", "h1", TaskStatus.SUCCEEDED, 0, 1.0, None))
    text = out.getvalue()
    assert "first line" in text and text.rstrip().endswith("last line")
    left_out = len(b"first line\n") + count * len(line) + len(b"last line\n")
    left_out -= HEAD_BYTES + TAIL_BYTES
    assert f"[meshrun: {left_out} bytes of output left out here]" in text
    assert len(text) < HEAD_BYTES + TAIL_BYTES + 1000

"""The host agent as a process, driven over its pipes as the coordinator drives it.

No network: the agent is started here with ``python3 -u -c AGENT_MAIN DIR NAME``,
exactly as it is started on a host. These are the task shapes CI scripts use that once
stalled it (closed pipes, a child holding stdout, daemons, SIGTERM ignored) and input
that once killed it (a NUL byte). "Stalled" is told apart from "working" by a 60 s sleep that a
working agent never waits for: the bounds below are a fraction of it, not a speed test.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshrun.agent import AGENT_MAIN, agent_source

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc")

#: What a stalled agent would wait for; every bound below is far under it.
LONG_S = 60
#: How long any one answer may take, generously (a loaded CI box).
ANSWER_S = 20.0


class AgentProc:
    """A running agent: send ops, read events (a reader thread; never blocks a test)."""

    def __init__(self, tmp: Path) -> None:
        script = tmp / "agent_under_test.py"
        script.write_bytes(agent_source())
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", AGENT_MAIN, str(tmp), "agent_under_test"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tmp,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.next()["ev"] == "hello"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def send(self, **op: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(op) + "\n").encode())
        self.proc.stdin.flush()

    def next(self, timeout: float = ANSWER_S) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def run(self, task_id: str, cmd: str, cwd: Path, **env: str) -> None:
        self.send(op="run", id=task_id, cmd=cmd, cwd=str(cwd), env=env)

    def until_exit(self, task_id: str, timeout: float = ANSWER_S) -> tuple[dict[str, Any], bytes]:
        """Events up to ``task_id``'s exit: (the exit event, its stdout+stderr)."""
        out = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no exit for {task_id} within {timeout:g}s")
            ev = self.next(left)
            if ev.get("id") != task_id:
                continue
            if ev["ev"] == "out":
                out += base64.b64decode(ev["b64"])
            if ev["ev"] == "exit":
                return ev, out

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=ANSWER_S)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path)
    yield a
    if a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()
    for pipe in (a.proc.stdin, a.proc.stdout):
        if pipe is not None:
            pipe.close()


def _marker() -> str:
    """A sleep whose command line is unique to the test (found with /proc)."""
    return f"{LONG_S}.{uuid.uuid4().int % 10**6:06d}"


def _alive_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in argv and state != b"Z":
            found.append(int(name))
    return found


def _gone(marker: str, within: float = ANSWER_S) -> bool:
    deadline = time.monotonic() + within
    while _alive_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(
            "exec >selflog.txt 2>&1; echo hidden; sleep {m} & echo shown >&2", id="redirects"
        ),
        pytest.param("echo early; (sleep {m}; echo late) &", id="child-holds-stdout"),
        pytest.param("echo early; nohup sleep {m} >/dev/null 2>&1 &", id="nohup"),
        pytest.param("echo early; setsid sleep {m} &", id="setsid-holds-stdout"),
    ],
)
def test_a_task_ends_with_its_process_whatever_its_children_hold(
    agent: AgentProc, tmp_path: Path, shape: str
) -> None:
    marker = _marker()
    agent.run("t", shape.format(m=marker), tmp_path)
    started = time.monotonic()
    ev, out = agent.until_exit("t")
    took = time.monotonic() - started
    assert ev["code"] == 0, ev
    assert took < LONG_S / 4, f"the exit waited for the background sleep ({took:.1f}s)"
    assert b"late" not in out
    if "setsid" not in shape:  # its own session: it is killed when the agent exits
        assert _gone(marker), "expected what the task left in its group killed at its end"
    # The agent is still responsive, and on exit leaves nothing behind.
    agent.run("after", "echo next", tmp_path)
    assert agent.until_exit("after")[1] == b"next\n"
    assert agent.close() == 0
    assert _gone(marker), f"'sleep {marker}' outlived the agent"


@pytest.mark.parametrize(
    ("shape", "signal"),
    [
        pytest.param("exec >selflog.txt 2>&1; sleep {m}", 15, id="self-redirecting-gets-term"),
        pytest.param(
            "trap '' TERM; exec >/dev/null; sleep {m}; echo no", 9, id="ignores-term-gets-kill"
        ),
    ],
)
def test_a_cancelled_task_is_stopped_whatever_it_did_to_its_output(
    agent: AgentProc, tmp_path: Path, shape: str, signal: int
) -> None:
    """SIGTERM at once; SIGKILL after the grace for a task that ignores it."""
    marker = _marker()
    agent.run("t", shape.format(m=marker), tmp_path)
    deadline = time.monotonic() + ANSWER_S
    while not _alive_with(marker):
        assert time.monotonic() < deadline, "the task never started its sleep"
        time.sleep(0.05)
    agent.send(op="cancel", id="t")
    ev, _ = agent.until_exit("t")
    assert ev["signal"] == signal, ev
    assert _gone(marker)


def test_a_quick_task_is_not_held_up_by_a_long_one_beside_it(
    agent: AgentProc, tmp_path: Path
) -> None:
    marker = _marker()
    agent.run("long", f"exec 2>&1 >/dev/null; sleep {marker}", tmp_path)
    for i in range(5):
        agent.run(f"q{i}", f"echo {i}", tmp_path)
        ev, out = agent.until_exit(f"q{i}")
        assert (ev["code"], out) == (0, f"{i}\n".encode())
    assert agent.close() == 0  # EOF: the long task is stopped with the agent
    assert _gone(marker)


def test_a_nul_byte_fails_its_task_and_the_agent_lives(agent: AgentProc, tmp_path: Path) -> None:
    agent.run("bad", "echo a\0b", tmp_path)
    ev, _ = agent.until_exit("bad")
    assert ev["code"] == 127, ev
    agent.send(op="run", id="bad-env", cmd="true", cwd=str(tmp_path), env={"A": "x\0y"})
    assert agent.until_exit("bad-env")[0]["code"] == 127
    agent.run("good", "echo fine", tmp_path)
    assert agent.until_exit("good") == (
        {"ev": "exit", "id": "good", "code": 0, "signal": None},
        b"fine\n",
    )


def test_output_written_just_before_exit_is_all_delivered(agent: AgentProc, tmp_path: Path) -> None:
    agent.run("big", "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end >&2", tmp_path)
    ev, out = agent.until_exit("big")
    assert ev["code"] == 0
    assert out.count(b"x") == 3_000_000 and out.endswith(b"end\n"), len(out)


def test_what_one_turn_produces_goes_out_in_one_write(tmp_path: Path) -> None:
    """Events made while handling one read (here three answers) leave in one write: one
    SSH packet and one wake of the coordinator's reader, not one each. A SEQPACKET
    socket as stdout keeps each write a record of its own."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    script = tmp_path / "agent.py"
    script.write_bytes(agent_source())
    proc = subprocess.Popen(
        [sys.executable, "-u", str(script)], stdin=subprocess.PIPE, stdout=theirs, cwd=tmp_path
    )
    theirs.close()
    try:
        ours.settimeout(ANSWER_S)
        assert json.loads(ours.recv(1 << 16))["ev"] == "hello"
        assert proc.stdin is not None
        proc.stdin.write(b'not json\n{"op": "load"}\n{"op": "nonsense\n')
        proc.stdin.flush()
        lines = ours.recv(1 << 16).splitlines()
        assert [json.loads(line)["ev"] for line in lines] == ["error", "load", "error"], lines
    finally:
        proc.kill()
        proc.wait()
        ours.close()
        if proc.stdin is not None:
            proc.stdin.close()

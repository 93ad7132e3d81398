"""The runners' side of the per-task cost: how many writes a turn's starts take on the
agent's channel, and that the exec runner keeps no thread of a task that ended."""

from __future__ import annotations

import json
import queue
import threading
import time

from meshrun.agent.client import AgentRunner, ExecRunner, RunnerEvent, TaskExited, start_runner
from meshrun.config.inventory import Host
from meshrun.testing.fake import FakeConnector, Scripted

H1 = Host(name="h1", address="h1", workdir="/w")


class RecordingStream:
    """The agent's channel: every write kept apart; the agent says hello, then nothing."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self._out: queue.Queue[bytes] = queue.Queue()
        self._out.put(b'{"ev":"hello","version":1,"cpus":2,"pid":1}\n')

    def send(self, data: bytes) -> None:
        self.writes.append(data)

    def recv(self) -> bytes:
        return self._out.get()

    @property
    def lost_reason(self) -> str | None:
        return None

    def close(self) -> None:
        self._out.put(b"")


def _ops(write: bytes) -> list[tuple[str, str | None]]:
    return [(m["op"], m.get("id")) for m in map(json.loads, write.splitlines())]


def test_a_turns_starts_on_a_host_go_out_in_one_write_and_a_cancel_never_overtakes() -> None:
    stream = RecordingStream()
    runner = AgentRunner("h1", stream, lambda event: None)
    for n in range(3):
        runner.run(f"t#{n}", "true", "/w", {"MESHRUN_TASK": "t"})
    assert stream.writes == []  # held until the end of the executor's turn
    runner.flush()
    assert [_ops(w) for w in stream.writes] == [[("run", "t#0"), ("run", "t#1"), ("run", "t#2")]]
    runner.flush()
    assert len(stream.writes) == 1  # nothing queued: nothing sent
    runner.run("t#3", "sleep 9", "/w", {})
    runner.cancel("t#3")  # before the flush: the start goes first, in the same write
    assert _ops(stream.writes[-1]) == [("run", "t#3"), ("cancel", "t#3")]
    runner.close()


def test_the_exec_runner_keeps_no_thread_of_a_task_that_ended() -> None:
    events: queue.Queue[RunnerEvent] = queue.Queue()
    connector = FakeConnector({"true": Scripted(0)})
    runner = start_runner(connector.connect(H1), H1.workdir, events.put, use_agent=False)
    assert isinstance(runner, ExecRunner)
    before = threading.active_count()
    for n in range(40):
        runner.run(f"t#{n}", "true", H1.workdir, {})
        runner.flush()
        event = events.get(timeout=10)
        assert event == TaskExited("h1", f"t#{n}", 0)
    deadline = time.monotonic() + 10
    while runner.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.threads == 0
    assert len(runner._threads) == 0  # what used to grow with every task
    assert threading.active_count() <= before + 1
    runner.close()

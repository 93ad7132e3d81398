"""Running tasks on a host: through the persistent agent, or one exec channel per task.

Both runners offer the same small interface to the dispatch executor — ``run``,
``flush``, ``cancel``, ``request_load``, ``stop``/``join``/``close`` — and report through
one callback, from their own threads: ``TaskOutput``, ``TaskExited``, ``LoadReport``,
``RunnerGone``.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from meshrun.agent import AGENT_MAIN, agent_file_name, agent_source
from meshrun.errors import CommandError, MeshrunError
from meshrun.records import record
from meshrun.transport.base import CommandRequest, Connection, ProcessStream, Stream
from meshrun.transport.wrapper import upload_script, workdir_expr

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 15.0

#: One encoder for every message (``json.dumps`` with options builds one per call).
_encode = json.JSONEncoder(separators=(",", ":")).encode


@record
class TaskOutput:
    host: str
    task_id: str
    stream: Stream
    data: bytes


@record
class TaskExited:
    host: str
    task_id: str
    exit_code: int | None  # None: the runner lost the task (no status)
    error: str | None = None


@record
class LoadReport:
    host: str
    load1: float
    cpus: int


@record
class RunnerGone:
    host: str
    reason: str


RunnerEvent = TaskOutput | TaskExited | LoadReport | RunnerGone
Sink = Callable[[RunnerEvent], None]


class Runner(Protocol):
    host: str
    cpus: int | None
    kind: str  # "agent" | "exec"

    def run(self, task_id: str, command: str, cwd: str, env: Mapping[str, str]) -> None:
        """Start a task; it may wait for ``flush`` (the end of the caller's turn)."""
        ...

    def flush(self) -> None:
        """Send what ``run`` held back. MeshrunError when the link is gone."""
        ...

    def cancel(self, task_id: str) -> None: ...

    def request_load(self) -> None: ...

    def stop(self) -> None:
        """Begin closing and return at once (the run's end closes every host's runner
        from one thread: 256 closing threads took 8 s to start under the GIL)."""
        ...

    def join(self, timeout_s: float) -> None:
        """After ``stop``: wait up to ``timeout_s`` for the runner's threads."""
        ...

    def close(self) -> None:
        """``stop``, then ``join`` (up to 10 s)."""
        ...


class AgentUnavailable(MeshrunError):
    """The agent could not start on the host (e.g. no python3): fall back to exec."""


class AgentMissing(AgentUnavailable):
    """This version of the agent is not installed on the host yet: upload it, start again."""


class AgentRunner:
    """Many tasks over one channel to the agent process on the host.

    ``run`` only queues its line; ``flush`` sends what is queued in one channel write.
    The executor flushes once per turn of its loop, so the tasks it starts on a host in
    one turn (the slots freed by exits that arrived together) cost one SSH packet and
    one wake of the agent, not one each. Every other message flushes the queue first:
    a cancel never overtakes the start of its task.
    """

    kind = "agent"

    def __init__(self, host: str, stream: ProcessStream, sink: Sink) -> None:
        self.host = host
        self.cpus: int | None = None
        self._stream = stream
        self._sink = sink
        self._hello = threading.Event()
        self._closing = False
        self._missing = False
        self._queued: list[bytes] = []  # run lines not yet sent
        self._queue_lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()  # None: gone
        self._reader = threading.Thread(
            target=self._read, name=f"meshrun-agent-{host}", daemon=True
        )
        self._reader.start()
        if not self._hello.wait(HELLO_TIMEOUT_S) or self.cpus is None:
            self._closing = True
            stream.close()
            if self._missing:
                raise AgentMissing(f"{host}: the agent is not installed yet")
            raise AgentUnavailable(f"{host}: the agent did not start (is python3 installed?)")

    def _send(self, message: dict[str, Any]) -> None:
        line = (_encode(message) + "\n").encode()
        with self._queue_lock:
            self._queued.append(line)
            self._send_queued()

    def _send_queued(self) -> None:
        """Under the queue's lock: every queued line, in order, in one write."""
        data = b"".join(self._queued)
        self._queued.clear()
        self._stream.send(data)

    def send_lines(self, data: bytes) -> None:
        """Workspace messages that have no reply (``apply`` lines, ``put`` lines each
        followed by the file's raw bytes), already encoded (:mod:`meshrun.workspace.mirror`)."""
        self._stream.send(data)

    def request(self, message: dict[str, Any], reply: str) -> dict[str, Any]:
        """Send a workspace message and wait for its ``reply`` event (``claimed``,
        ``scanned``, ``mirrored``): these come before any task runs on the host, so
        no other request is in flight. Raises AgentUnavailable when the agent is gone
        and MeshrunError when it reports an error."""
        self._send(message)
        answer = self._replies.get()
        if answer is None:
            self._replies.put(None)  # the next request learns it too
            raise AgentUnavailable(f"{self.host}: the agent went away")
        if answer.get("error"):
            raise MeshrunError(f"{self.host}: {answer['error']}")
        if answer.get("ev") != reply:
            raise MeshrunError(
                f"{self.host}: the agent answered {answer.get('ev')!r}, not {reply!r}"
            )
        return answer

    def run(self, task_id: str, command: str, cwd: str, env: Mapping[str, str]) -> None:
        message = {"op": "run", "id": task_id, "cmd": command, "cwd": cwd, "env": dict(env)}
        line = (_encode(message) + "\n").encode()
        with self._queue_lock:
            self._queued.append(line)

    def flush(self) -> None:
        with self._queue_lock:
            if self._queued:
                self._send_queued()

    def cancel(self, task_id: str) -> None:
        self._send({"op": "cancel", "id": task_id})

    def request_load(self) -> None:
        self._send({"op": "load"})

    def stop(self) -> None:
        self._closing = True
        self._stream.close()  # the agent kills everything it started

    def join(self, timeout_s: float) -> None:
        self._reader.join(timeout=timeout_s)

    def close(self) -> None:
        self.stop()
        self.join(10)

    def _read(self) -> None:
        buffer = b""
        while True:
            data = self._stream.recv()
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self._dispatch(line)
        self._hello.set()
        self._replies.put(None)
        if not self._closing:
            reason = self._stream.lost_reason or "the connection to the agent was lost"
            self._sink(RunnerGone(self.host, reason))

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            event = msg["ev"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable agent message %r", self.host, line[:200])
            return
        if event == "hello":
            self.cpus = int(msg.get("cpus") or 1)
            self._hello.set()
        elif event == "missing":  # said by agent_command's shell, not by an agent
            self._missing = self._closing = True  # not a runner gone: none started
            self._hello.set()
        elif event == "out":
            self._sink(
                TaskOutput(self.host, msg["id"], msg["stream"], base64.b64decode(msg["b64"]))
            )
        elif event == "exit":
            self._sink(TaskExited(self.host, msg["id"], msg.get("code")))
        elif event == "load":
            self._sink(LoadReport(self.host, float(msg["load1"]), int(msg["cpus"])))
        elif event in ("claimed", "scanned", "mirrored"):
            self._replies.put(msg)
        elif event == "error":
            if msg.get("error"):  # a workspace request that failed before its reply
                self._replies.put(msg)
            else:
                log.warning("%s: agent: %s", self.host, msg.get("message"))


class ExecRunner:
    """One exec channel (with the wrapper) per task, for hosts without python3."""

    kind = "exec"

    def __init__(self, host: str, conn: Connection, sink: Sink, cpus: int | None) -> None:
        self.host = host
        self.cpus = cpus
        self._conn = conn
        self._sink = sink
        self._cancels: dict[str, threading.Event] = {}
        # One thread per running task, each gone from here when its task has ended
        # (a 10,000-task run would otherwise keep 10,000 finished threads).
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def run(self, task_id: str, command: str, cwd: str, env: Mapping[str, str]) -> None:
        cancel = threading.Event()
        with self._lock:
            self._cancels[task_id] = cancel
        # The wrapper runs in the host's workdir; a run with a workdir of its own there
        # (meshrun.workspace.workdirs) changes into it first.
        if cwd != self._conn.host.workdir:
            command = f"cd -- {shlex.quote(cwd)} || exit 125\n{command}"
        thread = threading.Thread(
            target=self._run,
            args=(task_id, command, env, cancel),
            name=f"meshrun-exec-{self.host}",
            daemon=True,
        )
        with self._lock:
            self._threads[task_id] = thread
        try:
            thread.start()
        except RuntimeError:  # can't start new thread: the caller tries again later
            with self._lock:
                self._cancels.pop(task_id, None)
                self._threads.pop(task_id, None)
            raise

    def flush(self) -> None:
        """Each task's channel opened when it was run: nothing is held back."""

    def _run(
        self, task_id: str, command: str, env: Mapping[str, str], cancel: threading.Event
    ) -> None:
        try:
            self._run_task(task_id, command, env, cancel)
        finally:  # reported: ``close`` need not wait for it
            with self._lock:
                self._threads.pop(task_id, None)

    def _run_task(
        self, task_id: str, command: str, env: Mapping[str, str], cancel: threading.Event
    ) -> None:
        def forward(stream: Stream, data: bytes) -> None:
            self._sink(TaskOutput(self.host, task_id, stream, data))

        try:
            out = self._conn.run(CommandRequest(command, env=env), on_output=forward, cancel=cancel)
        except MeshrunError as exc:
            self._sink(TaskExited(self.host, task_id, None, str(exc)))
            self._sink(RunnerGone(self.host, str(exc)))
            return
        finally:
            with self._lock:
                self._cancels.pop(task_id, None)
        if not out.started:
            # Stopped while waiting for a free session (the host's MaxSessions): it
            # never ran, and the host is fine.
            self._sink(TaskExited(self.host, task_id, None, "stopped before it started"))
        elif out.exit_code is None:
            # No status, even after a kill: the link is gone or the host is hung.
            reason = (
                (out.lost_reason or "the connection was lost")
                if out.lost
                else "no exit status after a kill"
            )
            self._sink(TaskExited(self.host, task_id, None, reason))
            self._sink(RunnerGone(self.host, reason))
        else:
            self._sink(TaskExited(self.host, task_id, out.exit_code))

    def cancel(self, task_id: str) -> None:
        with self._lock:
            event = self._cancels.get(task_id)
        if event is not None:
            event.set()

    def request_load(self) -> None:
        """Load is not polled without the agent (it would cost a channel per poll)."""

    def stop(self) -> None:
        with self._lock:
            for event in self._cancels.values():
                event.set()

    def join(self, timeout_s: float) -> None:
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.stop()
        self.join(10)

    @property
    def threads(self) -> int:
        """Threads of tasks that have not ended yet."""
        with self._lock:
            return len(self._threads)


def agent_command(workdir: str) -> str:
    """Start the installed agent of this version; if it is not there, say so (one line
    the runner reads as ``missing``) instead. Starting first and installing only when
    needed makes a host's usual start one session, not an upload and then a start."""
    name = agent_file_name()
    return (
        f"d={workdir_expr(workdir)}/.meshrun/scripts; "
        f'[ -f "$d"/{shlex.quote(name)} ] || {{ echo \'{{"ev":"missing"}}\'; exit 0; }}; '
        "command -v python3 >/dev/null 2>&1 || exit 127; "
        f'exec python3 -u -c {shlex.quote(AGENT_MAIN)} "$d" '
        f"{shlex.quote(name.removesuffix('.py'))}"
    )


def start_runner(conn: Connection, workdir: str, sink: Sink, *, use_agent: bool = True) -> Runner:
    """Start the agent (installed once per version, content-addressed, when it is
    missing); fall back to exec channels."""
    host = conn.host.name

    def agent() -> AgentRunner:
        try:
            stream = conn.open_process(agent_command(workdir))
        except CommandError as exc:  # the host's side refused it; a lost link propagates
            raise AgentUnavailable(f"{host}: the agent could not be started: {exc}") from exc
        return AgentRunner(host, stream, sink)

    if use_agent:
        try:
            try:
                return agent()
            except AgentMissing:
                up = conn.run_raw(upload_script(workdir, agent_file_name()), stdin=agent_source())
                if up.exit_code != 0:
                    raise AgentUnavailable(
                        f"{host}: could not install the agent: "
                        f"{up.stderr[-300:].decode(errors='replace').strip()}"
                    ) from None
                return agent()
        except AgentUnavailable as exc:
            log.warning("%s; running each task over its own channel", exc)
    probe = conn.run_raw("getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null")
    try:
        cpus: int | None = int(probe.stdout.decode().strip() or "0") or None
    except ValueError:
        cpus = None
    return ExecRunner(host, conn, sink, cpus)

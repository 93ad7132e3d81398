"""meshrun's host agent: runs many tasks over one channel. Stdlib only, Python 3.6+.

This file is shipped to a host as is (stored under its content hash in the workdir)
and started with ``python3 agent.py``; it is never imported by the coordinator.

Protocol: one JSON object per line in both directions.

    coordinator -> agent
      {"op": "run", "id": "t1", "cmd": "make", "cwd": "/w", "env": {...}}
      {"op": "cancel", "id": "t1"}
      {"op": "load"}
    agent -> coordinator
      {"ev": "hello", "version": 1, "cpus": 8, "pid": 123}
      {"ev": "started", "id": "t1", "pid": 456}
      {"ev": "out", "id": "t1", "stream": "stdout", "b64": "..."}
      {"ev": "exit", "id": "t1", "code": 0, "signal": null}
      {"ev": "load", "load1": 0.5, "cpus": 8}
      {"ev": "error", "id": "t1", "message": "..."}

Every task runs in a new session (its own process group). When stdin reaches EOF —
the coordinator closed the channel, the connection died or the coordinator was killed —
the agent sends SIGTERM to every group it started, SIGKILL after a grace period, and
exits: nothing it started outlives the link.
"""

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time

VERSION = 1
GRACE_S = 3.0


def send(obj):
    line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    view = memoryview(line)
    while view:
        n = os.write(1, view)
        view = view[n:]


def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load1():
    try:
        return os.getloadavg()[0]
    except OSError:
        return -1.0


def kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Agent:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.procs = {}  # id -> Popen
        self.open_streams = {}  # id -> number of open output pipes
        self.buffer = b""
        self.stdin_open = True
        self.kill_at = {}  # id -> when a cancelled task's group gets SIGKILL

    def start(self, msg):
        task_id = msg["id"]
        env = dict(os.environ)
        env.update(msg.get("env") or {})
        cwd = os.path.expanduser(msg.get("cwd") or "") or None
        try:
            if cwd:
                os.makedirs(cwd, exist_ok=True)
            proc = subprocess.Popen(
                ["/bin/sh", "-c", msg["cmd"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            send({"ev": "error", "id": task_id, "message": "cannot start: %s" % exc})
            send({"ev": "exit", "id": task_id, "code": 127, "signal": None})
            return
        self.procs[task_id] = proc
        self.open_streams[task_id] = 2
        self.sel.register(proc.stdout, selectors.EVENT_READ, (task_id, "stdout"))
        self.sel.register(proc.stderr, selectors.EVENT_READ, (task_id, "stderr"))
        send({"ev": "started", "id": task_id, "pid": proc.pid})

    def finish(self, task_id):
        self.kill_at.pop(task_id, None)
        proc = self.procs.pop(task_id)
        code = proc.wait()
        kill_group(proc.pid, signal.SIGKILL)  # anything it left in its group
        if code < 0:
            send({"ev": "exit", "id": task_id, "code": 128 - code, "signal": -code})
        else:
            send({"ev": "exit", "id": task_id, "code": code, "signal": None})

    def handle(self, line):
        try:
            msg = json.loads(line)
            op = msg["op"]
        except (ValueError, KeyError, TypeError):
            send({"ev": "error", "id": None, "message": "bad message: %r" % line[:200]})
            return
        if op == "run":
            self.start(msg)
        elif op == "cancel":
            task_id = msg.get("id")
            proc = self.procs.get(task_id)
            if proc is not None:
                kill_group(proc.pid, signal.SIGTERM)
                # A task that ignores SIGTERM is killed after the grace, as the exec
                # wrapper does: a stop request always ends the task.
                self.kill_at.setdefault(task_id, time.monotonic() + GRACE_S)
        elif op == "load":
            send({"ev": "load", "load1": load1(), "cpus": cpus()})

    def read_stdin(self):
        data = os.read(0, 65536)
        if not data:
            self.stdin_open = False
            self.sel.unregister(0)
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.handle(line.decode("utf-8", "replace"))

    def read_output(self, key):
        task_id, stream = key.data
        data = os.read(key.fd, 65536)
        if data:
            send(
                {
                    "ev": "out",
                    "id": task_id,
                    "stream": stream,
                    "b64": base64.b64encode(data).decode(),
                }
            )
            return
        self.sel.unregister(key.fileobj)
        key.fileobj.close()
        self.open_streams[task_id] -= 1
        if self.open_streams[task_id] == 0:
            del self.open_streams[task_id]
            self.finish(task_id)

    def shutdown(self):
        for proc in self.procs.values():
            kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(0.05)
        for proc in self.procs.values():
            kill_group(proc.pid, signal.SIGKILL)
            proc.poll()

    def main(self):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        self.sel.register(0, selectors.EVENT_READ, None)
        send({"ev": "hello", "version": VERSION, "cpus": cpus(), "pid": os.getpid()})
        try:
            while self.stdin_open:
                timeout = None
                if self.kill_at:
                    timeout = max(0.0, min(self.kill_at.values()) - time.monotonic())
                for key, _ in self.sel.select(timeout):
                    if key.data is None:
                        self.read_stdin()
                    else:
                        self.read_output(key)
                now = time.monotonic()
                for task_id, when in list(self.kill_at.items()):
                    if when <= now:
                        del self.kill_at[task_id]
                        proc = self.procs.get(task_id)
                        if proc is not None:
                            kill_group(proc.pid, signal.SIGKILL)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        finally:
            self.shutdown()


if __name__ == "__main__":
    # Tasks start in the agent's cwd unless told otherwise; stdout is the protocol.
    sys.stdout = sys.stderr
    Agent().main()

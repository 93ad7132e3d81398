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

A task is its process, not its pipes. The agent learns that a task's process ended from
SIGCHLD (``waitpid``), never by waiting on it, so nothing a task does can stall the
agent: a task that redirects its own output (``exec >log 2>&1``), leaves a child holding
its stdout, daemonises, or ignores SIGTERM still ends when its process ends, and a
cancel is acted on at once. When the process ends, whatever is left in its process
group is killed, the output already written is read (for at most ``DRAIN_S``; a
descendant that escaped the group cannot hold the task open), and the exit is reported.

Every task runs in a new session (its own process group). On Linux the agent is also a
child subreaper, so descendants that leave their group (``setsid``, double forks) are
re-parented to the agent instead of init; they are killed when the agent exits. When
stdin reaches EOF — the coordinator closed the channel, the connection died or the
coordinator was killed — the agent sends SIGTERM to every group it started and every
process it adopted, SIGKILL after a grace period, and exits: nothing it started
outlives the link.
"""

import base64
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import time

VERSION = 1
#: Between SIGTERM and SIGKILL, for a cancel and for the agent's own exit.
GRACE_S = 3.0
#: After a task's process ended, its pipes are read until they are quiet this long...
DRAIN_S = 0.5
#: ...or this long after the end, whichever is first: a descendant that escaped the
#: task's group and keeps writing cannot hold the task open.
DRAIN_MAX_S = 5.0
_PR_SET_CHILD_SUBREAPER = 36


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


def become_subreaper():
    """Adopt orphaned descendants (Linux >= 3.4); elsewhere, carry on without."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no libc, no prctl: not Linux
        pass


def own_children():
    """Pids whose parent is this agent (Linux /proc; empty elsewhere)."""
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(name))
    return found


def status_of(status):
    """(exit code, signal) from a waitpid status, shell-style: 128+N when killed."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


class Task:
    __slots__ = ("done_at", "drain_end", "exit", "id", "kill_at", "pid", "proc", "streams")

    def __init__(self, task_id, proc):
        self.id = task_id
        self.proc = proc
        self.pid = proc.pid
        self.streams = {}  # fd -> file object, while open
        self.exit = None  # (code, signal) once the process ended
        self.done_at = None  # when its pipes are closed whether drained or not
        self.drain_end = None  # the latest done_at can move to
        self.kill_at = None  # a cancelled task's group gets SIGKILL then


class Agent:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.tasks = {}  # id -> Task, until its exit is reported
        self.by_pid = {}  # pid -> Task, until its process is reaped
        self.buffer = b""
        self.stdin_open = True
        self.wake_r, self.wake_w = os.pipe()

    # -- starting and stopping tasks ----------------------------------------------------

    def start(self, msg):
        task_id = msg.get("id")
        try:
            if task_id in self.tasks:
                raise ValueError("task id %r is already running" % (task_id,))
            env = dict(os.environ)
            env.update(msg.get("env") or {})
            cwd = os.path.expanduser(msg.get("cwd") or "") or None
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
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # A NUL byte, a bad cwd, a missing field: this task fails, the agent lives.
            send({"ev": "error", "id": task_id, "message": "cannot start: %s" % exc})
            send({"ev": "exit", "id": task_id, "code": 127, "signal": None})
            return
        task = Task(task_id, proc)
        self.tasks[task_id] = task
        self.by_pid[proc.pid] = task
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            task.streams[pipe.fileno()] = pipe
            self.sel.register(pipe, selectors.EVENT_READ, (task, stream))
        send({"ev": "started", "id": task_id, "pid": proc.pid})

    def cancel(self, task_id):
        task = self.tasks.get(task_id)
        if task is None or task.exit is not None:
            return
        kill_group(task.pid, signal.SIGTERM)
        # A task that ignores SIGTERM is killed after the grace, as the exec wrapper
        # does: a stop request always ends the task.
        if task.kill_at is None:
            task.kill_at = time.monotonic() + GRACE_S

    def reap(self):
        """Collect every child that ended: tasks, and descendants the agent adopted."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            if pid == 0:
                return
            task = self.by_pid.pop(pid, None)
            if task is None:
                continue  # an adopted orphan: reaped, nothing to report
            code, sig = status_of(status)
            task.proc.returncode = -sig if sig else code  # Popen must not wait again
            task.exit = (code, sig)
            task.kill_at = None
            kill_group(task.pid, signal.SIGKILL)  # anything it left in its group
            now = time.monotonic()
            task.drain_end = now + DRAIN_MAX_S
            task.done_at = now + DRAIN_S
            self.finish_if_done(task)

    def finish_if_done(self, task):
        """Report a task's exit once its process ended and its pipes are drained."""
        if task.exit is None:
            return
        if task.streams and time.monotonic() < task.done_at:
            return
        for fd in list(task.streams):
            self.close_stream(task, fd)
        del self.tasks[task.id]
        code, sig = task.exit
        send({"ev": "exit", "id": task.id, "code": code, "signal": sig})

    def close_stream(self, task, fd):
        pipe = task.streams.pop(fd)
        self.sel.unregister(pipe)
        pipe.close()

    # -- reading ------------------------------------------------------------------------

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
            self.cancel(msg.get("id"))
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
        task, stream = key.data
        try:
            data = os.read(key.fd, 65536)
        except BlockingIOError:
            return
        if data:
            send(
                {
                    "ev": "out",
                    "id": task.id,
                    "stream": stream,
                    "b64": base64.b64encode(data).decode(),
                }
            )
            if task.exit is not None:  # still draining: wait for the pipes to go quiet
                task.done_at = min(time.monotonic() + DRAIN_S, task.drain_end)
            return
        self.close_stream(task, key.fd)
        self.finish_if_done(task)

    def drain_wakeups(self):
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- the loop -----------------------------------------------------------------------

    def next_deadline(self):
        times = [t.kill_at for t in self.tasks.values() if t.kill_at is not None]
        times += [t.done_at for t in self.tasks.values() if t.done_at is not None]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def on_deadlines(self):
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.kill_at is not None and task.kill_at <= now:
                task.kill_at = None
                kill_group(task.pid, signal.SIGKILL)
            if task.done_at is not None and task.done_at <= now:
                self.finish_if_done(task)

    def shutdown(self):
        """Stop everything this agent started or adopted: TERM, the grace, then KILL."""
        groups = [t.pid for t in self.by_pid.values()]
        adopted = [p for p in own_children() if p not in self.by_pid]
        for pid in groups:
            kill_group(pid, signal.SIGTERM)
        for pid in adopted:
            self.signal_adopted(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline:
            self.reap()
            if not self.by_pid and not own_children():
                break
            time.sleep(0.05)
        for pid in groups:
            kill_group(pid, signal.SIGKILL)
        for pid in own_children():
            self.signal_adopted(pid, signal.SIGKILL)
        self.reap()

    @staticmethod
    def signal_adopted(pid, sig):
        """An adopted process and, when it leads one, its process group."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def main(self):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        become_subreaper()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(0, selectors.EVENT_READ, None)
        send({"ev": "hello", "version": VERSION, "cpus": cpus(), "pid": os.getpid()})
        try:
            while self.stdin_open:
                for key, _ in self.sel.select(self.next_deadline()):
                    if key.data is None:
                        self.read_stdin()
                    elif key.data == "wake":
                        self.drain_wakeups()
                    elif key.fd in key.data[0].streams:
                        self.read_output(key)
                # SIGCHLD can be coalesced or arrive between select calls: always look.
                self.reap()
                self.on_deadlines()
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        finally:
            self.shutdown()


if __name__ == "__main__":
    # Tasks start in the agent's cwd unless told otherwise; stdout is the protocol.
    sys.stdout = sys.stderr
    Agent().main()

"""meshrun's host agent: runs many tasks over one channel. Stdlib only, Python 3.6+.

This file is shipped to a host as is (stored under its content hash in the workdir)
and started with ``python3 agent.py``; it is never imported by the coordinator.

Protocol: one JSON object per line in both directions (the agent writes what one turn
of its loop produced at once: several lines may come in one read).

    coordinator -> agent
      {"op": "run", "id": "t1", "cmd": "make", "cwd": "/w", "env": {...}}
      {"op": "cancel", "id": "t1"}
      {"op": "load"}
      {"op": "claim", "base": "~/w", "dir": ".meshrun/ws", "key": "proj-1a2b",
       "max_age_s": 604800}
      {"op": "scan", "root": "/w/.meshrun/ws/proj-1a2b", "dirs": [""], "paths": []}
      {"op": "apply", "delete": [...], "mkdir": [[path, mode]], "links": [[path, target]],
       "attrs": [[path, mode, mtime_ns]]}
      {"op": "put", "path": "a/b", "mode": 420, "mtime_ns": 1, "size": 3, "sha": "..."}
      then exactly ``size`` raw bytes: the file (no line, no encoding)
      {"op": "done", "dirs": [[path, mode, mtime_ns]]}
    agent -> coordinator
      {"ev": "hello", "version": 1, "cpus": 8, "pid": 123}
      {"ev": "out", "id": "t1", "stream": "stdout", "b64": "..."}
      {"ev": "exit", "id": "t1", "code": 0, "signal": null}
      {"ev": "load", "load1": 0.5, "cpus": 8}
      {"ev": "error", "id": "t1", "message": "..."}
      {"ev": "claimed", "path": "/w/.meshrun/ws/proj-1a2b.2"}  (or "error": "...")
      {"ev": "scanned", "entries": [[path, kind, mode, size, mtime_ns, sha, target]]}
      {"ev": "mirrored", "written": 3, "deleted": 1, "error": null}

The workspace mirror (``claim`` ... ``done``) happens before any task runs on the host.
``claim`` locks a workdir of its own for this run (``flock``, held until the agent
exits; see meshrun/workspace/workdirs.py for the layout) and removes workdirs no run claimed for
``max_age_s``. ``scan`` lists what is there, with the SHA-256 of every file the agent
itself wrote and that is unchanged since (same size, mtime, inode and ctime: the record
in ``.meshrun/mirror.json``); the coordinator compares that with its own manifest and
sends only the difference: what to delete, directories, symlinks, files (written beside
their target, checked against their size and SHA-256, then renamed into place).

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

# hashlib and shutil are imported where they are used (a mirror's file, a cleanup):
# every host pays the agent's start, and hashlib's OpenSSL set-up alone was ~7 ms of it.
import base64
import errno
import fcntl
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import threading
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


#: Events waiting to go out: written together once per turn of the loop (``flush``),
#: so the exits of tasks that end together, a task's last output and its exit, or a
#: load report beside them, cross the link as one write, one SSH packet and one wake of
#: the coordinator's reader instead of one each (10,000 quick tasks: about half the
#: coordinator's CPU per task was spent on a packet per event).
OUTBOX = []


def send(obj):
    OUTBOX.append((json.dumps(obj, separators=(",", ":")) + "\n").encode())


def flush():
    """Write every event sent since the last flush, in order, in one write."""
    if not OUTBOX:
        return
    view = memoryview(b"".join(OUTBOX))
    del OUTBOX[:]
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


# -- the workdir claim and the workspace mirror ------------------------------------------

OWN = ".meshrun"
RECORD = OWN + "/mirror.json"
MAX_CLAIMS = 32


def lock_free(fd, path):
    """Take ``fd``'s lock without waiting; True when it is ours and ``path`` is still
    the file locked (a cleanup may have removed the name meanwhile)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def take(where, name, held):
    """Lock ``where/<name>.lock`` without waiting; the workdir's path, or None when
    another run holds it. The lock's mtime becomes the last claim (what the age
    cleanup reads); its descriptor goes to ``held``, kept until the agent exits."""
    lock = os.path.join(where, name + ".lock")
    for _ in range(3):  # the name may be removed under us by a cleanup: open again
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        if lock_free(fd, lock):
            os.utime(lock)
            held.append(fd)
            path = os.path.join(where, name)
            os.makedirs(path, exist_ok=True)
            return path
        os.close(fd)
        if os.path.exists(lock):
            return None  # held by another run
    return None


def claim(base, key, held, prefer=None, wait_s=0.0, subdir=".meshrun/ws"):
    """Lock ``base/<subdir>/<key>[.N]`` for this agent's life; return its absolute path.

    ``prefer``: the name this run held before its link dropped; waited for up to
    ``wait_s`` (the old agent lets go once it has stopped its tasks), so the host
    goes on with its copy instead of a new one."""
    where = os.path.join(os.path.abspath(os.path.expanduser(base)), subdir)
    os.makedirs(where, exist_ok=True)
    names = ["%s.%d" % (key, n) if n > 1 else key for n in range(1, MAX_CLAIMS + 1)]
    if prefer in names:
        deadline = time.monotonic() + wait_s
        while True:
            path = take(where, prefer, held)
            if path is not None:
                return path
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    for name in names:
        path = take(where, name, held)
        if path is not None:
            return path
    raise OSError("%d runs from this workspace already hold a workdir here" % MAX_CLAIMS)


def clean_stale(where, max_age_s, mine):
    """Remove workdirs whose lock is older than ``max_age_s`` and free (no run holds
    it): lock, move aside, drop the lock file, then delete at leisure."""
    try:
        names = os.listdir(where)
    except OSError:
        return
    limit = time.time() - max_age_s
    for name in names:
        path = os.path.join(where, name)
        if name.startswith(".trash-"):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            continue
        if not name.endswith(".lock") or name[:-5] == mine:
            continue
        try:
            if os.stat(path).st_mtime >= limit:
                continue
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            if not lock_free(fd, path):
                continue
            trash = os.path.join(where, ".trash-%s-%d" % (name[:-5], os.getpid()))
            try:
                os.rename(path[:-5], trash)
            except OSError:
                trash = None
            os.unlink(path)
        finally:
            os.close(fd)
        if trash is not None:
            import shutil

            shutil.rmtree(trash, ignore_errors=True)


def inside(root, rel):
    """``root/rel`` for a relative path that stays inside ``root`` and is not
    meshrun's own directory; ValueError otherwise."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts or "" in parts or parts[0] == OWN:
        raise ValueError("refused path %r" % (rel,))
    return os.path.join(root, rel)


def kind_of(mode):
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def remove(path):
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            import shutil

            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


class Mirror:
    """One workspace push into ``root``: scan, apply the difference, record."""

    def __init__(self, root):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.real_root = os.path.realpath(self.root)
        os.makedirs(self.root, exist_ok=True)
        try:
            with open(os.path.join(self.root, RECORD)) as f:
                self.record = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.record = {}
        self.known = {}  # path -> record entry, for files scanned unchanged
        self.error = None
        self.put = None  # [path, temp, file, hasher, size, msg]
        self.written = 0
        self.deleted = 0

    def fail(self, message):
        if self.error is None:
            self.error = message

    def entry(self, rel, path):
        try:
            st = os.lstat(path)
        except OSError:
            return None
        kind = kind_of(st.st_mode)
        sha = target = None
        if kind == "f":
            rec = self.record.get(rel)
            now = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
            if isinstance(rec, list) and len(rec) == 5 and rec[:4] == now:
                sha = rec[4]
                self.known[rel] = rec
        elif kind == "l":
            try:
                target = os.readlink(path)
            except OSError:
                target = ""
        mode = stat.S_IMODE(st.st_mode)
        return [rel, kind, mode, st.st_size, st.st_mtime_ns, sha, target]

    def scan(self, dirs, paths):
        entries = []
        for rel in dirs:
            path = self.root if rel == "" else inside(self.root, rel)
            try:
                names = sorted(os.listdir(path))
            except OSError:
                continue
            for name in names:
                if rel == "" and name == OWN:
                    continue
                child = name if rel == "" else rel + "/" + name
                found = self.entry(child, os.path.join(path, name))
                if found is not None:
                    entries.append(found)
        for rel in paths:
            found = self.entry(rel, inside(self.root, rel))
            if found is not None:
                entries.append(found)
        return entries

    def check_parent(self, path):
        parent = os.path.realpath(os.path.dirname(path))
        if parent != self.real_root and not parent.startswith(self.real_root + "/"):
            raise ValueError("refused %r: its directory leads outside the workdir" % (path,))

    def apply(self, msg):
        try:
            for rel in msg.get("delete") or ():
                remove(inside(self.root, rel))
                self.known.pop(rel, None)
                self.deleted += 1
            for rel, mode in msg.get("mkdir") or ():
                path = inside(self.root, rel)
                self.check_parent(path)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    if os.path.islink(path) or not os.path.isdir(path):
                        raise
                os.chmod(path, mode | 0o700)  # writable until ``done`` sets its mode
            for rel, target in msg.get("links") or ():
                path = inside(self.root, rel)
                self.check_parent(path)
                remove(path)
                os.symlink(target, path)
            for rel, mode, mtime_ns in msg.get("attrs") or ():
                path = inside(self.root, rel)
                os.chmod(path, mode)
                os.utime(path, ns=(mtime_ns, mtime_ns))
                self.remember(rel, path, self.known[rel][4])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.fail("applying the difference: %s" % (exc,))

    def remember(self, rel, path, sha):
        st = os.lstat(path)
        self.known[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, sha]

    def begin(self, msg):
        self.put = None
        if self.error is not None:
            return
        try:
            path = inside(self.root, msg["path"])
            self.check_parent(path)
            head, tail = os.path.split(path)
            temp = os.path.join(head, ".%s.meshrun-%d" % (tail, os.getpid()))
            handle = open(temp, "wb")  # noqa: SIM115 (closed by end or abandon)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return self.fail("writing %r: %s" % (msg.get("path"), exc))
        import hashlib

        self.put = [path, temp, handle, hashlib.sha256(), 0, msg]

    def data(self, chunk):
        if self.put is None:
            return
        try:
            self.put[2].write(chunk)
        except OSError as exc:
            self.abandon("writing %r: %s" % (self.put[5]["path"], exc))
            return
        self.put[3].update(chunk)
        self.put[4] += len(chunk)

    def abandon(self, message):
        temp, handle = self.put[1], self.put[2]
        self.put = None
        handle.close()
        try:
            os.unlink(temp)
        except OSError:
            pass
        self.fail(message)

    def end(self):
        if self.put is None:
            return
        path, temp, handle, hasher, size, msg = self.put
        try:
            handle.close()
        except OSError as exc:
            return self.abandon("writing %r: %s" % (msg["path"], exc))
        if size != msg["size"] or hasher.hexdigest() != msg["sha"]:
            return self.abandon(
                "%r changed on this machine while it was sent; push again" % (msg["path"],)
            )
        try:
            os.chmod(temp, msg["mode"])
            os.utime(temp, ns=(msg["mtime_ns"], msg["mtime_ns"]))
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil

                shutil.rmtree(path)
            os.rename(temp, path)
            self.remember(msg["path"], path, msg["sha"])
        except OSError as exc:
            return self.abandon("placing %r: %s" % (msg["path"], exc))
        self.put = None
        self.written += 1

    def done(self, msg):
        for rel, mode, mtime_ns in msg.get("dirs") or ():
            try:
                path = self.root if rel == "" else inside(self.root, rel)
                st = os.lstat(path)
                if rel != "" and stat.S_IMODE(st.st_mode) != mode:
                    os.chmod(path, mode)
                if st.st_mtime_ns != mtime_ns:
                    os.utime(path, ns=(mtime_ns, mtime_ns))
            except (OSError, ValueError) as exc:
                self.fail("setting %r's mode and time: %s" % (rel, exc))
        try:
            os.makedirs(os.path.join(self.root, OWN), exist_ok=True)
            temp = os.path.join(self.root, RECORD + ".%d" % os.getpid())
            with open(temp, "w") as f:
                json.dump({"version": 1, "files": self.known}, f)
            os.rename(temp, os.path.join(self.root, RECORD))
        except OSError as exc:
            self.fail("recording the mirror: %s" % (exc,))
        return {
            "ev": "mirrored",
            "written": self.written,
            "deleted": self.deleted,
            "error": self.error,
        }


class Agent:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.tasks = {}  # id -> Task, until its exit is reported
        self.by_pid = {}  # pid -> Task, until its process is reaped
        self.buffer = bytearray()
        self.raw_left = 0  # bytes of a file (``put``) still to come on stdin
        self.stdin_open = True
        self.wake_r, self.wake_w = os.pipe()
        self.held = []  # the claimed workdir's lock, held until the agent exits
        self.mirror = None

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
        elif op == "put":  # the file's bytes follow: read_stdin hands them over
            self.raw_left = max(0, int(msg.get("size") or 0))
            self.workspace(op, msg)
            if not self.raw_left and self.mirror is not None:
                self.mirror.end()
        elif op in ("claim", "scan", "apply", "done"):
            self.workspace(op, msg)

    def workspace(self, op, msg):
        try:
            if op == "claim":
                path = claim(
                    msg["base"],
                    msg["key"],
                    self.held,
                    msg.get("prefer"),
                    float(msg.get("wait_s") or 0),
                    msg.get("dir") or ".meshrun/ws",
                )
                send({"ev": "claimed", "path": path})
                age = msg.get("max_age_s")
                if age is not None:
                    where, mine = os.path.split(path)
                    threading.Thread(
                        target=clean_stale, args=(where, age, mine), daemon=True
                    ).start()
            elif op == "scan":
                self.mirror = Mirror(msg["root"])
                entries = self.mirror.scan(msg.get("dirs") or (), msg.get("paths") or ())
                send({"ev": "scanned", "entries": entries})
            elif self.mirror is None:
                raise ValueError("%r before scan" % (op,))
            elif op == "apply":
                self.mirror.apply(msg)
            elif op == "put":
                self.mirror.begin(msg)
            elif op == "done":
                mirror, self.mirror = self.mirror, None
                send(mirror.done(msg))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"claim": "claimed", "scan": "scanned", "done": "mirrored"}.get(op)
            if reply is None and self.mirror is not None:
                self.mirror.fail(str(exc))
            else:
                send({"ev": reply or "error", "id": None, "error": str(exc), "message": str(exc)})

    def read_stdin(self):
        data = os.read(0, 1 << 20)
        if not data:
            self.stdin_open = False
            self.sel.unregister(0)
            return
        self.buffer += data
        while True:
            if self.raw_left:
                chunk = bytes(self.buffer[: self.raw_left])
                del self.buffer[: len(chunk)]
                self.raw_left -= len(chunk)
                if self.mirror is not None:
                    self.mirror.data(chunk)
                if self.raw_left:
                    return
                if self.mirror is not None:
                    self.mirror.end()
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                return
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
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
                flush()  # what this turn sent, before waiting for the next
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

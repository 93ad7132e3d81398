"""An in-memory connector for unit tests: scripted command outcomes, no process, no
socket, no disk on the "host".

Unit tests of code above the transport (the dispatch executor, above all) need hosts
that run commands, fail, hang until stopped, drop their link or refuse a connection,
in milliseconds and the same way every time. :class:`FakeConnector` hands out one
:class:`FakeConnection` per host; each command's outcome comes from a script
(:class:`Scripted`, by command line, or any function of the host and request), and
every command run is recorded (``connector.runs``). A host's files live in a
:class:`MemoryDisk`, reached through the same calls as a real host's (``open_files``,
``get_files``, ``put_files``).

There is no agent on a fake host: installing it fails at once, so the dispatch
executor runs each task over its own "channel" (``use_agent=False`` skips the try and
its warning). For a real shell, processes and rsync, use the local connector.
"""

from __future__ import annotations

import errno
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from meshrun.config.inventory import Host
from meshrun.errors import CommandError, ConnectError, Interrupted
from meshrun.records import record
from meshrun.transport.base import (
    CommandOutcome,
    CommandRequest,
    OutputSink,
    ProcessStream,
    RawResult,
    _discard,
)
from meshrun.transport.files import Readable, put_files

if TYPE_CHECKING:
    from meshrun.transport.base import Connector
    from meshrun.transport.files import RemoteFiles

#: The status a fake command that was stopped (cancelled, timed out) exits with: what
#: the wrapper's SIGTERM to its process group leaves (128 + 15).
STOPPED_EXIT = 143
#: How the dispatch executor asks a host for its CPU count when it has no agent.
CPU_PROBE = "getconf _NPROCESSORS_ONLN"
#: What a fake host answers a raw command nobody scripted (the agent's upload too).
NOT_FOUND = 127


@record
class Scripted:
    """How one run of a command ends on a fake host.

    ``stdout``/``stderr`` are written to the output sink at once. ``wait``: the command
    runs until stopped (its ``cancel`` event, or the request's timeout), then exits
    STOPPED_EXIT: a hung task, or one long enough to be cancelled or moved. ``lost``:
    the link drops while it runs (no exit status), with that reason.
    """

    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    wait: bool = False
    lost: str | None = None


#: Any answer: what the command ``request`` gets on ``host``.
Responder = Callable[[Host, CommandRequest], Scripted]


@record
class Ran:
    """A command a fake host was asked to run (``FakeConnector.runs``, in order)."""

    host: str
    command: str
    env: Mapping[str, str]


class Script:
    """Outcomes by command line. The n-th run of a command, on whichever host, gets the
    n-th of its outcomes and the last one after that (a task that fails once, then
    succeeds: ``[Scripted(1), Scripted(0)]``); a command not listed exits 0, silent."""

    def __init__(self, outcomes: Mapping[str, Scripted | Sequence[Scripted]]) -> None:
        self._outcomes = {
            command: [answer] if isinstance(answer, Scripted) else list(answer)
            for command, answer in outcomes.items()
        }
        self._runs: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, host: Host, request: CommandRequest) -> Scripted:
        answers = self._outcomes.get(request.command)
        if not answers:
            return Scripted()
        with self._lock:
            n = self._runs.get(request.command, 0)
            self._runs[request.command] = n + 1
        return answers[min(n, len(answers) - 1)]


# -- a host's files ----------------------------------------------------------------------


@record(frozen=False)
class _Node:
    mode: int  # with the file type bits, as st_mode
    data: bytes = b""
    mtime: int = 0
    target: str = ""  # a symlink's


@record
class MemoryAttributes:
    """:class:`~meshrun.transport.files.FileAttributes` of a path on a MemoryDisk."""

    filename: str
    st_mode: int
    st_size: int
    st_mtime: int


class MemoryDisk:
    """A host's file system as a dict of absolute paths; ``/`` always exists. Errors are
    OSError by errno, as a file session raises them."""

    def __init__(self, home: str) -> None:
        self.home = home
        self._nodes: dict[str, _Node] = {"/": _Node(stat.S_IFDIR | 0o755)}
        self.lock = threading.RLock()
        self.mkdirs(home)

    def path(self, path: str) -> str:
        """``path`` made absolute (relative to the home, as a session starts there)."""
        return posixpath.normpath(posixpath.join(self.home, path))

    def node(self, path: str, *, follow: bool = True) -> _Node:
        where = self.path(path)
        for _ in range(40):  # symlink hops, as a kernel bounds them
            found = self._nodes.get(where)
            if found is None:
                raise FileNotFoundError(errno.ENOENT, "No such file", path)
            if not (follow and stat.S_ISLNK(found.mode)):
                return found
            where = posixpath.normpath(posixpath.join(posixpath.dirname(where), found.target))
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)

    def add(self, path: str, node: _Node) -> None:
        """Enter ``node`` at ``path``: its parent must be a directory."""
        where = self.path(path)
        parent = self.node(posixpath.dirname(where))
        if not stat.S_ISDIR(parent.mode):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        self._nodes[where] = node

    def mkdirs(self, path: str) -> None:
        """``mkdir -p``."""
        with self.lock:
            where = self.path(path)
            if where in self._nodes:
                return
            self.mkdirs(posixpath.dirname(where))
            self._nodes[where] = _Node(stat.S_IFDIR | 0o755)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """A file at ``path`` (parents made) holding ``data``: what a test puts on a host."""
        with self.lock:
            self.mkdirs(posixpath.dirname(self.path(path)))
            self._nodes[self.path(path)] = _Node(stat.S_IFREG | mode, data, int(time.time()))

    def read(self, path: str) -> bytes:
        with self.lock:
            return self.node(path).data

    def names(self, path: str) -> list[str]:
        where = self.path(path)
        prefix = where.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :]
            for p in self._nodes
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    def remove(self, path: str) -> None:
        with self.lock:
            del self._nodes[self.path(path)]


class MemoryFile:
    """An open file of a MemoryDisk: reads what it held; a write-mode file replaces the
    content on close."""

    def __init__(self, disk: MemoryDisk, path: str, mode: str) -> None:
        self._disk = disk
        self._path = path
        self._writing = "w" in mode or "a" in mode
        with disk.lock:
            if self._writing:
                try:
                    disk.node(path)
                except FileNotFoundError:
                    disk.add(path, _Node(stat.S_IFREG | 0o644, mtime=int(time.time())))
            node = disk.node(path)
            if stat.S_ISDIR(node.mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            self._data = node.data if "a" in mode or not self._writing else b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def close(self) -> None:
        if self._writing:
            with self._disk.lock:
                node = self._disk.node(self._path)
                node.data = self._data
                node.mtime = int(time.time())
            self._writing = False

    def __enter__(self) -> MemoryFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryFiles:
    """:class:`~meshrun.transport.files.RemoteFiles` on a MemoryDisk: a fake host's
    file session. ``closed`` says whether it was given back."""

    def __init__(self, disk: MemoryDisk) -> None:
        self._disk = disk
        self.closed = False

    def _attributes(self, path: str, name: str = "", *, follow: bool) -> MemoryAttributes:
        node = self._disk.node(path, follow=follow)
        return MemoryAttributes(name, node.mode, len(node.data), node.mtime)

    def stat(self, path: str) -> MemoryAttributes:
        with self._disk.lock:
            return self._attributes(path, follow=True)

    def listdir_attr(self, path: str) -> list[MemoryAttributes]:
        with self._disk.lock:
            if not stat.S_ISDIR(self._disk.node(path).mode):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            return [
                self._attributes(posixpath.join(path, name), name, follow=False)
                for name in self._disk.names(path)
            ]

    def mkdir(self, path: str) -> None:
        with self._disk.lock:
            if self._exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", path)
            self._disk.add(path, _Node(stat.S_IFDIR | 0o755))

    def _exists(self, path: str) -> bool:
        try:
            self._disk.node(path, follow=False)
        except FileNotFoundError:
            return False
        return True

    def remove(self, path: str) -> None:
        with self._disk.lock:
            if stat.S_ISDIR(self._disk.node(path, follow=False).mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            self._disk.remove(path)

    def rmdir(self, path: str) -> None:
        with self._disk.lock:
            if not stat.S_ISDIR(self._disk.node(path, follow=False).mode):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            if self._disk.names(path):
                raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
            self._disk.remove(path)

    def chmod(self, path: str, mode: int) -> None:
        with self._disk.lock:
            node = self._disk.node(path)
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)

    def utime(self, path: str, times: tuple[int, int]) -> None:
        with self._disk.lock:
            self._disk.node(path).mtime = times[1]

    def symlink(self, source: str, dest: str) -> None:
        with self._disk.lock:
            if self._exists(dest):
                raise FileExistsError(errno.EEXIST, "File exists", dest)
            self._disk.add(dest, _Node(stat.S_IFLNK | 0o777, target=source))

    def readlink(self, path: str) -> str | None:
        with self._disk.lock:
            node = self._disk.node(path, follow=False)
            return node.target if stat.S_ISLNK(node.mode) else None

    def posix_rename(self, old: str, new: str) -> None:
        with self._disk.lock:
            node = self._disk.node(old, follow=False)
            self._disk.add(new, node)
            self._disk.remove(old)

    def open(self, path: str, mode: str) -> MemoryFile:
        return MemoryFile(self._disk, path, mode)

    def putfo(self, handle: Readable, path: str, file_size: int, confirm: bool) -> None:
        data = handle.read()
        if confirm and len(data) != file_size:
            raise OSError(f"size mismatch in put: {len(data)} != {file_size}")
        with self.open(path, "wb") as out:
            out.write(data)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> MemoryFiles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- connections ---------------------------------------------------------------------------


class FakeConnection:
    """A fake host's link: thread-safe, as a real one is (commands run at once)."""

    def __init__(self, host: Host, connector: FakeConnector) -> None:
        self._host = host
        self._connector = connector
        self.disk = connector.disk(host.name)

    @property
    def host(self) -> Host:
        return self._host

    @property
    def host_key_fingerprint(self) -> str | None:
        return f"SHA256:fake-{self._host.name}"

    def run(
        self,
        request: CommandRequest,
        *,
        on_output: OutputSink = _discard,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        started = time.monotonic()
        answer = self._connector.answer(self._host, request)
        if answer.stdout:
            on_output("stdout", answer.stdout)
        if answer.stderr:
            on_output("stderr", answer.stderr)
        exit_code: int | None = answer.exit_code
        cancelled = timed_out = False
        if answer.wait:
            # Runs until stopped. Without a cancel event or a timeout, that is never:
            # the script asked for it.
            stopped = (cancel or threading.Event()).wait(request.timeout_s)
            cancelled, timed_out = stopped, not stopped
            exit_code = STOPPED_EXIT
        if answer.lost is not None:
            exit_code = None
        return CommandOutcome(
            exit_code=exit_code,
            stdout=answer.stdout,
            stderr=answer.stderr,
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            lost=answer.lost is not None,
            lost_reason=answer.lost,
        )

    def run_raw(self, command: str, *, stdin: bytes = b"", timeout_s: float = 60.0) -> RawResult:
        """The CPU probe gets the connector's ``cpus``; anything else NOT_FOUND."""
        if command.startswith(CPU_PROBE):
            return RawResult(0, f"{self._connector.cpus}\n".encode(), b"")
        return RawResult(NOT_FOUND, b"", b"sh: not on a fake host\n")

    def open_process(self, command: str) -> ProcessStream:
        raise CommandError(f"{self._host.name}: a fake host starts no process")

    def home(self) -> str:
        return self.disk.home

    def has_rsync(self) -> bool:
        """Never: transfers go through the file session."""
        return False

    def open_files(self) -> MemoryFiles:
        return MemoryFiles(self.disk)

    def get_files(
        self,
        root: str,
        paths: Sequence[str],
        into: Path,
        *,
        use_rsync: bool = True,
        cancel: threading.Event | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        """Copied out of the host's disk, symlinks followed; ``cancel`` is checked before
        each file."""
        for path in paths:
            if cancel is not None and cancel.is_set():
                raise Interrupted(f"{self._host.name}: pull stopped")
            try:
                data = self.disk.read(posixpath.join(root, path))
            except OSError as exc:
                raise CommandError(f"{self._host.name}: cannot fetch {path!r}: {exc}") from exc
            target = into / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def put_files(
        self,
        source: Path,
        files: Sequence[tuple[str, int]],
        root: str,
        *,
        use_rsync: bool = True,
        what: str = "push",
    ) -> None:
        """Through the file session, as a host without rsync takes them."""
        with self.open_files() as session:
            put_files(session, self._host.name, source, files, root)


@record
class Pushed:
    """A workspace push a fake host was asked for (``FakeConnector.pushes``)."""

    host: str
    root: str
    paths: tuple[str, ...]
    excludes: tuple[str, ...]
    hide: tuple[str, ...]


class FakeConnector:
    """Hands out fake connections, one per host (the same one again, as a pool would).

    ``script``: what commands do (a mapping from command line to outcomes, see
    :class:`Script`, or a Responder); ``cpus``: what every host reports; ``refuse``:
    hosts whose ``connect`` raises the error given (a HostUnreachable, an AuthError...),
    editable while a run lasts.
    """

    def __init__(
        self,
        script: Mapping[str, Scripted | Sequence[Scripted]] | Responder | None = None,
        *,
        cpus: int = 2,
        refuse: Mapping[str, ConnectError] | None = None,
    ) -> None:
        self.answer: Responder = script if callable(script) else Script(script or {})
        self.cpus = cpus
        self.refuse: dict[str, ConnectError] = dict(refuse or {})
        self.runs: list[Ran] = []
        self.pushes: list[Pushed] = []
        self.connects: list[str] = []  # host names, one per connect() call
        self.released: list[str] = []  # host names, one per release() call
        self.closed = False
        self._disks: dict[str, MemoryDisk] = {}
        self._connections: dict[str, FakeConnection] = {}
        self._lock = threading.Lock()
        inner = self.answer

        def recorded(host: Host, request: CommandRequest) -> Scripted:
            with self._lock:
                self.runs.append(Ran(host.name, request.command, dict(request.env)))
            return inner(host, request)

        self.answer = recorded

    def disk(self, host: str) -> MemoryDisk:
        """The host's files (made on first use, kept across connections)."""
        with self._lock:
            disk = self._disks.get(host)
            if disk is None:
                disk = self._disks[host] = MemoryDisk(f"/home/{host}")
            return disk

    def connect(self, host: Host) -> FakeConnection:
        with self._lock:
            self.connects.append(host.name)
            error = self.refuse.get(host.name)
        if error is not None:
            raise error
        with self._lock:
            conn = self._connections.get(host.name)
            if conn is not None and conn.host is host:
                return conn
        conn = FakeConnection(host, self)
        with self._lock:
            self._connections[host.name] = conn
        return conn

    def push(
        self,
        host: Host,
        *,
        root: str,
        paths: Sequence[str],
        excludes: Sequence[str],
        hide: Sequence[str] = (),
    ) -> None:
        """Recorded in ``pushes``; nothing is copied (a test of the mirror itself runs
        it on the local connector)."""
        if host.name in self.refuse:
            raise self.refuse[host.name]
        with self._lock:
            self.pushes.append(Pushed(host.name, root, tuple(paths), tuple(excludes), tuple(hide)))

    def release(self, host: Host) -> None:
        """The host's connection goes (recorded in ``released``); its disk stays."""
        with self._lock:
            self.released.append(host.name)
            self._connections.pop(host.name, None)

    def close(self) -> None:
        self.closed = True


if TYPE_CHECKING:  # mypy holds the fakes to the protocols they stand in for
    _connector: Connector = FakeConnector()
    _files: RemoteFiles = MemoryFiles(MemoryDisk("/"))

"""The one small interface every connector (ssh, local) offers the layers above.

A :class:`Connector` hands out :class:`Connection` objects; a connection runs commands
and moves files (its home directory, whether it has rsync, a file session, files got
and put), so that nothing above the transport needs to know which kind it holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Literal, Protocol

from meshrun.config.inventory import Host
from meshrun.records import record
from meshrun.transport.files import RemoteFiles

Stream = Literal["stdout", "stderr"]
OutputSink = Callable[[Stream, bytes], None]


def _discard(stream: Stream, data: bytes) -> None:
    """An OutputSink that keeps nothing (the outcome still carries the bytes)."""


@record
class CommandRequest:
    """A command to run inside the wrapper, in the host's workdir."""

    command: str  # a shell command line for /bin/sh
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


@record
class CommandOutcome:
    """What came back. ``exit_code`` is None when no status arrived (link lost)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    lost: bool = False  # the connection died before the command ended
    lost_reason: str | None = None  # why, when known: "stopped answering (...)"
    started: bool = True  # False: cancelled while waiting for a free session, never run


@record
class RawResult:
    """Result of a plain exec without the wrapper (uploads, probes)."""

    exit_code: int
    stdout: bytes
    stderr: bytes


@record
class HostFacts:
    """What transfers need to know of a host, asked once per connection."""

    home: str | None  # $HOME, absolute; None when the host did not say
    has_rsync: bool  # rsync on the login PATH


#: One round trip for both facts (each used to be its own exec channel and shell).
FACTS_COMMAND = 'printf "%s\\n" "$HOME"; command -v rsync >/dev/null 2>&1 && echo rsync; exit 0'


def parse_facts(stdout: bytes) -> HostFacts:
    lines = stdout.decode(errors="replace").splitlines()
    home = lines[0].strip() if lines else ""
    return HostFacts(
        home=home.rstrip("/") or "/" if home.startswith("/") else None,
        has_rsync="rsync" in (line.strip() for line in lines[1:]),
    )


class ProcessStream(Protocol):
    """A byte stream to a long-lived process on a host (the agent): its stdin/stdout.

    Closing it closes the process's stdin; a process that watches its stdin (the agent
    does) then stops everything it started.
    """

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes:
        """The next chunk of stdout; ``b""`` once the process or the link has gone."""
        ...

    @property
    def lost_reason(self) -> str | None:
        """Why the link went, when known ("stopped answering (...)"); else None."""
        ...

    def close(self) -> None: ...


class Connection(Protocol):
    """A live link to one host. Thread-safe: many commands may run at once."""

    @property
    def host(self) -> Host: ...

    @property
    def host_key_fingerprint(self) -> str | None:
        """``SHA256:...`` of the key the host presented; None for the local machine."""
        ...

    def run(
        self,
        request: CommandRequest,
        *,
        on_output: OutputSink = _discard,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        """Run ``request`` in the wrapper; return when it ended, timed out or was cancelled.

        Setting ``cancel`` closes the command's stdin, which makes the wrapper kill the
        command's whole process group; the call then still waits for the exit status.
        """
        ...

    def run_raw(self, command: str, *, stdin: bytes = b"", timeout_s: float = 60.0) -> RawResult:
        """Run a short command as is (no wrapper), feeding ``stdin`` and closing it."""
        ...

    def open_process(self, command: str) -> ProcessStream:
        """Start ``command`` (a shell line, run in the user's home) and stream to it."""
        ...

    # -- file transfer ------------------------------------------------------------------

    def home(self) -> str | None:
        """The host's ``$HOME``, absolute; None when it did not say. Asked once per
        connection (with :meth:`has_rsync`, in one round trip), then remembered."""
        ...

    def has_rsync(self) -> bool:
        """Whether rsync is on the host's login PATH (asked once, with :meth:`home`)."""
        ...

    def open_files(self) -> RemoteFiles:
        """A file session on the host (SFTP over SSH; the disk for the local machine),
        counted among the host's sessions until closed. CommandError when none opens."""
        ...

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
        """Copy each of ``paths`` (relative to the host's directory ``root``) to
        ``into/<path>``: rsync when ``use_rsync`` and rsync is here and on the host,
        else the file session (copies for the local machine). Symlinks arrive as the
        files they point to; permission bits as the host's (rsync) or not at all.

        Setting ``cancel`` stops it: Interrupted ("pull stopped"). CommandError (or
        ConnectError for a lost link) when a file cannot be fetched; ``timeout_s``
        bounds rsync.
        """
        ...

    def put_files(
        self,
        source: Path,
        files: Sequence[tuple[str, int]],
        root: str,
        *,
        use_rsync: bool = True,
        what: str = "push",
    ) -> None:
        """Copy each ``(path, mode)`` of ``files`` from ``source/<path>`` to
        ``root/<path>`` on the host, parents made, each file written aside and renamed
        into place: rsync when ``use_rsync`` and rsync is here and on the host (the
        local file's permission bits), else the file session (``mode``).

        CommandError (or ConnectError) naming the host and ``what`` was being done.
        """
        ...


class Connector(Protocol):
    """Opens (and pools) connections; ``release`` ends one host's, ``close`` every one."""

    def connect(self, host: Host) -> Connection:
        """A connection to ``host``, reused when one is open. Raises ConnectError."""
        ...

    def push(
        self,
        host: Host,
        *,
        root: str,
        paths: Sequence[str],
        excludes: Sequence[str],
        hide: Sequence[str] = (),
    ) -> None:
        """Mirror ``paths`` under ``root`` into the host's workdir exactly (rsync,
        incremental): what the workdir has beyond them is deleted inside the pushed
        directories, content compared whatever the sizes and times; ``excludes`` are
        neither sent nor deleted; ``hide`` (literal relative paths) are not sent and
        are deleted (:func:`meshrun.transport.rsync.mirror_options`).

        Raises ConnectError when the host cannot be reached, CommandError otherwise.
        """
        ...

    def release(self, host: Host) -> None:
        """Close ``host``'s pooled connections now, with whatever they hold (extra
        connections, threads, sockets); the next :meth:`connect` dials again. A run done
        with a host calls it, so that it holds at most ``--parallel`` hosts' worth of
        descriptors and threads. Nothing happens for a host not connected."""
        ...

    def close(self) -> None: ...


def expand_home(conn: Connection, path: str) -> str:
    """``path`` on the host with a leading ``~`` made the host's home (where tasks run;
    the login directory that SFTP and rsync start in need not be it). As it is when the
    host did not say."""
    if path == "~" or path.startswith("~/"):
        home = conn.home()
        if home is not None:
            return home.rstrip("/") + path[1:]
    return path

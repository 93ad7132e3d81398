"""The one small interface every connector (ssh, local) offers the executors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import Literal, Protocol

from meshrun.config.inventory import Host
from meshrun.records import record

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

    def facts(self) -> HostFacts:
        """The host's ``$HOME`` and whether it has rsync (asked once, then remembered)."""
        ...


class Connector(Protocol):
    """Opens (and pools) connections; ``close`` ends every one of them."""

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

    def close(self) -> None: ...


def default_connector(
    hosts: list[Host],
    *,
    connect_timeout_s: float | None = None,
    accept_new_host_keys: bool = False,
    remote: bool = False,
    server_alive_interval_s: float | None = None,
    server_alive_count_max: int | None = None,
) -> Connector:
    """The connector for ``hosts``: local for the embedded default, SSH otherwise
    (always SSH with ``remote``: hosts found later, by discovery, are remote).

    ``server_alive_interval_s``/``server_alive_count_max`` (OpenSSH's ServerAlive*:
    a host silent for interval × (count + 1) is given up) win over ssh_config's;
    unset there too, 5 s and 3. An interval of 0 turns detection off.

    SSH code (and paramiko) is imported only when a remote host is in the run. Raises
    InputError (before any host is contacted) for an ssh_config OpenSSH refuses or a
    passphrase-protected key that ssh-agent does not hold.
    """
    if not remote and all(h.local for h in hosts):
        from meshrun.transport.local import LocalConnector

        return LocalConnector()
    import os

    from meshrun.transport.ssh import SSHConnector

    connector = SSHConnector(
        connect_timeout_s=connect_timeout_s,
        accept_new_host_keys=accept_new_host_keys,
        server_alive_interval_s=server_alive_interval_s,
        server_alive_count_max=server_alive_count_max,
        # Like `ssh -F FILE`: only that file, not ~/.ssh/config nor /etc/ssh/ssh_config.
        ssh_config_path=os.environ.get("MESHRUN_SSH_CONFIG") or None,
    )
    # Resolve ssh_config for every host at once and refuse keys that would need a
    # prompt, before any host is contacted.
    connector.prepare(hosts)
    return connector

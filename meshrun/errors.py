"""Every error meshrun raises, as one tree.

    MeshrunError                      base; ``exit_code`` is what the CLI exits with
    ├── InputError (2)                a file or option the user wrote is wrong
    │   ├── InventoryError            hosts.toml / --hosts / --limit
    │   ├── TaskFileError             tasks.toml
    │   ├── NameConflictError         another agent on the LAN announces the same name
    │   └── DoesNotFit                a run cannot fit this process's fd/thread limits
    ├── ConnectError (3)              a host could not be reached or refused us
    │   ├── HostUnreachable           TCP refused / timed out, no SSH banner, link lost
    │   │   └── ChannelUnavailable    no channel could be opened: nothing was started
    │   ├── HostKeyError              host key unknown, changed, or not the one advertised
    │   └── AuthError                 no key was accepted; encrypted key with no agent
    ├── CommandError (1)              a command ran and failed (exit code, timeout)
    │   └── RunFailed (its report's)  ``check=True``: a Fleet call did not succeed
    │                                 (meshrun.api.failed; ``.report`` attached)
    ├── DiscoveryError (1)            zeroconf could not announce or browse (sockets, multicast)
    ├── IntegrityError (4)            an artifact or manifest failed verification
    ├── ResourceExhausted (1)         this process ran out of fds, threads or memory
    └── Interrupted (130)             stopped on request (Ctrl-C) before it finished

Context lives in attributes (``host``, ``path``, ``fix``); ``str()`` is one readable
line that says what went wrong and, where we know it, what to do next.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What every meshrun command exits with: one contract, the same for exec, run,
    hosts and dispatch (``docs/ARCHITECTURE.md`` has the table).

    When several apply, the first in this order wins: interrupted (128 + the signal),
    :attr:`INTEGRITY`, :attr:`CONNECT`, :attr:`FAILED`.
    """

    OK = 0
    #: A command or task failed (non-zero exit, timeout), or zeroconf could not work.
    FAILED = 1
    #: Bad input: a file or option the user wrote; nothing was started.
    USAGE = 2
    #: A host was unreachable, refused our key, or showed a changed host key.
    CONNECT = 3
    #: An output file, the manifest or its signature failed verification.
    INTEGRITY = 4
    #: Stopped by Ctrl-C (128 + SIGINT); SIGTERM is 143 and SIGHUP 129.
    INTERRUPTED = 130


def in_context(context: str, message: str, *, host: str | None = None) -> str:
    """``context: message`` for an error passed up a layer, saying nothing twice.

    A leading ``"<host>: "`` goes (the caller names the host), and a message that starts
    with the context's first word already says it: "pull failed: pull failed (rsync
    exit 255)" becomes "pull failed (rsync exit 255)".
    """
    if host is not None:
        message = message.removeprefix(f"{host}: ")
    first = context.split(maxsplit=1)[0].lower()
    words = message.split(maxsplit=1)
    if words and words[0].lower() == first:
        return message
    return f"{context}: {message}"


class MeshrunError(Exception):
    """Base of everything meshrun raises on purpose."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message} — {self.fix}"
        return self.message


class InputError(MeshrunError):
    """Bad input the user can correct: a file, an option, a pattern."""

    exit_code: int = ExitCode.USAGE


def where(path: str, line: int | None, entry: str | None, key: str | None) -> str:
    """``tasks.toml:12: task 'x': needs``: the place a config error names (the file, the
    line, the entry and the key, each when known)."""
    place = path
    if line is not None:
        place += f":{line}"
    if entry:
        place += f": {entry}"
    if key:
        place += f": {key}"
    return place


class InventoryError(InputError):
    """A mistake in hosts.toml, an inline --hosts list or a --limit pattern.

    ``path`` is the file (None for inline input), ``line`` the 1-based line when the
    TOML parser knows it, ``entry`` the host name or ``[defaults]``, ``key`` the key.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        entry: str | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(f"{where(path or '--hosts', line, entry, key)}: {message}", fix=fix)
        self.path = path
        self.line = line
        self.entry = entry
        self.key = key


class TaskFileError(InputError):
    """A mistake in tasks.toml."""


class NameConflictError(InputError):
    """``meshrun agent``: another agent on the LAN already announces ``name``."""

    def __init__(self, name: str, message: str, *, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.name = name


class DoesNotFit(InputError):
    """A run cannot fit this process's limits (``ulimit -n``, ``ulimit -u``) even one
    host at a time: refused before it starts (:mod:`meshrun.resources`)."""


class ConnectError(MeshrunError):
    """We could not get a working SSH session to ``host``."""

    exit_code: int = ExitCode.CONNECT

    def __init__(self, host: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{host}: {message}", fix=fix)
        self.host = host


class HostUnreachable(ConnectError):
    """TCP refused or timed out, no SSH banner, or the link died."""


class ChannelUnavailable(HostUnreachable):
    """No channel could be opened on the host's connection, so nothing was started
    there: trying again on a new connection cannot run anything twice."""


class HostKeyError(ConnectError):
    """The host key is unknown (and not accepted) or differs from known_hosts."""

    def __init__(
        self,
        host: str,
        message: str,
        *,
        fingerprint: str,
        changed: bool,
        fix: str,
        advertised_fingerprint: str | None = None,
    ) -> None:
        super().__init__(host, message, fix=fix)
        self.fingerprint = fingerprint
        self.changed = changed
        #: Set when the key differs from what the host advertised on the LAN (a spoof?).
        self.advertised_fingerprint = advertised_fingerprint


class AuthError(ConnectError):
    """The host refused every key we offered."""


class CommandError(MeshrunError):
    """A command on a host failed."""

    exit_code: int = ExitCode.FAILED


class DiscoveryError(MeshrunError):
    """Zeroconf could not announce or browse: no usable socket, multicast refused."""

    exit_code: int = ExitCode.FAILED


class IntegrityError(MeshrunError):
    """An artifact or manifest failed verification."""

    exit_code: int = ExitCode.INTEGRITY


class ResourceExhausted(MeshrunError):
    """The coordinator (this process) ran out of file descriptors, threads or memory
    while ``doing`` something for a host: never the host's fault, so never counted as
    unreachable; the work is tried again when resources free up."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, resource: str, doing: str) -> None:
        super().__init__(
            f"meshrun ran out of {resource} while {doing}",
            fix="raise `ulimit -n` or lower --parallel",
        )
        self.resource = resource
        self.doing = doing


class Interrupted(MeshrunError):
    """An operation (a file transfer) was stopped on request before it finished."""

    exit_code: int = ExitCode.INTERRUPTED

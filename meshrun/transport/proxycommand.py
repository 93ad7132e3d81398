"""``ProxyCommand``: a command whose stdin/stdout carry the SSH stream, as a socket.

``ssh`` runs the command with ``/bin/sh -c 'exec CMD'``; so do we, with one end of a
Unix socket pair as its stdin and stdout and the other end handed to paramiko as if it
were the TCP connection. A real socket (not pipes wrapped in Python) keeps paramiko's
timeouts and reads working unchanged, and closing it ends the command: the socket's
``close`` also terminates the process (its own session, so a terminal's Ctrl-C reaches
only the coordinator, which decides) and reaps it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
from typing import IO

from meshrun.errors import HostUnreachable

__all__ = ["ProxyCommandFailed", "ProxySocket", "proxy_failure", "start_proxy_command"]

_STDERR_TAIL_BYTES = 2048
_CLOSING = threading.Lock()  # makes ProxySocket.close take its parts exactly once


class ProxyCommandFailed(HostUnreachable):
    """The ProxyCommand ended before the SSH handshake did; ``detail`` is what it said."""

    def __init__(self, host: str, message: str, *, detail: str, fix: str | None = None) -> None:
        super().__init__(host, message, fix=fix)
        self.detail = detail

    @property
    def dropped_by_sshd(self) -> bool:
        """Did the sshd behind it close the connection before its banner (MaxStartups),
        as ``ssh -W`` reports it, rather than the command failing for another reason?"""
        text = self.detail.lower()
        return any(
            t in text
            for t in ("kex_exchange_identification", "connection reset by", "connection closed by")
        )


class ProxySocket(socket.socket):
    """Our end of the socket pair; owns the proxy process and its stderr."""

    proc: subprocess.Popen[bytes] | None = None
    stderr_file: IO[bytes] | None = None
    # Kept after close for failure(): paramiko may close the socket itself the moment
    # the stream ends, before the handshake's caller asks what the command said.
    _ended: subprocess.Popen[bytes] | None = None
    _said: bytes = b""
    _reaped: threading.Event | None = None  # set once close() has reaped the command

    def close(self) -> None:
        # paramiko's transport thread and the connector may both close it at once.
        with _CLOSING:
            proc, self.proc = self.proc, None
            stderr_file, self.stderr_file = self.stderr_file, None
        super().close()
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elif proc is not None:
            proc.wait()
        if stderr_file is not None:
            self._said = _tail(stderr_file)
            with contextlib.suppress(OSError, ValueError):
                stderr_file.close()
        self._ended = proc or self._ended
        if self._reaped is not None:
            self._reaped.set()

    def failure(self) -> str | None:
        """What the command said, if it has exited (None while it runs)."""
        proc = self.proc
        if proc is None and self._reaped is not None:
            self._reaped.wait(3)  # another thread is closing it: let it reap and read
            proc = self._ended
        if proc is None:
            return None
        try:
            proc.wait(timeout=0.5)  # it is usually on its way out when the stream ends
        except subprocess.TimeoutExpired:
            return None
        stderr_file = self.stderr_file
        tail = _tail(stderr_file) if stderr_file is not None else b""
        tail = tail or self._said
        text = " / ".join(tail.decode("utf-8", "replace").strip().splitlines()[-3:])
        return f"exit {proc.returncode}" + (f": {text}" if text else "")


def _tail(f: IO[bytes]) -> bytes:
    """The last bytes the command wrote to its stderr file (b"" once it is closed)."""
    try:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _STDERR_TAIL_BYTES))
        return f.read()
    except (ValueError, OSError):
        return b""


def start_proxy_command(command: str, host: str) -> ProxySocket:
    """Start ``command`` (tokens already expanded) and return the socket to it."""
    ours, theirs = socket.socketpair()
    stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (owned by the socket)
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=stderr_file,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        ours.close()
        stderr_file.close()
        raise HostUnreachable(
            host, f"cannot start ProxyCommand {command!r}: {exc}", fix="check ProxyCommand"
        ) from exc
    finally:
        theirs.close()
    sock = ProxySocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    sock.proc = proc
    sock.stderr_file = stderr_file
    sock._reaped = threading.Event()
    return sock


def proxy_failure(sock: object) -> str | None:
    """For a failed handshake: what the ProxyCommand said, if ``sock`` is one that ended."""
    if isinstance(sock, ProxySocket):
        return sock.failure()
    return None

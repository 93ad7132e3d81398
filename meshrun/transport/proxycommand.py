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
from typing import IO

from meshrun.errors import HostUnreachable

__all__ = ["ProxySocket", "proxy_failure", "start_proxy_command"]

_STDERR_TAIL_BYTES = 2048


class ProxySocket(socket.socket):
    """Our end of the socket pair; owns the proxy process and its stderr."""

    proc: subprocess.Popen[bytes] | None = None
    stderr_file: IO[bytes] | None = None

    def close(self) -> None:
        proc, self.proc = self.proc, None
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
        if self.stderr_file is not None:
            self.stderr_file.close()
            self.stderr_file = None

    def failure(self) -> str | None:
        """What the command said, if it has exited (None while it runs)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.wait(timeout=0.5)  # it is usually on its way out when the stream ends
        except subprocess.TimeoutExpired:
            return None
        tail = b""
        stderr_file = self.stderr_file
        if stderr_file is not None:
            try:
                size = stderr_file.seek(0, os.SEEK_END)
                stderr_file.seek(max(0, size - _STDERR_TAIL_BYTES))
                tail = stderr_file.read()
            except (ValueError, OSError):  # closed meanwhile: the socket was closed
                tail = b""
        text = " / ".join(tail.decode("utf-8", "replace").strip().splitlines()[-3:])
        return f"exit {proc.returncode}" + (f": {text}" if text else "")


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
    return sock


def proxy_failure(sock: object) -> str | None:
    """For a failed handshake: what the ProxyCommand said, if ``sock`` is one that ended."""
    if isinstance(sock, ProxySocket):
        return sock.failure()
    return None

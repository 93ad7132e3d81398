"""Helpers for tests with real ``meshrun agent`` processes (zeroconf on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from helpers import interrupt, meshrun_argv, spawn_meshrun

LOOPBACK = "127.0.0.1"
REGISTER_TIMEOUT_S = 15.0


class AgentProcess:
    """One ``meshrun agent`` subprocess and the lines it writes on stderr.

    ``netns``: run it inside that network namespace, on its default interfaces.
    """

    def __init__(self, name: str, *args: str | os.PathLike[str], netns: str | None = None) -> None:
        self.name = name
        if netns is None:
            self.proc = spawn_meshrun("agent", "--interface", LOOPBACK, "--name", name, *args)
        else:
            argv = ["ip", "netns", "exec", netns, *meshrun_argv(), "agent", "--name", name]
            self.proc = subprocess.Popen(
                [*argv, *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def describe(self) -> str:
        with self._changed:
            return f"agent {self.name} (rc={self.proc.poll()}):\n  " + "\n  ".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = REGISTER_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(left, 0.1))
        raise AssertionError(
            f"expected a line with {text!r} within {timeout_s}s\n{self.describe()}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        interrupt(self.proc, sig)
        rc = self.proc.wait(10)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# Bound like zeroconf's sockets (so it shares the port) and connected to 127.0.0.1:5353:
# the kernel prefers a connected socket, so every unicast datagram a local responder
# sends from 5353 to 127.0.0.1:5353 comes here. Prints "ready", then one line each.
_UNICAST_THIEF = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", 5353))
s.connect(("127.0.0.1", 5353))
print("ready", flush=True)
while True:
    s.recv(9000)
    print("took", flush=True)
"""


class UnicastThief:
    """Another mDNS socket on this machine that gets the unicast answers to port 5353.

    The kernel hands a unicast datagram to one of the sockets sharing a port (RFC 6762
    §15.1): which one, for a local agent's or avahi's sockets, is chance. This one
    always wins, in network namespace ``netns``; ``taken()`` counts what it got.
    """

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _UNICAST_THIEF],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != "ready\n":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"the unicast thief did not start:\n{err}")

    def taken(self) -> int:
        """Stop; how many datagrams it took."""
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out.split().count("took")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)

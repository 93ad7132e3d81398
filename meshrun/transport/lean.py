"""paramiko's client ``Transport`` without the per-connection costs a fleet cannot afford.

A fan-out pays paramiko's fixed cost once per host, and on one coordinator driving
hundreds of hosts that cost — not the network — sets the pace. Of ~3.7 ms of client CPU
per connection only ~0.2 ms is cryptography; the rest is Python around it. What this
module removes, each measured per connection on loopback (``bench/scale.py``):

- **The idle reader's poll.** paramiko reads with a 0.1 s socket timeout so that its
  thread notices a close; every open connection therefore wakes ten times a second
  doing nothing. With N connections open for a run that itself lasts longer the more
  hosts there are, that is N² work: at 1,024 hosts it was most of the coordinator's CPU
  (system time: threads woken and the GIL handed round). Once a connection has logged
  in, :func:`quiet` makes its socket block, so an idle connection costs nothing; a
  :class:`LinkSocket` shuts itself down before it closes, which wakes the blocked
  reader at once (on Linux, ``close()`` alone would not), so closing still ends the
  thread immediately.
- **The handshake timer thread.** paramiko bounds the key exchange with a
  ``threading.Timer`` per connection (a thread started and cancelled: 0.1-0.3 ms of
  CPU). :class:`_Packetizer` keeps the same bound as a deadline checked where paramiko
  checked the timer's flag (at each read), with no thread.
- **The MSG_DEBUG escape.** OpenSSH sends a debug message at every login (the
  ``authorized_keys`` options); paramiko escapes it byte by byte (~46 µs) for a DEBUG
  record that is dropped unless paramiko's logging is on.
- **Two reads per packet.** paramiko asks the socket for exactly the bytes it needs
  next, so every packet took two reads (and two TCP_QUICKACK re-arms), even when
  several had arrived together. :class:`_Packetizer` reads what the socket holds and
  hands it out from a buffer: 31 reads per connect + ``true`` + close became 11.
- **The algorithm lists.** Every ``preferred_*`` property re-filters paramiko's defaults
  against ``disabled_algorithms``, 16 times per key exchange; with nothing disabled
  (meshrun disables nothing) the list is returned as it is. The algorithms offered and
  their order are unchanged.

Security is unchanged: the same algorithms in the same order, the same host-key and
authentication steps; only bookkeeping around them is cheaper.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

import paramiko
from paramiko.common import DEBUG
from paramiko.util import safe_string

#: Linux's TCP_QUICKACK (0 elsewhere: not re-armed).
TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)
#: The most one read of an SSH connection asks for: more than a handshake's or a
#: command's packets together, no more than a bulk transfer's packet (32 KiB).
READ_CHUNK = 32768


class LinkSocket(socket.socket):
    """The TCP socket of one SSH connection.

    - Re-arms TCP_QUICKACK after every read (Linux): sshd leaves Nagle on for sessions
      without a terminal, so its small replies wait for our ACK; a delayed ACK (~40 ms)
      would stall every exchange, e.g. the first channel after login. The flag resets
      itself, hence every read.
    - Shuts down before closing, so that a thread blocked reading or writing it (paramiko's
      reader once :func:`quiet` made it blocking) wakes at once and sees the close.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if TCP_QUICKACK:
            try:  # noqa: SIM105 (a hot path: no context manager per read)
                self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
            except OSError:
                pass
        return data

    def close(self) -> None:
        if self.fileno() >= 0:
            try:  # noqa: SIM105 (not connected, or already shut down: nothing to wake)
                self.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().close()


def link_socket(sock: socket.socket) -> LinkSocket:
    """``sock`` (connected, TCP) as a :class:`LinkSocket`, keeping its timeout."""
    timeout = sock.gettimeout()
    link = LinkSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    link.settimeout(timeout)
    return link


class _Packetizer(paramiko.Packetizer):  # type: ignore[misc]  # paramiko has no types
    """paramiko's packetizer with the handshake bound kept as a deadline, not a thread,
    and reads that take what the socket holds.

    paramiko starts a ``threading.Timer`` that sets a flag at the handshake timeout, and
    the reader looks at the flag when a read returns or times out; this reader looks at
    the clock at the same moments instead.
    """

    _deadline: float | None = None
    _handshake_done = False

    def start_handshake(self, timeout: float) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + float(timeout)

    def handshake_timed_out(self) -> bool:
        return (
            self._deadline is not None
            and not self._handshake_done
            and time.monotonic() >= self._deadline
        )

    def complete_handshake(self) -> None:
        if self._deadline is not None:
            self._handshake_done = True

    # -- reading: one recv for what the socket holds, not two per packet --------------

    _rbuf = b""
    _rpos = 0
    _Packetizer__remainder: bytes  # paramiko's: what reading the banner line read past

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        """``n`` bytes of the stream, from what an earlier read brought in if it can.

        paramiko asks the socket for exactly what it needs, so each packet costs two
        reads (its first block, then the rest), and packets that arrived together (the
        key exchange reply and NEWKEYS; EXIT_STATUS, EOF and CLOSE) one read each more.
        This reads what the socket holds (up to :data:`READ_CHUNK`) and hands it out
        from a buffer; the bytes, their order and every check are paramiko's.
        """
        buf, pos = self._rbuf, self._rpos
        end = pos + n
        if end <= len(buf):
            self._rpos = end
            return buf[pos:end]
        return self._fill(n, check_rekey)

    def _fill(self, n: int, check_rekey: bool) -> bytes:
        """paramiko's ``read_all`` loop (timeouts, EAGAIN, rekey, keepalive, close),
        keeping what arrives beyond ``n`` for the next call."""
        have = self._rbuf[self._rpos :]
        if self._Packetizer__remainder:  # read past the banner line: it comes first
            have = self._Packetizer__remainder + have
            self._Packetizer__remainder = b""
        self._rbuf, self._rpos = b"", 0
        sock = self._Packetizer__socket
        try:
            while len(have) < n:
                if self.handshake_timed_out():
                    raise EOFError()
                try:
                    x = sock.recv(max(n - len(have), READ_CHUNK))
                except TimeoutError:
                    pass
                except OSError as e:
                    # Linux may say EAGAIN where a timeout was meant (paramiko's note).
                    if e.errno != errno.EAGAIN:
                        if self._Packetizer__closed:
                            raise EOFError() from e
                        raise
                else:
                    if not x:
                        raise EOFError()
                    have += x
                    continue
                if self._Packetizer__closed:
                    raise EOFError()
                if check_rekey and not have and self._Packetizer__need_rekey:
                    raise paramiko.packet.NeedRekeyException()
                self._check_keepalive()
        except BaseException:
            self._rbuf = have  # nothing read is dropped
            raise
        self._rbuf, self._rpos = have, n
        return have[:n]


class LeanTransport(paramiko.Transport):  # type: ignore[misc]  # paramiko has no types
    """A client ``paramiko.Transport``; see the module docstring for what differs."""

    def __init__(self, sock: Any, **kwargs: Any) -> None:
        kwargs.setdefault("packetizer_class", _Packetizer)
        super().__init__(sock, **kwargs)

    def _filter_algorithm(self, type_: str) -> tuple[str, ...]:
        default = tuple(getattr(self, f"_preferred_{type_}"))
        disabled = self.disabled_algorithms.get(type_)
        if not disabled:
            return default
        return tuple(x for x in default if x not in disabled)

    def _parse_debug(self, m: paramiko.Message) -> None:
        m.get_boolean()  # always_display
        msg = m.get_string()
        m.get_string()  # language
        if self.logger.isEnabledFor(DEBUG):
            self._log(DEBUG, f"Debug msg: {safe_string(msg)!r}")


def quiet(transport: paramiko.Transport) -> None:
    """Let ``transport``'s reader block instead of waking every 0.1 s (once logged in).

    Only over a :class:`LinkSocket`, whose close wakes the reader; a ProxyCommand's pipe
    or a jump host's channel keeps paramiko's poll.
    """
    sock = transport.sock
    if isinstance(sock, LinkSocket):
        sock.settimeout(None)


def log_channel(name: str) -> str | None:
    """The logger paramiko should use for ``name``'s transport, or None to keep its own.

    A logger per host names the host in paramiko's records, but creating one costs a
    lock and a walk of the logger tree per connection; worth it only when paramiko's
    records can be seen at all (the CLI silences them unless -vvv).
    """
    if logging.getLogger("paramiko").isEnabledFor(logging.ERROR):
        return f"paramiko.transport.{name}"
    return None


__all__ = ["TCP_QUICKACK", "LeanTransport", "LinkSocket", "link_socket", "log_channel", "quiet"]

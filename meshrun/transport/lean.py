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
- **Our KEXINIT and the key derivation.** paramiko encodes the same ten algorithm
  lists into every connection's KEXINIT, and a new Message with K and H for each of the
  six keys it derives; the lists are encoded once per process (the random cookie is
  fresh every time) and K and H once per exchange. The bytes are paramiko's
  (tests/unit/test_lean_kex.py compares them).
- **Waiting for the exec reply.** :func:`start_exec` sends paramiko's exec request and
  lets the command's output and exit status be the next news, one wake-up of the
  worker thread fewer per command; a refused exec closes the channel and is reported as
  paramiko reported it ("Channel closed.").

Together with ``identities.AgentKeys`` (ssh-agent's keys listed once per run) these took
connect + ``true`` + close from 3.76 to 3.45 ms of client CPU (8 alternating pairs of
300, 2026-12-05; 4.39 -> 4.12 ms with an ssh-agent holding the key).

Security is unchanged: the same algorithms in the same order, the same host-key and
authentication steps; only bookkeeping around them is cheaper.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from hashlib import sha1
from typing import Any

import paramiko
from paramiko.common import DEBUG, cMSG_CHANNEL_REQUEST, cMSG_KEXINIT
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

    _k_h: tuple[Any, Any, bytes] | None = None  # K, H and their encoding, for _compute_key

    def _send_kex_init(self) -> None:
        """Our KEXINIT: a fresh random cookie before the algorithm lists, which are
        encoded once per process (paramiko builds the same ~1 KB from ten lists on every
        connection). The same lists in the same order; a server, or paramiko's DEBUG
        records, take paramiko's own path."""
        if self.server_mode or self.logger.isEnabledFor(DEBUG):
            super()._send_kex_init()
            return
        with self.clear_to_send_lock:
            self.clear_to_send.clear()
        self.in_kex = True
        kex = (*self.preferred_kex, "ext-info-c")
        if self.advertise_strict_kex:
            kex = (*kex, "kex-strict-c-v00@openssh.com")
        lists = (
            kex,
            tuple(self.preferred_keys),
            tuple(self.preferred_ciphers),
            tuple(self.preferred_macs),
            tuple(self.preferred_compression),
        )
        tail = _KEXINIT_TAILS.get(lists)
        if tail is None:
            tail = _KEXINIT_TAILS[lists] = _kexinit_tail(*lists)
        data = cMSG_KEXINIT + os.urandom(16) + tail
        self.local_kex_init = self._latest_kex_init = data
        self._send_message(paramiko.Message(data))

    def _compute_key(self, id: str, nbytes: int) -> bytes:
        """paramiko's key derivation (RFC 4253 7.2), with K and H encoded once for the
        six keys rather than into a new Message for each: the same bytes are hashed."""
        if self.logger.isEnabledFor(DEBUG):
            return bytes(super()._compute_key(id, nbytes))
        hash_algo = getattr(self.kex_engine, "hash_algo", None) or sha1
        k, h = self.K, self.H
        cached = self._k_h
        if cached is not None and cached[0] is k and cached[1] is h:
            k_h = cached[2]
        else:  # the first key of a key exchange
            k_h = _k_and_h(k, h)
            self._k_h = (k, h, k_h)
        out = sofar = hash_algo(k_h + id.encode() + self.session_id).digest()
        while len(out) < nbytes:
            digest = hash_algo(k_h + sofar).digest()
            out += digest
            sofar += digest
        return bytes(out[:nbytes])

    def _parse_debug(self, m: paramiko.Message) -> None:
        m.get_boolean()  # always_display
        msg = m.get_string()
        m.get_string()  # language
        if self.logger.isEnabledFor(DEBUG):
            self._log(DEBUG, f"Debug msg: {safe_string(msg)!r}")


#: Our KEXINIT after its cookie, by the algorithm lists it carries (a process uses one
#: or a few: the host-key list is reordered per known_hosts key type).
_KEXINIT_TAILS: dict[tuple[tuple[str, ...], ...], bytes] = {}


def _kexinit_tail(
    kex: tuple[str, ...],
    keys: tuple[str, ...],
    ciphers: tuple[str, ...],
    macs: tuple[str, ...],
    compression: tuple[str, ...],
) -> bytes:
    """RFC 4253 7.1 after the cookie, as paramiko's ``_send_kex_init`` writes it: each
    name-list both ways, empty language lists, no guessed packet, reserved 0."""
    m = paramiko.Message()
    for names in (kex, keys, ciphers, ciphers, macs, macs, compression, compression):
        m.add_list(list(names))
    m.add_string(b"")
    m.add_string(b"")
    m.add_boolean(False)
    m.add_int(0)
    return bytes(m.asbytes())


def _k_and_h(k: int | bytes, h: bytes) -> bytes:
    """K (an mpint, or a string for the hybrid post-quantum exchanges) then H (raw),
    as paramiko's ``_compute_key`` writes them."""
    m = paramiko.Message()
    if isinstance(k, bytes):
        m.add_string(k)
    else:
        m.add_mpint(k)
    m.add_bytes(h)
    return bytes(m.asbytes())


def start_exec(chan: paramiko.Channel, command: str | bytes) -> None:
    """Ask for ``command`` on ``chan`` (``exec``, reply wanted) without waiting for the
    reply: paramiko's ``exec_command`` sends the same request, then blocks until the
    reader thread hands the reply over, one more wake-up per command for news the
    output and exit status bring anyway. A refusal still arrives and closes the
    channel (paramiko's ``_request_failed``); :func:`exec_confirmed` tells it apart."""
    if chan.closed or not chan.active:
        raise paramiko.SSHException("Channel is not open")
    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)
    m.add_string(command)
    chan._event_pending()
    chan.transport._send_user_message(m)


def exec_confirmed(chan: paramiko.Channel) -> bool:
    """Did the server accept the request :func:`start_exec` sent? (False: it refused,
    or the channel or link closed before its answer came.)"""
    return bool(chan.event_ready)


def exec_failure(chan: paramiko.Channel) -> paramiko.SSHException:
    """What paramiko's ``exec_command`` raised for an exec that was not confirmed: the
    link's own error if it died, else "Channel closed." (a refusal)."""
    exc = chan.transport.get_exception()
    return exc if exc is not None else paramiko.SSHException("Channel closed.")


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


__all__ = [
    "TCP_QUICKACK",
    "LeanTransport",
    "LinkSocket",
    "exec_confirmed",
    "exec_failure",
    "link_socket",
    "log_channel",
    "quiet",
    "start_exec",
]

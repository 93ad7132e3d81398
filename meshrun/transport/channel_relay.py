"""rsync over meshrun's own SSH connection: the coordinator side of the remote shell.

rsync needs a program to reach a host (its ``-e``); OpenSSH's ``ssh`` would open a
second connection with its own handshake and its own trust decision, which through a
jump host does not even get the inventory's key or known_hosts. Instead rsync runs
:mod:`meshrun.transport.rsh_helper`, which asks this relay, over a unix socket, to run
the remote command on the host's *pooled, authenticated* connection. So a transfer
takes exactly the hops, identity and host-key check the command took, and costs one
channel instead of one handshake.

One relay per connector, started on first use (:func:`remote_shell`) and closed with
the connector (:func:`close`):

- Its socket lives in a private ``0700`` temporary directory, removed at close. Every
  request must carry the relay's secret (256 random bits, given to rsync in its
  environment, never in argv) and, where the OS says who is calling, come from our own
  user: no other local user or process can borrow a connection.
- A request names a host by a token the relay handed out (``meshrun-N``, what rsync
  writes before ``:``), never by address, so only hosts of this run are reachable.
- The helper passes its stdin, stdout and stderr along with the request (SCM_RIGHTS):
  the relay pumps rsync's bytes straight between those descriptors and the channel
  (EOF from rsync → the channel's write side is shut; the channel's EOF → rsync reads
  EOF), then answers with the remote exit status — 255 when the connection was lost,
  as ssh. rsync hears about a lost connection from the helper before its stream ends.
- If rsync or the helper goes away, the channel is closed; closing the relay (the
  connector) ends every transfer, and every thread and descriptor goes with it.

The channel itself is opened by an ``Opener`` (:func:`relay_for` makes one from a
connector's pooled connections; the SSH connector owns its relay), so the protocol can
be tested without SSH.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import secrets
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from meshrun.config.inventory import Host
from meshrun.errors import HostUnreachable, MeshrunError
from meshrun.transport import rsh_helper
from meshrun.transport.rsync import RemoteShell

log = logging.getLogger(__name__)

HELPER = os.path.abspath(rsh_helper.__file__)

#: Bytes moved per read in either direction: large, so bulk data costs few Python
#: round trips per megabyte.
CHUNK = 256 << 10

#: The channel's receive window and largest packet we accept. paramiko spends most of
#: a bulk transfer's CPU per packet (MAC, copies, a thread wake-up), and sshd sends
#: larger packets only when the window lets it run ahead: 6 MiB / 128 KiB take 15-30 %
#: less CPU per byte than OpenSSH's 2 MiB / 32 KiB defaults (measured on loopback;
#: 8 MiB did no better). The window is also the most a slow rsync can leave
#: buffered here, per transfer.
WINDOW_BYTES = 6 << 20
MAX_PACKET_BYTES = 128 << 10

#: Longest request accepted (the remote command line; rsync's are short).
MAX_REQUEST = 1 << 20

#: How long a connecting helper may take to send its request.
REQUEST_TIMEOUT_S = 10.0

#: How long the helper may take to exit once it has its answer.
HELPER_EXIT_WAIT_S = 2.0


class RelayChannel(Protocol):
    """What the relay needs of a channel on which the remote command already runs
    (paramiko's Channel has it all)."""

    def recv(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` of stdout, blocking; ``b""`` at EOF or once closed."""
        ...

    def recv_stderr(self, nbytes: int) -> bytes: ...

    def sendall(self, data: bytes) -> None: ...

    def shutdown_write(self) -> None: ...

    @property
    def eof_received(self) -> bool:
        """Whether the remote side ended its output (not: the channel was closed)."""
        ...

    def exit_status_ready(self) -> bool:
        """True once the status came, or the channel closed without one."""
        ...

    def recv_exit_status(self) -> int:
        """The exit status, or -1 when the channel closed without one."""
        ...

    def close(self) -> None: ...


#: Opens an exec channel for a command on a host: the channel and what to call once it
#: is closed (to give back the host's channel budget). Raises MeshrunError (e.g.
#: HostUnreachable) when it cannot.
Opener = Callable[[Host, bytes], tuple[RelayChannel, Callable[[], None]]]


class _Refused(Exception):
    """A request the relay will not serve; the message goes to rsync's stderr."""


class ChannelRelay:
    """Serves rsh_helper requests on a private unix socket; see the module docstring."""

    def __init__(
        self,
        opener: Opener,
        *,
        python: str | None = None,
        why_lost: Callable[[Host], str | None] | None = None,
    ) -> None:
        self._opener = opener
        self._why_lost = why_lost
        self._python = python or sys.executable or "python3"
        self._secret = secrets.token_hex(32)
        self._lock = threading.Lock()
        self._closed = False
        self._hosts: dict[str, Host] = {}  # token -> host
        self._tokens: dict[str, str] = {}  # host name -> token
        self._transfers: set[_Transfer] = set()
        self._threads: set[threading.Thread] = set()
        self._dir = _private_dir()
        self.path = os.path.join(self._dir, "relay.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.path)
            self._listener.listen(128)
        except BaseException:
            self._listener.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="meshrun-relay", daemon=True
        )
        self._acceptor.start()

    # -- what rsync is given ----------------------------------------------------------

    def remote_shell(self, host: Host) -> RemoteShell:
        """rsync's remote shell for ``host``: the helper, the host's token, the secret."""
        with self._lock:
            if self._closed:
                raise HostUnreachable(host.name, "the run is shutting down")
            token = self._tokens.get(host.name)
            if token is None:
                token = f"meshrun-{len(self._tokens) + 1}"
                self._tokens[host.name] = token
            self._hosts[token] = host
        return RemoteShell(
            argv=(self._python, "-I", "-S", HELPER, self.path),
            host=token,
            env={rsh_helper.TOKEN_ENV: self._secret},
        )

    @property
    def active(self) -> int:
        """Transfers running now."""
        with self._lock:
            return len(self._transfers)

    # -- serving ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                log.warning("channel relay: accept failed: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    threading.Event().wait(0.1)
                    continue
                return
            with self._lock:
                if self._closed:
                    client.close()
                    return
                thread = threading.Thread(
                    target=self._serve, args=(client,), name="meshrun-relay-transfer", daemon=True
                )
                self._threads.add(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        fds: list[int] = []
        try:
            try:
                host, command, fds = self._admit(client)
            except _Refused as exc:
                _reply(client, 255, str(exc))
                return
            try:
                chan, release = self._opener(host, command)
            except MeshrunError as exc:
                _reply(client, 255, str(exc))
                return
            except Exception as exc:  # a bug or an unexpected library error
                log.exception("channel relay: opening a channel to %s failed", host.name)
                _reply(client, 255, f"{host.name}: cannot open an SSH channel: {exc!r}")
                return
            transfer = _Transfer(chan, client, fds)
            fds = []  # the transfer owns them now
            try:
                with self._lock:
                    self._transfers.add(transfer)
                    closing = self._closed
                if closing:
                    transfer.abort()
                try:
                    status = transfer.run()
                finally:
                    with self._lock:
                        self._transfers.discard(transfer)
                    release()
                if transfer.aborted and self._closed:
                    _reply(client, 255, f"{host.name}: the transfer was stopped (shutting down)")
                elif status < 0:
                    why = self._why_lost(host) if self._why_lost is not None else None
                    _reply(client, 255, f"{host.name}: {why or 'the SSH connection was lost'}")
                else:
                    _reply(client, status, "")
                # rsync gets EOF only once the helper has its answer and has exited:
                # rsync kills its remote shell as soon as its stream breaks, and the
                # helper must have told it why first.
                _await_eof(client, HELPER_EXIT_WAIT_S)
            finally:
                transfer.close_descriptors()
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _admit(self, client: socket.socket) -> tuple[Host, bytes, list[int]]:
        """Read and check one request; its host, command and the helper's three fds."""
        client.settimeout(REQUEST_TIMEOUT_S)
        fds: list[int] = []
        try:
            data, fds = _recv_with_fds(client, 3)
            if len(fds) != 3:
                raise _Refused("the request did not carry stdin, stdout and stderr")
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                if len(data) >= 4 and int.from_bytes(data[:4], "big") > MAX_REQUEST:
                    raise _Refused("request too long")
                more = client.recv(65536)
                if not more:
                    raise _Refused("incomplete request")
                data += more
            size = int.from_bytes(data[:4], "big")
            if len(data) != 4 + size:
                raise _Refused("malformed request")
            _check_peer(client)
            parts = data[4:].split(b"\0")
            if len(parts) != 5 or parts[0] != rsh_helper.MAGIC:
                raise _Refused("not a meshrun rsh request (version mismatch?)")
            _, secret, token, _user, command = parts
            if not hmac.compare_digest(secret, self._secret.encode()):
                raise _Refused("request refused: wrong or missing secret")
            with self._lock:
                host = self._hosts.get(token.decode("ascii", "replace"))
            if host is None:
                raise _Refused(f"unknown host {token.decode('utf-8', 'replace')!r}")
            if not command:
                raise _Refused("no remote command")
            for fd in fds:
                os.set_blocking(fd, True)
        except _Refused:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        except (OSError, ValueError) as exc:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise _Refused(f"bad request: {exc}") from exc
        client.settimeout(None)
        return host, command, fds

    # -- closing ----------------------------------------------------------------------

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, end every transfer (rsync sees status 255), wait for every
        thread, remove the socket and its directory. Safe to call more than once."""
        with self._lock:
            already = self._closed
            self._closed = True
            transfers = list(self._transfers)
        if not already:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
            _poke(self.path)  # wakes accept() elsewhere
        for transfer in transfers:
            transfer.abort()
        if threading.current_thread() is not self._acceptor:
            self._acceptor.join(timeout_s)
        with self._lock:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(timeout_s)
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Transfer:
    """One remote command: rsync's descriptors pumped to and from its channel.

    Every descriptor is closed exactly once (:meth:`_close`): a second close could hit
    a number another thread has been given since (another rsync's pipe). rsync's stdin
    is closed at the channel's EOF; when the channel ends without one (the link was
    lost, the transfer stopped) it stays open until the helper has had its answer, so
    rsync hears why from the helper before it sees the stream break.
    """

    def __init__(self, chan: RelayChannel, client: socket.socket, fds: list[int]) -> None:
        self.chan = chan
        self.client = client
        self._fds = dict(zip(("stdin", "stdout", "stderr"), fds, strict=True))
        self.stdin = fds[0]
        self.aborted = False
        self._streams_open = 2  # stdout and stderr of the channel, until they end
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()

    def abort(self) -> None:
        """End the transfer now (from any thread): the channel is closed."""
        self.aborted = True
        with contextlib.suppress(Exception):
            self.chan.close()
        self._wake()

    def _wake(self) -> None:
        with self._lock:  # never write to the pipe's number once it is closed
            if self._wake_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"!")

    def _close(self, name: str) -> None:
        with self._lock:
            fd = self._fds.pop(name, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_descriptors(self) -> None:
        """Close what is still open of rsync's descriptors (after the reply)."""
        for name in ("stdin", "stdout", "stderr"):
            self._close(name)

    def run(self) -> int:
        """Pump until the command ends; its exit status (-1: none came)."""
        down = [
            threading.Thread(
                target=self._down, args=(self.chan.recv, "stdout"), daemon=True,
                name="meshrun-relay-stdout",
            ),
            threading.Thread(
                target=self._down, args=(self.chan.recv_stderr, "stderr"), daemon=True,
                name="meshrun-relay-stderr",
            ),
        ]  # fmt: skip
        try:
            for thread in down:
                thread.start()
            self._up()
            return self._status()
        finally:
            with contextlib.suppress(Exception):
                self.chan.close()  # wakes the readers if they still wait
            for thread in down:
                if thread.ident is not None:
                    thread.join()
            with self._lock:
                wake = (self._wake_r, self._wake_w)
                self._wake_r = self._wake_w = -1
            for fd in wake:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _streams_ended(self) -> bool:
        with self._lock:
            return self._streams_open == 0

    def _up(self) -> None:
        """rsync → channel until both channel streams ended; watches the helper."""
        poller = select.poll()
        poller.register(self.stdin, select.POLLIN)
        poller.register(self.client.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        client_fd = self.client.fileno()
        while not self.aborted and not self._streams_ended():
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
                elif fd == client_fd:
                    self.abort()  # the helper went away (rsync killed it, or died)
                    return
                elif fd == self.stdin:
                    try:
                        data = os.read(self.stdin, CHUNK)
                    except OSError:
                        data = b""
                    try:
                        if data:
                            self.chan.sendall(data)
                            continue
                        self.chan.shutdown_write()
                    except Exception:  # the channel is gone: the readers see it too
                        pass
                    poller.unregister(self.stdin)

    def _status(self) -> int:
        """Wait for the exit status (usually here already), still watching the helper."""
        poller = select.poll()
        poller.register(self.client.fileno(), select.POLLIN)
        # paramiko sets status_event when the status comes: wake at once on it (the
        # status often lands just after the streams' EOF), and look at the helper
        # between waits.
        arrived = getattr(self.chan, "status_event", None)
        while not self.aborted and not self.chan.exit_status_ready():
            if arrived is not None and arrived.wait(0.05):
                continue
            if poller.poll(0 if arrived is not None else 50):
                self.abort()
        if self.aborted:
            return -1
        status = self.chan.recv_exit_status()
        return status if 0 <= status <= 255 else -1

    def _down(self, recv: Callable[[int], bytes], name: str) -> None:
        """channel → rsync (``name``: stdout or stderr). When rsync stops reading, the
        rest is drained and dropped (as ssh does)."""
        fd = self._fds[name]
        broken = False
        try:
            while True:
                try:
                    data = recv(CHUNK)
                except Exception:  # closed under us
                    break
                if not data:
                    break
                if not broken:
                    try:
                        _write_all(fd, data)
                    except OSError:
                        broken = True
        finally:
            if name == "stderr" or self.chan.eof_received:
                self._close(name)  # EOF for rsync (the helper holds its own stderr)
            with self._lock:
                self._streams_open -= 1
            self._wake()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _recv_with_fds(client: socket.socket, maxfds: int) -> tuple[bytes, list[int]]:
    """The first chunk of a request and the descriptors that came with it (close-on-
    exec, so no child process of ours inherits them)."""
    flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    int_size = struct.calcsize("i")
    msg, ancdata, msg_flags, _ = client.recvmsg(65536, socket.CMSG_SPACE(maxfds * int_size), flags)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % int_size
            fds += [
                int.from_bytes(payload[i : i + int_size], sys.byteorder, signed=True)
                for i in range(0, usable, int_size)
            ]
    if not flags:
        for fd in fds:
            os.set_inheritable(fd, False)
    if msg_flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise _Refused("too many descriptors in the request")
    return msg, fds


def _check_peer(client: socket.socket) -> None:
    """Refuse a caller that is not our own user, where the OS tells (Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return
    creds = client.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        raise _Refused("request refused: it comes from another user")


def _reply(client: socket.socket, status: int, message: str) -> None:
    """The helper's answer: one line, ``STATUS[ MESSAGE]``."""
    text = f"{status} {' / '.join(message.splitlines())}".rstrip() + "\n"
    with contextlib.suppress(OSError):
        client.settimeout(1.0)
        client.sendall(text.encode("utf-8", "replace"))


def _await_eof(client: socket.socket, timeout_s: float) -> None:
    """Wait until the helper closes its end (it exits after reading the reply)."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(OSError):
        while (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            if not client.recv(4096):
                return


def _poke(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        with contextlib.suppress(OSError):
            probe.connect(path)


_DIR_PREFIX = "meshrun-relay-"

#: A relay directory this old whose socket refuses connections is a killed run's.
STALE_AFTER_S = 60.0


def _private_dir() -> str:
    """A new 0700 directory whose socket path fits in sun_path (108 bytes); what runs
    killed outright (SIGKILL) left behind is removed first."""
    base = tempfile.gettempdir()
    if len(base) > 70:
        base = "/tmp"
    _sweep_stale(base)
    return tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base)


def _sweep_stale(base: str) -> None:
    """Remove our own relay directories that nothing serves any more: older than
    STALE_AFTER_S, and their socket gone or refusing connections (no listener)."""
    try:
        names = [n for n in os.listdir(base) if n.startswith(_DIR_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid != os.geteuid() or now - info.st_mtime < STALE_AFTER_S:
            continue
        sock = os.path.join(path, "relay.sock")
        if os.path.exists(sock):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                try:
                    probe.connect(sock)
                except ConnectionRefusedError:
                    pass  # no listener: its run is gone
                except OSError:
                    continue
                else:
                    continue  # a live relay
        shutil.rmtree(path, ignore_errors=True)


# -- channels on a pooled connector -----------------------------------------------------


class ExecChannels(Protocol):
    """A connection that opens raw exec channels counted in its session budget
    (``SSHConnection``)."""

    def open_exec(
        self, command: str | bytes, *, window: tuple[int, int] | None = None
    ) -> tuple[RelayChannel, Callable[[], None]]: ...


class Dialer(Protocol):
    """What the relay needs of its connector (``SSHConnector``): a host's pooled
    connection, dialled with every check when it has none, and why a link was lost."""

    def connect(self, host: Host) -> ExecChannels: ...

    def lost_reason(self, host: Host) -> str | None: ...


def relay_for(dialer: Dialer) -> ChannelRelay:
    """A relay whose channels are opened on ``dialer``'s pooled connections. It holds
    the dialer weakly (the dialer owns the relay and closes it); closed when the dialer
    is collected without closing it."""
    ref = weakref.ref(dialer)

    def open_exec(host: Host, command: bytes) -> tuple[RelayChannel, Callable[[], None]]:
        owner = ref()
        if owner is None:
            raise HostUnreachable(host.name, "the run is shutting down")
        return open_exec_channel(owner.connect(host), command)

    def why_lost(host: Host) -> str | None:
        owner = ref()
        return owner.lost_reason(host) if owner is not None else None

    relay = ChannelRelay(open_exec, why_lost=why_lost)
    weakref.finalize(dialer, relay.close)
    return relay


def open_exec_channel(
    conn: ExecChannels, command: bytes
) -> tuple[RelayChannel, Callable[[], None]]:
    """An exec channel running ``command`` on ``conn``, tuned for bulk data (see
    :data:`WINDOW_BYTES`) and counted in the connection's session budget (sshd's
    MaxSessions) until the returned release is called (which also closes it)."""
    return conn.open_exec(command, window=(WINDOW_BYTES, MAX_PACKET_BYTES))


__all__ = [
    "ChannelRelay",
    "Dialer",
    "ExecChannels",
    "Opener",
    "RelayChannel",
    "open_exec_channel",
    "relay_for",
]

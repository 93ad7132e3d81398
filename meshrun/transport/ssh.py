"""The SSH connector: one pooled paramiko transport per host, many channels on it.

Everything that touches paramiko lives here, and its exceptions are mapped once, at
this boundary, to meshrun's ConnectError family. We drive paramiko's ``Transport``
directly rather than through Fabric's ``Connection``: the hot path needs the socket
(``TCP_NODELAY`` before the handshake), the host-key decision (refuse unknown, never
accept changed) and one reader per channel instead of Fabric's thread per stream.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.errors import (
    AuthError,
    ChannelUnavailable,
    CommandError,
    ConnectError,
    HostKeyError,
    HostUnreachable,
    InputError,
    Interrupted,
)
from meshrun.records import record
from meshrun.transport import lean, liveness, rsync, sftp, startups
from meshrun.transport.base import (
    FACTS_COMMAND,
    CommandOutcome,
    CommandRequest,
    HostFacts,
    OutputSink,
    RawResult,
    Stream,
    _discard,
    expand_home,
    parse_facts,
)
from meshrun.transport.capture import HeadTail
from meshrun.transport.files import put_files
from meshrun.transport.identities import AgentKeys, IdentityFiles, offers
from meshrun.transport.knownhosts import KnownHosts, Verdict, host_key_name
from meshrun.transport.proxycommand import ProxyCommandFailed, proxy_failure, start_proxy_command
from meshrun.transport.sessions import (
    Lease,
    SessionBudget,
    SessionRefused,
    SessionsUnavailable,
)
from meshrun.transport.sftp import SFTPFiles
from meshrun.transport.sshconfig import (
    SSHConfigResolver,
    expand_tokens,
    parse_jump_spec,
    split_jumps,
    token_values,
)
from meshrun.transport.sshkeys import sha256_fingerprint
from meshrun.transport.wrapper import KILL_GRACE_TENTHS, build_wrapper, remote_exec_line

if TYPE_CHECKING:
    from meshrun.transport.channel_relay import ChannelRelay

log = logging.getLogger(__name__)

_POLL_S = 0.1
#: How long :meth:`SSHConnector.release` waits for a closed connection's paramiko
#: thread to end (measured: under 1 ms once its socket is shut down), so that a run's
#: threads stay within its parallelism.
_RELEASE_WAIT_S = 2.0
#: meshrun's own commands (uploads, collector reports) keep all their output.
_UNBOUNDED = 1 << 62


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (``SHA256:...``)."""
    return sha256_fingerprint(key.asbytes())


# paramiko negotiates RSA host keys under the names of their signature algorithms.
_KEY_TYPE_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


_MAX_HOPS = 8  # ProxyJump chains longer than this are a loop in ssh_config


@record
class Endpoint:
    """Where, as whom and how to connect: the inventory merged with ssh_config."""

    alias: str  # what ssh_config matched (``%n``)
    address: str  # HostName
    port: int
    user: str
    identities: tuple[str, ...]
    identities_only: bool
    certificates: tuple[str, ...]
    identity_agent: str | None  # None: $SSH_AUTH_SOCK; "none": no agent
    known_hosts: str  # where an accepted new key is written
    known_hosts_files: tuple[str, ...]  # every file that is trusted, user then global
    host_key_alias: str | None
    hash_known_hosts: bool
    proxy_jump: tuple[str, ...]  # hops in dial order
    proxy_command: str | None
    connect_timeout_s: float
    server_alive_interval_s: float  # 0: no dead-peer detection
    server_alive_count_max: int

    @property
    def key_name(self) -> str:
        """The name this host's key is filed under in known_hosts."""
        return host_key_name(self.address, self.port, self.host_key_alias)


class IdentityUnusable(InputError):
    """A key the run needs cannot be used without a prompt (found before dialling)."""


def _pinned(host: Host) -> frozenset[str]:
    """The ssh_config keywords an inventory entry overrides (so need not be asked)."""
    pinned: set[str] = set()
    if host.identity:
        pinned.add("identityfile")
    if host.known_hosts:
        pinned.update(("userknownhostsfile", "globalknownhostsfile"))
    if host.proxy_jump or host.proxy_command:
        pinned.update(("proxyjump", "proxycommand"))
    return frozenset(pinned)


def _through(exc: ConnectError, host: Host, hop: str) -> ConnectError:
    """``exc`` from a jump host, re-addressed to the host behind it (same kind)."""
    detail = exc.message.split(": ", 1)[1] if ": " in exc.message else exc.message
    message = f"jump host {hop}: {detail}"
    if isinstance(exc, HostKeyError):
        return HostKeyError(
            host.name,
            message,
            fingerprint=exc.fingerprint,
            changed=exc.changed,
            fix=exc.fix or "",
            advertised_fingerprint=exc.advertised_fingerprint,
        )
    return type(exc)(host.name, message, fix=exc.fix)


def _exit_received(chan: paramiko.Channel) -> bool:
    """Did the remote send an exit status?

    paramiko's ``exit_status_ready()`` and ``status_event`` are also set when a dead link
    closes the channel; its ``exit_status`` keeps the -1 sentinel unless a status came
    (the wire value is unsigned, so -1 is never a real one).
    """
    return bool(chan.exit_status >= 0)


class _Wakeup:
    """Wakes a channel reader when stdout or stderr gets data or closes.

    paramiko's buffers take an event-like object; one shared flag lets a single thread
    wait on both streams without polling.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = False

    def set(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Ignored: the reader drains both buffers on every wake-up anyway."""

    def is_set(self) -> bool:
        return self._pending

    def wait(self, timeout_s: float) -> None:
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout_s)
            self._pending = False


#: How long a short command, the agent's channel, SFTP or an rsync channel waits for a
#: free session before the host counts as unreachable. A task's command waits as long
#: as it takes (its timeout and cancel still apply).
SESSION_WAIT_S = 60.0


def _transport_alive(transport: paramiko.Transport) -> bool:
    return bool(transport.is_active())


def _close_transport(transport: paramiko.Transport) -> None:
    transport.close()


def _refusal(exc: BaseException) -> bool:
    """Did the server refuse a channel open? paramiko raises ChannelException, or, when
    several opens fail at once and another thread took that exception, "Unable to open
    channel." (its generic word for a failed open on a live transport)."""
    if isinstance(exc, paramiko.ChannelException):
        return True
    return isinstance(exc, paramiko.SSHException) and "unable to open channel" in str(exc).lower()


class SSHConnection:
    """A live SSH connection to one host; a session channel is opened per command.

    Every session channel on it — a command (:meth:`run`, :meth:`run_raw`), the agent's
    stream (:meth:`open_process`), SFTP (:meth:`open_files`), an rsync carried over an exec
    channel (:meth:`open_exec`), anything else (:meth:`session`) — takes its place from
    one :class:`~meshrun.transport.sessions.SessionBudget`, and gives it back when the
    channel is closed. sshd's ``MaxSessions`` counts them all alike, so the budget must
    too: one channel opened beside it would make another's open be refused. The budget
    learns the host's limit from its refusals and retries them (a refusal never loses
    the host); when the connector allows it (:meth:`allow_extra_connections`) it opens a
    few more connections to the host through the connector's own dial — the same hops,
    identity and host-key check — when more sessions are wanted than one connection
    may hold, and queues them otherwise. ``transport`` is the first connection;
    ``close()`` closes every one.
    """

    def __init__(
        self,
        host: Host,
        transport: paramiko.Transport,
        max_channels: int,
        timeout_s: float,
        monitor: liveness.LivenessMonitor | None = None,
        remote_shell: Callable[[], rsync.RemoteShell] | None = None,
    ) -> None:
        # remote_shell: rsync's remote shell over this connection (the connector's relay);
        # None: transfers go over SFTP.
        self._host = host
        self._facts: HostFacts | None = None
        self._facts_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._remote_shell = remote_shell
        self.transport = transport
        self._timeout_s = timeout_s
        self._monitor = monitor
        self._budget: SessionBudget[paramiko.Transport] = SessionBudget(
            host.name,
            transport,
            limit=max_channels,
            alive=_transport_alive,
            close_link=_close_transport,
        )

    @property
    def host(self) -> Host:
        return self._host

    @property
    def host_key_fingerprint(self) -> str | None:
        if self._fingerprint is None:  # asked once per host by every run: hash it once
            self._fingerprint = fingerprint(self.transport.get_remote_server_key())
        return self._fingerprint

    @property
    def sessions(self) -> SessionBudget[paramiko.Transport]:
        """The session budget shared by every channel on this connection."""
        return self._budget

    def allow_extra_connections(self, dial: Callable[[], SSHConnection], most: int) -> None:
        """Let the budget open up to ``most`` connections in all with ``dial`` (the
        connector's own) when the host's MaxSessions is what keeps sessions waiting."""
        if most > 1:
            self._budget.allow_extra_links(lambda: dial().transport, most)

    def lost_reason(self, transport: paramiko.Transport | None = None) -> str | None:
        """Why ``transport`` (default: any connection to the host) was given up, when
        meshrun gave it up itself: "stopped answering (...)"; None otherwise."""
        if self._monitor is None:
            return None
        links = [transport] if transport is not None else self._budget.links
        for link in links:
            reason = self._monitor.reason(link)
            if reason is not None:
                return reason
        return None

    def _lost(self, what: str, transport: paramiko.Transport | None = None) -> str:
        return self.lost_reason(transport) or what

    # -- sessions ---------------------------------------------------------------------

    def _open_on(
        self, transport: paramiko.Transport, window: tuple[int, int] | None = None
    ) -> paramiko.Channel:
        """A session channel on ``transport``; ``window`` is (window size, max packet
        size) for bulk transfers, paramiko's defaults otherwise."""
        if not transport.is_active():
            raise ChannelUnavailable(
                self._host.name, self._lost("the SSH connection was lost", transport)
            )
        sizes = {} if window is None else {"window_size": window[0], "max_packet_size": window[1]}
        try:
            return transport.open_session(timeout=self._timeout_s, **sizes)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if _refusal(exc) and transport.is_active():
                # sshd's answer ("open failed"; "no more sessions" in its log) when the
                # connection already has MaxSessions sessions: wait, do not give up.
                raise SessionRefused(str(exc)) from exc
            reason = self.lost_reason(transport)
            raise ChannelUnavailable(
                self._host.name,
                reason
                or "could not open an SSH channel: "
                + (str(exc) or f"{type(exc).__name__} (the host closed the connection)"),
            ) from exc

    def _lease(
        self,
        wait_s: float | None,
        cancel: threading.Event | None = None,
        window: tuple[int, int] | None = None,
    ) -> Lease[paramiko.Transport, paramiko.Channel]:
        """A session channel from the budget. SessionsUnavailable (``cancelled``) only
        when ``cancel`` was set while waiting; HostUnreachable when none can be had."""
        opener = (
            self._open_on if window is None else functools.partial(self._open_on, window=window)
        )
        try:
            return self._budget.acquire(opener, timeout_s=wait_s, cancel=cancel)
        except SessionsUnavailable as exc:
            if exc.cancelled:
                raise
            raise ChannelUnavailable(
                self._host.name, f"could not open an SSH channel: {exc}"
            ) from exc

    @contextlib.contextmanager
    def session(self, *, wait_s: float | None = SESSION_WAIT_S) -> Iterator[paramiko.Channel]:
        """A session channel from the budget, closed and given back on leaving."""
        lease = self._lease(wait_s)
        try:
            yield lease.session
        finally:
            lease.session.close()
            lease.release()

    def open_exec(
        self, command: str | bytes, *, window: tuple[int, int] | None = None
    ) -> tuple[paramiko.Channel, Callable[[], None]]:
        """An exec channel running ``command`` (as is, no wrapper), counted in the
        budget until the returned ``release`` is called; ``release`` closes it too.
        ``window`` (window size, max packet size) tunes it for bulk data."""
        lease = self._lease(SESSION_WAIT_S, window=window)
        chan = lease.session

        def release() -> None:
            chan.close()
            lease.release()

        try:
            chan.exec_command(command)
        except BaseException as exc:
            release()
            if isinstance(exc, paramiko.SSHException | OSError | EOFError):
                raise HostUnreachable(
                    self._host.name, f"could not start a command: {exc or type(exc).__name__}"
                ) from exc
            raise
        return chan, release

    def open_files(self) -> SFTPFiles:
        """An SFTP session on a session channel from the budget; its ``close()`` (or
        the end of its ``with`` block) closes the channel and gives the session back.
        CommandError when none can be opened (what the transfers that need one have
        always reported, the link's own error included)."""
        name = self._host.name
        try:
            lease = self._lease(SESSION_WAIT_S)
        except ConnectError as exc:
            raise CommandError(f"{name}: cannot open an SFTP session: {exc}") from exc
        chan = lease.session

        def release() -> None:
            chan.close()
            lease.release()

        try:
            chan.invoke_subsystem("sftp")
            client = paramiko.SFTPClient(chan)
        except BaseException as exc:
            release()
            if isinstance(exc, paramiko.SSHException | OSError | EOFError):
                why = f"{name}: could not start SFTP: {exc or type(exc).__name__}"
                raise CommandError(f"{name}: cannot open an SFTP session: {why}") from exc
            raise
        return SFTPFiles(client, release)

    # -- file transfer ------------------------------------------------------------------

    def _asked(self) -> HostFacts:
        """$HOME and rsync, asked in one round trip on first use, then remembered."""
        with self._facts_lock:
            if self._facts is None:
                result = self.run_raw(FACTS_COMMAND)
                self._facts = parse_facts(result.stdout)
            return self._facts

    def home(self) -> str | None:
        return self._asked().home

    def has_rsync(self) -> bool:
        return self._asked().has_rsync

    def _rsync(self, use_rsync: bool) -> rsync.RemoteShell | None:
        """rsync's remote shell when rsync should carry a transfer: wanted, here and
        on the host; None for SFTP."""
        if not use_rsync or self._remote_shell is None or shutil.which("rsync") is None:
            return None
        return self._remote_shell() if self.has_rsync() else None

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
        rsh = self._rsync(use_rsync)
        if rsh is not None:
            rsync.get_files(
                rsh, self._host.name, root, paths, str(into), cancel=cancel, timeout_s=timeout_s
            )
            return
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"{self._host.name}: pull stopped")
        with self.open_files() as files:
            sftp.get_files(files, self._host.name, root, paths, into, cancel=cancel)

    def put_files(
        self,
        source: Path,
        files: Sequence[tuple[str, int]],
        root: str,
        *,
        use_rsync: bool = True,
        what: str = "push",
    ) -> None:
        rsh = self._rsync(use_rsync)
        if rsh is not None:
            paths = [path for path, _ in files]
            rsync.put_files(rsh, self._host.name, str(source), paths, root, what=what)
            return
        with self.open_files() as session:
            put_files(session, self._host.name, source, files, root, over=" over SFTP")

    # -- commands ---------------------------------------------------------------------

    def run(
        self,
        request: CommandRequest,
        *,
        on_output: OutputSink = _discard,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        script = build_wrapper(request.command, workdir=self._host.workdir, env=request.env)
        try:
            # A task waits for a free session as long as it takes; cancel ends the wait.
            lease = self._lease(None, cancel)
        except SessionsUnavailable:
            return CommandOutcome(None, b"", b"", 0.0, cancelled=True, started=False)
        chan = lease.session
        started = time.monotonic()
        try:
            if cancel is not None and cancel.is_set():
                return CommandOutcome(None, b"", b"", 0.0, cancelled=True, started=False)
            # Not waiting for the reply saves a hand-off; a refusal closes the channel.
            lean.start_exec(chan, remote_exec_line(script))
            outcome = self._pump(chan, request.timeout_s, on_output, cancel, started)
            if outcome.lost and not lean.exec_confirmed(chan):
                raise lean.exec_failure(chan)  # what waiting for the reply said
            return outcome
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                self._host.name, f"the SSH connection failed during the command: {exc}"
            ) from exc
        finally:
            chan.close()
            lease.release()

    def _pump(
        self,
        chan: paramiko.Channel,
        timeout_s: float | None,
        on_output: OutputSink,
        cancel: threading.Event | None,
        started: float,
        *,
        bounded: bool = True,
    ) -> CommandOutcome:
        """Read both streams until the exit status arrives, honouring timeout and cancel."""
        wake = _Wakeup()
        chan.in_buffer.set_event(wake)
        chan.in_stderr_buffer.set_event(wake)
        deadline = None if timeout_s is None else started + timeout_s
        # A user's command keeps a bounded head and tail of each stream (it may print
        # gigabytes; they went to on_output as they came); meshrun's own commands, all.
        keep: dict[Stream, HeadTail] = (
            {"stdout": HeadTail(), "stderr": HeadTail()}
            if bounded
            else {"stdout": HeadTail(head=_UNBOUNDED), "stderr": HeadTail(head=_UNBOUNDED)}
        )
        timed_out = cancelled = lost = False
        stopped_at: float | None = None

        def drain() -> None:
            while chan.recv_ready():
                data = chan.recv(65536)
                keep["stdout"].write(data)
                on_output("stdout", data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                keep["stderr"].write(data)
                on_output("stderr", data)

        while True:
            wake.wait(_POLL_S)
            drain()
            if _exit_received(chan) and (chan.eof_received or chan.closed):
                drain()
                break
            if chan.closed or not self.transport.is_active():
                drain()
                lost = not _exit_received(chan)
                break
            now = time.monotonic()
            if stopped_at is None:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif deadline is not None and now >= deadline:
                    timed_out = True
                if cancelled or timed_out:
                    chan.shutdown_write()  # EOF on the wrapper's stdin: it kills the group
                    stopped_at = now
            elif now - stopped_at > KILL_GRACE_TENTHS / 10 + 2:
                lost = not _exit_received(chan)
                break
        exit_code = chan.exit_status if _exit_received(chan) else None
        lost = lost and not (timed_out or cancelled)
        return CommandOutcome(
            exit_code=exit_code,
            stdout=keep["stdout"].value(),
            stderr=keep["stderr"].value(),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            lost=lost,
            lost_reason=self.lost_reason(chan.get_transport()) if lost else None,
        )

    def run_raw(self, command: str, *, stdin: bytes = b"", timeout_s: float = 60.0) -> RawResult:
        with self.session(wait_s=timeout_s) as chan:
            started = time.monotonic()
            try:
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                out = self._pump(chan, timeout_s, _discard, None, started, bounded=False)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(
                    self._host.name, f"the SSH connection failed during a command: {exc}"
                ) from exc
        if out.exit_code is None:
            raise HostUnreachable(
                self._host.name, out.lost_reason or "no exit status: the connection was lost"
            )
        return RawResult(out.exit_code, out.stdout, out.stderr)

    def open_process(self, command: str) -> _ChannelStream:
        chan, release = self.open_exec(command)
        return _ChannelStream(chan, release, lambda: self.lost_reason(chan.get_transport()))

    def close(self, *, wait_s: float = 0.0) -> None:
        """Close every connection to the host (the first and any extra ones); with
        ``wait_s``, wait up to that long for each one's paramiko thread to end."""
        transports = self._budget.close()
        for transport in transports:
            if wait_s > 0:
                # Wakes paramiko's reader at once (it would otherwise notice the close
                # at its next 0.1 s socket timeout), so its thread ends now.
                with contextlib.suppress(Exception):
                    transport.sock.shutdown(socket.SHUT_RDWR)
            transport.close()
        for transport in transports if wait_s > 0 else ():
            if transport is not threading.current_thread():
                transport.join(wait_s)


class _ChannelStream:
    """A ProcessStream over one SSH channel."""

    def __init__(
        self,
        chan: paramiko.Channel,
        on_close: Callable[[], None],
        why_lost: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._chan = chan
        self._on_close = on_close
        self._why_lost = why_lost
        self._closed = False
        self._lock = threading.Lock()

    @property
    def lost_reason(self) -> str | None:
        return self._why_lost()

    def send(self, data: bytes) -> None:
        with self._lock:
            try:
                self._chan.sendall(data)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise HostUnreachable("agent", f"the agent channel is closed: {exc}") from exc

    def recv(self) -> bytes:
        try:
            return bytes(self._chan.recv(65536))
        except (OSError, EOFError, paramiko.SSHException):
            return b""

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._chan.close()
        self._on_close()


def _prefer_aead(ciphers: Sequence[str]) -> tuple[str, ...]:
    """AES-GCM first: its tag is checked inside `cryptography`.

    paramiko's default (aes128-ctr with hmac-sha2-256) computes and compares each
    packet's MAC in Python, byte by byte, which is most of its per-packet cost.
    """
    aead = [c for c in ciphers if c.endswith("-gcm@openssh.com")]
    return tuple(aead + [c for c in ciphers if c not in aead])


class SSHConnector:
    """Opens one transport per host on demand and reuses it for every command.

    A global semaphore bounds concurrent handshakes (they are CPU-bound on the
    coordinator), and a gate bounds those through any one jump host or ProxyCommand
    (``handshakes_per_gateway``: a bastion's MaxStartups counts them); a dial that sshd
    drops early (MaxStartups) is retried with jittered backoff. Each connection's
    session budget keeps its channels under the host's MaxSessions, learned from its
    refusals (``channels_per_host`` is where it starts), and may open up to
    ``connections_per_host`` connections to a host whose limit is lower than the
    sessions wanted.

    Every connection is watched for silence by one :class:`~meshrun.transport.liveness.
    LivenessMonitor` (OpenSSH's ServerAliveInterval/ServerAliveCountMax): a host that
    stops answering is given up and its connection closed, so its channels end.
    ``server_alive_interval_s``/``server_alive_count_max`` given here win; not given,
    the host's ssh_config values, else 5 s and 3. An interval of 0 turns it off.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float | None = None,
        accept_new_host_keys: bool = False,
        max_handshakes: int = 32,
        channels_per_host: int = 64,
        connections_per_host: int = 4,
        handshakes_per_gateway: int = startups.HANDSHAKES_PER_GATEWAY,
        server_alive_interval_s: float | None = None,
        server_alive_count_max: int | None = None,
        ssh_config_path: str | None = None,
    ) -> None:
        # Given (--connect-timeout): it wins; not given: ssh_config's ConnectTimeout, else 10 s.
        self._timeout_given = connect_timeout_s is not None
        self.connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else 10.0
        self.accept_new_host_keys = accept_new_host_keys
        self.channels_per_host = channels_per_host
        self.connections_per_host = connections_per_host
        self._startup_gate = startups.HandshakeGate(handshakes_per_gateway)
        self.server_alive_interval_s = server_alive_interval_s
        self.server_alive_count_max = server_alive_count_max
        self._liveness = liveness.LivenessMonitor()
        self._handshakes = threading.BoundedSemaphore(max_handshakes)
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._connections: dict[str, SSHConnection] = {}
        self._known_hosts = KnownHosts()
        self._identity_files = IdentityFiles()
        self._agent_keys = AgentKeys()  # listed once per run, not per login
        self._hops: dict[tuple[tuple[str, ...], str | None, str | None], Host] = {}
        self._closed = False
        self._relay: ChannelRelay | None = None  # rsync's way in, started by a transfer
        self._relay_lock = threading.Lock()
        self._dialing: set[Any] = set()  # sockets/transports mid-setup, closed by close()
        self._resolver = SSHConfigResolver(ssh_config_path)
        self._endpoints: dict[Host, Endpoint] = {}

    # -- resolution ---------------------------------------------------------------

    def endpoint(self, host: Host) -> Endpoint:
        """The inventory entry merged with OpenSSH's resolution of its alias.

        Inventory keys win (``port``/``user`` are passed as ``ssh -p``/``-l`` would be,
        ``identity``, ``known_hosts`` and ``proxy_jump`` replace what ssh_config says).
        Computed once per host: a dial asks for it several times.
        """
        ep = self._endpoints.get(host)
        if ep is None:
            ep = self._endpoints[host] = self._merged(host)
        return ep

    def _merged(self, host: Host) -> Endpoint:
        s = self._resolver.resolve(
            host.ssh_alias, user=host.user, port=host.port, pinned=_pinned(host)
        )
        if host.known_hosts:
            user_files: tuple[str, ...] = (os.path.expanduser(host.known_hosts),)
            global_files: tuple[str, ...] = ()
        else:
            user_files, global_files = s.user_known_hosts, s.global_known_hosts
        if host.proxy_jump:
            jumps, proxy_command = split_jumps(host.proxy_jump), None
        elif host.proxy_command:
            jumps, proxy_command = (), host.proxy_command
        else:
            jumps, proxy_command = s.proxy_jump, s.proxy_command
        return Endpoint(
            alias=host.ssh_alias,
            address=s.hostname,
            port=s.port,
            user=s.user,
            identities=(
                (os.path.expanduser(host.identity),) if host.identity else s.identity_files
            ),
            identities_only=s.identities_only,
            certificates=s.certificate_files,
            identity_agent=s.identity_agent,
            known_hosts=(user_files or ("~/.ssh/known_hosts",))[0],
            known_hosts_files=user_files + global_files,
            host_key_alias=s.host_key_alias,
            hash_known_hosts=s.hash_known_hosts,
            proxy_jump=jumps,
            proxy_command=proxy_command,
            connect_timeout_s=(
                self.connect_timeout_s
                if self._timeout_given
                else s.connect_timeout_s or self.connect_timeout_s
            ),
            server_alive_interval_s=(
                self.server_alive_interval_s
                if self.server_alive_interval_s is not None
                else s.server_alive_interval_s or liveness.DEFAULT_INTERVAL_S
            ),
            server_alive_count_max=(
                self.server_alive_count_max
                if self.server_alive_count_max is not None
                else s.server_alive_count_max
            ),
        )

    def prepare(self, hosts: Sequence[Host]) -> None:
        """Resolve every host up front (in parallel) and check the keys they need.

        Raises, before any host is contacted: InputError for an ssh_config OpenSSH
        refuses, IdentityUnusable for a passphrase-protected key that ssh-agent does not
        hold and that a host can do without no other way (meshrun never prompts).
        """
        remote = [h for h in hosts if not h.local]
        self._resolver.resolve_all((h.ssh_alias, h.user, h.port, _pinned(h)) for h in remote)
        agent_blobs: dict[str | None, set[bytes]] = {}
        locked: dict[str, list[str]] = {}
        for host in remote:
            ep = self.endpoint(host)
            if ep.identity_agent not in agent_blobs:
                listing = self._agent_keys.listing(ep.identity_agent) or ()
                agent_blobs[ep.identity_agent] = {blob for blob, _ in listing}
            held = agent_blobs[ep.identity_agent]
            files = [self._identity_files.get(p) for p in ep.identities]
            if host.identity and not files[0].exists:
                raise IdentityUnusable(
                    f"{host.name}: identity file {files[0].path} does not exist",
                    fix="fix `identity` in the inventory or create the key",
                )
            stuck = [f.path for f in files if f.encrypted and f.public_blob not in held]
            usable = any(f.key is not None or f.public_blob in held for f in files) or (
                bool(held) and not ep.identities_only
            )
            if stuck and (not usable or host.identity):
                for path in stuck:
                    locked.setdefault(path, []).append(host.name)
        if locked:
            paths = sorted(locked)
            names = sorted({n for ns in locked.values() for n in ns})
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise IdentityUnusable(
                f"{', '.join(paths)}: passphrase-protected and not loaded in ssh-agent, and "
                f"{shown} can log in with no other key; meshrun never prompts mid-run",
                fix="load it first: "
                + "; ".join(f"`ssh-add {p}`" for p in paths)
                + " (start an agent with `eval $(ssh-agent)` if none runs)",
            )

    # -- connecting ---------------------------------------------------------------

    def connect(self, host: Host) -> SSHConnection:
        with self._lock:
            if self._closed:
                raise HostUnreachable(host.name, "the run is shutting down")
            conn = self._connections.get(host.name)
            if conn is not None and conn.transport.is_active():
                return conn
            host_lock = self._host_locks.setdefault(host.name, threading.Lock())
        with host_lock:
            with self._lock:
                conn = self._connections.get(host.name)
                if conn is not None and conn.transport.is_active():
                    return conn
            if conn is not None:
                conn.close()  # its first connection died: close any extra ones with it
            conn = self._dial_politely(host)
            conn.allow_extra_connections(
                lambda: self._dial_politely(host), self.connections_per_host
            )
            with self._lock:
                if self._closed:
                    conn.close()
                    raise HostUnreachable(host.name, "the run is shutting down")
                self._connections[host.name] = conn
            return conn

    def release(self, host: Host) -> None:
        """Close ``host``'s connections now (extra ones included), their paramiko
        threads ended; the next :meth:`connect` dials again. Jump hosts stay pooled
        (other hosts go through them), and so does the relay (one per connector)."""
        with self._lock:
            host_lock = self._host_locks.get(host.name)
        if host_lock is None:
            return
        with host_lock, self._lock:  # not while another thread dials it
            conn = self._connections.pop(host.name, None)
        if conn is not None:
            conn.close(wait_s=_RELEASE_WAIT_S)

    def _dial_politely(self, host: Host) -> SSHConnection:
        """``_dial`` within the gateway's handshake bound, dialled again when sshd drops
        it early (MaxStartups). Extra connections of a session budget come here too."""
        ep = self.endpoint(host)
        timeout_s = float(getattr(ep, "connect_timeout_s", self.connect_timeout_s))
        with self._startup_gate.through(startups.gateway_of(ep)):
            return startups.dial_with_retries(
                lambda: self._dial(host),
                host=host.name,
                early_s=timeout_s / 2,
                closing=lambda: self._closed,
            )

    def _dial(self, host: Host) -> SSHConnection:
        """:meth:`_dial_once`, where this process running out of descriptors, threads
        or memory (a socket, ssh-agent's socket, a key or known_hosts file, paramiko's
        thread) is ResourceExhausted: never the host's fault (not "is sshd running
        there", not "cannot read identity file"), and never retried here."""
        with resources.shortage_raised(f"connecting to {host.name}"):
            return self._dial_once(host)

    def _dial_once(self, host: Host) -> SSHConnection:
        ep = self.endpoint(host)
        where = f"{ep.user}@{ep.address}:{ep.port}"
        sock: Any
        if ep.proxy_jump:
            sock = self._jump_channel(host, ep)
        elif ep.proxy_command:
            sock = self._proxy_command(host, ep)
        else:
            sock = self._tcp(host, ep)
        with self._handshakes:
            transport = self._handshake(host, ep, sock, where)
        self._track(transport)
        try:
            self._authenticate(host, ep, transport, where)
        except BaseException:
            transport.close()
            raise
        finally:
            self._untrack(transport)
        if self._closed:
            transport.close()
            raise HostUnreachable(host.name, "the run is shutting down")
        self._watch(host, ep, transport)
        log.info("%s: connected (%s)", host.name, where)
        return SSHConnection(
            host,
            transport,
            self.channels_per_host,
            ep.connect_timeout_s,
            self._liveness,
            remote_shell=self._remote_shell_for(host),
        )

    def _remote_shell_for(self, host: Host) -> Callable[[], rsync.RemoteShell]:
        """:meth:`rsync_ssh` for ``host``, for its connection's transfers; holds this
        connector weakly (the connector holds the connection)."""
        ref = weakref.ref(self)

        def remote_shell() -> rsync.RemoteShell:
            connector = ref()
            if connector is None:
                raise HostUnreachable(host.name, "the run is shutting down")
            return connector.rsync_ssh(host)

        return remote_shell

    def _watch(self, host: Host, ep: Endpoint, transport: paramiko.Transport) -> None:
        """Keepalives that want a reply; a host silent past them is given up (closed)."""

        def dead(reason: str) -> None:
            log.info("%s: %s; closing its connection", host.name, reason)
            transport.close()

        state = self._liveness.watch(
            transport,
            interval_s=ep.server_alive_interval_s,
            count_max=ep.server_alive_count_max,
            probe=functools.partial(liveness.send_keepalive, transport),
            on_dead=dead,
            name=host.name,
        )
        if ep.server_alive_interval_s > 0:
            liveness.observe_packets(transport, state)
        # Logged in: from now on the reader blocks instead of polling (lean.quiet).
        lean.quiet(transport)

    def lost_reason(self, host: Host) -> str | None:
        """Why the host's connection was given up ("stopped answering (...)"), if
        meshrun gave it up itself; None otherwise."""
        with self._lock:
            conn = self._connections.get(host.name)
        return conn.lost_reason() if conn is not None else None

    def _track(self, thing: Any) -> None:
        with self._lock:
            if self._closed:
                thing.close()
            self._dialing.add(thing)

    def _untrack(self, thing: Any) -> None:
        with self._lock:
            self._dialing.discard(thing)

    def _tcp(self, host: Host, ep: Endpoint) -> socket.socket:
        if self._closed:
            raise HostUnreachable(host.name, "the run is shutting down")
        try:
            # An ASCII name goes as bytes (getaddrinfo takes both; typeshed says str):
            # a str makes socket load the idna codec, ~3 ms of every run's start.
            address: Any = ep.address.encode() if ep.address.isascii() else ep.address
            sock = socket.create_connection((address, ep.port), timeout=ep.connect_timeout_s)
        except TimeoutError as exc:
            raise HostUnreachable(
                host.name,
                f"TCP connect to {ep.address}:{ep.port} timed out after {ep.connect_timeout_s:g}s",
                fix="check the address and port, or raise --connect-timeout",
            ) from exc
        except OSError as exc:
            raise HostUnreachable(
                host.name,
                f"cannot connect to {ep.address}:{ep.port}: {exc.strerror or exc}",
                fix="is sshd running there, and is the address/port in the inventory right?",
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return lean.link_socket(sock)  # quick ACKs; its close wakes paramiko's reader

    def _proxy_command(self, host: Host, ep: Endpoint) -> socket.socket:
        """``ProxyCommand``: run it as ``ssh`` does (``/bin/sh -c 'exec CMD'``, tokens
        expanded) with a socket pair as its stdin and stdout."""
        assert ep.proxy_command
        if self._closed:
            raise HostUnreachable(host.name, "the run is shutting down")
        tokens = token_values(ep.alias, ep.address, ep.port, ep.user)
        command = expand_tokens(ep.proxy_command, tokens)
        return start_proxy_command(command, host.name)

    def _jump_channel(self, host: Host, ep: Endpoint) -> paramiko.Channel:
        """A direct-tcpip channel through the last ProxyJump hop, used as the socket.

        ``ProxyJump a,b`` dials ``a`` (as its own ssh_config says), then ``b`` through
        ``a``, then the host through ``b``: OpenSSH's order. Each hop is one pooled
        connection shared by every host behind it, and is held to the same host-key
        and identity rules as the host itself.
        """
        hops = ep.proxy_jump
        last = hops[-1]
        try:
            jump = self.connect(self._hop_host(host, hops))
        except ConnectError as exc:
            raise _through(exc, host, last) from exc
        try:
            return jump.transport.open_channel(
                "direct-tcpip",
                (ep.address, ep.port),
                ("127.0.0.1", 0),
                timeout=ep.connect_timeout_s,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                host.name,
                f"jump host {last} could not reach {ep.address}:{ep.port}: {exc}",
                fix="check proxy_jump / ProxyJump and that the jump host allows TCP forwarding",
            ) from exc

    def _hop_host(self, host: Host, hops: tuple[str, ...]) -> Host:
        """The Host for the last of ``hops``, reached through the ones before it.

        Hops inherit the inventory's ``identity`` and ``known_hosts`` (inventory keys
        win), so they are part of the pool key: one connection per distinct hop.
        """
        if len(hops) > _MAX_HOPS:
            raise InputError(
                f"{host.name}: more than {_MAX_HOPS} ProxyJump hops ({','.join(hops)})",
                fix="check ssh_config for a ProxyJump loop",
            )
        user, address, port = parse_jump_spec(hops[-1])
        key = (hops, host.identity, host.known_hosts)
        with self._lock:
            found = self._hops.get(key)
            if found is None:
                name = f"jump {','.join(hops)}"
                taken = sum(1 for k in self._hops if k[0] == hops)
                found = Host(
                    name=name if not taken else f"{name} #{taken + 1}",
                    address=address,
                    port=port,
                    user=user,
                    identity=host.identity,
                    known_hosts=host.known_hosts,
                    proxy_jump=",".join(hops[:-1]) or None,
                )
                self._hops[key] = found
            return found

    def _handshake(self, host: Host, ep: Endpoint, sock: Any, where: str) -> paramiko.Transport:
        name = ep.key_name
        transport = lean.LeanTransport(sock)
        channel = lean.log_channel(host.name)
        if channel is not None:  # paramiko's own records (-vvv) name the host too
            transport.set_log_channel(channel)
        transport.banner_timeout = ep.connect_timeout_s
        transport.handshake_timeout = ep.connect_timeout_s
        opts = transport.get_security_options()
        opts.ciphers = _prefer_aead(opts.ciphers)
        wanted = self._known_hosts.listed_types(ep.known_hosts_files, name)
        if not wanted and host.advertised_key_type:
            # A host found on the LAN: ask for the key it advertised, so the
            # fingerprint check compares like with like.
            wanted.add(host.advertised_key_type)
        wanted_algorithms = {a for t in wanted for a in _KEY_TYPE_ALGORITHMS.get(t, (t,))}
        if wanted_algorithms:
            # Ask for a key type we already know, as OpenSSH does, so a host offering
            # several keys is checked against the one in known_hosts.
            opts = transport.get_security_options()
            known_types = [t for t in opts.key_types if t in wanted_algorithms]
            opts.key_types = known_types + [t for t in opts.key_types if t not in wanted_algorithms]
        hung = HostUnreachable(
            host.name,
            f"{ep.address}:{ep.port} accepted TCP but sent no SSH banner within "
            f"{ep.connect_timeout_s:g}s",
            fix="the host or its sshd is hung or overloaded; check it, or raise --connect-timeout",
        )
        self._track(transport)
        try:
            transport.start_client(timeout=ep.connect_timeout_s)
            # paramiko may return at its timeout with the key exchange unfinished.
            if not transport.is_active() or transport.host_key is None:
                raise hung
            key = transport.get_remote_server_key()
        except HostUnreachable:
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            detail = proxy_failure(sock)  # before closing: closing ends the command
            transport.close()
            text = str(exc)
            if detail:
                raise ProxyCommandFailed(
                    host.name,
                    f"ProxyCommand for {where} ended: {detail}",
                    detail=detail,
                    fix="run the ProxyCommand by hand (`ssh -v HOST` shows it) and fix it",
                ) from exc
            if "banner" in text.lower() or "session" in text.lower():
                raise hung from exc
            raise HostUnreachable(host.name, f"SSH handshake with {where} failed: {text}") from exc
        except BaseException:  # paramiko's thread could not start: the socket goes too
            transport.close()
            with contextlib.suppress(Exception):
                sock.close()
            raise
        finally:
            self._untrack(transport)
        if self._closed:
            transport.close()
            raise HostUnreachable(host.name, "the run is shutting down")
        self._check_host_key(host, ep, name, key, transport)
        return transport

    def _check_host_key(
        self,
        host: Host,
        ep: Endpoint,
        name: str,
        key: paramiko.PKey,
        transport: paramiko.Transport,
    ) -> None:
        advertised = host.advertised_fingerprint
        if advertised is not None and (fp := fingerprint(key)) != advertised:
            # Discovery only proposes: whatever known_hosts or --accept-new-host-keys
            # say, a host that is not what it announced is not trusted.
            transport.close()
            raise HostKeyError(
                host.name,
                f"possible spoof: {name} presented host key {key.get_name()} {fp}, which does "
                f"not match the fingerprint {advertised} it advertised on the LAN; refusing "
                "to connect",
                fingerprint=fp,
                changed=False,
                advertised_fingerprint=advertised,
                fix="if that machine's sshd really uses this key, restart `meshrun agent` "
                "there with --host-key naming its .pub file; otherwise another machine is "
                "answering for it: find out which",
            )
        key_type = key.get_name()
        check = self._known_hosts.check(ep.known_hosts_files, name, key_type, key.asbytes())
        files = " ".join(ep.known_hosts_files) or "(no known_hosts file)"
        if check.verdict is Verdict.TRUSTED:
            return
        fp = fingerprint(key)  # for the messages below (a trusted key needs none)
        if check.verdict is Verdict.UNKNOWN and self.accept_new_host_keys:
            self._known_hosts.add(
                ep.known_hosts, name, key_type, key.get_base64(), hashed=ep.hash_known_hosts
            )
            log.warning(
                "added new host key for %s (%s %s) to %s", name, key_type, fp, ep.known_hosts
            )
            return
        transport.close()
        if check.verdict is Verdict.REVOKED:
            raise HostKeyError(
                host.name,
                f"REVOKED HOST KEY for {name}: {key_type} {fp} is marked @revoked in "
                f"{check.listed_in}; refusing to connect",
                fingerprint=fp,
                changed=True,
                fix="this key must never be trusted again; find out why the host presents it",
            )
        if check.verdict is Verdict.CHANGED:
            raise HostKeyError(
                host.name,
                f"HOST KEY CHANGED for {name}: it now presents {key_type} {fp}, "
                f"which differs from {check.listed_in}; refusing to connect (this may be an "
                "attack, or the host was reinstalled)",
                fingerprint=fp,
                changed=True,
                fix=f"if the change is expected, remove the old key with "
                f"`ssh-keygen -R '{name}' -f {check.listed_in}` and connect again",
            )
        if check.verdict is Verdict.OTHER_TYPE:
            raise HostKeyError(
                host.name,
                f"{name} presented a {key_type} key ({fp}) but {files} only "
                f"lists {', '.join(sorted(check.listed_types))} for it; refusing",
                fingerprint=fp,
                changed=True,
                fix=f"check the host; if the key is right, remove the old entry with "
                f"`ssh-keygen -R '{name}' -f {ep.known_hosts}`",
            )
        verify = "verify the fingerprint"
        if advertised is not None:
            verify = "it matches what the host advertised on the LAN; verify it out of band"
        ca_note = ""
        if check.has_cert_authority:
            ca_note = (
                " (a @cert-authority line covers this name, but meshrun cannot check host "
                "certificates: list the host's own key)"
            )
        raise HostKeyError(
            host.name,
            f"unknown host key for {name}: {key_type} {fp} is not in {files}{ca_note}",
            fingerprint=fp,
            changed=False,
            fix=f"{verify}, then run again with --accept-new-host-keys "
            f"(or add it with `ssh-keyscan -p {ep.port} {ep.address} >> {ep.known_hosts}`)",
        )

    def _authenticate(
        self, host: Host, ep: Endpoint, transport: paramiko.Transport, where: str
    ) -> None:
        if host.identity and not os.path.exists(ep.identities[0]):
            raise AuthError(
                host.name,
                f"identity file {ep.identities[0]} does not exist",
                fix="fix `identity` in the inventory or create the key",
            )
        for path in ep.identities:
            ident = self._identity_files.get(path)
            if ident.error is not None and (host.identity or path in ep.certificates):
                raise AuthError(
                    host.name,
                    f"cannot read identity file {path}: {ident.error}",
                    fix="point `identity` at an OpenSSH private key",
                )
        agent = self._agent_keys.agent(ep.identity_agent)
        try:
            agent_keys = list(agent.get_keys()) if agent is not None else []
            plan = offers(
                self._identity_files,
                ep.identities,
                ep.certificates,
                agent_keys,
                identities_only=ep.identities_only,
            )
            tried: list[str] = []
            for offer in plan.keys:
                tried.append(offer.label)
                try:
                    remaining = transport.auth_publickey(ep.user, offer.key)
                except paramiko.AuthenticationException:
                    if not transport.is_active():
                        break  # sshd's MaxAuthTries: it hung up on us
                    continue
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    if transport.is_active():
                        raise HostUnreachable(
                            host.name, f"connection lost during login: {exc}"
                        ) from exc
                    break
                if not remaining and transport.is_authenticated():
                    return
        finally:
            if agent is not None:
                agent.close()
        skipped = ""
        if plan.encrypted_not_in_agent:
            skipped = (
                f"; skipped passphrase-protected {', '.join(plan.encrypted_not_in_agent)} "
                "(not in ssh-agent)"
            )
        if not tried:
            raise AuthError(
                host.name,
                f"no key to offer {where}{skipped}",
                fix="load your key into ssh-agent (`ssh-add KEY`) or set `identity` for this "
                "host; meshrun never prompts mid-run",
            )
        hung_up = not transport.is_active()
        raise AuthError(
            host.name,
            f"{where} refused every key offered ({', '.join(tried)}){skipped}"
            + (
                " and then closed the connection (too many keys: sshd's MaxAuthTries)"
                if hung_up
                else ""
            ),
            fix="set `identity` (or IdentitiesOnly yes in ssh_config) for this host, or add "
            "your public key to the host's ~/.ssh/authorized_keys",
        )

    def rsync_ssh(self, host: Host) -> rsync.RemoteShell:
        """rsync's remote shell for ``host``: a helper that runs the remote side on this
        connector's own pooled connection (one exec channel per transfer, through the
        channel relay), so a transfer goes through the same hops with the same identity
        and host-key check as the command, without a second handshake."""
        from meshrun.transport.channel_relay import relay_for

        with self._relay_lock:
            if self._closed:
                raise HostUnreachable(host.name, "the run is shutting down")
            if self._relay is None:
                self._relay = relay_for(self)
            relay = self._relay
        return relay.remote_shell(host)

    def push(
        self,
        host: Host,
        *,
        root: str,
        paths: Sequence[str],
        excludes: Sequence[str],
        hide: Sequence[str] = (),
    ) -> None:
        rsh = self.rsync_ssh(host)
        # Tasks run in "$HOME"/x; rsync would resolve "x" against the login directory.
        workdir = expand_home(self.connect(host), host.workdir)
        argv = rsync.push_argv(
            rsh=rsh, root=root, paths=paths, excludes=excludes, workdir=workdir, hide=hide
        )
        rsync.run(argv, host.name, env=rsh.env)

    def close(self) -> None:
        """Close every transport; running channels end at once."""
        with self._lock:
            self._closed = True
            conns = list(self._connections.values())
            self._connections.clear()
            dialing = list(self._dialing)
        self._liveness.close()
        for conn in conns:
            conn.close()
        for thing in dialing:
            thing.close()
        with self._relay_lock:
            relay, self._relay = self._relay, None
        if relay is not None:  # a transfer started it
            relay.close()


__all__ = ["ConnectError", "SSHConnection", "SSHConnector", "fingerprint"]

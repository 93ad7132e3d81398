"""The SSH connector: one pooled paramiko transport per host, many channels on it.

Everything that touches paramiko lives here, and its exceptions are mapped once, at
this boundary, to meshrun's ConnectError family. We drive paramiko's ``Transport``
directly rather than through Fabric's ``Connection``: the hot path needs the socket
(``TCP_NODELAY`` before the handshake), the host-key decision (refuse unknown, never
accept changed) and one reader per channel instead of Fabric's thread per stream.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paramiko

from meshrun.errors import AuthError, ConnectError, HostKeyError, HostUnreachable
from meshrun.inventory import Host
from meshrun.sshkeys import sha256_fingerprint
from meshrun.transport import rsync
from meshrun.transport.base import (
    CommandOutcome,
    CommandRequest,
    OutputSink,
    RawResult,
    Stream,
    _discard,
)
from meshrun.transport.wrapper import KILL_GRACE_TENTHS, build_wrapper, remote_exec_line

log = logging.getLogger(__name__)

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
_POLL_S = 0.1


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (``SHA256:...``)."""
    return sha256_fingerprint(key.asbytes())


# paramiko negotiates RSA host keys under the names of their signature algorithms.
_KEY_TYPE_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


class _QuickAckSocket(socket.socket):
    """A TCP socket that re-arms TCP_QUICKACK after every read (Linux).

    sshd leaves Nagle on for sessions without a terminal, so its small replies wait for
    our ACK; a delayed ACK (~40 ms) then stalls every exchange, e.g. the first channel
    after login. Quick ACKs remove the stall. The flag resets itself, hence every read.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        try:  # noqa: SIM105 (a hot path: no context manager per read)
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass
        return data


_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)


def known_hosts_name(address: str, port: int) -> str:
    """The name a host has in known_hosts: ``addr`` on port 22, ``[addr]:port`` otherwise."""
    return address if port == 22 else f"[{address}]:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect, after inventory and ssh_config are merged."""

    address: str
    port: int
    user: str
    identities: tuple[str, ...]
    known_hosts: str
    proxy_jump: str | None


class _KnownHosts:
    """One known_hosts file, shared by every host that uses it; appends under a lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = paramiko.HostKeys()
        self.lock = threading.Lock()
        if os.path.exists(path):
            try:
                self.keys.load(path)
            except (OSError, paramiko.SSHException) as exc:
                log.warning("could not read known_hosts %s: %s", path, exc)

    def lookup(self, name: str) -> dict[str, paramiko.PKey]:
        with self.lock:
            found = self.keys.lookup(name)
            return dict(found) if found else {}

    def add(self, name: str, key: paramiko.PKey) -> None:
        with self.lock:
            self.keys.add(name, key.get_name(), key)
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", encoding="ascii") as f:
                f.write(f"{name} {key.get_name()} {key.get_base64()}\n")


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


class SSHConnection:
    """A live SSH transport to one host; channels are opened per command."""

    def __init__(
        self, host: Host, transport: paramiko.Transport, max_channels: int, timeout_s: float
    ) -> None:
        self._host = host
        self.transport = transport
        self._channels = threading.BoundedSemaphore(max_channels)
        self._timeout_s = timeout_s

    @property
    def host(self) -> Host:
        return self._host

    @property
    def host_key_fingerprint(self) -> str | None:
        return fingerprint(self.transport.get_remote_server_key())

    def _open(self) -> paramiko.Channel:
        if not self.transport.is_active():
            raise HostUnreachable(self._host.name, "the SSH connection was lost")
        try:
            return self.transport.open_session(timeout=self._timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                self._host.name, f"could not open an SSH channel: {exc or type(exc).__name__}"
            ) from exc

    def run(
        self,
        request: CommandRequest,
        *,
        on_output: OutputSink = _discard,
        cancel: threading.Event | None = None,
    ) -> CommandOutcome:
        script = build_wrapper(request.command, workdir=self._host.workdir, env=request.env)
        with self._channels:
            started = time.monotonic()
            chan = self._open()
            try:
                chan.exec_command(remote_exec_line(script))
                return self._pump(chan, request.timeout_s, on_output, cancel, started)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(
                    self._host.name, f"the SSH connection failed during the command: {exc}"
                ) from exc
            finally:
                chan.close()

    def _pump(
        self,
        chan: paramiko.Channel,
        timeout_s: float | None,
        on_output: OutputSink,
        cancel: threading.Event | None,
        started: float,
    ) -> CommandOutcome:
        """Read both streams until the exit status arrives, honouring timeout and cancel."""
        wake = _Wakeup()
        chan.in_buffer.set_event(wake)
        chan.in_stderr_buffer.set_event(wake)
        deadline = None if timeout_s is None else started + timeout_s
        chunks: dict[Stream, list[bytes]] = {"stdout": [], "stderr": []}
        timed_out = cancelled = lost = False
        stopped_at: float | None = None

        def drain() -> None:
            while chan.recv_ready():
                data = chan.recv(65536)
                chunks["stdout"].append(data)
                on_output("stdout", data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                chunks["stderr"].append(data)
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
        return CommandOutcome(
            exit_code=exit_code,
            stdout=b"".join(chunks["stdout"]),
            stderr=b"".join(chunks["stderr"]),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled,
            lost=lost and not (timed_out or cancelled),
        )

    def run_raw(self, command: str, *, stdin: bytes = b"", timeout_s: float = 60.0) -> RawResult:
        with self._channels:
            started = time.monotonic()
            chan = self._open()
            try:
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                out = self._pump(chan, timeout_s, _discard, None, started)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(
                    self._host.name, f"the SSH connection failed during a command: {exc}"
                ) from exc
            finally:
                chan.close()
        if out.exit_code is None:
            raise HostUnreachable(self._host.name, "no exit status: the connection was lost")
        return RawResult(out.exit_code, out.stdout, out.stderr)

    def open_process(self, command: str) -> _ChannelStream:
        self._channels.acquire()
        try:
            chan = self._open()
            chan.exec_command(command)
        except BaseException:
            self._channels.release()
            raise
        return _ChannelStream(chan, self._channels.release)

    def close(self) -> None:
        self.transport.close()


class _ChannelStream:
    """A ProcessStream over one SSH channel."""

    def __init__(self, chan: paramiko.Channel, on_close: Callable[[], None]) -> None:
        self._chan = chan
        self._on_close = on_close
        self._closed = False
        self._lock = threading.Lock()

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


class SSHConnector:
    """Opens one transport per host on demand and reuses it for every command.

    A global semaphore bounds concurrent handshakes (they are CPU-bound on the
    coordinator); a per-host semaphore keeps channels below sshd's ``MaxSessions``.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
        accept_new_host_keys: bool = False,
        max_handshakes: int = 32,
        channels_per_host: int = 8,
        keepalive_s: int = 15,
        ssh_config_path: str = "~/.ssh/config",
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.accept_new_host_keys = accept_new_host_keys
        self.channels_per_host = channels_per_host
        self.keepalive_s = keepalive_s
        self._handshakes = threading.BoundedSemaphore(max_handshakes)
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._connections: dict[str, SSHConnection] = {}
        self._known_hosts: dict[str, _KnownHosts] = {}
        self._closed = False
        self._dialing: set[Any] = set()  # sockets/transports mid-setup, closed by close()
        config_path = os.path.expanduser(ssh_config_path)
        self._ssh_config = (
            paramiko.SSHConfig.from_path(config_path) if os.path.isfile(config_path) else None
        )

    # -- resolution ---------------------------------------------------------------

    def endpoint(self, host: Host) -> Endpoint:
        """Merge the inventory entry with ~/.ssh/config and OpenSSH's defaults."""
        cfg: dict[str, Any] = {}
        if self._ssh_config is not None:
            cfg = dict(self._ssh_config.lookup(host.ssh_alias))
        address = str(cfg.get("hostname", host.ssh_alias))
        port = host.port or int(cfg.get("port", 22))
        user = host.user or cfg.get("user") or getpass.getuser()
        if host.identity:
            identities: tuple[str, ...] = (host.identity,)
        elif cfg.get("identityfile"):
            identities = tuple(cfg["identityfile"])
        else:
            identities = DEFAULT_IDENTITIES
        known = host.known_hosts
        if known is None and cfg.get("userknownhostsfile"):
            known = str(cfg["userknownhostsfile"]).split()[0]
        proxy = host.proxy_jump or cfg.get("proxyjump")
        if proxy == "none":
            proxy = None
        return Endpoint(
            address=address,
            port=port,
            user=user,
            identities=tuple(os.path.expanduser(p) for p in identities),
            known_hosts=os.path.expanduser(known or "~/.ssh/known_hosts"),
            proxy_jump=proxy,
        )

    def _known(self, path: str) -> _KnownHosts:
        with self._lock:
            if path not in self._known_hosts:
                self._known_hosts[path] = _KnownHosts(path)
            return self._known_hosts[path]

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
            conn = self._dial(host)
            with self._lock:
                if self._closed:
                    conn.close()
                    raise HostUnreachable(host.name, "the run is shutting down")
                self._connections[host.name] = conn
            return conn

    def _dial(self, host: Host) -> SSHConnection:
        ep = self.endpoint(host)
        where = f"{ep.user}@{ep.address}:{ep.port}"
        sock: Any
        sock = self._jump_channel(host, ep) if ep.proxy_jump else self._tcp(host, ep)
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
        transport.set_keepalive(self.keepalive_s)
        log.debug("connected", extra={"host": host.name})
        return SSHConnection(host, transport, self.channels_per_host, self.connect_timeout_s)

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
            sock = socket.create_connection((ep.address, ep.port), timeout=self.connect_timeout_s)
        except TimeoutError as exc:
            raise HostUnreachable(
                host.name,
                f"TCP connect to {ep.address}:{ep.port} timed out after "
                f"{self.connect_timeout_s:g}s",
                fix="check the address and port, or raise --connect-timeout",
            ) from exc
        except OSError as exc:
            raise HostUnreachable(
                host.name,
                f"cannot connect to {ep.address}:{ep.port}: {exc.strerror or exc}",
                fix="is sshd running there, and is the address/port in the inventory right?",
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_QUICKACK:
            timeout = sock.gettimeout()
            sock = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            sock.settimeout(timeout)
        return sock

    def _jump_channel(self, host: Host, ep: Endpoint) -> paramiko.Channel:
        """A direct-tcpip channel through the ProxyJump host, used as the socket."""
        assert ep.proxy_jump
        spec = ep.proxy_jump
        user, _, rest = spec.rpartition("@")
        address, port = rest, None
        if rest.startswith("["):
            address, _, tail = rest[1:].partition("]")
            port = int(tail[1:]) if tail.startswith(":") else None
        elif rest.count(":") == 1:
            address, port_text = rest.split(":")
            port = int(port_text)
        jump_host = Host(
            name=f"{host.name} (via {spec})",
            address=address,
            port=port,
            user=user or None,
            identity=host.identity,
            known_hosts=host.known_hosts,
        )
        jump = self.connect(jump_host)
        try:
            return jump.transport.open_channel(
                "direct-tcpip",
                (ep.address, ep.port),
                ("127.0.0.1", 0),
                timeout=self.connect_timeout_s,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                host.name,
                f"jump host {spec} could not reach {ep.address}:{ep.port}: {exc}",
                fix="check proxy_jump and that the jump host allows TCP forwarding",
            ) from exc

    def _handshake(self, host: Host, ep: Endpoint, sock: Any, where: str) -> paramiko.Transport:
        known = self._known(ep.known_hosts)
        name = known_hosts_name(ep.address, ep.port)
        expected = known.lookup(name)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = self.connect_timeout_s
        transport.handshake_timeout = self.connect_timeout_s
        wanted: set[str] = set(expected)
        if not wanted and host.advertised_key_type:
            # A host found on the LAN: ask for the key it advertised, so the
            # fingerprint check compares like with like.
            wanted.update(
                _KEY_TYPE_ALGORITHMS.get(host.advertised_key_type, (host.advertised_key_type,))
            )
        if wanted:
            # Ask for a key type we already know, as OpenSSH does, so a host offering
            # several keys is checked against the one in known_hosts.
            opts = transport.get_security_options()
            known_types = [t for t in opts.key_types if t in wanted]
            opts.key_types = known_types + [t for t in opts.key_types if t not in wanted]
        hung = HostUnreachable(
            host.name,
            f"{ep.address}:{ep.port} accepted TCP but sent no SSH banner within "
            f"{self.connect_timeout_s:g}s",
            fix="the host or its sshd is hung or overloaded; check it, or raise --connect-timeout",
        )
        self._track(transport)
        try:
            transport.start_client(timeout=self.connect_timeout_s)
            # paramiko may return at its timeout with the key exchange unfinished.
            if not transport.is_active() or transport.host_key is None:
                raise hung
            key = transport.get_remote_server_key()
        except HostUnreachable:
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            text = str(exc)
            if "banner" in text.lower() or "session" in text.lower():
                raise hung from exc
            raise HostUnreachable(host.name, f"SSH handshake with {where} failed: {text}") from exc
        finally:
            self._untrack(transport)
        if self._closed:
            transport.close()
            raise HostUnreachable(host.name, "the run is shutting down")
        self._check_host_key(host, ep, known, name, key, transport)
        return transport

    def _check_host_key(
        self,
        host: Host,
        ep: Endpoint,
        known: _KnownHosts,
        name: str,
        key: paramiko.PKey,
        transport: paramiko.Transport,
    ) -> None:
        fp = fingerprint(key)
        advertised = host.advertised_fingerprint
        if advertised is not None and fp != advertised:
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
        expected = known.lookup(name)
        if key.get_name() in expected:
            if expected[key.get_name()] == key:
                return
            transport.close()
            raise HostKeyError(
                host.name,
                f"HOST KEY CHANGED for {name}: it now presents {key.get_name()} {fp}, "
                f"which differs from {ep.known_hosts}; refusing to connect (this may be an "
                "attack, or the host was reinstalled)",
                fingerprint=fp,
                changed=True,
                fix=f"if the change is expected, remove the old key with "
                f"`ssh-keygen -R '{name}' -f {ep.known_hosts}` and connect again",
            )
        if self.accept_new_host_keys and not expected:
            known.add(name, key)
            log.warning(
                "added new host key for %s (%s %s) to %s", name, key.get_name(), fp, ep.known_hosts
            )
            return
        transport.close()
        if expected:
            raise HostKeyError(
                host.name,
                f"{name} presented a {key.get_name()} key ({fp}) but {ep.known_hosts} only "
                f"lists {', '.join(sorted(expected))} for it; refusing",
                fingerprint=fp,
                changed=True,
                fix=f"check the host; if the key is right, remove the old entry with "
                f"`ssh-keygen -R '{name}' -f {ep.known_hosts}`",
            )
        verify = "verify the fingerprint"
        if advertised is not None:
            verify = "it matches what the host advertised on the LAN; verify it out of band"
        raise HostKeyError(
            host.name,
            f"unknown host key for {name}: {key.get_name()} {fp} is not in {ep.known_hosts}",
            fingerprint=fp,
            changed=False,
            fix=f"{verify}, then run again with --accept-new-host-keys "
            f"(or add it with `ssh-keyscan -p {ep.port} {ep.address} >> {ep.known_hosts}`)",
        )

    def _authenticate(
        self, host: Host, ep: Endpoint, transport: paramiko.Transport, where: str
    ) -> None:
        tried: list[str] = []
        encrypted: list[str] = []
        keys: list[tuple[str, paramiko.PKey]] = []
        for path in ep.identities:
            if not os.path.exists(path):
                if host.identity:
                    raise AuthError(
                        host.name,
                        f"identity file {path} does not exist",
                        fix="fix `identity` in the inventory or create the key",
                    )
                continue
            try:
                keys.append((path, paramiko.PKey.from_path(path)))
            except paramiko.PasswordRequiredException:
                encrypted.append(path)
            except (paramiko.SSHException, OSError, ValueError) as exc:
                raise AuthError(
                    host.name,
                    f"cannot read identity file {path}: {exc}",
                    fix="point `identity` at an OpenSSH private key",
                ) from exc
        if os.environ.get("SSH_AUTH_SOCK"):
            try:
                for agent_key in paramiko.Agent().get_keys():
                    keys.append((f"agent:{agent_key.get_name()}", agent_key))
            except paramiko.SSHException as exc:
                log.warning("ssh-agent unavailable: %s", exc)
        for label, key in keys:
            tried.append(label)
            try:
                remaining = transport.auth_publickey(ep.user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(host.name, f"connection lost during login: {exc}") from exc
            if not remaining and transport.is_authenticated():
                return
        if encrypted and not tried:
            raise AuthError(
                host.name,
                f"the only key(s) found are passphrase-protected: {', '.join(encrypted)}",
                fix="load them into ssh-agent (`ssh-add KEY`); meshrun never prompts mid-run",
            )
        raise AuthError(
            host.name,
            f"{where} refused every key offered ({', '.join(tried) or 'none found'})",
            fix="set `identity` for this host, or add your public key to the host's "
            "~/.ssh/authorized_keys",
        )

    def rsync_ssh(self, host: Host) -> tuple[Endpoint, list[str]]:
        """The endpoint and the ssh command rsync must use for ``host``: the very
        settings of this connector (key, port, user, known_hosts, jump host)."""
        ep = self.endpoint(host)
        ssh = rsync.ssh_command(
            port=ep.port,
            identities=[p for p in ep.identities if os.path.exists(p)],
            known_hosts=ep.known_hosts,
            connect_timeout_s=self.connect_timeout_s,
            proxy_jump=ep.proxy_jump,
        )
        return ep, ssh

    def push(self, host: Host, *, root: str, paths: Sequence[str], excludes: Sequence[str]) -> None:
        ep, ssh = self.rsync_ssh(host)
        workdir = host.workdir
        if workdir == "~" or workdir.startswith("~/"):
            # Tasks run in "$HOME"/x; rsync would resolve "x" against the login
            # directory, which need not be $HOME. Ask the host once.
            home = self.connect(host).run_raw('printf "%s" "$HOME"').stdout.decode().strip()
            if home.startswith("/"):
                workdir = home.rstrip("/") + workdir[1:]
        argv = rsync.push_argv(
            ssh=ssh,
            user=ep.user,
            address=ep.address,
            root=root,
            paths=paths,
            excludes=excludes,
            workdir=workdir,
        )
        rsync.run(argv, host.name)

    def close(self) -> None:
        """Close every transport; running channels end at once."""
        with self._lock:
            self._closed = True
            conns = list(self._connections.values())
            self._connections.clear()
            dialing = list(self._dialing)
        for conn in conns:
            conn.close()
        for thing in dialing:
            thing.close()


__all__ = ["ConnectError", "SSHConnection", "SSHConnector", "fingerprint"]

"""A simulated fleet: one real OpenSSH ``sshd`` per host, all on 127.0.0.1.

Tests and demos need many SSH hosts that behave like real ones (real handshakes, host
keys, session processes) and that can be broken on purpose: killed, hung, re-keyed. One
sshd per simulated host, each on its own loopback port, gives exactly that without
containers or VMs.

Stdlib + psutil only, and psutil is imported lazily, so demo scripts can import this
module without the test extras installed.

Command line (the fleet outlives the command, for demos)::

    python -m meshrun.testing.fleet up --count 8 --dir /tmp/fleet
    python -m meshrun.testing.fleet status --dir /tmp/fleet
    python -m meshrun.testing.fleet down --dir /tmp/fleet
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import getpass
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from meshrun.config import hostsfile
from meshrun.records import record

if TYPE_CHECKING:
    import psutil  # imported lazily at run time: only faults and teardown need it

__all__ = ["STOCK_LIMITS", "Fleet", "SimHost", "main"]

SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STATE_FILE = "fleet.json"
_KEY_NAME = "ssh_host_ed25519_key"
#: sshd's own defaults, which most real hosts keep: ``Fleet.start(..., **STOCK_LIMITS)``.
STOCK_LIMITS: dict[str, Any] = {"max_sessions": 10, "max_startups": "10:30:100"}


@record(frozen=False, slots=False)
class SimHost:
    """One simulated machine: an sshd listener plus the files that define it."""

    name: str
    port: int
    dir: Path
    home: Path
    workdir: Path
    host_key: Path  # private ed25519 host key; host_key.with_suffix(".pub") exists
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None  # None when adopted from fleet.json
    pid: int = 0  # the sshd listener itself (never a wrapper)
    max_sessions: int = 64  # sshd's MaxSessions (stock: 10)
    max_startups: str = "200"  # sshd's MaxStartups (stock: "10:30:100")


# Fleets not yet stopped: stopped at interpreter exit so a crashed test run does not
# leave sshd processes behind. ``up`` takes its fleet out of here on purpose.
_LIVE: weakref.WeakSet[Fleet] = weakref.WeakSet()


@atexit.register
def _stop_live_fleets() -> None:
    for fleet in list(_LIVE):
        with contextlib.suppress(Exception):
            fleet.stop()


@record(frozen=False, eq=False, slots=False)  # identity semantics: fleets live in a WeakSet
class Fleet:
    """A set of SimHosts sharing one client key, known_hosts file and hosts.toml."""

    base_dir: Path
    hosts: list[SimHost]
    client_key: Path  # ed25519, no passphrase, mode 0600
    known_hosts: Path  # "[127.0.0.1]:PORT ssh-ed25519 AAAA..." per host
    hosts_toml: Path
    user: str = field(default_factory=getpass.getuser)

    @classmethod
    def start(
        cls,
        count: int,
        base_dir: Path,
        *,
        prefix: str = "h",
        extra_config: Sequence[str] = (),
        max_sessions: int = 64,
        max_startups: str = "200",
    ) -> Fleet:
        """Create and start ``count`` hosts named PREFIX1..PREFIXn under ``base_dir``.

        ``max_sessions``/``max_startups`` are sshd's limits; the defaults are high so
        parallel tests are not refused, :data:`STOCK_LIMITS` is what most hosts have.
        Set them here, not through ``extra_config``: sshd keeps the *last*
        ``MaxStartups`` line, so an extra one would lose to ours.

        Keys are generated concurrently and every sshd is launched before any is waited
        for, because starting them one by one is what makes big fleets slow.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        base_dir = Path(base_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(count)
        hosts: list[SimHost] = []
        for i, port in enumerate(ports, start=1):
            name = f"{prefix}{i}"
            hdir = base_dir / name
            host = SimHost(
                name=name,
                port=port,
                dir=hdir,
                home=hdir / "home",
                workdir=hdir / "work",
                host_key=hdir / _KEY_NAME,
                config=hdir / "sshd_config",
                log=hdir / "sshd.log",
                max_sessions=max_sessions,
                max_startups=max_startups,
            )
            for d in (host.home, host.workdir):
                d.mkdir(parents=True, exist_ok=True)
            hosts.append(host)

        client_key = base_dir / "client_key"
        _keygen([(client_key, "meshrun-test-client")] + [(h.host_key, h.name) for h in hosts])
        client_key.chmod(0o600)
        authorized_keys = base_dir / "authorized_keys"
        authorized_keys.write_bytes(_pub(client_key).read_bytes())
        for h in hosts:
            _write_config(h, authorized_keys, extra_config)

        fleet = cls(
            base_dir=base_dir,
            hosts=hosts,
            client_key=client_key,
            known_hosts=base_dir / "known_hosts",
            hosts_toml=base_dir / "hosts.toml",
        )
        _LIVE.add(fleet)
        try:
            _ensure_privsep_dir()
            for h in hosts:
                _spawn(h)
            fleet._wait_up(hosts, retry_ports=True, authorized_keys=authorized_keys)
            fleet.write_known_hosts()
            fleet.write_hosts_toml(fleet.hosts_toml)
        except BaseException:
            fleet.stop()
            raise
        return fleet

    # -- lookup -----------------------------------------------------------------------

    def host(self, name: str) -> SimHost:
        """The host called ``name``; KeyError lists the valid names (typos are common)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in fleet (have: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        """Host names in start order."""
        return [h.name for h in self.hosts]

    def ssh_argv(self, name: str, command: str, *, connect_timeout_s: float = 5) -> list[str]:
        """Argv for the real OpenSSH client, strict about host keys, ignoring ~/.ssh."""
        h = self.host(name)
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            # The value is a whitespace-separated list: quote paths with spaces.
            f"UserKnownHostsFile={_cfg_quote(str(self.known_hosts))}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"ConnectTimeout={max(1, round(connect_timeout_s))}",
            # The default post-quantum kex costs ~80 ms of client CPU per connection.
            "-o",
            "KexAlgorithms=curve25519-sha256",
            "-p",
            str(h.port),
            f"{self.user}@{LOOPBACK}",
            command,
        ]

    # -- faults -----------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL the listener and every session under it: the host "dies".

        The whole tree is frozen first so nothing can fork (or be reparented away from
        the tree) between listing the processes and killing them.
        """
        _kill_host(self.host(name))

    def pause(self, name: str) -> None:
        """SIGSTOP the listener and its sessions: connects complete, no banner comes."""
        h = self.host(name)
        if _listener_alive(h):
            _freeze_tree(h.pid)

    def resume(self, name: str) -> None:
        """SIGCONT everything pause() stopped."""
        import psutil

        h = self.host(name)
        if not _listener_alive(h):
            return
        try:
            root = psutil.Process(h.pid)
            procs = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()

    def restart(self, name: str, *, new_host_key: bool = False) -> None:
        """Kill and start the host again on the same port.

        ``new_host_key`` regenerates its key without touching known_hosts, so clients
        see a changed host key, as after a reinstall.
        """
        h = self.host(name)
        _kill_host(h)
        if new_host_key:
            _keygen([(h.host_key, h.name)])
        _ensure_privsep_dir()
        _spawn(h)
        self._wait_up([h], retry_ports=False)
        _LIVE.add(self)

    # -- inspection -------------------------------------------------------------------

    def descendants(self, name: str) -> list[psutil.Process]:
        """Live (non-zombie) processes under the listener: its pre-auth and sessions."""
        return _live_descendants(self.host(name))

    def wait_no_sessions(self, name: str, timeout_s: float = 10.0) -> list[str]:
        """Poll until the listener has no live descendants; what is left at timeout.

        Polls because exited processes here can take over a second to be reaped.
        Returns "pid cmdline" strings, so an empty list means clean.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.descendants(name)
            if not left or time.monotonic() >= deadline:
                return [_describe(p) for p in left]
            time.sleep(0.05)

    # -- teardown ---------------------------------------------------------------------

    def stop(self) -> None:
        """Kill every host's process tree; safe to call any number of times."""
        errors: list[BaseException] = []
        for h in self.hosts:
            try:
                _kill_host(h)
            except Exception as e:  # keep going: one stuck host must not leak the rest
                errors.append(e)
        _LIVE.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- files ------------------------------------------------------------------------

    def write_known_hosts(self, path: Path | None = None) -> Path:
        """Write a known_hosts line per host (bracketed, since the ports are not 22)."""
        path = self.known_hosts if path is None else path
        lines = []
        for h in self.hosts:
            keytype, blob = _pub(h.host_key).read_text().split()[:2]
            lines.append(f"[{LOOPBACK}]:{h.port} {keytype} {blob}\n")
        path.write_text("".join(lines))
        return path

    def write_hosts_toml(
        self,
        path: Path,
        *,
        names: Sequence[str] | None = None,
        defaults: Mapping[str, hostsfile.Value] | None = None,
        extra: Mapping[str, Mapping[str, hostsfile.Value]] | None = None,
    ) -> Path:
        """Write a meshrun inventory for (a subset of) the fleet; returns ``path``.

        ``defaults`` adds or replaces keys of ``[defaults]`` (``{"slots": 4}``), ``extra``
        the keys of a host by its name (``{"h1": {"labels": ["gpu"]}}``).
        """
        hosts = self.hosts if names is None else [self.host(n) for n in names]
        login: dict[str, hostsfile.Value] = {
            "user": self.user,
            "identity": self.client_key,
            "known_hosts": self.known_hosts,
        }
        entries: list[dict[str, hostsfile.Value]] = [
            {
                "name": h.name,
                "address": LOOPBACK,
                "port": h.port,
                "workdir": h.workdir,
                **(extra or {}).get(h.name, {}),
            }
            for h in hosts
        ]
        return hostsfile.write_hosts(path, entries, defaults={**login, **(defaults or {})})

    # -- internals --------------------------------------------------------------------

    def _wait_up(
        self,
        hosts: Sequence[SimHost],
        *,
        retry_ports: bool,
        authorized_keys: Path | None = None,
    ) -> None:
        """Wait for every host's SSH banner, concurrently; RuntimeError with log tails."""
        deadline = time.monotonic() + START_TIMEOUT_S
        errors: list[str] = []
        workers = max(1, min(32, len(hosts)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(_wait_one, h, deadline, retry_ports, authorized_keys) for h in hosts
            ]
            for fut in futures:
                err = fut.result()
                if err is not None:
                    errors.append(err)
        if errors:
            raise RuntimeError("sshd did not come up:\n" + "\n".join(errors))


# -- process handling -------------------------------------------------------------------


def _listener_alive(h: SimHost) -> bool:
    """Whether h.pid is still our listener (a child we have not reaped, or our sshd)."""
    if h.pid <= 0:
        return False
    if h.proc is not None:
        return h.proc.poll() is None
    return _is_our_sshd(h.pid, h.config)


def _is_our_sshd(pid: int, config: Path) -> bool:
    """Guard against pid reuse: the pid must be a live sshd started with our config."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        name: str = p.name()
        # sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ..."
        cmdline = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return name == "sshd" and f" -f {config}" in f" {cmdline} "


def _live_descendants(h: SimHost) -> list[psutil.Process]:
    import psutil

    if not _listener_alive(h):
        return []
    try:
        kids: list[psutil.Process] = psutil.Process(h.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    live = []
    for c in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if c.status() != psutil.STATUS_ZOMBIE:
                live.append(c)
    return live


def _describe(p: psutil.Process) -> str:
    import psutil

    try:
        return f"{p.pid} {' '.join(p.cmdline()) or p.name()}"
    except psutil.Error:
        return f"{p.pid} (exited)"


def _freeze_tree(pid: int, timeout_s: float = 3.0) -> list[psutil.Process]:
    """SIGSTOP ``pid`` and all its descendants until the tree is stable; return them.

    A running process can fork between our listing and our signal, so keep listing and
    stopping until a scan finds nothing new and everything is actually stopped.
    """
    import psutil

    quiet = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE}
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, psutil.Process] = {}
    pending = [root]
    deadline = time.monotonic() + timeout_s
    while True:
        for p in pending:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
            seen[p.pid] = p
        try:
            pending = [c for c in root.children(recursive=True) if c.pid not in seen]
        except psutil.NoSuchProcess:
            pending = []
        if pending:
            continue
        settled = True
        for p in seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                settled = settled and p.status() in quiet
        if settled or time.monotonic() >= deadline:
            return list(seen.values())
        time.sleep(0.002)


def _kill_tree(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Freeze then SIGKILL the tree; return once the listener's socket is closed."""
    import psutil

    procs = _freeze_tree(pid)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    if proc is not None:
        proc.wait(timeout=10)  # our child: reaping it proves its fds are closed
        return
    # Not our child (adopted from fleet.json): a zombie has already closed its fds.
    deadline = time.monotonic() + 10
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        while root.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)


def _kill_host(h: SimHost) -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:  # teardown must not leave sshd running where psutil is missing
        from meshrun.testing.procfs import kill_tree, listener_alive

        if listener_alive(h):
            kill_tree(h.pid)
        if h.proc is not None:
            h.proc.poll()
        return
    if _listener_alive(h):
        _kill_tree(h.pid, h.proc)
    elif h.proc is not None:
        h.proc.poll()  # reap an sshd that died on its own


def _spawn(h: SimHost) -> None:
    """Launch sshd for ``h`` in its own session, stderr appended to its log."""
    with h.log.open("ab") as log:
        h.proc = subprocess.Popen(
            _sshd_argv(h),
            stdin=subprocess.DEVNULL,
            # Never inherit our stdout: a detached sshd holding a caller's pipe open
            # would make `$(fleet up)` hang forever.
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    h.pid = h.proc.pid


def _sshd_argv(h: SimHost) -> list[str]:
    """sshd in the foreground; under its own UTS namespace when we can, for `hostname`.

    ``unshare`` (no --fork) and ``sh`` both exec, so the pid stays the sshd listener.
    """
    sshd = [SSHD, "-D", "-e", "-f", str(h.config)]
    if not _can_unshare_uts():
        return sshd
    script = f"hostname {shlex.quote(h.name)} 2>/dev/null; exec {shlex.join(sshd)}"
    return ["unshare", "--uts", "sh", "-c", script]


@cache
def _can_unshare_uts() -> bool:
    """Probe once (a few ms) whether we may set a hostname in a new UTS namespace."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("hostname"):
        return False
    try:
        r = subprocess.run(
            ["unshare", "--uts", "hostname", "meshrun-probe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _ensure_privsep_dir() -> None:
    """sshd run as root refuses to start without /run/sshd (normally made by systemd)."""
    privsep = Path("/run/sshd")
    if os.geteuid() == 0 and not privsep.is_dir():
        privsep.mkdir(mode=0o755, parents=True, exist_ok=True)
        privsep.chmod(0o755)


def _wait_one(
    h: SimHost, deadline: float, retry_ports: bool, authorized_keys: Path | None
) -> str | None:
    """Wait for one host's banner; at start, move to a new port if ours was taken."""
    attempts = 3 if retry_ports and authorized_keys is not None else 1
    while True:
        err = _await_banner(h, deadline)
        if err is None:
            return None
        attempts -= 1
        if attempts > 0 and "Address already in use" in _tail(h.log):
            assert authorized_keys is not None
            h.port = _free_ports(1)[0]
            config = h.config.read_text()
            _write_config(h, authorized_keys, _extra_from(config))
            _spawn(h)
            continue
        return f"--- {h.name} (port {h.port}): {err}; log {h.log}:\n{_tail(h.log)}"


def _await_banner(h: SimHost, deadline: float) -> str | None:
    delay = 0.005
    while True:
        if h.proc is not None and h.proc.poll() is not None:
            return f"sshd exited with status {h.proc.returncode}"
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no SSH-2.0 banner within {START_TIMEOUT_S:g} s"
        if _has_banner(h.port, timeout_s=min(1.0, max(0.05, left))):
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _has_banner(port: int, timeout_s: float) -> bool:
    """Connect and read the identification line: a listening socket alone is not enough."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as s:
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"SSH-2.0-")


# -- files ------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports: all sockets held open until all are picked."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _keygen(keys: Sequence[tuple[Path, str]]) -> None:
    """Generate ed25519 keys concurrently (one ssh-keygen each, no passphrase)."""
    procs: list[tuple[Path, subprocess.Popen[bytes]]] = []
    try:
        for key, comment in keys:
            key.unlink(missing_ok=True)  # else ssh-keygen asks "Overwrite (y/n)?"
            _pub(key).unlink(missing_ok=True)
            cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
            procs.append(
                (
                    key,
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
            )
    finally:
        failures = []
        for key, p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                failures.append(f"{key}: {err.decode(errors='replace').strip()}")
    if failures:
        raise RuntimeError("ssh-keygen failed:\n" + "\n".join(failures))


_EXTRA_BEGIN = "# --- extra_config (first value wins in sshd_config) ---"
_EXTRA_END = "# --- end extra_config ---"
_MATCH_BEGIN = "# --- extra_config Match blocks ---"


def _write_config(h: SimHost, authorized_keys: Path, extra: Sequence[str]) -> None:
    """Write the host's sshd_config.

    sshd keeps the *first* value of most keywords, so extra lines go before our
    defaults and can override them; ``Match`` blocks must come last, so they do.
    ``MaxStartups`` is an exception (the last value wins): it comes from ``h``.
    """
    lines = [line.rstrip("\n") for line in extra]
    split = next((i for i, x in enumerate(lines) if x.strip().lower().startswith("match ")), None)
    head, tail = (lines, []) if split is None else (lines[:split], lines[split:])
    env = f"HOME={h.home}", f"MESHRUN_TEST_HOST={h.name}"
    text = [
        f"# meshrun simulated host {h.name}",
        _EXTRA_BEGIN,
        *head,
        _EXTRA_END,
        f"Port {h.port}",
        f"ListenAddress {LOOPBACK}:{h.port}",
        "AddressFamily inet",
        f"HostKey {_cfg_quote(str(h.host_key))}",
        f"PidFile {_cfg_quote(str(h.dir / 'sshd.pid'))}",
        f"AuthorizedKeysFile {_cfg_quote(str(authorized_keys))}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        f"MaxSessions {h.max_sessions}",
        f"MaxStartups {h.max_startups}",
        "LogLevel VERBOSE",
        "PrintMotd no",
        "PrintLastLog no",
        # A per-host HOME keeps bash from sourcing root's ~/.bashrc (pyenv: slow).
        f"SetEnv {' '.join(_cfg_quote(e) for e in env)}",
        "Subsystem sftp internal-sftp",
    ]
    if tail:
        text += [_MATCH_BEGIN, *tail]
    h.config.write_text("\n".join(text) + "\n")


def _extra_from(config: str) -> list[str]:
    """Recover the extra_config lines from a config we wrote (for a port retry)."""
    lines = config.splitlines()
    head = lines[lines.index(_EXTRA_BEGIN) + 1 : lines.index(_EXTRA_END)]
    tail = lines[lines.index(_MATCH_BEGIN) + 1 :] if _MATCH_BEGIN in lines else []
    return head + tail


def _cfg_quote(value: str) -> str:
    """Quote an sshd_config argument only when it needs it (spaces, quotes, '#')."""
    if value and not any(c.isspace() or c in "\"'#\\" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- command line -----------------------------------------------------------------------


def _save_state(fleet: Fleet) -> Path:
    state = {
        "version": 1,
        "base_dir": str(fleet.base_dir),
        "user": fleet.user,
        "client_key": str(fleet.client_key),
        "known_hosts": str(fleet.known_hosts),
        "hosts_toml": str(fleet.hosts_toml),
        "hosts": [
            {
                "name": h.name,
                "port": h.port,
                "pid": h.pid,
                "dir": str(h.dir),
                "config": str(h.config),
                "log": str(h.log),
            }
            for h in fleet.hosts
        ],
    }
    path = fleet.base_dir / STATE_FILE
    path.write_text(json.dumps(state, indent=2) + "\n")
    return path


def _load_state(base_dir: Path) -> Fleet | None:
    """Adopt a fleet started by ``up`` (processes are not our children any more)."""
    path = base_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    hosts = []
    for rec in state["hosts"]:
        hdir = Path(rec["dir"])
        hosts.append(
            SimHost(
                name=rec["name"],
                port=int(rec["port"]),
                dir=hdir,
                home=hdir / "home",
                workdir=hdir / "work",
                host_key=hdir / _KEY_NAME,
                config=Path(rec["config"]),
                log=Path(rec["log"]),
                proc=None,
                pid=int(rec["pid"]),
            )
        )
    return Fleet(
        base_dir=Path(state["base_dir"]),
        hosts=hosts,
        client_key=Path(state["client_key"]),
        known_hosts=Path(state["known_hosts"]),
        hosts_toml=Path(state["hosts_toml"]),
        user=state["user"],
    )


def _cmd_up(args: argparse.Namespace) -> int:
    base_dir = Path(args.dir).resolve()
    old = _load_state(base_dir)
    if old is not None and any(_listener_alive(h) for h in old.hosts):
        print(f"a fleet is already running in {base_dir}; run 'down' first", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    fleet = Fleet.start(args.count, base_dir, prefix=args.prefix)
    _LIVE.discard(fleet)  # this fleet is meant to outlive us
    _save_state(fleet)
    elapsed = time.monotonic() - t0
    print(fleet.hosts_toml)
    first = fleet.hosts[0].name if fleet.hosts else "h1"
    print(
        f"# {len(fleet.hosts)} hosts up in {elapsed:.2f}s; try: "
        f"{shlex.join(fleet.ssh_argv(first, 'hostname'))}  "
        f"stop: python -m meshrun.testing.fleet down --dir {shlex.quote(str(base_dir))}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    base_dir = Path(args.dir).resolve()
    fleet = _load_state(base_dir)
    if fleet is None:
        print(f"no {STATE_FILE} in {base_dir}: nothing to stop", file=sys.stderr)
        return 0
    alive: Callable[[SimHost], bool] = _listener_alive
    kill: Callable[[int], None] = _kill_tree
    if importlib.util.find_spec("psutil") is None:  # no test extras: /proc does the same
        from meshrun.testing.procfs import kill_tree, listener_alive

        alive, kill = listener_alive, kill_tree
    for h in fleet.hosts:
        if alive(h):  # verified: still an sshd running our config
            kill(h.pid)
            print(f"{h.name}: killed sshd pid {h.pid}")
        else:
            print(f"{h.name}: not running")
    (base_dir / STATE_FILE).unlink(missing_ok=True)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import psutil

    base_dir = Path(args.dir).resolve()
    fleet = _load_state(base_dir)
    if fleet is None:
        print(f"no fleet in {base_dir}")
        return 1
    all_up = True
    for h in fleet.hosts:
        state = "down"
        if _listener_alive(h):
            stopped = psutil.Process(h.pid).status() == psutil.STATUS_STOPPED
            state = "paused" if stopped else "up"
        all_up = all_up and state == "up"
        sessions = len(_live_descendants(h))
        print(f"{h.name:<8} {LOOPBACK}:{h.port:<6} pid {h.pid:<8} {state:<7} {sessions} procs")
    print(fleet.hosts_toml)
    return 0 if all_up else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m meshrun.testing.fleet`` / ``scripts/fleet``."""
    parser = argparse.ArgumentParser(
        prog="fleet", description="A simulated fleet of real sshd hosts on 127.0.0.1."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start hosts that keep running after this command")
    up.add_argument("--count", "-n", type=int, default=4, help="number of hosts (default 4)")
    up.add_argument("--dir", required=True, type=Path, help="directory for keys, configs, logs")
    up.add_argument("--prefix", default="h", help="host name prefix (default h: h1, h2, ...)")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="kill the fleet recorded in DIR/fleet.json")
    down.add_argument("--dir", required=True, type=Path)
    down.set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="show each host's port, pid and state")
    status.add_argument("--dir", required=True, type=Path)
    status.set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fleet status | head` stays quiet
    sys.exit(main())

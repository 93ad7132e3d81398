"""``meshrun.fabric.Group``: Fabric's Group API on meshrun's connections.

A Fabric user keeps their Connections, their result handling and their
``GroupException`` handlers; what changes is what runs underneath:

- one meshrun SSH connector for the group, opened at the first call and kept across
  calls until :meth:`Group.close` (or the ``with`` block's end): host keys are checked
  against known_hosts on every hop (unknown or changed keys refused, never Fabric's
  AutoAddPolicy), handshakes are bounded, dead peers are noticed (ServerAlive*);
- at most ``parallel`` hosts are worked on at once (every host, up to 256, fitted to
  this process's descriptors and threads); connections stay open across calls only
  when the whole group fits at once, else each host's is closed when its part is done;
- every command runs inside meshrun's wrapper: a timeout, Ctrl-C, or a lost
  link kills its whole process group on the host.

Why not :func:`meshrun.run_fleet`: Fabric's results need each host's exception object
(not a line of text), the whole output (``run_fleet`` keeps a head and a tail) and
transfers with Fabric's path rules; this module drives the same connector and
connections directly, host by host, in a thread pool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import fabric
from fabric.exceptions import GroupException
from fabric.group import GroupResult

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.errors import ConnectError, HostKeyError
from meshrun.fabric.commands import run_command, run_options
from meshrun.fabric.settings import NotSupported, connector_settings, host_names, to_host
from meshrun.fabric.transfer import get_file, is_file_like, login_dir, put_file_like, put_path
from meshrun.transport.base import Connection, Connector

if TYPE_CHECKING:
    from meshrun.transport.ssh import SSHConnector

__all__ = ["Group"]

#: Hosts worked on at once when ``parallel`` is not given (meshrun exec's default).
DEFAULT_PARALLEL = 256

Work = Callable[[Connection, Any, Host, threading.Event], Any]

#: What meshrun's connect errors tell a CLI or hosts.toml user to do, said as a Group
#: user does it.
_FIXES = (
    ("run again with --accept-new-host-keys", "pass Group(..., accept_new_host_keys=True)"),
    ("fix `identity` in the inventory", "fix connect_kwargs['key_filename']"),
    ("point `identity` at", "point connect_kwargs['key_filename'] at"),
    ("raise --connect-timeout", "raise connect_timeout"),
)


def in_fabric_terms(exc: ConnectError) -> ConnectError:
    """``exc`` with its fix in the Group's terms; an unknown host key also says that
    Fabric's AutoAddPolicy is not followed."""
    fix = exc.fix
    if fix:
        for cli, group in _FIXES:
            fix = fix.replace(cli, group)
    if isinstance(exc, HostKeyError) and not exc.changed:
        fix = (fix + "; " if fix else "") + (
            "meshrun checks host keys against known_hosts whatever the Connection's "
            "missing-host-key policy (Fabric's default AutoAddPolicy would have logged in)"
        )
    exc.fix = fix
    return exc


class Group(fabric.group.Group):  # type: ignore[misc]  # fabric has no type hints
    """Fabric's ``Group`` (a list of ``fabric.Connection``) run by meshrun.

    ``Group("web1", "web2", user=..., port=..., config=..., connect_kwargs=...,
    gateway=...)`` builds the Connections as Fabric does; ``Group.from_connections``
    takes yours. ``run``/``put``/``get`` return Fabric's ``GroupResult`` (keyed by
    Connection, values ``fabric.runners.Result``/``fabric.transfer.Result``) or raise
    Fabric's ``GroupException`` holding it, with the failed hosts' exceptions as
    values. Settings meshrun cannot honour raise :class:`NotSupported` here, before
    any host is contacted.

    meshrun's own keywords: ``parallel`` (hosts at once; default every host, at most
    256) and ``accept_new_host_keys`` (OpenSSH's ``accept-new``: an unknown host's key
    is added to known_hosts; a changed key is refused whatever it says).
    """

    def __init__(
        self,
        *hosts: str,
        parallel: int | None = None,
        accept_new_host_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*hosts, **kwargs)
        self._meshrun_setup(parallel, accept_new_host_keys)

    @classmethod
    def from_connections(
        cls,
        connections: Iterable[Any],
        *,
        parallel: int | None = None,
        accept_new_host_keys: bool = False,
    ) -> Group:
        """A group of existing ``fabric.Connection`` objects (their settings read now)."""
        group = cls(parallel=parallel, accept_new_host_keys=accept_new_host_keys)
        group.extend(connections)
        group._translate()  # refuse what cannot be honoured now, not at the first call
        return group

    def _meshrun_setup(self, parallel: int | None, accept_new_host_keys: bool) -> None:
        if parallel is not None and parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        self._parallel_wanted = parallel
        self._accept_new = accept_new_host_keys
        self._lock = threading.Lock()
        self._connector: SSHConnector | None = None
        self._prepared: set[Host] = set()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers = 0
        self._keep = False
        self._starts: dict[str, str] = {}  # host name -> its login directory
        self._translate()

    # -- settings -----------------------------------------------------------------------

    def _translate(self) -> list[tuple[Any, Host]]:
        """Each distinct Connection (Fabric's results are keyed by host, user and
        port, so a repeated one runs once) with its Host."""
        # A dict, not `not in` a list: Connections hash by (host, user, port), and the
        # list's pairwise __eq__ cost 1.5 ms a call at 64 hosts (25 at 256).
        members = list(dict.fromkeys(self))
        names = host_names(members)
        pairs = [(cxn, to_host(cxn, name)) for cxn, name in zip(members, names, strict=True)]
        if members:
            connector_settings(members)
        return pairs

    # -- the connector and the pool -------------------------------------------------------

    def _ready(self, members: Sequence[tuple[Any, Host]]) -> Connector:
        """The group's connector (made at the first call) with ``members`` resolved, and
        a pool with room for them."""
        hosts = [host for _, host in members]
        with self._lock:
            if self._connector is None:
                from meshrun.transport.ssh import SSHConnector

                settings = connector_settings([cxn for cxn, _ in members])
                self._connector = SSHConnector(
                    connect_timeout_s=settings.connect_timeout_s,
                    accept_new_host_keys=self._accept_new,
                    ssh_config_path=settings.ssh_config_path,
                )
            fresh = [h for h in hosts if h not in self._prepared]
            if fresh:
                # ssh_config for every new host at once; a key that would need a
                # passphrase is refused here, before any host is contacted.
                self._connector.prepare(fresh)
                self._prepared.update(fresh)
            wanted = min(self._parallel_wanted or DEFAULT_PARALLEL, max(1, len(hosts)))
            fit, too_many = resources.fit_parallel(
                wanted,
                fds_each=resources.EXEC_FDS_PER_HOST,
                threads_each=resources.EXEC_THREADS_PER_HOST,
                what=f"a Group of {len(hosts)} hosts",
                option="Group(parallel=...)",
            )
            if too_many is not None:
                import logging

                logging.getLogger(__name__).warning("%s", too_many)
            # Connections stay open between calls only when every host fits at once.
            self._keep = fit >= len(hosts)
            if self._pool is None or self._workers != fit:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=fit, thread_name_prefix="meshrun-fabric"
                )
                self._workers = fit
            return self._connector

    def _one(
        self, work: Work, connector: Connector, cxn: Any, host: Host, cancel: threading.Event
    ) -> tuple[Any, bool]:
        """``work`` on one host: (its value, False) or (the exception it raised, True)."""
        try:
            with resources.shortage_raised(f"connecting to {host.name}"):
                conn = connector.connect(host)
            return work(conn, cxn, host, cancel), False
        except ConnectError as exc:
            return in_fabric_terms(exc), True
        except Exception as exc:
            return exc, True
        finally:
            if not self._keep:
                # Closing must not lose the host's result.
                with contextlib.suppress(Exception):
                    connector.release(host)

    def _each(self, work: Work, members: Sequence[tuple[Any, Host]] | None = None) -> Any:
        """``work`` on every distinct Connection at once (at most ``parallel``): Fabric's
        GroupResult, or its GroupException when any host raised. ``members``: the
        call's :meth:`_translate`, when the caller already has it (it reads every
        Connection's settings: 6 ms a call at 64 hosts)."""
        if members is None:
            members = self._translate()
        results = GroupResult()
        if not members:
            return results
        connector = self._ready(members)
        assert self._pool is not None
        cancel = threading.Event()
        futures = [
            (cxn, self._pool.submit(self._one, work, connector, cxn, host, cancel))
            for cxn, host in members
        ]
        try:
            concurrent.futures.wait([f for _, f in futures])
        except KeyboardInterrupt:
            # Stop every running command (its process group is killed on the host) and
            # what has not started; a second Ctrl-C closes every connection at once.
            cancel.set()
            for _, future in futures:
                future.cancel()
            try:
                concurrent.futures.wait([f for _, f in futures])
            except KeyboardInterrupt:
                connector.close()
            raise
        excepted = False
        for cxn, future in futures:
            value, failed = future.result()
            results[cxn] = value
            excepted = excepted or failed
        if excepted:
            raise GroupException(results)
        return results

    # -- Fabric's API ---------------------------------------------------------------------

    def run(self, command: str, **kwargs: Any) -> Any:
        """``Connection.run(command, **kwargs)`` on every host: see
        :mod:`meshrun.fabric.commands` for the options honoured and refused."""
        members = self._translate()
        options = {cxn: run_options(cxn, command, kwargs) for cxn, _ in members}
        if len({o.job for o in options.values()}) > 1:
            raise NotSupported(
                "the group's Connections have different config.run env or "
                "config.timeouts.command: one Group.run runs one command line",
                fix="give every Connection the same Config, or pass env=/timeout= to run()",
            )

        def work(conn: Connection, cxn: Any, host: Host, cancel: threading.Event) -> Any:
            return run_command(conn, cxn, options[cxn], cancel)

        return self._each(work, members)

    def sudo(self, command: str, **kwargs: Any) -> Any:
        raise NotSupported(
            "Group.sudo cannot be honoured by meshrun (it answers no password prompts)",
            fix="give the user passwordless sudo for the command and call "
            "run('sudo -n ...'), or log in as the user the command needs",
        )

    def put(self, local: Any, remote: str | None = None, preserve_mode: bool = True) -> Any:
        """``Connection.put`` on every host (a file-like ``local`` is read once)."""
        if not local:
            raise ValueError("Local path must not be empty!")
        if is_file_like(local):
            pointer = local.tell()
            try:
                local.seek(0)
                data = local.read()
            finally:
                local.seek(pointer)
            if isinstance(data, str):
                data = data.encode()

            def work_fo(conn: Connection, cxn: Any, host: Host, cancel: threading.Event) -> Any:
                return put_file_like(conn, cxn, self._start(conn), local, data, remote)

            return self._each(work_fo)
        path = str(local)

        def work(conn: Connection, cxn: Any, host: Host, cancel: threading.Event) -> Any:
            return put_path(conn, cxn, self._start(conn), path, remote, preserve_mode)

        return self._each(work)

    def get(self, remote: str, local: Any = "{host}/", preserve_mode: bool = True) -> Any:
        """``Connection.get`` on every host; ``local`` defaults to ``"{host}/"``, a
        directory per host, as Fabric's Group does."""
        if is_file_like(local):
            raise NotSupported(
                "Group.get into a file-like object (every host would write into it)",
                fix="pass a local path with {host} in it, e.g. '{host}/' (the default)",
            )

        def work(conn: Connection, cxn: Any, host: Host, cancel: threading.Event) -> Any:
            return get_file(conn, cxn, self._start(conn), remote, local, preserve_mode)

        return self._each(work)

    def _start(self, conn: Connection) -> str:
        name = conn.host.name
        start = self._starts.get(name)
        if start is None:
            start = self._starts[name] = login_dir(conn)
        return start

    def close(self) -> None:
        """Close every connection the group opened (and any the Connections hold)."""
        with self._lock:
            connector, self._connector = self._connector, None
            pool, self._pool = self._pool, None
            self._prepared.clear()
        if pool is not None:
            pool.shutdown(wait=True)
        if connector is not None:
            connector.close()
        super().close()

"""How meshrun reaches hosts: connectors (local, SSH) and the one interface they share.

:mod:`meshrun.transport.base` says what a connector and a connection offer (commands
and file transfer); :mod:`~meshrun.transport.local` and :mod:`~meshrun.transport.ssh`
implement it. This package is the only place that imports paramiko or catches its
errors: they become meshrun's own (:mod:`meshrun.errors`) at this boundary.
:func:`default_connector` picks the implementation, importing it (and paramiko) only
when a run needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshrun.config.inventory import Host
    from meshrun.transport.base import Connector


def default_connector(
    hosts: list[Host],
    *,
    connect_timeout_s: float | None = None,
    accept_new_host_keys: bool = False,
    remote: bool = False,
    server_alive_interval_s: float | None = None,
    server_alive_count_max: int | None = None,
) -> Connector:
    """The connector for ``hosts``: local for the embedded default, SSH otherwise
    (always SSH with ``remote``: hosts found later, by discovery, are remote).

    ``server_alive_interval_s``/``server_alive_count_max`` (OpenSSH's ServerAlive*:
    a host silent for interval × (count + 1) is given up) win over ssh_config's;
    unset there too, 5 s and 3. An interval of 0 turns detection off.

    SSH code (and paramiko) is imported only when a remote host is in the run. Raises
    InputError (before any host is contacted) for an ssh_config OpenSSH refuses or a
    passphrase-protected key that ssh-agent does not hold.
    """
    if not remote and all(h.local for h in hosts):
        from meshrun.transport.local import LocalConnector

        return LocalConnector()
    import os

    from meshrun.transport.ssh import SSHConnector

    connector = SSHConnector(
        connect_timeout_s=connect_timeout_s,
        accept_new_host_keys=accept_new_host_keys,
        server_alive_interval_s=server_alive_interval_s,
        server_alive_count_max=server_alive_count_max,
        # Like `ssh -F FILE`: only that file, not ~/.ssh/config nor /etc/ssh/ssh_config.
        ssh_config_path=os.environ.get("MESHRUN_SSH_CONFIG") or None,
    )
    # Resolve ssh_config for every host at once and refuse keys that would need a
    # prompt, before any host is contacted.
    connector.prepare(hosts)
    return connector


__all__ = ["default_connector"]

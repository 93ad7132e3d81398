"""rsync over OpenSSH's ssh, set up as meshrun would reach the host.

``rsync.ssh_command`` is meshrun's own OpenSSH command line for a host (``-F /dev/null``,
the host's key, port and user, StrictHostKeyChecking=yes against its known_hosts,
BatchMode, OpenSSH's default kex and cipher): the rsync a user would run, given the
same inventory. bench/pull pulls with it, bench/push pushes with it.
"""

from __future__ import annotations

import os
import shlex

import harness  # noqa: F401  (first: it puts this checkout's meshrun first on sys.path)

from meshrun.config.inventory import Host
from meshrun.transport import rsync
from meshrun.transport.ssh import SSHConnector


def new_connector() -> SSHConnector:
    """A connector that reads no ssh_config: the fleet's inventory says it all."""
    return SSHConnector(ssh_config_path="/nonexistent")


def remote_shell(host: Host, connector: SSHConnector | None = None) -> tuple[str, str]:
    """(rsync's ``-e`` argument, ``user@address``) for ``host``; nothing is connected."""
    connector = new_connector() if connector is None else connector
    ep = connector.endpoint(host)  # resolves the endpoint only: no connection
    ssh = rsync.ssh_command(
        port=ep.port,
        identities=[p for p in ep.identities if os.path.exists(p)],
        known_hosts=ep.known_hosts,
        connect_timeout_s=connector.connect_timeout_s,
    )
    return shlex.join(ssh), f"{ep.user}@{ep.address}"

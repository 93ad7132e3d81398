"""Zero-config agents on a LAN: ``meshrun agent`` announces, ``meshrun discover`` browses.

    record.py    the ``_meshrun._tcp`` record: Advert / Agent, strict TXT decoding (pure)
    net.py       which interfaces zeroconf speaks on (``--interface``)
    oneshot.py   a query from a port of our own, so unicast answers reach us
    announce.py  register / update / goodbye; ``run_agent`` (the ``agent`` command)
    browse.py    ``Browser`` (live: on_added / on_updated / on_removed), ``discover``
    hosts.py     Agent -> inventory Host, merging with ``--hosts``, writing hosts.toml

Discovery only proposes hosts: each carries the host-key fingerprint it advertised, and
the SSH transport refuses a host that presents another key (a spoof) whatever the
options, and a key not in known_hosts unless ``--accept-new-host-keys``.

zeroconf is imported only when ``announce`` or ``browse`` is: the names below load on
first use, so importing this package (or ``meshrun``) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshrun.discovery.hosts import (
    agent_to_host,
    discovery_inventory,
    hosts_toml,
    merge_hosts,
    same_host,
    write_hosts_toml,
)
from meshrun.discovery.net import resolve_interfaces
from meshrun.discovery.record import SERVICE_TYPE, Advert, Agent, Rejected, parse_agent

if TYPE_CHECKING:
    from meshrun.discovery.announce import AgentOptions, Announcer, run_agent
    from meshrun.discovery.browse import Browser, discover, resolve_with_discovery, watch

_LAZY = {
    "AgentOptions": "meshrun.discovery.announce",
    "Announcer": "meshrun.discovery.announce",
    "run_agent": "meshrun.discovery.announce",
    "Browser": "meshrun.discovery.browse",
    "discover": "meshrun.discovery.browse",
    "resolve_with_discovery": "meshrun.discovery.browse",
    "watch": "meshrun.discovery.browse",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshrun.discovery' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "SERVICE_TYPE",
    "Advert",
    "Agent",
    "AgentOptions",
    "Announcer",
    "Browser",
    "Rejected",
    "agent_to_host",
    "discover",
    "discovery_inventory",
    "hosts_toml",
    "merge_hosts",
    "parse_agent",
    "resolve_interfaces",
    "resolve_with_discovery",
    "run_agent",
    "same_host",
    "watch",
    "write_hosts_toml",
]

"""Agents found on the LAN -> inventory Hosts, and -> a hosts.toml (``--write``).

Pure apart from reading and writing the inventory file.

Where a discovered host's settings come from:

- name, address, SSH port, slots, labels: the agent's record;
- user: ``--user``, else ``[defaults] user`` of ``--hosts``, else the user the agent
  advertises (whom we log in as is the coordinator's decision; the LAN only suggests);
- identity, known_hosts, weight: ``--identity``/``--known-hosts``, else ``[defaults]``;
- workdir: the agent's (it knows its disks), else ``[defaults] workdir``;
- the advertised host-key fingerprint, which the SSH transport holds the host to.

The proxy jump of ``[defaults]`` is not applied: an agent is on this machine's LAN.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace

from meshrun.config.hostsfile import HostEntry, Value, WriteError, render_hosts, write_atomic
from meshrun.config.inventory import (
    Host,
    HostDefaults,
    Inventory,
    parse_inline,
    read_inventory,
)
from meshrun.discovery.record import Agent
from meshrun.errors import InputError

__all__ = [
    "agent_to_host",
    "discovery_inventory",
    "hosts_toml",
    "merge_hosts",
    "same_host",
    "write_hosts_toml",
]

log = logging.getLogger(__name__)


def agent_to_host(agent: Agent, defaults: HostDefaults | None = None) -> Host:
    """The Host meshrun connects to for ``agent``, carrying its advertised fingerprint."""
    defaults = defaults or HostDefaults()
    workdir = agent.workdir or defaults.workdir
    host = Host(
        name=agent.name,
        address=agent.address,
        port=agent.port,
        user=defaults.user or agent.user,
        identity=defaults.identity,
        known_hosts=defaults.known_hosts,
        slots=agent.slots,
        weight=defaults.weight or 1.0,
        labels=frozenset(agent.labels),
        advertised_fingerprint=agent.host_key_fingerprint,
        advertised_key_type=agent.host_key_type,
    )
    if workdir is None:
        return host
    return replace(host, workdir=workdir.replace("{name}", agent.name))


def merge_hosts(
    hosts: Sequence[Host], agents: Sequence[Agent], defaults: HostDefaults | None = None
) -> list[Host]:
    """``hosts`` then the agents, skipping an agent that ``hosts`` already names.

    An agent is the same as a listed host when it has the same name, or the same
    address and port: the inventory entry wins (it was written on purpose).
    """
    merged = list(hosts)
    for agent in agents:
        if any(same_host(agent, host) for host in merged):
            log.info("agent %r is already in --hosts; using that entry", agent.name)
            continue
        merged.append(agent_to_host(agent, defaults))
    return merged


def same_host(agent: Agent, host: Host) -> bool:
    """Whether ``agent`` is ``host``: the same name, or the same address and port."""
    return agent.name == host.name or (agent.address, agent.port) == (
        host.address,
        host.port or 22,
    )


def discovery_inventory(
    spec: str | None,
    *,
    user: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
) -> Inventory:
    """``--hosts`` read for ``--discover``: its hosts (maybe none) and its defaults,
    with ``--user``/``--identity``/``--known-hosts`` over ``[defaults]``.

    No SPEC means agents only (not this machine). A file may hold ``[defaults]`` alone.
    """
    if spec is None:
        inventory = Inventory((), HostDefaults())
    elif os.path.isfile(spec) or spec.endswith(".toml"):
        inventory = read_inventory(spec, hosts_required=False)
    else:
        inventory = Inventory(tuple(parse_inline(spec)), HostDefaults())
    defaults = inventory.defaults
    defaults = replace(
        defaults,
        user=user or defaults.user,
        identity=identity or defaults.identity,
        known_hosts=known_hosts or defaults.known_hosts,
    )
    return Inventory(inventory.hosts, defaults)


# -- hosts.toml ---------------------------------------------------------------------


def hosts_toml(agents: Sequence[Agent], *, comment: str | None = None) -> str:
    """A hosts.toml listing ``agents``, which ``load_inventory`` (and ``--hosts``) reads.

    Each host's advertised key and platform are written as a comment: meshrun checks
    keys against known_hosts when it connects, not against this file.
    """
    header = _HEADER + (f"\n{comment}" if comment else "")
    return render_hosts([_entry(agent) for agent in agents], comment=header)


_HEADER = (
    "Agents found on the LAN by `meshrun discover`.\n"
    "Host keys are checked against known_hosts when meshrun connects;\n"
    "the fingerprint each agent advertised is noted for comparison."
)


def _entry(agent: Agent) -> HostEntry:
    keys: dict[str, Value] = {"name": agent.name, "address": agent.address, "port": agent.port}
    if agent.user is not None:
        keys["user"] = agent.user
    keys["slots"] = agent.slots
    keys["labels"] = agent.labels
    if agent.workdir is not None:
        keys["workdir"] = agent.workdir
    note = (
        f"advertised host key {agent.host_key_type} {agent.host_key_fingerprint}; "
        f"{agent.cpus} CPUs, {agent.os}/{agent.arch}"
    )
    return HostEntry(keys, note)


def write_hosts_toml(
    path: str | os.PathLike[str], agents: Sequence[Agent], *, comment: str | None = None
) -> None:
    """Write :func:`hosts_toml` to ``path`` atomically (a reader never sees half).

    An unwritable path is an InputError naming ``--write``.
    """
    target = os.fspath(path)
    try:
        write_atomic(target, hosts_toml(agents, comment=comment))
    except WriteError as exc:
        if exc.placed:
            raise InputError(
                f"--write {target}: cannot write it ({exc.reason})",
                fix="choose another path (not a directory), writable by you",
            ) from None
        raise InputError(
            f"--write {target}: cannot write there ({exc.reason})",
            fix="choose a path in an existing, writable directory",
        ) from None

"""Where zeroconf speaks: the ``--interface`` values, checked against this machine.

IPv4 only for now. The default is every non-loopback IPv4 address (the LAN, not this
machine alone); tests always pass ``127.0.0.1`` so they never reach a real network.

An address whose interface cannot send to the mDNS group (the interface is down) is an
error when asked for by name, and left out of the default: zeroconf would otherwise
only log each failed send, and the agent would "announce" to no one. The check is the
kernel's route lookup, not the MULTICAST flag: Linux's ``lo`` never has that flag and
carries multicast all the same.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence

from meshrun.errors import DiscoveryError, InputError
from meshrun.records import record

__all__ = [
    "MDNS_GROUP",
    "MDNS_PORT",
    "LocalAddress",
    "local_addresses",
    "multicast_error",
    "networks_of",
    "resolve_interfaces",
]

log = logging.getLogger(__name__)

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353


@record
class LocalAddress:
    """One IPv4 address of this machine and the interface that has it."""

    address: str
    prefix: int  # network prefix length
    interface: str  # e.g. eth0

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.prefix}", strict=False)


def local_addresses() -> list[LocalAddress]:
    """Every IPv4 address of this machine's interfaces, loopback included."""
    import ifaddr  # zeroconf's own dependency; only discovery needs it

    found: list[LocalAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                found.append(LocalAddress(ip.ip, ip.network_prefix, adapter.nice_name))
    return found


def multicast_error(address: str) -> str | None:
    """Why this machine cannot send to the mDNS group from ``address``, or None.

    Connecting a UDP socket looks the route up without sending anything; it fails
    (network unreachable) when the interface is down.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
            probe.connect((MDNS_GROUP, MDNS_PORT))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def resolve_interfaces(
    requested: Sequence[str] | None, *, option: str = "--interface"
) -> list[str]:
    """The IPv4 addresses to bind zeroconf to.

    Each requested item is an address of this machine (``192.168.1.20``,
    ``127.0.0.1``) or an interface name (``eth0``). Nothing requested: every
    non-loopback address that can multicast. Raises InputError naming ``option`` and
    the choices, or DiscoveryError when a requested interface cannot multicast or the
    machine has no usable non-loopback IPv4 address at all.
    """
    addresses = local_addresses()
    if not requested:
        lan = [a for a in addresses if not ipaddress.IPv4Address(a.address).is_loopback]
        if not lan:
            raise DiscoveryError(
                "this machine has no non-loopback IPv4 address to announce or browse on",
                fix=f"connect it to the LAN, or pass {option} 127.0.0.1 to stay on this machine",
            )
        unusable = {a.address: reason for a in lan if (reason := multicast_error(a.address))}
        for a in lan:
            if a.address in unusable:
                log.info("leaving out %s (%s): %s", a.address, a.interface, unusable[a.address])
        chosen = [a.address for a in lan if a.address not in unusable]
        if not chosen:
            down = ", ".join(f"{a.address} ({a.interface})" for a in lan)
            raise DiscoveryError(
                f"no interface of this machine can send mDNS multicast: {down}: "
                f"{next(iter(unusable.values()))}",
                fix="bring the LAN interface up (ip link set IFACE up), "
                f"or pass {option} 127.0.0.1 to stay on this machine",
            )
        return _unique(chosen)
    chosen = []
    for item in requested:
        text = item.strip()
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version == 6:
            raise InputError(
                f"{option} {item}: IPv6 is not supported yet",
                fix=f"pass an IPv4 address of this machine: {_choices(addresses)}",
            )
        if parsed is not None:
            if not any(a.address == str(parsed) for a in addresses):
                raise InputError(
                    f"{option} {item}: no interface of this machine has that address",
                    fix=f"choose from {_choices(addresses)}",
                )
            chosen.append(str(parsed))
            continue
        named = [a.address for a in addresses if a.interface == text]
        if not named:
            raise InputError(
                f"{option} {item}: not an IPv4 address or interface name of this machine",
                fix=f"choose from {_choices(addresses)}",
            )
        chosen.extend(named)
    by_address = {a.address: a for a in addresses}
    for address in _unique(chosen):
        if reason := multicast_error(address):
            interface = by_address[address].interface
            others = [
                a for a in addresses if a.address != address and not multicast_error(a.address)
            ]
            instead = f", or choose another {option}: {_choices(others)}" if others else ""
            raise DiscoveryError(
                f"{option} {address}: cannot send mDNS multicast on {interface}: {reason}",
                fix=f"bring {interface} up (ip link set {interface} up){instead}",
            )
    return _unique(chosen)


def networks_of(addresses: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """The networks the given local addresses are on (to prefer agents' addresses there)."""
    by_address = {a.address: a for a in local_addresses()}
    return [by_address[a].network for a in addresses if a in by_address]


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _choices(addresses: Sequence[LocalAddress]) -> str:
    if not addresses:
        return "(this machine has no IPv4 address)"
    return ", ".join(f"{a.address} ({a.interface})" for a in addresses)

"""One-shot mDNS queries (RFC 6762 §5.1): asked from a port of our own, answered there.

Every zeroconf instance binds UDP port 5353 and shares it (SO_REUSEPORT) with the other
mDNS sockets of the machine: a local ``meshrun agent``, a browser, avahi. Multicast
reaches them all, but the kernel hands a *unicast* datagram for that port to one of
them only (RFC 6762 §15.1), picked by a hash that differs per machine (per boot, per
network namespace). zeroconf asks for unicast answers exactly when they matter: a
browser's first query, and an agent's name probes; and a responder that multicast its
records recently answers those by unicast only. When another socket gets the answer, a
browser learns of the agents from its next query, a second or more later, and an agent
misses that its name is taken. Which one happens on a given machine is luck.

A query sent from a port of our own is answered by unicast to that port (§6.7), which
no other socket has. :func:`ask` sends one for ``_meshrun._tcp`` on each address and
feeds the answers into a zeroconf instance's cache as if they had been multicast, so
its browsers and name probes see them; zeroconf's own queries go on as usual.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

# DNSIncoming, DNSOutgoing and DNSQuestion are exported by zeroconf's top level (kept
# there for compatibility) but are not in its __all__.
from zeroconf import (  # type: ignore[attr-defined]
    DNSIncoming,
    DNSOutgoing,
    DNSQuestion,
    Zeroconf,
)

from meshrun.discovery.net import MDNS_GROUP, MDNS_PORT
from meshrun.discovery.record import SERVICE_TYPE

__all__ = ["OneShot", "ask"]

log = logging.getLogger(__name__)

#: How long the query's sockets take answers; they come within a round trip.
WINDOW_S = 5.0
_MAX_PACKET_BYTES = 9000  # the largest mDNS packet is 9000 bytes (RFC 6762 §17)
_TYPE_PTR, _CLASS_IN = 12, 1
_LOOP_TIMEOUT_S = 5.0

_T = TypeVar("_T")


class OneShot:
    """The sockets of one query, open for answers until ``close`` or ``WINDOW_S``."""

    def __init__(self, zc: Zeroconf, transports: list[asyncio.DatagramTransport]) -> None:
        self._zc = zc
        self._transports = transports

    def close(self) -> None:
        """Close the sockets (before the zeroconf instance is closed)."""
        transports, self._transports = self._transports, []
        if transports:
            _on_loop(self._zc, _close(transports))


def ask(zc: Zeroconf, addresses: Sequence[str]) -> OneShot:
    """Ask for the ``_meshrun._tcp`` agents from a port of our own on each address.

    Call from any thread but zeroconf's. The answers go into ``zc``'s cache. A failure
    to send is only a warning: zeroconf's own queries still go out.
    """
    return OneShot(zc, _on_loop(zc, _ask(zc, addresses)))


def _on_loop(zc: Zeroconf, coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on zeroconf's event loop (its thread) and wait for it."""
    assert zc.loop is not None
    return asyncio.run_coroutine_threadsafe(coroutine, zc.loop).result(_LOOP_TIMEOUT_S)


async def _ask(zc: Zeroconf, addresses: Sequence[str]) -> list[asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    query_id = 1 + secrets.randbelow(0xFFFF)
    # A standard query (flags 0); not "multicast", which would zero the ID on the wire.
    out = DNSOutgoing(0, False, query_id)
    out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
    packets = out.packets()
    transports: list[asyncio.DatagramTransport] = []
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, 0))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            for packet in packets:
                sock.sendto(packet, (MDNS_GROUP, MDNS_PORT))
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Answers(zc, query_id), sock=sock
            )
        except OSError as exc:
            sock.close()
            log.warning("could not send an mDNS query from %s: %s", address, exc)
            continue
        transports.append(transport)
    loop.call_later(WINDOW_S, _close_now, transports)
    return transports


class _Answers(asyncio.DatagramProtocol):
    """Unicast answers to one query, fed to zeroconf as received records."""

    def __init__(self, zc: Zeroconf, query_id: int) -> None:
        self._zc = zc
        self._query_id = query_id

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # Answers come from port 5353 (RFC 6762 §6) with our query's ID (§6.7).
        if addr[1] != MDNS_PORT or len(data) > _MAX_PACKET_BYTES:
            return
        try:
            msg = DNSIncoming(data, (str(addr[0]), addr[1]))
            if msg.valid and msg.is_response() and msg.id == self._query_id:
                self._zc.record_manager.async_updates_from_response(msg)
        except Exception:  # a hostile packet must not disturb zeroconf's loop
            log.debug("ignoring an unreadable mDNS answer from %s", addr[0], exc_info=True)


def _close_now(transports: Sequence[asyncio.DatagramTransport]) -> None:
    for transport in transports:
        transport.close()


async def _close(transports: Sequence[asyncio.DatagramTransport]) -> None:
    _close_now(transports)
    await asyncio.sleep(0)  # the sockets close in connection_lost, on the next turn

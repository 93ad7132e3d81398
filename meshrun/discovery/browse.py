"""Find ``meshrun agent`` s on the LAN: a live :class:`Browser`, or one :func:`discover`.

Discovery proposes, SSH decides: what a browser reports is only a candidate host,
carrying the host-key fingerprint it advertised, which the SSH transport holds it to.
Records that fail validation are logged once (per agent and reason) and skipped; no
record, however hostile, raises out of zeroconf's thread.

Callbacks run on zeroconf's browser thread, one at a time and in order: they should be
quick (hand the agent to a queue) and must not close the browser.

A browser starts with a one-shot query from a port of its own besides zeroconf's queries
(see :mod:`meshrun.discovery.oneshot`): the agents already up are found within a round
trip even when another mDNS socket on this machine gets the unicast answers to port
5353, which would otherwise leave them to the next query, a second or more later.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from meshrun.config.inventory import Host
from meshrun.discovery.hosts import discovery_inventory, merge_hosts
from meshrun.discovery.net import networks_of, resolve_interfaces
from meshrun.discovery.oneshot import OneShot, ask
from meshrun.discovery.record import SERVICE_TYPE, Agent, Rejected, instance_name, parse_agent
from meshrun.errors import ConnectError, DiscoveryError

__all__ = ["DEFAULT_TIMEOUT_S", "Browser", "discover", "resolve_with_discovery", "watch"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0
_MAX_WARNINGS = 1000

AgentCallback = Callable[[Agent], None]
NameCallback = Callable[[str], None]


class Browser:
    """Watches the LAN for agents and keeps the current, valid ones.

    ``on_added(agent)`` fires for an agent seen for the first time (or again after it
    left), ``on_updated(agent)`` when its record changes, ``on_removed(name)`` when it
    says goodbye, its records expire, or its record turns invalid or stops matching
    ``labels`` (an agent must have every one of them). Use as a context manager, or
    call ``start()`` and ``close()``.
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        labels: Collection[str] = (),
        on_added: AgentCallback | None = None,
        on_updated: AgentCallback | None = None,
        on_removed: NameCallback | None = None,
        resolve_timeout_s: float = 2.0,
    ) -> None:
        self.addresses = resolve_interfaces(interfaces)  # InputError before any socket
        self.labels = frozenset(labels)
        self._on_added = on_added
        self._on_updated = on_updated
        self._on_removed = on_removed
        self._resolve_timeout_ms = max(1, round(resolve_timeout_s * 1000))
        self._networks = networks_of(self.addresses)
        self._agents: dict[str, Agent] = {}  # by instance name
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._one_shot: OneShot | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Browser:
        if self._zc is not None:
            return self
        try:
            self._zc = Zeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise DiscoveryError(
                f"cannot open mDNS sockets on {', '.join(self.addresses)}: {exc.strerror or exc}",
                fix="check that the interface is up and multicast is allowed, "
                "or choose another --interface",
            ) from exc
        try:
            self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])
            self._one_shot = ask(self._zc, self.addresses)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop browsing and close the sockets; no callback fires after this returns."""
        browser, self._browser = self._browser, None
        one_shot, self._one_shot = self._one_shot, None
        zc, self._zc = self._zc, None
        if browser is not None:
            browser.cancel()
        if one_shot is not None:
            one_shot.close()
        if zc is not None:
            zc.close()

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------

    def agents(self) -> list[Agent]:
        """The agents known right now, by name."""
        with self._lock:
            return sorted(self._agents.values(), key=lambda agent: agent.name)

    # -- zeroconf's thread ------------------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                self._drop(instance_name(name))
            else:
                self._resolve(zeroconf, service_type, name)
        except Exception:  # never let one record stop the browser thread
            log.exception("internal error handling the mDNS record %.80r", name)

    def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = ServiceInfo(service_type, name)
        if not info.request(zeroconf, self._resolve_timeout_ms):
            log.info("agent %.80r did not answer in time; skipped", name)
            return
        addresses = self._preferred(info.parsed_addresses(IPVersion.V4Only))
        found = parse_agent(name, info.text or b"", addresses, info.port)
        if isinstance(found, Rejected):
            self._warn(found)
            self._drop(instance_name(name))
            return
        if not self.labels <= set(found.labels):
            self._drop(found.name)
            return
        with self._lock:
            previous = self._agents.get(found.name)
            self._agents[found.name] = found
        if previous is None:
            self._call(self._on_added, found)
        elif previous != found:
            self._call(self._on_updated, found)

    def _drop(self, name: str | None) -> None:
        if name is None:
            return
        with self._lock:
            gone = self._agents.pop(name, None)
        if gone is not None and self._on_removed is not None:
            try:
                self._on_removed(name)
            except Exception:
                log.exception("on_removed(%r) failed", name)

    def _call(self, callback: AgentCallback | None, agent: Agent) -> None:
        if callback is None:
            return
        try:
            callback(agent)
        except Exception:
            log.exception("discovery callback failed for agent %r", agent.name)

    def _warn(self, rejected: Rejected) -> None:
        key = (rejected.name, rejected.reason)
        with self._lock:
            if key in self._warned or len(self._warned) > _MAX_WARNINGS:
                return
            self._warned.add(key)
            flooded = len(self._warned) > _MAX_WARNINGS
        if flooded:  # a flood of bad records must not grow memory or the log forever
            log.warning("more than %d bad mDNS records: no longer reporting them", _MAX_WARNINGS)
            return
        log.warning("ignoring the mDNS record of agent %s", rejected)

    def _preferred(self, addresses: list[str]) -> list[str]:
        """Addresses on a network this machine is on come first."""

        def shared(address: str) -> bool:
            try:
                parsed = ipaddress.IPv4Address(address)
            except ValueError:
                return False
            return any(parsed in network for network in self._networks)

        return sorted(addresses, key=lambda address: not shared(address))


def watch(
    *,
    on_added: AgentCallback,
    on_removed: NameCallback,
    on_updated: AgentCallback | None = None,
    interfaces: Sequence[str] | None = None,
    labels: Collection[str] = (),
) -> Browser:
    """A started :class:`Browser`; the caller closes it."""
    return Browser(
        interfaces=interfaces,
        labels=labels,
        on_added=on_added,
        on_updated=on_updated,
        on_removed=on_removed,
    ).start()


def discover(
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interfaces: Sequence[str] | None = None,
    labels: Collection[str] = (),
) -> list[Agent]:
    """Browse for ``timeout_s`` seconds; the valid agents found, by name.

    Agents answer a query within about 0.1 s on a LAN; one that is still registering
    (about 1.7 s after it starts) may be missed by a short timeout.
    """
    with Browser(interfaces=interfaces, labels=labels) as browser:
        time.sleep(timeout_s)
        return browser.agents()


def resolve_with_discovery(
    spec: str | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interfaces: Sequence[str] | None = None,
    user: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
) -> list[Host]:
    """What ``--hosts SPEC --discover`` means: SPEC's hosts plus the agents found.

    Login settings for the agents come from ``user``/``identity``/``known_hosts``,
    else from SPEC's ``[defaults]``. SPEC may be None (agents only) or a hosts.toml
    with only ``[defaults]``. Raises InventoryError (SPEC) before browsing, and
    ConnectError (exit 3) when there is no host at all.
    """
    inventory = discovery_inventory(spec, user=user, identity=identity, known_hosts=known_hosts)
    addresses = resolve_interfaces(interfaces)
    agents = discover(timeout_s, addresses)
    hosts = merge_hosts(inventory.hosts, agents, inventory.defaults)
    if not hosts:
        raise ConnectError(
            "--discover",
            f"no meshrun agent answered within {timeout_s:g}s on {', '.join(addresses)}",
            fix="start `meshrun agent` on the machines to use (on this network), "
            "or raise --discover-timeout",
        )
    return hosts

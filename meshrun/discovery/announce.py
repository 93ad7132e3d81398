"""``meshrun agent``: announce this machine on the LAN until told to stop.

The agent is only a zeroconf responder: it runs nothing. Work still arrives over SSH,
and the coordinator still trusts the machine only through its SSH host key, whose
fingerprint the record carries so that a machine answering for another is caught.

Life of an agent: build the :class:`~meshrun.discovery.record.Advert` (host key
fingerprint, CPU count, platform) and check it as a browser would; register it (mDNS
probes the name first: a name someone else announces is a
:class:`~meshrun.errors.NameConflictError`, or, for the default name, the next free
``NAME-2``, ``NAME-3``); re-read the settings every ``refresh_s`` and on SIGHUP, and
publish a changed record; on SIGTERM or Ctrl-C send goodbye packets, so browsers drop
the agent at once instead of when its records expire.
"""

from __future__ import annotations

import getpass
import logging
import os
import platform
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType
from typing import Any

from zeroconf import (
    EventLoopBlocked,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    Zeroconf,
)

from meshrun.discovery.net import resolve_interfaces
from meshrun.discovery.oneshot import OneShot, ask
from meshrun.discovery.record import (
    MAX_SLOTS,
    SERVICE_TYPE,
    Advert,
    Rejected,
    check_agent_name,
    check_label,
    check_user,
    check_workdir,
    encode_txt,
    parse_agent,
    service_name,
    txt_bytes,
)
from meshrun.errors import DiscoveryError, InputError, NameConflictError
from meshrun.records import record
from meshrun.transport.sshkeys import read_public_key
from meshrun.version import version

__all__ = [
    "DEFAULT_HOST_KEY",
    "AgentOptions",
    "Announcer",
    "build_advert",
    "default_agent_name",
    "run_agent",
]

log = logging.getLogger(__name__)

DEFAULT_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
#: Records live 2 minutes (mDNS's host-record TTL) rather than 75: an agent that
#: dies without a goodbye drops out of browsers within that time.
RECORD_TTL_S = 120
#: How many ``NAME-n`` the default name tries before giving up.
_RENAME_ATTEMPTS = 20
_POLL_S = 0.2


@record
class AgentOptions:
    """What ``meshrun agent`` was asked to announce; None means "work it out"."""

    name: str | None = None  # None: this machine's short host name, renamed on conflict
    slots: int | None = None  # None: the CPU count, followed as it changes
    labels: tuple[str, ...] = ()
    ssh_port: int = 22
    user: str | None = None  # None: the user running the agent
    workdir: str | None = None  # None: not announced (the coordinator's default applies)
    host_key: str = DEFAULT_HOST_KEY  # the sshd host key's .pub file
    interfaces: tuple[str, ...] = ()  # empty: every non-loopback IPv4 interface


def default_agent_name() -> str:
    """This machine's short host name, made a valid agent name."""
    short = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", short).lstrip("-_")[:63].rstrip("-_")
    return name or "meshrun-agent"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_advert(options: AgentOptions, *, name: str | None = None) -> Advert:
    """The record ``options`` describe, checked as a browser will check it.

    Reads the host key file and the CPU count, so calling it again picks up changes.
    Raises InputError naming the option and the fix.
    """
    chosen = name or options.name or default_agent_name()
    if reason := check_agent_name(chosen):
        raise InputError(f"--name: {reason}", fix="e.g. --name build-1")
    for label in options.labels:
        if reason := check_label(label):
            raise InputError(f"--labels: {reason}", fix="e.g. --labels linux,x86_64,gpu")
    user = options.user if options.user is not None else getpass.getuser()
    if reason := check_user(user):
        raise InputError(f"--user: {reason}", fix="pass --user with the login name to use")
    if options.workdir is not None and (reason := check_workdir(options.workdir)):
        raise InputError(f"--workdir: {reason}", fix="e.g. --workdir /var/tmp/meshrun")
    if not 1 <= options.ssh_port <= 65535:
        raise InputError(
            f"--ssh-port {options.ssh_port} is out of range 1..65535",
            fix="pass the port this machine's sshd listens on (default 22)",
        )
    cpus = _cpu_count()
    slots = cpus if options.slots is None else options.slots
    if not 1 <= slots <= MAX_SLOTS:
        raise InputError(
            f"--slots {slots} is out of range 1..{MAX_SLOTS}",
            fix="pass how many tasks this machine may run at once, e.g. --slots 8",
        )
    key = read_public_key(options.host_key, option="--host-key")
    advert = Advert(
        name=chosen,
        port=options.ssh_port,
        user=user,
        slots=slots,
        cpus=min(cpus, 4096),
        labels=tuple(sorted(set(options.labels))),
        workdir=options.workdir,
        os=platform.system().lower() or "unknown",
        arch=platform.machine() or "unknown",
        host_key_type=key.key_type,
        host_key_fingerprint=key.fingerprint,
        meshrun_version=version(),
    )
    # The last word is the browser's: never announce what a coordinator would refuse.
    try:
        wire = txt_bytes(encode_txt(advert))
    except ValueError as exc:
        raise InputError(f"the record is too large: {exc}", fix="use fewer labels") from None
    checked = parse_agent(service_name(chosen), wire, ["127.0.0.1"], options.ssh_port)
    if isinstance(checked, Rejected):
        raise InputError(
            f"the record would be refused by browsers: {checked.reason}",
            fix="shorten the labels or workdir",
        )
    return advert


class Announcer:
    """One registered ``_meshrun._tcp`` service on the given addresses.

    ``register`` probes and announces (about 1.7 s); ``update`` publishes a changed
    advert under the same name; ``close`` sends goodbyes and closes the sockets.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._zc: Zeroconf | None = None
        self._one_shot: OneShot | None = None
        self._info: ServiceInfo | None = None
        self.advert: Advert | None = None

    def _zeroconf(self) -> Zeroconf:
        if self._zc is None:
            try:
                self._zc = Zeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
            except OSError as exc:
                raise DiscoveryError(
                    f"cannot open mDNS sockets on {', '.join(self.addresses)}: "
                    f"{exc.strerror or exc}",
                    fix="check that the interface is up and multicast is allowed, "
                    "or choose another --interface",
                ) from exc
        return self._zc

    def _service_info(self, advert: Advert) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            service_name(advert.name),
            port=advert.port,
            properties=encode_txt(advert),
            # Our own host name record, so no other responder's (avahi's) is touched.
            server=f"meshrun-{advert.name}.local.",
            host_ttl=RECORD_TTL_S,
            other_ttl=RECORD_TTL_S,
            parsed_addresses=self.addresses,
        )

    def register(self, advert: Advert, *, rename: bool = False) -> Advert:
        """Announce ``advert``; returns it under the name it got.

        A name another agent announces raises NameConflictError, unless ``rename``,
        which tries ``NAME-2``, ``NAME-3``... instead (what mDNS expects of a
        responder whose name is taken).
        """
        zc = self._zeroconf()
        if self._one_shot is None:
            # The agents already announced, from a port of our own: zeroconf's probes
            # ask them for unicast answers to port 5353, which another mDNS socket on
            # this machine may get instead, and a taken name would go unnoticed.
            self._one_shot = ask(zc, self.addresses)
        base = advert.name
        for attempt in range(1, _RENAME_ATTEMPTS + 1):
            candidate = advert if attempt == 1 else replace(advert, name=f"{base}-{attempt}")
            info = self._service_info(candidate)
            try:
                zc.register_service(info, allow_name_change=False)
            except NonUniqueNameException:
                if not rename:
                    raise NameConflictError(
                        base,
                        f"another meshrun agent on the LAN already announces the name {base!r}",
                        fix=f"mDNS names must be unique on the link: pass --name {base}-2 "
                        "(or another name no agent uses)",
                    ) from None
                log.warning("the agent name %r is taken on the LAN", candidate.name)
                continue
            except EventLoopBlocked as exc:
                raise DiscoveryError(
                    "zeroconf did not finish registering in time",
                    fix="the machine may be overloaded; try again",
                ) from exc
            except OSError as exc:
                raise DiscoveryError(
                    f"could not send mDNS packets: {exc.strerror or exc}",
                    fix="check that multicast is allowed on the chosen --interface",
                ) from exc
            self._info = info
            self.advert = candidate
            return candidate
        raise NameConflictError(
            base,
            f"the names {base!r} to {base}-{_RENAME_ATTEMPTS} are all taken on the LAN",
            fix="pass a unique --name",
        )

    def update(self, advert: Advert) -> bool:
        """Publish ``advert`` (same name) if it differs from what is announced."""
        if self._info is None or self.advert is None:
            raise RuntimeError("update() before register()")
        if advert == self.advert:
            return False
        if advert.name != self.advert.name:
            raise ValueError("an announced agent keeps its name; register anew instead")
        info = self._service_info(advert)
        self._zeroconf().update_service(info)
        self._info, self.advert = info, advert
        return True

    def close(self) -> None:
        """Send goodbye packets (records with TTL 0) and close the sockets."""
        zc, self._zc = self._zc, None
        one_shot, self._one_shot = self._one_shot, None
        if one_shot is not None:
            one_shot.close()
        if zc is None:
            return
        try:
            if self._info is not None:
                zc.unregister_service(self._info)
        except (EventLoopBlocked, OSError) as exc:
            log.warning("could not send the goodbye packets: %s", exc)
        finally:
            self._info = None
            zc.close()

    def __enter__(self) -> Announcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _changes(old: Advert, new: Advert) -> str:
    fields = ("slots", "cpus", "host_key_type", "host_key_fingerprint")
    changed = [
        f"{field} {getattr(old, field)} -> {getattr(new, field)}"
        for field in fields
        if getattr(old, field) != getattr(new, field)
    ]
    return ", ".join(changed) or "record changed"


def _summary(advert: Advert, addresses: Sequence[str]) -> str:
    labels = ",".join(advert.labels) or "none"
    return (
        f"agent {advert.name!r} announced on {', '.join(addresses)}: ssh port {advert.port} "
        f"as {advert.user}, {advert.slots} slots, {advert.cpus} CPUs, labels {labels}, "
        f"host key {advert.host_key_type} {advert.host_key_fingerprint}"
    )


@contextmanager
def _stop_on_signals(stop: threading.Event, refresh: threading.Event) -> Iterator[None]:
    """SIGTERM and Ctrl-C set ``stop``, SIGHUP sets ``refresh``; restored afterwards.

    Only from the main thread (Python's rule). A SIGINT that is ignored (a background
    job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        refresh.set()

    handlers: dict[int, Callable[[int, FrameType | None], Any]] = {signal.SIGTERM: on_stop}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handlers[signal.SIGINT] = on_stop
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hangup
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_agent(
    options: AgentOptions,
    *,
    stop: threading.Event | None = None,
    report: Callable[[str], None] = log.info,
    refresh_s: float = 10.0,
) -> Advert:
    """Announce this machine until ``stop`` is set, SIGTERM, or Ctrl-C; then say goodbye.

    Settings are re-read every ``refresh_s`` and on SIGHUP (host key file, CPU count,
    and the slots that follow it); a change is published at once. ``report`` gets one
    line per event (announced, updated, stopped). Returns the last advert announced.
    Raises InputError (bad options), NameConflictError or DiscoveryError.
    """
    stop = stop or threading.Event()
    refresh = threading.Event()
    advert = build_advert(options)  # bad options fail before any packet is sent
    addresses = resolve_interfaces(options.interfaces)
    with _stop_on_signals(stop, refresh), Announcer(addresses) as announcer:
        advert = announcer.register(advert, rename=options.name is None)
        if options.name is None and advert.name != default_agent_name():
            report(f"the name {default_agent_name()!r} is taken on the LAN; using {advert.name!r}")
        report(_summary(advert, addresses))
        waited_s = 0.0
        while not stop.wait(_POLL_S):
            waited_s += _POLL_S
            if waited_s < refresh_s and not refresh.is_set():
                continue
            waited_s = 0.0
            refresh.clear()
            try:
                current = build_advert(options, name=advert.name)
            except InputError as exc:
                log.warning("keeping the announced record: %s", exc)
                continue
            previous = advert
            if announcer.update(current):
                advert = current
                report(f"agent {advert.name!r} updated: {_changes(previous, current)}")
        report(f"agent {advert.name!r} stopping: sending goodbye")
    report(f"agent {advert.name!r} stopped")
    return advert

"""The ``_meshrun._tcp.local.`` DNS-SD record: what an agent announces, decoded strictly.

Pure: no sockets, no zeroconf. An agent's service instance name is its host name in
meshrun (``build-1``); the SRV record carries its SSH port; the TXT record carries the
rest as ``key=value`` strings (RFC 6763 §6), version 1:

    txtvers  1                  protocol version; any other value is refused
    port     22                 SSH port (equal to the SRV port)
    user     ci                 login user (optional)
    slots    8                  concurrent tasks offered, 1..1024
    cpus     16                 CPU count, 1..4096
    labels   linux,x86_64       comma-separated (may be empty)
    workdir  /var/tmp/meshrun   where work runs (optional): absolute or ~/...
    os       linux              platform.system(), lower case
    arch     x86_64             platform.machine()
    keytype  ssh-ed25519        host key algorithm
    hostkey  SHA256:...         fingerprint of that host key (as ``ssh-keygen -lf``)
    meshrun  0.1.0              the agent's meshrun version (informational)

Anyone on the LAN can send anything, so :func:`parse_agent` never raises: a record that
is malformed, oversized, out of range or of an unknown version becomes a
:class:`Rejected` naming the reason, which the browser logs and skips. Unknown keys are
ignored (room for additions within version 1); keys are case-insensitive and the first
of a repeated key wins, as RFC 6763 says.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

from meshrun.records import record
from meshrun.transport.sshkeys import FINGERPRINT_RE, HOST_KEY_TYPES

__all__ = [
    "MAX_TXT_BYTES",
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Advert",
    "Agent",
    "Rejected",
    "check_agent_name",
    "check_label",
    "check_user",
    "check_workdir",
    "decode_txt",
    "encode_txt",
    "instance_name",
    "parse_agent",
    "service_name",
    "txt_bytes",
]

SERVICE_TYPE = "_meshrun._tcp.local."
PROTOCOL_VERSION = 1

#: RFC 6763 §6.2: a TXT record should stay below 1300 bytes to fit in one packet.
MAX_TXT_BYTES = 1300
MAX_SLOTS = 1024
MAX_CPUS = 4096
MAX_LABELS = 32
MAX_WORKDIR_CHARS = 200
_MAX_NUMBER_DIGITS = 6

# Used with fullmatch: ``^...$`` with match would take a value ending in "\n".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,62}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_PLATFORM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_VERSION_RE = re.compile(r"[A-Za-z0-9.+-]{1,32}")
_NUMBER_RE = re.compile(rf"[0-9]{{1,{_MAX_NUMBER_DIGITS}}}")


@record(kw_only=True)
class Advert:
    """What ``meshrun agent`` announces about its machine."""

    name: str  # the service instance name, also the host's name in meshrun
    port: int  # SSH port
    user: str | None
    slots: int
    cpus: int
    labels: tuple[str, ...]  # sorted, unique
    workdir: str | None
    os: str
    arch: str
    host_key_type: str
    host_key_fingerprint: str
    version: int = PROTOCOL_VERSION
    meshrun_version: str | None = None


@record(kw_only=True)
class Agent(Advert):
    """An agent found on the LAN: its advert and the address to reach it at."""

    address: str  # IPv4, the one on a network this machine shares with it when it can


@record
class Rejected:
    """A record that was not accepted, and why (one line, for a warning)."""

    name: str  # the service name as received (shortened), for the message
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


class _Reject(Exception):
    """Internal: one validation failure; becomes a Rejected."""


# -- the values, one check each (shared with the agent's option checks) -------------


def check_agent_name(name: str) -> str | None:
    """Why ``name`` cannot be an agent's name, or None if it can."""
    if not _NAME_RE.fullmatch(name):
        return (
            f"name {_shown(name)} is not 1-63 letters, digits, '-' or '_' "
            "starting with a letter or digit"
        )
    return None


def check_label(label: str) -> str | None:
    if not _LABEL_RE.fullmatch(label):
        return (
            f"label {_shown(label)} is not 1-63 letters, digits or ._:+- "
            "starting with a letter or digit"
        )
    return None


def check_user(user: str) -> str | None:
    if not _USER_RE.fullmatch(user):
        return f"user {_shown(user)} is not a login name (1-32 letters, digits, '_', '.', '-')"
    return None


def check_workdir(workdir: str) -> str | None:
    if len(workdir) > MAX_WORKDIR_CHARS:
        return f"workdir is longer than {MAX_WORKDIR_CHARS} characters"
    if not (workdir.startswith("/") or workdir == "~" or workdir.startswith("~/")):
        return f"workdir {_shown(workdir)} is neither absolute nor under ~/"
    if any(not char.isprintable() for char in workdir):
        return f"workdir {_shown(workdir)} contains control characters"
    if "{" in workdir or "}" in workdir:
        return f"workdir {_shown(workdir)} contains braces (hosts.toml placeholders)"
    return None


def _shown(text: str, limit: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


# -- encoding -----------------------------------------------------------------------


def service_name(instance: str) -> str:
    """``build-1`` -> ``build-1._meshrun._tcp.local.``"""
    return f"{instance}.{SERVICE_TYPE}"


def instance_name(service: str) -> str | None:
    """``build-1._meshrun._tcp.local.`` -> ``build-1``; None if not of our type."""
    suffix = "." + SERVICE_TYPE
    if not service.lower().endswith(suffix.lower()):
        return None
    return service[: -len(suffix)]


def encode_txt(advert: Advert) -> dict[str, str]:
    """The TXT properties of ``advert``, in the order they are announced."""
    txt = {
        "txtvers": str(advert.version),
        "port": str(advert.port),
        "slots": str(advert.slots),
        "cpus": str(advert.cpus),
        "labels": ",".join(advert.labels),
        "os": advert.os,
        "arch": advert.arch,
        "keytype": advert.host_key_type,
        "hostkey": advert.host_key_fingerprint,
    }
    if advert.user is not None:
        txt["user"] = advert.user
    if advert.workdir is not None:
        txt["workdir"] = advert.workdir
    if advert.meshrun_version is not None:
        txt["meshrun"] = advert.meshrun_version
    return txt


def txt_bytes(properties: Mapping[str, str]) -> bytes:
    """The wire form of TXT properties: length-prefixed ``key=value`` strings."""
    out = bytearray()
    for key, value in properties.items():
        item = f"{key}={value}".encode()
        if len(item) > 255:
            raise ValueError(f"TXT entry {key!r} is longer than 255 bytes")
        out.append(len(item))
        out += item
    return bytes(out)


# -- decoding -----------------------------------------------------------------------


def decode_txt(raw: bytes) -> dict[str, bytes] | Rejected:
    """Split TXT rdata into ``{lower-case key: value}``; first occurrence wins.

    Strings without ``=`` (boolean attributes) and strings starting with ``=`` are
    skipped, as RFC 6763 §6.4 says. Values stay bytes: only the keys meshrun reads are
    decoded, by :func:`parse_agent`.
    """
    try:
        return _decode_txt(raw)
    except _Reject as exc:
        return Rejected("TXT", str(exc))


def _decode_txt(raw: bytes) -> dict[str, bytes]:
    if len(raw) > MAX_TXT_BYTES:
        raise _Reject(f"TXT record is {len(raw)} bytes, more than {MAX_TXT_BYTES}")
    entries: dict[str, bytes] = {}
    position = 0
    while position < len(raw):
        length = raw[position]
        start, end = position + 1, position + 1 + length
        if end > len(raw):
            raise _Reject("TXT record is truncated (a string runs past its end)")
        item = raw[start:end]
        position = end
        key_bytes, equals, value = item.partition(b"=")
        if not equals or not key_bytes:
            continue
        try:
            key = key_bytes.decode("ascii").lower()
        except UnicodeDecodeError:
            continue  # not a key meshrun uses
        entries.setdefault(key, value)
    return entries


def parse_agent(
    service: str,
    txt: bytes | Mapping[str, bytes],
    addresses: Sequence[str],
    srv_port: int | None = None,
) -> Agent | Rejected:
    """Validate one resolved service into an Agent; never raises.

    ``txt`` is the raw TXT rdata (or its decoded entries); ``addresses`` are the IPv4
    addresses of the record, best first; ``srv_port`` is the SRV port, which must
    equal the advertised SSH port.
    """
    shown = _shown(service, 60).strip("'")
    try:
        return _parse_agent(service, txt, addresses, srv_port)
    except _Reject as exc:
        return Rejected(shown, str(exc))
    except Exception as exc:  # a bug here must not take the browser down with it
        return Rejected(shown, f"could not be read ({type(exc).__name__}: {exc})")


def _parse_agent(
    service: str,
    txt: bytes | Mapping[str, bytes],
    addresses: Sequence[str],
    srv_port: int | None,
) -> Agent:
    instance = instance_name(service)
    if instance is None:
        raise _Reject(f"not a {SERVICE_TYPE} service")
    reason = check_agent_name(instance)
    if reason:
        raise _Reject(reason)
    entries = _decode_txt(txt) if isinstance(txt, bytes) else dict(txt)
    if sum(len(key) + len(value) + 2 for key, value in entries.items()) > MAX_TXT_BYTES:
        raise _Reject(f"TXT record is more than {MAX_TXT_BYTES} bytes")

    def text(key: str, *, required: bool = True) -> str | None:
        value = entries.get(key)
        if value is None:
            if required:
                raise _Reject(f"TXT record lacks {key}=")
            return None
        try:
            decoded = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(f"{key}= is not UTF-8") from None
        if not decoded and required:
            raise _Reject(f"{key}= is empty")
        return decoded

    def number(key: str, low: int, high: int) -> int:
        value = text(key)
        assert value is not None
        if not _NUMBER_RE.fullmatch(value) or not low <= int(value) <= high:
            raise _Reject(f"{key}={_shown(value)} is not a whole number from {low} to {high}")
        return int(value)

    version = text("txtvers")
    assert version is not None
    if version != str(PROTOCOL_VERSION):
        raise _Reject(
            f"unknown protocol version txtvers={_shown(version)} (this meshrun reads "
            f"version {PROTOCOL_VERSION}; upgrade it to use that agent)"
        )
    port = number("port", 1, 65535)
    if srv_port is not None and srv_port != port:
        raise _Reject(f"the SRV port {srv_port} differs from port={port}")
    slots = number("slots", 1, MAX_SLOTS)
    cpus = number("cpus", 1, MAX_CPUS)
    user = text("user", required=False)
    if user is not None and (reason := check_user(user)):
        raise _Reject(reason)
    workdir = text("workdir", required=False)
    if workdir is not None and (reason := check_workdir(workdir)):
        raise _Reject(reason)
    labels = _labels(text("labels", required=False) or "")
    os_name, arch = text("os"), text("arch")
    assert os_name is not None and arch is not None
    for key, value in (("os", os_name), ("arch", arch)):
        if not _PLATFORM_RE.fullmatch(value):
            raise _Reject(f"{key}={_shown(value)} is not a platform name")
    key_type, fingerprint = text("keytype"), text("hostkey")
    assert key_type is not None and fingerprint is not None
    if key_type not in HOST_KEY_TYPES:
        raise _Reject(f"keytype={_shown(key_type)} is not an SSH host key algorithm")
    if not FINGERPRINT_RE.fullmatch(fingerprint):
        raise _Reject(f"hostkey={_shown(fingerprint)} is not a SHA256:... fingerprint")
    meshrun_version = text("meshrun", required=False)
    if meshrun_version is not None and not _VERSION_RE.fullmatch(meshrun_version):
        meshrun_version = None  # informational only: not worth refusing the agent
    return Agent(
        name=instance,
        address=_address(addresses),
        port=port,
        user=user,
        slots=slots,
        cpus=cpus,
        labels=labels,
        workdir=workdir,
        os=os_name,
        arch=arch,
        host_key_type=key_type,
        host_key_fingerprint=fingerprint,
        version=PROTOCOL_VERSION,
        meshrun_version=meshrun_version,
    )


def _labels(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    labels = value.split(",")
    if len(labels) > MAX_LABELS:
        raise _Reject(f"more than {MAX_LABELS} labels")
    for label in labels:
        if reason := check_label(label):
            raise _Reject(reason)
    return tuple(sorted(set(labels)))


def _address(candidates: Iterable[str]) -> str:
    """The first usable unicast IPv4 address."""
    for candidate in candidates:
        try:
            address = ipaddress.IPv4Address(candidate)
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            continue
        if str(address) == "255.255.255.255":
            continue
        return str(address)
    raise _Reject("no usable IPv4 address")

"""hosts.toml and inline ``--hosts`` lists -> frozen Host objects; ``--limit`` selection.

Pure data: the only I/O is reading the inventory file. Every mistake is an
:class:`~meshrun.errors.InventoryError` naming the file, the line, the host, the key
and what to write instead, because an inventory is hand-written and the person
running ``meshrun`` is the one who has to fix it.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any, NoReturn

from meshrun.config import fasttoml, hostlist
from meshrun.config.loader import Invalid as _Invalid
from meshrun.config.loader import (
    Loader,
    check_name,
    check_text,
    collector_paused,
    name_re,
    wrong_type,
)
from meshrun.config.loader import show as _show
from meshrun.config.loader import toml_type as _toml_type
from meshrun.errors import InventoryError
from meshrun.records import record

__all__ = [
    "LOCAL_HOST_NAME",
    "MAX_SLOTS",
    "Host",
    "HostDefaults",
    "Inventory",
    "load_inventory",
    "local_host",
    "parse_inline",
    "read_inventory",
    "resolve_hosts",
    "select_hosts",
]

LOCAL_HOST_NAME = "local"

#: The most tasks' load units one host may take at once (``slots``), as for an agent
#: found on the LAN: far above any real machine's CPUs, low enough that a typo such as
#: ``slots = 99999999`` is an error, not a host that asks for more work than exists.
MAX_SLOTS = 1024
#: ``weight`` is a host's speed relative to an average one. Beyond a million times
#: faster or slower the scheduler's estimates (seconds / weight) mean nothing and, at
#: the extremes, overflow or vanish; such a value is a typo, not a machine.
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6


@record
class Host:
    """One machine meshrun can run work on.

    ``None`` means "not set in the inventory": the SSH layer fills it from
    ``~/.ssh/config`` and then from OpenSSH's defaults.
    """

    name: str
    address: str | None = None  # None: the name itself (resolved through ssh_config)
    port: int | None = None
    user: str | None = None
    identity: str | None = None  # private key path, "~" allowed
    known_hosts: str | None = None  # default ~/.ssh/known_hosts
    workdir: str = "~/.meshrun/work"  # "{name}" already substituted; "~/" = remote $HOME
    slots: int | None = None  # None = "auto" (remote CPU count)
    weight: float = 1.0
    labels: frozenset[str] = field(default_factory=frozenset)
    proxy_jump: str | None = None
    local: bool = False  # the embedded default: run on this machine, no SSH
    # A ProxyCommand of the host's own, as ssh_config's (``%h``/``%p``/``%r``/``%n``
    # expanded); never read from a file: programs set it (``meshrun.fabric``'s
    # string ``gateway``). ``proxy_jump`` wins when both are set.
    proxy_command: str | None = None
    # What the host announced on the LAN (``meshrun agent``), never read from a file:
    # the key it presents must have this fingerprint, or it is refused as a spoof.
    advertised_fingerprint: str | None = None  # "SHA256:..."
    advertised_key_type: str | None = None  # "ssh-ed25519": asked for first

    @property
    def ssh_alias(self) -> str:
        """What ssh_config's ``Host`` patterns are matched against."""
        return self.address or self.name


@record
class HostDefaults:
    """The ``[defaults]`` table of a hosts.toml; None (or empty) where it says nothing.

    Hosts found on the LAN (``--discover``) take their login settings from here.
    ``workdir`` may still hold the ``{name}`` placeholder; ``slots`` None is unset or
    ``"auto"`` (both mean the remote CPU count).
    """

    port: int | None = None
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    workdir: str | None = None
    slots: int | None = None
    weight: float | None = None
    labels: frozenset[str] = field(default_factory=frozenset)
    proxy_jump: str | None = None


@record
class Inventory:
    """A whole hosts.toml: its hosts, in file order, and its ``[defaults]``."""

    hosts: tuple[Host, ...]
    defaults: HostDefaults


_HOST_KEYS = (
    "name",
    "address",
    "port",
    "user",
    "identity",
    "known_hosts",
    "workdir",
    "slots",
    "weight",
    "labels",
    "proxy_jump",
)
_DEFAULT_KEYS = tuple(key for key in _HOST_KEYS if key not in ("name", "address"))
_TOP_LEVEL_KEYS = ("defaults", "host")
_NAME_CHARS = "._"  # besides letters, digits and "-"
_NAME_RE = name_re(_NAME_CHARS)
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_NOT_IN_ADDRESS = frozenset("/,[]@")
#: Names and addresses as almost all are written: none of their characters can be wrong,
#: so the character-by-character check (5 µs an address) is skipped.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9._:%-]+")
_SPACE_OR_COMMA = re.compile(r"[\s,]")

_EXAMPLES = {
    "name": 'name = "build-1"',
    "address": 'address = "10.0.0.11"',
    "port": "port = 22",
    "user": 'user = "ci"',
    "identity": 'identity = "~/.ssh/id_ed25519"',
    "known_hosts": 'known_hosts = "~/.ssh/known_hosts"',
    "workdir": 'workdir = "/var/tmp/meshrun/{name}"',
    "slots": 'slots = 4 (or slots = "auto" for the CPU count)',
    "weight": "weight = 2.0",
    "labels": 'labels = ["linux", "x86_64"]',
    "proxy_jump": 'proxy_jump = "admin@bastion.example.com:22"',
}
# Names people bring from ssh_config, Ansible or pdsh; difflib alone would miss them.
_KEY_ALIASES = {
    "ip": "address",
    "addr": "address",
    "host": "address",
    "hostname": "address",
    "username": "user",
    "key": "identity",
    "ssh_key": "identity",
    "identityfile": "identity",
    "identity_file": "identity",
    "knownhosts": "known_hosts",
    "proxyjump": "proxy_jump",
    "jump": "proxy_jump",
    "tags": "labels",
    "jobs": "slots",
    "cpus": "slots",
    "dir": "workdir",
    "work_dir": "workdir",
}


_HOST_EXAMPLE = (
    'add one [[host]] table per host, each with at least name = "build-1" and address = "10.0.0.11"'
)
_INLINE_EXAMPLE = "--hosts web1,root@10.0.0.5:2222"


# --- values ------------------------------------------------------------------------


def _wrong_type(key: str, expected: str, value: object) -> _Invalid:
    return wrong_type(key, expected, value, _EXAMPLES[key])


def _check_text(key: str, value: object) -> str:
    return check_text(key, value, _EXAMPLES[key])


def _check_name(key: str, value: object) -> str:
    return check_name(
        key, value, _EXAMPLES[key], chars=_NAME_CHARS, what="host", fallback="build-1"
    )


def _check_host_part(address: str, shown: str) -> str:
    """Reject what cannot be a host name, IP address or ssh_config alias."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return address
    if not address:
        raise _Invalid(
            f"{_show(shown)} has no address", "write a host name, IP address or ssh_config alias"
        )
    bad = sorted(
        {
            char
            for char in address
            if char.isspace() or not char.isprintable() or char in _NOT_IN_ADDRESS
        }
    )
    if bad:
        raise _Invalid(
            f"{_show(shown)} is not a host name or IP address (it contains {''.join(bad)!r})",
            "write a host name, an IPv4/IPv6 address or an alias from ~/.ssh/config",
        )
    return address


def _check_address(key: str, value: object) -> str:
    text = _check_text(key, value).strip()
    if "@" in text:
        user, _, rest = text.rpartition("@")
        raise _Invalid(
            f"{_show(text)} contains a user name",
            f'write user = "{user}" and address = "{rest}" as two keys',
        )
    if text.startswith("[") and "]:" in text:
        address, _, port = text[1:].partition("]:")
        raise _Invalid(
            f"{_show(text)} contains a port", f'write address = "{address}" and port = {port}'
        )
    if text.startswith("[") and text.endswith("]") and ":" in text:
        text = text[1:-1]  # "[fe80::1]": brackets are URL syntax, the address is inside
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
        raise _Invalid(
            f"{_show(text)} contains a port", f'write address = "{address}" and port = {port}'
        )
    return _check_host_part(text, text)


def _check_port(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, "an integer from 1 to 65535", value)
    if not 1 <= value <= 65535:
        raise _Invalid(
            f"port {value} is out of range 1..65535", "write port = 22, or the port sshd listens on"
        )
    return value


def _check_slots(key: str, value: object) -> int | None:
    if value == "auto":
        return None  # Host.slots None: the remote CPU count
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, 'a positive integer or "auto"', value)
    if value < 1:
        raise _Invalid(
            f"slots must be at least 1, found {value}",
            'write slots = 1 or more, or slots = "auto" for the host\'s CPU count',
        )
    if value > MAX_SLOTS:
        raise _Invalid(
            f"slots must be at most {MAX_SLOTS}, found {value}",
            "write how many tasks may run on the host at once, e.g. slots = 8, "
            'or slots = "auto" for the host\'s CPU count',
        )
    return value


def _check_weight(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(key, "a number greater than 0", value)
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(
            f"weight must be a finite number greater than 0, found {value}",
            "write weight = 1.0 for an average host, 2.0 for one twice as fast",
        )
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise _Invalid(
            f"weight {value} is out of range {MIN_WEIGHT:g}..{MAX_WEIGHT:g} "
            "(a host's speed relative to an average one)",
            "write weight = 1.0 for an average host, 2.0 for one twice as fast",
        )
    return float(value)


def _check_labels(key: str, value: object) -> frozenset[str]:
    if not isinstance(value, list):
        invalid = _wrong_type(key, "an array of strings", value)
        if isinstance(value, str):
            words = [word for word in re.split(r"[\s,]+", value) if word]
            invalid.fix = f"write labels = [{', '.join(_show(word) for word in words)}]"
        raise invalid
    labels: set[str] = set()
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            raise _Invalid(
                f"label #{number} must be a string, found {_toml_type(item)} ({_show(item)})",
                f"quote it: {_show(str(item))}",
            )
        if not item:
            raise _Invalid(f"label #{number} is empty", "remove the empty string")
        if _SPACE_OR_COMMA.search(item):
            words = [word for word in re.split(r"[\s,]+", item) if word]
            raise _Invalid(
                f"label {_show(item)} contains a space or comma",
                f"write each label as its own string: [{', '.join(_show(w) for w in words)}]",
            )
        labels.add(item)
    return frozenset(labels)


def _check_workdir(key: str, value: object) -> str:
    text = _check_text(key, value)
    for match in _PLACEHOLDER_RE.finditer(text):
        if match.group(1) != "name":
            raise _Invalid(
                f"unknown placeholder {match.group(0)!r} in {_show(text)}",
                "the only placeholder is {name} (the host name), "
                'e.g. workdir = "/var/tmp/meshrun/{name}"',
            )
    return text


def _split_target(item: str) -> tuple[str | None, str, int | None]:
    """``[user@]address[:port]`` -> parts; IPv6 as ``[fe80::1]:22`` or bare ``fe80::1``."""
    user, at, rest = item.rpartition("@")
    if at and not user:
        raise _Invalid(f"{_show(item)} has an empty user before '@'", "write user@host", key="user")
    port_text: str | None = None
    if rest.startswith("["):
        closing = rest.find("]")
        if closing == -1:
            raise _Invalid(f"unclosed '[' in {_show(item)}", "write IPv6 as [fe80::1]:2222")
        address, after = rest[1:closing], rest[closing + 1 :]
        if ":" not in address:
            raise _Invalid(
                f"brackets in {_show(item)} are only for IPv6 addresses",
                f"write {address}" if address else "write [fe80::1]:2222",
            )
        if after:
            if not after.startswith(":"):
                raise _Invalid(
                    f"unexpected {after!r} after ']' in {_show(item)}",
                    "write [fe80::1]:2222",
                )
            port_text = after[1:]
    elif rest.count(":") == 1:
        address, _, port_text = rest.partition(":")
    else:
        address = rest  # a name, an IPv4 address, or bare IPv6 (which cannot carry a port)
    _check_host_part(address, item)
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _Invalid(
                f"bad port {_show(port_text)} in {_show(item)}: expected 1..65535",
                "write host:port, e.g. root@10.0.0.5:2222",
                key="port",
            )
        port = int(port_text)
    return (user or None, address, port)


def _check_proxy_jump(key: str, value: object) -> str:
    text = _check_text(key, value).strip()
    fix = f"write {_EXAMPLES[key]}: one jump host as [user@]host[:port]"
    if "," in text:
        raise _Invalid(f"{_show(text)} lists several jump hosts; one is supported", fix)
    try:
        _split_target(text)
    except _Invalid as exc:
        raise _Invalid(exc.message, fix) from None
    return text


_CHECKS: dict[str, Callable[[str, object], object]] = {
    "name": _check_name,
    "address": _check_address,
    "port": _check_port,
    "user": _check_text,
    "identity": _check_text,
    "known_hosts": _check_text,
    "workdir": _check_workdir,
    "slots": _check_slots,
    "weight": _check_weight,
    "labels": _check_labels,
    "proxy_jump": _check_proxy_jump,
}


# --- the file ----------------------------------------------------------------------

#: Where a key written at the top level belongs, for the fix.
_HOMES = (
    (_DEFAULT_KEYS, "move {key} under [defaults] (every host) or into a [[host]] block"),
    (_HOST_KEYS, "move {key} into a [[host]] block"),
)
_REQUIRED = {
    "name": 'name = "build-1" (unique)',
    "address": 'address = "10.0.0.11" (an IP address, DNS name or ~/.ssh/config alias)',
}


class _Loader(Loader):
    """Validates parsed TOML into Hosts, raising errors that point into the file."""

    aliases = _KEY_ALIASES
    name_re = _NAME_RE
    missing_fix = f"create it, or pass an inline list like {_INLINE_EXAMPLE}"
    unreadable_fix = "check its permissions, or pass an inline list like " + _INLINE_EXAMPLE

    def __init__(self, source: str, *, hosts_required: bool = True) -> None:
        super().__init__(source)
        self.hosts_required = hosts_required

    def error(
        self, message: str, *, line: int | None, entry: str | None, key: str | None, fix: str
    ) -> InventoryError:
        return InventoryError(message, path=self.source, line=line, entry=entry, key=key, fix=fix)

    def toml_fix(self) -> str:
        return (
            'write key = value with strings in double quotes (address = "10.0.0.11"); '
            "tables are [defaults] and [[host]]"
        )

    def load(self, data: dict[str, Any]) -> Inventory:
        self.reject_unknown_top_level(data, _TOP_LEVEL_KEYS, _HOMES)
        defaults = self._defaults(data)
        raw_hosts = self.array_of_tables(
            data, "host", required=self.hosts_required, fix=_HOST_EXAMPLE
        )
        hosts: list[Host] = []
        first_use: dict[str, int] = {}
        for index, raw in enumerate(raw_hosts):
            host = self._host(index, raw, defaults)
            if host.name in first_use:
                self.duplicate_name("host", host.name, first_use[host.name], index, host.name)
            first_use[host.name] = index
            hosts.append(host)
        return Inventory(tuple(hosts), HostDefaults(**defaults))

    def load_selected(self, text: str, selection: _Selection) -> list[Host] | None:
        """The hosts of ``text`` that ``selection`` chooses, each entry checked and
        dropped unless chosen, as the quick reader yields it: memory for the chosen
        hosts only. None when the text needs the whole-file path (it is not plain TOML,
        ``[defaults]`` follows a host, or there is any mistake: that path then reports
        the same first mistake as without --limit)."""
        self._text = text  # for the lines of a mistake, before giving up
        defaults: dict[str, Any] | None = None
        seen: set[str] = set()  # names, for duplicates
        index = 0
        try:
            for table in fasttoml.tables(text):
                if table.name is None:
                    if table.values:
                        return None  # top-level keys: mistakes, or an inline [[host]]
                elif table.name == "defaults" and not table.array and not index:
                    defaults = self._defaults({"defaults": table.values})
                elif table.name == "host" and table.array:
                    if defaults is None:
                        defaults = self._defaults({})
                    host = self._host(index, table.values, defaults)
                    if host.name in seen:
                        return None
                    seen.add(host.name)
                    selection.offer(host)
                    index += 1
                else:
                    return None
        except (fasttoml.Unsupported, InventoryError):
            return None
        if not index and self.hosts_required:
            return None
        return selection.chosen

    def _defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        raw = self.table(
            data,
            "defaults",
            "write [defaults] once (single brackets), followed by key = value lines",
            show_value=False,
        )
        entry = "[defaults]"
        for key in raw:
            if key in ("name", "address"):
                self.not_a_default(key, "host")
            if key not in _DEFAULT_KEYS:
                self.unknown_key(key, _DEFAULT_KEYS, table="defaults", index=None, entry=entry)
        return {
            key: self.check(_CHECKS[key], key, value, table="defaults", index=None, entry=entry)
            for key, value in raw.items()
        }

    def _host(self, index: int, raw: object, defaults: dict[str, Any]) -> Host:
        block, entry = self.entry_table("host", index, raw)
        self.reject_unknown(block, _HOST_KEYS, table="host", index=index, entry=entry)
        self.require(block, _REQUIRED, table="host", index=index, entry=entry)
        values = dict(defaults)
        for key, value in block.items():
            values[key] = self.check(
                _CHECKS[key], key, value, table="host", index=index, entry=entry
            )
        workdir = values.get("workdir")
        if workdir is not None:
            values["workdir"] = workdir.replace("{name}", values["name"])
        return Host(**values)


def load_inventory(
    path: str | os.PathLike[str], *, limits: Sequence[str] = (), source: str | None = None
) -> list[Host]:
    """Read and validate a hosts.toml; every mistake is an InventoryError pointing at it.

    ``limits``: only the hosts these ``--limit`` values select (:func:`select_hosts`,
    whose errors ``source`` labels). The whole file is still checked — the same file
    passes or fails alike whatever is selected, so a mistake in any entry is found by
    the first command — but only the chosen hosts are kept: a plain hosts.toml is read
    and checked one entry at a time (100,000 hosts: 1.1 s and 60 MB for one host, not
    4.4 s and 150 MB).
    """
    if not limits:
        return list(read_inventory(path).hosts)
    loader = _Loader(os.fspath(path))
    text = loader.read(path)
    with collector_paused():
        chosen = loader.load_selected(text, selection := _Selection(limits, source))
        if chosen is not None:
            return selection.result()
        whole = _Loader(os.fspath(path))
        hosts = whole.load(whole.parse(text)).hosts
    return select_hosts(hosts, limits, source=source)


def read_inventory(path: str | os.PathLike[str], *, hosts_required: bool = True) -> Inventory:
    """Like :func:`load_inventory`, with the ``[defaults]`` table too.

    ``hosts_required=False`` accepts a file without ``[[host]]`` entries: a
    ``[defaults]`` table alone is a valid inventory for hosts found by ``--discover``.
    """
    loader = _Loader(os.fspath(path), hosts_required=hosts_required)
    with collector_paused():
        return loader.load(loader.parse(loader.read(path)))


# --- inline lists, the local host, resolution ----------------------------------------


def parse_inline(spec: str) -> list[Host]:
    """``--hosts web1,root@10.0.0.5:2222,[::1]:2200`` -> Hosts, each named as written.

    A host's name is its address, or ``address:port`` (``[v6]:port``) when a port is
    given, so the same text works in ``--limit``. Empty items (a trailing comma) are
    skipped.
    """
    hosts: list[Host] = []
    first_use: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        try:
            user, address, port = _split_target(item)
        except _Invalid as exc:
            fix = exc.fix
            if "/" in item:
                fix = f"{item!r} is not an existing file either; check the path, or {fix}"
            raise InventoryError(exc.message, entry=item, key=exc.key, fix=fix) from None
        if port is None:
            name = address
        else:
            name = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        if name in first_use:
            raise InventoryError(
                f"host {name!r} is listed twice"
                + ("" if first_use[name] == item else f" ({first_use[name]!r} and {item!r})"),
                entry=item,
                key="name",
                fix="list each host once; for more parallel work on one host, "
                "set slots in a hosts.toml",
            )
        first_use[name] = item
        hosts.append(Host(name=name, address=address, port=port, user=user))
    if not hosts:
        raise InventoryError(
            "no hosts given",
            fix=f"pass a hosts.toml file, or an inline list like {_INLINE_EXAMPLE}",
        )
    return hosts


def local_host(workdir: str | None = None) -> Host:
    """The embedded default: this machine, no SSH, working in the current directory."""
    return Host(name=LOCAL_HOST_NAME, local=True, workdir=workdir or os.getcwd())


def resolve_hosts(spec: str | None, *, limits: Sequence[str] = ()) -> list[Host]:
    """What ``--hosts`` means: nothing -> this machine; a file -> inventory; else a list.

    ``limits``: the ``--limit`` values, applied while a file is read (only the chosen
    hosts are kept, see :func:`load_inventory`); errors name the file when it ends in
    .toml.
    """
    if spec is None:
        hosts = [local_host()]
    elif os.path.isfile(spec) or spec.endswith(".toml"):
        source = spec if spec.endswith(".toml") else None
        return load_inventory(spec, limits=limits, source=source)
    else:
        hosts = parse_inline(spec)
    return select_hosts(hosts, limits) if limits else hosts


# --- selection ---------------------------------------------------------------------


@record
class _Pattern:
    """One ``--limit`` item: a glob, a hostlist range, or ``label:GLOB``; maybe ``!``."""

    text: str
    exclude: bool
    label_glob: str | None
    expanded: frozenset[str]  # h[1-3,5] as a range, so folded console output can be pasted
    #: ``text`` as fnmatchcase reads it; None when it has no wildcard (equality then).
    glob: re.Pattern[str] | None

    def matches(self, host: Host) -> bool:
        if self.label_glob is not None and any(
            fnmatch.fnmatchcase(label, self.label_glob) for label in host.labels
        ):
            return True
        for candidate in (host.name, host.address):
            if candidate is not None and (
                candidate == self.text
                or candidate in self.expanded
                or (self.glob is not None and self.glob.match(candidate) is not None)
            ):
                return True
        return False


_WILDCARD = re.compile(r"[*?\[]")  # what makes fnmatch more than equality


def _parse_limit(value: str, source: str | None) -> list[_Pattern]:
    def fail(message: str) -> NoReturn:
        raise InventoryError(
            message,
            path=source,
            key="--limit",
            fix="use host names or globs (web*), label:NAME, hostlist ranges (web[1-3]), "
            "and !PATTERN to exclude, separated by commas",
        )

    patterns: list[_Pattern] = []
    for group in hostlist.split_groups(value):
        text = group.strip()
        if not text:
            continue  # "web1," or "$A,$B" with one empty
        exclude = text.startswith("!")
        if exclude:
            text = text[1:].strip()
            if not text:
                fail(f"'!' in {value!r} needs a pattern after it")
        label_glob: str | None = None
        if text.startswith("label:"):
            label_glob = text.removeprefix("label:")
            if not label_glob:
                fail(f"'label:' in {value!r} needs a label name after it")
        try:
            expanded = frozenset(hostlist.expand(text)) if "[" in text else frozenset()
        except ValueError:
            expanded = frozenset()  # not a range: an fnmatch character class then
        glob = re.compile(fnmatch.translate(text)) if _WILDCARD.search(text) else None
        patterns.append(_Pattern(text, exclude, label_glob, expanded, glob))
    if not patterns:
        # An empty value is usually an unset shell variable; selecting every host would
        # be the dangerous reading of it.
        fail(f"empty --limit value {value!r}")
    return patterns


def _split_patterns(patterns: list[_Pattern]) -> tuple[list[_Pattern], list[_Pattern]]:
    """(includes, excludes) of one --limit value."""
    return (
        [pattern for pattern in patterns if not pattern.exclude],
        [pattern for pattern in patterns if pattern.exclude],
    )


def _selects(host: Host, includes: list[_Pattern], excludes: list[_Pattern]) -> bool:
    """Whether one --limit value selects ``host``: union of includes minus excludes."""
    for pattern in includes:
        if pattern.matches(host):
            break
    else:
        if includes:
            return False
    return not any(pattern.matches(host) for pattern in excludes)


def _matching(hosts: Sequence[Host], patterns: list[_Pattern]) -> set[int]:
    """Positions of the hosts one --limit value selects."""
    includes, excludes = _split_patterns(patterns)
    return {position for position, host in enumerate(hosts) if _selects(host, includes, excludes)}


def limit_filter(limits: Sequence[str]) -> Callable[[Host], bool]:
    """``--limit`` as a test of one host at a time (hosts that come and go, such as
    discovered agents). The values are checked now: InventoryError if malformed."""
    parsed = [_parse_limit(value, None) for value in limits]
    return lambda host: all(_matching([host], patterns) for patterns in parsed)


class _Selection:
    """``--limit`` applied to hosts one at a time, as they are read: what is kept is only
    the chosen hosts, and what the error for an empty choice lists (ten names, the
    count, the labels seen), so a 100,000-host inventory is never held whole."""

    #: Names the error lists before "and N more".
    SHOWN = 10

    def __init__(self, limits: Sequence[str], source: str | None) -> None:
        self.limits = list(limits)
        self.source = source
        self._parsed = [_split_patterns(_parse_limit(value, source)) for value in self.limits]
        self._matched = [False] * len(self.limits)  # did any host match the value?
        self.chosen: list[Host] = []
        self._names: list[str] = []
        self._count = 0
        self._labels: set[str] = set()

    def offer(self, host: Host) -> None:
        """Keep ``host`` when every value selects it (commas within one value are a
        union of includes minus excludes, values intersect)."""
        self._count += 1
        if len(self._names) < self.SHOWN:
            self._names.append(host.name)
        self._labels.update(host.labels)
        chosen = True
        for position, (includes, excludes) in enumerate(self._parsed):
            if _selects(host, includes, excludes):
                self._matched[position] = True
            else:
                chosen = False
        if chosen:
            self.chosen.append(host)

    def result(self) -> list[Host]:
        """The chosen hosts in inventory order; InventoryError when hosts were offered
        but none is chosen, listing what could have been."""
        if self.chosen or not self._count or not self.limits:
            return self.chosen
        empty_value = next(
            (
                value
                for value, matched in zip(self.limits, self._matched, strict=True)
                if not matched
            ),
            None,
        )
        if empty_value is not None:
            message = f"no host matches --limit {empty_value!r}"
        else:
            message = (
                "no host matches every --limit at once ("
                + " and ".join(repr(value) for value in self.limits)
                + "); several --limit options must all match"
            )
        shown = ", ".join(self._names)
        if self._count > self.SHOWN:
            shown += f" and {self._count - self.SHOWN} more"
        labels = sorted(self._labels)
        label_text = ", ".join(f"label:{label}" for label in labels) if labels else "none"
        raise InventoryError(
            message,
            path=self.source,
            key="--limit",
            fix=f"choose from the hosts: {shown}; labels: {label_text}",
        )


def select_hosts(
    hosts: Sequence[Host], limits: Sequence[str], *, source: str | None = None
) -> list[Host]:
    """Apply ``--limit`` values: commas within one value are a union, values intersect.

    Keeps inventory order. ``source`` (the inventory path) only labels errors.
    Raises InventoryError when nothing is left, listing what could have been chosen.
    """
    if not limits:
        return list(hosts)
    selection = _Selection(limits, source)
    for host in hosts:
        selection.offer(host)
    return selection.result()

"""hosts.toml written by a program: agents found on the LAN (``discover --write``), a
simulated fleet, the benchmarks' and tests' inventories.

One writer, so every hosts.toml meshrun writes is quoted the same way and loads back
(:func:`meshrun.config.inventory.read_inventory`) to the hosts it was given: keys that
are not bare TOML keys are quoted, strings are TOML basic strings with every control
character escaped, and comments cannot end early and let their text become TOML. The
writer checks syntax only; the loader remains the one judge of what a host may say.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Set
from dataclasses import field
from pathlib import Path

from meshrun.records import record

__all__ = [
    "HostEntry",
    "Value",
    "WriteError",
    "render_hosts",
    "toml_key",
    "toml_string",
    "toml_value",
    "write_atomic",
    "write_hosts",
]

#: What a key of a hosts.toml may hold: strings (paths as their text), numbers,
#: booleans, and arrays of strings (labels; a set is written sorted, so the file does
#: not change from run to run).
Value = str | bool | int | float | os.PathLike[str] | Iterable[str]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # TOML's bare keys; fullmatch


@record
class HostEntry:
    """One ``[[host]]`` table: its keys, written in this order, then ``comment`` (one or
    more lines, e.g. what the host advertised) below them."""

    keys: Mapping[str, Value] = field(hash=False)
    comment: str | None = None


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and controls escaped."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """``key`` as written before ``=``: bare when TOML allows it, else quoted (a dot in
    a bare key would make it a dotted key, a table)."""
    return key if _BARE_KEY_RE.fullmatch(key) else toml_string(key)


def toml_value(value: Value) -> str:
    """``value`` as TOML. TypeError for what a hosts.toml cannot hold (tables, None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # "1.5", "1e-06", "inf", "nan": all TOML floats
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, os.PathLike):
        return toml_string(os.fspath(value))
    if isinstance(value, Set):
        value = sorted(value)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"a hosts.toml value is a string, number, boolean or array: {value!r}")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"a hosts.toml array holds strings: {items!r}")
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def _comment(text: str) -> list[str]:
    """``# `` lines for ``text``; a control character other than tab (which TOML refuses
    in a comment, and which could end the line early) is written escaped, as in a string."""
    return [
        "# " + "".join(f"\\u{ord(char):04X}" if _is_control(char) else char for char in line)
        for line in text.splitlines()
    ]


def _is_control(char: str) -> bool:
    return (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F


def _keys(keys: Mapping[str, Value]) -> list[str]:
    return [f"{toml_key(key)} = {toml_value(value)}" for key, value in keys.items()]


def render_hosts(
    hosts: Iterable[Mapping[str, Value] | HostEntry],
    *,
    defaults: Mapping[str, Value] | None = None,
    comment: str | None = None,
) -> str:
    """The text of a hosts.toml: ``comment`` at the top, ``[defaults]`` when given (even
    empty), then one ``[[host]]`` table per entry, in order, blocks apart by a blank
    line. Keys are written as given; the loader checks them when the file is read."""
    blocks: list[list[str]] = []
    if comment:
        blocks.append(_comment(comment))
    if defaults is not None:
        blocks.append(["[defaults]", *_keys(defaults)])
    for host in hosts:
        entry = host if isinstance(host, HostEntry) else HostEntry(host)
        block = ["[[host]]", *_keys(entry.keys)]
        if entry.comment:
            block += _comment(entry.comment)
        blocks.append(block)
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


class WriteError(Exception):
    """A file could not be written; nothing of it was left behind.

    ``reason`` is the system's (``No such file or directory``). ``placed`` is False when
    no file could be made in the target's directory (missing, not writable), True when
    writing it or renaming it into place failed (e.g. the target is a directory).
    """

    def __init__(self, path: str, reason: str, *, placed: bool) -> None:
        super().__init__(f"{path}: cannot write it ({reason})")
        self.path = path
        self.reason = reason
        self.placed = placed


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a reader never sees half): a
    temporary file beside it, made readable by all (0644, as an inventory is shared),
    renamed over it. :class:`WriteError` when it cannot be done."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".hosts-", suffix=".toml", dir=directory)
    except OSError as exc:
        raise WriteError(target, str(exc.strerror or exc), placed=False) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise WriteError(target, str(exc.strerror or exc), placed=True) from exc
    except BaseException:
        os.unlink(temporary)
        raise


def write_hosts(
    path: str | os.PathLike[str],
    hosts: Iterable[Mapping[str, Value] | HostEntry],
    *,
    defaults: Mapping[str, Value] | None = None,
    comment: str | None = None,
) -> Path:
    """:func:`render_hosts` written to ``path`` with :func:`write_atomic`; returns
    ``path`` (as a Path), ready for ``--hosts``."""
    write_atomic(path, render_hosts(hosts, defaults=defaults, comment=comment))
    return Path(path)

"""rsync's ``--exclude`` patterns, matched the way rsync matches them (pure).

A workspace push that cannot use rsync (SFTP, :mod:`meshrun.workspace.push`) must leave out
exactly what ``rsync --exclude PATTERN`` leaves out. Names are paths relative to the
root of the transfer (``src/a.py``). The rules, as rsync 3.x applies them:

- ``- PATTERN`` and ``+ PATTERN`` make an exclude and an include rule (a plain pattern
  excludes); the first rule that matches a name decides; ``!`` alone clears the rules
  given before it.
- A trailing ``/`` matches directories only. A leading ``/`` anchors the pattern at the
  root of the transfer. Otherwise a pattern without ``/`` or ``**`` is matched against
  the last component of the name, one with ``/`` against as many last components, and
  one with ``**`` from the start of any component.
- ``*`` matches within one component, ``**`` across ``/``, ``?`` and ``[...]`` one byte
  but ``/`` (``[!...]``/``[^...]`` negate; ranges; ``[:alpha:]`` and the other POSIX
  classes, ASCII); ``\\`` escapes the next character, but only in a pattern with a
  wildcard: without one a pattern is literal, backslashes included. ``dir/***``
  matches ``dir`` itself and everything below it.

An excluded directory is not entered, so nothing below it is sent either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from meshrun.records import record

_WILD = frozenset(b"*[?")
_SLASH = 0x2F
_ASCII = [bytes([b]) for b in range(128)]
_GRAPH = frozenset(range(33, 127))
_POSIX_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": frozenset(c[0] for c in _ASCII if c.isalnum()),
    b"alpha": frozenset(c[0] for c in _ASCII if c.isalpha()),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(32), 127]),
    b"digit": frozenset(b"0123456789"),
    b"graph": _GRAPH,
    b"lower": frozenset(c[0] for c in _ASCII if c.islower()),
    b"print": _GRAPH | {32},
    b"punct": frozenset(c[0] for c in _ASCII if c[0] in _GRAPH and not c.isalnum()),
    b"space": frozenset(c[0] for c in _ASCII if c.isspace()),
    b"upper": frozenset(c[0] for c in _ASCII if c.isupper()),
    b"xdigit": frozenset(b"0123456789abcdefABCDEF"),
}


class _Abort(Exception):
    """A pattern that can match nothing (an unclosed ``[``, a trailing ``\\``)."""


@record
class _Rule:
    include: bool
    pattern: bytes  # without the anchoring "/" and the trailing "/"
    anchored: bool
    dir_only: bool
    slashes: int  # "/" in the pattern as written, the anchoring one included
    wild: bool  # has * ? or [
    regex: re.Pattern[bytes] | None  # a wild pattern's; None: it can match nothing

    def matches(self, name: bytes, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        starstar = self.wild and b"**" in self.pattern
        if not self.slashes and not starstar:
            name = name.rsplit(b"/", 1)[-1]
        if not self.wild:
            if self.anchored:
                return name == self.pattern
            return name == self.pattern or name.endswith(b"/" + self.pattern)
        if self.regex is None:
            return False
        prefix = not self.anchored and self.pattern.startswith(b"**")
        text = b"/" + name if prefix else name  # "**/x" matches "x" too
        if is_dir and starstar and self.pattern.endswith(b"***"):
            text += b"/"  # "dir/***" matches the directory itself
        if self.anchored or prefix:
            starts = [0]
        elif starstar:  # from the start of any component
            starts = [0, *(i + 1 for i, c in enumerate(text) if c == _SLASH)]
        else:  # the last `slashes + 1` components, and there must be that many
            if text.count(b"/") < self.slashes:
                return False
            cut = len(text)
            for _ in range(self.slashes + 1):
                cut = text.rfind(b"/", 0, cut)
                if cut < 0:
                    break
            starts = [cut + 1]
        return any(self.regex.fullmatch(text, start) for start in starts)


def _rule(text: str) -> _Rule:
    include = False
    if text.startswith(("- ", "+ ")):
        include, text = text[0] == "+", text[2:]
    if not text:
        raise ValueError("unexpected end of filter rule")
    raw = text.encode("utf-8", "surrogateescape")
    dir_only = len(raw) > 1 and raw.endswith(b"/")
    if dir_only:
        raw = raw[:-1]
    anchored = raw.startswith(b"/")
    pattern = raw[1:] if anchored else raw
    wild = bool(set(raw) & _WILD)
    regex = None
    if wild:
        try:
            regex = re.compile(_translate(pattern), re.DOTALL)
        except _Abort:
            regex = None
    return _Rule(include, pattern, anchored, dir_only, raw.count(b"/"), wild, regex)


def _translate(pattern: bytes) -> bytes:
    """A wildcard pattern as a regular expression over bytes."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x5C:  # "\\"
            i += 1
            if i == n:
                raise _Abort
            out.append(re.escape(pattern[i : i + 1]))
        elif c == 0x2A:  # "*"
            j = i
            while j < n and pattern[j] == 0x2A:
                j += 1
            out.append(b".*" if j - i > 1 else b"[^/]*")
            i = j
            continue
        elif c == 0x3F:  # "?"
            out.append(b"[^/]")
        elif c == 0x5B:  # "["
            i, members = _byte_class(pattern, i + 1)
            members -= {_SLASH}
            out.append(b"[" + b"".join(re.escape(bytes([m])) for m in sorted(members)) + b"]")
            if not members:
                out[-1] = b"(?!)"
        else:
            out.append(re.escape(pattern[i : i + 1]))
        i += 1
    return b"".join(out)


def _byte_class(p: bytes, i: int) -> tuple[int, set[int]]:
    """The class that starts at ``p[i]`` (just after its ``[``): the index of its
    ``]`` and the bytes it matches. Its first member may be ``]`` itself."""
    n = len(p)
    negated = p[i : i + 1] in (b"!", b"^")
    i += negated
    first = i
    members: set[int] = set()
    prev = 0  # the previous member, where a "-" makes a range from it
    while True:
        if i >= n:
            raise _Abort
        ch = p[i]
        if ch == 0x5D and i > first:  # "]"
            break
        if ch == 0x5C:  # "\\": the next byte as it is
            i += 1
            if i >= n:
                raise _Abort
            ch = p[i]
            members.add(ch)
        elif ch == 0x2D and prev and i + 1 < n and p[i + 1] != 0x5D:  # "-": a range
            i += 1
            if p[i] == 0x5C:
                i += 1
                if i >= n:
                    raise _Abort
            members.update(range(prev, p[i] + 1))
            ch = 0
        elif ch == 0x5B and p[i + 1 : i + 2] == b":":  # "[:name:]"
            end = p.find(b"]", i + 2)
            if end < 0:
                raise _Abort
            if end - 1 >= i + 2 and p[end - 1] == 0x3A:
                name = p[i + 2 : end - 1]
                if name not in _POSIX_CLASSES:
                    raise _Abort
                members |= _POSIX_CLASSES[name]
                i, ch = end, 0
            else:  # no ":]" before the "]": an ordinary "["
                members.add(ch)
        else:
            members.add(ch)
        prev = ch
        i += 1
    return i, set(range(256)) - members if negated else members


@record
class Excludes:
    """Compiled ``--exclude`` patterns, in order (see the module docstring)."""

    rules: tuple[_Rule, ...]

    @classmethod
    def compile(cls, patterns: Sequence[str]) -> Excludes:
        """Raises ValueError for a pattern rsync refuses (``- `` with nothing after)."""
        rules: list[_Rule] = []
        for text in patterns:
            if text == "!":
                rules.clear()
            else:
                rules.append(_rule(text))
        return cls(tuple(rules))

    def excluded(self, name: str, *, is_dir: bool) -> bool:
        """Whether rsync would leave out ``name`` (relative to the transfer's root)."""
        raw = name.encode("utf-8", "surrogateescape")
        for rule in self.rules:
            if rule.matches(raw, is_dir):
                return not rule.include
        return False


__all__ = ["Excludes"]

"""Checking the TOML files users write (hosts.toml, tasks.toml): shared helpers.

tomllib reports no positions for values, so ``Locator`` finds the line of a key by
scanning the text; the check helpers turn a bad value into an ``Invalid`` carrying the
message and the fix, which each parser wraps in its own error with file, line and entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from meshrun.records import record

TOML_POSITION_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
HEADER_RE = re.compile(r"""\s*(\[\[?)\s*([A-Za-z0-9_\-."' ]+?)\s*(\]\]?)\s*(?:#.*)?""")


class Invalid(Exception):
    """A bad value; whoever catches it knows the file, line and entry."""

    def __init__(self, message: str, fix: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.key = key


def toml_type(value: object) -> str:
    """The TOML name of a parsed value, for "expected X, found Y"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"  # the only other thing tomllib produces


_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape(char: str) -> str:
    """A character as a TOML basic string writes it: control characters escaped, so a
    NUL or an escape sequence never reaches the terminal raw."""
    if char in ("\\", '"'):
        return "\\" + char
    if char.isprintable():
        return char
    return _ESCAPES.get(char, f"\\u{ord(char):04x}")


def show(value: object) -> str:
    """A value as it would be written in TOML, shortened for a one-line message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + "".join(_escape(char) for char in value[:80]) + '"'
    else:
        try:
            text = repr(value)
        except RecursionError:  # nested hundreds deep: tomllib parses what repr cannot
            text = "[...]" if isinstance(value, list) else "{...}"
    return text if len(text) <= 60 else text[:57] + "..."


#: Characters no process can take: a NUL ends a C string, so it cannot be in a command
#: line, an environment variable, a file name or a user name.
NUL = "\x00"


def find_nul(value: object) -> str | None:
    """The first string in ``value`` (a key or a value, at any depth) holding a NUL.

    Iterative, so a value nested hundreds deep cannot overflow the stack.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def check_no_nul(value: object) -> None:
    """Invalid when ``value`` holds a NUL anywhere: it would reach a host and fail there
    (Popen refuses it), so it is refused here, with the file, entry and key."""
    found = find_nul(value)
    if found is not None:
        raise Invalid(
            f"{show(found)} contains a NUL character (\\u0000), which no command, "
            "environment variable or file name can hold",
            "remove the \\u0000 escape from the string",
        )


#: What a file nested deeper than tomllib (or Python) can follow is told, instead of a
#: RecursionError: meshrun's files need three levels at most.
TOO_DEEP = "nested too deeply (arrays or tables hundreds of levels inside each other)"
TOO_DEEP_FIX = "remove the extra nesting: no key of this file takes more than a table of arrays"


def wrong_type(
    key: str, expected: str, value: object, example: str, *, number: str = r"[0-9.]+"
) -> Invalid:
    """``expected X, found Y`` with ``example`` as the fix; a quoted number that
    matches ``number`` gets "without quotes" instead."""
    fix = f"write {example}"
    if isinstance(value, str) and re.fullmatch(number, value.strip()):
        fix = f"write {key} = {value.strip()} (a number, without quotes)"
    return Invalid(f"expected {expected}, found {toml_type(value)} ({show(value)})", fix)


def check_text(key: str, value: object, example: str) -> str:
    """A non-empty string, else Invalid with ``example`` as the fix."""
    if not isinstance(value, str):
        raise wrong_type(key, "a string", value, example)
    if not value.strip():
        raise Invalid("must not be empty", f"write {example}")
    return value


@record
class Header:
    line: int  # 1-based
    name: str  # dotted, unquoted: "host", "defaults", "task.env"
    array: bool


class Locator:
    """Finds the line of a key by scanning the text, since tomllib reports no positions.

    A heuristic over table headers and ``key =`` lines; when it cannot tell, it falls
    back to the enclosing header's line, then to None.
    """

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self.headers: list[Header] = []
        for number, line in enumerate(self._lines, start=1):
            match = HEADER_RE.fullmatch(line)
            if match and len(match.group(1)) == len(match.group(3)):
                name = re.sub(r"\s*\.\s*", ".", match.group(2)).replace('"', "").replace("'", "")
                self.headers.append(Header(number, name, len(match.group(1)) == 2))
        # Positions of each (name, array?) header, so lookups do not rescan the file:
        # a tasks.toml of thousands of tasks is located in linear time.
        self._positions: dict[tuple[str, bool], list[int]] = {}
        for position, header in enumerate(self.headers):
            self._positions.setdefault((header.name, header.array), []).append(position)

    def _find_key(self, first: int, last: int, key: str) -> int | None:
        """The first ``key =`` (or dotted ``key.x =``) line in [first, last]."""
        pattern = re.compile(
            rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*[=.]"""
        )
        for number in range(first, last + 1):
            if pattern.match(self._lines[number - 1]):
                return number
        return None

    def top_level(self, key: str) -> int | None:
        """Line of a top-level key, written either as ``key = ...`` or as a header."""
        first_header = self.headers[0].line if self.headers else len(self._lines) + 1
        found = self._find_key(1, first_header - 1, key)
        if found is not None:
            return found
        for header in self.headers:
            if header.name == key or header.name.startswith(key + "."):
                return header.line
        return None

    def in_table(self, table: str, index: int | None, key: str | None) -> int | None:
        """Line of ``key`` in ``[table]`` (index None) or the index-th ``[[table]]``.

        With key None, or when the key is not found, the header's line.
        """
        candidates = self._positions.get((table, index is not None), [])
        position_in = index or 0
        if position_in >= len(candidates):
            return self.top_level(table)  # written inline: table = {...} / [{...}]
        position = candidates[position_in]
        header = self.headers[position]
        if key is None:
            return header.line
        # The block runs to the next header that is not one of its own sub-tables.
        end = len(self._lines)
        for later in self.headers[position + 1 :]:
            if not later.name.startswith(table + ".") or later.array:
                end = later.line - 1
                break
            if later.name == f"{table}.{key}" or later.name.startswith(f"{table}.{key}."):
                return later.line
        found = self._find_key(header.line + 1, end, key)
        return found if found is not None else header.line


def did_you_mean(key: str, valid: Sequence[str], aliases: Mapping[str, str]) -> str:
    """Fix text for an unknown key: the closest valid key (or a known alias), then all."""
    lowered = key.lower().replace("-", "_")
    guess = aliases.get(lowered) if lowered not in valid else lowered
    if guess not in valid:
        import difflib  # only for a typo: keeps it off every command's start

        close = difflib.get_close_matches(lowered, valid, n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f"did you mean {guess!r}? " if guess else ""
    return f"{hint}valid keys: {', '.join(valid)}"

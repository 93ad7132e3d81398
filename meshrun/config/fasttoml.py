"""The plain TOML that hosts.toml and tasks.toml are made of, read in one pass.

Why: tomllib is pure Python in 3.11 and reads a 100,000-task file (5.8 MB) in 1.6-2.0 s
of CPU, more than the whole budget for loading it (issue 13: under a second). Generated
and hand-written task and host files use a small part of TOML: ``[table]`` and
``[[table]]`` headers with bare names, ``key = value`` lines with bare keys, comments.
:func:`tables` reads exactly that part, one regular expression per line, in about a
fifth of tomllib's time, and yields each table as it ends, so a caller can check and
drop entries one by one (``--limit`` on a big inventory keeps only what it selects).

A value other than a plain string, integer, boolean or array of plain strings (escapes,
floats, inline tables, dates...) is handed to tomllib alone, on its own line; a value
that does not end on its line (a multi-line string or array), a dotted or quoted key or
header, a key or table defined twice, anything else — including every mistake — raises
:class:`Unsupported`, and the caller parses the whole text with tomllib instead. So the
result is always what ``tomllib.loads`` returns (``tests/unit/test_fasttoml.py`` checks
it against tomllib with hypothesis), and every error message still comes from tomllib.

Line numbers count ``\\n`` only; text holding the other characters ``str.splitlines``
breaks at (U+0085, U+2028, U+2029 in a string or comment) is Unsupported, so these
numbers agree with :class:`~meshrun.config.loader.Locator`'s.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = ["Table", "Unsupported", "loads", "tables"]


class Unsupported(Exception):
    """The text leaves the plain part of TOML (or is not TOML): parse it with tomllib."""


class Table(NamedTuple):
    """One table of the file, complete: ``name`` None is the root (the keys above the
    first header), ``line`` its header's line (0 for the root), ``array`` for ``[[name]]``.
    A NamedTuple: a hundred thousand are made in a blink (a @record takes 1.4 µs each)."""

    name: str | None
    array: bool
    line: int
    values: dict[str, Any]


# What TOML allows in strings and comments: no control character but tab, and (for the
# line numbers, see above) no U+0085, U+2028, U+2029.
_TEXT = r"[^\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029"
_PLAIN = _TEXT + r'"\\]*'  # a basic string's characters without escapes
_STRING = '"' + _PLAIN + '"'
_WS = r"[ \t]*"
#: A line as written almost always: ``key = "string"``, ``key = ["strings"]``, a header
#: or nothing. Groups: key, the string's text (without its quotes: no slice per line,
#: 0.02 s of a 100,000-task chain), the array, "[", name, "]", and the whole line when it
#: is none of these (it is then matched against :data:`_LINE`). Two levels: this one is
#: twice as fast as :data:`_LINE` (0.20 s against 0.43 s for the 500,000 lines of a
#: 100,000-task chain). Nothing in it crosses a \n, so each match is one whole line.
_COMMON = re.compile(
    rf"""^(?:
        ([A-Za-z0-9_-]+)\ =\ (?:"({_PLAIN})"|(\[(?:{_STRING},\ )*(?:{_STRING})?\]))
      |\[(\[?)([A-Za-z0-9_-]+)\](\]?)
      |(.*)
    )$""",
    re.MULTILINE | re.VERBOSE,
)
#: Any line of the plain part: groups (key, "string", integer, boolean, array of
#: strings, any other value; "[", name, "]"), each '' when absent, all '' for a blank
#: or comment line.
_LINE = re.compile(
    rf"""{_WS}(?:
        ([A-Za-z0-9_-]+){_WS}={_WS}
        (?:({_STRING})|(0|[1-9][0-9]{{0,17}})|(true|false)
          |(\[(?:{_WS}{_STRING}{_WS},)*(?:{_WS}{_STRING}{_WS},?)?{_WS}\])
          |(.*?))
      |\[(\[?){_WS}([A-Za-z0-9_-]+){_WS}\](\]?)
    )?{_WS}(?:\#{_TEXT}]*)?""",
    re.VERBOSE,
)
_STRINGS = re.compile(r'"(' + _PLAIN + r')"')
_ILLEGAL_CR = re.compile(r"\r(?!\n)")  # TOML's newlines are \n and \r\n
#: Characters of text matched at once (the matches of one chunk are held together):
#: 1 MB keeps that list to a few MB whatever the file's size.
_CHUNK = 1 << 20


def _other_value(text: str) -> Any:
    """A value outside the quick forms, parsed by tomllib on its own: it must end on its
    line (a value is the same wherever it stands)."""
    try:
        return tomllib.loads("v = " + text)["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        raise Unsupported from None


def _value(text: str) -> Any:
    """A quick value (:data:`_COMMON`, or a string, integer, boolean or array group of
    :data:`_LINE`) as tomllib reads it."""
    first = text[0]
    if first == '"':
        return text[1:-1]
    if first == "[":
        return _STRINGS.findall(text)
    if first == "t":
        return True
    if first == "f":
        return False
    return int(text)


def _other_line(line: str) -> tuple[str, Any, str, str, str]:
    """(key, value, "[", name, "]") of a line :data:`_COMMON` leaves to :data:`_LINE`."""
    match = _LINE.fullmatch(line)
    if match is None:
        raise Unsupported
    key, string, integer, boolean, array, other, opening, name, closing = match.groups("")
    if not key:
        return "", None, opening, name, closing
    if other or not (string or integer or boolean or array):
        return key, _other_value(other), "", "", ""
    return key, _value(string or integer or boolean or array), "", "", ""


def tables(text: str) -> Iterator[Table]:
    """Each table of ``text`` as it ends, root first; :class:`Unsupported` (possibly
    after some tables) when the text is not in the plain part of TOML."""
    if "\r" in text:
        if _ILLEGAL_CR.search(text):
            raise Unsupported
        text = text.replace("\r\n", "\n")  # no value of the plain part spans lines
    defined: set[str] = set()  # names taken at the top: keys, [tables], [[arrays]]
    arrays: set[str] = set()
    current = Table(None, False, 0, {})
    values = current.values
    number = 0
    start = 0
    while start <= len(text):  # a chunk of lines at a time
        end = text.find("\n", start + _CHUNK)
        if end == -1:
            end = len(text)
        found = _COMMON.findall(text, start, end)
        if len(found) != text.count("\n", start, end) + 1:
            raise Unsupported
        start = end + 1
        for key, text_value, array, opening, name, closing, line in found:
            number += 1
            if line:
                key, value, opening, name, closing = _other_line(line)
                if key:
                    if key in values:
                        raise Unsupported
                    values[key] = value
                    continue
            elif key:
                if key in values:
                    raise Unsupported
                values[key] = _STRINGS.findall(array) if array else text_value
                continue
            if name:
                if len(opening) != len(closing):
                    raise Unsupported
                if current.name is None:
                    defined.update(values)
                yield current
                if opening:
                    if name in defined and name not in arrays:
                        raise Unsupported
                    arrays.add(name)
                elif name in defined:
                    raise Unsupported
                defined.add(name)
                current = Table(name, bool(opening), number, {})
                values = current.values
    yield current


def loads(text: str) -> tuple[dict[str, Any], list[Table]]:
    """``tomllib.loads(text)``, and the tables in file order (their ``values`` are in
    the result); :class:`Unsupported` when the text is not in the plain part of TOML."""
    data: dict[str, Any] = {}
    found = list(tables(text))
    for table in found:
        if table.name is None:
            data.update(table.values)
        elif table.array:
            data.setdefault(table.name, []).append(table.values)
        else:
            data[table.name] = table.values
    return data, found

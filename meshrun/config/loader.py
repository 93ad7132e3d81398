"""Checking the TOML files users write (hosts.toml, tasks.toml): the shared loader.

Both files are hand-written, so both are checked the same way: read as UTF-8, parsed
with tomllib, then every table and key checked, and every mistake raised as an error
that names the file, the line, the entry (``[defaults]``, a host, a task), the key and
the fix. :class:`Loader` does all of that but the schema: a parser subclasses it with
its keys, its value checks and the error class it raises (``config.inventory``,
``config.tasks``).

tomllib reports no positions for values, so ``Locator`` finds the line of a key by
scanning the text; the check helpers turn a bad value into an ``Invalid`` carrying the
message and the fix, which the loader turns into the parser's error with file, line and
entry.
"""

from __future__ import annotations

import gc
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache, cached_property
from typing import Any, ClassVar, NamedTuple, NoReturn, TypeVar

from meshrun.config import fasttoml
from meshrun.errors import InputError

_T = TypeVar("_T")

TOML_POSITION_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
HEADER_RE = re.compile(r"""\s*(\[\[?)\s*([A-Za-z0-9_\-."' ]+?)\s*(\]\]?)\s*(?:#.*)?""")


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a file is loaded.

    Loading makes a million small objects (dicts, tuples, strings, Tasks) and no cycle,
    and the collector walks every live one again at each of its passes: 0.33 s of the
    0.77 s the quick parser takes for a 100,000-task chain, 1.3 s of a whole load.
    Reference counting still frees everything at once; the collector is back on after.

    What a load keeps (the graph, the hosts) lives as long as the run, so it goes
    straight to the oldest generation: else the first young collection after the load
    walks all of it (0.05 s for 100,000 tasks). ``gc.freeze()`` then ``gc.unfreeze()``
    moves every tracked object there without a pass; only when nothing is frozen, so
    that a caller's own frozen objects stay frozen.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


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


@cache
def name_re(chars: str) -> re.Pattern[str]:
    """A name: a letter or digit, then letters, digits, ``chars`` and '-'. Use with
    ``fullmatch``: ``$`` alone would let a trailing newline through."""
    return re.compile(rf"[A-Za-z0-9][A-Za-z0-9{re.escape(chars)}-]*")


def check_name(
    key: str, value: object, example: str, *, chars: str, what: str, fallback: str
) -> str:
    """A :func:`name_re` name, else Invalid whose fix is the name with each run of other
    characters made '-' (``fallback`` when nothing is left); ``what`` names the thing
    named ("host", "task") in the message."""
    text = check_text(key, value, example)
    if not name_re(chars).fullmatch(text):
        allowed = re.escape(chars)
        suggestion = re.sub(rf"[^A-Za-z0-9{allowed}-]+", "-", text).strip("-" + chars) or fallback
        listed = ", ".join(f"'{c}'" for c in (*chars, "-"))
        raise Invalid(
            f"{show(text)} is not a valid {what} name (letters, digits, {listed}; "
            "starting with a letter or digit)",
            f'write e.g. name = "{suggestion}"',
        )
    return text


class Header(NamedTuple):
    line: int  # 1-based
    name: str  # dotted, unquoted: "host", "defaults", "task.env"
    array: bool


class Locator:
    """Finds the line of a key by scanning the text, since tomllib reports no positions.

    A heuristic over table headers and ``key =`` lines; when it cannot tell, it falls
    back to the enclosing header's line, then to None.
    """

    def __init__(self, text: str, headers: list[Header] | None = None) -> None:
        """``headers``: the text's headers when the caller has them (the quick parser
        found them), so the text is not scanned unless a key is looked for."""
        self._text = text
        if headers is None:
            headers = []
            for number, line in enumerate(self._lines, start=1):
                match = HEADER_RE.fullmatch(line)
                if match and len(match.group(1)) == len(match.group(3)):
                    name = re.sub(r"\s*\.\s*", ".", match.group(2))
                    name = name.replace('"', "").replace("'", "")
                    headers.append(Header(number, name, len(match.group(1)) == 2))
        self.headers = headers
        # Positions of each (name, array?) header, so lookups do not rescan the file:
        # a tasks.toml of thousands of tasks is located in linear time.
        self._positions: dict[tuple[str, bool], list[int]] = {}
        for position, header in enumerate(self.headers):
            self._positions.setdefault((header.name, header.array), []).append(position)

    @cached_property
    def _lines(self) -> list[str]:
        return self._text.splitlines()

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

    def array_lines(self, table: str) -> list[int]:
        """The header line of each ``[[table]]``, in file order."""
        return [self.headers[position].line for position in self._positions.get((table, True), [])]

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


UTF8_FIX = "save the file as UTF-8 (TOML files are always UTF-8)"


def toml_reason(exc: tomllib.TOMLDecodeError, text: str) -> tuple[str, int | None]:
    """tomllib's message without its position, plus the line it names (the line's text
    appended, so the user sees what was read), and that line's number."""
    reason = str(exc)
    position = TOML_POSITION_RE.search(reason)
    line: int | None = None
    if position:
        reason = reason[: position.start()]
        line = int(position.group(1)) if position.group(1) else max(text.count("\n"), 1)
    lines = text.splitlines()
    if line is not None and 0 < line <= len(lines) and lines[line - 1].strip():
        reason += f": {lines[line - 1].strip()[:60]}"
    return reason, line


class Loader:
    """One TOML file being checked: read, parsed, its tables and keys validated, and every
    mistake raised as an error pointing into it.

    A parser subclasses it and keeps only what is its own: the error class
    (:meth:`error`), the fixes for a file that cannot be read or parsed, the names its
    entries go by (``name_re``, :meth:`entry_name`), the aliases "did you mean" offers,
    and its schema and checks (its ``load(data)``, built from the methods here). A file
    is read as ``loader.load(loader.parse(loader.read(path)))``, text already in hand as
    ``loader.load(loader.parse(text))``. ``table`` arguments are the TOML table names
    ("host", "defaults"); ``index`` is the position of an ``[[table]]`` entry, None for
    a single ``[table]``.
    """

    #: Names people bring from other tools (ssh_config, GitHub Actions...) mapped to
    #: this file's keys: difflib alone would miss them.
    aliases: ClassVar[Mapping[str, str]] = {}
    #: An ``[[table]]`` entry whose ``name`` matches is called by :meth:`entry_name` in
    #: messages; else ``host #3``.
    name_re: ClassVar[re.Pattern[str]]
    #: The fixes when the file does not exist, or cannot be read.
    missing_fix: ClassVar[str]
    unreadable_fix: ClassVar[str]

    def __init__(self, source: str) -> None:
        self.source = source  # the path as the user wrote it
        self._text: str | None = None
        self._tables: list[fasttoml.Table] | None = None  # when the quick parser read the text

    # -- what a parser says -------------------------------------------------------------

    def error(
        self, message: str, *, line: int | None, entry: str | None, key: str | None, fix: str
    ) -> InputError:
        """The parser's error for ``message`` at this place in :attr:`source`."""
        raise NotImplementedError

    def entry_name(self, name: str) -> str:
        """What messages call an ``[[table]]`` entry with a valid ``name``."""
        return name

    def directory_fix(self) -> str:
        """The fix when the path is a directory."""
        return self.missing_fix

    def toml_fix(self) -> str:
        """The fix for text tomllib cannot parse."""
        raise NotImplementedError

    # -- reading and parsing --------------------------------------------------------------

    def read(self, path: str | os.PathLike[str]) -> str:
        """The file's text; an error naming it when it is missing, unreadable or not UTF-8."""
        try:
            with open(path, "rb") as file:
                raw = file.read()
        except FileNotFoundError:
            raise self._at_file("no such file", self.missing_fix) from None
        except IsADirectoryError:
            raise self._at_file("is a directory, not a file", self.directory_fix()) from None
        except OSError as exc:
            message = f"cannot read the file ({exc.strerror or exc})"
            raise self._at_file(message, self.unreadable_fix) from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise self._at_file("not UTF-8 text", UTF8_FIX, line=line) from None

    def parse(self, text: str) -> dict[str, Any]:
        """``text`` parsed; an error with the line tomllib names when it is not TOML."""
        self._text = text
        try:
            data, tables = fasttoml.loads(text)
        except fasttoml.Unsupported:
            pass  # tomllib reads it, or says what is wrong
        else:
            self._tables = tables
            return data
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            reason, line = toml_reason(exc, text)
            raise self._at_file(f"not valid TOML: {reason}", self.toml_fix(), line=line) from None
        except RecursionError:
            raise self._at_file(f"not valid TOML: {TOO_DEEP}", TOO_DEEP_FIX) from None

    def _at_file(self, message: str, fix: str, *, line: int | None = None) -> InputError:
        return self.error(message, line=line, entry=None, key=None, fix=fix)

    @cached_property
    def locate(self) -> Locator:
        """Lines of the parsed text's keys, scanned on first use (a file tomllib refuses
        is not scanned unless its fix needs it)."""
        if self._text is None:
            raise RuntimeError("Loader.locate before Loader.parse")
        headers = None
        if self._tables is not None:
            headers = [Header(t.line, t.name, t.array) for t in self._tables if t.name is not None]
        return Locator(self._text, headers)

    def array_lines(self, table: str) -> list[int]:
        """The header line of each ``[[table]]``, in file order. From the quick parser's
        tables when it read the text, so a file without mistakes is never located
        (100,000 tasks: 0.09 s less than building the :class:`Locator`)."""
        if self._tables is None:
            return self.locate.array_lines(table)
        return [t.line for t in self._tables if t.array and t.name == table]

    # -- failing ---------------------------------------------------------------------------

    def fail(
        self,
        message: str,
        *,
        line: int | None,
        fix: str,
        entry: str | None = None,
        key: str | None = None,
    ) -> NoReturn:
        raise self.error(message, line=line, entry=entry, key=key, fix=fix)

    def fail_at(
        self, message: str, *, table: str, index: int | None, key: str, entry: str, fix: str
    ) -> NoReturn:
        """:meth:`fail` at the line of ``key`` in ``[table]`` or the index-th ``[[table]]``."""
        line = self.locate.in_table(table, index, key)
        self.fail(message, line=line, entry=entry, key=key, fix=fix)

    def did_you_mean(self, key: str, valid: Sequence[str]) -> str:
        return did_you_mean(key, valid, self.aliases)

    # -- values and keys ------------------------------------------------------------------

    def check(
        self,
        checker: Callable[[str, object], _T],
        key: str,
        value: object,
        *,
        table: str,
        index: int | None,
        entry: str,
    ) -> _T:
        """``checker(key, value)``, after refusing a NUL anywhere in ``value``; its
        :class:`Invalid` becomes the parser's error at the key's line."""
        try:
            if value.__class__ is not str or NUL in value:  # a plain string: no search
                check_no_nul(value)
            return checker(key, value)
        except Invalid as exc:
            self.fail_at(exc.message, table=table, index=index, key=key, entry=entry, fix=exc.fix)

    def unknown_key(
        self, key: str, valid: Sequence[str], *, table: str, index: int | None, entry: str
    ) -> NoReturn:
        self.fail_at(
            f"unknown key {key!r}",
            table=table,
            index=index,
            key=key,
            entry=entry,
            fix=self.did_you_mean(key, valid),
        )

    def reject_unknown(
        self,
        raw: Mapping[str, object],
        valid: Sequence[str],
        *,
        table: str,
        index: int | None,
        entry: str,
    ) -> None:
        """The first key of ``raw`` that is not in ``valid`` is an error."""
        for key in raw:
            if key not in valid:
                self.unknown_key(key, valid, table=table, index=index, entry=entry)

    def reject_unknown_top_level(
        self,
        data: Mapping[str, object],
        valid: Sequence[str],
        homes: Sequence[tuple[Collection[str], str]],
    ) -> None:
        """A top-level key not in ``valid`` is an error. ``homes`` says where the keys of
        a table go when written at the top: (keys, fix with ``{key}``), first match wins;
        any other key gets "did you mean"."""
        for key in data:
            if key not in valid:
                fix = next((home for keys, home in homes if key in keys), None)
                self.fail(
                    f"unknown top-level key {key!r}",
                    line=self.locate.top_level(key),
                    key=key,
                    fix=self.did_you_mean(key, valid) if fix is None else fix.format(key=key),
                )

    def not_a_default(self, key: str, owner: str) -> NoReturn:
        """``key`` is in ``[defaults]`` but each ``[[owner]]`` has its own."""
        self.fail_at(
            f"{key} cannot be a default: every {owner} has its own",
            table="defaults",
            index=None,
            key=key,
            entry="[defaults]",
            fix=f"move {key} = ... into each [[{owner}]] block",
        )

    def require(
        self,
        raw: Mapping[str, object],
        required: Mapping[str, str],
        *,
        table: str,
        index: int,
        entry: str,
    ) -> None:
        """Each key of ``required`` (key -> example) must be in the index-th ``[[table]]``."""
        for key, example in required.items():
            if key not in raw:
                self.fail(
                    f"missing {key}",
                    line=self.locate.in_table(table, index, None),
                    entry=entry,
                    key=key,
                    fix=f"add {example} to this [[{table}]] block",
                )

    # -- tables --------------------------------------------------------------------------

    def table(
        self, data: Mapping[str, object], table: str, fix: str, *, show_value: bool = True
    ) -> dict[str, Any]:
        """The single ``[table]`` (empty when absent); an error when it is not a table.
        ``show_value`` False leaves the value out of the message (hosts.toml's wording)."""
        raw = data.get(table, {})
        if not isinstance(raw, dict):
            found = toml_type(raw) + (f" ({show(raw)})" if show_value else "")
            self.fail(
                f"expected a table, found {found}",
                line=self.locate.top_level(table),
                entry=f"[{table}]",
                fix=fix,
            )
        return raw

    def array_of_tables(
        self, data: Mapping[str, object], table: str, *, required: bool, fix: str
    ) -> list[Any]:
        """The ``[[table]]`` entries (empty when absent); an error when it is written as
        one ``[table]`` or as a value, or is absent or empty while ``required`` (``fix``
        says what to add)."""
        raw = data.get(table)
        double = f"write [[{table}]] (double brackets) above each {table}'s keys"
        if isinstance(raw, dict):
            self.fail(
                f"[{table}] is a single table, but {table}s are an array of tables",
                line=self.locate.top_level(table),
                key=table,
                fix=double,
            )
        if raw is not None and not isinstance(raw, list):
            self.fail(
                f"expected [[{table}]] tables, found {toml_type(raw)} ({show(raw)})",
                line=self.locate.top_level(table),
                key=table,
                fix=double,
            )
        if not raw and required:
            self.fail(
                f"no {table}s: the file has no [[{table}]] entries",
                line=self.locate.top_level(table),
                key=table,
                fix=fix,
            )
        return raw or []

    def entry_table(self, table: str, index: int, raw: object) -> tuple[dict[str, Any], str]:
        """The index-th ``[[table]]`` entry, and what messages call it: :meth:`entry_name`
        of its name when valid, else ``table #N``. An error when it is not a table."""
        entry = f"{table} #{index + 1}"
        if not isinstance(raw, dict):
            self.fail(
                f"expected a table, found {toml_type(raw)} ({show(raw)})",
                line=self.locate.in_table(table, index, None),
                entry=entry,
                fix=f"write each {table} as a [[{table}]] block of key = value lines",
            )
        name = raw.get("name")
        if isinstance(name, str) and self.name_re.fullmatch(name):
            entry = self.entry_name(name)  # so every later message says which one
        return raw, entry

    def duplicate_name(self, table: str, name: str, first: int, index: int, entry: str) -> NoReturn:
        """The index-th ``[[table]]`` has the name of the first-th."""
        first_line = self.locate.in_table(table, first, "name")
        line = self.locate.in_table(table, index, "name")
        self.fail(
            f"{table} name {name!r} is used twice, at lines {first_line} and {line}",
            line=line,
            entry=entry,
            key="name",
            fix=f'give each [[{table}]] its own name, e.g. name = "{name}-2"',
        )

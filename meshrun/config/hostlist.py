"""Fold host names into clush/pdsh ranges (``h[1-3,5],web``) and expand them back.

The console folds hosts whose output is identical into one line, and people paste
those ranges back into ``--limit``; so :func:`fold` and :func:`expand` are exact
inverses, and zero padding is part of a name (``node01`` is not ``node1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import product

__all__ = ["expand", "fold", "split_groups"]

# The last run of digits: "rack1-node12b" -> ("rack1-node", "12", "b").
_LAST_NUMBER = re.compile(r"(.*?)(\d+)(\D*)")
_RANGE_ITEM = re.compile(r"(\d+)(?:-(\d+))?")
# Names that would read as range syntax are never folded, so expand() never misreads them.
_UNFOLDABLE = frozenset("[],")
# A typo like h[1-1000000000] must not exhaust memory.
MAX_EXPANDED_NAMES = 100_000


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``h9`` before ``h10``; the raw text breaks ties (``h01``/``h1``)."""
    parts = re.split(r"(\d+)", text)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts if p)


def _sort_key(text: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    return (_natural_key(text), text)


def _pad_width(digits: str) -> int:
    """Width a number is padded to, 0 when it is not zero-padded."""
    return len(digits) if len(digits) > 1 and digits.startswith("0") else 0


def _format_ranges(numbers: list[int], width: int) -> str:
    """``[1, 2, 3, 5]`` -> ``1-3,5``, each number zero-padded to ``width``."""
    parts: list[str] = []
    start = prev = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == prev + 1:
            prev = number
            continue
        low, high = str(start).zfill(width), str(prev).zfill(width)
        parts.append(low if start == prev else f"{low}-{high}")
        if number is not None:
            start = prev = number
    return ",".join(parts)


def fold(names: Iterable[str]) -> str:
    """Fold names into ``prefix[ranges]suffix`` groups, sorted naturally, duplicates gone.

    Names are grouped by (prefix, suffix after the last number, pad width). A number
    without a leading zero joins a padded group of its own width when there is one
    (``node09,node10`` -> ``node[09-10]``), as clush does. Names containing ``[``,
    ``]`` or ``,`` are passed through unfolded.
    """
    groups: dict[tuple[str, str, int], set[int]] = {}
    plain: set[str] = set()
    unpadded: list[tuple[str, str, str]] = []
    for name in set(names):
        if not name:
            continue
        match = _LAST_NUMBER.fullmatch(name)
        if match is None or _UNFOLDABLE.intersection(name):
            plain.add(name)
            continue
        prefix, digits, suffix = match.groups()
        width = _pad_width(digits)
        if width:
            groups.setdefault((prefix, suffix, width), set()).add(int(digits))
        else:
            unpadded.append((prefix, digits, suffix))
    for prefix, digits, suffix in unpadded:
        padded_key = (prefix, suffix, len(digits))
        key = padded_key if padded_key in groups else (prefix, suffix, 0)
        groups.setdefault(key, set()).add(int(digits))

    pieces: list[tuple[str, str]] = [(name, name) for name in plain]
    for (prefix, suffix, width), number_set in groups.items():
        numbers = sorted(number_set)
        first = f"{prefix}{str(numbers[0]).zfill(width)}{suffix}"
        if len(numbers) == 1:
            pieces.append((first, first))
        else:
            pieces.append((first, f"{prefix}[{_format_ranges(numbers, width)}]{suffix}"))
    pieces.sort(key=lambda piece: _sort_key(piece[0]))
    return ",".join(text for _, text in pieces)


def split_groups(text: str) -> list[str]:
    """Split at commas outside brackets: ``h[1-3,5],web`` -> ``["h[1-3,5]", "web"]``.

    Empty groups are kept (as ``""``) so the caller decides whether they are an error.
    """
    groups: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            groups.append("".join(current))
            current = []
        else:
            current.append(char)
    groups.append("".join(current))
    return groups


def _expand_ranges(body: str, pattern: str) -> list[str]:
    """``01-03,7`` -> ``["01", "02", "03", "7"]``; the start's padding sets the width."""
    values: list[str] = []
    for item in body.split(","):
        match = _RANGE_ITEM.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"bad range {item!r} in {pattern!r}: expected N or N-M, e.g. h[1-3,5]")
        low_text, high_text = match.group(1), match.group(2) or match.group(1)
        low, high = int(low_text), int(high_text)
        if high < low:
            raise ValueError(f"range {item!r} in {pattern!r} runs backwards; write {high}-{low}")
        if high - low >= MAX_EXPANDED_NAMES:
            raise ValueError(f"range {item!r} in {pattern!r} is too large")
        width = _pad_width(low_text)
        values.extend(str(number).zfill(width) for number in range(low, high + 1))
    return values


def expand(pattern: str) -> list[str]:
    """Expand one group such as ``h[1-3,5]``, ``node[01-03]`` or ``web`` into names.

    Several bracket groups form a cartesian product (``r[1-2]n[1-2]``). Order is as
    written, duplicates dropped. Raises ValueError on malformed input (unbalanced or
    nested brackets, a top-level comma, an empty pattern, a backwards range).
    """
    if not pattern:
        raise ValueError("empty host pattern")
    choices: list[list[str]] = []
    position = 0
    while position < len(pattern):
        opening = pattern.find("[", position)
        literal = pattern[position:] if opening == -1 else pattern[position:opening]
        if "]" in literal or "," in literal:
            bad = "]" if "]" in literal else ","
            raise ValueError(
                f"unexpected {bad!r} in {pattern!r}: expand takes one group such as h[1-3,5]"
            )
        if literal:
            choices.append([literal])
        if opening == -1:
            break
        closing = pattern.find("]", opening)
        if closing == -1:
            raise ValueError(f"unclosed '[' in {pattern!r}")
        body = pattern[opening + 1 : closing]
        if "[" in body:
            raise ValueError(f"nested '[' in {pattern!r}")
        choices.append(_expand_ranges(body, pattern))
        position = closing + 1

    total = 1
    for options in choices:
        total *= len(options)
    if total > MAX_EXPANDED_NAMES:
        raise ValueError(f"{pattern!r} expands to {total} names, more than {MAX_EXPANDED_NAMES}")
    return list(dict.fromkeys("".join(parts) for parts in product(*choices)))

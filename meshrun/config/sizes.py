"""Byte sizes as people write them: ``10G``, ``512MiB``, ``1500``."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str, *, option: str) -> int:
    """``10G`` -> 10737418240 (K/M/G/T are powers of 1024; ``B``/``iB`` optional).

    ValueError naming ``option`` and the accepted forms for anything else.
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{option} {text!r} is not a size: write e.g. 500M, 10G or 1048576")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    """``10737418240`` -> ``10 GiB``; exact multiples only, else bytes."""
    for suffix, unit in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {suffix}"
    return f"{n} bytes"

"""Duration strings users write (``90``, ``30s``, ``15m``, ``1h30m``, ``250ms``) -> seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, *, option: str | None = None) -> float:
    """Seconds in ``text``; a bare number means seconds. Raises ValueError with a hint.

    ``option`` (e.g. ``--timeout``) starts the message, so the user knows which to fix.
    """
    try:
        return _parse(text)
    except ValueError as exc:
        if option:
            raise ValueError(f"{option}: {exc}") from None
        raise


def _parse(text: str | float | int) -> float:
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower().replace(" ", "")
        try:
            seconds = float(raw)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(raw):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
                pos = m.end()
            if pos != len(raw) or not raw:
                raise ValueError(
                    f"not a duration: {text!r} (write e.g. 30s, 15m, 1h30m or a number of seconds)"
                ) from None
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: ``0.41s``, ``12.3s``, ``4m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"

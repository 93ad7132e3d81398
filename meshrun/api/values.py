"""The values a program passes to :class:`meshrun.Fleet`, checked and made typed.

A program may write a duration as seconds (``30``, ``0.5``) or as the CLI's text
(``"30s"``, ``"1h30m"``), a size as bytes or ``"10G"``, a failure budget as a count or
``"10%"``. Anything else is an :class:`~meshrun.errors.InputError` naming the keyword
(``timeout``, ``parallel``...) and what to write instead, raised before any host is
contacted: the same one-line errors the CLI shows for its options.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from meshrun.config.durations import parse_duration
from meshrun.config.sizes import parse_size
from meshrun.errors import InputError
from meshrun.fleet.rollout import FailureBudget, batch_sizes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: A duration: seconds, or text as the CLI takes it ("30s", "5m", "1h30m", "250ms").
Duration: TypeAlias = float | int | str
#: A path a program names a file by.
PathLike: TypeAlias = str | os.PathLike[str]
#: ``sign_key=``: an Ed25519 private key file (OpenSSH format), or the key itself.
SignKey: TypeAlias = "PathLike | Ed25519PrivateKey"

#: What turns keepalives off (``server_alive_interval=0``), as ssh's ServerAliveInterval 0.
_OFF = ("0", "0s", "none", "off")

#: The CLI option a parser's message starts with (``--timeout: ``, ``timeout: ``).
_CLI_OPTION = re.compile(r"^(--)?[a-z][a-z_-]*: ")


def _input(option: str, exc: ValueError) -> InputError:
    """The parsers' error (which says what to write) under the keyword's name, not the
    CLI option's: ``--max-fail: 'x' is not...`` becomes ``max_fail: 'x' is not...``."""
    message = _CLI_OPTION.sub("", str(exc), count=1)
    return InputError(f"{option}: {message}")


def seconds(value: Duration | None, option: str) -> float | None:
    """``value`` in seconds (None stays None); InputError naming ``option`` for text
    that is no duration, a number that is not positive and finite, or another type."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise InputError(
                f"{option}: a duration must be a positive number of seconds, got {value!r}",
                fix="pass e.g. 30 or '30s'",
            )
        return float(value)
    if not isinstance(value, str):
        raise InputError(
            f"{option}: a duration is seconds or text like '30s', got {type(value).__name__}",
            fix="pass e.g. 30 or '30s'",
        )
    try:
        return parse_duration(value, option=option)
    except ValueError as exc:
        raise _input(option, exc) from None


def interval(value: Duration | None, option: str) -> float | None:
    """A keepalive interval: like :func:`seconds`, and 0 (or ``"off"``) turns it off."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in _OFF:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    return seconds(value, option)


def count(value: int | None, option: str, *, least: int) -> int | None:
    """A whole number of at least ``least`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(
            f"{option}: a whole number is needed, got {value!r}", fix=f"pass {least} or more"
        )
    if value < least:
        raise InputError(
            f"{option} must be at least {least}, got {value}", fix=f"pass {least} or more"
        )
    return value


def size(value: int | str, option: str) -> int:
    """Bytes: a number, or text like ``"500M"``/``"10G"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InputError(
                f"{option}: a size cannot be negative, got {value}", fix="pass 0 or more"
            )
        return value
    if not isinstance(value, str):
        raise InputError(f"{option}: a size is bytes or text like '10G', got {value!r}")
    try:
        return parse_size(value, option=option)
    except ValueError as exc:  # its message starts with the option's name
        raise InputError(str(exc)) from None


def env(value: Mapping[str, str] | None, option: str = "env") -> dict[str, str]:
    """Environment variables for the command: names as the shell takes them, text
    values (a NUL in either is refused by the job itself)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(
            f"{option}: a mapping of names to values is needed, got {type(value).__name__}",
            fix="pass e.g. env={'RELEASE': 'v42'}",
        )
    for key, text in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InputError(
                f"{option}: {key!r} is not a variable name",
                fix="use letters, digits and underscores, not starting with a digit",
            )
        if not isinstance(text, str):
            raise InputError(f"{option}: the value of {key} is not text: {text!r}")
    return dict(value)


def batches(
    value: str | Sequence[int] | None, host_count: int, option: str = "batch"
) -> list[int] | None:
    """Rolling batch sizes: the CLI's text (``"1,25%,100%"``: the last size repeats) or
    a list of host counts."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return batch_sizes(value, host_count)
        except ValueError as exc:
            raise _input(option, exc) from None
    sizes = list(value)
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise InputError(
            f"{option}: batch sizes are host counts of at least 1, got {value!r}",
            fix="pass e.g. [1, 5, 100] or '1,25%,100%'",
        )
    return sizes


def budget(
    value: int | str | FailureBudget | None, option: str = "max_fail"
) -> FailureBudget | None:
    """A failure budget: a count of hosts, or text (``"3"``, ``"10%"``)."""
    if value is None or isinstance(value, FailureBudget):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(f"{option}: a count or a percentage is needed, got {value!r}")
    try:
        return FailureBudget.parse(str(value))
    except ValueError as exc:
        raise _input(option, exc) from None


def limits(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``limit=``: one pattern (``"web*"``, ``"label:db"``, commas = any of) or several
    that must all hold, as repeated ``--limit`` options."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def signing_key(value: SignKey | None) -> Ed25519PrivateKey | None:
    """``sign_key=``: a key file is read now (InputError naming it when it cannot be);
    a loaded key is used as is."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        from meshrun.integrity.signing import load_private_key

        return load_private_key(Path(value))
    return value

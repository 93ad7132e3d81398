"""The error-case table shared by the config loaders' tests (hosts.toml, tasks.toml).

Both files are read by one TOML loader, so a mistake in either is reported the same
way: ``SOURCE[:LINE]: [ENTRY: ][KEY: ]message``, a fix, and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshrun.errors import InputError


@dataclass(frozen=True)
class ErrorCase:
    id: str
    toml: str
    line: int | None
    entry: str | None  # "task 'a'", "task #2", "[defaults]", "[sync]", a host, or None
    key: str | None
    says: str  # in the message
    fix: str  # in the fix


def assert_points_at(error: InputError, case: ErrorCase, source: str) -> str:
    """Assert what every config error says: where (``source`` and the case's line) at the
    start, the case's words in the message and its fix, exit code 2. Returns the
    ``SOURCE[:LINE]`` prefix."""
    text = str(error)
    where = source + (f":{case.line}" if case.line is not None else "")
    assert text.startswith(where + ":"), f"expected {where!r} at the start of {text!r}"
    assert case.says in error.message, f"expected {case.says!r} in {error.message!r}"
    assert error.fix is not None and case.fix in error.fix, (
        f"expected {case.fix!r} in fix {error.fix!r}"
    )
    assert error.exit_code == 2
    return where

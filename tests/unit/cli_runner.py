"""Run ``meshrun`` in-process, as its console script would, and capture what it says."""

from __future__ import annotations

import sys

import pytest

from meshrun.cli import app as cli


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    columns: int | None = None,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``meshrun ARGS``; ``columns`` fixes the help width."""
    if columns is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "argv", ["meshrun", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    code = info.value.code
    assert code is None or isinstance(code, int), f"exit code {code!r}"
    return code or 0, out, err

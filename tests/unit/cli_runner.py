"""Run ``meshrun`` in-process, as its console script would, and capture what it says;
or in a fresh Python process (``run_cli_process``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


#: ``python -c ENTRY ARGS`` is ``meshrun ARGS`` without the installed console script.
ENTRY = "from meshrun.cli.app import main; main()"


def run_cli_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``meshrun ARGS`` in a fresh Python process in ``cwd``, its output captured."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

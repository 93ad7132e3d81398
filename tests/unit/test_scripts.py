"""The README's set-up commands keep working with Debian's own python3 (PEP 668).

Running them from a fresh clone takes minutes and the network (done by hand; see the
README), so this checks what they must and must not do: Python packages go into the
project's virtual environment, never into the system Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SET_UP = ["demo", "test"]


def text(name: str) -> str:
    return (SCRIPTS / name).read_text()


def code_lines(source: str) -> list[str]:
    """The lines that run: comments and blank lines dropped."""
    lines = (line.split(" #")[0].strip() for line in source.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("path", [*SCRIPTS.iterdir(), REPO / ".ci" / "run"], ids=str)
def test_no_script_overrides_the_system_pythons_protection(path: Path) -> None:
    assert "--break-system-packages" not in path.read_text()
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in path.read_text()


@pytest.mark.parametrize("name", SET_UP)
def test_set_up_scripts_make_and_use_the_project_venv(name: str) -> None:
    lines = code_lines(text(name))
    assert ". scripts/lib.sh" in lines, f"scripts/{name} does not load scripts/lib.sh"
    uses = [i for i, line in enumerate(lines) if line.startswith("use_venv")]
    assert uses, f"scripts/{name} never calls use_venv"
    # Nothing Python runs before the venv is in place, and nothing installs outside it.
    before = lines[: uses[0]]
    assert not [line for line in before if re.search(r"\b(pip|pytest|meshrun|PY)\b", line)]
    assert not [line for line in lines if re.search(r"\bpip\b", line)], "pip outside lib.sh"
    after = "\n".join(lines[uses[0] :])
    assert "python3 " not in after, "a bare python3 after use_venv is the system one"


def test_the_venv_helper() -> None:
    lines = code_lines(text("lib.sh"))
    body = "\n".join(lines)
    assert '"$base" -m venv --clear "$venv"' in lines
    assert 'export PATH="$VIRTUAL_ENV/bin:$PATH"' in lines
    assert 'PY="$VIRTUAL_ENV/bin/python"' in lines
    # pip runs only as the venv's own python.
    pips = [line for line in lines if re.search(r"\bpip\b", line) and "install" in line]
    assert pips and all(line.startswith('"$PY" -m pip install') for line in pips), pips
    assert "apt_install python3-venv" in body  # Debian's venv has no ensurepip without it
    assert "${PYTHON:-python3}" in body  # PYTHON=... still picks the interpreter


def test_test_script_installs_the_test_needs_and_checks_from_the_venv() -> None:
    lines = code_lines(text("test"))
    body = "\n".join(lines)
    for package in ("openssh-server", "openssh-client", "rsync", "procps", "iproute2"):
        assert package in body
    assert "use_venv test,fabric" in lines  # tests/*/test_fabric_*.py need Fabric
    assert 'PYTHON="$PY" scripts/check' in lines
    assert any(line.startswith('"$PY" -m pytest') for line in lines)


def test_ci_runs_the_readme_test_command_as_a_new_user_would() -> None:
    """The README's test command, in a bare environment with the system's python3."""
    lines = code_lines((REPO / ".ci" / "run").read_text())
    assert lines[-1] == "scripts/test"
    assert any(line.startswith("env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ") for line in lines)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_scripts_are_valid_bash() -> None:
    for name in ["demo", "test", "check", "fleet", "lib.sh"]:
        r = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True)
        assert r.returncode == 0, f"scripts/{name}: {r.stderr}"

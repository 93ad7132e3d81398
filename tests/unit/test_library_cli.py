"""The CLI is built on ``meshrun.Fleet``: its commands make one call each through it,
closing each host's connection when done (``keep_connections=False``), and keep their
own option names in messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli

import meshrun
from meshrun.api.fleet import Fleet


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Fleet, dict[str, Any]]]:
    """Every Fleet call the CLI makes: (method, fleet, keyword arguments)."""
    seen: list[tuple[str, Fleet, dict[str, Any]]] = []
    for name in ("run", "script", "probe", "dispatch"):
        original = getattr(Fleet, name)

        def spy(self: Fleet, *args: Any, _name: str = name, _f: Any = original, **kw: Any) -> Any:
            seen.append((_name, self, kw))
            return _f(self, *args, **kw)

        monkeypatch.setattr(Fleet, name, spy)
    return seen


def test_exec_and_run_go_through_one_fleet_call_each(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    calls: list[tuple[str, Fleet, dict[str, Any]]],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(monkeypatch, capsys, "exec", "--json", "-t", "30s", "--", "echo", "hi")
    assert code == 0
    assert json.loads(out)["hosts"][0]["stdout"] == "hi\n"
    (tmp_path / "s.sh").write_text("echo from script\n")
    code, out, _ = run_cli(monkeypatch, capsys, "run", "--json", "s.sh")
    assert code == 0 and json.loads(out)["command"] == "s.sh"
    assert [(name, kw.get("timeout")) for name, _, kw in calls] == [("run", 30.0), ("script", None)]
    assert all(fleet._keep is False for _, fleet, _ in calls)
    assert all(fleet._connector is None for _, fleet, _ in calls)  # closed by the with


def test_hosts_and_dispatch_go_through_the_fleet(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    calls: list[tuple[str, Fleet, dict[str, Any]]],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(monkeypatch, capsys, "hosts", "--json")
    assert code == 0
    (tmp_path / "tasks.toml").write_text('[[task]]\nname = "a"\nrun = "exit 3"\n')
    code, out, _ = run_cli(monkeypatch, capsys, "dispatch", "tasks.toml", "--json")
    assert code == 1
    assert json.loads(out)["tasks"][0]["exit_code"] == 3
    assert [name for name, _, _ in calls] == ["probe", "dispatch"]
    dispatched = calls[1][1]
    assert dispatched.hosts == (meshrun.local_host(str(tmp_path)),)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dispatch", "tasks.toml", "--max-fail", "-1"], "--max-fail must be 0 or more"),
        (["exec", "--timeout", "0", "--", "true"], "--timeout: a duration must be positive"),
        (["exec", "--pull-max-bytes", "x", "--pull", "a", "--", "true"], "--pull-max-bytes"),
    ],
)
def test_the_cli_names_its_own_options(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks.toml").write_text('[[task]]\nname = "a"\nrun = "true"\n')
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err

"""--server-alive-interval / --server-alive-count-max: parsed, checked, passed on, and
ranked against ssh_config (the option wins, then ssh_config, then 5 s x 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli

import meshrun
from meshrun.config.inventory import Host
from meshrun.transport.ssh import SSHConnector


@pytest.mark.parametrize("command", ["exec", "run", "hosts", "dispatch"])
def test_help_names_both_options_and_their_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, command, "--help", columns=200)
    assert code == 0
    text = " ".join(out.split())  # help wraps at any width
    assert "--server-alive-interval DURATION" in text
    assert "--server-alive-count-max N" in text
    assert "ServerAliveInterval in ssh_config, else 5s" in text
    assert "ServerAliveCountMax in ssh_config, else 3" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--server-alive-interval", "soon"], "--server-alive-interval"),
        (["--server-alive-interval", "-1"], "--server-alive-interval"),
        (["--server-alive-count-max", "-1"], "--server-alive-count-max must be 0 or more"),
    ],
)
def test_bad_values_exit_2_before_any_host_is_contacted(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "exec", "-H", "h1", *args, "--", "true")
    assert (code, out) == (2, ""), err
    assert fragment in err, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], (None, None)),
        (["--server-alive-interval", "2s", "--server-alive-count-max", "1"], (2.0, 1)),
        (["--server-alive-interval", "0"], (0.0, None)),  # off, as in ssh_config
    ],
)
def test_the_values_reach_the_connector(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: tuple[float | None, int | None],
) -> None:
    seen: dict[str, Any] = {}

    def connector(hosts: list[Host], **kw: Any) -> meshrun.Connector:
        seen.update(kw)
        raise meshrun.InputError("stop here")

    # meshrun.Fleet (what the CLI runs through) makes its connector here.
    monkeypatch.setattr(meshrun.transport, "default_connector", connector)
    code, _, _ = run_cli(monkeypatch, capsys, "exec", "-H", "h1", *args, "--", "true")
    assert code == 2
    assert (seen["server_alive_interval_s"], seen["server_alive_count_max"]) == expected


def _endpoint(tmp_path: Path, config: str, **kw: Any) -> tuple[float, int]:
    path = tmp_path / "ssh_config"
    path.write_text(config)
    ep = SSHConnector(ssh_config_path=str(path), **kw).endpoint(Host(name="web1"))
    return ep.server_alive_interval_s, ep.server_alive_count_max


def test_defaults_are_five_seconds_and_three(tmp_path: Path) -> None:
    assert _endpoint(tmp_path, "") == (5.0, 3)


def test_ssh_config_wins_over_the_defaults(tmp_path: Path) -> None:
    config = "Host web*\n  ServerAliveInterval 9\n  ServerAliveCountMax 4\n"
    assert _endpoint(tmp_path, config) == (9.0, 4)


def test_the_options_win_over_ssh_config(tmp_path: Path) -> None:
    config = "Host web*\n  ServerAliveInterval 9\n  ServerAliveCountMax 4\n"
    got = _endpoint(tmp_path, config, server_alive_interval_s=1.5, server_alive_count_max=2)
    assert got == (1.5, 2)

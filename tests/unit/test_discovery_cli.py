"""`meshrun agent`, `meshrun discover` and --discover: help, bad options, import cost.

Nothing here sends a packet: every case fails on its options before zeroconf starts.
The real thing (agents and browsers on 127.0.0.1) is in tests/integration.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli as shared_run_cli

from meshrun.cli import app as cli


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    return shared_run_cli(monkeypatch, capsys, *args, columns=100)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "agent",
            [
                "--name NAME",
                "--slots N",
                "--labels L1,L2",
                "--ssh-port PORT",
                "--user USER",
                "--workdir DIR",
                "--host-key PUBFILE",
                "--interface ADDR",
                "meshrun agent --slots 8 --labels linux,x86_64",
                "SIGTERM or Ctrl-C sends goodbye packets",
            ],
        ),
        (
            "discover",
            [
                "-t, --timeout DURATION",
                "--interface ADDR",
                "--labels L1,L2",
                "--json",
                "--write FILE",
                "meshrun discover --write hosts.toml",
            ],
        ),
        (
            "exec",
            [
                "--discover ",
                "--discover-timeout DURATION",
                "--interface ADDR",
                "--user USER",
                "--identity KEY",
                "--known-hosts FILE",
            ],
        ),
        ("run", ["--discover ", "--discover-timeout DURATION", "--known-hosts FILE"]),
    ],
)
def test_help_lists_the_discovery_options(
    command: str,
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, command, "--help")
    assert (code, err) == (0, ""), err
    missing = [text for text in expected if text not in out]
    assert not missing, f"`meshrun {command} --help` lacks {missing}:\n{out}"


def test_top_level_help_lists_agent_and_discover(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert "\n  agent " in out and "\n  discover " in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["exec", "--user", "ci", "--", "true"],
            "--user only applies to agents found with --discover",
        ),
        (
            ["run", "--identity", "k", "x.sh"],
            "--identity only applies to agents found with --discover",
        ),
        (["exec", "--interface", "lo", "true"], "--interface only applies"),
        (["exec", "--discover-timeout", "3s", "true"], "--discover-timeout only applies"),
        (["exec", "--known-hosts", "kh", "true"], "--known-hosts only applies"),
        (
            ["exec", "--discover", "--discover-timeout", "soon", "true"],
            "--discover-timeout: not a duration: 'soon'",
        ),
        (
            ["exec", "--discover", "--interface", "10.255.255.254", "true"],
            "--interface 10.255.255.254: no interface of this machine has that address",
        ),
        (["discover", "--interface", "::1"], "--interface ::1: IPv6 is not supported yet"),
        (["discover", "--interface", "nosuch0"], "not an IPv4 address or interface name"),
        (["discover", "--timeout", "0"], "a duration must be positive"),
        (["agent", "--host-key", "/nonexistent.pub"], "--host-key /nonexistent.pub: no such file"),
        (["agent", "--name", "bad name"], "--name: name 'bad name' is not"),
        (["agent", "--labels", "ok,b@d"], "--labels: label 'b@d' is not"),
        (["agent", "--slots", "0"], "--slots 0 is out of range 1..1024"),
        (["agent", "--ssh-port", "0"], "--ssh-port 0 is out of range"),
        (["agent", "--workdir", "relative"], "--workdir: workdir 'relative' is neither"),
        (["agent", "--user", "a b"], "--user: user 'a b' is not a login name"),
        (["agent", "--interface", "10.255.255.254"], "no interface of this machine"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pub = tmp_path / "key.pub"
    pub.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGogvcszjUQdIKzf5qbVAtEqGLkuQUKAWWnZBA5uwxyG\n"
    )
    if args[0] == "agent" and "--host-key" not in args:
        args = [*args, "--host-key", str(pub)]
    if args[0] == "run":
        (tmp_path / "x.sh").write_text("true\n")
        monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, f"expected exit 2, got {code}: {err}"
    assert message in err, err
    assert out == ""


def test_agent_slots_must_be_a_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "agent", "--slots", "many")
    assert code == 2 and "--slots: invalid int value: 'many'" in err, err


def test_discover_parses_its_options() -> None:
    parsed = cli._parse_discover(
        ["--interface", "127.0.0.1", "--labels", "a,b", "--labels", "c", "-t", "1s", "--json"]
    )
    assert parsed["interface"] == ["127.0.0.1"] and parsed["timeout"] == "1s"
    assert cli._labels(parsed["labels"]) == ["a", "b", "c"]
    assert parsed["json_out"] is True and parsed["write"] is None


def test_exec_folds_the_discovery_options() -> None:
    parsed = cli._parse_exec(
        ["--discover", "--interface", "lo", "--user", "ci", "-l", "label:gpu", "--", "nproc"]
    )
    assert parsed["command"] == ["nproc"]
    discovery = parsed["discovery"]
    assert (discovery.enabled, discovery.interfaces, discovery.user) == (True, ["lo"], "ci")
    assert cli._parse_exec(["uptime"])["discovery"].enabled is False


def test_only_discovery_commands_import_zeroconf() -> None:
    code = (
        "import sys\n"
        "from meshrun.cli import app as cli\n"
        "for argv in (['exec', '--help'], ['run', '--help'], ['exec', 'true']):\n"
        "    try:\n"
        "        cli._main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('zeroconf' in sys.modules, 'meshrun.discovery' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()[-1]
    assert out == "False False", "zeroconf must load only for agent, discover and --discover"

"""What people expect of a command line: --version, python -m, shell completion, a
progress line that fits the terminal, an ETA, and NO_COLOR as no-color.org says."""

from __future__ import annotations

import fcntl
import importlib.metadata
import io
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from cli_runner import run_cli
from fake_console import Clock, Tty

from meshrun.cli import app as cli
from meshrun.cli.console import (
    DispatchConsole,
    FleetConsole,
    colour_enabled,
    fit,
    terminal_width,
)
from meshrun.fleet.run import HostFinished, HostResult, HostStarted, HostStatus, RunStopping

ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


# -- --version, python -m meshrun ------------------------------------------------------------


def test_version_option_prints_the_installed_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = importlib.metadata.version("meshrun")
    assert run_cli(monkeypatch, capsys, "--version") == (0, f"meshrun {installed}\n", "")
    assert run_cli(monkeypatch, capsys, "version") == (0, f"meshrun {installed}\n", "")


def test_version_option_takes_no_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "--version", "now")
    assert (code, out) == (2, "") and "unrecognized arguments: now" in err


def test_python_dash_m_meshrun_is_the_command(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshrun", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    version = run("--version")
    assert (version.returncode, version.stdout) == (
        0,
        f"meshrun {importlib.metadata.version('meshrun')}\n",
    ), version.stderr
    echo = run("exec", "--", "echo", "hi")
    assert (echo.returncode, echo.stdout) == (0, "local | hi\n"), echo.stderr
    assert run("no-such-command").returncode == 2


def test_start_up_imports_neither_shtab_nor_fabric_nor_metadata() -> None:
    code = (
        "import sys\n"
        "from meshrun.cli import app as cli\n"
        "for argv in (['--help'], ['exec', '--help'], ['dispatch', '--help']):\n"
        "    try:\n"
        "        cli._main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "mods = ('shtab', 'fabric', 'importlib.metadata')\n"
        "print(' '.join(m for m in mods if m in sys.modules), file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert r.stderr.strip() == "", f"imported on every start: {r.stderr.strip()}"


# -- completion ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_covers_every_command_and_option(
    shell: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, script, err = run_cli(monkeypatch, capsys, "completion", shell)
    assert (code, err) == (0, "")
    for name, command in cli._COMMANDS.items():
        assert name in script, f"{shell}: command {name} missing"
        for action in command.build()._actions:
            for option in action.option_strings:
                if option.startswith("--"):
                    written = f"-l {option[2:]}" if shell == "fish" else option
                    assert written in script, f"{shell}: {name} {option} missing"
    assert ("-l version" if shell == "fish" else "--version") in script


def test_completion_refuses_other_shells(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "completion", "tcsh")
    assert (code, out) == (2, "") and "invalid choice: 'tcsh'" in err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_choices_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, script, _ = run_cli(monkeypatch, capsys, "completion", "bash")
    (tmp_path / "completion.bash").write_text(script)
    (tmp_path / "hosts.toml").write_text("")
    driver = r"""
source ./completion.bash
fn=$(complete -p meshrun | sed -E 's/.*-F ([^ ]+).*/\1/')
t() {
  COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
  "$fn" meshrun "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
  echo "${COMPREPLY[*]}"
}
t meshrun di
t meshrun exec --pull
t meshrun dispatch -o ''
t meshrun completion ''
t meshrun run --hosts hosts.t
"""
    r = subprocess.run(
        ["bash", "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "discover dispatch",
        "--pull --pull-dir --pull-max-bytes",
        "group stream none",
        "bash zsh fish",
        "hosts.toml",
    ], r.stderr


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_parse(
    shell: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    _, script, _ = run_cli(monkeypatch, capsys, "completion", shell)
    path = tmp_path / f"meshrun.{shell}"
    path.write_text(script)
    r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# -- NO_COLOR --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "colour"), [(None, True), ("", True), ("1", False), ("0", False)]
)
def test_only_a_non_empty_no_color_disables_colour(
    value: str | None, colour: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TERM", raising=False)
    if value is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", value)
    assert colour_enabled(Tty()) is colour
    err = Tty()
    console = FleetConsole(host_names=["h1"], out=io.StringIO(), err=err, progress=False)
    console(RunStopping("fail-fast: stopping"))
    assert ("\x1b[" in err.getvalue()) is colour


# -- the status line fits the terminal ---------------------------------------------------------


def visible(text: str) -> str:
    return ESCAPE.sub("", text)


def status_lines(err: str) -> list[str]:
    """Every status line drawn: what follows each carriage return and erase."""
    return [part.split("\n")[0] for part in err.split("\r\x1b[K")[1:] if part]


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("short", 80, "short"),
        ("abcdef", 4, "abc…"),
        ("abcdef", 6, "abcdef"),
        ("abcdef", 0, ""),
        ("\x1b[1mbold\x1b[0m text", 6, "\x1b[1mbold\x1b[0m \x1b[0m…"),
        ("\x1b[1mbold\x1b[0m", 4, "\x1b[1mbold\x1b[0m"),  # escapes take no room
        ("日本語のホスト", 7, "日本語…"),  # wide characters take two columns
        ("e\u0301e\u0301e\u0301", 3, "e\u0301e\u0301e\u0301"),  # combining ones none
    ],
)
def test_fit_counts_what_the_terminal_shows(text: str, width: int, expected: str) -> None:
    assert fit(text, width) == expected


def test_terminal_width_asks_the_terminal_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 57, 0, 0))
        with open(slave, "w", closefd=False) as tty:
            assert terminal_width(tty) == 57
    finally:
        os.close(master)
        os.close(slave)
    assert terminal_width(io.StringIO()) == 132  # not a terminal: COLUMNS
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 80


LONG = [f"build-host-{i:02d}.rack-{i % 4}.eu-west-1.compute.internal.example.com" for i in range(9)]


def test_fleet_status_line_never_wider_than_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    err = io.StringIO()
    console = FleetConsole(host_names=LONG, out=io.StringIO(), err=err, progress=True)
    for name in LONG:
        console(HostStarted(name))
    console(HostFinished(HostResult(LONG[0], HostStatus.OK, exit_code=0, duration_s=2.0)))
    lines = status_lines(err.getvalue())
    assert len(lines) == len(LONG) + 1
    assert all(len(visible(line)) < 80 for line in lines), lines
    # The first name is cut so that the count of the others still shows.
    assert lines[-1].startswith("meshrun: 1/9 done · ETA ") and lines[-1].endswith("…, +7 more")


def test_dispatch_status_line_never_wider_than_the_terminal_and_keeps_the_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshrun.dispatch.executor import Progress, TaskStarted

    monkeypatch.setenv("COLUMNS", "80")
    err = io.StringIO()
    console = DispatchConsole(total=40, out=io.StringIO(), err=err, progress=True)
    for name in LONG:
        console(TaskStarted(name, "h1", 1))
    console(Progress(3, 40, 1, (("h1", len(LONG)),), 95.0))
    (line,) = status_lines(err.getvalue())
    assert len(visible(line)) < 80, line
    assert line.startswith("meshrun: 3/40 done · 1 failed · ETA 1m35s · running: "), line


# -- ETA of exec and run -------------------------------------------------------------------------


def finished(name: str, seconds: float, status: HostStatus = HostStatus.OK) -> HostFinished:
    return HostFinished(HostResult(name, status, exit_code=0, duration_s=seconds))


def test_fleet_eta_from_the_hosts_that_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    clock = Clock()
    err = io.StringIO()
    names = [f"h{i}" for i in range(1, 7)]
    console = FleetConsole(host_names=names, out=io.StringIO(), err=err, progress=True, clock=clock)
    console(HostStarted("h1"))
    console(HostStarted("h2"))  # two at a time: four wait
    assert console.eta_s() is None  # nothing ended yet: no data, no ETA
    assert "ETA" not in err.getvalue()
    clock.now += 10
    console(finished("h1", 10.0))
    console(HostStarted("h3"))
    # h2 has 0s left of the typical 10s, h3 10s; h4-h6 wait: 10 + 30 = 40s over 2 at once.
    assert console.eta_s() == pytest.approx(20.0)
    assert status_lines(err.getvalue())[-1].startswith("meshrun: 1/6 done · ETA 20s")
    clock.now += 4
    console(finished("h2", 14.0))  # median of 10 and 14: the upper one, 14
    console(HostStarted("h4"))
    # h3 has 10s left of 14, h4 14s; h5 and h6 wait: 10 + 14 + 28 = 52 over 2.
    assert console.eta_s() == pytest.approx(26.0)


def test_fleet_eta_waits_for_a_slot_and_ends_with_the_slowest_host() -> None:
    clock = Clock()
    console = FleetConsole(
        host_names=["a", "b", "c"], out=io.StringIO(), err=io.StringIO(), clock=clock
    )
    console(HostStarted("a"))
    clock.now += 2
    console(HostStarted("b"))
    clock.now += 3
    console(finished("a", 5.0))
    # b has 2s left of the typical 5s; c waits: (2 + 5) / 2 at once would be 3.5s, but
    # c starts no sooner than a slot frees and then takes 5s: 2 + 5.
    assert console.eta_s() == pytest.approx(7.0)
    console(HostStarted("c"))
    clock.now += 1
    # b has 1s left, c 4s: the slower one ends last, whatever the average.
    assert console.eta_s() == pytest.approx(4.0)


def test_fleet_eta_is_unknown_when_every_running_host_overran() -> None:
    clock = Clock()
    console = FleetConsole(host_names=["a", "b"], out=io.StringIO(), err=io.StringIO(), clock=clock)
    console(HostStarted("a"))
    console(HostStarted("b"))
    clock.now += 1
    console(finished("a", 1.0))
    clock.now += 5  # b runs 6s where the typical host took 1s
    assert console.eta_s() is None


def test_fleet_eta_ignores_unreachable_hosts_and_stops_counting_after_a_stop() -> None:
    clock = Clock()
    names = ["a", "b", "c", "d"]
    console = FleetConsole(host_names=names, out=io.StringIO(), err=io.StringIO(), clock=clock)
    console(HostStarted("a"))
    console(HostStarted("b"))
    clock.now += 1
    console(finished("a", 1.0, HostStatus.UNREACHABLE))
    assert console.eta_s() is None  # an unreachable host says nothing about durations
    clock.now += 3
    console(finished("b", 4.0, HostStatus.FAILED))
    assert console.eta_s() == pytest.approx(4.0)  # c and d: 8s over 2 at once, >= 4s
    console(RunStopping("fail-fast: stopping"))
    assert console.eta_s() is None  # nothing more starts and nothing runs

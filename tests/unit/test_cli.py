"""The argparse CLI: help, what each command parses, usage errors and exit codes.

Parsing and errors run in-process through ``meshrun.cli.app.main``; commands that really run
something (on this machine, no --hosts) run as a subprocess.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli, run_cli_process

import meshrun
from meshrun.cli import app as cli

# -- help ------------------------------------------------------------------------------------

FLEET_OPTIONS = [
    "-H, --hosts FILE|LIST",
    "-l, --limit PATTERN",
    "-p, --parallel N",
    "--batch SIZES",
    "--max-fail N|P%",
    "--fail-fast",
    "-t, --timeout DURATION",
    "--connect-timeout DURATION",
    "-e, --env K=V",
    "-o, --output <stream|group|fold>",
    "--pull GLOB",
    "--pull-dir DIR",
    "--pull-max-bytes SIZE",
    "--progress-interval DURATION",
    "--sign-key KEY",
    "--state-dir DIR",
    "--json",
    "-q, --quiet",
    "-v, --verbose",
    "--accept-new-host-keys",
    "-h, --help",
]

HELP: dict[str, tuple[list[str], list[str]]] = {
    "exec": (
        ["COMMAND...", *FLEET_OPTIONS],
        [
            "Run a command on every selected host, in parallel.",
            "Examples:",
            "  meshrun exec --hosts hosts.toml -- uptime",
            "  meshrun exec -H hosts.toml -l 'web*' -o fold -- 'df -h / | tail -1'",
            "  meshrun exec -- echo hi            # no --hosts: this machine",
            "  meshrun exec -H hosts.toml --pull 'logs/*.log' -- ./selftest",
        ],
    ),
    "run": (
        ["SCRIPT", "ARGS", *FLEET_OPTIONS],
        [
            "Upload a local script to every selected host and run it there, with ARGS.",
            "Examples:",
            "  meshrun run --hosts hosts.toml deploy.sh v42",
            "  meshrun run -H hosts.toml --batch 1,25%,100% --max-fail 0 deploy.sh",
            "  meshrun run --hosts hosts.toml --pull 'logs/*.log' --pull '?core*' collect.sh",
        ],
    ),
    "hosts": (
        [
            "-H, --hosts FILE|LIST",
            "-l, --limit PATTERN",
            "--json",
            "--connect-timeout DURATION",
            "-v, --verbose",
            "--accept-new-host-keys",
            "-h, --help",
        ],
        ["Check every selected host: reachable, login ok"],
    ),
    "dispatch": (
        [
            "TASKS.toml",
            "-H, --hosts FILE|LIST",
            "-l, --limit PATTERN",
            "--fail-fast",
            "--keep-going",
            "--max-fail N",
            "-t, --timeout DURATION",
            "--rerun-failed",
            "--resume RUN_ID",
            "--state-dir DIR",
            "--no-sync",
            "--workdir-max-age DURATION",
            "--no-agent",
            "--junit FILE",
            "--trace FILE",
            "--progress-interval DURATION",
            "--pull-max-bytes SIZE",
            "-o, --output <group|stream|none>",
            "--json",
            "--connect-timeout DURATION",
            "-q, --quiet",
            "-v, --verbose",
            "--accept-new-host-keys",
            "-h, --help",
        ],
        [
            "Spread a graph of tasks over the hosts; one exit code for the whole run.",
            "Examples:",
            "  meshrun dispatch tasks.toml --hosts agents.toml",
            "  meshrun dispatch tasks.toml -H agents.toml --junit junit.xml --json",
            "  meshrun dispatch tasks.toml --rerun-failed",
        ],
    ),
    "history": (
        ["TASKS.toml", "--state-dir DIR", "--json", "-h, --help"],
        ["Show the learned duration of each task of TASKS.toml (what the scheduler expects)."],
    ),
    "version": (["-h, --help"], ["Print meshrun's version."]),
    "completion": (
        ["SHELL", "-h, --help"],
        [
            "Print a shell completion script for bash, zsh or fish.",
            "  meshrun completion bash > ~/.local/share/bash-completion/completions/meshrun",
            "  meshrun completion fish > ~/.config/fish/completions/meshrun.fish",
        ],
    ),
}


@pytest.mark.parametrize("command", list(HELP))
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_option_and_the_examples(
    command: str, flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run_cli(monkeypatch, capsys, command, flag)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"usage: meshrun {command} [OPTIONS]"), out
    options, texts = HELP[command]
    lines = out.splitlines()
    missing = [o for o in options if not any(line.lstrip().startswith(o) for line in lines)]
    assert not missing, f"help of {command} lacks {missing}:\n{out}"
    missing = [t for t in texts if t not in out]
    assert not missing, f"help of {command} lacks {missing}:\n{out}"


def test_every_option_has_help_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for command in HELP:
        _, out, _ = run_cli(monkeypatch, capsys, command, "--help")
        lines = out.splitlines()
        for line, after in zip(lines, [*lines[1:], ""], strict=True):
            if line.startswith("  -"):
                # "  -x, --long METAVAR   help", or the help on the next line, indented.
                has_help = "  " in line.strip() or after.startswith(" " * 10)
                assert has_help, f"{command}: option without help: {line!r}"


def test_help_names_defaults_and_the_env_var(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(monkeypatch, capsys, "exec", "--help")
    assert "[env var: MESHRUN_HOSTS]" in out
    assert "ConnectTimeout in ssh_config, else 10s]" in out
    assert "[default: stream]" in out


def test_top_level_help_lists_the_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: meshrun [OPTIONS] COMMAND [ARGS]...")
    assert "Exit codes: 0 all ok" in " ".join(out.split())
    for name in HELP:
        assert f"\n  {name} " in out, f"{name} missing from:\n{out}"
    assert "\n  --version " in out, out


def test_no_arguments_prints_the_help_on_stderr_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert err.startswith("usage: meshrun [OPTIONS] COMMAND [ARGS]...")
    assert "dispatch" in err


def test_unknown_command_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "deploy")
    assert code == 2
    assert "meshrun: error: no such command: 'deploy'" in err
    code, _, err = run_cli(monkeypatch, capsys, "--bogus")
    assert code == 2
    assert "unrecognized arguments: --bogus" in err


# -- what exec and run parse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["ls", "-la"], ["ls", "-la"]),
        (["--", "ls", "-la"], ["ls", "-la"]),
        (["-q", "ls", "-la", "-q"], ["ls", "-la", "-q"]),
        (["-H", "a,b", "--", "-q"], ["-q"]),
        (["echo", "a", "--", "b"], ["echo", "a", "--", "b"]),
        (["--", "--", "echo"], ["--", "echo"]),
        (["-p4", "-qv", "--hosts=x", "uptime", "-h"], ["uptime", "-h"]),
        (["-qp", "4", "-t", "5s", "true"], ["true"]),
    ],
)
def test_exec_takes_everything_after_its_options_as_the_command(
    args: list[str], command: list[str]
) -> None:
    assert cli._parse_exec(args)["command"] == command


def test_exec_options() -> None:
    parsed = cli._parse_exec(
        ["-vv", "-l", "web*", "--limit", "label:db", "-e", "A=1", "--env", "B=2", "-p4", "x"]
    )
    assert parsed["verbose"] == 2
    assert parsed["limit"] == ["web*", "label:db"]
    assert parsed["env"] == ["A=1", "B=2"]
    assert parsed["parallel"] == 4
    assert parsed["output"] == "stream"
    assert parsed["connect_timeout"] is None  # ssh_config's ConnectTimeout, else 10 s
    assert parsed["json_out"] is False
    assert parsed["hosts"] is None
    assert cli._parse_exec(["--json", "-o", "fold", "x"])["json_out"] is True


def test_hosts_default_comes_from_meshrun_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHRUN_HOSTS", "web1,web2")
    assert cli._parse_exec(["true"])["hosts"] == "web1,web2"
    assert cli._parse_exec(["-H", "db1", "true"])["hosts"] == "db1"
    assert cli._parse_hosts([])["hosts"] == "web1,web2"
    monkeypatch.setenv("MESHRUN_HOSTS", "")
    assert cli._parse_exec(["true"])["hosts"] is None


@pytest.mark.parametrize(
    ("args", "script", "script_args"),
    [
        (["deploy.sh", "-x", "--y", "v42"], "deploy.sh", ["-x", "--y", "v42"]),
        (["-q", "deploy.sh", "-q", "-v"], "deploy.sh", ["-q", "-v"]),
        (["--", "deploy.sh", "-x"], "deploy.sh", ["-x"]),
        (["deploy.sh", "--", "-x"], "deploy.sh", ["--", "-x"]),
        (["deploy.sh"], "deploy.sh", []),
    ],
)
def test_run_passes_everything_after_the_script_to_it(
    args: list[str], script: str, script_args: list[str]
) -> None:
    parsed = cli._parse_run(args)
    assert (parsed["script"], parsed["args"]) == (script, script_args)


def test_run_options_go_before_the_script() -> None:
    parsed = cli._parse_run(["-q", "-e", "A=1", "deploy.sh", "-v"])
    assert (parsed["quiet"], parsed["verbose"], parsed["env"]) == (True, 0, ["A=1"])


def test_dispatch_and_history_parse() -> None:
    parsed = cli._parse_dispatch(["tasks.toml", "-H", "agents.toml", "--max-fail", "3", "-vv"])
    assert parsed["tasks_file"] == "tasks.toml"
    assert (parsed["hosts"], parsed["max_fail"], parsed["verbose"]) == ("agents.toml", 3, 2)
    assert parsed["output"] == "group"
    assert cli._parse_history([])["tasks_file"] == "tasks.toml"
    assert cli._parse_history(["x/tasks.toml", "--json"])["json_out"] is True


# -- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["exec", "--bogus", "--", "true"], ["meshrun exec: error:", "unrecognized", "--bogus"]),
        (["exec", "--bogus", "true"], ["unrecognized arguments: --bogus"]),
        (["exec", "-x"], ["unrecognized arguments: -x"]),
        (["exec", "--hos", "x", "true"], ["unrecognized arguments: --hos"]),
        (["exec"], ["required: COMMAND"]),
        (["exec", "-q", "--"], ["required: COMMAND"]),
        (["exec", "-H"], ["-H/--hosts", "expected one argument"]),
        (["exec", "--output", "nope", "true"], ["--output", "'stream', 'group', 'fold'"]),
        (["run", "-o", "nope", "s.sh"], ["--output", "'stream', 'group', 'fold'"]),
        (["run"], ["meshrun run: error:", "required: SCRIPT"]),
        (["exec", "--parallel", "x", "true"], ["--parallel", "invalid int value: 'x'"]),
        (["dispatch", "-o", "fold", "t.toml"], ["--output", "'group', 'stream', 'none'"]),
        (["dispatch", "--max-fail", "x", "t.toml"], ["--max-fail", "invalid int"]),
        (["dispatch"], ["meshrun dispatch: error:", "required: TASKS.toml"]),
        (["history", "a.toml", "b.toml"], ["unrecognized arguments: b.toml"]),
        (["version", "now"], ["unrecognized arguments: now"]),
    ],
)
def test_bad_usage_exits_2_with_the_usage_line(
    args: list[str],
    fragments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert (code, out) == (2, ""), err
    assert err.startswith(f"usage: meshrun {args[0]} "), err
    missing = [f for f in fragments if f not in err]
    assert not missing, f"expected {missing} in:\n{err}"


def _exits_2_with_one_error_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragments: list[str],
) -> None:
    """``meshrun ARGS`` exits 2, prints nothing on stdout and one ``meshrun: error:`` line
    holding every fragment on stderr."""
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert (code, out) == (2, ""), err
    assert err.startswith("meshrun: error: ") and err.count("\n") == 1, err
    missing = [f for f in fragments if f not in err]
    assert not missing, f"expected {missing} in:\n{err}"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["exec", "--parallel", "0", "--", "true"], ["--parallel must be at least 1"]),
        (["exec", "--timeout", "soon", "true"], ["--timeout", "'soon'"]),
        (["run", "--timeout", "soon", "s.sh"], ["--timeout", "'soon'"]),
        (["exec", "--connect-timeout", "soon", "true"], ["--connect-timeout", "'soon'"]),
        (
            ["dispatch", "--fail-fast", "--keep-going", "t.toml"],
            ["--fail-fast and --keep-going contradict each other"],
        ),
        (
            ["dispatch", "--rerun-failed", "--resume", "x", "t.toml"],
            ["--rerun-failed and --resume"],
        ),
        (["history", "nowhere/tasks.toml"], ["no history at"]),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    args: list[str],
    fragments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.sh").write_text("echo hi\n")
    _exits_2_with_one_error_line(monkeypatch, capsys, args, fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["exec", "--", "touch started; true\x00"], ["the command contains a NUL character"]),
        (["exec", "--", "touch", "started", "\x00"], ["the command contains a NUL character"]),
        (
            ["exec", "-e", "A=x\x00y", "--", "touch started"],
            ["--env 'A=x\\x00y': the value contains a NUL character"],
        ),
        (["run", "s.sh", "a\x00b"], ["argument #1 of s.sh contains a NUL character"]),
        (
            ["dispatch", "tasks.toml"],
            ["tasks.toml:3: task 'a': env: ", "contains a NUL character", "\\u0000"],
        ),
    ],
)
def test_a_nul_byte_never_reaches_a_host(
    args: list[str],
    fragments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A NUL cannot be in a command line or an environment variable: exit 2, one line,
    before anything starts (no host here is this machine, which would run `touch`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.sh").write_text("touch started\n")
    (tmp_path / "tasks.toml").write_text(
        '[[task]]\nname = "a"\nenv = { A = "\\u0000" }\nrun = "touch started"\n'
    )
    _exits_2_with_one_error_line(monkeypatch, capsys, args, fragments)
    assert not (tmp_path / "started").exists()


def test_meshrun_errors_keep_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Refused(meshrun.MeshrunError):
        exit_code = 3

    def refuse(words: list[str]) -> str:
        raise Refused("refused")

    monkeypatch.setattr(meshrun, "shell_command", refuse)
    assert run_cli(monkeypatch, capsys, "exec", "true") == (3, "", "meshrun: error: refused\n")


def test_ctrl_c_outside_a_run_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(meshrun, "resolve_hosts", interrupted)
    assert run_cli(monkeypatch, capsys, "exec", "true") == (
        130,
        "",
        "meshrun: interrupted (Ctrl-C)\n",
    )


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGHUP, 129, "hung up (SIGHUP)")],
)
def test_sigterm_and_sighup_outside_a_run_exit_128_plus_the_signal(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: signal.Signals,
    code: int,
    said: str,
) -> None:
    """The real signal, delivered to this process while the command is starting."""
    # Under nohup (a CI step, a background job) SIGHUP is ignored, and meshrun rightly
    # keeps it so: give the test the default a terminal's process has.
    inherited = signal.signal(signum, signal.SIG_DFL)
    before = signal.getsignal(signum)

    def signalled(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("the signal was not turned into a stop")

    monkeypatch.setattr(meshrun, "resolve_hosts", signalled)
    try:
        assert run_cli(monkeypatch, capsys, "exec", "true") == (code, "", f"meshrun: {said}\n")
        assert signal.getsignal(signum) is before  # put back as it was
    finally:
        signal.signal(signum, inherited)


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(monkeypatch, capsys, "version") == (0, f"meshrun {meshrun.__version__}\n", "")


def test_main_freezes_the_gc_before_exiting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gc.unfreeze()
    run_cli(monkeypatch, capsys, "version")
    assert gc.get_freeze_count() > 0


# -- real runs on this machine ---------------------------------------------------------------


def test_exec_ls_la_runs_locally(tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("x")
    r = run_cli_process(tmp_path, "exec", "ls", "-la")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("local | ") for line in lines), r.stdout
    assert any(line.endswith(" .") for line in lines), f"-la was not passed to ls:\n{r.stdout}"
    assert any(line.endswith(" marker.txt") for line in lines), r.stdout


def test_exec_double_dash_and_exit_codes(tmp_path: Path) -> None:
    r = run_cli_process(tmp_path, "exec", "--", "echo", "-n", "--x")
    assert (r.returncode, r.stdout) == (0, "local | --x\n"), r.stderr
    r = run_cli_process(tmp_path, "exec", "-q", "--", "sh", "-c", "exit 5")
    assert r.returncode == 1, r.stderr
    assert "exit code 5" in r.stderr


def test_run_passes_option_like_args_to_the_script(tmp_path: Path) -> None:
    script = tmp_path / "show.sh"
    script.write_text('#!/bin/sh\necho "args: $*"\n')
    r = run_cli_process(tmp_path, "run", "-o", "group", str(script), "-x", "--y", "-v")
    assert r.returncode == 0, r.stderr
    assert "args: -x --y -v" in r.stdout, r.stdout


def test_exec_json_document(tmp_path: Path) -> None:
    import json

    r = run_cli_process(tmp_path, "exec", "--json", "true")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema"] == 1

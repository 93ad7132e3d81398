"""``meshrun exec`` against real sshd hosts: environment, quoting, output modes, exit codes.

Every test drives the installed console script in a fresh process, as a user would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from helpers import (
    Result,
    assert_gone,
    marker_seconds,
    run_meshrun,
    write_inventory,
)

from meshrun.testing.fleet import Fleet

NAMES = ["h1", "h2", "h3", "h4"]


def _exec_json(fleet: Fleet, *args: str) -> Result:
    """``meshrun exec --hosts FLEET --json ARGS``."""
    return run_meshrun("exec", "--hosts", fleet.hosts_toml, "--json", *args)


def _fields(stdout: str) -> dict[str, str]:
    """``key=value`` lines -> a dict."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


# -- what a command sees on each host ----------------------------------------------------


def test_exec_runs_on_every_host_in_its_workdir_with_host_and_run_id(fleet4: Fleet) -> None:
    r = _exec_json(
        fleet4,
        "--",
        'echo "host=$MESHRUN_HOST"; echo "sim=$MESHRUN_TEST_HOST"; '
        'echo "run=$MESHRUN_RUN_ID"; echo "pwd=$(pwd)"; echo "home=$HOME"',
    )
    assert r.rc == 0, f"expected exit 0 with every host ok{r.describe()}"
    doc = r.doc
    assert doc["schema"] == 1 and doc["ok"] is True and doc["exit_code"] == 0, r.describe()
    assert doc["interrupted"] is False, r.describe()
    assert [h["name"] for h in doc["hosts"]] == NAMES, (
        f"expected hosts in inventory order{r.describe()}"
    )
    run_ids = set()
    for h in fleet4.hosts:
        entry = r.hosts[h.name]
        assert entry["status"] == "ok" and entry["exit_code"] == 0, (
            f"expected {h.name} ok with exit 0, got {entry}"
        )
        seen = _fields(entry["stdout"])
        assert seen.get("host") == h.name, f"expected MESHRUN_HOST={h.name}, got {entry}"
        assert seen.get("sim") == h.name, f"expected it to run on sshd {h.name}, got {entry}"
        assert seen.get("pwd") == str(h.workdir), (
            f"expected pwd {h.workdir} (the host's workdir), got {seen.get('pwd')!r}"
        )
        assert seen.get("pwd") != seen.get("home"), f"expected workdir, not HOME: {entry}"
        run_ids.add(seen.get("run"))
    assert run_ids == {doc["run_id"]}, (
        f"expected MESHRUN_RUN_ID == JSON run_id {doc['run_id']!r} on every host, got {run_ids}"
    )


def test_env_option_reaches_the_command_verbatim(fleet4: Fleet) -> None:
    odd = """$HOME "dq" 'sq' `true` \\ ; | end"""
    r = _exec_json(
        fleet4,
        "--env",
        "GREETING=hello world",
        "--env",
        f"ODD={odd}",
        "--",
        'printf "%s\\n" "$GREETING" "$ODD"',
    )
    assert r.rc == 0, r.describe()
    for name in NAMES:
        assert r.hosts[name]["stdout"] == f"hello world\n{odd}\n", (
            f"expected --env values unchanged on {name}, got {r.hosts[name]['stdout']!r}"
        )


def test_several_arguments_are_quoted_one_by_one(fleet4: Fleet) -> None:
    r = _exec_json(fleet4, "--", "printf", "%s\\n", "a b", "c'd")
    assert r.rc == 0, r.describe()
    for name in NAMES:
        assert r.hosts[name]["stdout"] == "a b\nc'd\n", (
            f"expected exactly the lines 'a b' and \"c'd\" on {name}, "
            f"got {r.hosts[name]['stdout']!r}"
        )


def test_one_argument_is_a_shell_command_line(fleet4: Fleet) -> None:
    r = _exec_json(fleet4, "--", "echo abc | tr a-z A-Z && echo ok")
    assert r.rc == 0, r.describe()
    assert {n: h["stdout"] for n, h in r.hosts.items()} == dict.fromkeys(NAMES, "ABC\nok\n"), (
        f"expected the pipe and && to run in a shell on every host{r.describe()}"
    )


# -- output modes ----------------------------------------------------------------------


def test_stream_prefixes_every_line_with_its_host(fleet4: Fleet) -> None:
    r = run_meshrun(
        "exec",
        "--hosts",
        fleet4.hosts_toml,
        "--",
        'echo "out $MESHRUN_HOST"; echo "err $MESHRUN_HOST" >&2; printf "tail-$MESHRUN_HOST"',
    )
    assert r.rc == 0, r.describe()
    expected_out = {f"{n} | out {n}" for n in NAMES} | {f"{n} | tail-{n}" for n in NAMES}
    assert sorted(r.stdout.splitlines()) == sorted(expected_out), (
        f"expected stdout lines 'hN | out hN' and the unterminated 'hN | tail-hN'{r.describe()}"
    )
    err_lines = set(r.stderr.splitlines())
    missing = {f"{n} | err {n}" for n in NAMES} - err_lines
    assert not missing, f"expected each host's stderr prefixed on stderr, missing {missing}"
    assert "4 hosts: 4 ok" in r.stderr, f"expected the summary on stderr{r.describe()}"


def test_group_prints_one_block_per_host(fleet4: Fleet) -> None:
    r = run_meshrun(
        "exec",
        "--hosts",
        fleet4.hosts_toml,
        "--output",
        "group",
        "--",
        'echo "one $MESHRUN_HOST"; echo two',
    )
    assert r.rc == 0, r.describe()
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in r.stdout.splitlines():
        m = re.match(r"^── (\S+) \(ok, [0-9.]+s\) ──$", line)
        if m:
            assert m.group(1) not in blocks, f"expected one block per host{r.describe()}"
            current = blocks[m.group(1)] = []
        else:
            assert current is not None, f"expected output only under a header{r.describe()}"
            current.append(line)
    assert blocks == {n: [f"one {n}", "two"] for n in NAMES}, (
        f"expected a '── hN (ok, …) ──' header then that host's lines{r.describe()}"
    )


def test_fold_prints_identical_output_once_under_folded_names(fleet4: Fleet) -> None:
    r = run_meshrun("exec", "--hosts", fleet4.hosts_toml, "--output", "fold", "--", "echo same")
    assert r.rc == 0, r.describe()
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[1] == "same", f"expected one block{r.describe()}"
    assert re.fullmatch(r"── h\[1-4\] \(ok, [0-9.]+s; 4 hosts\) ──", lines[0]), (
        f"expected the header '── h[1-4] (ok, …; 4 hosts) ──'{r.describe()}"
    )

    r = run_meshrun(
        "exec",
        "--hosts",
        fleet4.hosts_toml,
        "-o",
        "fold",
        "--",
        '[ "$MESHRUN_HOST" = h3 ] && echo odd || echo same',
    )
    assert r.rc == 0, r.describe()
    headers = [line for line in r.stdout.splitlines() if line.startswith("── ")]
    assert [h.split(" (")[0] for h in headers] == ["── h[1-2,4]", "── h3"], (
        f"expected two folded blocks h[1-2,4] and h3{r.describe()}"
    )
    assert r.stdout.count("same\n") == 1 and r.stdout.count("odd\n") == 1, r.describe()


def test_no_hosts_runs_on_this_machine(tmp_path: Path) -> None:
    r = run_meshrun("exec", "--", "echo", "hi")
    assert (r.rc, r.stdout) == (0, "local | hi\n"), (
        f"expected exit 0 and exactly 'local | hi'{r.describe()}"
    )
    r = run_meshrun("exec", "--json", "--", "pwd; echo $MESHRUN_HOST", cwd=tmp_path)
    assert r.rc == 0, r.describe()
    assert r.hosts["local"]["stdout"] == f"{os.path.realpath(tmp_path)}\nlocal\n", (
        f"expected the local command to run in the current directory{r.describe()}"
    )


# -- exit codes, fail-fast, timeout ------------------------------------------------------


def test_one_failing_host_makes_exit_1(fleet4: Fleet) -> None:
    r = _exec_json(
        fleet4,
        "--",
        '[ "$MESHRUN_HOST" = h2 ] && exit 7; true',
    )
    assert r.rc == 1, f"expected exit 1 when one command fails{r.describe()}"
    assert r.doc["exit_code"] == 1 and r.doc["ok"] is False, r.describe()
    h2 = r.hosts["h2"]
    assert (h2["status"], h2["exit_code"]) == ("failed", 7), f"expected h2 failed/7, got {h2}"
    others = {n: (r.hosts[n]["status"], r.hosts[n]["exit_code"]) for n in ("h1", "h3", "h4")}
    assert others == dict.fromkeys(("h1", "h3", "h4"), ("ok", 0)), r.describe()
    assert "h2" in r.stderr and "exit code 7" in r.stderr, (
        f"expected the summary to name h2 and its exit code{r.describe()}"
    )


def test_fail_fast_cancels_the_running_hosts_and_kills_their_commands(fleet4: Fleet) -> None:
    marker = marker_seconds(30)
    r = _exec_json(
        fleet4,
        "--fail-fast",
        "--",
        f'if [ "$MESHRUN_HOST" = h2 ]; then sleep 0.5; exit 7; fi; sleep {marker}',
    )
    assert r.rc == 1, f"expected exit 1 (a command failed){r.describe()}"
    assert r.duration_s < 10, f"expected the sleepers stopped well under 30s{r.describe()}"
    assert r.statuses() == {
        "h1": "cancelled",
        "h2": "failed",
        "h3": "cancelled",
        "h4": "cancelled",
    }, f"expected h2 failed and the others cancelled{r.describe()}"
    assert "--fail-fast" in r.stderr, f"expected the stop reason on stderr{r.describe()}"
    assert_gone(marker, f"expected no 'sleep {marker}' left on any host")


def test_timeout_fails_the_host_and_kills_its_processes(fleet4: Fleet) -> None:
    marker = marker_seconds(30)
    r = _exec_json(
        fleet4,
        "--timeout",
        "1s",
        "--",
        f"sleep {marker}",
    )
    assert r.rc == 1, f"expected exit 1 (commands timed out){r.describe()}"
    assert r.duration_s < 10, f"expected the run to end soon after the 1s timeout{r.describe()}"
    for name in NAMES:
        entry = r.hosts[name]
        assert entry["status"] == "failed" and "timed out" in (entry["error"] or ""), (
            f"expected {name} failed with a timeout error, got {entry}"
        )
    assert_gone(marker, f"expected no 'sleep {marker}' left on any host")


def test_timeout_kills_a_command_that_ignores_sigterm(fleet4: Fleet) -> None:
    marker = marker_seconds(30)
    r = _exec_json(
        fleet4,
        "--limit",
        "h1",
        "--timeout",
        "0.5s",
        "--",
        f"trap '' TERM; sleep {marker}",
    )
    assert r.rc == 1, r.describe()
    assert r.statuses() == {"h1": "failed"}, r.describe()
    assert r.duration_s < 10, f"expected SIGKILL after the grace period{r.describe()}"
    assert_gone(marker, "expected the TERM-proof sleep killed")


# -- ProxyJump ---------------------------------------------------------------------------


def test_proxy_jump_reaches_a_host_through_another(fleet4: Fleet, tmp_path: Path) -> None:
    jump = fleet4.host("h1")
    inventory = write_inventory(
        tmp_path / "hosts.toml",
        fleet4,
        names=["h2"],
        extra={"h2": {"proxy_jump": f"{fleet4.user}@127.0.0.1:{jump.port}"}},
    )
    accepted_before = jump.log.read_text().count("Accepted publickey")
    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, f"expected h2 reached through h1{r.describe()}"
    assert r.hosts["h2"]["stdout"] == "h2\n", f"expected to run on sshd h2{r.describe()}"
    accepted_after = jump.log.read_text().count("Accepted publickey")
    assert accepted_after > accepted_before, (
        f"expected a login on the jump host h1 (its log has {accepted_after} accepted "
        f"logins, {accepted_before} before the run)"
    )


# -- where hosts come from -----------------------------------------------------------------


def test_hosts_from_the_environment_variable(fleet4: Fleet) -> None:
    r = run_meshrun(
        "exec", "--json", "--", "echo $MESHRUN_HOST", env={"MESHRUN_HOSTS": str(fleet4.hosts_toml)}
    )
    assert r.rc == 0, r.describe()
    assert {n: h["stdout"] for n, h in r.hosts.items()} == {n: f"{n}\n" for n in NAMES}, (
        f"expected MESHRUN_HOSTS to select the fleet{r.describe()}"
    )


def test_tilde_workdir_is_under_the_remote_home(fleet4: Fleet, tmp_path: Path) -> None:
    inventory = write_inventory(
        tmp_path / "hosts.toml",
        fleet4,
        names=["h1", "h2"],
        extra={"h1": {"workdir": "~/meshrun work"}, "h2": {"workdir": "~"}},
    )
    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "pwd")
    assert r.rc == 0, r.describe()
    expected = {
        "h1": f"{fleet4.host('h1').home}/meshrun work\n",
        "h2": f"{fleet4.host('h2').home}\n",
    }
    assert {n: h["stdout"] for n, h in r.hosts.items()} == expected, (
        f"expected '~' to mean the remote HOME (created when missing){r.describe()}"
    )

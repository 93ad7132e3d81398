"""Hosts that refuse, die or hang, and input that is wrong: exit codes 2 and 3.

Tests that damage hosts (kill, pause, re-key) use their own fleet from ``make_fleet``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HUNG
from helpers import (
    describe_procs,
    marker_seconds,
    run_meshrun,
    stranger_inventory,
    wait_gone,
    write_inventory,
)

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]


def _fingerprint(pub: Path) -> str:
    """OpenSSH's SHA256 fingerprint of a public key file."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1]


def _pub_line(fleet: Fleet, name: str) -> str:
    h = fleet.host(name)
    keytype, blob = h.host_key.with_name(h.host_key.name + ".pub").read_text().split()[:2]
    return f"[127.0.0.1]:{h.port} {keytype} {blob}"


# -- host keys -----------------------------------------------------------------------------


def test_unknown_host_key_is_refused_until_accepted(fleet4: Fleet, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"  # does not exist yet: every host key is unknown
    inventory = write_inventory(tmp_path / "hosts.toml", fleet4, known_hosts=known)

    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "true")
    assert r.rc == 3, f"expected exit 3 for unknown host keys{r.describe()}"
    for h in fleet4.hosts:
        entry = r.hosts[h.name]
        fp = _fingerprint(h.host_key.with_suffix(".pub"))
        assert entry["status"] == "unreachable", f"expected {h.name} unreachable, got {entry}"
        assert fp in (entry["error"] or ""), f"expected the fingerprint {fp} in {entry['error']!r}"
        assert "--accept-new-host-keys" in entry["error"], (
            f"expected the error to say how to accept the key: {entry['error']!r}"
        )
    assert not known.exists() or not known.read_text().strip(), (
        f"expected nothing written to known_hosts without the flag: {known.read_text()!r}"
    )

    r = run_meshrun("exec", "--hosts", inventory, "--json", "--accept-new-host-keys", "--", "true")
    assert r.rc == 0, f"expected exit 0 with --accept-new-host-keys{r.describe()}"
    lines = set(known.read_text().splitlines())
    expected = {_pub_line(fleet4, n) for n in fleet4.names}
    assert lines == expected, (
        f"expected one known_hosts line per host:\n{sorted(expected)}\ngot:\n{sorted(lines)}"
    )

    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "true")
    assert r.rc == 0, f"expected the accepted keys to be trusted without the flag{r.describe()}"
    assert set(known.read_text().splitlines()) == expected, "expected no duplicate lines"


def test_changed_host_key_is_refused_even_with_accept_new(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    before = fleet.known_hosts.read_text()
    fleet.restart("h2", new_host_key=True)
    new_fp = _fingerprint(fleet.host("h2").host_key.with_suffix(".pub"))

    r = run_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--accept-new-host-keys", "--", "true"
    )
    assert r.rc == 3, f"expected exit 3 for a changed host key{r.describe()}"
    h2 = r.hosts["h2"]
    assert h2["status"] == "unreachable", f"expected h2 unreachable, got {h2}"
    assert "changed" in (h2["error"] or "").lower(), f"expected 'changed' in {h2['error']!r}"
    assert new_fp in h2["error"], f"expected the new fingerprint {new_fp} in {h2['error']!r}"
    assert r.hosts["h1"]["status"] == "ok", f"expected h1 unaffected{r.describe()}"
    assert fleet.known_hosts.read_text() == before, "expected known_hosts left unchanged"


def test_refused_key_is_an_auth_failure(fleet4: Fleet, tmp_path: Path) -> None:
    stranger, inventory = stranger_inventory(tmp_path, fleet4)
    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "true")
    assert r.rc == 3, f"expected exit 3 when the key is refused{r.describe()}"
    h1 = r.hosts["h1"]
    assert h1["status"] == "unreachable", f"expected h1 unreachable, got {h1}"
    assert "refused every key" in (h1["error"] or "") and str(stranger) in h1["error"], (
        f"expected the error to say the key {stranger} was refused: {h1['error']!r}"
    )


# -- hosts that die or hang ------------------------------------------------------------------


def test_killed_host_is_unreachable_and_the_rest_run(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    fleet.kill("h2")
    r = run_meshrun("exec", "--hosts", fleet.hosts_toml, "--json", "--", "echo $MESHRUN_HOST")
    assert r.rc == 3, f"expected exit 3 with a dead host{r.describe()}"
    assert r.statuses() == {"h1": "ok", "h2": "unreachable", "h3": "ok"}, r.describe()
    assert "refused" in (r.hosts["h2"]["error"] or "").lower(), (
        f"expected 'connection refused' for h2: {r.hosts['h2']['error']!r}"
    )
    assert r.hosts["h3"]["stdout"] == "h3\n", r.describe()


def test_unreachable_wins_over_a_failed_command(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    fleet.kill("h2")
    r = run_meshrun("exec", "--hosts", fleet.hosts_toml, "--json", "--", "exit 1")
    assert r.statuses() == {"h1": "failed", "h2": "unreachable"}, r.describe()
    assert (r.rc, r.doc["exit_code"]) == (3, 3), f"expected 3 to win over 1{r.describe()}"


def test_paused_host_times_out_waiting_for_the_banner(hung_fleet: Fleet) -> None:
    fleet = hung_fleet
    for _ in range(2):
        r = run_meshrun(
            "exec",
            "--hosts",
            fleet.hosts_toml,
            "--json",
            "--connect-timeout",
            "1s",
            "--",
            "true",
        )
        assert r.duration_s < 6, f"expected the run to end within a few seconds{r.describe()}"
        assert r.hosts["h1"]["status"] == "ok", r.describe()
        for name in HUNG:
            entry = r.hosts[name]
            assert entry["status"] == "unreachable", (
                f"expected {name} unreachable, got {entry}{r.describe()}"
            )
            assert "banner" in (entry["error"] or ""), f"expected 'banner' in {entry['error']!r}"
        assert r.rc == 3, f"expected exit 3 with hung hosts{r.describe()}"
        logged = [line for line in r.stderr.splitlines() if ": paramiko." in line]
        assert not logged, (
            f"expected meshrun's own one-line errors, not paramiko's log "
            f"({len(logged)} lines, first: {logged[:2]}){r.describe()}"
        )


def test_host_killed_mid_command_is_unreachable(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    marker = marker_seconds(30)
    problems: list[BaseException] = []

    def kill_h3_once_its_command_runs() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if any(p.cmdline() == ["sleep", marker] for p in fleet.descendants("h3")):
                    time.sleep(0.5)  # well into the command
                    fleet.kill("h3")
                    return
                time.sleep(0.05)
            raise AssertionError(f"sleep {marker} never started on h3")
        except BaseException as exc:
            problems.append(exc)

    killer = threading.Thread(target=kill_h3_once_its_command_runs)
    killer.start()
    try:
        r = run_meshrun(
            "exec",
            "--hosts",
            fleet.hosts_toml,
            "--json",
            "--",
            f'if [ "$MESHRUN_HOST" = h3 ]; then sleep {marker}; else sleep 2; fi',
        )
    finally:
        killer.join()
    assert not problems, f"the killer thread failed: {problems}"
    assert r.duration_s < 15, f"expected the run not to wait for the dead host{r.describe()}"
    assert r.hosts["h1"]["status"] == "ok" and r.hosts["h2"]["status"] == "ok", r.describe()
    h3 = r.hosts["h3"]
    assert h3["status"] == "unreachable", f"expected h3 unreachable, got {h3}{r.describe()}"
    assert "lost" in (h3["error"] or ""), f"expected 'connection lost' in {h3['error']!r}"
    assert r.rc == 3, f"expected exit 3{r.describe()}"
    left = wait_gone(marker)
    assert not left, f"expected nothing left of h3's command:\n{describe_procs(left)}"


def test_workdir_that_cannot_be_entered_fails_the_host(fleet4: Fleet, tmp_path: Path) -> None:
    inventory = write_inventory(
        tmp_path / "hosts.toml",
        fleet4,
        names=["h1", "h2"],
        extra={"h1": {"workdir": "/proc/meshrun-nope/work"}},
    )
    r = run_meshrun("exec", "--hosts", inventory, "--json", "--", "echo ran")
    assert r.rc == 1, f"expected exit 1 (a host failed){r.describe()}"
    h1 = r.hosts["h1"]
    assert h1["status"] == "failed" and h1["stdout"] == "", f"expected h1 failed, not run: {h1}"
    assert "cannot enter work directory /proc/meshrun-nope/work" in (h1["error"] or ""), (
        f"expected the error to name the work directory: {h1}"
    )
    assert r.hosts["h2"]["stdout"] == "ran\n", r.describe()


# -- bad input ---------------------------------------------------------------------------------


def _inventory(tmp_path: Path) -> Path:
    """Two hosts nobody listens for: input errors must stop meshrun before it dials."""
    path = tmp_path / "hosts.toml"
    path.write_text(
        '[[host]]\nname = "a1"\naddress = "127.0.0.1"\nport = 9\n\n'
        '[[host]]\nname = "a2"\naddress = "127.0.0.1"\nport = 9\n'
    )
    return path


def _bad_toml(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[defaults]\nuser = "ci"\n\n[[host]]\nname = "h1\naddress = "x"\n')
    return path  # line 5: the string is never closed


BAD_INPUT: dict[str, Callable[[Path], tuple[list[str | Path], list[str]]]] = {
    "missing-hosts-file": lambda t: (
        ["exec", "--hosts", t / "nope.toml", "--", "true"],
        [str(t / "nope.toml"), "no such file"],
    ),
    "toml-error": lambda t: (
        ["exec", "--hosts", _bad_toml(t), "--", "true"],
        [f"{t / 'bad.toml'}:5", "TOML"],
    ),
    "limit-matches-nothing": lambda t: (
        ["exec", "--hosts", _inventory(t), "--limit", "nomatch", "--", "true"],
        ["--limit", "nomatch", "a1"],
    ),
    "bad-batch": lambda t: (
        ["exec", "--hosts", _inventory(t), "--batch", "x", "--", "true"],
        ["--batch", "'x'"],
    ),
    "bad-max-fail": lambda t: (
        ["exec", "--hosts", _inventory(t), "--max-fail", "lots", "--", "true"],
        ["--max-fail", "'lots'"],
    ),
    "bad-env": lambda t: (
        ["exec", "--hosts", _inventory(t), "--env", "NOPE", "--", "true"],
        ["--env", "NOPE", "NAME=VALUE"],
    ),
    "bad-timeout": lambda t: (
        ["exec", "--hosts", _inventory(t), "--timeout", "soon", "--", "true"],
        ["soon", "duration"],
    ),
    "bad-parallel": lambda t: (
        ["exec", "--hosts", _inventory(t), "--parallel", "0", "--", "true"],
        ["--parallel"],
    ),
    "missing-script": lambda t: (
        ["run", "--hosts", _inventory(t), "missing.sh"],
        ["missing.sh", "cannot read script"],
    ),
    "hosts-missing-file": lambda t: (
        ["hosts", "--hosts", t / "nope.toml"],
        [str(t / "nope.toml"), "no such file"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_naming_the_problem(case: str, tmp_path: Path) -> None:
    args, expected = BAD_INPUT[case](tmp_path)
    r = run_meshrun(*args, cwd=tmp_path)
    assert r.rc == 2, f"expected exit 2 for bad input{r.describe()}"
    assert r.stderr.startswith("meshrun: error: "), f"expected one error line{r.describe()}"
    assert "Traceback" not in r.stderr, f"expected no traceback{r.describe()}"
    missing = [text for text in expected if text not in r.stderr]
    assert not missing, f"expected the message to name {missing}{r.describe()}"
    assert r.stdout == "", f"expected nothing on stdout{r.describe()}"


@pytest.mark.parametrize("option", ["--timeout", "--connect-timeout"])
def test_bad_duration_message_names_the_option(option: str, tmp_path: Path) -> None:
    r = run_meshrun("exec", "--hosts", _inventory(tmp_path), option, "soon", "--", "true")
    assert r.rc == 2, r.describe()
    assert option in r.stderr, f"expected the message to name {option}{r.describe()}"

"""The simulated fleet itself: real sshd hosts that the real OpenSSH client can use.

Every other integration test trusts this fleet to fail the way real machines do, so the
faults (kill, pause, changed host key) are checked here against the plain ssh client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from meshrun.testing import fleet as fleet_mod
from meshrun.testing.fleet import SSHD, Fleet

MakeFleet = Callable[..., Fleet]


def ssh(fleet: Fleet, name: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet.ssh_argv(name, command), capture_output=True, text=True, timeout=20, check=False
    )


def gone_within(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """Pids still alive (not zombie) after polling: reaping here can take ~1.5 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def test_sessions_know_their_host_and_get_an_empty_home(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    assert fleet.names == ["h1", "h2", "h3"]
    assert len({h.port for h in fleet.hosts}) == 3
    assert fleet.client_key.stat().st_mode & 0o777 == 0o600
    for h in fleet.hosts:
        r = ssh(fleet, h.name, "echo $MESHRUN_TEST_HOST $HOME; hostname")
        assert r.returncode == 0, r.stderr
        env_line, hostname = r.stdout.splitlines()
        assert env_line == f"{h.name} {h.home}"
        if fleet_mod._can_unshare_uts():
            assert hostname == h.name
        assert psutil.Process(h.pid).name() == "sshd"  # the listener, not unshare/sh
        assert h.host_key.with_suffix(".pub").exists()


def test_hosts_toml_and_known_hosts_describe_the_fleet(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2, prefix="web")
    inv = tomllib.loads(fleet.hosts_toml.read_text())
    assert inv["defaults"] == {
        "user": fleet.user,
        "identity": str(fleet.client_key),
        "known_hosts": str(fleet.known_hosts),
    }
    assert inv["host"] == [
        {"name": h.name, "address": "127.0.0.1", "port": h.port, "workdir": str(h.workdir)}
        for h in fleet.hosts
    ]
    lines = fleet.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"[127.0.0.1]:{h.port}" for h in fleet.hosts]
    assert all(line.split()[1] == "ssh-ed25519" for line in lines)

    subset = fleet.write_hosts_toml(fleet.base_dir / "one.toml", names=["web2"])
    assert [h["name"] for h in tomllib.loads(subset.read_text())["host"]] == ["web2"]


def test_extra_config_overrides_defaults(make_fleet: MakeFleet) -> None:
    # sshd keeps the first value of a keyword, so extra lines must come first to win.
    fleet = make_fleet(1, extra_config=["MaxSessions 3"])
    r = subprocess.run(
        [SSHD, "-T", "-f", str(fleet.host("h1").config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "maxsessions 3" in r.stdout.splitlines()


def test_kill_takes_sessions_down_and_refuses_new_connections(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    client = subprocess.Popen(
        fleet.ssh_argv("h1", "sleep 30"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not any("sleep" in p.name() for p in fleet.descendants("h1")):
            assert time.monotonic() < deadline, "session never started"
            time.sleep(0.05)
        session_pids = [p.pid for p in fleet.descendants("h1")]

        fleet.kill("h1")

        assert client.wait(timeout=10) == 255  # the server side vanished
        assert gone_within(session_pids) == []
        assert fleet.descendants("h1") == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", fleet.host("h1").port), timeout=2).close()
        assert ssh(fleet, "h2", "true").returncode == 0  # the others are unaffected
    finally:
        client.kill()
        client.wait()


def test_pause_hangs_before_the_banner_and_resume_recovers(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(1)
    port = fleet.host("h1").port
    fleet.pause("h1")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:  # kernel accepts
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            s.recv(64)
    fleet.resume("h1")
    r = ssh(fleet, "h1", "echo alive")
    assert (r.returncode, r.stdout) == (0, "alive\n"), r.stderr


def test_restart_with_new_host_key_looks_like_a_changed_host(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(1)
    h = fleet.host("h1")
    old_pid, old_port = h.pid, h.port

    fleet.restart("h1", new_host_key=True)

    assert (h.port, h.pid != old_pid) == (old_port, True)
    r = ssh(fleet, "h1", "true")
    assert r.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr

    fleet.write_known_hosts()  # accept the new key: works again
    assert ssh(fleet, "h1", "true").returncode == 0


def test_stop_is_idempotent_and_kills_everything(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(2)
    pids = [h.pid for h in fleet.hosts]
    with fleet:
        pass
    fleet.stop()
    assert gone_within(pids) == []


def test_idle_hosts_have_no_sessions(fleet4: Fleet) -> None:
    for h in fleet4.hosts:
        r = ssh(fleet4, h.name, "echo ok")
        assert r.stdout == "ok\n", r.stderr
    for name in fleet4.names:
        assert fleet4.wait_no_sessions(name) == []


def _fleet_cli(entry: list[str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(ARGS)``: the fleet's command line (``python ENTRY ARGS --dir TMP_PATH``) with
    this checkout on PYTHONPATH, its output captured."""
    repo = Path(fleet_mod.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *entry, *args, "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )

    return cli


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3 on PATH")
def test_command_line_up_status_down(tmp_path: Path) -> None:
    cli = _fleet_cli(["-m", "meshrun.testing.fleet"], tmp_path)

    up = cli("up", "--count", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.splitlines()[0] == str(tmp_path / "hosts.toml")
        pids = [h["pid"] for h in json.loads((tmp_path / "fleet.json").read_text())["hosts"]]
        assert all(psutil.Process(pid).name() == "sshd" for pid in pids)  # outlived `up`
        status = cli("status")
        assert status.returncode == 0
        assert status.stdout.count(" up ") == 2
        assert cli("up", "--count", "2").returncode == 1  # refuses to start a second one
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert gone_within(pids) == []
    assert cli("status").returncode == 1


def test_command_line_down_without_psutil(tmp_path: Path) -> None:
    """`fleet down` after `scripts/demo`, whose venv has no test extras: /proc instead."""
    no_psutil = (
        "import sys; sys.modules['psutil'] = None; "  # `import psutil` raises ImportError
        "from meshrun.testing.fleet import main; sys.exit(main(sys.argv[1:]))"
    )
    cli = _fleet_cli(["-c", no_psutil], tmp_path)

    up = cli("up", "--count", "2")
    assert up.returncode == 0, up.stderr
    state = json.loads((tmp_path / "fleet.json").read_text())
    pids = [h["pid"] for h in state["hosts"]]
    adopted = fleet_mod._load_state(tmp_path)
    assert adopted is not None
    session = subprocess.Popen(
        adopted.ssh_argv("h1", "sleep 60"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(pids[0]).children(recursive=True):
            assert time.monotonic() < deadline, "the ssh session never started"
            time.sleep(0.05)
        inside = [p.pid for p in psutil.Process(pids[0]).children(recursive=True)]
    finally:
        down = cli("down")
        session.wait(timeout=10)
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines() == [
        f"h1: killed sshd pid {pids[0]}",
        f"h2: killed sshd pid {pids[1]}",
    ]
    assert gone_within(pids + inside) == []
    assert not (tmp_path / "fleet.json").exists()

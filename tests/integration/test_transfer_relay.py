"""Transfers ride meshrun's own pooled SSH connection (the channel relay), not a second
OpenSSH connection: one login per host for a command and its pulls, pushes and outputs;
rsync through a paramiko-dialled jump host with the inventory's keys; a killed rsync or
a closed connector leaves no channel and no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dispatch_helpers import dispatch, tasks_of, write_project
from helpers import describe_procs, processes_with, run_meshrun, wait_gone, write_inventory

from meshrun.config.inventory import Host
from meshrun.errors import HostUnreachable, Interrupted
from meshrun.integrity.collect import collect
from meshrun.integrity.pull import pull
from meshrun.testing.fleet import Fleet
from meshrun.transport import channel_relay
from meshrun.transport.ssh import SSHConnector

MakeFleet = Callable[..., Fleet]


def _logins(fleet: Fleet) -> dict[str, int]:
    return {h.name: h.log.read_text().count("Accepted publickey") for h in fleet.hosts}


def _sessions(fleet: Fleet) -> dict[str, int]:
    return {h.name: h.log.read_text().count("Starting session:") for h in fleet.hosts}


def test_exec_with_pull_logs_in_once_per_host(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    before, sessions_before = _logins(fleet), _sessions(fleet)
    r = run_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--pull", "relay-out/**", "--",
        "mkdir -p relay-out/sub && echo $MESHRUN_HOST > relay-out/sub/who.txt",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 0, r.describe()
    run_dir = Path(r.doc["run_dir"])
    for name in fleet.names:
        assert (run_dir / "hosts" / name / "relay-out/sub/who.txt").read_text() == f"{name}\n"
    after, sessions_after = _logins(fleet), _sessions(fleet)
    assert {n: after[n] - before[n] for n in fleet.names} == {"h1": 1, "h2": 1}, (
        "expected one SSH login per host for the command and its pull"
    )
    # The command, the collect program and rsync's remote side: channels, not logins.
    assert all(sessions_after[n] - sessions_before[n] >= 3 for n in fleet.names)


def test_dispatch_push_outputs_and_inputs_log_in_once_per_host(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    hosts = fleet.write_hosts_toml(tmp_path / "hosts.toml")
    text = hosts.read_text()
    for name, label in (("h1", "a"), ("h2", "b")):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nlabels = ["{label}"]\n')
    hosts.write_text(text)
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "build",
                "run": "mkdir -p dist && cat src/in.txt > dist/lib.txt",
                "outputs": ["dist/**"],
                "labels": ["a"],
            },
            {
                "name": "package",
                "run": "cat dist/lib.txt src/in.txt > pkg.txt",
                "outputs": ["pkg.txt"],
                "needs": ["build"],
                "labels": ["b"],
            },
        ],
        files={"src/in.txt": "workspace\n"},
    )
    before = _logins(fleet)
    r = dispatch(tasks_file, hosts)
    assert r.rc == 0, r.describe()
    tasks = tasks_of(r)
    assert (tasks["build"]["host"], tasks["package"]["host"]) == ("h1", "h2"), r.describe()
    assert (tmp_path / "proj" / "pkg.txt").read_text() == "workspace\nworkspace\n"
    after = _logins(fleet)
    assert {n: after[n] - before[n] for n in fleet.names} == {"h1": 1, "h2": 1}, (
        "expected one SSH login per host for the tasks, the workspace push, the outputs "
        "pulled home and build's outputs pushed to h2"
    )


def test_rsync_through_a_paramiko_jump_host_uses_the_inventorys_key_and_known_hosts(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    """The jump host and the target are trusted only through the inventory's
    known_hosts and key (HOME has no ~/.ssh): OpenSSH's `ssh -J` inside rsync got
    neither and failed with "Host key verification failed"."""
    fleet = make_fleet(2)
    jump, target = fleet.host("h1"), fleet.host("h2")
    inventory = write_inventory(
        tmp_path / "hosts.toml",
        fleet,
        names=["h2"],
        extra={"h2": {"proxy_jump": f"{fleet.user}@127.0.0.1:{jump.port}"}},
    )
    assert not (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").exists()
    before = _logins(fleet)
    r = run_meshrun(
        "exec", "--hosts", inventory, "--json", "--pull", "hop.txt", "--",
        "echo $MESHRUN_TEST_HOST > hop.txt", cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 0, r.describe()
    assert (Path(r.doc["run_dir"]) / "hosts/h2/hop.txt").read_text() == "h2\n"
    after = _logins(fleet)
    assert after["h2"] - before["h2"] == 1 and after["h1"] - before["h1"] == 1, (
        f"expected one login on the target and one on the jump host: {before} -> {after}"
    )
    assert "127.0.0.1" in target.log.read_text()


def _big_file(fleet: Fleet, name: str = "big.bin", size: int = 4 << 30) -> None:
    """A sparse file rsync needs seconds to send: time to interrupt it mid-way."""
    with open(fleet.hosts[0].workdir / name, "wb") as f:
        f.truncate(size)


def _remote_rsyncs(fleet: Fleet) -> list[str]:
    return [d for d in fleet.wait_no_sessions("h1", 0) if "rsync" in d]


def _relay_state(connector: SSHConnector) -> tuple[int, int]:
    """(transfers the relay is running, sessions of the host's budget in use)."""
    relay = connector._relay
    active = relay.active if relay is not None else 0
    (conn,) = connector._connections.values()
    return active, sum(s.in_use for s in conn.sessions.state())


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_killed_rsync_leaves_no_channel_and_no_process(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    _big_file(fleet)
    conn = connector.connect(host)
    rsh = connector.rsync_ssh(host)
    proc = subprocess.Popen(
        ["rsync", "-a", "-e", rsh.rsh, rsh.remote_dir(f"{host.workdir}/big.bin"), f"{tmp_path}/"],
        env={**os.environ, **rsh.env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait(lambda: bool(_remote_rsyncs(fleet))), "rsync's remote side never started"
        assert _wait(lambda: _relay_state(connector) == (1, 1))
        proc.send_signal(signal.SIGKILL)  # rsync alone: its helper gets no signal
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert _wait(lambda: _relay_state(connector) == (0, 0)), (
        f"expected the channel closed, relay/budget in use: {_relay_state(connector)}"
    )
    left = wait_gone(rsh.argv[-1])  # the helper (its argv names the relay's socket)
    assert not left, f"expected the helper gone:\n{describe_procs(left)}"
    assert _wait(lambda: not _remote_rsyncs(fleet)), f"left on the host: {_remote_rsyncs(fleet)}"
    assert conn.run_raw("echo still-here").stdout == b"still-here\n"  # the connection lives


def test_a_cancelled_pull_stops_quickly_and_leaves_nothing(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    _big_file(fleet)
    files = collect(connector.connect(host), host.workdir, ["big.bin"])
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        pull(connector, host, files, tmp_path / "dest", cancel=cancel)
    assert time.monotonic() - started < 6
    assert _wait(lambda: _relay_state(connector) == (0, 0))
    assert _wait(lambda: not _remote_rsyncs(fleet)), f"left on the host: {_remote_rsyncs(fleet)}"
    assert not processes_with(channel_relay.HELPER)


def test_closing_the_connector_ends_transfers_and_the_relay(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    _big_file(fleet)
    files = collect(connector.connect(host), host.workdir, ["big.bin"])
    relay_dir = Path(connector.rsync_ssh(host).argv[-1]).parent
    relay = connector._relay
    assert relay is not None
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pull(connector, host, files, tmp_path / "dest")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert _wait(lambda: bool(_remote_rsyncs(fleet)))
    connector.close()
    thread.join(15)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], HostUnreachable), errors
    assert not relay_dir.exists()
    assert not relay._threads and not relay._acceptor.is_alive()
    assert _wait(lambda: not _remote_rsyncs(fleet)), f"left on the host: {_remote_rsyncs(fleet)}"
    assert not processes_with(str(relay_dir))

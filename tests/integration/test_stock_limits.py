"""Hosts with sshd's stock limits: ``MaxSessions 10`` and ``MaxStartups 10:30:100``.

The test fleet raises both (parallel tests would be refused otherwise); most real hosts
keep them. Here they are back, and meshrun must stay under them: more slots than one
connection's sessions (learned from sshd's refusals, an extra pooled connection, every
task exactly once, no host lost), and a fan-out through one bastion whose MaxStartups
would drop a burst of new connections.
"""

from __future__ import annotations

import collections
import logging
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeFleet, _require_sshd
from dispatch_helpers import dispatch, task_statuses, write_project
from helpers import run_meshrun

from meshrun.config.inventory import load_inventory
from meshrun.testing.fleet import LOOPBACK, STOCK_LIMITS, Fleet
from meshrun.transport import startups
from meshrun.transport.ssh import SSHConnector

SLOTS = 16  # more than MaxSessions 10


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """17 hosts with stock limits: h1 and h2 take dispatches, h1 is also the bastion."""
    _require_sshd()
    with Fleet.start(17, tmp_path_factory.mktemp("stock"), **STOCK_LIMITS) as fleet:
        yield fleet


def _two_hosts(fleet: Fleet, path: Path) -> Path:
    """h1 and h2 with ``slots = 16``."""
    lines = [
        "[defaults]",
        f'user = "{fleet.user}"',
        f'identity = "{fleet.client_key}"',
        f'known_hosts = "{fleet.known_hosts}"',
        f"slots = {SLOTS}",
    ]
    for h in fleet.hosts[:2]:
        lines += ["", "[[host]]", f'name = "{h.name}"', f'address = "{LOOPBACK}"']
        lines += [f"port = {h.port}", f'workdir = "{h.workdir}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def _runs(fleet: Fleet, record: str) -> collections.Counter[str]:
    """How often each task name was written to ``record`` in the hosts' homes."""
    counts: collections.Counter[str] = collections.Counter()
    for h in fleet.hosts[:2]:
        path = h.home / record
        if path.exists():
            counts.update(path.read_text().split())
            path.unlink()
    return counts


def _log_tail(fleet: Fleet, names: list[str]) -> dict[str, int]:
    return {n: fleet.host(n).log.stat().st_size for n in names}


def _new_log(fleet: Fleet, since: dict[str, int]) -> str:
    out = []
    for name, size in since.items():
        with fleet.host(name).log.open(errors="replace") as f:
            f.seek(size)
            out.append(f.read())
    return "".join(out)


@pytest.mark.parametrize(
    "mode",
    [
        # One channel per task; no workspace push, to keep the churn on task channels.
        pytest.param(["--no-agent", "--no-sync"], id="exec-channels"),
        # The default path: the workspace push (rsync over channels of the same budget),
        # then the agent's one channel.
        pytest.param([], id="agent"),
    ],
)
def test_slots_above_max_sessions_run_every_task_exactly_once(
    stock: Fleet, tmp_path: Path, mode: list[str]
) -> None:
    record = f"ran-{tmp_path.name}.txt"
    names = [f"t{i:03d}" for i in range(300)]
    # Each task waits until more tasks have started on its host than one connection
    # holds: so many short tasks on a loaded machine could otherwise end before an 11th
    # session was ever asked for, and sshd's limit would never be hit. (At most 30 s, so
    # a meshrun that never opens the 11th session fails on the checks below, not a hang.)
    over_limit = STOCK_LIMITS["max_sessions"] + 1
    run = (
        f'echo "$MESHRUN_TASK" >> "$HOME"/{record}; i=0; '
        f'while [ "$(wc -l < "$HOME"/{record})" -lt {over_limit} ] && [ "$i" -lt 300 ]; '
        "do sleep 0.1; i=$((i+1)); done; sleep 0.02"
    )
    tasks_file = write_project(tmp_path / "proj", [{"name": n, "run": run} for n in names])
    hosts = _two_hosts(stock, tmp_path / "hosts.toml")
    since = _log_tail(stock, ["h1", "h2"])

    r = dispatch(tasks_file, hosts, "-v", *mode, timeout_s=90)

    assert r.rc == 0, f"expected exit 0{r.describe()}"
    assert set(task_statuses(r).values()) == {"succeeded"}, r.describe()
    assert {n: h["status"] for n, h in r.hosts.items()} == {"h1": "ok", "h2": "ok"}, (
        f"expected no host lost{r.describe()}"
    )
    assert {h["slots"] for h in r.hosts.values()} == {SLOTS}
    counts = _runs(stock, record)
    twice = sorted(n for n, c in counts.items() if c > 1)
    missing = sorted(set(names) - set(counts))
    assert not twice and not missing, f"expected each task once: twice {twice}, never {missing}"
    if "--no-agent" in mode:
        # One channel per task: sshd refused the 11th session of a connection, and
        # meshrun said what it learned and opened another connection, not a lost host.
        assert "no more sessions" in _new_log(stock, since), "expected sshd's limit to be hit"
        assert "learning its limit" in r.stderr, r.describe()
        assert "opened connection 2 of at most" in r.stderr, r.describe()


def _proxy_config(fleet: Fleet, path: Path) -> Path:
    """ssh_config: h2.. reached by ``ProxyCommand ssh -W`` through h1 (the bastion)."""
    bastion = fleet.hosts[0]
    ssh = [
        "ssh", "-F", "/dev/null", "-i", str(fleet.client_key),
        "-o", f"UserKnownHostsFile={fleet.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256",
        "-p", str(bastion.port), "-W", "%h:%p", f"{fleet.user}@{LOOPBACK}",
    ]  # fmt: skip
    lines = []
    for h in fleet.hosts[1:]:
        lines += [f"Host {h.name}", f"  HostName {LOOPBACK}", f"  Port {h.port}"]
        lines += [f"  ProxyCommand {shlex.join(ssh)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_exec_through_a_stock_bastion_stays_under_its_max_startups(
    stock: Fleet, tmp_path: Path
) -> None:
    config = _proxy_config(stock, tmp_path / "ssh_config")
    lines = [
        "[defaults]",
        f'user = "{stock.user}"',
        f'identity = "{stock.client_key}"',
        f'known_hosts = "{stock.known_hosts}"',
    ]
    for h in stock.hosts[1:]:  # an ssh_config alias: ssh_config says how to reach them
        lines += ["", "[[host]]", f'name = "{h.name}"', f'address = "{h.name}"']
        lines += [f'workdir = "{h.workdir}"']
    hosts = tmp_path / "hosts.toml"
    hosts.write_text("\n".join(lines) + "\n")
    since = _log_tail(stock, ["h1"])

    r = run_meshrun(
        "exec", "-H", hosts, "--json", "--", "echo hi from $MESHRUN_HOST",
        env={"MESHRUN_SSH_CONFIG": str(config)},
    )  # fmt: skip

    assert r.rc == 0, f"expected exit 0{r.describe()}"
    assert set(r.statuses().values()) == {"ok"} and len(r.hosts) == 16, r.describe()
    # 16 ProxyCommands at once would be 16 unauthenticated connections on the bastion,
    # past its MaxStartups of 10; the gate lets 8 through at a time.
    assert startups.HANDSHAKES_PER_GATEWAY < 10
    assert "past MaxStartups" not in _new_log(stock, since)


def _squat(port: int) -> socket.socket:
    """Another client's connection that has not logged in: with ``MaxStartups 1`` sshd
    drops any more. (The fleet's own start-up probe may still count for a moment.)"""
    deadline = time.monotonic() + 5
    while True:
        sock = socket.create_connection((LOOPBACK, port))
        if sock.recv(64).startswith(b"SSH-2.0-"):
            return sock
        sock.close()
        assert time.monotonic() < deadline, "expected sshd to take one connection"
        time.sleep(0.02)


def test_a_dial_that_sshd_drops_under_max_startups_is_tried_again(
    make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(1, max_startups="1")
    (host,) = load_inventory(fleet.hosts_toml)
    squatter = _squat(fleet.hosts[0].port)
    threading.Timer(0.15, squatter.close).start()
    connector = SSHConnector(ssh_config_path="/nonexistent")
    try:
        with caplog.at_level(logging.INFO, logger=startups.__name__):
            conn = connector.connect(host)
        assert conn.run_raw("echo ok").stdout == b"ok\n"
    finally:
        connector.close()
        squatter.close()
    assert "past MaxStartups" in fleet.hosts[0].log.read_text(), "expected a drop"
    assert "dropped the connection early" in caplog.text

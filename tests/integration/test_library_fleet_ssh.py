"""``meshrun.Fleet`` against real sshd hosts: the calls of one ``with`` share one
connection per host, failed and unreachable hosts are results, and leaving the ``with``
(normally or by an exception) closes every connection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import meshrun
from meshrun.testing.fleet import Fleet as SimFleet

MakeFleet = Callable[..., SimFleet]


@pytest.fixture(autouse=True)
def _no_user_ssh_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what hosts.toml says: not this machine's ~/.ssh/config."""
    monkeypatch.setenv("MESHRUN_SSH_CONFIG", "/dev/null")


def logins(fleet: SimFleet) -> dict[str, int]:
    """Each host's accepted SSH logins so far (its sshd log, LogLevel VERBOSE)."""
    return {h.name: h.log.read_text().count("Accepted publickey") for h in fleet.hosts}


def links_to(fleet: SimFleet) -> list[int]:
    """This process's TCP connections to the hosts' sshd ports."""
    ports = {h.port for h in fleet.hosts}
    return [
        c.raddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED
    ]


def test_run_script_pull_and_dispatch_in_one_with_connect_once_per_host(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    sim = make_fleet(3)
    script = tmp_path / "deploy.sh"
    script.write_text('#!/bin/sh\nmkdir -p logs && echo "$1 on $MESHRUN_HOST" > logs/deploy.log\n')
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "input.txt").write_text("data\n")
    (workspace / "tasks.toml").write_text(
        "".join(
            f'[[task]]\nname = "t{i}"\nrun = "cat input.txt > out{i}.txt"\n'
            f'outputs = ["out{i}.txt"]\n\n'
            for i in range(1, 5)
        )
        + '[[task]]\nname = "all"\nneeds = ["t1", "t2", "t3", "t4"]\n'
        'run = "cat out1.txt out2.txt out3.txt out4.txt"\n'
    )
    before = logins(sim)
    outputs: list[tuple[str, str, bytes]] = []
    with meshrun.Fleet.from_inventory(sim.hosts_toml, state_dir=tmp_path / "state") as fleet:
        ran = fleet.run("hostname; uptime", timeout="30s", on_output=lambda *o: outputs.append(o))
        deployed = fleet.script(script, "v42")
        pulled = fleet.pull("logs/*.log", into=tmp_path / "out")
        probed = fleet.probe()
        dispatched = fleet.dispatch(workspace / "tasks.toml", junit=tmp_path / "junit.xml")
        again = fleet.run("true")
        assert len(links_to(sim)) == 3  # still connected: one link per host
    assert [r.exit_code for r in (ran, deployed, pulled, probed, dispatched, again)] == [0] * 6
    assert {host for host, _, _ in outputs} == {"h1", "h2", "h3"}
    assert [len(h.files) for h in pulled.results] == [1, 1, 1]
    assert (tmp_path / "out" / "h2" / "logs" / "deploy.log").read_text() == "v42 on h2\n"
    assert [t.name for t in dispatched.succeeded] == ["t1", "t2", "t3", "t4", "all"]
    assert (workspace / "out3.txt").read_text() == "data\n"
    after = logins(sim)
    assert {name: after[name] - before[name] for name in after} == {"h1": 1, "h2": 1, "h3": 1}
    for name in sim.names:  # the with closed them: nothing left on any host
        assert sim.wait_no_sessions(name) == []
    assert links_to(sim) == []


def test_failed_and_unreachable_hosts_are_results_not_exceptions(make_fleet: MakeFleet) -> None:
    sim = make_fleet(3)
    sim.kill("h3")
    with meshrun.Fleet.from_inventory(sim.hosts_toml, connect_timeout=5) as fleet:
        report = fleet.run('echo "on $MESHRUN_HOST"; [ "$MESHRUN_HOST" != h1 ]')
        probes = fleet.probe()
        with pytest.raises(meshrun.RunFailed) as caught:
            fleet.run("true", check=True)
    assert [(h.name, h.status.value) for h in report.succeeded] == [("h2", "ok")]
    failed = {h.name: h for h in report.failed}
    assert (failed["h1"].status.value, failed["h1"].exit_code, failed["h1"].stdout) == (
        "failed",
        1,
        b"on h1\n",
    )
    assert failed["h3"].status is meshrun.HostStatus.UNREACHABLE
    assert failed["h3"].exit_code is None and failed["h3"].error
    assert report.exit_code == meshrun.ExitCode.CONNECT
    assert [p.name for p in probes.failed] == ["h3"] and probes.exit_code == 3
    assert caught.value.exit_code == 3
    assert [h.name for h in caught.value.report.failed] == ["h3"]


def test_an_exception_inside_the_with_closes_every_connection(make_fleet: MakeFleet) -> None:
    sim = make_fleet(2)
    with pytest.raises(KeyError), meshrun.Fleet.from_inventory(sim.hosts_toml) as fleet:
        fleet.run("true")
        assert sorted(links_to(sim)) == sorted(h.port for h in sim.hosts)
        raise KeyError("a bug in the caller's code")
    assert links_to(sim) == []
    for name in sim.names:
        assert sim.wait_no_sessions(name) == []


def test_the_cli_way_closes_each_host_as_soon_as_it_is_done(make_fleet: MakeFleet) -> None:
    """keep_connections=False (what the one-shot commands use): no call leaves a link."""
    sim = make_fleet(2)
    before = logins(sim)
    with meshrun.Fleet.from_inventory(sim.hosts_toml, keep_connections=False) as fleet:
        fleet.run("true")
        assert links_to(sim) == []
        fleet.run("true")
    after = logins(sim)
    assert {name: after[name] - before[name] for name in after} == {"h1": 2, "h2": 2}

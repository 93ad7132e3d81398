"""``meshrun dispatch --discover``: agents on the LAN join and leave a running dispatch.

Real ``meshrun agent`` processes announce real sshd hosts over zeroconf bound to
127.0.0.1; every agent carries a random label and the run is limited to it, so other
tests' agents on loopback never join.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from conftest import MakeFleet
from discovery_helpers import LOOPBACK
from dispatch_helpers import kill_on_error, spawn_dispatch, tasks_of, write_project
from helpers import describe_procs, finish, marker_seconds, wait_gone, wait_running

from meshrun.testing.fleet import Fleet, SimHost


def defaults_only(fleet: Fleet, path: Path) -> Path:
    """A hosts.toml with only [defaults]: how to log in to whatever agent is found."""
    path.write_text(
        f'[defaults]\nuser = "{fleet.user}"\nidentity = "{fleet.client_key}"\n'
        f'known_hosts = "{fleet.known_hosts}"\n'
    )
    return path


def agent_args(host: SimHost, *labels: str) -> list[str | os.PathLike[str]]:
    """``meshrun agent`` options that announce ``host`` (its sshd, key and workdir)."""
    return [
        "--labels",
        ",".join(labels),
        "--host-key",
        host.host_key.with_suffix(".pub"),
        "--ssh-port",
        str(host.port),
        "--workdir",
        str(host.workdir),
        "--slots",
        "2",
    ]


def discover_flags(token: str, timeout: str) -> list[str]:
    return [
        "--discover",
        "--interface",
        LOOPBACK,
        "--discover-timeout",
        timeout,
        "--limit",
        f"label:{token}",
    ]


def test_an_agent_that_appears_mid_run_joins_and_takes_work_only_it_can_run(
    make_fleet: MakeFleet, start_agents: Any, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    h1, h2 = fleet.hosts
    token = "t" + secrets.token_hex(4)
    marker = marker_seconds(3)
    tasks_file = write_project(
        tmp_path / "proj",
        [
            *({"name": f"warm{i}", "run": f"sleep {marker}"} for i in range(2)),
            {"name": "special", "run": "echo on $MESHRUN_HOST", "labels": ["special"]},
        ],
        sync={"paths": []},
    )
    (first,) = start_agents((f"{token}-a", agent_args(h1, token)))
    proc = spawn_dispatch(
        tasks_file, defaults_only(fleet, tmp_path / "hosts.toml"), *discover_flags(token, "60s")
    )
    try:
        wait_running(f"sleep {marker}", 2, timeout_s=20)
        # Nobody can run "special" yet: it waits for discovery instead of failing.
        (second,) = start_agents((f"{token}-b", agent_args(h2, token, "special")))
        r = finish(proc, timeout_s=60)
    finally:
        kill_on_error(proc)
    assert r.rc == 0, r.describe()
    tasks = tasks_of(r)
    assert tasks["special"]["host"] == second.name, r.describe()
    assert {tasks["warm0"]["host"], tasks["warm1"]["host"]} == {first.name}, r.describe()
    hosts = {h["name"]: h["status"] for h in r.doc["hosts"]}
    assert hosts == {first.name: "ok", second.name: "ok"}, r.describe()


def test_an_agent_that_leaves_is_a_lost_host_and_its_task_moves(
    make_fleet: MakeFleet, start_agents: Any, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    h1, h2 = fleet.hosts
    token = "t" + secrets.token_hex(4)
    marker = marker_seconds()
    first_name = f"{token}-a"
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "t",
                "run": f'if [ "$MESHRUN_HOST" = {first_name} ]; then sleep {marker}; fi; echo done',
            }
        ],
        sync={"paths": []},
    )
    (first,) = start_agents((first_name, agent_args(h1, token)))
    proc = spawn_dispatch(
        tasks_file, defaults_only(fleet, tmp_path / "hosts.toml"), *discover_flags(token, "30s")
    )
    try:
        wait_running(f"sleep {marker}", 1, timeout_s=20)
        (second,) = start_agents((f"{token}-b", agent_args(h2, token)))
        assert first.stop() == 0, first.describe()  # SIGTERM: goodbye packets
        r = finish(proc, timeout_s=60)
    finally:
        kill_on_error(proc)
    assert r.rc == 0, r.describe()
    (task,) = r.doc["tasks"]
    assert (task["status"], task["host"]) == ("succeeded", second.name), r.describe()
    hosts = {h["name"]: h for h in r.doc["hosts"]}
    assert hosts[first.name]["status"] == "lost", r.describe()
    assert "left the network" in hosts[first.name]["error"], r.describe()
    left = wait_gone(marker)
    assert not left, f"the lost host's task must be killed there:\n{describe_procs(left)}"


def test_with_discover_and_no_agent_at_all_the_run_exits_3(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(0)
    token = "t" + secrets.token_hex(4)
    tasks_file = write_project(
        tmp_path / "proj", [{"name": "t", "run": "true"}], sync={"paths": []}
    )
    proc = spawn_dispatch(
        tasks_file, defaults_only(fleet, tmp_path / "hosts.toml"), *discover_flags(token, "1s")
    )
    try:
        r = finish(proc, timeout_s=30)
    finally:
        kill_on_error(proc)
    assert r.rc == 3, r.describe()
    assert tasks_of(r)["t"]["status"] == "cancelled", r.describe()

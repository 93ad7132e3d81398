"""The workdir lease over real sshd (hosts without the agent claim their run's workdir
through a channel that holds an flock): two claims at once get ``KEY`` and ``KEY.2``,
a closed lease's workdir is claimable again, so is one whose coordinator's link went,
and a stale workdir is removed while a held one is not."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshrun.config.inventory import Host, load_inventory
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector
from meshrun.workspace.lease import WorkdirLease, lease_workdir
from meshrun.workspace.workdirs import WORKDIRS

WEEK = 7 * 86400.0


@pytest.fixture
def host_and_connector(fleet4: Fleet) -> Iterator[tuple[Host, SSHConnector]]:
    host = load_inventory(fleet4.hosts_toml)[0]
    connector = SSHConnector(ssh_config_path="/nonexistent")
    try:
        yield host, connector
    finally:
        connector.close()


@pytest.fixture
def base(fleet4: Fleet) -> Path:
    """A fresh base directory on the first host (fleet4 is shared by the session)."""
    return fleet4.hosts[0].workdir / f"lease-{uuid.uuid4().hex[:8]}"


def _wait_until(
    check: Callable[[], bool], timeout_s: float = 15.0, seen: Callable[[], object] = str
) -> None:
    """Poll ``check``; at the timeout, fail showing ``seen()``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out; still there: {seen()}"
        time.sleep(0.1)


def _left_of(ws: Path, name: str) -> list[str]:
    """What a cleanup of workdir ``name`` has still to remove: the directory, its lock,
    the ``.trash-*`` it is moved to before it is deleted."""
    return sorted(
        p.name
        for p in ws.iterdir()
        if p.name in (name, f"{name}.lock") or p.name.startswith(".trash-")
    )


def test_two_claims_at_once_get_two_workdirs_and_a_closed_one_is_free_again(
    host_and_connector: tuple[Host, SSHConnector], base: Path
) -> None:
    host, connector = host_and_connector
    conn = connector.connect(host)
    key = "proj-0123456789ab"
    first = lease_workdir(conn, str(base), key, WEEK)
    second = lease_workdir(conn, str(base), key, WEEK)
    try:
        assert (first.path, second.path) == (
            str(base / WORKDIRS / key),
            str(base / WORKDIRS / f"{key}.2"),
        )
        assert first.locked and Path(first.path).is_dir() and Path(second.path).is_dir()
        first.close()
        with lease_workdir(conn, str(base), key, WEEK) as again:
            assert again.path == first.path
    finally:
        first.close()
        second.close()


def test_a_lease_whose_link_went_is_released(
    host_and_connector: tuple[Host, SSHConnector], base: Path
) -> None:
    host, connector = host_and_connector
    lease = lease_workdir(connector.connect(host), str(base), "k", WEEK)
    assert lease.path.endswith(f"/{WORKDIRS}/k")
    connector.close()  # the coordinator's connection is gone, the lease never closed
    other = SSHConnector(ssh_config_path="/nonexistent")
    taken: list[WorkdirLease] = []
    try:

        def claimed_k() -> bool:
            got = lease_workdir(other.connect(host), str(base), "k", WEEK)
            taken.append(got)
            if got.path == lease.path:
                return True
            # k.2 while the host has not yet seen the link go: give it back, or every
            # try would hold one more and the 33rd would find all 32 workdirs taken.
            got.close()
            return False

        _wait_until(claimed_k)
    finally:
        for got in taken:
            got.close()
        other.close()


def test_a_stale_workdir_is_removed_and_a_held_one_is_not(
    host_and_connector: tuple[Host, SSHConnector], base: Path
) -> None:
    host, connector = host_and_connector
    conn = connector.connect(host)
    eight_days_ago = time.time() - 8 * 86400
    with lease_workdir(conn, str(base), "held", WEEK) as held:
        ws = base / WORKDIRS
        for name in ("held", "stale"):
            (ws / name / "sub").mkdir(parents=True, exist_ok=True)
            (ws / name / "sub" / "f.txt").write_text(name)
            (ws / f"{name}.lock").touch()
            os.utime(ws / f"{name}.lock", (eight_days_ago, eight_days_ago))
        with lease_workdir(conn, str(base), "mine", WEEK) as mine:
            assert mine.path == str(ws / "mine")
            # The cleanup moves the directory to .trash-*, then removes the lock, then
            # the trash: wait for all three (the directory alone goes first).
            _wait_until(lambda: not _left_of(ws, "stale"), seen=lambda: _left_of(ws, "stale"))
            assert (ws / "held" / "sub" / "f.txt").read_text() == "held"
            assert Path(held.path).is_dir() and (ws / "held.lock").exists()

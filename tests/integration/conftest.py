"""Integration tests run against real sshd processes on loopback (meshrun.testing.fleet)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from discovery_helpers import AgentProcess

from meshrun.config.inventory import Host, load_inventory
from meshrun.testing.fleet import SSHD, Fleet
from meshrun.transport.ssh import SSHConnector

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration, so `-m "not integration"` skips it."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def _require_sshd() -> None:
    """Skip without openssh-server locally; in CI a missing sshd is a broken setup."""
    if Path(SSHD).exists():
        return
    if os.environ.get("CI"):
        pytest.fail("openssh-server is not installed; run scripts/test which installs it")
    pytest.skip(f"{SSHD} not found (openssh-server is not installed)")


MakeFleet = Callable[..., Fleet]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Factory: make_fleet(count, **kw) -> a started Fleet, stopped at teardown."""
    _require_sshd()
    fleets: list[Fleet] = []

    def make(count: int, **kw: Any) -> Fleet:
        fleet = Fleet.start(count, tmp_path / f"fleet{len(fleets)}", **kw)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


Pause = Callable[[Fleet, str], None]


@pytest.fixture
def pause(make_fleet: MakeFleet) -> Iterator[Pause]:
    """``pause(fleet, name)``: ``fleet.pause(name)`` now, ``fleet.resume(name)`` at
    teardown (before the fleet stops), even when the test fails."""
    paused: list[tuple[Fleet, str]] = []

    def do(fleet: Fleet, name: str) -> None:
        paused.append((fleet, name))
        fleet.pause(name)

    yield do
    for fleet, name in paused:
        fleet.resume(name)


#: The hosts ``hung_fleet`` pauses: several, so a race between them shows on every run.
HUNG = ("h2", "h3", "h4")


@pytest.fixture
def hung_fleet(make_fleet: MakeFleet, pause: Pause) -> Fleet:
    """Four hosts with :data:`HUNG` paused (TCP connects, no SSH banner comes): only h1
    answers."""
    fleet = make_fleet(4)
    for name in HUNG:
        pause(fleet, name)
    return fleet


@pytest.fixture
def one(make_fleet: MakeFleet) -> Iterator[tuple[Fleet, Host, SSHConnector]]:
    """A one-host fleet, its Host and an SSHConnector that reads no ssh_config."""
    fleet = make_fleet(1)
    (host,) = load_inventory(fleet.hosts_toml)
    connector = SSHConnector(ssh_config_path="/nonexistent")
    try:
        yield fleet, host, connector
    finally:
        connector.close()


@pytest.fixture(scope="session")
def fleet4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Four hosts shared by the whole session: only for tests that break nothing."""
    _require_sshd()
    with Fleet.start(4, tmp_path_factory.mktemp("fleet4")) as fleet:
        yield fleet


@pytest.fixture
def start_agents() -> Iterator[Any]:
    """start_agents((name, args), ...) -> AgentProcesses, all announced; killed at the end."""
    started: list[AgentProcess] = []

    def start(*specs: tuple[str, list[str | os.PathLike[str]]]) -> list[AgentProcess]:
        agents = [AgentProcess(name, *args) for name, args in specs]
        started.extend(agents)
        for agent in agents:
            agent.wait_for("announced")
        return agents

    yield start
    for agent in started:
        agent.kill()

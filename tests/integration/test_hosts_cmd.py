"""``meshrun hosts``: reachability, login, CPUs, load and python3 of every host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import HUNG
from helpers import run_meshrun, stranger_inventory

from meshrun.testing.fleet import Fleet

MakeFleet = Callable[..., Fleet]


def test_hosts_reports_every_host_reachable(fleet4: Fleet) -> None:
    r = run_meshrun("hosts", "--hosts", fleet4.hosts_toml, "--json")
    assert r.rc == 0, f"expected exit 0 with every host reachable{r.describe()}"
    assert r.doc["schema"] == 1 and r.doc["ok"] is True, r.describe()
    assert [h["name"] for h in r.doc["hosts"]] == fleet4.names, r.describe()
    for name, h in r.hosts.items():
        assert h["address"] == "127.0.0.1", f"expected {name}'s address, got {h}"
        assert h["reachable"] is True and h["auth_ok"] is True, f"expected {name} ok, got {h}"
        assert h["error"] is None, f"expected no error on {name}, got {h}"
        assert isinstance(h["cpus"], int) and h["cpus"] >= 1, f"expected cpus >= 1, got {h}"
        assert h["python3"] is True, f"expected python3 on {name}, got {h}"
        assert h["rtt_ms"] is not None and h["rtt_ms"] > 0, f"expected a round trip, got {h}"
        load = h["load"]
        assert isinstance(load, list) and len(load) == 3, f"expected 3 load averages, got {h}"
        assert all(isinstance(x, int | float) and x >= 0 for x in load), f"bad load in {h}"


def test_hosts_table_without_json(fleet4: Fleet) -> None:
    r = run_meshrun("hosts", "--hosts", fleet4.hosts_toml)
    assert r.rc == 0, r.describe()
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["HOST", "ADDRESS", "STATUS", "RTT", "CPUS", "LOAD", "PYTHON3"], (
        f"expected a table header{r.describe()}"
    )
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == fleet4.names, r.describe()
    for name, cells in rows.items():
        assert cells[1:3] == ["127.0.0.1", "ok"] and cells[-1] == "yes", (
            f"expected {name} ok with python3{r.describe()}"
        )


def test_hosts_with_a_killed_host_exits_3(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    fleet.kill("h2")
    r = run_meshrun("hosts", "--hosts", fleet.hosts_toml, "--json")
    assert r.rc == 3, f"expected exit 3 with an unreachable host{r.describe()}"
    assert r.doc["ok"] is False, r.describe()
    h2 = r.hosts["h2"]
    assert h2["reachable"] is False and h2["auth_ok"] is False, f"expected h2 down, got {h2}"
    assert "refused" in (h2["error"] or "").lower(), f"expected 'connection refused': {h2}"
    assert h2["cpus"] is None and h2["python3"] is None, f"expected no facts for h2: {h2}"
    for name in ("h1", "h3"):
        assert r.hosts[name]["reachable"] is True, f"expected {name} reachable{r.describe()}"


def test_hosts_with_a_refused_key_is_reachable_but_not_logged_in(
    fleet4: Fleet, tmp_path: Path
) -> None:
    _, inventory = stranger_inventory(tmp_path, fleet4)
    r = run_meshrun("hosts", "--hosts", inventory, "--json")
    assert r.rc == 3, f"expected exit 3 when the login is refused{r.describe()}"
    h1 = r.hosts["h1"]
    assert (h1["reachable"], h1["auth_ok"]) == (True, False), f"expected refused login: {h1}"
    assert "refused every key" in (h1["error"] or ""), f"expected the reason: {h1}"


def test_hosts_with_hung_hosts_exits_3(hung_fleet: Fleet) -> None:
    fleet = hung_fleet
    for _ in range(2):
        r = run_meshrun("hosts", "--hosts", fleet.hosts_toml, "--json", "--connect-timeout", "1s")
        assert r.rc == 3, f"expected exit 3 with hung hosts{r.describe()}"
        assert "Traceback" not in r.stderr, f"expected no traceback{r.describe()}"
        for name in HUNG:
            h = r.hosts[name]
            assert h["reachable"] is False and "banner" in (h["error"] or ""), (
                f"expected {name} unreachable with a banner timeout, got {h}"
            )
        assert r.hosts["h1"]["reachable"] is True, r.describe()

"""Discovered agents -> inventory Hosts, merged with --hosts, and written as hosts.toml."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.config.inventory import Host, HostDefaults, load_inventory, read_inventory
from meshrun.discovery.hosts import (
    agent_to_host,
    discovery_inventory,
    hosts_toml,
    merge_hosts,
    write_hosts_toml,
)
from meshrun.discovery.record import Agent
from meshrun.errors import InputError, InventoryError

FINGERPRINT = "SHA256:" + "A" * 43

AGENT = Agent(
    name="build-1",
    address="10.0.0.11",
    port=2222,
    user="ci",
    slots=8,
    cpus=16,
    labels=("linux", "x86_64"),
    workdir="/var/tmp/meshrun",
    os="linux",
    arch="x86_64",
    host_key_type="ssh-ed25519",
    host_key_fingerprint=FINGERPRINT,
)


def test_an_agent_becomes_a_host_holding_its_advertised_key() -> None:
    host = agent_to_host(AGENT)
    assert host == Host(
        name="build-1",
        address="10.0.0.11",
        port=2222,
        user="ci",
        workdir="/var/tmp/meshrun",
        slots=8,
        labels=frozenset({"linux", "x86_64"}),
        advertised_fingerprint=FINGERPRINT,
        advertised_key_type="ssh-ed25519",
    )


def test_the_coordinator_chooses_the_login_and_the_agent_its_workdir() -> None:
    defaults = HostDefaults(
        user="builder",
        identity="~/.ssh/ci",
        known_hosts="/etc/ci/known_hosts",
        workdir="/scratch/{name}",
        weight=2.0,
        port=22,
        slots=1,
        labels=frozenset({"ignored"}),
        proxy_jump="bastion",
    )
    host = agent_to_host(AGENT, defaults)
    assert (host.user, host.identity, host.known_hosts) == (
        "builder",
        "~/.ssh/ci",
        "/etc/ci/known_hosts",
    )
    assert (host.workdir, host.weight, host.port, host.slots) == ("/var/tmp/meshrun", 2.0, 2222, 8)
    assert host.labels == {"linux", "x86_64"} and host.proxy_jump is None
    bare = agent_to_host(replace(AGENT, user=None, workdir=None), defaults)
    assert (bare.user, bare.workdir) == ("builder", "/scratch/build-1")
    plain = agent_to_host(replace(AGENT, user=None, workdir=None))
    assert (plain.user, plain.workdir) == (None, Host(name="x").workdir)


def test_merging_keeps_the_inventory_entry_of_a_known_host() -> None:
    listed = [Host(name="build-1", address="10.9.9.9"), Host(name="old", address="10.0.0.12")]
    same_endpoint = replace(AGENT, name="other", address="10.0.0.12", port=22)
    new = replace(AGENT, name="build-2", address="10.0.0.13")
    merged = merge_hosts(listed, [AGENT, same_endpoint, new])
    assert [h.name for h in merged] == ["build-1", "old", "build-2"]
    assert merged[0].address == "10.9.9.9" and merged[2].advertised_fingerprint == FINGERPRINT


def test_a_defaults_only_inventory_is_valid_for_discovery(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[defaults]\nuser = "ci"\nidentity = "~/.ssh/ci"\nslots = "auto"\n')
    with pytest.raises(InventoryError, match="no hosts"):
        load_inventory(path)
    inventory = read_inventory(path, hosts_required=False)
    assert inventory.hosts == ()
    assert inventory.defaults == HostDefaults(user="ci", identity="~/.ssh/ci")
    overridden = discovery_inventory(str(path), user="root", known_hosts="/kh")
    assert overridden.defaults == HostDefaults(user="root", identity="~/.ssh/ci", known_hosts="/kh")


def test_discovery_inventory_of_inline_lists_and_of_nothing() -> None:
    assert discovery_inventory(None).hosts == ()
    inline = discovery_inventory("web1,root@10.0.0.5:2222", identity="/k")
    assert [h.name for h in inline.hosts] == ["web1", "10.0.0.5:2222"]
    assert inline.defaults == HostDefaults(identity="/k")


def test_a_bad_inventory_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[defaults]\nusr = "ci"\n')
    with pytest.raises(InventoryError, match="unknown key 'usr'"):
        discovery_inventory(str(path))


# -- hosts.toml --------------------------------------------------------------------------


def test_written_hosts_toml_loads_back(tmp_path: Path) -> None:
    agents = [
        AGENT,
        replace(AGENT, name="b", user=None, workdir=None, labels=(), address="10.0.0.2", port=22),
    ]
    path = tmp_path / "hosts.toml"
    write_hosts_toml(path, agents)
    hosts = load_inventory(path)
    assert hosts == [
        replace(agent_to_host(a), advertised_fingerprint=None, advertised_key_type=None)
        for a in agents
    ]
    assert f"# advertised host key ssh-ed25519 {FINGERPRINT}; 16 CPUs, linux/x86_64" in (
        path.read_text()
    )


def test_write_names_the_option_when_it_cannot(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--write .*/missing/hosts\.toml: cannot write there"):
        write_hosts_toml(tmp_path / "missing" / "hosts.toml", [AGENT])
    (tmp_path / "out" / "dir").mkdir(parents=True)
    with pytest.raises(InputError, match="--write"):
        write_hosts_toml(tmp_path / "out" / "dir", [AGENT])
    left = [p.name for p in (tmp_path / "out").iterdir()]
    assert left == ["dir"], f"a temporary file was left behind: {left}"


_workdirs = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="{}"
    ),
    max_size=30,
).map(lambda tail: "/" + tail)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    workdir=_workdirs,
    user=st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}\Z"),
    labels=st.lists(
        st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:+-]{0,8}\Z"), max_size=4, unique=True
    ),
)
def test_any_valid_agent_round_trips_through_hosts_toml(
    tmp_path: Path, workdir: str, user: str, labels: list[str]
) -> None:
    if not workdir.isprintable():
        return  # the record check refuses it before it gets here
    agent = replace(AGENT, workdir=workdir, user=user, labels=tuple(sorted(labels)))
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_toml([agent]))
    (host,) = load_inventory(path)
    assert (host.workdir, host.user, host.labels) == (workdir, user, frozenset(labels))

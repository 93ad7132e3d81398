"""Zero-config agents with real zeroconf between processes, bound to 127.0.0.1 only.

``meshrun agent`` runs as real subprocesses (the console script, own process group);
browsers are ``meshrun discover`` subprocesses or the library's Browser in this
process. Every name carries a random token and every query filters on it, so
concurrent test runs on this machine (which share loopback multicast) do not see each
other's agents. Agents register in about 1.7 s, so each test starts its agents at once
and the agents the read-only tests share are started once per module.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import platform
import queue
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeFleet
from discovery_helpers import LOOPBACK, REGISTER_TIMEOUT_S, AgentProcess, UnicastThief
from helpers import Result, interrupt, meshrun_argv, run_meshrun

import meshrun
from meshrun.config.inventory import load_inventory
from meshrun.discovery.announce import AgentOptions, Announcer, build_advert
from meshrun.discovery.browse import Browser
from meshrun.discovery.record import SERVICE_TYPE, Advert, encode_txt, service_name, txt_bytes
from meshrun.testing.fleet import Fleet


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key; its .pub path and ``ssh-keygen -lf`` fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub"), fingerprint_of(key.with_suffix(".pub"))


def fingerprint_of(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def discover_json(token: str, *extra: str, timeout: str = "1s") -> Result:
    result = run_meshrun(
        "discover",
        "--json",
        "--interface",
        LOOPBACK,
        "--labels",
        token,
        "--timeout",
        timeout,
        *extra,
    )
    assert result.rc == 0, result.describe()
    return result


# Runs before any agent of this module is started (the shared ones live until the end).
def test_exec_discover_with_no_agent_exits_3(tmp_path: Path) -> None:
    token = "t" + secrets.token_hex(4)
    result = run_meshrun(
        "exec", "--discover", "--interface", LOOPBACK, "--discover-timeout", "0.3s",
        "-l", f"label:{token}", "--", "true",
    )  # fmt: skip
    assert result.rc == 3, result.describe()
    assert "--discover: no meshrun agent answered within 0.3s on 127.0.0.1" in result.stderr


# -- shared agents for the read-only tests ------------------------------------------------


class Shared:
    token: str
    key: Path
    fingerprint: str
    agents: list[AgentProcess]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """Three agents with different names, slots, labels, ports, users and workdirs."""
    state = Shared()
    state.token = "t" + secrets.token_hex(4)
    state.key, state.fingerprint = keypair(tmp_path_factory.mktemp("keys"), "host_key")
    t = state.token
    specs: list[tuple[str, list[str | os.PathLike[str]]]] = [
        (f"{t}-a", ["--slots", "2", "--labels", f"{t},linux", "--user", "ci", "--ssh-port", "2201",
                    "--workdir", "/var/tmp/a"]),
        (f"{t}-b", ["--slots", "8", "--labels", f"{t},gpu", "--labels", "linux", "--ssh-port",
                    "2202"]),
        (f"{t}-c", ["--labels", t, "--workdir", "~/work dir \"q\""]),
    ]  # fmt: skip
    state.agents = [AgentProcess(name, *args, "--host-key", state.key) for name, args in specs]
    try:
        for agent in state.agents:
            agent.wait_for("announced")
        yield state
    finally:
        for agent in state.agents:
            agent.kill()


def test_discover_finds_the_agents_with_their_capacities(shared: Shared) -> None:
    t = shared.token
    result = discover_json(t)
    agents = {a["name"]: a for a in result.doc["agents"]}
    assert result.doc["schema"] == 1
    assert sorted(agents) == [f"{t}-a", f"{t}-b", f"{t}-c"], result.describe()
    common = {
        "address": LOOPBACK,
        "cpus": _cpus(),
        "host_key_fingerprint": shared.fingerprint,
        "host_key_type": "ssh-ed25519",
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "version": 1,
        "meshrun_version": meshrun.__version__,
    }
    user = getpass.getuser()  # what the agents, started with this environment, advertise
    expected = {
        f"{t}-a": {"port": 2201, "user": "ci", "slots": 2, "labels": sorted([t, "linux"]),
                   "workdir": "/var/tmp/a"},
        f"{t}-b": {"port": 2202, "user": user, "slots": 8, "labels": sorted([t, "gpu", "linux"]),
                   "workdir": None},
        f"{t}-c": {"port": 22, "user": user, "slots": _cpus(), "labels": [t],
                   "workdir": '~/work dir "q"'},
    }  # fmt: skip
    for name, fields in expected.items():
        assert agents[name] == {"name": name, **common, **fields}, result.describe()
    gpu = discover_json(t, "--labels", "gpu,linux")
    assert [a["name"] for a in gpu.doc["agents"]] == [f"{t}-b"], gpu.describe()


def test_discover_writes_a_hosts_toml_that_loads(shared: Shared, tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    t = shared.token
    result = run_meshrun(
        "discover", "--interface", LOOPBACK, "--labels", t, "--timeout", "1s", "--write", path
    )
    assert result.rc == 0, result.describe()
    assert f"wrote {path} (3 hosts)" in result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "ADDRESS", "PORT", "USER"], result.stdout
    assert f"{t}-b  127.0.0.1  2202" in result.stdout, result.stdout
    hosts = {h.name: h for h in load_inventory(path)}
    assert sorted(hosts) == [f"{t}-a", f"{t}-b", f"{t}-c"]
    a, c = hosts[f"{t}-a"], hosts[f"{t}-c"]
    assert (a.address, a.port, a.user, a.slots, a.workdir) == (
        LOOPBACK,
        2201,
        "ci",
        2,
        "/var/tmp/a",
    )
    assert a.labels == {t, "linux"} and c.workdir == '~/work dir "q"'
    assert shared.fingerprint in path.read_text()


def _register_raw(zc: Any, records: dict[str, bytes]) -> None:
    """Publish hand-made records at once (no probing: they are not ours to defend)."""
    futures = [
        asyncio.run_coroutine_threadsafe(
            zc.async_register_service(
                _service_info(name, raw), cooperating_responders=True, strict=False
            ),
            zc.loop,
        )
        for name, raw in records.items()
    ]
    for future in futures:
        future.result(10)


def _service_info(name: str, raw: bytes) -> Any:
    from zeroconf import ServiceInfo

    return ServiceInfo(
        SERVICE_TYPE,
        service_name(name),
        port=22,
        properties=raw,
        server="hostile.local.",
        parsed_addresses=[LOOPBACK],
    )


def test_hostile_records_are_ignored_with_a_warning(shared: Shared) -> None:
    from zeroconf import IPVersion, Zeroconf

    t = shared.token
    advert = Advert(
        name="x",
        port=22,
        user="ci",
        slots=4,
        cpus=4,
        labels=(t,),
        workdir=None,
        os="linux",
        arch="x86_64",
        host_key_type="ssh-ed25519",
        host_key_fingerprint=shared.fingerprint,
    )
    good = txt_bytes(encode_txt(advert))

    def txt(**changes: str) -> bytes:
        return txt_bytes({**encode_txt(advert), **changes})

    hostile = {
        f"{t}-v9": (txt(txtvers="9"), "unknown protocol version txtvers='9'"),
        f"{t}-slots": (txt(slots="-3"), "slots='-3' is not a whole number from 1 to 1024"),
        f"{t}-cpus": (txt(cpus="1" * 40), "is not a whole number from 1 to 4096"),
        f"{t}-huge": (
            good + b"".join(txt_bytes({f"pad{i}": "x" * 240}) for i in range(6)),
            "more than 1300",
        ),
        f"{t}-utf8": (good.replace(b"user=ci", b"user=\xff\xfe"), "user= is not UTF-8"),
        f"{t}-trunc": (good + b"\xf0short", "truncated"),
        f"{t}-key": (txt(hostkey="SHA256:short"), "is not a SHA256:... fingerprint"),
        f"{t} spaced": (good, "is not 1-63 letters"),
    }
    zc = Zeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        _register_raw(zc, {name: raw for name, (raw, _) in hostile.items()})
        result = discover_json(t)
    finally:
        zc.close()
    names = sorted(a["name"] for a in result.doc["agents"])
    assert names == [f"{t}-a", f"{t}-b", f"{t}-c"], result.describe()
    for name, (_, reason) in hostile.items():
        warned = [
            line
            for line in result.stderr.splitlines()
            if "WARNING" in line and f"{name}._meshrun._tcp.local." in line
        ]
        assert warned and reason in warned[0], f"no warning for {name!r}{result.describe()}"
    assert "Traceback" not in result.stderr, result.describe()


def test_a_taken_name_is_refused_and_the_default_name_moves_on(
    shared: Shared, tmp_path: Path
) -> None:
    taken = shared.agents[0].name
    conflict = AgentProcess(taken, "--host-key", shared.key)
    try:
        rc = conflict.proc.wait(REGISTER_TIMEOUT_S)
        line = conflict.wait_for("error")
    finally:
        conflict.kill()
    assert rc == 2, conflict.describe()
    assert f"already announces the name {taken!r}" in line and f"--name {taken}-2" in line, line
    # The library's rename, as the agent does for its default (host) name.
    advert = build_advert(
        AgentOptions(name=taken, host_key=str(shared.key), labels=(shared.token,))
    )
    with Announcer([LOOPBACK]) as announcer:
        renamed = announcer.register(advert, rename=True)
    assert renamed == replace(advert, name=f"{taken}-2")


# -- membership: agents joining and leaving a live browser --------------------------------


def test_a_browser_sees_agents_join_and_leave(start_agents: Any, tmp_path: Path) -> None:
    token = "t" + secrets.token_hex(4)
    key, fingerprint = keypair(tmp_path, "key")
    first_key = tmp_path / "first.pub"  # its own copy: it is re-keyed below
    first_key.write_text(key.read_text())
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def expect(kind: str, timeout_s: float = 5.0) -> Any:
        try:
            got_kind, value = events.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no {kind} event within {timeout_s}s") from None
        assert got_kind == kind, f"expected {kind}, got {got_kind} {value}"
        return value

    with Browser(
        interfaces=[LOOPBACK],
        labels={token},
        on_added=lambda agent: events.put(("added", agent)),
        on_updated=lambda agent: events.put(("updated", agent)),
        on_removed=lambda name: events.put(("removed", name)),
    ) as browser:
        first, second = start_agents(
            (f"{token}-1", ["--labels", token, "--slots", "3", "--host-key", first_key]),
            (f"{token}-2", ["--labels", token, "--slots", "5", "--host-key", key]),
        )
        joined = {expect("added").name, expect("added").name}
        assert joined == {first.name, second.name}
        slots = {agent.name: agent.slots for agent in browser.agents()}
        assert slots == {first.name: 3, second.name: 5}
        assert {a.host_key_fingerprint for a in browser.agents()} == {fingerprint}
        host = meshrun.agent_to_host(browser.agents()[0])
        assert (host.slots, host.advertised_fingerprint) == (3, fingerprint)

        # The machine is re-keyed: SIGHUP re-reads the key file and updates the record.
        _, new_fingerprint = keypair(tmp_path / "rekeyed", "key")
        first_key.write_text((tmp_path / "rekeyed" / "key.pub").read_text())
        interrupt(first.proc, signal.SIGHUP)
        updated = expect("updated")
        assert (updated.name, updated.host_key_fingerprint) == (first.name, new_fingerprint)
        first.wait_for(f"host_key_fingerprint {fingerprint} -> {new_fingerprint}")

        assert first.stop(signal.SIGTERM) == 0, first.describe()
        assert expect("removed", 3.0) == first.name
        assert "goodbye" in first.describe() and f"agent {first.name!r} stopped" in first.describe()

        assert second.stop(signal.SIGINT) == 0, second.describe()  # Ctrl-C, as a terminal
        assert expect("removed", 3.0) == second.name
        assert browser.agents() == []
    assert events.empty(), f"unexpected events: {list(events.queue)}"


# -- trust: discovery proposes, SSH decides -----------------------------------------------


def test_exec_discover_holds_agents_to_their_advertised_host_key(
    make_fleet: MakeFleet, start_agents: Any, tmp_path: Path
) -> None:
    fleet: Fleet = make_fleet(2)
    h1, h2 = fleet.hosts
    token = "t" + secrets.token_hex(4)
    other_key, _ = keypair(tmp_path, "not_h2")
    good, spoof = start_agents(
        (
            f"{token}-good",
            ["--labels", token, "--host-key", h1.host_key.with_suffix(".pub"),
             "--ssh-port", str(h1.port), "--workdir", str(h1.workdir)],
        ),
        (
            f"{token}-spoof",
            ["--labels", token, "--host-key", other_key, "--ssh-port", str(h2.port),
             "--workdir", str(h2.workdir)],
        ),
    )  # fmt: skip

    def exec_discover(*options: str | os.PathLike[str]) -> Result:
        return run_meshrun(
            "exec", "--discover", "--interface", LOOPBACK, "--discover-timeout", "1s",
            "-l", f"label:{token}", "--json", *options, "--", "echo", "hi",
        )  # fmt: skip

    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.touch()
    login = ["--identity", str(fleet.client_key), "--user", fleet.user]

    # A key not in known_hosts: refused, even though it matches what was advertised.
    refused = exec_discover(*login, "--known-hosts", empty_known_hosts)
    assert refused.rc == 3, refused.describe()
    assert refused.statuses() == {good.name: "unreachable", spoof.name: "unreachable"}
    assert "unknown host key" in refused.hosts[good.name]["error"]
    assert "matches what the host advertised" in refused.hosts[good.name]["error"]

    # Accepted as new; the spoof is refused whatever the options.
    accepted = exec_discover(*login, "--known-hosts", empty_known_hosts, "--accept-new-host-keys")
    assert accepted.rc == 3, accepted.describe()
    assert accepted.statuses() == {good.name: "ok", spoof.name: "unreachable"}
    assert accepted.hosts[good.name]["stdout"] == "hi\n"
    error = accepted.hosts[spoof.name]["error"]
    assert "possible spoof" in error and "advertised on the LAN" in error, accepted.describe()
    assert fingerprint_of(h2.host_key.with_suffix(".pub")) in error
    added = empty_known_hosts.read_text()
    assert f"[{LOOPBACK}]:{h1.port} " in added and f":{h2.port} " not in added, added

    # Login settings from [defaults] of --hosts; known_hosts knows both real keys.
    defaults_only = tmp_path / "agents.toml"
    defaults_only.write_text(
        f'[defaults]\nuser = "{fleet.user}"\nidentity = "{fleet.client_key}"\n'
        f'known_hosts = "{fleet.known_hosts}"\n'
    )
    known = exec_discover("--hosts", defaults_only)
    assert known.rc == 3, known.describe()
    assert known.statuses() == {good.name: "ok", spoof.name: "unreachable"}
    assert "possible spoof" in known.hosts[spoof.name]["error"]
    assert "possible spoof" in known.stderr, "the console must say why too"

    # `meshrun hosts --discover` checks the agents the same way.
    checked = run_meshrun(
        "hosts", "--discover", "--interface", LOOPBACK, "--discover-timeout", "1s",
        "-l", f"label:{token}", "--hosts", defaults_only, "--json",
    )  # fmt: skip
    assert checked.rc == 3, checked.describe()
    probes = {h["name"]: h for h in checked.doc["hosts"]}
    assert probes[good.name]["reachable"] and probes[good.name]["auth_ok"], checked.describe()
    assert "possible spoof" in (probes[spoof.name]["error"] or ""), checked.describe()


# -- a real link: two network namespaces joined by a veth pair ----------------------------


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A namespace joined to this one by a veth pair: (name, our address, its address).

    Needs root and `ip`; skipped cleanly without them. A random /24 in 10.200-249.x
    keeps concurrent runs apart; deleting the namespace deletes the pair.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = secrets.token_hex(3)
    name, outside, inside = f"mr{tag}", f"mro{tag}", f"mri{tag}"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
    ours, theirs = f"{subnet}.1", f"{subnet}.2"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        for command in (
            f"ip link add {outside} type veth peer name {inside}",
            f"ip link set {inside} netns {name}",
            f"ip addr add {ours}/24 dev {outside}",
            f"ip link set {outside} up",
            f"ip netns exec {name} ip addr add {theirs}/24 dev {inside}",
            f"ip netns exec {name} ip link set {inside} up",
            f"ip netns exec {name} ip link set lo up",
        ):
            step = subprocess.run(command.split(), capture_output=True, text=True)
            if step.returncode != 0:  # e.g. no veth support in this kernel or container
                pytest.skip(f"cannot set up a veth link here: {command}: {step.stderr.strip()}")
        yield name, ours, theirs
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


def test_an_agent_behind_a_veth_link_is_found_on_its_own_address(
    netns: tuple[str, str, str], tmp_path: Path
) -> None:
    name, ours, theirs = netns
    token = "t" + secrets.token_hex(4)
    key, fingerprint = keypair(tmp_path, "key")
    # Inside the namespace "every non-loopback interface" (the default) is the veth end.
    agent = AgentProcess(f"{token}-ns", "--labels", token, "--host-key", key, netns=name)
    try:
        line = agent.wait_for("announced")
        assert f"announced on {theirs}:" in line, agent.describe()
        result = discover_json(token, "--interface", ours)
        found = [(a["name"], a["address"], a["host_key_fingerprint"]) for a in result.doc["agents"]]
        assert found == [(agent.name, theirs, fingerprint)], result.describe()
        assert agent.stop() == 0, agent.describe()
    finally:
        agent.kill()


# -- another mDNS socket on the machine takes the unicast answers -------------------------


@pytest.fixture
def lonely_netns() -> Iterator[str]:
    """A network namespace with only its loopback, down: a machine of its own.

    Needs root and `ip`; skipped cleanly without them.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"mrl{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_netns(netns: str, *args: str | os.PathLike[str]) -> Result:
    """``meshrun ARGS`` inside ``netns``, to completion."""
    argv = ["ip", "netns", "exec", netns, *meshrun_argv(), *map(str, args)]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    if "--json" in argv and proc.returncode == 0:
        result.doc = json.loads(proc.stdout)
    return result


def ip_netns(netns: str, command: str) -> None:
    done = subprocess.run(["ip", "-n", netns, *command.split()], capture_output=True, text=True)
    assert done.returncode == 0, f"ip -n {netns} {command}: {done.stderr}"


def test_an_interface_that_cannot_multicast_is_a_clear_error(
    lonely_netns: str, tmp_path: Path
) -> None:
    """lo has an address but is down: multicast cannot leave it. Rather than announce to
    no one or find nothing, agent and discover say so, naming the interface and fix."""
    ip_netns(lonely_netns, "addr add 127.0.0.1/8 dev lo")
    key, _ = keypair(tmp_path, "key")
    for args in (
        ["agent", "--name", "x", "--interface", LOOPBACK, "--host-key", key],
        ["discover", "--interface", "lo", "--timeout", "0.3s"],
    ):
        result = in_netns(lonely_netns, *args)
        assert result.rc == 1, result.describe()
        assert (
            "--interface 127.0.0.1: cannot send mDNS multicast on lo: Network is unreachable"
            in result.stderr
        ), result.describe()
        assert "ip link set lo up" in result.stderr, result.describe()
        assert "announced" not in result.stderr, result.describe()


def test_unicast_answers_taken_by_another_socket_lose_no_agent_and_no_name_conflict(
    lonely_netns: str, tmp_path: Path
) -> None:
    """zeroconf asks for unicast answers to port 5353 in a browser's first query and in
    an agent's name probes; an agent that has just announced answers them by unicast
    only, and the kernel gives that to one of the sockets sharing the port, by chance.
    Here another socket always gets it: the one-shot query, from a port of our own,
    must still find the agent within a round trip and catch a taken name."""
    ip_netns(lonely_netns, "link set lo up")
    token = "t" + secrets.token_hex(4)
    key, fingerprint = keypair(tmp_path, "key")
    thief = UnicastThief(lonely_netns)
    agent = AgentProcess(
        f"{token}-x", "--interface", LOOPBACK, "--labels", token, "--host-key", key,
        netns=lonely_netns,
    )  # fmt: skip
    twin = None
    try:
        agent.wait_for("announced")
        result = in_netns(
            lonely_netns, "discover", "--json", "--interface", LOOPBACK, "--labels", token,
            "--timeout", "1s",
        )  # fmt: skip
        assert result.rc == 0, result.describe()
        found = [(a["name"], a["host_key_fingerprint"]) for a in result.doc["agents"]]
        assert found == [(agent.name, fingerprint)], result.describe()

        twin = AgentProcess(
            agent.name, "--interface", LOOPBACK, "--host-key", key, netns=lonely_netns
        )
        try:
            rc = twin.proc.wait(REGISTER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None  # it announced the taken name
        assert rc == 2, twin.describe()
        assert f"already announces the name {agent.name!r}" in twin.describe()
        assert thief.taken() > 0, "the agent's unicast answers should have gone to the thief"
    finally:
        for started in (twin, agent):
            if started is not None:
                started.kill()
        thief.kill()

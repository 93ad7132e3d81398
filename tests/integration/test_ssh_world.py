"""meshrun reaches hosts the way the user's own ``ssh`` does.

A non-root account with its own ``~/.ssh`` (config with Include, ProxyJump over two
hops, ProxyCommand, HostKeyAlias, hashed and marked known_hosts lines, a passphrase key
held only by ssh-agent, a user certificate) runs meshrun against real sshd hosts, and
every resolved setting is compared with ``ssh -G`` run as that account.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from user_world import UserWorld, make_user_world, remove_user_world

from meshrun.testing.fleet import SSHD, Fleet
from meshrun.transport.knownhosts import hashed_name

PASSPHRASE = "correct horse"


@pytest.fixture(scope="module")
def world_dir() -> Iterator[Path]:
    # Not under pytest's tmp dir: that is mode 700 and the account must read its home.
    base = Path(tempfile.mkdtemp(prefix="meshrun-world-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def ca(world_dir: Path) -> Path:
    """A user-certificate authority the hosts trust (TrustedUserCAKeys)."""
    key = world_dir / "user_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def fleet(world_dir: Path, ca: Path) -> Iterator[Fleet]:
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed")
    extra = ["LogLevel DEBUG1", f"TrustedUserCAKeys {ca}.pub"]
    with Fleet.start(4, world_dir / "fleet", extra_config=extra) as started:
        yield started


@pytest.fixture(scope="module")
def world(world_dir: Path, fleet: Fleet) -> Iterator[UserWorld]:
    w = make_user_world(world_dir / "users")
    w.copy_key(fleet.client_key, ".ssh/fleet_key")
    w.write(".ssh/fleet_known_hosts", fleet.known_hosts.read_text())
    ports = {h.name: h.port for h in fleet.hosts}
    w.write(
        ".ssh/config",
        "# a user's config: the fleet lives in an included file\n"
        "Include ~/.ssh/conf.d/*.conf\n"
        "Host *\n"
        "  ServerAliveInterval 7\n",
    )
    w.write(
        ".ssh/conf.d/fleet.conf",
        f"""
Host web-h1
  HostName 127.0.0.1
  Port {ports["h1"]}
Host j1
  HostName 127.0.0.1
  Port {ports["h1"]}
Host j2
  HostName 127.0.0.1
  Port {ports["h2"]}
Host deep
  HostName 127.0.0.1
  Port {ports["h3"]}
  ProxyJump j1,j2
Host viaproxy
  HostName 127.0.0.1
  Port 1
  ProxyCommand ssh -W 127.0.0.1:{ports["h4"]} j1
  UserKnownHostsFile ~/.ssh/proxy_known_hosts
Host brokenproxy
  HostName 127.0.0.1
  Port 1
  ProxyCommand sh -c 'echo no route to the bastion >&2; exit 3'
Host aliased
  HostName 127.0.0.1
  Port {ports["h2"]}
  HostKeyAlias buildbox
  UserKnownHostsFile ~/.ssh/alias_known_hosts
Host revoked
  HostName 127.0.0.1
  Port {ports["h2"]}
  HostKeyAlias buildbox2
  UserKnownHostsFile ~/.ssh/alias_known_hosts
Host badjump
  HostName 127.0.0.1
  Port {ports["h1"]}
  UserKnownHostsFile ~/.ssh/targets_only
Host behind-bad
  HostName 127.0.0.1
  Port {ports["h3"]}
  ProxyJump badjump
Host agentonly
  HostName 127.0.0.1
  Port {ports["h1"]}
  IdentityFile ~/.ssh/id_locked
  IdentitiesOnly yes
Host certhost
  HostName 127.0.0.1
  Port {ports["h2"]}
  IdentityFile ~/.ssh/cert_key
  IdentitiesOnly yes
Host certfile
  HostName 127.0.0.1
  Port {ports["h3"]}
  IdentityFile ~/.ssh/bare_key
  CertificateFile ~/.ssh/certs/issued-cert.pub
  IdentitiesOnly yes
Host nocert
  HostName 127.0.0.1
  Port {ports["h3"]}
  IdentityFile ~/.ssh/bare_key
  IdentitiesOnly yes
Host * !agentonly !certhost !certfile !nocert
  IdentityFile ~/.ssh/fleet_key
Host *
  User root
  UserKnownHostsFile ~/.ssh/fleet_known_hosts
""",
    )
    yield w
    remove_user_world(w)


def _certify(ca: Path, identity: str, public_key: Path) -> None:
    """Sign ``public_key`` with the CA ``ca`` for the principal root (KEY-cert.pub beside it)."""
    signed = subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", identity, "-n", "root", str(public_key)],
        capture_output=True,
        text=True,
    )
    assert signed.returncode == 0, signed.stderr


def _key_of(fleet: Fleet, name: str) -> str:
    """``TYPE BASE64`` of a fleet host's host key."""
    return " ".join(fleet.host(name).host_key.with_suffix(".pub").read_text().split()[:2])


def _exec(world: UserWorld, host: str, *cmd: str, **kw: object) -> dict[str, object]:
    r = world.meshrun("exec", "-H", host, "--json", "--", *cmd, **kw)  # type: ignore[arg-type]
    return {"rc": r.rc, "run": r, "hosts": {h["name"]: h for h in r.doc["hosts"]}}  # type: ignore[attr-defined, index]


def test_included_config_host_patterns_and_defaults(world: UserWorld) -> None:
    r = world.meshrun("exec", "-H", "web-h1", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()
    assert [h["stdout"] for h in r.doc["hosts"]] == ["h1\n"], r.describe()  # type: ignore[index]


_RESOLVE = """
import json, sys
from meshrun.config.inventory import Host
from meshrun.transport.ssh import SSHConnector
c = SSHConnector()
out = {}
for alias in sys.argv[1:]:
    ep = c.endpoint(Host(name=alias))
    out[alias] = {
        "hostname": ep.address, "port": ep.port, "user": ep.user,
        "identityfile": list(ep.identities), "identitiesonly": ep.identities_only,
        "certificatefile": list(ep.certificates), "proxyjump": list(ep.proxy_jump),
        "proxycommand": ep.proxy_command, "hostkeyalias": ep.host_key_alias,
        "knownhosts": list(ep.known_hosts_files), "keepalive": ep.server_alive_interval_s,
        "alivecountmax": ep.server_alive_count_max,
    }
print(json.dumps(out))
"""


def test_every_resolved_setting_matches_ssh_G(world: UserWorld) -> None:
    aliases = ["web-h1", "deep", "viaproxy", "aliased", "agentonly", "certfile", "plainname"]
    r = world.run(world.python, "-c", _RESOLVE, *aliases)
    assert r.rc == 0, r.describe()
    ours = json.loads(r.stdout)
    home = str(world.home)
    for alias in aliases:
        g = world.ssh_g(alias)

        def paths(key: str, g: dict[str, list[str]] = g) -> list[str]:
            return [p.replace("~", home, 1) for v in g.get(key, []) for p in v.split()]

        expected = {
            "hostname": g["hostname"][0],
            "port": int(g["port"][0]),
            "user": g["user"][0],
            "identityfile": paths("identityfile"),
            "identitiesonly": g["identitiesonly"][0] == "yes",
            "certificatefile": paths("certificatefile"),
            "proxyjump": g["proxyjump"][0].split(",") if "proxyjump" in g else [],
            "proxycommand": g["proxycommand"][0] if "proxycommand" in g else None,
            "hostkeyalias": g["hostkeyalias"][0] if "hostkeyalias" in g else None,
            "knownhosts": paths("userknownhostsfile") + paths("globalknownhostsfile"),
            "keepalive": int(g["serveraliveinterval"][0]),
            "alivecountmax": int(g["serveralivecountmax"][0]),
        }
        assert ours[alias] == expected, f"{alias}: meshrun vs ssh -G"


def test_two_hop_proxy_jump_dials_in_openssh_order(world: UserWorld, fleet: Fleet) -> None:
    r = world.meshrun("exec", "-H", "deep", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()
    assert [h["stdout"] for h in r.doc["hosts"]] == ["h3\n"], r.describe()  # type: ignore[index]
    # j1 forwarded to j2, and j2 (not j1, not us) to the host: the hops were used.
    target = "target 127.0.0.1 port {}"
    assert target.format(fleet.host("h2").port) in fleet.host("h1").log.read_text()
    assert target.format(fleet.host("h3").port) in fleet.host("h2").log.read_text()
    assert target.format(fleet.host("h3").port) not in fleet.host("h1").log.read_text()


def test_proxy_command_reaches_a_host_whose_direct_port_is_closed(
    world: UserWorld, fleet: Fleet
) -> None:
    world.write(".ssh/proxy_known_hosts", f"[127.0.0.1]:1 {_key_of(fleet, 'h4')}\n")
    r = world.meshrun("exec", "-H", "viaproxy", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()
    assert [h["stdout"] for h in r.doc["hosts"]] == ["h4\n"], r.describe()  # type: ignore[index]


def test_a_failing_proxy_command_says_what_it_printed(world: UserWorld) -> None:
    r = world.meshrun("exec", "-H", "brokenproxy", "--json", "--", "true")
    assert r.rc == 3, r.describe()
    assert "ProxyCommand" in r.stderr and "no route to the bastion" in r.stderr, r.describe()
    assert "Traceback" not in r.stderr


def test_host_key_alias_hashed_entries_and_marker_lines(world: UserWorld, fleet: Fleet) -> None:
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(world.home / "unused")],
        check=True,
    )
    assert other.returncode == 0
    unused = " ".join((world.home / "unused.pub").read_text().split()[:2])
    world.write(
        ".ssh/alias_known_hosts",
        f"@cert-authority *.example.com {unused}\n"
        f"@revoked someone-else {unused}\n"
        f"{hashed_name('buildbox')} {_key_of(fleet, 'h2')}\n"
        f"buildbox2 {_key_of(fleet, 'h2')}\n"
        f"@revoked buildbox2 {_key_of(fleet, 'h2')}\n",
    )
    r = world.meshrun("exec", "-H", "aliased", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()
    assert [h["stdout"] for h in r.doc["hosts"]] == ["h2\n"], r.describe()  # type: ignore[index]

    r = world.meshrun("exec", "-H", "revoked", "--json", "--", "true")
    assert r.rc == 3, r.describe()
    assert "REVOKED HOST KEY for buildbox2" in r.stderr, r.describe()


def test_an_unknown_jump_host_key_is_refused_and_nothing_runs_behind_it(
    world: UserWorld, fleet: Fleet
) -> None:
    world.write(
        ".ssh/targets_only", f"[127.0.0.1]:{fleet.host('h3').port} {_key_of(fleet, 'h3')}\n"
    )
    marker = fleet.host("h3").workdir / "ran-behind-bad-jump"
    r = world.meshrun("exec", "-H", "behind-bad", "--json", "--", f"touch {marker}")
    assert r.rc == 3, r.describe()
    assert "jump host badjump" in r.stderr and "unknown host key" in r.stderr, r.describe()
    assert not marker.exists()


def test_a_passphrase_key_works_through_the_agent_and_is_refused_early_without(
    world: UserWorld, fleet: Fleet
) -> None:
    locked = world.copy_key(fleet.client_key, ".ssh/id_locked", passphrase=PASSPHRASE)
    log = fleet.host("h1").log
    before = log.read_text().count("Connection from")
    r = world.meshrun("exec", "-H", "agentonly", "--json", "--", "true", agent=False)
    assert r.rc == 2, r.describe()
    assert str(locked) in r.stderr and "ssh-add" in r.stderr, r.describe()
    assert "Traceback" not in r.stderr
    assert log.read_text().count("Connection from") == before, "a host was contacted"

    world.start_agent()
    try:
        decoy = world.home / ".ssh" / "decoy"
        world.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(decoy))
        world.ssh_add(decoy)  # not authorized anywhere: IdentitiesOnly must skip it
        world.ssh_add(locked, PASSPHRASE)
        r = world.meshrun("exec", "-H", "agentonly", "--json", "--", "echo $MESHRUN_TEST_HOST")
        assert r.rc == 0, r.describe()
        assert [h["stdout"] for h in r.doc["hosts"]] == ["h1\n"], r.describe()  # type: ignore[index]
        text = log.read_text()
        assert "decoy" not in text
    finally:
        world.stop_agent()


def test_user_certificates_beside_the_key_and_from_certificate_file(
    world: UserWorld, ca: Path
) -> None:
    for name in ("cert_key", "bare_key"):
        key = world.home / ".ssh" / name
        world.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    _certify(ca, "t", world.home / ".ssh" / "cert_key.pub")
    cert = world.home / ".ssh" / "cert_key-cert.pub"
    world.write(".ssh/cert_key-cert.pub", cert.read_text(), 0o644)
    r = world.meshrun("exec", "-H", "certhost", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()

    # The bare key alone is refused (it is in no authorized_keys) ...
    r = world.meshrun("exec", "-H", "nocert", "--json", "--", "true")
    assert r.rc == 3, r.describe()
    assert "bare_key" in r.stderr, "the refusal should name the identities tried" + r.describe()
    # ... and accepted with the certificate named by CertificateFile.
    _certify(ca, "t2", world.home / ".ssh" / "bare_key.pub")
    world.write(
        ".ssh/certs/issued-cert.pub", (world.home / ".ssh" / "bare_key-cert.pub").read_text(), 0o644
    )
    (world.home / ".ssh" / "bare_key-cert.pub").unlink()
    r = world.meshrun("exec", "-H", "certfile", "--json", "--", "echo $MESHRUN_TEST_HOST")
    assert r.rc == 0, r.describe()
    assert re.search(r"h3", r.stdout), r.describe()


def test_inline_hosts_use_the_default_key_and_known_hosts(world_dir: Path, fleet: Fleet) -> None:
    """An account with no ssh_config: OpenSSH's defaults (``~`` of the passwd entry)."""
    blank = make_user_world(world_dir / "blank")
    try:
        blank.copy_key(fleet.client_key, ".ssh/id_ed25519")
        spec = ",".join(f"{fleet.user}@127.0.0.1:{h.port}" for h in fleet.hosts[:2])
        r = blank.meshrun("exec", "--hosts", spec, "--json", "--accept-new-host-keys", "--", "true")
        assert r.rc == 0, f"expected ~/.ssh/id_ed25519 to log in{r.describe()}"
        known = (blank.ssh_dir / "known_hosts").read_text().splitlines()
        assert sorted(line.split()[0] for line in known) == sorted(
            f"[127.0.0.1]:{h.port}" for h in fleet.hosts[:2]
        ), f"expected the keys added to ~/.ssh/known_hosts, got {known}"

        r = blank.meshrun("exec", "--hosts", spec, "--json", "--", "echo $MESHRUN_TEST_HOST")
        assert r.rc == 0, r.describe()
        assert sorted(h["stdout"] for h in r.doc["hosts"]) == ["h1\n", "h2\n"], r.describe()  # type: ignore[attr-defined]
    finally:
        remove_user_world(blank)


def test_pulls_go_through_two_hops_and_through_proxy_command(
    world: UserWorld, fleet: Fleet
) -> None:
    """--pull takes the command's way: the same hops, identity and host-key check."""
    world.write(".ssh/proxy_known_hosts", f"[127.0.0.1]:1 {_key_of(fleet, 'h4')}\n")
    into = world.home / "pulled"
    r = world.meshrun(
        "exec",
        "-H",
        "deep,viaproxy",
        "--json",
        "--pull",
        "hop-out.txt",
        "--pull-dir",
        into,
        "--",
        "echo from-$MESHRUN_TEST_HOST > hop-out.txt",
    )
    assert r.rc == 0, r.describe()
    assert (into / "deep" / "hop-out.txt").read_text() == "from-h3\n"
    assert (into / "viaproxy" / "hop-out.txt").read_text() == "from-h4\n"


def test_dispatch_push_outputs_and_needs_through_hops(world: UserWorld, fleet: Fleet) -> None:
    """The workspace push, task outputs and a need's outputs pushed to the other host,
    for a host behind two jump hosts and one behind a ProxyCommand."""
    world.write(".ssh/proxy_known_hosts", f"[127.0.0.1]:1 {_key_of(fleet, 'h4')}\n")
    world.write(
        "hops/hosts.toml",
        '[[host]]\nname = "deep"\naddress = "deep"\nlabels = ["a"]\n'
        'workdir = "~/hops-work"\n'
        '[[host]]\nname = "viaproxy"\naddress = "viaproxy"\nlabels = ["b"]\n'
        'workdir = "~/hops-work"\n',
    )
    world.write("proj/src/input.txt", "pushed input\n", 0o644)
    tasks = world.write(
        "proj/tasks.toml",
        "[[task]]\n"
        'name = "build"\n'
        'run = "mkdir -p dist && cat src/input.txt > dist/lib.txt && '
        'echo $MESHRUN_HOST >> dist/lib.txt"\n'
        'outputs = ["dist/**"]\n'
        'labels = ["a"]\n'
        "[[task]]\n"
        'name = "package"\n'
        'run = "mkdir -p pkg && cat dist/lib.txt > pkg/pkg.txt"\n'
        'outputs = ["pkg/pkg.txt"]\n'
        'needs = ["build"]\n'
        'labels = ["b"]\n',
        0o644,
    )
    for d in ("proj", "proj/src", "hops"):
        shutil.chown(world.home / d, world.name, world.name)
    r = world.meshrun("dispatch", tasks, "--hosts", world.home / "hops" / "hosts.toml", "--json")
    assert r.rc == 0, r.describe()
    by_name = {t["name"]: t for t in r.doc["tasks"]}  # type: ignore[attr-defined]
    assert (by_name["build"]["host"], by_name["package"]["host"]) == ("deep", "viaproxy")
    assert (world.home / "proj" / "pkg" / "pkg.txt").read_text() == "pushed input\ndeep\n"

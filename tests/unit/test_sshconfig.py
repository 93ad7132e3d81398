"""ssh_config resolution: the scan that skips ``ssh -G`` must never skip a change.

The property test writes random configs (Host blocks with patterns, negations and
keywords meshrun uses or ignores, Include files, Match blocks) and asks OpenSSH itself:
whenever the scan says "nothing here can change this alias", ``ssh -G`` must agree
with the defaults meshrun then uses.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.errors import InputError
from meshrun.transport.sshconfig import (
    ConfigScan,
    SSHConfigResolver,
    expand_tokens,
    match_pattern_list,
    parse_jump_spec,
    settings_from_dump,
    split_jumps,
)

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")


def test_pattern_lists_follow_openssh() -> None:
    assert match_pattern_list("web1", ["web*"])
    assert match_pattern_list("WEB1", ["web?"])
    assert not match_pattern_list("web1", ["web*", "!web1"])
    assert not match_pattern_list("db1", ["!web1"])  # a negation alone matches nothing
    assert match_pattern_list("10.0.0.5", ["10.0.0.*"])
    assert not match_pattern_list("web10", ["web?"])


def test_jump_specs() -> None:
    assert parse_jump_spec("bastion") == (None, "bastion", None)
    assert parse_jump_spec("ops@bastion:2200") == ("ops", "bastion", 2200)
    assert parse_jump_spec("ssh://ops@[::1]:2222") == ("ops", "::1", 2222)
    assert parse_jump_spec("a@b@c") == ("a@b", "c", None)
    assert split_jumps("a, b,c") == ("a", "b", "c")
    assert split_jumps("none") == ()
    with pytest.raises(InputError, match="bad port"):
        parse_jump_spec("bastion:http")


def test_tokens() -> None:
    values = {"h": "10.0.0.1", "p": "22", "r": "ci", "n": "web1"}
    assert expand_tokens("ssh -W %h:%p %r@jump # %n %%", values) == (
        "ssh -W 10.0.0.1:22 ci@jump # web1 %"
    )
    with pytest.raises(InputError, match="unknown token %Z"):
        expand_tokens("%Z", values)


def test_settings_from_a_dump() -> None:
    dump = "\n".join(
        [
            "host web1",
            "hostname 10.0.0.1",
            "port 2222",
            "user ci",
            "identityfile /keys/%r_%h",
            "identityfile /keys/two",
            "identitiesonly yes",
            "certificatefile /keys/%r-cert.pub",
            "proxyjump a,ops@b:2200",
            "hostkeyalias web",
            "userknownhostsfile /kh/one /kh/two_%h",
            "globalknownhostsfile /etc/ssh/ssh_known_hosts",
            "connecttimeout 7",
            "serveraliveinterval 5",
            "serveralivecountmax 2",
            "hashknownhosts yes",
            "identityagent none",
        ]
    )
    s = settings_from_dump("web1", dump)
    assert (s.hostname, s.port, s.user) == ("10.0.0.1", 2222, "ci")
    assert s.identity_files == ("/keys/ci_10.0.0.1", "/keys/two")
    assert s.identities_only and s.hash_known_hosts
    assert s.certificate_files == ("/keys/ci-cert.pub",)
    assert s.proxy_jump == ("a", "ops@b:2200") and s.proxy_command is None
    assert s.host_key_alias == "web"
    assert s.user_known_hosts == ("/kh/one", "/kh/two_10.0.0.1")
    assert s.global_known_hosts == ("/etc/ssh/ssh_known_hosts",)
    assert (s.connect_timeout_s, s.server_alive_interval_s, s.server_alive_count_max) == (7, 5, 2)
    assert s.identity_agent == "none"


def test_the_scan_follows_includes_and_host_patterns(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "web.conf").write_text("Host web*\n  User deploy\n")
    (tmp_path / "config").write_text(
        "Include conf.d/*.conf\nHost db1\n  SendEnv LANG\nHost *\n  Compression yes\n"
    )
    scan = ConfigScan([(str(tmp_path / "config"), str(tmp_path))])
    assert scan.may_change("web3", frozenset())
    assert not scan.may_change("web3", frozenset({"user"}))  # the inventory pins it
    assert not scan.may_change("db1", frozenset())  # SendEnv, Compression: not used
    (tmp_path / "config").write_text("Match user ci\n  Port 2200\n")
    assert ConfigScan([(str(tmp_path / "config"), str(tmp_path))]).may_change("x", frozenset())


# -- the property: a skipped resolution equals OpenSSH's own ----------------------------

_USED = [
    "HostName 10.9.9.9",
    "Port 2201",
    "User deploy",
    "IdentityFile /k/id",
    "ProxyJump j",
    "HostKeyAlias hk",
    "ConnectTimeout 3",
    "ServerAliveInterval 9",
    "IdentitiesOnly yes",
    "UserKnownHostsFile /k/kh",
    "ProxyCommand nc %h %p",
]
_IGNORED = [
    "Compression yes",
    "SendEnv LANG",
    "ForwardAgent no",
    "LogLevel ERROR",
    "HashKnownHosts yes",
    "AddressFamily inet",
]
_PATTERNS = ["web*", "web1", "!web2", "db?", "*", "10.0.0.*", "other", "!*1"]
_ALIASES = ["web1", "web2", "db1", "db22", "10.0.0.5", "plain"]


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, str]:
    blocks = []
    for _ in range(draw(st.integers(0, 5))):
        patterns = draw(st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3, unique=True))
        lines = draw(st.lists(st.sampled_from(_USED + _IGNORED), max_size=3, unique=True))
        header = "Host " + " ".join(patterns)
        if draw(st.integers(0, 9)) == 0:
            header = "Match user nobody-here"
        blocks.append("\n".join([header, *("  " + line for line in lines)]))
    included = "\n".join(
        draw(
            st.lists(
                st.sampled_from(["Host web*\n  User inc", "Host *\n  Compression no"]), max_size=1
            )
        )
    )
    return "\n".join(blocks) + "\n", included


@needs_ssh
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=configs(), alias=st.sampled_from(_ALIASES))
def test_a_skipped_resolution_is_what_ssh_G_says(
    tmp_path: Path, case: tuple[str, str], alias: str
) -> None:
    text, included = case
    config = tmp_path / "config"
    (tmp_path / "inc.conf").write_text(included)
    config.write_text(f"Include {tmp_path}/inc.conf\n{text}")
    resolver = SSHConfigResolver(str(config))
    if resolver.scan.may_change(alias, frozenset()):
        return  # ssh -G is asked: nothing to compare
    proc = subprocess.run(
        ["ssh", "-F", str(config), "-G", alias],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    real = settings_from_dump(alias, proc.stdout)
    ours = resolver.resolve(alias)
    for name in (
        "hostname",
        "port",
        "user",
        "identity_files",
        "identities_only",
        "proxy_jump",
        "proxy_command",
        "host_key_alias",
        "user_known_hosts",
        "global_known_hosts",
        "connect_timeout_s",
        "server_alive_interval_s",
    ):
        assert getattr(ours, name) == getattr(real, name), (name, text, alias)


@needs_ssh
def test_a_config_openssh_refuses_is_an_input_error(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host web1\n  NoSuchOption yes\n  HostName 10.0.0.1\n")
    with pytest.raises(InputError, match=r"NoSuchOption|Bad configuration option"):
        SSHConfigResolver(str(config)).resolve("web1")


@needs_ssh
def test_connect_timeout_given_wins_then_ssh_config_then_ten_seconds(tmp_path: Path) -> None:
    from meshrun.config.inventory import Host
    from meshrun.transport.ssh import SSHConnector

    config = tmp_path / "config"
    config.write_text("Host slow\n  ConnectTimeout 3\n")
    host = Host(name="slow")
    assert SSHConnector(ssh_config_path=str(config)).endpoint(host).connect_timeout_s == 3
    given = SSHConnector(ssh_config_path=str(config), connect_timeout_s=7)
    assert given.endpoint(host).connect_timeout_s == 7
    assert SSHConnector(ssh_config_path="/nonexistent").endpoint(host).connect_timeout_s == 10

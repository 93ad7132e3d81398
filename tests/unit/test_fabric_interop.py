"""meshrun.fabric: Fabric Connections read as meshrun Hosts, run() options, refusals.

Real ``fabric.Connection`` objects (building one contacts nothing), each reading an
ssh_config file of the test's own (``Config(runtime_ssh_path=...)``) so that neither
~/.ssh/config nor /etc/ssh/ssh_config can change what they say.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from fabric import Config, Connection
from fabric.group import Group as FabricGroup

from meshrun.config.inventory import Host
from meshrun.errors import InputError
from meshrun.fabric import Group, NotSupported
from meshrun.fabric.commands import login_shell_line, run_options
from meshrun.fabric.settings import connector_settings, host_names, to_host


@pytest.fixture
def ssh_config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(
        "Host aliased\n  HostName 10.9.9.9\n  User cfguser\n  Port 2200\n"
        "  IdentityFile /cfg/key\n"
        "Host jumped\n  ProxyJump hop.example\n"
    )
    return path


def conn(ssh_config: Path, host: str, **kwargs: Any) -> Any:
    return Connection(host, config=Config(runtime_ssh_path=str(ssh_config)), **kwargs)


def test_host_user_port_and_key_file_come_through(ssh_config: Path) -> None:
    cxn = conn(
        ssh_config, "web1", user="deploy", port=2222, connect_kwargs={"key_filename": "/k/id"}
    )
    assert to_host(cxn, "web1") == Host(
        name="web1", address="web1", port=2222, user="deploy", identity="/k/id", workdir="."
    )
    short = conn(ssh_config, "deploy@web1:2201")
    host = to_host(short, "web1")
    assert (host.user, host.port, host.identity) == ("deploy", 2201, None)


def test_the_alias_goes_to_meshrun_which_reads_ssh_config_itself(ssh_config: Path) -> None:
    """Fabric resolved HostName and copied IdentityFile into key_filename; meshrun is
    given the alias (ssh -G resolves it) and no pinned identity, so ssh_config's keys
    stay ssh_config's."""
    cxn = conn(ssh_config, "aliased")
    assert cxn.host == "10.9.9.9" and cxn.connect_kwargs["key_filename"] == ["/cfg/key"]
    host = to_host(cxn, "aliased")
    assert (host.address, host.user, host.port, host.identity) == (
        "aliased",
        "cfguser",
        2200,
        None,
    )
    explicit = conn(ssh_config, "aliased", connect_kwargs={"key_filename": ["~/k2"]})
    assert to_host(explicit, "aliased").identity == os.path.expanduser("~/k2")


def test_two_key_files_are_refused_naming_the_setting(ssh_config: Path) -> None:
    cxn = conn(ssh_config, "web1", connect_kwargs={"key_filename": ["/a", "/b"]})
    with pytest.raises(NotSupported, match="key_filename with 2 keys") as caught:
        to_host(cxn, "web1")
    assert caught.value.fix and "IdentityFile" in caught.value.fix
    assert isinstance(caught.value, InputError) and isinstance(caught.value, NotImplementedError)


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("password", "secret", "keys only"),
        ("passphrase", "secret", "ssh-add"),
        ("pkey", object(), "key_filename"),
        ("gss_auth", True, "public keys only"),
        ("sock", object(), "gateway"),
        ("no_such_option", 1, "drop the others"),
    ],
)
def test_connect_kwargs_meshrun_cannot_honour_are_refused(
    ssh_config: Path, key: str, value: object, fix: str
) -> None:
    cxn = conn(ssh_config, "web1", connect_kwargs={key: value})
    with pytest.raises(NotSupported, match=rf"web1:22: connect_kwargs\['{key}'\]") as caught:
        to_host(cxn, "web1")
    assert caught.value.fix is not None and fix in caught.value.fix


def test_harmless_connect_kwargs_and_defaults_said_out_loud_pass(ssh_config: Path) -> None:
    cxn = conn(
        ssh_config,
        "web1",
        connect_kwargs={
            "timeout": 7,
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": 5,
            "password": None,
        },
    )
    assert to_host(cxn, "web1").name == "web1"
    assert connector_settings([cxn]).connect_timeout_s == 7.0


def test_agent_forwarding_is_refused(ssh_config: Path) -> None:
    with pytest.raises(NotSupported, match="forward_agent"):
        to_host(conn(ssh_config, "web1", forward_agent=True), "web1")


def test_a_gateway_connection_is_a_jump_host_and_a_string_a_proxy_command(
    ssh_config: Path,
) -> None:
    outer = conn(ssh_config, "ops@outer:2022")
    inner = conn(ssh_config, "inner", user="jump", gateway=outer)
    host = to_host(conn(ssh_config, "web1", gateway=inner), "web1")
    assert (host.proxy_jump, host.proxy_command) == ("ops@outer:2022,jump@inner:22", None)
    host = to_host(conn(ssh_config, "web1", gateway="nc -q0 %h %p"), "web1")
    assert (host.proxy_jump, host.proxy_command) == (None, "nc -q0 %h %p")


def test_ssh_configs_proxyjump_comes_through_and_gateway_false_turns_it_off(
    ssh_config: Path,
) -> None:
    jumped = conn(ssh_config, "jumped", user="me")
    assert to_host(jumped, "jumped").proxy_jump is not None
    assert "hop.example" in str(to_host(jumped, "jumped").proxy_jump)
    assert to_host(conn(ssh_config, "jumped", gateway=False), "jumped").proxy_jump == "none"
    assert to_host(conn(ssh_config, "web1", gateway=False), "web1").proxy_jump is None


def test_a_gateway_with_a_key_of_its_own_is_refused(ssh_config: Path) -> None:
    bastion = conn(ssh_config, "bastion", connect_kwargs={"key_filename": "/other"})
    cxn = conn(ssh_config, "web1", gateway=bastion, connect_kwargs={"key_filename": "/k"})
    with pytest.raises(NotSupported, match="gateway with its own key_filename"):
        to_host(cxn, "web1")
    same = conn(ssh_config, "bastion", connect_kwargs={"key_filename": "/k"})
    ok = conn(ssh_config, "web1", gateway=same, connect_kwargs={"key_filename": "/k"})
    assert to_host(ok, "web1").proxy_jump is not None


def test_known_hosts_loaded_into_the_client_is_the_file_meshrun_checks(
    ssh_config: Path, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    cxn = conn(ssh_config, "web1")
    cxn.client.load_host_keys(str(known))
    assert to_host(cxn, "web1").known_hosts == str(known)
    assert to_host(conn(ssh_config, "web1"), "web1").known_hosts is None


def test_host_keys_added_in_memory_are_refused(ssh_config: Path) -> None:
    from paramiko import RSAKey  # a key object only; meshrun's modules never name it

    cxn = conn(ssh_config, "web1")
    key = RSAKey.generate(1024)
    cxn.client.get_host_keys().add("web1", key.get_name(), key)
    with pytest.raises(NotSupported, match="host keys added in memory"):
        to_host(cxn, "web1")


def test_names_are_unique_per_connection(ssh_config: Path) -> None:
    a = conn(ssh_config, "127.0.0.1", user="root", port=2201)
    b = conn(ssh_config, "127.0.0.1", user="root", port=2202)
    c = conn(ssh_config, "web1")
    assert host_names([a, b, c]) == ["root@127.0.0.1:2201", "root@127.0.0.1:2202", "web1"]


def test_the_group_reads_the_connections_ssh_config_file(ssh_config: Path, tmp_path: Path) -> None:
    assert connector_settings([conn(ssh_config, "a")]).ssh_config_path == str(ssh_config)
    plain = Connection("a", config=Config(overrides={"load_ssh_configs": False}))
    assert connector_settings([plain]).ssh_config_path == os.devnull
    other = tmp_path / "other_config"
    other.write_text("")
    with pytest.raises(NotSupported, match="different ssh_config files"):
        connector_settings([conn(ssh_config, "a"), conn(other, "b")])
    timeouts = [conn(ssh_config, "a", connect_timeout=3), conn(ssh_config, "b")]
    assert connector_settings(timeouts).connect_timeout_s == 3.0


def test_an_ssh_config_object_in_memory_is_refused(ssh_config: Path) -> None:
    from paramiko import SSHConfig

    cxn = Connection("web1", config=Config(ssh_config=SSHConfig()))
    with pytest.raises(NotSupported, match="ssh_config=SSHConfig object"):
        to_host(cxn, "web1")


# -- run() options ----------------------------------------------------------------------


def test_run_options_settle_as_invokes_runner_does(ssh_config: Path) -> None:
    cxn = conn(ssh_config, "web1")
    opts = run_options(cxn, "uptime", {"hide": True, "echo": True, "timeout": 5, "env": {"A": 1}})
    assert (opts.hide, opts.echo, opts.timeout, opts.timeout_s) == (
        ("stdout", "stderr"),
        False,  # hide=True turns echo off, as invoke does
        5,
        5.0,
    )
    assert opts.env == {"A": "1"} and not opts.warn and opts.shell == "/bin/bash"
    assert run_options(cxn, "x", {"hide": "err", "warn": True}).hide == ("stderr",)
    assert run_options(cxn, "x", {"pty": False, "in_stream": False}).hide == ()
    configured = Connection(
        "web1", config=Config(overrides={"run": {"warn": True}, "load_ssh_configs": False})
    )
    assert run_options(configured, "x", {}).warn


def test_run_options_read_the_config_as_it_is_at_each_call() -> None:
    cxn = Connection(
        "web1",
        config=Config(overrides={"timeouts": {"command": 7}, "load_ssh_configs": False}),
    )
    assert run_options(cxn, "x", {}).timeout_s == 7.0
    assert run_options(cxn, "x", {"timeout": 2}).timeout_s == 2.0
    assert not run_options(cxn, "x", {}).warn
    cxn.config.run.warn = True  # changed between two calls, as a script may
    cxn.config.run.env = {"A": "b"}
    cxn.config.timeouts.command = 9
    settled = run_options(cxn, "x", {})
    assert settled.warn and settled.env == {"A": "b"} and settled.timeout_s == 9.0


def test_an_authentication_strategy_class_is_refused() -> None:
    cxn = Connection(
        "web1",
        config=Config(
            overrides={"authentication": {"strategy_class": object}, "load_ssh_configs": False}
        ),
    )
    with pytest.raises(NotSupported, match="strategy_class"):
        to_host(cxn, "web1")


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"pty": True}, "pty=True"),
        ({"in_stream": io.StringIO("y\n")}, "in_stream"),
        ({"watchers": [object()]}, "watchers"),
        ({"asynchronous": True}, "asynchronous"),
        ({"disown": True}, "asynchronous/disown"),
        ({"replace_env": False}, "replace_env=False"),
    ],
)
def test_run_options_meshrun_cannot_honour_are_refused(
    ssh_config: Path, kwargs: dict[str, Any], what: str
) -> None:
    with pytest.raises(NotSupported, match=f"run\\(\\): {what}") as caught:
        run_options(conn(ssh_config, "web1"), "x", kwargs)
    assert caught.value.fix


def test_an_unknown_run_option_is_a_type_error_as_in_invoke(ssh_config: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        run_options(conn(ssh_config, "web1"), "x", {"colour": True})


def test_the_command_runs_in_the_login_shell() -> None:
    assert (
        login_shell_line("echo 'a b'") == "exec \"${SHELL:-/bin/sh}\" -c 'echo '\"'\"'a b'\"'\"''"
    )


# -- the Group --------------------------------------------------------------------------


def test_group_is_a_fabric_group_and_refuses_settings_before_any_call(ssh_config: Path) -> None:
    config = Config(runtime_ssh_path=str(ssh_config))
    group = Group("web1", "web2", user="deploy", config=config)
    assert isinstance(group, FabricGroup) and [c.host for c in group] == ["web1", "web2"]
    assert all(c.user == "deploy" for c in group)
    with pytest.raises(NotSupported, match="password"):
        Group("web1", config=config, connect_kwargs={"password": "x"})
    with pytest.raises(NotSupported, match="forward_agent"):
        Group.from_connections([conn(ssh_config, "web1", forward_agent=True)])
    group.close()  # never connected: nothing to close, no error


def test_sudo_is_refused_naming_the_alternative(ssh_config: Path) -> None:
    group = Group.from_connections([conn(ssh_config, "web1")])
    with group, pytest.raises(NotImplementedError, match="sudo") as caught:
        group.sudo("id")
    assert isinstance(caught.value, NotSupported) and "sudo -n" in str(caught.value.fix)


def test_an_empty_group_returns_an_empty_result() -> None:
    with Group() as group:
        assert group.run("true") == {}


def test_a_string_gateway_reaches_the_connector_as_its_proxy_command() -> None:
    from meshrun.transport.ssh import SSHConnector

    connector = SSHConnector(ssh_config_path=os.devnull)
    try:
        ep = connector.endpoint(
            Host(name="h", address="10.1.1.1", port=22, user="u", proxy_command="nc %h %p")
        )
        assert (ep.proxy_command, ep.proxy_jump) == ("nc %h %p", ())
        jump = connector.endpoint(
            Host(name="j", address="10.1.1.1", proxy_jump="b", proxy_command="nc %h %p")
        )
        assert (jump.proxy_command, jump.proxy_jump) == (None, ("b",))
    finally:
        connector.close()


def test_connect_errors_say_their_fix_in_the_groups_terms() -> None:
    from meshrun.errors import AuthError, HostKeyError, HostUnreachable
    from meshrun.fabric.group import in_fabric_terms

    unknown = HostKeyError(
        "web1",
        "unknown host key",
        fingerprint="SHA256:x",
        changed=False,
        fix="verify the fingerprint, then run again with --accept-new-host-keys",
    )
    fix = str(in_fabric_terms(unknown).fix)
    assert "Group(..., accept_new_host_keys=True)" in fix and "AutoAddPolicy" in fix
    changed = HostKeyError(
        "web1", "changed", fingerprint="SHA256:x", changed=True, fix="remove the old entry"
    )
    assert in_fabric_terms(changed).fix == "remove the old entry"
    auth = AuthError("web1", "no key", fix="fix `identity` in the inventory or create the key")
    assert in_fabric_terms(auth).fix == "fix connect_kwargs['key_filename'] or create the key"
    slow = HostUnreachable("web1", "timed out", fix="check it, or raise --connect-timeout")
    assert in_fabric_terms(slow).fix == "check it, or raise connect_timeout"

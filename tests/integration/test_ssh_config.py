"""ssh_config fills what an inventory entry leaves unset; inventory values win.

The config is given with ``MESHRUN_SSH_CONFIG`` (like ``ssh -F``): the real ``~/.ssh``
of a test account is exercised in test_ssh_world.py.
"""

from pathlib import Path

from helpers import Result, run_meshrun

from meshrun.testing.fleet import Fleet


def _which_host(inventory: Path, config: Path) -> Result:
    """``meshrun exec --json`` over ``inventory`` with ``config`` as the ssh_config; each
    host's stdout names the fleet host that answered."""
    return run_meshrun(
        "exec",
        "--hosts",
        inventory,
        "--json",
        "--",
        "echo $MESHRUN_TEST_HOST",
        env={"MESHRUN_SSH_CONFIG": str(config)},
    )


def test_ssh_config_supplies_address_port_user_identity_and_known_hosts(
    fleet4: Fleet, tmp_path: Path
) -> None:
    h2 = fleet4.host("h2")
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host build-two\n"
        "    HostName 127.0.0.1\n"
        f"    Port {h2.port}\n"
        f"    User {fleet4.user}\n"
        f"    IdentityFile {fleet4.client_key}\n"
        f"    UserKnownHostsFile {fleet4.known_hosts}\n"
    )
    inventory = tmp_path / "hosts.toml"
    inventory.write_text('[[host]]\nname = "b2"\naddress = "build-two"\n')
    result = _which_host(inventory, config)
    assert result.rc == 0, result.describe()
    (host,) = result.doc["hosts"]
    assert host["name"] == "b2" and host["stdout"] == "h2\n", result.describe()


def test_inventory_values_win_over_ssh_config(fleet4: Fleet, tmp_path: Path) -> None:
    h1, h3 = fleet4.host("h1"), fleet4.host("h3")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n    Port {h1.port}\n")
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(
        f'[defaults]\nuser = "{fleet4.user}"\nidentity = "{fleet4.client_key}"\n'
        f'known_hosts = "{fleet4.known_hosts}"\n\n'
        f'[[host]]\nname = "x"\naddress = "127.0.0.1"\nport = {h3.port}\n'
    )
    result = _which_host(inventory, config)
    assert result.rc == 0, result.describe()
    assert result.doc["hosts"][0]["stdout"] == "h3\n", result.describe()

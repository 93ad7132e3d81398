"""``--limit`` applied while hosts.toml is read (``load_inventory(limits=...)``,
``resolve_hosts(limits=...)``): the same hosts and the same errors as reading the whole
file and then selecting, but only the chosen hosts are kept.

The whole file is still checked: a mistake in an entry the limit leaves out is the same
error as without --limit (the same file passes or fails alike whatever is selected).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshrun.config import inventory
from meshrun.config.inventory import load_inventory, resolve_hosts, select_hosts
from meshrun.errors import InventoryError

FLEET = """\
[defaults]
user = "ci"
labels = ["linux"]
workdir = "/w/{name}"

[[host]]
name = "web1"
address = "10.0.0.1"
labels = ["web", "linux"]

[[host]]
name = "web2"
address = "10.0.0.2"

[[host]]
name = "web10"
address = "10.0.0.10"
labels = ["web", "bsd"]

[[host]]
name = "db1"
address = "10.0.1.1"
port = 2222

[[host]]
name = "mac"
address = "mac-mini"
labels = ["darwin"]
"""

LIMITS = [
    ["web1"],
    ["web*"],
    ["label:linux"],
    ["label:l*", "!db1"],
    ["web[1-2],mac"],
    ["10.0.1.*"],
    ["mac-mini"],
    ["!web*"],
    ["label:linux", "web*"],
]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(FLEET)
    return path


@pytest.mark.parametrize("limits", LIMITS, ids=[",".join(limits) for limits in LIMITS])
def test_same_hosts_as_selecting_after(fleet: Path, limits: list[str]) -> None:
    whole = select_hosts(load_inventory(fleet), limits)
    assert load_inventory(fleet, limits=limits) == whole
    assert resolve_hosts(str(fleet), limits=limits) == whole


def test_plain_file_is_read_one_entry_at_a_time(fleet: Path) -> None:
    """A plain hosts.toml never takes the whole-file path (which holds every host)."""
    selection = inventory._Selection(["web1"], None)
    chosen = inventory._Loader(str(fleet)).load_selected(fleet.read_text(), selection)
    assert chosen is not None
    assert [host.name for host in chosen] == ["web1"]


@pytest.mark.parametrize(
    "limits",
    [["nothing*"], ["label:gpu"], ["db1", "mac"]],
    ids=["glob", "label", "disjoint"],
)
def test_nothing_selected_is_the_same_error(fleet: Path, limits: list[str]) -> None:
    with pytest.raises(InventoryError) as whole:
        select_hosts(load_inventory(fleet), limits, source=str(fleet))
    with pytest.raises(InventoryError) as streamed:
        load_inventory(fleet, limits=limits, source=str(fleet))
    assert str(streamed.value) == str(whole.value)
    assert streamed.value.fix == whole.value.fix


@pytest.mark.parametrize(
    "mistake",
    [
        ('address = "10.0.0.10"', 'address = "root@10.0.0.10"'),  # in a host left out
        ("port = 2222", 'port = "2222"'),
        ('name = "mac"', 'name = "web1"'),  # a duplicate name
        ('[[host]]\nname = "db1"', '[[hosts]]\nname = "db1"'),  # an unknown table
        ('user = "ci"', 'user = "ci"\nbogus = 1'),  # in [defaults]
        ('name = "web2"', 'name = "web2"\nname = "x"'),  # not TOML
    ],
    ids=["address", "port-type", "duplicate", "unknown-table", "unknown-default", "toml"],
)
def test_a_mistake_outside_the_selection_is_the_same_error(
    tmp_path: Path, mistake: tuple[str, str]
) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(FLEET.replace(*mistake, 1))
    with pytest.raises(InventoryError) as whole:
        load_inventory(path)
    with pytest.raises(InventoryError) as streamed:
        load_inventory(path, limits=["web1"])
    assert str(streamed.value) == str(whole.value)
    assert streamed.value.fix == whole.value.fix


def test_defaults_after_the_hosts_still_apply(tmp_path: Path) -> None:
    """[defaults] below the hosts: read whole, selected after, the same hosts."""
    body, defaults = FLEET.split("\n\n", 1)[1], FLEET.split("\n\n", 1)[0]
    path = tmp_path / "hosts.toml"
    path.write_text(body + "\n" + defaults + "\n")
    chosen = load_inventory(path, limits=["label:linux"])
    assert [host.name for host in chosen] == ["web1", "web2", "db1"]
    assert chosen == select_hosts(load_inventory(path), ["label:linux"])


def test_inline_lists_and_the_local_host_are_selected_too() -> None:
    assert [h.name for h in resolve_hosts("a,b,c", limits=["b"])] == ["b"]
    with pytest.raises(InventoryError, match="no host matches --limit 'x'"):
        resolve_hosts(None, limits=["x"])

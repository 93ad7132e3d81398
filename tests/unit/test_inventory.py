"""hosts.toml, inline --hosts lists and --limit selection.

Error cases are a table: the file text, and where the error must point (line, entry,
key) and what the fix must say, because these messages are the user's only guide.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from config_errors import ErrorCase, assert_points_at

from meshrun.config.inventory import (
    LOCAL_HOST_NAME,
    Host,
    load_inventory,
    local_host,
    parse_inline,
    resolve_hosts,
    select_hosts,
)
from meshrun.errors import InventoryError

GOOD_HOST = '[[host]]\nname = "a"\naddress = "10.0.0.1"\n'


ERROR_CASES = [
    ErrorCase(
        "not-toml",
        '[[host]]\nname = "a"\naddress = 10.0.0.1\n',
        3,
        None,
        None,
        "not valid TOML",
        "double quotes",
    ),
    ErrorCase(
        "unknown-key-with-suggestion",
        '[[host]]\nname = "a"\nadress = "10.0.0.1"\n',
        3,
        "a",
        "adress",
        "unknown key 'adress'",
        "did you mean 'address'?",
    ),
    ErrorCase(
        "unknown-key-alias",
        '[[host]]\nname = "a"\naddress = "h"\nhostname = "x"\n',
        4,
        "a",
        "hostname",
        "unknown key",
        "did you mean 'address'? valid keys: name, address, port",
    ),
    ErrorCase(
        "unknown-key-in-defaults",
        '[defaults]\nuser = "ci"\nslot = 4\n\n' + GOOD_HOST,
        3,
        "[defaults]",
        "slot",
        "unknown key 'slot'",
        "did you mean 'slots'?",
    ),
    ErrorCase(
        "name-in-defaults",
        '[defaults]\nname = "x"\n\n' + GOOD_HOST,
        2,
        "[defaults]",
        "name",
        "cannot be a default",
        "into each [[host]] block",
    ),
    ErrorCase(
        "unknown-top-level-key",
        '[[hosts]]\nname = "a"\naddress = "10.0.0.1"\n',
        1,
        None,
        "hosts",
        "unknown top-level key 'hosts'",
        "did you mean 'host'?",
    ),
    ErrorCase(
        "host-key-at-top-level",
        'user = "ci"\n' + GOOD_HOST,
        1,
        None,
        "user",
        "unknown top-level key 'user'",
        "move user under [defaults]",
    ),
    ErrorCase(
        "wrong-type-user",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nuser = 7\n',
        4,
        "a",
        "user",
        "expected a string, found an integer (7)",
        'user = "ci"',
    ),
    ErrorCase(
        "wrong-type-port-quoted",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nport = "2222"\n',
        4,
        "a",
        "port",
        'expected an integer from 1 to 65535, found a string ("2222")',
        "port = 2222 (a number, without quotes)",
    ),
    ErrorCase(
        "wrong-type-in-second-host",
        GOOD_HOST + '\n[[host]]\nname = "b"\naddress = "10.0.0.2"\nidentity = ["k"]\n',
        8,
        "b",
        "identity",
        "expected a string, found an array",
        'identity = "~/.ssh/id_ed25519"',
    ),
    ErrorCase(
        "missing-name",
        GOOD_HOST + '\n[[host]]\naddress = "10.0.0.2"\n',
        5,
        "host #2",
        "name",
        "missing name",
        'add name = "build-1"',
    ),
    ErrorCase(
        "bad-name",
        '[[host]]\nname = "web 1"\naddress = "10.0.0.1"\n',
        2,
        "host #1",
        "name",
        "not a valid host name",
        'name = "web-1"',
    ),
    ErrorCase(
        "missing-address",
        '[[host]]\nname = "a"\nport = 22\n',
        1,
        "a",
        "address",
        "missing address",
        'add address = "10.0.0.11"',
    ),
    ErrorCase(
        "address-with-port",
        '[[host]]\nname = "a"\naddress = "10.0.0.1:2222"\n',
        3,
        "a",
        "address",
        "contains a port",
        'address = "10.0.0.1" and port = 2222',
    ),
    ErrorCase(
        "ipv6-address-with-port",
        '[[host]]\nname = "a"\naddress = "[fe80::1]:2222"\n',
        3,
        "a",
        "address",
        "contains a port",
        'address = "fe80::1" and port = 2222',
    ),
    ErrorCase(
        "address-with-user",
        '[[host]]\nname = "a"\naddress = "root@10.0.0.1"\n',
        3,
        "a",
        "address",
        "contains a user",
        'user = "root" and address = "10.0.0.1"',
    ),
    ErrorCase(
        "duplicate-name",
        GOOD_HOST + '\n[[host]]\nname = "a"\naddress = "10.0.0.2"\n',
        6,
        "a",
        "name",
        "is used twice, at lines 2 and 6",
        'name = "a-2"',
    ),
    ErrorCase(
        "port-out-of-range",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nport = 70000\n',
        4,
        "a",
        "port",
        "out of range 1..65535",
        "port = 22",
    ),
    ErrorCase(
        "slots-zero",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nslots = 0\n',
        4,
        "a",
        "slots",
        "at least 1",
        'slots = "auto"',
    ),
    ErrorCase(
        "slots-bad-string",
        '[defaults]\nslots = "many"\n' + GOOD_HOST,
        2,
        "[defaults]",
        "slots",
        'expected a positive integer or "auto"',
        "slots = 4",
    ),
    ErrorCase(
        "weight-negative",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nweight = -1.5\n',
        4,
        "a",
        "weight",
        "greater than 0",
        "weight = 1.0",
    ),
    ErrorCase(
        "weight-boolean",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nweight = true\n',
        4,
        "a",
        "weight",
        "found a boolean (true)",
        "weight = 2.0",
    ),
    ErrorCase(
        "labels-string",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nlabels = "linux,arm"\n',
        4,
        "a",
        "labels",
        "expected an array of strings",
        'labels = ["linux", "arm"]',
    ),
    ErrorCase(
        "labels-with-space",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nlabels = ["ok", "linux arm"]\n',
        4,
        "a",
        "labels",
        'label "linux arm" contains a space or comma',
        '["linux", "arm"]',
    ),
    ErrorCase(
        "labels-empty-string",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nlabels = [""]\n',
        4,
        "a",
        "labels",
        "label #1 is empty",
        "remove",
    ),
    ErrorCase(
        "labels-not-string",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nlabels = [3]\n',
        4,
        "a",
        "labels",
        "label #1 must be a string",
        'quote it: "3"',
    ),
    ErrorCase(
        "workdir-unknown-placeholder",
        '[defaults]\nworkdir = "/tmp/{host}"\n' + GOOD_HOST,
        2,
        "[defaults]",
        "workdir",
        "unknown placeholder '{host}'",
        "the only placeholder is {name}",
    ),
    ErrorCase(
        "proxy-jump-bad-port",
        '[[host]]\nname = "a"\naddress = "10.0.0.1"\nproxy_jump = "bastion:x"\n',
        4,
        "a",
        "proxy_jump",
        "bad port",
        "[user@]host[:port]",
    ),
    ErrorCase(
        "host-as-table",
        '[host]\nname = "a"\naddress = "10.0.0.1"\n',
        1,
        None,
        "host",
        "[host] is a single table",
        "write [[host]] (double brackets)",
    ),
    ErrorCase(
        "no-hosts",
        '[defaults]\nuser = "ci"\n',
        None,
        None,
        "host",
        "no hosts",
        "[[host]]",
    ),
    ErrorCase(
        "empty-host-array",
        "host = []\n",
        1,
        None,
        "host",
        "no hosts",
        "[[host]]",
    ),
    # Bad input never reaches a host: a NUL cannot be in a user name, a path or an
    # address; absurd numbers are typos, not machines.
    ErrorCase(
        "nul-in-user",
        GOOD_HOST + 'user = "ci\\u0000"\n',
        4,
        "a",
        "user",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-workdir-default",
        '[defaults]\nworkdir = "/tmp/\\u0000"\n\n' + GOOD_HOST,
        2,
        "[defaults]",
        "workdir",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-label",
        GOOD_HOST + 'labels = ["gpu\\u0000"]\n',
        4,
        "a",
        "labels",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-name",
        '[[host]]\nname = "a\\u0000"\naddress = "10.0.0.1"\n',
        2,
        "host #1",
        "name",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "newline-ending-name",
        '[[host]]\nname = "a\\n"\naddress = "10.0.0.1"\n',
        2,
        "host #1",
        "name",
        "is not a valid host name",
        'name = "a"',
    ),
    ErrorCase(
        "control-character-in-address",
        '[[host]]\nname = "a"\naddress = "10.0.0.1\\u001b"\n',
        3,
        "a",
        "address",
        "is not a host name or IP address",
        "IPv4/IPv6 address",
    ),
    ErrorCase(
        "slots-absurd",
        GOOD_HOST + "slots = 99999999\n",
        4,
        "a",
        "slots",
        "at most 1024",
        "slots = 8",
    ),
    ErrorCase(
        "weight-absurd",
        GOOD_HOST + "weight = 99999999999999999\n",
        4,
        "a",
        "weight",
        "out of range 1e-06..1e+06",
        "2.0 for one twice as fast",
    ),
    ErrorCase(
        "weight-vanishing",
        "[defaults]\nweight = 1e-300\n\n" + GOOD_HOST,
        2,
        "[defaults]",
        "weight",
        "out of range",
        "weight = 1.0",
    ),
    ErrorCase(
        "nested-too-deep-to-parse",
        "x = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n" + GOOD_HOST,
        None,
        None,
        None,
        "not valid TOML: nested too deeply",
        "remove the extra nesting",
    ),
    ErrorCase(
        "nested-deep-but-parseable",
        GOOD_HOST + "[host.labels" + ".a" * 5000 + "]\n",
        4,
        "a",
        "labels",
        "expected an array of strings, found a table ({...})",
        "labels = [",
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.id for case in ERROR_CASES])
def test_inventory_error_points_at_the_mistake(case: ErrorCase, tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(case.toml)

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    error = caught.value
    text = str(error)
    assert (error.path, error.line, error.entry, error.key) == (
        str(path),
        case.line,
        case.entry,
        case.key,
    ), text
    assert_points_at(error, case, str(path))
    for part in (case.entry, case.key):
        if part is not None:
            assert f": {part}:" in text, f"expected {part!r} named in {text!r}"


def test_missing_file_suggests_creating_it_or_an_inline_list(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.path == str(path)
    assert "no such file" in str(caught.value)
    assert caught.value.fix is not None
    assert "create it" in caught.value.fix
    assert "--hosts web1,root@10.0.0.5:2222" in caught.value.fix


def test_directory_is_not_an_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(GOOD_HOST)
    path.chmod(0)
    try:
        with pytest.raises(InventoryError, match="cannot read the file"):
            load_inventory(path)
    finally:
        path.chmod(0o600)


def test_toml_error_at_end_of_document_still_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text('[[host]]\nname = "a"\nname = "b"')
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.line is not None
    assert "not valid TOML" in caught.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_bytes(b'[[host]]\nname = "\xff"\n')
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.line == 2
    assert "UTF-8" in caught.value.message


# --- happy paths -------------------------------------------------------------------

FULL = """\
[defaults]
user = "ci"
identity = "~/.ssh/id_ed25519"
known_hosts = "~/.ssh/known_hosts"
slots = 4
workdir = "/var/tmp/meshrun/{name}"
labels = ["fleet"]

[[host]]
name = "build-1"
address = "10.0.0.11"
port = 2222
labels = ["linux", "x86_64", "linux"]
weight = 2

[[host]]
name = "build-2"
address = "[fe80::2]"
user = "root"
slots = "auto"
proxy_jump = "admin@bastion:22"
workdir = "/srv/{name}/work"

[[host]]
name = "mac"
address = "mac-mini"  # an ssh_config alias
"""


def test_full_inventory(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(FULL)

    hosts = load_inventory(path)

    assert hosts == [
        Host(
            name="build-1",
            address="10.0.0.11",
            port=2222,
            user="ci",
            identity="~/.ssh/id_ed25519",
            known_hosts="~/.ssh/known_hosts",
            workdir="/var/tmp/meshrun/build-1",
            slots=4,
            weight=2.0,
            labels=frozenset({"linux", "x86_64"}),
        ),
        Host(
            name="build-2",
            address="fe80::2",
            user="root",
            identity="~/.ssh/id_ed25519",
            known_hosts="~/.ssh/known_hosts",
            workdir="/srv/build-2/work",
            slots=None,
            labels=frozenset({"fleet"}),
            proxy_jump="admin@bastion:22",
        ),
        Host(
            name="mac",
            address="mac-mini",
            user="ci",
            identity="~/.ssh/id_ed25519",
            known_hosts="~/.ssh/known_hosts",
            workdir="/var/tmp/meshrun/mac",
            slots=4,
            labels=frozenset({"fleet"}),
        ),
    ]
    assert isinstance(hosts[0].weight, float)


def test_minimal_host_keeps_host_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(GOOD_HOST)
    assert load_inventory(str(path)) == [Host(name="a", address="10.0.0.1")]
    assert load_inventory(path)[0].workdir == "~/.meshrun/work"


# --- inline lists and resolution ---------------------------------------------------


def test_parse_inline() -> None:
    hosts = parse_inline("web1, root@10.0.0.5:2222,[::1]:2200,alice@[fe80::1],::2,")
    assert [(h.name, h.address, h.port, h.user) for h in hosts] == [
        ("web1", "web1", None, None),
        ("10.0.0.5:2222", "10.0.0.5", 2222, "root"),
        ("[::1]:2200", "::1", 2200, None),
        ("fe80::1", "fe80::1", None, "alice"),
        ("::2", "::2", None, None),
    ]


@pytest.mark.parametrize(
    ("spec", "entry", "key", "says"),
    [
        ("web1,web1", "web1", "name", "listed twice"),
        ("root@h:22,alice@h:22", "alice@h:22", "name", "listed twice ('root@h:22' and"),
        ("h:0", "h:0", "port", "bad port"),
        ("h:99999", "h:99999", "port", "bad port"),
        ("h:ssh", "h:ssh", "port", "bad port"),
        ("[::1]:", "[::1]:", "port", "bad port"),
        ("@h", "@h", "user", "empty user"),
        ("[::1", "[::1", None, "unclosed '['"),
        ("[web1]", "[web1]", None, "only for IPv6"),
        ("./hosts", "./hosts", None, "not a host name"),
        (",", None, None, "no hosts given"),
    ],
    ids=[
        "duplicate",
        "duplicate-other-user",
        "port-zero",
        "port-too-big",
        "port-not-number",
        "port-empty",
        "empty-user",
        "unclosed-bracket",
        "brackets-without-ipv6",
        "path-like",
        "empty",
    ],
)
def test_parse_inline_errors(spec: str, entry: str | None, key: str | None, says: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inline(spec)
    error = caught.value
    assert (error.path, error.entry, error.key) == (None, entry, key), str(error)
    assert str(error).startswith("--hosts:")
    assert says in error.message
    assert error.fix


def test_resolve_hosts_none_is_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_hosts(None) == [
        Host(name=LOCAL_HOST_NAME, local=True, workdir=str(tmp_path)),
    ]
    assert local_host("/w") == Host(name=LOCAL_HOST_NAME, local=True, workdir="/w")


def test_resolve_hosts_file_or_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet").write_text(GOOD_HOST)  # an existing file, whatever its name
    assert [h.name for h in resolve_hosts("fleet")] == ["a"]
    assert [h.name for h in resolve_hosts("web1,web2")] == ["web1", "web2"]
    with pytest.raises(InventoryError, match="no such file") as caught:
        resolve_hosts("missing.toml")
    assert caught.value.path == "missing.toml"


# --- selection ---------------------------------------------------------------------

FLEET = [
    Host(name="web1", address="10.0.0.1", labels=frozenset({"web", "linux"})),
    Host(name="web2", address="10.0.0.2", labels=frozenset({"web", "linux"})),
    Host(name="web10", address="10.0.0.10", labels=frozenset({"web", "bsd"})),
    Host(name="db1", address="10.0.1.1", labels=frozenset({"db", "linux"})),
    Host(name="mac", address="mac-mini", labels=frozenset({"darwin"})),
]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ([], ["web1", "web2", "web10", "db1", "mac"]),
        (["web1"], ["web1"]),
        (["web*"], ["web1", "web2", "web10"]),
        (["web?"], ["web1", "web2"]),
        (["10.0.1.*"], ["db1"]),
        (["mac-mini"], ["mac"]),
        (["label:web"], ["web1", "web2", "web10"]),
        (["label:l*"], ["web1", "web2", "db1"]),
        (["db1,mac"], ["db1", "mac"]),
        (["mac,db1"], ["db1", "mac"]),
        (["web*,!web10"], ["web1", "web2"]),
        (["!label:web"], ["db1", "mac"]),
        (["!web*,!mac"], ["db1"]),
        (["label:linux", "web*"], ["web1", "web2"]),
        (["label:linux", "!db1", "label:web,mac"], ["web1", "web2"]),
        (["web[1-2]"], ["web1", "web2"]),
        (["web[1,10]"], ["web1", "web10"]),
        (["web[1-2],db1"], ["web1", "web2", "db1"]),
        (["nothing*,db1"], ["db1"]),
        (["db1,"], ["db1"]),
    ],
    ids=[
        "no-limit",
        "exact",
        "glob",
        "glob-one-char",
        "address-glob",
        "address-alias",
        "label",
        "label-glob",
        "union",
        "union-keeps-inventory-order",
        "exclude",
        "exclude-label",
        "only-excludes",
        "intersection",
        "intersection-of-three",
        "hostlist-range",
        "hostlist-multi-digit",
        "hostlist-inside-union",
        "one-pattern-matches-nothing",
        "trailing-comma",
    ],
)
def test_select_hosts(limits: list[str], expected: list[str]) -> None:
    assert [host.name for host in select_hosts(FLEET, limits)] == expected


def test_select_inline_names_literally() -> None:
    hosts = parse_inline("[::1]:2200,10.0.0.5:2222")
    assert [h.name for h in select_hosts(hosts, ["[::1]:2200"])] == ["[::1]:2200"]
    assert [h.name for h in select_hosts(hosts, ["10.0.0.5:*"])] == ["10.0.0.5:2222"]


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        (["nothing*"], "no host matches --limit 'nothing*'"),
        (["label:gpu"], "no host matches --limit 'label:gpu'"),
        (["!*"], "no host matches --limit '!*'"),
        (["db1", "mac"], "no host matches every --limit at once ('db1' and 'mac')"),
    ],
    ids=["glob", "label", "exclude-all", "disjoint-intersection"],
)
def test_select_nothing_lists_what_exists(limits: list[str], says: str) -> None:
    with pytest.raises(InventoryError) as caught:
        select_hosts(FLEET, limits, source="hosts.toml")
    error = caught.value
    assert (error.path, error.key) == ("hosts.toml", "--limit")
    assert says in error.message
    assert error.fix == (
        "choose from the hosts: web1, web2, web10, db1, mac; "
        "labels: label:bsd, label:darwin, label:db, label:linux, label:web"
    )


def test_select_nothing_lists_at_most_ten_names() -> None:
    hosts = [Host(name=f"n{i}") for i in range(15)]
    with pytest.raises(InventoryError) as caught:
        select_hosts(hosts, ["x"])
    assert caught.value.fix == (
        "choose from the hosts: n0, n1, n2, n3, n4, n5, n6, n7, n8, n9 and 5 more; labels: none"
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "empty --limit"),
        (" , ", "empty --limit"),
        ("!", "needs a pattern"),
        ("label:", "needs a label"),
    ],
    ids=["empty", "only-commas", "bare-bang", "bare-label"],
)
def test_malformed_limit(value: str, says: str) -> None:
    with pytest.raises(InventoryError) as caught:
        select_hosts(FLEET, [value])
    assert caught.value.key == "--limit"
    assert says in caught.value.message
    assert caught.value.fix

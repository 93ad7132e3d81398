"""The hosts.toml writer: what it writes parses back to what it was given, and a
hosts.toml of valid hosts loads back to the same hosts."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.config.hostsfile import (
    HostEntry,
    Value,
    WriteError,
    render_hosts,
    toml_key,
    toml_string,
    toml_value,
    write_atomic,
    write_hosts,
)
from meshrun.config.inventory import MAX_SLOTS, Host, HostDefaults, read_inventory

# Any text a file can hold: lone surrogates cannot be encoded as UTF-8 at all.
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalars = st.one_of(
    _text,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
_values: st.SearchStrategy[Value] = st.one_of(_scalars, st.lists(_text, max_size=4))
_tables = st.dictionaries(_text, _values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_toml_strings_round_trip(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates cannot be in a file at all
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text


@settings(max_examples=150, deadline=None)
@given(
    hosts=st.lists(_tables, max_size=4),
    defaults=st.none() | _tables,
    comment=st.none() | _text,
    notes=st.lists(st.none() | _text, min_size=4, max_size=4),
)
def test_any_keys_and_values_parse_back(
    hosts: list[dict[str, Value]],
    defaults: dict[str, Value] | None,
    comment: str | None,
    notes: list[str | None],
) -> None:
    """Keys of any text are quoted, strings escaped, comments kept comments: the TOML
    read back is exactly the tables written."""
    entries = [HostEntry(keys, note) for keys, note in zip(hosts, notes, strict=False)]
    text = render_hosts(entries, defaults=defaults, comment=comment)
    expected: dict[str, Any] = {}
    if defaults is not None:
        expected["defaults"] = defaults
    if hosts:
        expected["host"] = hosts
    assert tomllib.loads(text) == expected


def test_the_layout_people_read() -> None:
    text = render_hosts(
        [
            HostEntry({"name": "b1", "labels": frozenset({"x86", "arm"})}, "seen on the LAN"),
            {"name": "b2", "a.b": 1, "weight": 1.5, "identity": Path("/k")},
        ],
        defaults={"user": "ci", "proxy_jump": 'a"b'},
        comment="written by a test\nsecond line",
    )
    assert text == (
        "# written by a test\n# second line\n\n"
        '[defaults]\nuser = "ci"\nproxy_jump = "a\\"b"\n\n'
        '[[host]]\nname = "b1"\nlabels = ["arm", "x86"]\n# seen on the LAN\n\n'
        '[[host]]\nname = "b2"\n"a.b" = 1\nweight = 1.5\nidentity = "/k"\n'
    )


def test_a_comment_cannot_become_toml() -> None:
    text = render_hosts([HostEntry({"name": "a"}, 'x\n[[host]]\rname = "evil"\x1b')])
    assert tomllib.loads(text) == {"host": [{"name": "a"}]}
    assert '# x\n# [[host]]\n# name = "evil"\\u001B\n' in text


def test_keys_are_bare_only_when_toml_allows() -> None:
    assert [toml_key(k) for k in ("name", "proxy_jump", "a-b", "a.b", "", "é", "a b")] == [
        "name",
        "proxy_jump",
        "a-b",
        '"a.b"',
        '""',
        '"é"',
        '"a b"',
    ]


@pytest.mark.parametrize("value", [None, {"a": "b"}, [1, 2], object()])
def test_what_a_hosts_toml_cannot_hold_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        toml_value(value)


# -- valid hosts load back ----------------------------------------------------------------

_free_text = _text.filter(lambda t: bool(t.strip()) and "\x00" not in t)
_labels = st.lists(
    _text.filter(lambda t: bool(t) and "\x00" not in t and not re.search(r"[\s,]", t)),
    max_size=3,
)
_keys: dict[str, st.SearchStrategy[Any]] = {
    "port": st.integers(1, 65535),
    "user": _free_text,
    "identity": _free_text,
    "known_hosts": _free_text,
    "workdir": st.tuples(
        _free_text.filter(lambda t: "{" not in t and "}" not in t), st.booleans()
    ).map(lambda parts: parts[0] + ("/{name}" if parts[1] else "")),
    "slots": st.integers(1, MAX_SLOTS) | st.just("auto"),
    "weight": st.floats(1e-6, 1e6) | st.integers(1, 1000),
    "labels": _labels,
    "proxy_jump": st.from_regex(r"\A([a-z]{1,5}@)?[a-z][a-z0-9.-]{0,10}(:[1-9][0-9]{0,3})?\Z"),
}
_optional = st.fixed_dictionaries({}, optional=_keys)
_host = st.tuples(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,12}\Z"),
    st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,12}\Z") | st.sampled_from(["fe80::1", "10.0.0.1"]),
    _optional,
).map(lambda parts: {"name": parts[0], "address": parts[1], **parts[2]})


def _checked(raw: dict[str, Any]) -> dict[str, Any]:
    """What the loader makes of valid values."""
    values = dict(raw)
    if values.get("slots") == "auto":
        values["slots"] = None
    if "weight" in values:
        values["weight"] = float(values["weight"])
    if "labels" in values:
        values["labels"] = frozenset(values["labels"])
    return values


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hosts=st.lists(_host, max_size=4, unique_by=lambda h: h["name"]),
    defaults=st.none() | _optional,
)
def test_valid_hosts_load_back_as_written(
    tmp_path: Path, hosts: list[dict[str, Any]], defaults: dict[str, Any] | None
) -> None:
    path = write_hosts(tmp_path / "hosts.toml", hosts, defaults=defaults)
    inventory = read_inventory(path, hosts_required=False)
    assert inventory.defaults == HostDefaults(**_checked(defaults or {}))
    expected = []
    for raw in hosts:
        values = _checked({**(defaults or {}), **raw})
        if "workdir" in values:
            values["workdir"] = values["workdir"].replace("{name}", values["name"])
        expected.append(Host(**values))
    assert list(inventory.hosts) == expected


# -- writing ---------------------------------------------------------------------------------


def test_write_replaces_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "hosts.toml"
    path.write_text("old")
    assert write_hosts(path, [{"name": "a", "address": "h"}]) == path
    assert path.read_text() == '[[host]]\nname = "a"\naddress = "h"\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path / "out") == ["hosts.toml"]


def test_write_says_whether_the_directory_or_the_file_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(WriteError) as missing:
        write_atomic(out / "hosts.toml", "")
    assert (missing.value.placed, missing.value.reason) == (False, "No such file or directory")
    (out / "dir").mkdir(parents=True)
    with pytest.raises(WriteError) as directory:
        write_atomic(out / "dir", "")
    assert (directory.value.placed, directory.value.reason) == (True, "Is a directory")
    assert os.listdir(out) == ["dir"], "a temporary file was left behind"

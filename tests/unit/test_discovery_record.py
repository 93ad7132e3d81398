"""The _meshrun._tcp record: encoding, strict decoding, and hostile input never crashing."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.discovery.record import (
    MAX_TXT_BYTES,
    Advert,
    Agent,
    Rejected,
    check_agent_name,
    check_label,
    check_user,
    decode_txt,
    encode_txt,
    instance_name,
    parse_agent,
    service_name,
    txt_bytes,
)
from meshrun.errors import InputError
from meshrun.transport.sshkeys import (
    FINGERPRINT_RE,
    parse_public_key,
    read_public_key,
    sha256_fingerprint,
)

FINGERPRINT = "SHA256:" + base64.b64encode(hashlib.sha256(b"key").digest()).decode().rstrip("=")

ADVERT = Advert(
    name="build-1",
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
    meshrun_version="0.1.0",
)


def parse(
    txt: dict[str, str] | bytes, *, name: str = "build-1", srv_port: int | None = 2222
) -> Agent | Rejected:
    raw = txt if isinstance(txt, bytes) else txt_bytes(txt)
    return parse_agent(service_name(name), raw, ["10.0.0.11"], srv_port)


def good_txt(**changes: str | None) -> dict[str, str]:
    txt = encode_txt(ADVERT)
    for key, value in changes.items():
        if value is None:
            txt.pop(key, None)
        else:
            txt[key] = value
    return txt


def test_an_encoded_advert_decodes_to_the_same_agent() -> None:
    agent = parse(encode_txt(ADVERT))
    assert agent == Agent(**{**_fields(ADVERT), "address": "10.0.0.11"}), agent


def _fields(advert: Advert) -> dict[str, Any]:
    return {name: getattr(advert, name) for name in Advert.__dataclass_fields__}


def test_optional_fields_may_be_absent() -> None:
    agent = parse(good_txt(user=None, workdir=None, meshrun=None, labels=None))
    assert isinstance(agent, Agent), agent
    assert (agent.user, agent.workdir, agent.labels, agent.meshrun_version) == (
        None,
        None,
        (),
        None,
    )


def test_keys_are_case_insensitive_and_the_first_of_a_repeated_key_wins() -> None:
    raw = txt_bytes({"TXTVERS": "1", **good_txt(txtvers=None)}) + txt_bytes({"slots": "999"})
    agent = parse(raw)
    assert isinstance(agent, Agent) and agent.slots == 8, agent


def test_unknown_keys_and_boolean_attributes_are_ignored() -> None:
    raw = txt_bytes({**good_txt(), "future": "x"}) + b"\x04flag" + b"\x05=oops"
    assert isinstance(parse(raw), Agent)


def test_the_best_address_is_the_first_usable_one() -> None:
    raw = txt_bytes(good_txt())
    agent = parse_agent(service_name("build-1"), raw, ["::1", "224.0.0.251", "0.0.0.0", "10.1.2.3"])
    assert isinstance(agent, Agent) and agent.address == "10.1.2.3", agent


@pytest.mark.parametrize(
    ("txt", "reason"),
    [
        (good_txt(txtvers="2"), "unknown protocol version txtvers='2'"),
        (good_txt(txtvers=None), "lacks txtvers="),
        (good_txt(slots="0"), "slots='0' is not a whole number from 1 to 1024"),
        (good_txt(slots="-1"), "slots='-1' is not a whole number"),
        (good_txt(slots="1e3"), "slots='1e3'"),
        (good_txt(slots="٥"), "is not a whole number"),  # int() would accept this digit
        (good_txt(slots=" 4"), "is not a whole number"),
        (good_txt(slots="99999999999999999999"), "is not a whole number"),
        (good_txt(cpus="5000"), "cpus='5000' is not a whole number from 1 to 4096"),
        (good_txt(port="70000"), "port='70000'"),
        (good_txt(port="22"), "the SRV port 2222 differs from port=22"),
        (good_txt(slots=None), "lacks slots="),
        (good_txt(hostkey="MD5:aa:bb"), "is not a SHA256:... fingerprint"),
        (good_txt(hostkey=FINGERPRINT + "A"), "is not a SHA256:... fingerprint"),
        (good_txt(keytype="ssh-nope"), "is not an SSH host key algorithm"),
        (good_txt(user="root;rm -rf /"), "is not a login name"),
        (good_txt(user="u" * 40), "is not a login name"),
        (good_txt(workdir="relative/dir"), "neither absolute nor under ~/"),
        (good_txt(workdir="/tmp/{host}"), "contains braces"),
        (good_txt(workdir="/tmp/a\nb"), "contains control characters"),
        (good_txt(workdir="/" + "w" * 240), "longer than 200 characters"),
        (good_txt(labels="linux, x86"), "label ' x86' is not"),
        (good_txt(labels="a,,b"), "label '' is not"),
        (good_txt(labels=",".join(f"l{i}" for i in range(40))), "more than 32 labels"),
        (good_txt(os="Linux Kernel"), "is not a platform name"),
        (good_txt(arch=""), "arch= is empty"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(txt: dict[str, str], reason: str) -> None:
    result = parse(txt)
    assert isinstance(result, Rejected), f"expected a rejection ({reason}), got {result}"
    assert reason in result.reason, result.reason
    assert result.name.startswith("build-1._meshrun._tcp"), result


@pytest.mark.parametrize(
    ("txt", "reason"),
    [
        (good_txt(user="ci\n"), "user 'ci\\n' is not a login name"),
        (good_txt(labels="linux\n"), "label 'linux\\n' is not"),
        (good_txt(os="linux\n"), "os='linux\\n' is not a platform name"),
        (good_txt(arch="x86_64\n"), "arch='x86_64\\n' is not a platform name"),
        (good_txt(hostkey=FINGERPRINT + "\n"), "is not a SHA256:... fingerprint"),
        (good_txt(port="2222\n"), "port='2222\\n' is not a whole number"),
        (good_txt(slots="4\n"), "slots='4\\n' is not a whole number"),
    ],
)
def test_a_value_ending_in_a_newline_is_rejected(txt: dict[str, str], reason: str) -> None:
    """``^...$`` with ``match`` accepts one trailing newline ($ matches before it)."""
    result = parse(txt)
    assert isinstance(result, Rejected), f"expected a rejection ({reason}), got {result}"
    assert reason in result.reason, result.reason


def test_a_name_label_or_user_ending_in_a_newline_is_refused() -> None:
    """The agent's own --name/--labels checks, and the instance name of a record."""
    assert check_agent_name("build-1") is None and check_agent_name("build-1\n")
    assert check_label("gpu") is None and check_label("gpu\n")
    assert check_user("ci") is None and check_user("ci\n")
    result = parse(good_txt(), name="build-1\n")
    assert isinstance(result, Rejected) and "name 'build-1\\n'" in result.reason, result
    assert FINGERPRINT_RE.match(FINGERPRINT) and not FINGERPRINT_RE.match(FINGERPRINT + "\n")


def test_a_version_ending_in_a_newline_is_dropped() -> None:
    agent = parse(good_txt(meshrun="0.1.0\n"))
    assert isinstance(agent, Agent) and agent.meshrun_version is None, agent


def test_bad_bytes_are_rejected() -> None:
    assert "is not UTF-8" in str(parse(txt_bytes(good_txt()).replace(b"user=ci", b"user=\xff\xfe")))
    truncated = txt_bytes(good_txt()) + b"\x40short"
    assert "truncated" in str(parse(truncated))
    huge = txt_bytes(good_txt()) + b"".join(txt_bytes({f"k{i}": "v" * 200}) for i in range(7))
    assert len(huge) > MAX_TXT_BYTES
    assert f"more than {MAX_TXT_BYTES}" in str(parse(huge))


@pytest.mark.parametrize(
    "name", ["", "-lead", "has space", "dot.ted", "x" * 64, "ünï", "a/b", "semi;colon"]
)
def test_bad_instance_names_are_rejected(name: str) -> None:
    result = parse(good_txt(), name=name)
    assert isinstance(result, Rejected) and "name" in result.reason, result


def test_a_service_of_another_type_is_rejected() -> None:
    result = parse_agent("x._http._tcp.local.", txt_bytes(good_txt()), ["10.0.0.1"], 2222)
    assert isinstance(result, Rejected) and "not a _meshrun._tcp" in result.reason


def test_no_usable_address_is_rejected() -> None:
    result = parse_agent(service_name("b"), txt_bytes(good_txt()), ["nope", "::1"], 2222)
    assert isinstance(result, Rejected) and "no usable IPv4 address" in result.reason


def test_instance_names() -> None:
    assert instance_name("build-1._meshrun._tcp.local.") == "build-1"
    assert instance_name("build-1._MESHRUN._tcp.local.") == "build-1"
    assert instance_name("build-1._http._tcp.local.") is None


def test_decode_txt_splits_entries() -> None:
    assert decode_txt(b"\x03a=1\x03A=2\x01b\x00") == {"a": b"1"}
    assert isinstance(decode_txt(b"\x09a=1"), Rejected)


def test_an_entry_over_255_bytes_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        txt_bytes({"labels": "x" * 300})


# -- hostile input never crashes ---------------------------------------------------------

_KEYS = ["txtvers", "port", "user", "slots", "cpus", "labels", "workdir", "os", "arch"]
_KEYS += ["keytype", "hostkey", "meshrun", "TxtVers", "x"]


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(max_size=80),
    raw=st.binary(max_size=1500),
    addresses=st.lists(st.text(max_size=20), max_size=3),
    srv_port=st.one_of(st.none(), st.integers(-5, 70000)),
)
def test_random_bytes_never_crash(
    name: str, raw: bytes, addresses: list[str], srv_port: int | None
) -> None:
    result = parse_agent(name + "._meshrun._tcp.local.", raw, addresses, srv_port)
    assert isinstance(result, Agent | Rejected)
    assert isinstance(decode_txt(raw), dict | Rejected)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.dictionaries(
        st.sampled_from(_KEYS),
        st.one_of(
            st.binary(max_size=300),
            st.integers(-(10**30), 10**30).map(lambda n: str(n).encode()),
            st.text(max_size=60).map(str.encode),
        ),
    )
)
def test_random_entries_never_crash(entries: dict[str, bytes]) -> None:
    base = {k: v.encode() for k, v in encode_txt(ADVERT).items()}
    merged = {**base, **{k.lower(): v for k, v in entries.items()}}
    result = parse_agent(service_name("build-1"), merged, ["10.0.0.1"], None)
    assert isinstance(result, Agent | Rejected)
    if isinstance(result, Agent):  # what passes is within the documented limits
        assert 1 <= result.slots <= 1024 and 1 <= result.cpus <= 4096
        assert 1 <= result.port <= 65535


_labels = st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9._:+-]{0,20}\Z"), max_size=5, unique=True)


@settings(max_examples=100, deadline=None)
@given(
    slots=st.integers(1, 1024),
    cpus=st.integers(1, 4096),
    port=st.integers(1, 65535),
    labels=_labels,
    workdir=st.one_of(st.none(), st.from_regex(r"\A/[^\x00-\x1f\x7f{}]{0,50}\Z")),
)
def test_valid_adverts_round_trip(
    slots: int, cpus: int, port: int, labels: list[str], workdir: str | None
) -> None:
    if workdir is not None and not workdir.isprintable():
        workdir = "/tmp"
    advert = replace(
        ADVERT, slots=slots, cpus=cpus, port=port, labels=tuple(sorted(labels)), workdir=workdir
    )
    agent = parse_agent(
        service_name(advert.name), txt_bytes(encode_txt(advert)), ["10.0.0.1"], port
    )
    assert isinstance(agent, Agent), agent
    assert _fields(agent) == _fields(advert)


# -- host key files ----------------------------------------------------------------------


def test_fingerprints_match_ssh_keygen(tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(
        ["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    public = read_public_key(f"{key}.pub")
    assert (public.key_type, public.fingerprint) == ("ssh-ed25519", listed)
    assert sha256_fingerprint(public.blob) == listed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "the file is empty"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n", "this is a private key"),
        ("ssh-ed25519 !!!notbase64", "not valid base64"),
        ("ssh-foo AAAA", "unknown key type"),
        ("ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519xx").decode(), "does not hold"),
    ],
)
def test_bad_host_key_files_name_the_option(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "key.pub"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match="--host-key") as info:
        read_public_key(path)
    assert message in str(info.value)
    assert "/etc/ssh/ssh_host_ed25519_key.pub" in str(info.value) or "public half" in str(
        info.value
    )


def test_parse_public_key_checks_the_blob() -> None:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes(32)
    key = parse_public_key("ssh-ed25519 " + base64.b64encode(blob).decode() + " me@host")
    assert key.fingerprint == sha256_fingerprint(blob)

"""known_hosts as OpenSSH reads it: patterns, hashed names, markers, several files."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.transport.knownhosts import KnownHosts, Verdict, _File, hashed_name, host_key_name


def _key(seed: int, key_type: str = "ssh-ed25519") -> tuple[str, bytes]:
    name = key_type.encode()
    blob = len(name).to_bytes(4, "big") + name + bytes([seed]) * 36
    return base64.b64encode(blob).decode(), blob


def test_names_as_openssh_files_them() -> None:
    assert host_key_name("10.0.0.1", 22) == "10.0.0.1"
    assert host_key_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert host_key_name("10.0.0.1", 2222, "buildbox") == "buildbox"


def test_verdicts_across_files_with_markers_and_hashes(tmp_path: Path) -> None:
    good, good_blob = _key(1)
    other, other_blob = _key(2)
    ca, _ = _key(3)
    user = tmp_path / "known_hosts"
    system = tmp_path / "ssh_known_hosts"
    user.write_text(
        "# comment\n"
        "@cert-authority *.corp ssh-ed25519 " + ca + "\n"
        "garbage line\n"
        f"{hashed_name('[10.0.0.1]:2222')} ssh-ed25519 {good}\n"
        f"web*,!web9 ssh-ed25519 {good}\n"
        f"@revoked web5 ssh-ed25519 {good}\n"
    )
    system.write_text(f"db1 ssh-ed25519 {other}\ndb2 ecdsa-sha2-nistp256 {other}\n")
    kh = KnownHosts()
    files = [str(user), str(system)]
    assert kh.check(files, "[10.0.0.1]:2222", "ssh-ed25519", good_blob).verdict is Verdict.TRUSTED
    assert kh.check(files, "web1", "ssh-ed25519", good_blob).verdict is Verdict.TRUSTED
    assert kh.check(files, "web9", "ssh-ed25519", good_blob).verdict is Verdict.UNKNOWN
    assert kh.check(files, "web5", "ssh-ed25519", good_blob).verdict is Verdict.REVOKED
    changed = kh.check(files, "db1", "ssh-ed25519", good_blob)
    assert changed.verdict is Verdict.CHANGED and changed.listed_in == str(system)
    assert kh.check(files, "db2", "ssh-ed25519", good_blob).verdict is Verdict.OTHER_TYPE
    assert kh.check(files, "db1", "ssh-ed25519", other_blob).verdict is Verdict.TRUSTED
    assert kh.check(files, "x.corp", "ssh-ed25519", good_blob).has_cert_authority
    assert kh.listed_types(files, "db2") == {"ecdsa-sha2-nistp256"}


def test_an_accepted_key_is_appended_hashed_when_asked(tmp_path: Path) -> None:
    good, blob = _key(7)
    path = tmp_path / "sub" / "known_hosts"
    kh = KnownHosts()
    kh.add(str(path), "[h]:22", "ssh-ed25519", good, hashed=True)
    text = path.read_text()
    assert text.startswith("|1|") and "[h]:22" not in text
    assert kh.check([str(path)], "[h]:22", "ssh-ed25519", blob).verdict is Verdict.TRUSTED
    fresh = KnownHosts()  # read back from disk
    assert fresh.check([str(path)], "[h]:22", "ssh-ed25519", blob).verdict is Verdict.TRUSTED
    assert os.path.getsize(path) > 0


_NAMES = ["web1", "WEB2", "db1", "[10.0.0.1]:2222", "x.corp", "a"]
_FIELDS = st.one_of(
    st.lists(
        st.sampled_from([*_NAMES, "web*", "!web2", "?b1", "*.corp", "!x.corp"]), min_size=1
    ).map(lambda names: ",".join(names)),
    st.sampled_from(_NAMES).map(lambda n: hashed_name(n.lower())),
)


@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["", "@revoked ", "@cert-authority "]), _FIELDS, st.integers(1, 3)
        ),
        max_size=12,
    ),
    name=st.sampled_from([n.lower() for n in _NAMES] + ["web9", "nothing"]),
)
@settings(max_examples=200, deadline=None)
def test_the_name_index_finds_what_a_full_scan_finds(lines, name, tmp_path_factory) -> None:
    """Lines found by name, by pattern or by hash come back as a scan of every line would."""
    path = tmp_path_factory.mktemp("kh") / "known_hosts"
    path.write_text("".join(f"{m}{f} ssh-ed25519 {_key(seed)[0]}\n" for m, f, seed in lines))
    f = _File(str(path))
    assert f.matching(name) == [e for e in f.entries if e.matches(name)]

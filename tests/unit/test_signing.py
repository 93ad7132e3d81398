"""Ed25519 keys and SSHSIG signatures, checked against stock OpenSSH (ssh-keygen)."""

from __future__ import annotations

import base64
import errno
import os
import shutil
import stat
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshrun.errors import InputError, IntegrityError
from meshrun.integrity.signing import (
    fingerprint,
    generate_keypair,
    keys_for_namespace,
    load_allowed_signers,
    load_private_key,
    load_public_key,
    match_pattern_list,
    parse_allowed_signers,
    public_key_blob,
    public_key_line,
    same_key,
    sshsig_sign,
    sshsig_verify,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")

DATA = b'{"run_id":"r1"}\n'


def ssh_keygen(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ssh-keygen", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result


def stock_key(directory: Path) -> Path:
    """An unencrypted key pair made by ``ssh-keygen`` itself: ``directory/id_ed25519``."""
    path = directory / "id_ed25519"
    result = ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "stock@example.com", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return path


def stock_verify(
    tmp_path: Path,
    allowed_line: str,
    signature: str,
    data: bytes,
    *,
    identity: str,
    namespace: str = "meshrun",
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "allowed_signers").write_text(allowed_line + "\n")
    (tmp_path / "data.sig").write_text(signature)
    return ssh_keygen(
        "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I", identity,
        "-n", namespace, "-s", str(tmp_path / "data.sig"), stdin=data,
    )  # fmt: skip


# -- SSHSIG interop --------------------------------------------------------------------


def test_a_meshrun_signature_verifies_with_stock_ssh_keygen(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "signing", comment="ci@example.com")
    signature = sshsig_sign(DATA, load_private_key(tmp_path / "signing"))

    good = stock_verify(tmp_path, line, signature, DATA, identity="ci@example.com")
    assert good.returncode == 0, f"ssh-keygen -Y verify refused our signature: {good.stderr}"
    assert 'Good "meshrun" signature for ci@example.com' in good.stdout

    tampered = stock_verify(tmp_path, line, signature, DATA + b" ", identity="ci@example.com")
    assert tampered.returncode != 0, "ssh-keygen accepted a signature over changed data"
    other_namespace = stock_verify(
        tmp_path, line, signature, DATA, identity="ci@example.com", namespace="git"
    )
    assert other_namespace.returncode != 0


@pytest.mark.parametrize("hash_alg", ["sha512", "sha256"])
def test_a_stock_ssh_keygen_signature_verifies_with_meshrun(tmp_path: Path, hash_alg: str) -> None:
    key_path = stock_key(tmp_path)
    data_path = tmp_path / "manifest.json"
    data_path.write_bytes(DATA)
    signed = ssh_keygen(
        "-Y", "sign", "-f", str(key_path), "-n", "meshrun", "-O", f"hashalg={hash_alg}",
        str(data_path),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    armored = (tmp_path / "manifest.json.sig").read_text()
    public = load_public_key(key_path.with_name("id_ed25519.pub"))

    signer = sshsig_verify(DATA, armored, allowed=[public])

    assert same_key(signer, public)
    assert same_key(signer, load_private_key(key_path).public_key())


def test_signatures_are_byte_for_byte_those_of_ssh_keygen(tmp_path: Path) -> None:
    """Ed25519 is deterministic, so the same key and data give the same armored text."""
    key_path = stock_key(tmp_path)
    data_path = tmp_path / "data"
    data_path.write_bytes(DATA)
    assert (
        ssh_keygen("-Y", "sign", "-f", str(key_path), "-n", "meshrun", str(data_path)).returncode
        == 0
    )

    ours = sshsig_sign(DATA, load_private_key(key_path))

    assert ours == (tmp_path / "data.sig").read_text()
    assert all(len(line) <= 70 for line in ours.splitlines())


def test_a_manifest_signed_for_another_namespace_is_refused(tmp_path: Path) -> None:
    key_path = stock_key(tmp_path)
    (tmp_path / "data").write_bytes(DATA)
    assert (
        ssh_keygen(
            "-Y", "sign", "-f", str(key_path), "-n", "git", str(tmp_path / "data")
        ).returncode
        == 0
    )
    public = load_public_key(key_path.with_name("id_ed25519.pub"))

    with pytest.raises(IntegrityError, match="namespace 'git', not 'meshrun'"):
        sshsig_verify(DATA, (tmp_path / "data.sig").read_text(), allowed=[public])


def test_tampered_data_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    armored = sshsig_sign(DATA, key)

    with pytest.raises(IntegrityError, match="does not match the data") as caught:
        sshsig_verify(DATA.replace(b"r1", b"r2"), armored, allowed=[key.public_key()])
    assert caught.value.exit_code == 4


def test_a_signer_that_is_not_allowed_is_refused_and_named() -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    armored = sshsig_sign(DATA, signer)

    with pytest.raises(IntegrityError) as caught:
        sshsig_verify(DATA, armored, allowed=[other.public_key()])
    assert fingerprint(signer.public_key()) in str(caught.value)
    assert "not an allowed key" in str(caught.value)
    with pytest.raises(IntegrityError, match="no key is allowed"):
        sshsig_verify(DATA, armored, allowed=[])
    # allowed=None: only soundness is checked; the caller decides whom to trust.
    assert same_key(sshsig_verify(DATA, armored, allowed=None), signer.public_key())


# -- strict parsing --------------------------------------------------------------------


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _armor(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return (
        "\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"]) + "\n"
    )


def _blob(key: Ed25519PrivateKey, **override: bytes) -> bytes:
    """An SSHSIG blob whose fields can be replaced one by one."""
    fields = {
        "magic": b"SSHSIG",
        "version": struct.pack(">I", 1),
        "publickey": _string(public_key_blob(key.public_key())),
        "namespace": _string(b"meshrun"),
        "reserved": _string(b""),
        "hash_algorithm": _string(b"sha512"),
        "signature": _string(_string(b"ssh-ed25519") + _string(b"\0" * 64)),
        "trailer": b"",
    }
    fields.update(override)
    return b"".join(fields.values())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"magic": b"SSHSIX"}, "bad magic"),
        ({"version": struct.pack(">I", 2)}, "unsupported SSHSIG version 2"),
        ({"reserved": _string(b"x")}, "reserved field is not empty"),
        ({"hash_algorithm": _string(b"md5")}, "unsupported SSHSIG hash algorithm 'md5'"),
        ({"trailer": b"\0"}, "unexpected bytes after the signature"),
        ({"signature": _string(_string(b"ssh-rsa") + _string(b"x"))}, "ssh-ed25519 only"),
        ({"publickey": _string(_string(b"ssh-rsa") + _string(b"x"))}, "ssh-rsa key"),
        ({"namespace": b"\0\0\0\xff"}, "malformed SSH signature: truncated"),
    ],
)
def test_a_malformed_signature_is_refused_with_what_is_wrong(
    override: dict[str, bytes], message: str
) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(IntegrityError, match=message):
        sshsig_verify(DATA, _armor(_blob(key, **override)), allowed=None)


@pytest.mark.parametrize(
    ("armored", "message"),
    [
        ("", "not an armored SSH signature"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n", "not an armored SSH signature"),
        ("-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n", "not valid base64"),
        ("-----BEGIN PGP SIGNATURE-----\nU1NIU0lH\n-----END PGP SIGNATURE-----\n", "armored"),
    ],
)
def test_bad_armor_is_refused(armored: str, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        sshsig_verify(DATA, armored, allowed=None)


def test_a_valid_signature_with_a_field_changed_no_longer_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    good = base64.b64decode("".join(sshsig_sign(DATA, key).splitlines()[1:-1]))
    swapped = good.replace(_string(b"sha512"), _string(b"sha256"))

    with pytest.raises(IntegrityError, match="does not match"):
        sshsig_verify(DATA, _armor(swapped), allowed=[key.public_key()])


def test_sign_refuses_unknown_hash_algorithms() -> None:
    with pytest.raises(ValueError, match="hash_alg"):
        sshsig_sign(DATA, Ed25519PrivateKey.generate(), hash_alg="md5")


# -- keys ------------------------------------------------------------------------------


def test_fingerprint_matches_ssh_keygen_l(tmp_path: Path) -> None:
    key_path = stock_key(tmp_path)
    listed = ssh_keygen("-l", "-f", str(key_path) + ".pub")
    assert listed.returncode == 0, listed.stderr

    ours = fingerprint(load_public_key(Path(str(key_path) + ".pub")))

    assert listed.stdout.split()[1] == ours, f"ssh-keygen -l says {listed.stdout!r}"


def test_a_key_made_by_ssh_keygen_loads(tmp_path: Path) -> None:
    key_path = stock_key(tmp_path)
    public_text = key_path.with_name("id_ed25519.pub").read_text()

    key = load_private_key(key_path)

    assert public_key_line(key.public_key()) == " ".join(public_text.split()[:2])
    assert same_key(load_public_key(public_text), key.public_key())  # text, not a path


def test_tilde_is_expanded() -> None:
    # conftest points HOME at a fresh directory
    ssh_dir = Path.home() / ".ssh"
    ssh_dir.mkdir()
    stock_key(ssh_dir)
    assert isinstance(load_private_key("~/.ssh/id_ed25519"), Ed25519PrivateKey)
    assert load_public_key("~/.ssh/id_ed25519.pub")


def test_an_encrypted_key_says_meshrun_cannot_prompt(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    assert ssh_keygen("-q", "-t", "ed25519", "-N", "s3cret", "-f", str(path)).returncode == 0

    with pytest.raises(InputError) as caught:
        load_private_key(path)

    assert str(path) in str(caught.value)
    assert "encrypted" in str(caught.value)
    assert "cannot prompt" in str(caught.value) and "unencrypted" in str(caught.value)
    assert caught.value.exit_code == 2


def test_an_encrypted_pkcs8_key_says_the_same(tmp_path: Path) -> None:
    path = tmp_path / "locked.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    with pytest.raises(InputError, match="cannot prompt"):
        load_private_key(path)


def test_an_unencrypted_pkcs8_key_loads(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert same_key(load_private_key(path).public_key(), key.public_key())


def test_keys_that_are_not_ed25519_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "id_ecdsa"
    assert ssh_keygen("-q", "-t", "ecdsa", "-N", "", "-f", str(path)).returncode == 0

    with pytest.raises(InputError, match="Ed25519 only"):
        load_private_key(path)
    with pytest.raises(InputError, match="ecdsa-sha2-nistp256 key cannot verify"):
        load_public_key(Path(str(path) + ".pub"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such signing key"),
        (b"hello", "not a private key meshrun can read"),
        (b"ssh-ed25519 AAAA x\n", "is a public key, not a private one"),
    ],
)
def test_unreadable_private_keys_are_input_errors(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_private_key(path)


def test_a_private_key_given_as_the_public_key_is_named(tmp_path: Path) -> None:
    key_path = stock_key(tmp_path)
    with pytest.raises(InputError, match=r"is a private key, not a public one"):
        load_public_key(key_path)
    with pytest.raises(InputError, match="not a valid ssh-ed25519 public key"):
        load_public_key("ssh-ed25519 AAAAnotbase64")


# -- generate_keypair ------------------------------------------------------------------


def test_generate_keypair_writes_an_openssh_key_pair(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "meshrun_ed25519"

    line = generate_keypair(path, comment="ci@example.com")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public_text = Path(str(path) + ".pub").read_text()
    key_type, key_b64, comment = public_text.split()
    assert (key_type, comment) == ("ssh-ed25519", "ci@example.com")
    assert line == f'ci@example.com namespaces="meshrun" ssh-ed25519 {key_b64}'
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".pub"]
    # OpenSSH reads the private key we wrote: it derives the same public key.
    derived = ssh_keygen("-y", "-f", str(path))
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == [key_type, key_b64]


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("precious")

    with pytest.raises(InputError) as caught:
        generate_keypair(path, comment="ci")

    assert str(path) in str(caught.value) and caught.value.fix
    assert path.read_text() == "precious"
    assert not Path(str(path) + ".pub").exists()

    lonely_pub = tmp_path / "other.pub"
    lonely_pub.write_text("ssh-ed25519 AAAA old\n")
    with pytest.raises(InputError, match=r"other\.pub already exists"):
        generate_keypair(tmp_path / "other", comment="ci")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("comment", ["", "two words", "a,b", 'q"uote', "line\nbreak"])
def test_generate_keypair_needs_a_usable_identity(tmp_path: Path, comment: str) -> None:
    with pytest.raises(InputError, match="principal"):
        generate_keypair(tmp_path / "key", comment=comment)
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


def test_generate_keypair_ignores_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_keypair(tmp_path / "key", comment="ci")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


# -- allowed_signers -------------------------------------------------------------------


def test_allowed_signers_are_parsed_like_openssh() -> None:
    a, b, c = (Ed25519PrivateKey.generate().public_key() for _ in range(3))
    notes: list[str] = []
    text = "\n".join(
        [
            "# team keys",
            "",
            f'ci@example.com,release@example.com namespaces="meshrun" {public_key_line(a, "ci")}',
            '"dev one@example.com" namespaces="git,meshrun",valid-before="20991231Z" '
            + public_key_line(b),
            f"*@example.com cert-authority {public_key_line(c)}",
            "old@example.com ssh-rsa AAAAB3NzaC1yc2E= old",
            f'git@example.com namespaces="git" {public_key_line(c)}',
        ]
    )

    signers = parse_allowed_signers(text, source="signers", on_note=notes.append)

    assert [s.principals for s in signers] == [
        ("ci@example.com", "release@example.com"),
        ("dev one@example.com",),
        ("git@example.com",),
    ]
    principals, options, key = signers[0]  # a (principals, options, key) tuple
    assert principals == ("ci@example.com", "release@example.com")
    assert dict(options) == {"namespaces": "meshrun"} and same_key(key, a)
    assert dict(signers[1].options) == {"namespaces": "git,meshrun", "valid-before": "20991231Z"}
    assert notes == [
        "signers:5: cert-authority line ignored (meshrun does not use certificates)",
        "signers:6: ssh-rsa key ignored (meshrun signs with Ed25519 only)",
    ]
    chosen = keys_for_namespace(signers)
    assert [fingerprint(k) for k in chosen] == [fingerprint(a), fingerprint(b)]
    assert [
        fingerprint(k) for k in keys_for_namespace(signers, identity="dev one@example.com")
    ] == [fingerprint(b)]
    late = datetime(2100, 1, 1, tzinfo=UTC)
    assert [fingerprint(k) for k in keys_for_namespace(signers, now=late)] == [fingerprint(a)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'ci@example.com frobnicate="x" ssh-ed25519 AAAA',
            "signers:1: unsupported option 'frobnicate'",
        ),
        ("ci@example.com", "signers:1: expected `principals"),
        ('ci@example.com namespaces="meshrun"', "signers:1: no public key after the options"),
        ('ci@example.com valid-before="tomorrow" ssh-ed25519 AAAA', "is not YYYYMMDD"),
        ('"ci@example.com namespaces=x ssh-ed25519 AAAA', "unterminated quote"),
        ("ci@example.com ssh-ed25519 !!!", "signers:1: not a valid ssh-ed25519 public key"),
    ],
)
def test_malformed_allowed_signers_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_allowed_signers(line, source="signers")


def test_keys_for_namespace_agrees_with_ssh_keygen_on_expiry(tmp_path: Path) -> None:
    key_path = stock_key(tmp_path)
    public_line = key_path.with_name("id_ed25519.pub").read_text().strip()
    signature = sshsig_sign(DATA, load_private_key(key_path))
    expired = f'ci@example.com namespaces="meshrun",valid-before="20200101Z" {public_line}'

    assert (
        stock_verify(tmp_path, expired, signature, DATA, identity="ci@example.com").returncode != 0
    )
    (tmp_path / "allowed_signers").write_text(expired + "\n")
    assert keys_for_namespace(load_allowed_signers(tmp_path / "allowed_signers")) == []


def test_a_missing_allowed_signers_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such allowed_signers file"):
        load_allowed_signers(tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "patterns", "expected"),
    [
        ("ci@example.com", "*@example.com", True),
        ("ci@example.com", "ci@example.co?", True),
        ("ci@example.com", "*@example.com,!ci@*", False),
        ("ci@example.com", "dev@example.com", False),
        ("meshrun", "git,meshrun", True),
        ("meshrunx", "meshrun", False),
        ("a.b", "a?b", True),
        ("axb", "a.b", False),
    ],
)
def test_pattern_lists_match_like_openssh(text: str, patterns: str, expected: bool) -> None:
    assert match_pattern_list(text, patterns) is expected


def test_generate_keypair_works_where_hard_links_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    generate_keypair(tmp_path / "key", comment="ci")

    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    assert isinstance(load_private_key(tmp_path / "key"), Ed25519PrivateKey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "key", "key.pub"]
    with pytest.raises(InputError, match="already exists"):
        generate_keypair(tmp_path / "key", comment="ci")

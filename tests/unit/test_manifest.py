"""The run manifest: canonical bytes, hashing, path safety, writing and verifying."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from meshrun.errors import InputError, IntegrityError
from meshrun.integrity.manifest import (
    CHUNK_BYTES,
    FileEntry,
    HostEntry,
    Manifest,
    SignatureStatus,
    TaskEntry,
    VerifyReport,
    canonical_bytes,
    hash_file,
    hash_tree,
    parse_manifest,
    safe_relative_path,
    verify_directory,
    write_manifest,
)
from meshrun.integrity.signing import fingerprint, generate_keypair, load_private_key

STARTED = datetime(2026, 11, 23, 15, 25, 19, 123456, tzinfo=UTC)
SHA_A = hashlib.sha256(b"a").hexdigest()

ODD_NAMES = ["ünïcödé ✓.txt", "with space.txt", "new\nline.txt", "dir/sub dir/日本.bin"]


def sample(tasks: tuple[TaskEntry, ...] | None = None) -> Manifest:
    return Manifest(
        run_id="20261123T152519Z-3fa9c1",
        started=STARTED,
        ended=STARTED + timedelta(seconds=42.5),
        coordinator="laptop",
        command_line=("meshrun", "dispatch", "tasks.toml"),
        hosts=(
            HostEntry("build-2", "10.0.0.12", "SHA256:" + "B" * 43),
            HostEntry("build-1", "10.0.0.11", "SHA256:" + "A" * 43),
            HostEntry("local", "localhost", None),
        ),
        tasks=tasks
        if tasks is not None
        else (
            TaskEntry("test", "build-2", "pytest", "failed", 1, 2, 3.14159, ()),
            TaskEntry(
                "build",
                "build-1",
                "make",
                "succeeded",
                0,
                1,
                12.0,
                (FileEntry("dist/b.whl", 1, SHA_A, 0o644), FileEntry("a.txt", 1, SHA_A, 0o600)),
            ),
            TaskEntry("docs", None, "mkdocs", "skipped", None, 0, None),
        ),
    )


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


# -- canonical bytes -------------------------------------------------------------------


def test_canonical_bytes_are_compact_sorted_utf8_with_one_newline() -> None:
    data = canonical_bytes(sample())

    assert data.endswith(b"}\n") and data.count(b"\n") == 1
    text = data.decode("utf-8")
    assert text.startswith('{"command_line":["meshrun","dispatch","tasks.toml"],"coordinator":')
    assert ", " not in text and ": " not in text
    assert '"started":"2026-11-23T15:25:19.123Z"' in text
    assert '"duration_s":3.142' in text
    assert '"mode":420' in text  # 0o644: permission bits as an integer
    document = json.loads(text)
    assert [h["name"] for h in document["hosts"]] == ["build-1", "build-2", "local"]
    assert [t["name"] for t in document["tasks"]] == ["build", "docs", "test"]
    assert [f["path"] for f in document["tasks"][0]["files"]] == ["a.txt", "dist/b.whl"]


def test_canonical_bytes_do_not_depend_on_key_or_list_order() -> None:
    reference = canonical_bytes(sample())
    document = sample().to_dict()
    rng = random.Random(4)
    for _ in range(20):
        reordered = shuffled(document, rng)
        rng.shuffle(reordered["tasks"])
        rng.shuffle(reordered["hosts"])
        assert canonical_bytes(Manifest.from_dict(reordered)) == reference


def test_equal_manifests_give_equal_bytes() -> None:
    a = sample()
    b = Manifest(
        run_id=a.run_id,
        # the same instants in another zone, and with microseconds below the millisecond
        started=STARTED.astimezone(timezone(timedelta(hours=2))).replace(microsecond=123999),
        ended=a.ended,
        coordinator="laptop",
        command_line=["meshrun", "dispatch", "tasks.toml"],  # type: ignore[arg-type]
        hosts=tuple(reversed(a.hosts)),
        tasks=tuple(reversed(a.tasks)),
    )
    assert a == b
    assert canonical_bytes(a) == canonical_bytes(b)


def test_durations_are_rounded_so_bytes_are_stable() -> None:
    one = TaskEntry("t", None, "x", "succeeded", 0, 1, 0.1 + 0.2)
    other = TaskEntry("t", None, "x", "succeeded", 0, 1, 0.3)
    negative_zero = TaskEntry("t", None, "x", "succeeded", 0, 1, -0.0)
    assert one == other and one.duration_s == 0.3
    assert json.dumps(negative_zero.to_dict()["duration_s"]) == "0.0"


def test_round_trip() -> None:
    manifest = sample()
    assert Manifest.from_dict(json.loads(canonical_bytes(manifest))) == manifest
    assert parse_manifest(canonical_bytes(manifest)) == manifest
    assert parse_manifest(json.dumps(manifest.to_dict(), indent=2).encode()) == manifest


def test_round_trip_of_odd_file_names() -> None:
    files = tuple(FileEntry(name, 1, SHA_A, 0o644) for name in ODD_NAMES)
    manifest = sample((TaskEntry("build", "local", "make", "succeeded", 0, 1, 1.0, files),))

    data = canonical_bytes(manifest)

    assert "ünïcödé ✓.txt".encode() in data  # UTF-8, not \u escapes
    assert parse_manifest(data) == manifest


def _broken(change: Any) -> dict[str, Any]:
    document = sample().to_dict()
    change(document)
    return document


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("run_id"), "manifest lacks run_id"),
        (lambda d: d.update(extra=1), "unknown keys 'extra'"),
        (lambda d: d.update(schema=2), "schema 2 is not supported"),
        (lambda d: d.update(started="yesterday"), "started 'yesterday' is not an ISO 8601"),
        (lambda d: d.update(started="2026-11-23T15:25:19"), "with a zone"),
        (lambda d: d.update(hosts={}), r"manifest\.hosts must be a list"),
        (lambda d: d["tasks"][0].update(attempts=True), r"attempts must be an integer"),
        (lambda d: d["tasks"][0].update(host="elsewhere"), "'elsewhere', which is not in hosts"),
        (lambda d: d["tasks"][0].update(name=".."), "unsafe path '..'"),
        (lambda d: d["tasks"][0].update(name="a/b"), "cannot be a directory name"),
        (lambda d: d["tasks"].append(dict(d["tasks"][0])), "task 'build' is listed twice"),
        (lambda d: d["tasks"][0]["files"][0].update(path="/etc/passwd"), "it is absolute"),
        (lambda d: d["tasks"][0]["files"][0].update(sha256="ABC"), "64 lower-case hex"),
        (lambda d: d["tasks"][0]["files"][0].update(sha256=SHA_A + "\n"), "64 lower-case hex"),
        (lambda d: d["tasks"][0]["files"][0].update(size=-1), "size must be an integer >= 0"),
        (lambda d: d["tasks"][0]["files"][0].update(mode=0o170000), "is not permission bits"),
        (lambda d: d["tasks"][0]["files"].append(d["tasks"][0]["files"][0]), "listed twice"),
        (lambda d: d["tasks"][0].update(duration_s=-1), "duration_s must be a finite number"),
        (lambda d: d["tasks"][0].update(duration_s="1"), r"duration_s must be a number or null"),
    ],
)
def test_a_malformed_document_is_an_integrity_error(change: Any, message: str) -> None:
    with pytest.raises(IntegrityError, match=message) as caught:
        Manifest.from_dict(_broken(change))
    assert caught.value.exit_code == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b'{"schema":1,"schema":1}', "duplicate key 'schema'"),
        (b"[]", "must be an object"),
        (b'{"x":NaN}', "NaN is not a number"),
    ],
)
def test_parse_manifest_names_the_source(data: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=f"^run/manifest.json: .*{message}"):
        parse_manifest(data, source="run/manifest.json")


# -- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["a", "a/b.txt", "dir/sub dir/日本.bin", "new\nline", "..a", "a.."]
)
def test_safe_relative_paths_pass_unchanged(path: str) -> None:
    assert safe_relative_path(path) == path


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", "'..' part"),
        ("a/../../b", "'..' part"),
        ("a//b", "empty, '.' or '..' part"),
        ("a/", "empty, '.' or '..' part"),
        ("./a", "'.'"),
        ("a\0b", "NUL"),
        ("bad\udcff", "not valid UTF-8"),
    ],
)
def test_unsafe_paths_are_refused_by_name(path: str, problem: str) -> None:
    with pytest.raises(IntegrityError) as caught:
        safe_relative_path(path)
    assert repr(path) in str(caught.value) and problem in str(caught.value)


@given(st.text(alphabet=st.sampled_from(["a", ".", "/", "\0", " ", "é"]), max_size=12))
def test_an_accepted_path_never_leaves_its_directory(path: str) -> None:
    try:
        safe_relative_path(path)
    except IntegrityError:
        return
    joined = os.path.normpath(os.path.join("/root", path))
    assert joined.startswith("/root/") and joined == "/root/" + path


# -- hashing ---------------------------------------------------------------------------


def test_hash_file_reports_size_sha256_mode_and_the_relative_path(tmp_path: Path) -> None:
    target = tmp_path / "out" / "dist" / "app.tar"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"payload")
    target.chmod(0o750)

    entry = hash_file(target, root=tmp_path / "out")

    assert entry == FileEntry("dist/app.tar", 7, hashlib.sha256(b"payload").hexdigest(), 0o750)
    assert hash_file(target).path == "app.tar"


def test_hash_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")  # must not block waiting for a writer

    with pytest.raises(IntegrityError, match="link: is a symlink"):
        hash_file(tmp_path / "link")
    with pytest.raises(IntegrityError, match="fifo: not a regular file"):
        hash_file(tmp_path / "fifo")
    with pytest.raises(IntegrityError, match="is not inside"):
        hash_file(tmp_path / "real", root=tmp_path / "elsewhere")
    with pytest.raises(IntegrityError, match="gone: cannot read"):
        hash_file(tmp_path / "gone")


def test_hash_file_streams_a_large_file_in_small_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    block = os.urandom(CHUNK_BYTES)
    with big.open("wb") as handle:
        for _ in range(50):
            handle.write(block)
    expected = hashlib.sha256(block * 50).hexdigest()
    del block

    tracemalloc.start()
    try:
        entry = hash_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert entry.size == 50 * CHUNK_BYTES and entry.sha256 == expected
    assert peak < 5 * 2**20, f"hashing 50 MiB peaked at {peak / 2**20:.1f} MiB of Python memory"


def test_hash_tree_lists_every_file_and_refuses_symlinks(tmp_path: Path) -> None:
    for name in ODD_NAMES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)

    entries = hash_tree(tmp_path)

    assert [e.path for e in entries] == sorted(ODD_NAMES)
    (tmp_path / "dir" / "escape").symlink_to("/etc")
    with pytest.raises(IntegrityError, match="escape: is a symlink"):
        hash_tree(tmp_path)


# -- writing and verifying -------------------------------------------------------------


def make_artifacts(root: Path) -> Manifest:
    """Two tasks' outputs under ``root/<task>/`` and the manifest that lists them."""
    layout = {
        "build": ["dist/app.tar", *ODD_NAMES],
        "test": ["report.xml", "dist/app.tar"],  # same relative path as build's: no clash
    }
    tasks = []
    for task, names in layout.items():
        for name in names:
            path = root / task / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{task}:{name}")
        tasks.append(
            TaskEntry(task, "local", f"make {task}", "succeeded", 0, 1, 1.5, hash_tree(root / task))
        )
    return sample(tuple(tasks))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_an_untouched_signed_directory_verifies(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    manifest = make_artifacts(tmp_path)
    write_manifest(tmp_path, manifest, key)

    report = verify_directory(tmp_path, allowed_keys=[key.public_key()])

    assert report.ok, report.problems()
    assert report.signature is SignatureStatus.TRUSTED
    assert report.signer_fingerprint == fingerprint(key.public_key())
    assert report.files_checked == 7 and report.manifest == manifest
    assert report.problems() == []
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_missing_changed_and_unlisted_files_are_each_named(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    write_manifest(tmp_path, make_artifacts(tmp_path), key)
    (tmp_path / "build" / "new\nline.txt").unlink()  # missing
    same_size = tmp_path / "build" / "dist" / "app.tar"
    same_size.write_text(same_size.read_text().upper())  # changed content, same size
    (tmp_path / "test" / "report.xml").chmod(0o755)  # changed mode
    (tmp_path / "build" / "ünïcödé ✓.txt").write_text("longer than before")
    (tmp_path / "test" / "stray file.log").write_text("?")  # unlisted
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "x").write_text("?")  # unlisted, in a directory nobody listed

    report = verify_directory(tmp_path, allowed_keys=[key.public_key()])

    assert not report.ok
    assert report.signature is SignatureStatus.TRUSTED, "the manifest itself is intact"
    assert report.missing == ("build/new\nline.txt",)
    assert {c.path: c.differs for c in report.changed} == {
        "build/dist/app.tar": ("sha256",),
        "build/ünïcödé ✓.txt": ("size", "sha256"),
        "test/report.xml": ("mode",),
    }
    assert report.unlisted == ("extra/x", "test/stray file.log")
    assert report.errors == ()
    problems = report.problems()
    assert "build/new\nline.txt: missing" in problems
    assert "build/dist/app.tar: content (sha256) differs" in problems
    assert "test/report.xml: mode 0644 -> 0755" in problems
    assert "test/stray file.log: not in the manifest" in problems
    document = report.to_dict()
    assert document["ok"] is False and document["missing"] == ["build/new\nline.txt"]
    assert document["changed"][2]["actual"]["mode"] == 0o755


def test_a_file_replaced_by_a_symlink_is_changed_and_not_followed(tmp_path: Path) -> None:
    write_manifest(tmp_path, make_artifacts(tmp_path))
    target = tmp_path / "test" / "report.xml"
    target.unlink()
    target.symlink_to("/etc/hostname")
    shutil.move(tmp_path / "build" / "dist", tmp_path / "elsewhere")
    (tmp_path / "build" / "dist").symlink_to(tmp_path / "elsewhere")

    report = verify_directory(tmp_path, allowed_keys=None)

    assert [(c.path, c.differs, c.kind) for c in report.changed] == [
        ("test/report.xml", ("type",), "symlink")
    ]
    assert report.missing == ("build/dist/app.tar",), "never looked up through a symlinked dir"
    assert report.unlisted == ("build/dist", "elsewhere/app.tar")
    assert "test/report.xml: is a symlink, not a regular file" in report.problems()


def test_a_tampered_manifest_fails_the_signature(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    write_manifest(tmp_path, make_artifacts(tmp_path), key)
    path = tmp_path / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"exit_code":0', b'"exit_code":1', 1))

    report = verify_directory(tmp_path, allowed_keys=[key.public_key()])

    assert not report.ok
    assert report.signature is SignatureStatus.INVALID and report.signer_fingerprint is None
    assert any("manifest.json.sig: the signature does not match" in e for e in report.errors)


def test_a_missing_signature_fails_when_keys_are_given(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    write_manifest(tmp_path, make_artifacts(tmp_path))  # unsigned

    required = verify_directory(tmp_path, allowed_keys=[key.public_key()])
    hashes_only = verify_directory(tmp_path, allowed_keys=None)

    assert not required.ok and required.signature is SignatureStatus.INVALID
    assert any("manifest.json.sig: missing" in e for e in required.errors)
    assert hashes_only.ok and hashes_only.signature is SignatureStatus.UNSIGNED


def test_a_signer_that_is_not_allowed_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    write_manifest(tmp_path, make_artifacts(tmp_path), key)
    stranger = Ed25519PrivateKey.generate().public_key()

    refused = verify_directory(tmp_path, allowed_keys=[stranger])
    untrusted = verify_directory(tmp_path, allowed_keys=None)

    assert not refused.ok and refused.signature is SignatureStatus.INVALID
    assert any(fingerprint(key.public_key()) in e for e in refused.errors)
    assert untrusted.ok and untrusted.signature is SignatureStatus.UNTRUSTED
    assert untrusted.signer_fingerprint == fingerprint(key.public_key())


def test_root_separates_the_artifacts_from_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    manifest = make_artifacts(run_dir / "artifacts")
    write_manifest(run_dir, manifest)
    (run_dir / "report.json").write_text("{}")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "build.log").write_text("...")

    report = verify_directory(run_dir, allowed_keys=None, root=run_dir / "artifacts")

    assert report.ok, report.problems()
    assert report.root == str(run_dir / "artifacts")
    assert not verify_directory(run_dir, allowed_keys=None).ok, "without root, files are missing"


def test_a_directory_without_a_manifest(tmp_path: Path) -> None:
    report = verify_directory(tmp_path, allowed_keys=None)
    assert not report.ok and report.manifest is None
    assert "manifest.json: cannot read the manifest" in report.errors[0]
    with pytest.raises(InputError, match="not a directory"):
        verify_directory(tmp_path / "nope", allowed_keys=None)


def test_a_malformed_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"schema": 1}')
    report = verify_directory(tmp_path, allowed_keys=None)
    assert not report.ok and report.manifest is None
    assert "lacks run_id" in report.errors[0]
    assert report.to_dict()["run_id"] is None


def test_write_manifest_is_atomic_and_drops_a_stale_signature(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    manifest = sample()
    path = write_manifest(tmp_path / "run", manifest, key)
    assert path == tmp_path / "run" / "manifest.json"
    assert path.read_bytes() == canonical_bytes(manifest)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "manifest.json.sig"]

    write_manifest(tmp_path / "run", manifest)

    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_stock_openssh_verifies_a_written_manifest(tmp_path: Path) -> None:
    """The command in the docs: ssh-keygen -Y verify ... < manifest.json."""
    line = generate_keypair(tmp_path / "keys" / "signing", comment="ci@example.com")
    run_dir = tmp_path / "run"
    write_manifest(run_dir, make_artifacts(run_dir), load_private_key(tmp_path / "keys/signing"))
    (tmp_path / "allowed_signers").write_text(line + "\n")

    with (run_dir / "manifest.json").open("rb") as stdin:
        result = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"),
             "-I", "ci@example.com", "-n", "meshrun", "-s", str(run_dir / "manifest.json.sig")],
            stdin=stdin, capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    assert result.returncode == 0, f"ssh-keygen refused the manifest: {result.stderr}"


def test_verify_report_to_dict_is_one_json_document(tmp_path: Path) -> None:
    report = VerifyReport(
        directory="d", root="d", signature=SignatureStatus.UNSIGNED,
        signer_fingerprint=None, manifest=None,
    )  # fmt: skip
    assert report.to_dict() == {
        "schema": 1,
        "ok": False,
        "directory": "d",
        "root": "d",
        "run_id": None,
        "signature": "unsigned",
        "signer_fingerprint": None,
        "files_checked": 0,
        "missing": [],
        "changed": [],
        "unlisted": [],
        "errors": [],
        "notes": [],
    }


def test_a_root_that_does_not_exist_makes_every_file_missing(tmp_path: Path) -> None:
    write_manifest(tmp_path / "run", make_artifacts(tmp_path / "elsewhere"))

    report = verify_directory(tmp_path / "run", allowed_keys=None, root=tmp_path / "absent")

    assert report.errors == () and report.unlisted == ()
    assert len(report.missing) == 7 and "test/report.xml" in report.missing

"""collect + pull against real sshd hosts on loopback."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from meshrun.config.inventory import Host
from meshrun.errors import IntegrityError
from meshrun.integrity.collect import collect, collect_outputs
from meshrun.integrity.manifest import FileEntry
from meshrun.integrity.pull import PULL_TEMP_PREFIX, pull
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector

MakeFleet = Callable[..., Fleet]


def write(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def leftovers(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.startswith(PULL_TEMP_PREFIX)]


def test_collect_and_pull_round_trip(one: tuple[Fleet, Host, SSHConnector], tmp_path: Path) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    contents = {
        "dist/app.tar": os.urandom(300_000),
        "dist/sub/deep/x.bin": b"deep",
        "report.txt": b"report\n",
        "with space/ünï cødé.txt": "ünï".encode(),
        "odd/new\nline.txt": b"newline",
        "odd/'quote\" and $dollar`tick`.txt": b"quotes",
    }
    for rel, data in contents.items():
        write(work, rel, data)
    (work / "dist" / "sub" / "deep" / "x.bin").chmod(0o755)
    write(work, "ignored.log", b"not collected")

    conn = connector.connect(host)
    files = collect(conn, host.workdir, ["dist/**", "*.txt", "with space/**", "odd/**", "?none"])
    assert sorted(f.path for f in files) == sorted(contents)
    for f in files:
        assert f.sha256 == hashlib.sha256(contents[f.path]).hexdigest()

    dest = tmp_path / "pulled"
    pull(connector, host, files, dest)
    for rel, data in contents.items():
        assert (dest / rel).read_bytes() == data
    assert ((dest / "dist/sub/deep/x.bin").stat().st_mode & 0o777) == 0o755
    assert not (dest / "ignored.log").exists()
    assert leftovers(dest) == []


def test_collect_refusals_raise_naming_the_patterns(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    (work / "out").mkdir()
    (work / "out" / "leak").symlink_to(outside)
    os.mkfifo(work / "pipe")
    conn = connector.connect(host)
    with pytest.raises(IntegrityError) as info:
        collect(conn, host.workdir, ["out/**", "pipe", "../x", "/etc/passwd", "nothing/**"])
    text = str(info.value)
    for pattern in ("'out/**'", "'pipe'", "'../x'", "'/etc/passwd'", "'nothing/**'"):
        assert pattern in text
    assert info.value.exit_code == 4


def test_file_changed_after_hashing_is_an_integrity_failure(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    write(work, "good.txt", b"good")
    write(work, "bad.txt", b"original")
    files = collect(connector.connect(host), host.workdir, ["*.txt"])
    (work / "bad.txt").write_bytes(b"tampered")
    dest = tmp_path / "pulled"
    with pytest.raises(IntegrityError, match=r"bad\.txt") as info:
        pull(connector, host, files, dest)
    assert info.value.exit_code == 4
    # All or nothing: neither the bad file nor its good sibling is at a final path.
    assert not (dest / "bad.txt").exists()
    assert not (dest / "good.txt").exists()
    assert leftovers(dest) == []


def test_forged_entry_outside_dest_is_refused(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    _, host, connector = one
    with pytest.raises(IntegrityError):
        FileEntry("../escape", 1, "0" * 64, 0o644)
    dest = tmp_path / "pulled"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    fleet_work = Path(host.workdir)
    write(fleet_work, "sub/f.txt", b"f")
    files = collect(connector.connect(host), host.workdir, ["sub/f.txt"])
    with pytest.raises(IntegrityError, match="sub"):
        pull(connector, host, files, dest)
    assert list(elsewhere.iterdir()) == []
    assert leftovers(dest) == []


def test_large_file_streams(one: tuple[Fleet, Host, SSHConnector], tmp_path: Path) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    size = 1024 * 1024 * 1024  # 1 GiB, sparse on the host
    with open(work / "big.bin", "wb") as f:
        f.truncate(size)
        f.seek(size // 2)
        f.write(b"middle")
        f.seek(size - 4)
        f.write(b"tail")
    dest = tmp_path / "pulled"
    tracemalloc.start()
    try:
        root, files = collect_outputs(connector.connect(host), host.workdir, ["big.bin"])
        pull(connector, host, files, dest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Path(root).resolve() == work.resolve()
    assert files[0].size == size
    assert (dest / "big.bin").stat().st_size == size
    assert peak < 10 * 1024 * 1024, f"peak Python allocation {peak} bytes"


def test_sftp_fallback(one: tuple[Fleet, Host, SSHConnector], tmp_path: Path) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    contents = {"a/b c.bin": os.urandom(3 * (1 << 20) + 5), "odd/new\nline": b"nl"}
    for rel, data in contents.items():
        write(work, rel, data, mode=0o640)
    files = collect(connector.connect(host), host.workdir, ["a/**", "odd/**"])
    dest = tmp_path / "pulled"
    pull(connector, host, files, dest, use_rsync=False)
    for rel, data in contents.items():
        assert (dest / rel).read_bytes() == data
        assert ((dest / rel).stat().st_mode & 0o777) == 0o640
    # A change after hashing is caught over SFTP too.
    (work / "odd/new\nline").write_bytes(b"changed")
    dest2 = tmp_path / "pulled2"
    with pytest.raises(IntegrityError, match="line"):
        pull(connector, host, files, dest2, use_rsync=False)
    assert not (dest2 / "a/b c.bin").exists()
    assert leftovers(dest2) == []

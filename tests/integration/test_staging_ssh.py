"""Needs' outputs pushed to a dependent's host (meshrun.dispatch.staging) over real sshd."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshrun.config.inventory import Host
from meshrun.dispatch.staging import Input, push
from meshrun.errors import IntegrityError
from meshrun.integrity.manifest import FileEntry, hash_file
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector

MakeFleet = Callable[..., Fleet]

NAMES = {
    "dist/app.bin": os.urandom((1 << 20) + 3),
    "dist/sub dir/nötes [v1]*.txt": "ü\n".encode(),
    "odd/new\nline": b"nl",
    "?lead": b"q",
}


def verified_copy(root: Path, contents: dict[str, bytes], mode: int = 0o640) -> list[FileEntry]:
    """Files as the run directory keeps them (artifacts/<task>/), and their entries."""
    entries = []
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        entries.append(hash_file(path, root=root))
    return entries


@pytest.mark.parametrize("use_rsync", [True, False], ids=["rsync", "sftp"])
def test_inputs_land_in_the_workdir_at_their_paths_with_their_modes(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path, use_rsync: bool
) -> None:
    fleet, host, connector = one
    work = fleet.hosts[0].workdir
    (work / "dist").mkdir()
    (work / "dist" / "app.bin").write_bytes(b"stale from an earlier run")
    files = verified_copy(tmp_path / "build", NAMES)
    sent = push(
        connector, host, [Input("build", tmp_path / "build", tuple(files))], use_rsync=use_rsync
    )
    assert sent == sum(len(d) for d in NAMES.values())
    for rel, data in NAMES.items():
        assert (work / rel).read_bytes() == data, rel
        assert ((work / rel).stat().st_mode & 0o777) == 0o640, rel
    leftovers = [p.name for p in work.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "no temporary file may stay behind"


def test_a_file_that_does_not_arrive_intact_is_an_integrity_error(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    _, host, connector = one
    files = verified_copy(tmp_path / "build", {"out.txt": b"right"})
    (tmp_path / "build" / "out.txt").write_bytes(b"wrong")  # the copy no longer matches
    with pytest.raises(IntegrityError, match=r"out\.txt.*did not arrive intact"):
        push(connector, host, [Input("build", tmp_path / "build", tuple(files))])


def test_two_needs_with_the_same_path_and_different_content_clash_before_sending(
    one: tuple[Fleet, Host, SSHConnector], tmp_path: Path
) -> None:
    fleet, host, connector = one
    a = verified_copy(tmp_path / "a", {"shared.txt": b"from a", "only-a.txt": b"a"})
    b = verified_copy(tmp_path / "b", {"shared.txt": b"from b"})
    same = verified_copy(tmp_path / "c", {"only-a.txt": b"a"})
    with pytest.raises(IntegrityError, match=r"'a' and 'b' both produced 'shared\.txt'"):
        push(
            connector,
            host,
            [Input("a", tmp_path / "a", tuple(a)), Input("b", tmp_path / "b", tuple(b))],
        )
    assert not (fleet.hosts[0].workdir / "only-a.txt").exists()
    # The same path with the same content from two needs is sent once.
    sent = push(
        connector,
        host,
        [Input("a", tmp_path / "a", tuple(a)), Input("c", tmp_path / "c", tuple(same))],
    )
    assert sent == len(b"from a") + len(b"a")

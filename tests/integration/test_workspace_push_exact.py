"""The workspace push without the agent (``workspace.push``) leaves an exact copy on a
real sshd host, with rsync over the pooled connection and with the SFTP fallback (a
host without rsync: ``SetEnv PATH=`` in its sshd_config): a file deleted here is
deleted there, a change that keeps size and mtime arrives, an excluded file on the host
stays, a hidden path is not sent and is deleted there."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import bin_dir_without

from meshrun.config.inventory import Host, load_inventory
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector
from meshrun.workspace import push as workspace

MakeFleet = Callable[..., Fleet]

T0 = 1_600_000_000
EXCLUDES = [".git", ".meshrun", "*.log", "node_modules/"]


@pytest.fixture(params=["rsync", "sftp"])
def target(
    request: pytest.FixtureRequest, make_fleet: MakeFleet, tmp_path: Path
) -> Iterator[tuple[str, Host, SSHConnector, Path]]:
    """(how, host, connector, the host's workdir): a host with or without rsync."""
    extra = []
    if request.param == "sftp":
        extra = [f"SetEnv PATH={bin_dir_without(tmp_path / 'bin', without='rsync')}"]
    fleet = make_fleet(1, extra_config=extra)
    (host,) = load_inventory(fleet.hosts_toml)
    connector = SSHConnector(ssh_config_path="/nonexistent")
    try:
        yield request.param, host, connector, fleet.hosts[0].workdir
    finally:
        connector.close()


def write(root: Path, rel: str, data: str, mtime: int | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_the_host_copy_equals_the_workspace_after_the_push(
    target: tuple[str, Host, SSHConnector, Path], tmp_path: Path
) -> None:
    how, host, connector, work = target
    root = tmp_path / "ws"
    for rel in ("keep.txt", "gone.txt", "same.txt", "src/a.py", "src/old/x.py", "dist/b.bin"):
        write(root, rel, rel, mtime=T0)

    def push(hide: tuple[str, ...] = ()) -> None:
        why = workspace.push(
            connector, host, root=str(root), paths=["."], excludes=EXCLUDES, hide=hide
        )
        assert why == (workspace.NO_RSYNC_THERE if how == "sftp" else None)

    push()
    assert (work / "src/old/x.py").read_text() == "src/old/x.py"
    assert (work / "same.txt").read_text() == "same.txt"

    os.unlink(root / "gone.txt")
    (root / "src/old/x.py").unlink()
    (root / "src/old").rmdir()
    write(root, "same.txt", "SAME.TXT", mtime=T0)  # same size, same mtime: other bytes
    write(root, "dist/app.bin", "installed output", mtime=T0)  # hidden
    write(work, "dist/app.bin", "stale output of an earlier run")
    write(work, "host.log", "made on the host")  # excluded: stays
    write(work, "node_modules/pkg/index.js", "built on the host")
    write(work, "src/extra.py", "only on the host")

    push(hide=("dist/app.bin",))
    assert not (work / "gone.txt").exists(), "a file deleted here is deleted there"
    assert not (work / "src/old").exists(), "so is a directory"
    assert not (work / "src/extra.py").exists(), "and what only the host had"
    assert (work / "same.txt").read_text() == "SAME.TXT", "a same-size same-mtime change"
    assert int((work / "same.txt").stat().st_mtime) == T0
    assert not (work / "dist/app.bin").exists(), "a hidden path is deleted there"
    assert (work / "dist/b.bin").read_text() == "dist/b.bin"
    assert (work / "host.log").read_text() == "made on the host", "excluded: kept"
    assert (work / "node_modules/pkg/index.js").exists()
    assert (work / "keep.txt").read_text() == "keep.txt"
    assert (work / ".meshrun").is_dir() or how == "rsync"

    push(hide=("dist/app.bin",))  # again: nothing changes, nothing comes back
    assert not (work / "dist/app.bin").exists()
    leftovers = [p.name for p in work.rglob(".meshrun-push-*")]
    assert leftovers == [], "no temporary file may stay behind"


def test_an_excluded_hidden_path_is_deleted_too(
    target: tuple[str, Host, SSHConnector, Path], tmp_path: Path
) -> None:
    _, host, connector, work = target
    root = tmp_path / "ws"
    write(root, "src/a.py", "a")
    write(root, "src/test.log", "installed log")  # excluded by *.log and hidden
    write(work, "src/test.log", "stale log")
    write(work, "src/other.log", "the host's own log")
    workspace.push(
        connector, host, root=str(root), paths=["src"], excludes=EXCLUDES, hide=["src/test.log"]
    )
    assert (work / "src/a.py").read_text() == "a"
    assert not (work / "src/test.log").exists()
    assert (work / "src/other.log").read_text() == "the host's own log"

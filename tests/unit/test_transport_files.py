"""File transfer through a Connection without SSH: the local connection's files got and
put, its file session under the workspace's SFTP mirror, ``~`` made the host's home once,
and the SFTP session's error contract (paramiko's errors become CommandError there)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import paramiko
import pytest

from meshrun.config.inventory import Host
from meshrun.errors import CommandError, Interrupted
from meshrun.transport.base import expand_home
from meshrun.transport.files import LocalFiles, put_file
from meshrun.transport.local import LocalConnection
from meshrun.transport.sftp import SFTPFiles
from meshrun.workspace.excludes import Excludes
from meshrun.workspace.push import sftp_mirror


def write(root: Path, rel: str, data: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(mode)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_text(), p.stat().st_mode & 0o777)
        for p in root.rglob("*")
        if p.is_file() and ".meshrun" not in p.relative_to(root).parts
    }


def local(tmp_path: Path) -> LocalConnection:
    return LocalConnection(Host(name="here", local=True, workdir=str(tmp_path / "work")))


def test_files_put_then_got_on_the_local_connection(tmp_path: Path) -> None:
    source, work, back = tmp_path / "source", tmp_path / "work", tmp_path / "back"
    write(source, "a.txt", "a")
    write(source, "deep/er/b.sh", "b", mode=0o755)
    conn = local(tmp_path)
    conn.put_files(source, [("a.txt", 0o600), ("deep/er/b.sh", 0o755)], str(work))
    assert tree(work) == {"a.txt": ("a", 0o600), "deep/er/b.sh": ("b", 0o755)}
    assert [p.name for p in work.iterdir() if p.name.startswith(".meshrun-push-")] == []
    conn.get_files(str(work), ["deep/er/b.sh", "a.txt"], back)
    assert {k: v[0] for k, v in tree(back).items()} == {"a.txt": "a", "deep/er/b.sh": "b"}


def test_a_cancelled_local_get_stops_before_the_next_file(tmp_path: Path) -> None:
    write(tmp_path / "work", "a.txt", "a")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Interrupted, match="here: pull stopped"):
        local(tmp_path).get_files(
            str(tmp_path / "work"), ["a.txt"], tmp_path / "back", cancel=cancel
        )
    assert not (tmp_path / "back" / "a.txt").exists()


def test_the_sftp_mirror_runs_on_the_local_file_session(tmp_path: Path) -> None:
    root, work = tmp_path / "ws", tmp_path / "work"
    write(root, "keep.txt", "new")
    write(root, "src/x.py", "x", mode=0o755)
    write(work, "gone.txt", "old")
    write(work, "keep.txt", "old")
    with local(tmp_path).open_files() as files:
        sftp_mirror(files, root, str(work), ["."], Excludes.compile([]))
    assert tree(work) == tree(root)


class _Conn:
    def __init__(self, home: str | None) -> None:
        self.asked = 0
        self._home = home

    def home(self) -> str | None:
        self.asked += 1
        return self._home


@pytest.mark.parametrize(
    ("path", "home", "expected", "asked"),
    [
        ("~", "/home/ci", "/home/ci", 1),
        ("~/w s", "/home/ci/", "/home/ci/w s", 1),
        ("~/w", None, "~/w", 1),  # the host did not say: as it is
        ("/srv/w", "/home/ci", "/srv/w", 0),  # absolute: nothing asked
        ("~other/w", "/home/ci", "~other/w", 0),
    ],
)
def test_expand_home(path: str, home: str | None, expected: str, asked: int) -> None:
    conn = _Conn(home)
    assert expand_home(conn, path) == expected  # type: ignore[arg-type]
    assert conn.asked == asked


class _Client:
    """What SFTPFiles calls on paramiko's SFTPClient, failing as told."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.closed = 0

    def stat(self, path: str) -> Any:
        if self.error is not None:
            raise self.error
        return os.stat(path)

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (paramiko.SSHException("Server connection dropped: "), "Server connection dropped: "),
        (EOFError(), "EOFError"),
        (
            paramiko.ChannelException(1, "Administratively prohibited"),
            "Administratively prohibited",
        ),
    ],
)
def test_a_broken_sftp_session_is_a_command_error(error: BaseException, message: str) -> None:
    released: list[bool] = []
    files = SFTPFiles(_Client(error), lambda: released.append(True))  # type: ignore[arg-type]
    with pytest.raises(CommandError) as info:
        files.stat("/x")
    assert message in str(info.value)
    files.close()
    files.close()
    assert released == [True], "the session is given back once"


def test_what_the_server_refused_stays_an_oserror(tmp_path: Path) -> None:
    files = SFTPFiles(_Client(FileNotFoundError(2, "No such file")), lambda: None)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        files.stat(str(tmp_path / "missing"))


class _NoChmod(LocalFiles):
    def chmod(self, path: str, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")


def test_a_failed_put_leaves_no_temporary_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    write(tmp_path, "a.txt", "a")
    with pytest.raises(PermissionError):
        put_file(_NoChmod(), tmp_path / "a.txt", str(work / "a.txt"), 0o644)
    assert list(work.iterdir()) == []

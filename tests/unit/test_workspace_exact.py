"""The workspace push is exact: rsync's options (``mirror_options``: ``--delete``,
``--checksum``, hide rules before the excludes) and the SFTP fallback
(``workspace.sftp_mirror``) leave the same tree, checked against the real rsync
locally (the SFTP side runs on a stand-in for paramiko's SFTPClient that works on the
local disk). Deleted files are deleted, a same-size same-mtime change arrives, an
excluded file on the host stays, a hidden path is not sent and is deleted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from meshrun.config.tasks import BUILTIN_EXCLUDES
from meshrun.errors import CommandError, IntegrityError
from meshrun.integrity.manifest import file_digest
from meshrun.transport import rsync
from meshrun.workspace.excludes import Excludes
from meshrun.workspace.push import RECORD, plan, push, pushed_whole, sftp_mirror

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")

# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("dist/app.bin", "/dist/app.bin"),
        ("a b/c.txt", "/a b/c.txt"),
        ("back\\slash", "/back\\slash"),  # no wildcard: literal, backslash included
        ("we*ird [1].txt", "/we\\*ird \\[1].txt"),
        ("q?/x\\*", "/q\\?/x\\\\\\*"),
    ],
)
def test_a_hide_pattern_matches_its_path_and_nothing_else(path: str, pattern: str) -> None:
    assert rsync.hide_pattern(path) == pattern
    rule = Excludes.compile([pattern])
    assert rule.excluded(path, is_dir=False)
    for other in ("dist/app.bin.old", "x/" + path, path.replace("*", "_").replace("?", "_")):
        if other != path:
            assert not rule.excluded(other, is_dir=False), other


def test_mirror_options_put_the_hide_rules_before_every_exclude() -> None:
    argv = rsync.mirror_options(["*.log", "!", "/build", "+ keep.log"], ["out.log"])
    assert argv == [
        "--delete",
        "--checksum",
        "--filter=-s /out.log",
        "--filter=+r /out.log",
        "--filter=P /.meshrun",
        # "!" cleared what came before it: given, it would clear the hide rules too
        "--exclude",
        "/build",
        "--exclude",
        "+ keep.log",
    ]


def test_push_argv_is_exact() -> None:
    shell = rsync.RemoteShell(argv=("helper",), host="h")
    argv = rsync.push_argv(
        rsh=shell, root="/ws/", paths=[".", "src"], excludes=[".git"], workdir="~/w", hide=["x"]
    )
    assert argv[:4] == ["rsync", "-a", "--relative", "--mkpath"]
    assert "--delete" in argv and "--checksum" in argv and "--filter=-s /x" in argv
    assert argv[-3:] == ["/ws/./", "/ws/./src", "h:w/"]


@pytest.mark.parametrize(
    ("directory", "paths", "whole"),
    [
        ("", ["."], True),
        ("src", ["."], True),
        ("", ["src"], False),  # the root is only implied
        ("src", ["src/sub"], False),
        ("src/sub", ["src/sub"], True),
        ("src/sub/deep", ["src/sub"], True),
        ("src/subway", ["src/sub"], False),
    ],
)
def test_pushed_whole(directory: str, paths: list[str], whole: bool) -> None:
    assert pushed_whole(directory, paths) is whole


def test_hidden_paths_are_not_planned(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    for rel in ("a.txt", "dist/app.bin", "dist/other.bin"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    none = Excludes.compile([])
    planned = {i.path for i in plan(root, ["."], none, hide=["dist/app.bin"])}
    assert planned == {"", "a.txt", "dist", "dist/other.bin"}
    assert [i.path for i in plan(root, ["dist/app.bin"], none, hide=["dist/app.bin"])] == []


def test_push_refuses_a_hide_path_that_leaves_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="unsafe path"):
        push(None, None, root=str(tmp_path), paths=["."], excludes=[], hide=["../x"])  # type: ignore[arg-type]


# -- SFTP stand-in -------------------------------------------------------------------------


@dataclass
class Attrs:
    filename: str
    st_mode: int
    st_size: int
    st_mtime: int  # whole seconds, as SFTP carries it


def _attrs(path: str, name: str = "", *, follow: bool = False) -> Attrs:
    st = os.stat(path) if follow else os.lstat(path)
    return Attrs(name, st.st_mode, st.st_size, int(st.st_mtime))


class LocalSFTP:
    """The SFTPClient calls the push makes, on the local disk; counts files written."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.fail_after: int | None = None  # puts, then OSError

    def stat(self, path: str) -> Attrs:
        return _attrs(path, follow=True)

    def listdir_attr(self, path: str) -> list[Attrs]:
        return [_attrs(os.path.join(path, n), n) for n in os.listdir(path)]

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def remove(self, path: str) -> None:
        os.unlink(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def utime(self, path: str, times: tuple[int, int]) -> None:
        os.utime(path, times)

    def symlink(self, source: str, dest: str) -> None:
        os.symlink(source, dest)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def posix_rename(self, old: str, new: str) -> None:
        os.rename(old, new)

    def open(self, path: str, mode: str) -> IO[Any]:
        return open(path, mode)

    def putfo(self, handle: Any, path: str, file_size: int, confirm: bool) -> None:
        if self.fail_after is not None and len(self.written) >= self.fail_after:
            raise OSError("link lost")
        with open(path, "wb") as out:
            while chunk := handle.read(32768):
                out.write(chunk)
        self.written.append(path)


# -- rsync and SFTP leave the same tree -------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` but its .meshrun: kind, mode, content or target, mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".meshrun"]
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode & 0o7777, int(st.st_mtime))
            else:
                found[rel] = ("file", st.st_mode & 0o7777, path.read_bytes(), int(st.st_mtime))
    return found


def write(root: Path, rel: str, data: str = "", mtime: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data or rel)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def by_rsync(
    root: Path, paths: Sequence[str], excludes: Sequence[str], hide: Sequence[str], dest: Path
) -> None:
    argv = ["rsync", "-a", "--relative", "--mkpath"]
    argv += rsync.mirror_options(excludes, hide) + rsync.sources(str(root), paths)
    subprocess.run([*argv, f"{dest}/"], check=True, capture_output=True)


def by_sftp(
    root: Path,
    paths: Sequence[str],
    excludes: Sequence[str],
    hide: Sequence[str],
    dest: Path,
    sftp: LocalSFTP | None = None,
) -> LocalSFTP:
    sftp = sftp or LocalSFTP()
    sftp_mirror(sftp, root, str(dest), paths, Excludes.compile(excludes), hide)
    return sftp


T0 = 1_600_000_000


def _workspace(root: Path) -> None:
    for rel in (
        "keep.txt",
        "gone.txt",
        "same-size.txt",
        "src/a.py",
        "src/sub/b.py",
        "src/old/x.py",
        "docs/a.txt",
        "docs/b.txt",
        "was-file",
        "was-dir/inner.txt",
        "dist/other.bin",
    ):
        write(root, rel, mtime=T0)
    (root / "link").symlink_to("keep.txt")


def _change_here(root: Path) -> None:
    """Edits in the workspace between two pushes."""
    os.unlink(root / "gone.txt")
    shutil.rmtree(root / "src" / "old")
    os.unlink(root / "docs" / "b.txt")
    write(root, "same-size.txt", "SAME-SIZE.TXT", mtime=T0)  # same size and mtime
    os.unlink(root / "was-file")
    write(root, "was-file/now-a-dir.txt", mtime=T0)
    shutil.rmtree(root / "was-dir")
    write(root, "was-dir", mtime=T0)
    os.unlink(root / "link")
    (root / "link").symlink_to("src/a.py")
    write(root, "dist/app.bin", "installed output", mtime=T0)  # hidden from now on
    write(root, "out.log", "installed log", mtime=T0)  # hidden and excluded


def _change_there(work: Path) -> None:
    """On the host: extras, excluded extras, stale hidden outputs.

    Everything it makes gets one fixed mtime: what a push leaves alone (excluded
    entries) is compared between two hosts changed moments apart, maybe a second apart.
    """
    made = [
        write(work, "extra.txt"),
        write(work, "src/extra/deep/x.txt"),
        write(work, "src/sub/extra.py"),
        write(work, "docs/extra.txt"),
        write(work, "host.log"),  # excluded: stays
        write(work, "node_modules/pkg/index.js"),  # excluded directory: stays
        write(work, "dist/app.bin", "stale output from an earlier run"),
        write(work, "out.log", "stale log"),
    ]
    made += [work / "src/extra/deep", work / "src/extra", work / "node_modules/pkg"]
    for path in [*made, work / "node_modules"]:
        os.utime(path, (T0 + 7, T0 + 7))
    (work / "dangling").symlink_to("nowhere")


EXCLUDES = [*BUILTIN_EXCLUDES, "*.log", "node_modules/"]
HIDE = ["dist/app.bin", "out.log"]


@needs_rsync
@pytest.mark.parametrize(
    "paths", [["."], ["src", "docs/a.txt", "dist"]], ids=["whole", "nested-paths"]
)
def test_rsync_and_sftp_leave_the_same_exact_copy(tmp_path: Path, paths: list[str]) -> None:
    root = tmp_path / "ws"
    _workspace(root)
    hosts = {"rsync": tmp_path / "by-rsync", "sftp": tmp_path / "by-sftp"}
    for how, dest in hosts.items():
        dest.mkdir()
        (by_rsync if how == "rsync" else by_sftp)(root, paths, EXCLUDES, HIDE, dest)
    assert snapshot(hosts["rsync"]) == snapshot(hosts["sftp"])
    for dest in hosts.values():
        os.chmod(dest / "src", 0o700)  # the host's copy drifted: fixed by the next push
    _change_here(root)
    for dest in hosts.values():
        _change_there(dest)

    for how, dest in hosts.items():
        (by_rsync if how == "rsync" else by_sftp)(root, paths, EXCLUDES, HIDE, dest)
    got = snapshot(hosts["sftp"])
    assert got == snapshot(hosts["rsync"])

    assert "src/old" not in got and "src/old/x.py" not in got, "a deleted directory is deleted"
    assert "src/extra" not in got and "src/sub/extra.py" not in got, "extras are deleted"
    assert "dist/app.bin" not in got, "a hidden path is not sent, and deleted there"
    assert got["host.log"][0] == "file" and "node_modules/pkg/index.js" in got, "excluded stay"
    assert got["src"][1] == (root / "src").stat().st_mode & 0o7777
    if paths == ["."]:
        assert "out.log" not in got, "a hidden path goes even where an exclude matches it"
        assert "gone.txt" not in got and "extra.txt" not in got and "dangling" not in got
        assert got["same-size.txt"][2] == b"SAME-SIZE.TXT", "a same-size same-mtime change"
        assert got["was-file/now-a-dir.txt"][0] == "file" and got["was-dir"][0] == "file"
        assert got["link"] == ("link", "src/a.py")
        assert got["docs/a.txt"][0] == "file" and "docs/b.txt" not in got
    else:  # the root and docs/ are only implied: nothing in them is deleted
        assert "extra.txt" in got and "docs/extra.txt" in got and "dangling" in got
        assert got["docs/a.txt"][0] == "file"
        assert "dist/other.bin" in got and got["out.log"][2] == b"stale log", "not reached"


# -- the SFTP record --------------------------------------------------------------------------


def _record(work: Path) -> dict[str, list[Any]]:
    files = json.loads((work / RECORD).read_text())["files"]
    assert isinstance(files, dict)
    return files


def test_a_second_sftp_push_sends_only_what_changed(tmp_path: Path) -> None:
    root, work = tmp_path / "ws", tmp_path / "host"
    for rel in ("a.txt", "b.txt", "sub/c.txt"):
        write(root, rel, mtime=T0)
    work.mkdir()
    first = by_sftp(root, ["."], [".meshrun"], [], work)
    assert len(first.written) == 3
    assert _record(work)["sub/c.txt"] == [
        len("sub/c.txt"),
        T0,
        file_digest(str(root / "sub/c.txt"))[1],
    ]

    assert by_sftp(root, ["."], [".meshrun"], [], work).written == [], "nothing changed"

    write(root, "a.txt", "A.TXT", mtime=T0)  # same size, same mtime, other bytes
    os.utime(root / "b.txt", (T0 + 5, T0 + 5))  # touched: same content
    again = by_sftp(root, ["."], [".meshrun"], [], work)
    assert [Path(p).name.startswith(".meshrun-push-") for p in again.written] == [True]
    assert (work / "a.txt").read_text() == "A.TXT"
    assert int((work / "b.txt").stat().st_mtime) == T0 + 5, "the time fixed, not resent"
    assert _record(work)["b.txt"][1] == T0 + 5

    write(work, "sub/c.txt", "edited on host")  # its size and mtime moved: sent again
    assert len(by_sftp(root, ["."], [".meshrun"], [], work).written) == 1
    assert (work / "sub/c.txt").read_text() == "sub/c.txt"


def test_a_push_that_fails_after_overwriting_a_recorded_file_leaves_no_record(
    tmp_path: Path,
) -> None:
    root, work = tmp_path / "ws", tmp_path / "host"
    for rel in ("a.txt", "b.txt"):
        write(root, rel, mtime=T0)
    work.mkdir()
    by_sftp(root, ["."], [".meshrun"], [], work)
    write(root, "a.txt", "A.TXT", mtime=T0)
    write(root, "b.txt", "B.TXT", mtime=T0)
    failing = LocalSFTP()
    failing.fail_after = 1
    with pytest.raises(CommandError, match="link lost"):
        by_sftp(root, ["."], [".meshrun"], [], work, failing)
    assert (work / "a.txt").read_text() == "A.TXT"
    assert not (work / RECORD).exists(), "a stale record could skip a changed file later"
    # Back to the first content, same size and mtime: the host's a.txt differs.
    write(root, "a.txt", "a.txt", mtime=T0)
    by_sftp(root, ["."], [".meshrun"], [], work)
    assert (work / "a.txt").read_text() == "a.txt"
    assert (work / "b.txt").read_text() == "B.TXT"


def test_an_unreadable_record_means_everything_is_sent(tmp_path: Path) -> None:
    root, work = tmp_path / "ws", tmp_path / "host"
    write(root, "a.txt", mtime=T0)
    write(work, RECORD, "{not json")
    assert len(by_sftp(root, ["."], [".meshrun"], [], work).written) == 1
    assert list(_record(work)) == ["a.txt"]


def test_the_hosts_meshrun_directory_is_never_deleted(tmp_path: Path) -> None:
    root, work = tmp_path / "ws", tmp_path / "host"
    write(root, "a.txt")
    write(work, ".meshrun/scripts/x.sh")
    by_sftp(root, ["."], ["!"], [], work)  # "!" cleared even the built-in excludes
    assert (work / ".meshrun/scripts/x.sh").exists()
    shutil.rmtree(work)
    write(work, ".meshrun/scripts/x.sh")
    if shutil.which("rsync"):
        by_rsync(root, ["."], ["!"], [], work)
        assert (work / ".meshrun/scripts/x.sh").exists()

"""Push the workspace to a host before it takes tasks: rsync, or SFTP without rsync.

``dispatch`` mirrors ``[sync] paths`` into every host's workdir. rsync does it
(``Connector.push``, carried over the host's pooled SSH connection); when rsync is
missing on this machine or on the host, the same files go over SFTP on that connection,
with what the rsync push (``rsync -a --relative --mkpath --exclude ...``) does:

- the same files: every path with its parent directories, rsync's ``--exclude``
  patterns (:mod:`meshrun.excludes`, the built-in ``.git``/``.meshrun`` and an anchored
  ``/state-dir`` ones too), excluded directories not entered;
- the same place: ``~`` in the workdir is the host's ``$HOME`` (where tasks run), not
  the login directory SFTP starts in;
- modes and modification times kept, directories' too (set after their contents);
  symlinks copied as symlinks with the same target (never followed); other special
  files (FIFOs, sockets, devices) are not sent;
- each file written beside its target under a temporary name, then renamed into
  place, so a task never sees a half-written file;
- incremental: a file whose size and modification time (whole seconds) already match
  is not sent again, a symlink with the same target is kept, so a second push costs
  one directory listing per directory;
- nothing on the host is deleted, except a file or symlink standing where the
  workspace has a directory (rsync replaces it too).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from meshrun import artifacts
from meshrun.errors import CommandError
from meshrun.excludes import Excludes
from meshrun.inventory import Host
from meshrun.records import record
from meshrun.transport import rsync
from meshrun.transport.base import Connector

if TYPE_CHECKING:
    from meshrun.transport.ssh import SSHConnector

#: Why a push went over SFTP, for the one line that says so.
NO_RSYNC_HERE = "rsync is not installed on this machine"
NO_RSYNC_THERE = "rsync is not installed on the host"


def push(
    connector: Connector, host: Host, *, root: str, paths: Sequence[str], excludes: Sequence[str]
) -> str | None:
    """Mirror ``paths`` (relative to ``root``) into ``host``'s workdir.

    rsync (``connector.push``) unless rsync is missing here or on the host, then SFTP;
    returns why SFTP was used (:data:`NO_RSYNC_HERE` or :data:`NO_RSYNC_THERE`), else
    None. Raises CommandError/ConnectError when the push failed.
    """
    if not host.local:
        if shutil.which("rsync") is None:
            why = NO_RSYNC_HERE
        elif not artifacts.host_has_rsync(connector.connect(host)):
            why = NO_RSYNC_THERE
        else:
            why = None
        if why is not None:
            from meshrun.transport.ssh import SSHConnector

            assert isinstance(connector, SSHConnector)
            _push_sftp(connector, host, Path(root), paths, excludes)
            return why
    connector.push(host, root=root, paths=paths, excludes=excludes)
    return None


# -- what to send (local, pure but for reading the disk) ---------------------------------


@record
class Item:
    """One thing to send: ``path`` relative to the root ("" is the root itself)."""

    path: str
    kind: Literal["dir", "file", "link"]
    mode: int = 0  # permission bits
    size: int = 0
    mtime: int = 0  # whole seconds
    target: str = ""  # a symlink's


def plan(root: Path, paths: Sequence[str], excludes: Excludes) -> Iterator[Item]:
    """What ``rsync -a --relative root/./PATH ...`` sends, in its order: a directory
    before its contents, names sorted. A path's parent directories (rsync's implied
    directories) are sent without being matched against ``excludes`` unless the path
    itself is excluded; the path and everything below it are matched. Raises
    FileNotFoundError for a path that is missing."""
    sent: dict[str, bool] = {}  # path -> whether its contents were sent too
    for path in paths:
        if path == ".":
            yield from _entry(root, "", os.stat(root), excludes, sent)
            continue
        st = os.lstat(root / path)
        if excludes.excluded(path, is_dir=stat.S_ISDIR(st.st_mode)):
            continue  # and so are its parents
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in sent:
                sent[parent] = False
                yield _item(root, parent, os.stat(root / parent))
        yield from _entry(root, path, st, excludes, sent)


def _entry(
    root: Path, path: str, st: os.stat_result, excludes: Excludes, sent: dict[str, bool]
) -> Iterator[Item]:
    is_dir = stat.S_ISDIR(st.st_mode)
    if path and excludes.excluded(path, is_dir=is_dir):
        return
    if not (is_dir or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return  # a FIFO, socket or device: SFTP cannot make one
    if path not in sent:
        sent[path] = False
        yield _item(root, path, st)
    if is_dir and not sent[path]:
        sent[path] = True
        with os.scandir(root / path) as scan:
            entries = sorted(scan, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            child = f"{path}/{entry.name}" if path else entry.name
            yield from _entry(root, child, entry.stat(follow_symlinks=False), excludes, sent)


def _item(root: Path, path: str, st: os.stat_result) -> Item:
    mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        return Item(path, "link", target=os.readlink(root / path))
    if stat.S_ISDIR(st.st_mode):
        return Item(path, "dir", mode, mtime=mtime)
    return Item(path, "file", mode, st.st_size, mtime)


# -- SFTP ---------------------------------------------------------------------------------


def _push_sftp(
    connector: SSHConnector, host: Host, root: Path, paths: Sequence[str], patterns: Sequence[str]
) -> None:
    try:
        excludes = Excludes.compile(patterns)
    except ValueError as exc:
        raise CommandError(f"{host.name}: workspace sync failed: {exc}") from exc
    remote = artifacts.remote_root(connector, host)
    if remote == "~" or remote.startswith("~/"):  # $HOME unknown: the login directory
        remote = rsync.remote_path(remote)
    try:
        sftp: Any = connector.connect(host).open_sftp()  # counted in the session budget
    except Exception as exc:  # paramiko.SSHException, EOFError, OSError
        raise CommandError(f"{host.name}: cannot open an SFTP session: {exc}") from exc
    mirror = _Mirror(sftp, root, remote)
    try:
        sftp_makedirs(sftp, remote, set())
        for item in plan(root, paths, excludes):
            try:
                mirror.send(item)
            except Exception as exc:  # OSError; paramiko's SSHException, EOFError
                raise CommandError(
                    f"{host.name}: workspace sync failed (SFTP) at {item.path or '.'!r}: {exc}"
                ) from exc
        mirror.finish_dirs()
    except CommandError:
        raise
    except Exception as exc:  # reading the workspace; setting directories' times
        raise CommandError(f"{host.name}: workspace sync failed (SFTP): {exc}") from exc
    finally:
        sftp.close()


class _Mirror:
    """Sends :func:`plan`'s items, skipping what is already there, one directory
    listing per directory; directories' modes and times are set at the end."""

    def __init__(self, sftp: Any, root: Path, remote: str) -> None:
        self.sftp = sftp
        self.root = root
        self.remote = remote
        self.listings: dict[str, dict[str, Any]] = {}  # directory -> name -> attributes
        self.changed: set[str] = set()  # directories whose entries were written
        self.dirs: list[tuple[Item, Any]] = []  # (item, attributes before, None if new)

    def _where(self, path: str) -> str:
        return posixpath.join(self.remote, path) if path else self.remote

    def _found(self, path: str) -> Any:
        """The attributes of what is at ``path`` on the host (not followed), or None."""
        if not path:
            return self.sftp.stat(self.remote)
        parent, name = posixpath.split(path)
        if parent not in self.listings:
            listing = self.sftp.listdir_attr(self._where(parent))
            self.listings[parent] = {a.filename: a for a in listing}
        return self.listings[parent].get(name)

    def send(self, item: Item) -> None:
        found = self._found(item.path)
        kind = None if found is None else stat.S_IFMT(found.st_mode)
        target = self._where(item.path)
        parent = posixpath.dirname(item.path)
        if item.kind == "dir":
            if kind != stat.S_IFDIR:
                if found is not None:
                    self.sftp.remove(target)  # a file where the workspace has a directory
                self.sftp.mkdir(target)
                self.changed.add(parent)
                self.listings[item.path] = {}
                found = None
            self.dirs.append((item, found))
        elif item.kind == "file":
            same = kind == stat.S_IFREG and (found.st_size, found.st_mtime) == (
                item.size,
                item.mtime,
            )
            if not same:
                sftp_put(self.sftp, self.root / item.path, target, item.mode, item.mtime)
                self.changed.add(parent)
            elif stat.S_IMODE(found.st_mode) != item.mode:
                self.sftp.chmod(target, item.mode)
        elif kind != stat.S_IFLNK or self.sftp.readlink(target) != item.target:
            temp = _aside(target)
            self.sftp.symlink(item.target, temp)
            _rename(self.sftp, temp, target)
            self.changed.add(parent)

    def finish_dirs(self) -> None:
        """Directories get their modes and times, deepest first: writing into a
        directory changes its time, setting a child's does not."""
        for item, found in reversed(self.dirs):
            target = self._where(item.path)
            if found is None or stat.S_IMODE(found.st_mode) != item.mode:
                self.sftp.chmod(target, item.mode)
            if found is None or item.path in self.changed or found.st_mtime != item.mtime:
                self.sftp.utime(target, (int(time.time()), item.mtime))


def _aside(target: str) -> str:
    """A temporary name beside ``target``."""
    return posixpath.join(posixpath.dirname(target), f".meshrun-push-{secrets.token_hex(6)}")


def _rename(sftp: Any, temp: str, target: str) -> None:
    """Rename ``temp`` over ``target``; ``temp`` is removed if that fails."""
    try:
        sftp.posix_rename(temp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(temp)
        raise


def sftp_put(sftp: Any, source: Path, target: str, mode: int, mtime: int | None = None) -> None:
    """Write ``source`` beside ``target`` under a temporary name, give it ``mode`` (and
    ``mtime``), then rename it into place: ``target`` is never seen half-written. The
    temporary file is removed when anything fails."""
    temp = _aside(target)
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            sftp.putfo(handle, temp, file_size=size, confirm=True)
        sftp.chmod(temp, mode)
        if mtime is not None:
            sftp.utime(temp, (int(time.time()), mtime))
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(temp)
        raise
    _rename(sftp, temp, target)


def sftp_makedirs(sftp: Any, directory: str, made: set[str]) -> None:
    """``mkdir -p`` over SFTP; ``made`` remembers directories known to exist."""
    if not directory or directory in made or directory in ("/", "."):
        return
    try:
        sftp.stat(directory)
    except OSError:
        sftp_makedirs(sftp, posixpath.dirname(directory), made)
        try:
            sftp.mkdir(directory)
        except OSError:
            sftp.stat(directory)  # made meanwhile by someone else, or a real error
    made.add(directory)


__all__ = ["NO_RSYNC_HERE", "NO_RSYNC_THERE", "Item", "plan", "push", "sftp_makedirs", "sftp_put"]

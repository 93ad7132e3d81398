"""Push the workspace to a host before it takes tasks: rsync, or SFTP without rsync.

``dispatch`` makes every host's workdir an exact copy of ``[sync] paths``. rsync does
it (``Connector.push``, carried over the host's pooled SSH connection, with
:func:`meshrun.transport.rsync.mirror_options`: ``--delete --checksum`` and the
excludes); when rsync is missing on this machine or on the host, the same files go
over SFTP on that connection, with what that rsync push does:

- the same files: every path with its parent directories, rsync's ``--exclude``
  patterns (:mod:`meshrun.workspace.excludes`, the built-in ``.git``/``.meshrun`` and an anchored
  ``/state-dir`` ones too), excluded directories not entered;
- the same place: ``~`` in the workdir is the host's ``$HOME`` (where tasks run), not
  the login directory SFTP starts in;
- modes and modification times kept, directories' too (set after their contents);
  symlinks copied as symlinks with the same target (never followed); other special
  files (FIFOs, sockets, devices) are not sent;
- each file written beside its target under a temporary name, then renamed into
  place, so a task never sees a half-written file;
- deleted, as ``rsync --delete`` deletes: what the host has beyond the workspace in
  every directory whose contents are pushed (a pushed path and everything below it,
  not the parents a nested path implies), a directory with everything in it; what an
  exclude pattern matches stays (``node_modules`` built on the host), and so does the
  host's ``.meshrun`` at the top of the workdir; something of another kind where the
  workspace has a file, directory or symlink is replaced;
- ``hide`` paths (outputs meshrun installed into the workspace) are not sent, and
  are deleted where the push reaches (inside the pushed directories, excluded or not),
  so an output of an earlier run never looks current there;
- content compared, not size and time alone: ``.meshrun/sftp-mirror.json`` in the
  workdir records each file sent (path -> size, mtime, SHA-256 of the bytes sent). A
  file is skipped only when the host's size and mtime still equal the record's and the
  record's SHA-256 equals the local file's; only its mode or mtime is fixed when those
  alone differ. So a second push reads every local file but sends only what changed,
  one directory listing per pushed directory; a file edited on the host (its mtime
  moves) or a same-size same-mtime edit here is sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import stat
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Literal

from meshrun.config.inventory import Host
from meshrun.errors import CommandError, MeshrunError
from meshrun.integrity.manifest import file_digest, safe_relative_path
from meshrun.records import record
from meshrun.transport import rsync
from meshrun.transport.base import Connection, Connector, expand_home
from meshrun.transport.files import (
    FileAttributes,
    RemoteFiles,
    aside,
    make_dirs,
    put_file,
    rename_into_place,
)
from meshrun.workspace.excludes import Excludes

#: Why a push went over SFTP, for the one line that says so.
NO_RSYNC_HERE = "rsync is not installed on this machine"
NO_RSYNC_THERE = "rsync is not installed on the host"


def push(
    connector: Connector,
    host: Host,
    *,
    root: str,
    paths: Sequence[str],
    excludes: Sequence[str],
    hide: Sequence[str] = (),
) -> str | None:
    """Make ``host``'s workdir an exact copy of ``paths`` (relative to ``root``), less
    ``hide`` (literal relative paths: not sent, deleted where the push reaches).

    rsync (``connector.push``) unless rsync is missing here or on the host, then SFTP;
    returns why SFTP was used (:data:`NO_RSYNC_HERE` or :data:`NO_RSYNC_THERE`), else
    None. Raises CommandError/ConnectError when the push failed, IntegrityError for a
    ``hide`` path that is not a plain relative path.
    """
    hide = tuple(dict.fromkeys(safe_relative_path(p) for p in hide))
    if not host.local:
        if shutil.which("rsync") is None:
            why = NO_RSYNC_HERE
        elif not connector.connect(host).has_rsync():
            why = NO_RSYNC_THERE
        else:
            why = None
        if why is not None:
            _push_sftp(connector.connect(host), host, Path(root), paths, excludes, hide)
            return why
    connector.push(host, root=root, paths=paths, excludes=excludes, hide=hide)
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


def plan(
    root: Path, paths: Sequence[str], excludes: Excludes, hide: Collection[str] = ()
) -> Iterator[Item]:
    """What ``rsync -a --relative root/./PATH ...`` sends, in its order: a directory
    before its contents, names sorted. A path's parent directories (rsync's implied
    directories) are sent without being matched against ``excludes`` unless the path
    itself is excluded; the path and everything below it are matched. ``hide`` paths
    (exact relative paths) are left out like excluded ones. Raises FileNotFoundError
    for a path that is missing."""
    sent: dict[str, bool] = {}  # path -> whether its contents were sent too
    hidden = frozenset(hide)
    for path in paths:
        if path == ".":
            yield from _entry(root, "", os.stat(root), excludes, sent, hidden)
            continue
        st = os.lstat(root / path)
        if path in hidden or excludes.excluded(path, is_dir=stat.S_ISDIR(st.st_mode)):
            continue  # and so are its parents
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in sent:
                sent[parent] = False
                yield _item(root, parent, os.stat(root / parent))
        yield from _entry(root, path, st, excludes, sent, hidden)


def _entry(
    root: Path,
    path: str,
    st: os.stat_result,
    excludes: Excludes,
    sent: dict[str, bool],
    hidden: frozenset[str],
) -> Iterator[Item]:
    is_dir = stat.S_ISDIR(st.st_mode)
    if path and (path in hidden or excludes.excluded(path, is_dir=is_dir)):
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
            child_st = entry.stat(follow_symlinks=False)
            yield from _entry(root, child, child_st, excludes, sent, hidden)


def _item(root: Path, path: str, st: os.stat_result) -> Item:
    mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        return Item(path, "link", target=os.readlink(root / path))
    if stat.S_ISDIR(st.st_mode):
        return Item(path, "dir", mode, mtime=mtime)
    return Item(path, "file", mode, st.st_size, mtime)


def pushed_whole(directory: str, paths: Sequence[str]) -> bool:
    """Whether the directory ``directory`` ("" the root) has its contents pushed, so
    what the host has beyond them is deleted: it is one of ``paths`` or below one (the
    parents that a nested path implies are not)."""
    return any(top == "." or directory == top or directory.startswith(top + "/") for top in paths)


# -- SFTP ---------------------------------------------------------------------------------

#: The SFTP push's record in the workdir: path -> [size, mtime, sha256] of what it sent.
RECORD = ".meshrun/sftp-mirror.json"


def _push_sftp(
    conn: Connection,
    host: Host,
    root: Path,
    paths: Sequence[str],
    patterns: Sequence[str],
    hide: Sequence[str] = (),
) -> None:
    """``host`` as the run sees it (its workdir may be this run's own)."""
    try:
        excludes = Excludes.compile(patterns)
    except ValueError as exc:
        raise CommandError(f"{host.name}: workspace sync failed: {exc}") from exc
    remote = expand_home(conn, host.workdir)
    if remote == "~" or remote.startswith("~/"):  # $HOME unknown: the login directory
        remote = rsync.remote_path(remote)
    with conn.open_files() as files:  # counted in the host's session budget
        try:
            sftp_mirror(files, root, remote, paths, excludes, hide)
        except CommandError as exc:
            raise CommandError(f"{host.name}: {exc.message}", fix=exc.fix) from exc.__cause__


def sftp_mirror(
    sftp: RemoteFiles,
    root: Path,
    remote: str,
    paths: Sequence[str],
    excludes: Excludes,
    hide: Collection[str] = (),
) -> None:
    """Make ``remote`` (a directory of the file session) an exact copy of ``paths``
    under ``root`` (see the module docstring). Raises CommandError."""
    mirror = _Mirror(sftp, root, remote, paths, excludes, hide)
    try:
        make_dirs(sftp, posixpath.dirname(mirror.record_path), set())
        mirror.load_record()
        for item in plan(root, paths, excludes, hide):
            try:
                mirror.send(item)
            except _FAILED as exc:
                raise CommandError(
                    f"workspace sync failed (SFTP) at {item.path or '.'!r}: {exc}"
                ) from exc
        mirror.delete_extras()
        mirror.finish_dirs()
        mirror.save_record()
    except CommandError:
        raise
    except _FAILED as exc:  # reading the workspace; deleting; setting directories' times
        raise CommandError(f"workspace sync failed (SFTP): {exc}") from exc


#: What a step of the SFTP push may fail with: the host or the local disk refused a
#: path (OSError), the file session broke (CommandError), a local file could not be
#: hashed (IntegrityError), a name is not valid UTF-8 (ValueError).
_FAILED = (OSError, ValueError, MeshrunError)


class _Mirror:
    """Sends :func:`plan`'s items, skipping what is already there (by the record), one
    directory listing per directory; then deletes the extras in the directories pushed
    whole; directories' modes and times are set at the end."""

    def __init__(
        self,
        sftp: RemoteFiles,
        root: Path,
        remote: str,
        paths: Sequence[str],
        excludes: Excludes,
        hide: Collection[str],
    ) -> None:
        self.sftp = sftp
        self.root = root
        self.remote = remote
        self.paths = paths
        self.excludes = excludes
        self.hide = frozenset(hide)
        self.record_path = posixpath.join(remote, RECORD)
        # directory -> name -> attributes
        self.listings: dict[str, dict[str, FileAttributes]] = {}
        self.changed: set[str] = set()  # directories whose entries were written
        # (item, attributes before, None if new)
        self.dirs: list[tuple[Item, FileAttributes | None]] = []
        self.names: dict[str, set[str]] = {}  # directory -> the names sent into it
        self.whole: list[str] = []  # directories whose contents are pushed
        self.record: dict[str, tuple[int, int, str]] = {}  # what the last push sent
        self.sent: dict[str, tuple[int, int, str]] = {}  # the record this push leaves
        self.record_kept = False  # the record file is on the host (not yet invalid)

    def _where(self, path: str) -> str:
        return posixpath.join(self.remote, path) if path else self.remote

    def _listing(self, directory: str) -> dict[str, FileAttributes]:
        if directory not in self.listings:
            listing = self.sftp.listdir_attr(self._where(directory))
            self.listings[directory] = {a.filename: a for a in listing}
        return self.listings[directory]

    def _found(self, path: str) -> FileAttributes | None:
        """The attributes of what is at ``path`` on the host (not followed), or None."""
        if not path:
            return self.sftp.stat(self.remote)
        parent, name = posixpath.split(path)
        return self._listing(parent).get(name)

    def load_record(self) -> None:
        """Read the record the last SFTP push left; none (or unreadable): every file is
        sent."""
        try:
            with self.sftp.open(self.record_path, "rb") as handle:
                document = json.loads(handle.read())
        except (OSError, ValueError):  # missing; not JSON
            return
        self.record_kept = True
        files = document.get("files") if isinstance(document, dict) else None
        for path, entry in (files if isinstance(files, dict) else {}).items():
            if (
                isinstance(entry, list)
                and len(entry) == 3
                and all(isinstance(v, int) for v in entry[:2])
                and isinstance(entry[2], str)
            ):
                self.record[path] = (entry[0], entry[1], entry[2])

    def _invalidate_record(self) -> None:
        """Remove the record before a recorded file is overwritten: a push that fails
        after that must not leave an entry that no longer describes the host's file."""
        if self.record_kept:
            with contextlib.suppress(FileNotFoundError):
                self.sftp.remove(self.record_path)
            self.record_kept = False

    def save_record(self) -> None:
        """Write the record of what the host now has, beside it then renamed."""
        data = json.dumps({"version": 1, "files": self.sent}, separators=(",", ":"))
        temp = aside(self.record_path)
        try:
            with self.sftp.open(temp, "wb") as handle:
                handle.write(data.encode())
        except BaseException:
            with contextlib.suppress(Exception):
                self.sftp.remove(temp)
            raise
        rename_into_place(self.sftp, temp, self.record_path)

    def send(self, item: Item) -> None:
        found = self._found(item.path)
        kind = None if found is None else stat.S_IFMT(found.st_mode)
        target = self._where(item.path)
        parent = posixpath.dirname(item.path)
        if item.path:
            self.names.setdefault(parent, set()).add(posixpath.basename(item.path))
        if item.kind == "dir":
            if kind != stat.S_IFDIR:
                if found is not None:
                    self._remove(item.path, found)  # not a directory: replaced
                self.sftp.mkdir(target)
                self.changed.add(parent)
                self.listings[item.path] = {}
                found = None
            self.dirs.append((item, found))
            if pushed_whole(item.path, self.paths):
                self.whole.append(item.path)
            return
        if found is not None and kind == stat.S_IFDIR:
            # a directory where the workspace has a file or symlink
            self._remove(item.path, found)
            self.changed.add(parent)
            found = kind = None
        if item.kind == "file":
            self._send_file(item, found, target, parent)
        elif kind != stat.S_IFLNK or self.sftp.readlink(target) != item.target:
            temp = aside(target)
            self.sftp.symlink(item.target, temp)
            rename_into_place(self.sftp, temp, target)
            self.changed.add(parent)

    def _send_file(
        self, item: Item, found: FileAttributes | None, target: str, parent: str
    ) -> None:
        entry = self.record.get(item.path)
        if (
            entry is not None
            and found is not None
            and stat.S_ISREG(found.st_mode)
            and (found.st_size, found.st_mtime) == entry[:2]
        ):
            size, sha256, _ = file_digest(str(self.root / item.path))
            if sha256 == entry[2]:  # the host has this content: only attributes to fix
                if stat.S_IMODE(found.st_mode) != item.mode:
                    self.sftp.chmod(target, item.mode)
                if found.st_mtime != item.mtime:
                    self.sftp.utime(target, (int(time.time()), item.mtime))
                self.sent[item.path] = (size, item.mtime, sha256)
                return
        if entry is not None:
            self._invalidate_record()
        size, sha256 = put_file(self.sftp, self.root / item.path, target, item.mode, item.mtime)
        self.sent[item.path] = (size, item.mtime, sha256)
        self.changed.add(parent)

    def _remove(self, path: str, found: FileAttributes) -> None:
        """Delete what is at ``path`` on the host, a directory with everything in it
        (symlinks are removed, never followed)."""
        target = self._where(path)
        if stat.S_ISDIR(found.st_mode):
            for child in self.sftp.listdir_attr(target):
                self._remove(posixpath.join(path, child.filename), child)
            self.sftp.rmdir(target)
        else:
            self.sftp.remove(target)
        self.listings.pop(path, None)

    def delete_extras(self) -> None:
        """In every directory pushed whole, delete what the workspace does not have,
        but what an exclude matches (a ``hide`` path goes, excluded or not) and the
        host's own ``.meshrun`` at the top."""
        for directory in self.whole:
            keep = self.names.get(directory, set())
            for name, found in sorted(self._listing(directory).items()):
                if name in keep:
                    continue
                path = posixpath.join(directory, name) if directory else name
                if path not in self.hide and (
                    path == rsync.PROTECTED
                    or self.excludes.excluded(path, is_dir=stat.S_ISDIR(found.st_mode))
                ):
                    continue
                try:
                    self._remove(path, found)
                except (OSError, CommandError) as exc:
                    raise CommandError(f"cannot delete {path!r}: {exc}") from exc
                self.changed.add(directory)

    def finish_dirs(self) -> None:
        """Directories get their modes and times, deepest first: writing into a
        directory changes its time, setting a child's does not."""
        for item, found in reversed(self.dirs):
            target = self._where(item.path)
            if found is None or stat.S_IMODE(found.st_mode) != item.mode:
                self.sftp.chmod(target, item.mode)
            if found is None or item.path in self.changed or found.st_mtime != item.mtime:
                self.sftp.utime(target, (int(time.time()), item.mtime))


__all__ = [
    "NO_RSYNC_HERE",
    "NO_RSYNC_THERE",
    "RECORD",
    "Item",
    "plan",
    "push",
    "pushed_whole",
    "sftp_mirror",
]

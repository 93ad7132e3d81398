"""File transfer on a host, SFTP-style: the requests a connection's file session answers.

:class:`RemoteFiles` is the handful of SFTP requests meshrun's transfers make, named as
SFTP (and paramiko's client) names them, behind one error contract so that nothing
above the transport ever sees the SSH library:

- :class:`OSError` (``FileNotFoundError`` and the rest, by errno) for what the host
  refused about one path: missing, permissions, not empty;
- :class:`~meshrun.errors.CommandError` when the session itself failed (the link
  dropped, the server broke off), with the library's own words as its message.

The helpers here are built on those requests alone, so every session gets them alike:
the SFTP session of an SSH connection (:mod:`meshrun.transport.sftp`), the local disk
(:class:`LocalFiles`, the local connection's) and the stand-ins of tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, cast

from meshrun.errors import CommandError
from meshrun.records import record


class FileAttributes(Protocol):
    """What a listing or a stat says of one entry (not followed in a listing)."""

    @property
    def filename(self) -> str:
        """The entry's name in its directory (listings only)."""
        ...

    @property
    def st_mode(self) -> int: ...

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime(self) -> int:
        """Whole seconds: what SFTP carries."""
        ...


class Readable(Protocol):
    """What :meth:`RemoteFiles.putfo` reads from."""

    def read(self, size: int = -1) -> bytes: ...


class RemoteFile(Protocol):
    """An open file on the host (:meth:`RemoteFiles.open`)."""

    def read(self, size: int = -1) -> bytes: ...

    def write(self, data: bytes) -> object: ...

    def close(self) -> None: ...

    def __enter__(self) -> RemoteFile: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class RemoteFiles(Protocol):
    """A file session on one host: paths are the host's (absolute, or relative to the
    directory the session starts in). Errors: see the module docstring. Closing it
    (or leaving its ``with`` block) gives its SSH session back."""

    def stat(self, path: str) -> FileAttributes:
        """What ``path`` is, symlinks followed."""
        ...

    def listdir_attr(self, path: str) -> Sequence[FileAttributes]:
        """Every entry of the directory ``path`` (``.`` and ``..`` left out)."""
        ...

    def mkdir(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def chmod(self, path: str, mode: int) -> None: ...

    def utime(self, path: str, times: tuple[int, int]) -> None:
        """Set (access, modification) times, whole seconds."""
        ...

    def symlink(self, source: str, dest: str) -> None:
        """Make ``dest`` a symlink whose target is ``source``."""
        ...

    def readlink(self, path: str) -> str | None: ...

    def posix_rename(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new``, replacing what ``new`` is (POSIX rename)."""
        ...

    def open(self, path: str, mode: str) -> RemoteFile: ...

    def putfo(self, handle: Readable, path: str, file_size: int, confirm: bool) -> object:
        """Write what ``handle`` reads to ``path``; ``confirm``: check the size after."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> RemoteFiles: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# -- helpers on any session ------------------------------------------------------------


def aside(target: str) -> str:
    """A temporary name beside ``target``."""
    return posixpath.join(posixpath.dirname(target), f".meshrun-push-{os.urandom(6).hex()}")


def rename_into_place(files: RemoteFiles, temp: str, target: str) -> None:
    """Rename ``temp`` over ``target``; ``temp`` is removed if that fails."""
    try:
        files.posix_rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError, CommandError):
            files.remove(temp)
        raise


def put_file(
    files: RemoteFiles, source: Path, target: str, mode: int, mtime: int | None = None
) -> tuple[int, str]:
    """Write ``source`` beside ``target`` under a temporary name, give it ``mode`` (and
    ``mtime``), then rename it into place: ``target`` is never seen half-written. The
    temporary file is removed when anything fails. Returns the size and SHA-256 (hex)
    of the bytes sent."""
    temp = aside(target)
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            reader = _Hashing(handle)
            files.putfo(reader, temp, file_size=size, confirm=True)
        files.chmod(temp, mode)
        if mtime is not None:
            files.utime(temp, (int(time.time()), mtime))
    except BaseException:
        with contextlib.suppress(OSError, CommandError):
            files.remove(temp)
        raise
    rename_into_place(files, temp, target)
    return reader.size, reader.digest.hexdigest()


class _Hashing:
    """A file's ``read`` that hashes and counts what it hands out."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def make_dirs(files: RemoteFiles, directory: str, made: set[str]) -> None:
    """``mkdir -p``; ``made`` remembers directories known to exist."""
    if not directory or directory in made or directory in ("/", "."):
        return
    try:
        files.stat(directory)
    except OSError:
        make_dirs(files, posixpath.dirname(directory), made)
        try:
            files.mkdir(directory)
        except OSError:
            files.stat(directory)  # made meanwhile by someone else, or a real error
    made.add(directory)


def put_files(
    files: RemoteFiles,
    host: str,
    source: Path,
    entries: Sequence[tuple[str, int]],
    root: str,
    *,
    over: str = "",
) -> None:
    """Put each ``(path, mode)`` of ``entries`` from ``source/<path>`` at
    ``root/<path>`` (parents made), each file renamed into place. CommandError naming
    ``host`` and the path (``over``: how, e.g. " over SFTP") when one cannot be sent."""
    made: set[str] = set()
    for path, mode in entries:
        remote = posixpath.join(root, path)
        try:
            make_dirs(files, posixpath.dirname(remote), made)
            put_file(files, source / path, remote, mode)
        except (OSError, CommandError) as exc:
            raise CommandError(f"{host}: cannot push {path!r}{over}: {exc}") from exc


# -- the local disk ----------------------------------------------------------------------


@record
class LocalAttributes:
    """:class:`FileAttributes` of a local path."""

    filename: str
    st_mode: int
    st_size: int
    st_mtime: int

    @classmethod
    def of(cls, path: str, name: str = "", *, follow: bool = False) -> LocalAttributes:
        st = os.stat(path) if follow else os.lstat(path)
        return cls(name, st.st_mode, st.st_size, int(st.st_mtime))


class LocalFiles:
    """:class:`RemoteFiles` on this machine's disk: the local connection's session.
    Relative paths are relative to the home directory, as an SFTP session's are."""

    def __init__(self) -> None:
        self._home = os.path.expanduser("~")

    def _path(self, path: str) -> str:
        return os.path.join(self._home, path)

    def stat(self, path: str) -> LocalAttributes:
        return LocalAttributes.of(self._path(path), follow=True)

    def listdir_attr(self, path: str) -> list[LocalAttributes]:
        where = self._path(path)
        return [LocalAttributes.of(os.path.join(where, n), n) for n in os.listdir(where)]

    def mkdir(self, path: str) -> None:
        os.mkdir(self._path(path))

    def remove(self, path: str) -> None:
        os.unlink(self._path(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._path(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def utime(self, path: str, times: tuple[int, int]) -> None:
        os.utime(self._path(path), times)

    def symlink(self, source: str, dest: str) -> None:
        os.symlink(source, self._path(dest))

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def posix_rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))

    def open(self, path: str, mode: str) -> BinaryIO:
        """Binary, whatever ``mode`` says (an SFTP file is bytes)."""
        return cast(BinaryIO, open(self._path(path), mode if "b" in mode else mode + "b"))

    def putfo(self, handle: Readable, path: str, file_size: int, confirm: bool) -> None:
        with open(self._path(path), "wb") as out:
            while chunk := handle.read(1 << 20):
                out.write(chunk)
            if confirm and out.tell() != file_size:
                raise OSError(f"size mismatch in put: {out.tell()} != {file_size}")

    def close(self) -> None:
        """Nothing is held."""

    def __enter__(self) -> LocalFiles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "FileAttributes",
    "LocalAttributes",
    "LocalFiles",
    "Readable",
    "RemoteFile",
    "RemoteFiles",
    "aside",
    "make_dirs",
    "put_file",
    "put_files",
    "rename_into_place",
]

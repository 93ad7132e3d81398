"""The SFTP session of an SSH connection, as a :class:`~meshrun.transport.files.RemoteFiles`.

paramiko's SFTP client raises OSError (by errno) for what the server refused about a
path: kept as it is. It raises SSHException or EOFError when the session broke, and
UnicodeError for a name SFTP cannot carry (not UTF-8): those become CommandError here,
with paramiko's own words, so that no caller above the transport catches paramiko's
errors (or every error, for want of naming them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import paramiko

from meshrun.errors import CommandError, Interrupted
from meshrun.transport.files import Readable

_T = TypeVar("_T")

#: What paramiko raises when the session itself failed (or cannot carry a name).
_BROKEN = (paramiko.SSHException, EOFError, UnicodeError)

#: Bytes a get requests at once (in 32 KiB reads, pipelined): memory stays small and a
#: cancel takes effect within one batch. paramiko's whole-file prefetch would keep
#: fetching (and closing would wait for) the rest of the file.
SFTP_BATCH_BYTES = 4 << 20


def _call(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, a broken session raised as CommandError."""
    try:
        return fn(*args)
    except _BROKEN as exc:
        raise CommandError(str(exc) or type(exc).__name__) from exc


class SFTPFile:
    """An open file of the session (:meth:`SFTPFiles.open`), errors translated."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        data: bytes = _call(self._handle.read, None if size < 0 else size)
        return data

    def write(self, data: bytes) -> None:
        _call(self._handle.write, data)

    def close(self) -> None:
        _call(self._handle.close)

    def __enter__(self) -> SFTPFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SFTPFiles:
    """paramiko's SFTPClient on one session channel. ``release`` (called once, by
    :meth:`close`) closes the channel and gives the session back to its budget."""

    def __init__(self, client: paramiko.SFTPClient, release: Callable[[], None]) -> None:
        self._client = client
        self._release = release
        self._closed = False
        self._lock = threading.Lock()

    def stat(self, path: str) -> Any:
        return _call(self._client.stat, path)

    def listdir_attr(self, path: str) -> Sequence[Any]:
        found: Sequence[Any] = _call(self._client.listdir_attr, path)
        return found

    def mkdir(self, path: str) -> None:
        _call(self._client.mkdir, path)

    def remove(self, path: str) -> None:
        _call(self._client.remove, path)

    def rmdir(self, path: str) -> None:
        _call(self._client.rmdir, path)

    def chmod(self, path: str, mode: int) -> None:
        _call(self._client.chmod, path, mode)

    def utime(self, path: str, times: tuple[int, int]) -> None:
        _call(self._client.utime, path, times)

    def symlink(self, source: str, dest: str) -> None:
        _call(self._client.symlink, source, dest)

    def readlink(self, path: str) -> str | None:
        target: str | None = _call(self._client.readlink, path)
        return target

    def posix_rename(self, old: str, new: str) -> None:
        _call(self._client.posix_rename, old, new)

    def open(self, path: str, mode: str) -> SFTPFile:
        return SFTPFile(_call(self._client.open, path, mode))

    def putfo(self, handle: Readable, path: str, file_size: int, confirm: bool) -> object:
        return _call(self._client.putfo, handle, path, file_size, None, confirm)

    def get(self, remote: str, handle: BinaryIO, check: Callable[[], None]) -> None:
        """Copy ``remote`` into ``handle`` batch by batch (pipelined reads within a
        batch), calling ``check`` before each: it raises to stop."""
        _call(self._get, remote, handle, check)

    def _get(self, remote: str, handle: BinaryIO, check: Callable[[], None]) -> None:
        with self._client.open(remote, "rb") as source:
            size = source.stat().st_size
            offset = 0
            while offset < size:
                check()
                length = min(SFTP_BATCH_BYTES, size - offset)
                for data in source.readv([(offset, length)]):
                    handle.write(data)
                offset += length
            source.seek(size)
            handle.write(source.read(1))  # a file that grew no longer matches its hash

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            _call(self._client.close)
        finally:
            self._release()

    def __enter__(self) -> SFTPFiles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def get_files(
    files: SFTPFiles,
    host: str,
    root: str,
    paths: Sequence[str],
    into: Path,
    *,
    cancel: threading.Event | None = None,
    what: str = "pull",
) -> None:
    """Fetch ``root/<path>`` for each of ``paths`` into ``into/<path>``, streamed.

    Interrupted (``{host}: {what} stopped``) once ``cancel`` is set, checked before each
    batch; CommandError naming the file when one cannot be fetched."""

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"{host}: {what} stopped")

    for path in paths:
        local = into / path
        local.parent.mkdir(parents=True, exist_ok=True)
        remote = root.rstrip("/") + "/" + path
        with open(local, "wb") as handle:
            try:
                files.get(remote, handle, check)
            except (OSError, CommandError) as exc:
                raise CommandError(f"{host}: cannot fetch {path!r} over SFTP: {exc}") from exc


__all__ = ["SFTP_BATCH_BYTES", "SFTPFile", "SFTPFiles", "get_files"]

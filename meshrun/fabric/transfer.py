"""``Group.put`` / ``Group.get`` on one host, with ``fabric.transfer.Transfer``'s rules.

Paths follow Fabric: a relative remote path is relative to the login directory (where
SFTP starts; ``~`` is not expanded), ``put`` into an existing remote directory adds the
local file's name, ``get``'s local path is formatted with ``{host}``, ``{user}``,
``{port}``, ``{dirname}`` and ``{basename}``, a local path ending in ``/`` is a
directory, missing local directories are made, and ``preserve_mode`` copies the
permission bits. The results are Fabric's own ``fabric.transfer.Result``.

Unlike Fabric, neither side ever sees a half-written file: the remote file is written
beside its target and renamed into place (:func:`meshrun.transport.files.put_file`),
the local one likewise.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import stat
import tempfile
from pathlib import Path
from typing import Any

from meshrun.transport.base import Connection
from meshrun.transport.files import RemoteFiles, aside, put_file, rename_into_place

__all__ = ["get_file", "is_file_like", "put_file_like", "put_path"]

#: Bytes asked for per read of a remote file.
READ_CHUNK = 1 << 20
#: Mode of a new remote file when the local one's is not kept (sftp-server's 0666
#: under the usual umask 022).
NEW_FILE_MODE = 0o644


def is_file_like(value: Any) -> bool:
    """Fabric's test: something with a callable ``write``."""
    return hasattr(value, "write") and callable(value.write)


def login_dir(conn: Connection) -> str:
    """The directory SFTP starts in (sshd's login directory, the passwd home), as
    Fabric's ``sftp.normalize(".")`` finds it: relative paths are joined to it."""
    out = conn.run_raw("pwd -P", timeout_s=30.0)
    path = out.stdout.decode(errors="replace").strip()
    if out.exit_code != 0 or not path.startswith("/"):
        home = conn.home()
        return home or "/"
    return path


def get_file(
    conn: Connection,
    cxn: Any,
    start: str,
    remote: str,
    local: Any = None,
    preserve_mode: bool = True,
) -> Any:
    """Fabric's ``Transfer.get`` on ``conn``; ``start`` is the login directory."""
    from fabric.transfer import Result

    if not remote:
        raise ValueError("Remote path must not be empty!")
    orig_remote = remote
    remote = posixpath.join(start, remote)
    orig_local = local
    file_like = is_file_like(local)
    remote_filename = posixpath.basename(remote)
    if not local:
        local = remote_filename
    if not file_like:
        local = str(local).format(
            host=cxn.host,
            user=cxn.user,
            port=cxn.port,
            dirname=posixpath.dirname(remote),
            basename=remote_filename,
        )
        if local.endswith(os.sep):
            dir_path = local
            local = os.path.join(local, remote_filename)
        else:
            dir_path, _ = os.path.split(local)
        local = os.path.abspath(local)
        Path(dir_path).mkdir(parents=True, exist_ok=True)
    with conn.open_files() as files:
        if file_like:
            _copy_out(files, remote, local)
        else:
            _fetch(files, remote, local, preserve_mode)
    return Result(
        orig_remote=orig_remote,
        remote=remote,
        orig_local=orig_local,
        local=local,
        connection=cxn,
    )


def _copy_out(files: RemoteFiles, remote: str, handle: Any) -> None:
    with files.open(remote, "rb") as source:
        while chunk := source.read(READ_CHUNK):
            handle.write(chunk)


def _fetch(files: RemoteFiles, remote: str, local: str, preserve_mode: bool) -> None:
    """``remote`` into ``local`` through a temporary file beside it, renamed into place."""
    mode = stat.S_IMODE(files.stat(remote).st_mode) if preserve_mode else None
    fd, temp = tempfile.mkstemp(prefix=".meshrun-get-", dir=os.path.dirname(local) or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            _copy_out(files, remote, handle)
        if mode is not None:
            os.chmod(temp, mode)
        else:
            os.chmod(temp, NEW_FILE_MODE & ~_umask())
        os.replace(temp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_remote_dir(files: RemoteFiles, path: str) -> bool:
    try:
        return stat.S_ISDIR(files.stat(path).st_mode)
    except OSError:
        return False


def _target(files: RemoteFiles, start: str, remote: str | None, local_base: str | None) -> str:
    """Fabric's choice of the remote path: the local name in the login directory, or
    in ``remote`` when that is a directory, else ``remote``; made absolute."""
    if not remote:
        if not local_base:
            raise ValueError("Must give non-empty remote path when local is a file-like object!")
        remote = local_base
    elif _is_remote_dir(files, posixpath.join(start, remote)):
        if not local_base:
            raise ValueError(
                "Can't put a file-like-object into a directory unless it has a "
                "non-empty .name attribute!"
            )
        remote = posixpath.join(remote, local_base)
    return posixpath.join(start, remote)


def _mode_kept(files: RemoteFiles, target: str) -> int:
    """Without ``preserve_mode``, an existing file keeps its mode (Fabric truncates it
    in place); a new one gets :data:`NEW_FILE_MODE`."""
    try:
        return stat.S_IMODE(files.stat(target).st_mode)
    except OSError:
        return NEW_FILE_MODE


def put_path(
    conn: Connection,
    cxn: Any,
    start: str,
    local: str,
    remote: str | None = None,
    preserve_mode: bool = True,
) -> Any:
    """Fabric's ``Transfer.put`` of the local file ``local`` on ``conn``."""
    from fabric.transfer import Result

    orig_remote = remote
    with conn.open_files() as files:
        target = _target(files, start, remote, os.path.basename(local))
        source = os.path.abspath(local)
        mode = stat.S_IMODE(os.stat(source).st_mode) if preserve_mode else None
        if mode is None:
            mode = _mode_kept(files, target)
        put_file(files, Path(source), target, mode)
    return Result(
        orig_remote=orig_remote, remote=target, orig_local=local, local=source, connection=cxn
    )


def put_file_like(
    conn: Connection,
    cxn: Any,
    start: str,
    handle: Any,
    data: bytes,
    remote: str | None = None,
) -> Any:
    """Fabric's ``Transfer.put`` of a file-like object (its bytes ``data``, read once
    for the whole group) on ``conn``."""
    from fabric.transfer import Result

    if not remote:
        raise ValueError("Must give non-empty remote path when local is a file-like object!")
    with conn.open_files() as files:
        target = _target(files, start, remote, getattr(handle, "name", None))
        mode = _mode_kept(files, target)
        temp = aside(target)
        try:
            files.putfo(io.BytesIO(data), temp, file_size=len(data), confirm=True)
            files.chmod(temp, mode)
        except BaseException:
            with contextlib.suppress(OSError, Exception):
                files.remove(temp)
            raise
        rename_into_place(files, temp, target)
    return Result(
        orig_remote=remote, remote=target, orig_local=handle, local=handle, connection=cxn
    )

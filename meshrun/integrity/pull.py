"""Bring collected files home from a host, verified, all or nothing.

:func:`pull` has the host's connection fetch the files :mod:`meshrun.integrity.collect`
listed (rsync carried over meshrun's own pooled SSH connection, SFTP on that connection
without rsync, copies for the local machine: :meth:`~meshrun.transport.base.Connection.
get_files`) into a private temporary directory inside ``dest_dir`` (same file system).
Every file's size and sha256 is checked against the host's, and only when *all* of
them match are they installed (:func:`meshrun.integrity.publish.install_received`). A
mismatch, an interrupted or a failed transfer leaves nothing at any final path; the
temporary directory is removed.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from meshrun.config.inventory import Host
from meshrun.errors import IntegrityError, Interrupted
from meshrun.integrity.manifest import FileEntry, file_digest
from meshrun.integrity.publish import checked_entries, install_received
from meshrun.transport.base import Connector, expand_home

#: Prefix of the private directory a pull downloads into, inside ``dest_dir``.
PULL_TEMP_PREFIX = ".meshrun-pull-"


def pull(
    connector: Connector,
    host: Host,
    files: Sequence[FileEntry],
    dest_dir: Path,
    *,
    workdir: str | None = None,
    use_rsync: bool = True,
    cancel: threading.Event | None = None,
    timeout_s: float = 3600.0,
) -> None:
    """Bring ``files`` (paths relative to the host's workdir) to ``dest_dir/<path>``.

    ``workdir`` defaults to ``host.workdir``; ``~`` is resolved on the host. rsync is
    used unless ``use_rsync`` is False or rsync is missing here or on the host, then
    SFTP on the pooled connection; the local machine's files are copied. All-or-nothing:
    every file is verified (size, sha256) before any is renamed into place; a mismatch
    is an IntegrityError naming the file. Modes are set to the host's permission bits
    (without setuid/setgid/sticky).

    Setting ``cancel`` stops the transfer (rsync is terminated, SFTP stops at its next
    chunk, copies at the next file) and raises Interrupted; nothing is installed.
    ``timeout_s`` bounds rsync.
    """
    dest_dir = Path(dest_dir)
    entries = checked_entries(files)
    if not entries:
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    conn = connector.connect(host)
    root = expand_home(conn, host.workdir if workdir is None else workdir)
    with tempfile.TemporaryDirectory(prefix=PULL_TEMP_PREFIX, dir=dest_dir) as tmp:
        recv = Path(tmp) / "recv"
        recv.mkdir()
        paths = [e.path for e in entries]
        conn.get_files(root, paths, recv, use_rsync=use_rsync, cancel=cancel, timeout_s=timeout_s)
        modes = _verify(host.name, entries, recv)
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"{host.name}: pull stopped; nothing was installed")
        install_received(entries, recv, dest_dir, modes)


def _verify(name: str, entries: Sequence[FileEntry], recv: Path) -> dict[str, int]:
    """Check every file under ``recv`` against its entry; the permission bits each
    arrived with, by path."""
    modes: dict[str, int] = {}
    base = str(recv)
    for entry in entries:
        try:
            size, sha256, mode = file_digest(f"{base}/{entry.path}")
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: {entry.path!r} did not arrive intact: {exc}") from None
        if (size, sha256) != (entry.size, entry.sha256):
            raise IntegrityError(
                f"{name}: {entry.path!r} changed in transit or on the host: expected "
                f"{entry.size} bytes sha256 {entry.sha256[:16]}…, got {size} bytes "
                f"sha256 {sha256[:16]}…",
                fix="was the file still being written after its task ended?",
            )
        modes[entry.path] = mode
    return modes


__all__ = ["PULL_TEMP_PREFIX", "pull"]

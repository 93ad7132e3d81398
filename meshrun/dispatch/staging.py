"""Stage a task's inputs: push its needs' outputs to the host it is about to run on.

When ``test`` needs ``build`` and the two run on different hosts, ``build``'s outputs
must be in ``test``'s workdir before it starts, exactly where a local build would have
left them. They are pushed from the coordinator's verified copy (the run directory's
``artifacts/<need>/``), never host to host: hosts need not reach each other, and what
arrives is what the manifest lists.

- rsync carried over the pooled SSH connection (``SSHConnector.rsync_ssh``: the same
  hops, identity and host-key check as the commands), SFTP on that connection when
  rsync is missing; the local host gets plain copies.
- Atomic per file: rsync and the SFTP path write beside the target and rename, so an
  interrupted push never leaves a file that looks complete.
- Verified on arrival: the host hashes every pushed file (the collect program, asked
  for each path literally) and a size or sha256 mismatch is an IntegrityError.
- Two needs that produced the same path with different content clash: IntegrityError,
  before anything is sent.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshrun.config.inventory import Host
from meshrun.errors import CommandError, IntegrityError
from meshrun.integrity import artifacts
from meshrun.integrity.manifest import FileEntry, hash_file, safe_relative_path
from meshrun.records import record
from meshrun.transport import rsync
from meshrun.transport.base import Connector
from meshrun.workspace.push import sftp_makedirs, sftp_put

if TYPE_CHECKING:
    from meshrun.transport.ssh import SSHConnector


@record
class Input:
    """The verified outputs of one need: ``files`` under ``source/<path>``."""

    task: str
    source: Path
    files: tuple[FileEntry, ...]


def plan(inputs: Sequence[Input]) -> list[tuple[Input, list[FileEntry]]]:
    """Each need with the files it still has to send: the same path with the same
    content from two needs is sent once; with different content it is an error."""
    owner: dict[str, tuple[str, FileEntry]] = {}
    out: list[tuple[Input, list[FileEntry]]] = []
    for item in inputs:
        mine: list[FileEntry] = []
        for entry in item.files:
            safe_relative_path(entry.path)
            seen = owner.get(entry.path)
            if seen is None:
                owner[entry.path] = (item.task, entry)
                mine.append(entry)
            elif seen[1].sha256 != entry.sha256:
                raise IntegrityError(
                    f"needs {seen[0]!r} and {item.task!r} both produced {entry.path!r}, "
                    "with different content",
                    fix="give each task its own output paths",
                )
        if mine:
            out.append((item, mine))
    return out


def literal_pattern(path: str) -> str:
    """An output pattern that matches exactly ``path`` (glob characters escaped)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def push(
    connector: Connector, host: Host, inputs: Sequence[Input], *, use_rsync: bool = True
) -> int:
    """Put every input file into ``host``'s workdir at its path and verify it there.

    rsync unless ``use_rsync`` is False or rsync is missing here or on the host, then
    SFTP. Returns the number of bytes sent. IntegrityError on a clash or a file that did not
    arrive intact; CommandError/ConnectError when the transfer itself failed.
    """
    todo = plan(inputs)
    if not todo:
        return 0
    if host.local:
        _push_local(host, todo)
    else:
        from meshrun.transport.ssh import SSHConnector

        assert isinstance(connector, SSHConnector)
        _push_ssh(connector, host, todo, use_rsync=use_rsync)
    return sum(e.size for _, entries in todo for e in entries)


def _push_local(host: Host, todo: list[tuple[Input, list[FileEntry]]]) -> None:
    root = Path(os.path.expanduser(host.workdir))
    for item, entries in todo:
        # Already there when the workdir is the workspace the outputs were published to.
        missing = [e for e in entries if _local_hash(root, e.path) != e.sha256]
        artifacts.publish(item.source, missing, root)
        for entry in missing:
            if _local_hash(root, entry.path) != entry.sha256:
                raise IntegrityError(f"{host.name}: input {entry.path!r} did not arrive intact")


def _local_hash(root: Path, path: str) -> str | None:
    try:
        return hash_file(root / path, root=root).sha256
    except IntegrityError:
        return None


def _push_ssh(
    connector: SSHConnector,
    host: Host,
    todo: list[tuple[Input, list[FileEntry]]],
    *,
    use_rsync: bool,
) -> None:
    conn = connector.connect(host)
    root = artifacts.remote_root(connector, host)
    has_rsync = use_rsync and shutil.which("rsync") is not None and artifacts.host_has_rsync(conn)
    for item, entries in todo:
        if has_rsync:
            _push_rsync(connector, host, root, item.source, entries)
        else:
            _push_sftp(connector, host, root, item.source, entries)
    expected = {e.path: e for _, entries in todo for e in entries}
    _, found = artifacts.collect_outputs(
        conn, host.workdir, [literal_pattern(p) for p in sorted(expected)]
    )
    arrived = {e.path: e for e in found}
    for path, entry in sorted(expected.items()):
        got = arrived.get(path)
        if got is None or (got.size, got.sha256) != (entry.size, entry.sha256):
            raise IntegrityError(
                f"{host.name}: input {path!r} did not arrive intact",
                fix="is something else writing to the host's workdir?",
            )


def push_argv(*, rsh: rsync.RemoteShell, source: str, list_file: str, root: str) -> list[str]:
    """rsync that copies the NUL-separated relative paths in ``list_file`` from
    ``source`` into the host's ``root``, always sending (no quick-check skip), with the
    files' permission bits. rsync writes each file aside and renames it into place."""
    return [
        "rsync",
        "--protect-args",
        "--from0",
        f"--files-from={list_file}",
        "--perms",
        "--times",
        "--ignore-times",
        "--whole-file",
        "-e",
        rsh.rsh,
        source.rstrip("/") + "/",
        rsh.remote_dir(root),
    ]


def _push_rsync(
    connector: SSHConnector, host: Host, root: str, source: Path, entries: Sequence[FileEntry]
) -> None:
    rsh = connector.rsync_ssh(host)
    with tempfile.NamedTemporaryFile(prefix="meshrun-push-", suffix=".list") as listing:
        listing.write(b"".join(e.path.encode("utf-8") + b"\0" for e in entries))
        listing.flush()
        argv = push_argv(rsh=rsh, source=str(source), list_file=listing.name, root=root)
        rsync.run(argv, host.name, what="pushing inputs", env=rsh.env)


def _push_sftp(
    connector: SSHConnector, host: Host, root: str, source: Path, entries: Sequence[FileEntry]
) -> None:
    conn = connector.connect(host)
    try:
        sftp: Any = conn.open_sftp()  # counted in the host's session budget
    except Exception as exc:  # paramiko.SSHException, EOFError, OSError
        raise CommandError(f"{host.name}: cannot open an SFTP session: {exc}") from exc
    made: set[str] = set()
    try:
        for entry in entries:
            remote = posixpath.join(root, entry.path)
            try:
                sftp_makedirs(sftp, posixpath.dirname(remote), made)
                sftp_put(sftp, source / entry.path, remote, entry.mode & 0o777)
            except OSError as exc:
                raise CommandError(
                    f"{host.name}: cannot push {entry.path!r} over SFTP: {exc}"
                ) from exc
    finally:
        sftp.close()


__all__ = ["Input", "literal_pattern", "plan", "push", "push_argv"]

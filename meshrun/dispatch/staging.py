"""Stage a task's inputs: push its needs' outputs to the host it is about to run on.

When ``test`` needs ``build`` and the two run on different hosts, ``build``'s outputs
must be in ``test``'s workdir before it starts, exactly where a local build would have
left them. They are pushed from the coordinator's verified copy (the run directory's
``artifacts/<need>/``), never host to host: hosts need not reach each other, and what
arrives is what the manifest lists.

- rsync carried over the pooled SSH connection (the same hops, identity and host-key
  check as the commands), SFTP on that connection when rsync is missing
  (:meth:`~meshrun.transport.base.Connection.put_files`); the local host gets plain
  copies.
- Atomic per file: rsync and the SFTP path write beside the target and rename, so an
  interrupted push never leaves a file that looks complete.
- Verified on arrival: the host hashes every pushed file (the collect program, asked
  for each path literally) and a size or sha256 mismatch is an IntegrityError.
- Two needs that produced the same path with different content clash: IntegrityError,
  before anything is sent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from meshrun.config.inventory import Host
from meshrun.errors import IntegrityError
from meshrun.integrity.collect import collect_outputs
from meshrun.integrity.manifest import FileEntry, hash_file, safe_relative_path
from meshrun.integrity.publish import publish
from meshrun.records import record
from meshrun.transport.base import Connection, Connector, expand_home


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
        _push_remote(connector.connect(host), host, todo, use_rsync=use_rsync)
    return sum(e.size for _, entries in todo for e in entries)


def _push_local(host: Host, todo: list[tuple[Input, list[FileEntry]]]) -> None:
    root = Path(os.path.expanduser(host.workdir))
    for item, entries in todo:
        # Already there when the workdir is the workspace the outputs were published to.
        missing = [e for e in entries if _local_hash(root, e.path) != e.sha256]
        publish(item.source, missing, root)
        for entry in missing:
            if _local_hash(root, entry.path) != entry.sha256:
                raise IntegrityError(f"{host.name}: input {entry.path!r} did not arrive intact")


def _local_hash(root: Path, path: str) -> str | None:
    try:
        return hash_file(root / path, root=root).sha256
    except IntegrityError:
        return None


def _push_remote(
    conn: Connection,
    host: Host,
    todo: list[tuple[Input, list[FileEntry]]],
    *,
    use_rsync: bool,
) -> None:
    """``host`` as the run sees it: its workdir may be this run's own, not the one the
    pooled connection was opened for."""
    root = expand_home(conn, host.workdir)
    for item, entries in todo:
        sent = [(e.path, e.mode & 0o777) for e in entries]
        conn.put_files(item.source, sent, root, use_rsync=use_rsync, what="pushing inputs")
    expected = {e.path: e for _, entries in todo for e in entries}
    _, found = collect_outputs(conn, host.workdir, [literal_pattern(p) for p in sorted(expected)])
    arrived = {e.path: e for e in found}
    for path, entry in sorted(expected.items()):
        got = arrived.get(path)
        if got is None or (got.size, got.sha256) != (entry.size, entry.sha256):
            raise IntegrityError(
                f"{host.name}: input {path!r} did not arrive intact",
                fix="is something else writing to the host's workdir?",
            )


__all__ = ["Input", "literal_pattern", "plan", "push"]

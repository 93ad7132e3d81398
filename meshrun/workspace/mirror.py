"""Make a host's workdir an exact copy of the workspace, through the host's agent.

rsync's quick check trusts size and modification time, so a change that keeps both is
never sent; without ``--delete`` a file deleted here keeps running there. The mirror
compares content instead, at the cost of a ``stat`` per file on each side:

- Here, every file of ``[sync] paths`` (excludes honoured, as :mod:`meshrun.workspace.push`
  plans them) gets its SHA-256. A cache in the state directory
  (``workspace-hashes.json``) keeps a hash while the file's size, mtime, ctime and
  inode stay the same: ctime cannot be set back by ``touch`` or an unpacker, so a
  same-size same-mtime edit still changes the key. An entry is cached only once the
  file is two seconds old (a write in the same clock tick as the hashing must not be
  trusted later, git's "racy" rule).
- There, the agent lists the mirrored directories and reports, for each file, the
  SHA-256 it recorded when it wrote the file — if size, mtime, inode and ctime still
  match (a task that edited it in place is caught the same way).
- The difference (:func:`diff`) is sent in one stream: what to delete, directories,
  symlinks, mode and mtime fixes, then each changed file's bytes; the agent writes each
  beside its target, checks its size and SHA-256, and renames it into place.

Deleted: an entry on the host inside a mirrored directory that the workspace does not
have, unless an exclude pattern matches it (so ``node_modules`` or ``.venv`` built on
the host stay, as with ``rsync --delete``); a directory gone from the workspace goes
with everything in it. ``hide`` paths (outputs meshrun installed into the workspace)
are not sent, and ``purge`` paths (the graph's own literal output paths) are deleted on
the host wherever they are, excluded or not, so an output of an earlier run is never
collected as this run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from meshrun.integrity.manifest import atomic_write, file_digest
from meshrun.records import record
from meshrun.workspace.excludes import Excludes
from meshrun.workspace.push import plan

log = logging.getLogger(__name__)

#: A file is read in pieces of this size (its bytes follow its ``put`` line as they are).
CHUNK_BYTES = 256 * 1024
#: Messages are written to the channel in batches of about this many bytes.
BATCH_BYTES = 1 << 20
#: A file younger than this (by ctime) is hashed each run, not cached (see above).
RACY_NS = 2_000_000_000
CACHE_FILE = "workspace-hashes.json"

Kind = Literal["dir", "file", "link"]
_SHORT: dict[str, str] = {"dir": "d", "file": "f", "link": "l"}


@record
class LocalEntry:
    path: str  # relative to the workspace root; "" is the root itself
    kind: Kind
    mode: int
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""  # a file's
    target: str = ""  # a symlink's


@record
class LocalTree:
    """What the host's copy must hold, parents before their contents."""

    root: Path
    entries: Mapping[str, LocalEntry]
    #: Directories whose whole contents are mirrored ("" the root): listed on the host.
    full_dirs: tuple[str, ...]
    #: Entries not inside a listed directory (a sync path and its parents): looked up.
    lone: tuple[str, ...]


@record
class Changes:
    """What the host must do to equal the tree (:func:`diff`)."""

    delete: tuple[str, ...] = ()
    mkdir: tuple[tuple[str, int], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    attrs: tuple[tuple[str, int, int], ...] = ()  # path, mode, mtime_ns: same content
    puts: tuple[LocalEntry, ...] = ()
    dirs: tuple[tuple[str, int, int], ...] = ()  # every directory's mode and mtime, last


@record
class MirrorStats:
    sent_files: int
    sent_bytes: int
    deleted: int


class HashCache:
    """``<state>/workspace-hashes.json``: path -> [size, mtime_ns, ctime_ns, ino, sha256]."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._files: dict[str, list[Any]] = {}
        self._dirty = False
        if path is None:
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            files = document.get("files") if isinstance(document, dict) else None
            self._files = files if isinstance(files, dict) else {}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.info("%s: unreadable (%s); hashing every file", path, exc)

    def sha256(self, relative: str, full: str, st: os.stat_result) -> str:
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cached = self._files.get(relative)
        if isinstance(cached, list) and len(cached) == 5 and cached[:4] == key:
            return str(cached[4])
        digest = file_digest(full)[1]
        if time.time_ns() - st.st_ctime_ns > RACY_NS:
            self._files[relative] = [*key, digest]
            self._dirty = True
        elif relative in self._files:
            del self._files[relative]
            self._dirty = True
        return digest

    def save(self, keep: Collection[str]) -> None:
        """Write the cache (only the paths still in the workspace), atomically."""
        if self.path is None:
            return
        stale = [p for p in self._files if p not in keep]
        for p in stale:
            del self._files[p]
        if not (self._dirty or stale):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({"version": 1, "files": self._files}).encode())
        except OSError as exc:
            log.info("could not save %s: %s", self.path, exc)


def build_tree(
    root: Path,
    paths: Sequence[str],
    excludes: Excludes,
    *,
    hide: Collection[str] = (),
    cache: HashCache | None = None,
) -> LocalTree:
    """Walk and hash what ``[sync] paths`` send (FileNotFoundError for a missing path)."""
    cache = cache or HashCache(None)
    entries: dict[str, LocalEntry] = {}
    base = str(root)
    for item in plan(root, paths, excludes):
        if item.path in hide and item.kind != "dir":
            continue
        full = os.path.join(base, item.path) if item.path else base
        st = os.lstat(full)
        if item.kind == "file":
            sha = cache.sha256(item.path, full, st)
            entries[item.path] = LocalEntry(
                item.path, "file", item.mode, st.st_size, st.st_mtime_ns, sha
            )
        elif item.kind == "link":
            entries[item.path] = LocalEntry(item.path, "link", 0, target=item.target)
        else:
            entries[item.path] = LocalEntry(item.path, "dir", item.mode, mtime_ns=st.st_mtime_ns)
    cache.save(entries)
    whole = ["" if p == "." else p for p in paths]
    full_dirs = tuple(
        path
        for path, entry in entries.items()
        if entry.kind == "dir" and any(_under(path, top) for top in whole)
    )
    listed = set(full_dirs)
    lone = tuple(p for p in entries if p and _parent(p) not in listed)
    return LocalTree(root, entries, full_dirs, lone)


def _under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def diff(
    tree: LocalTree,
    remote: Iterable[Sequence[Any]],
    excludes: Excludes,
    purge: Collection[str] = (),
) -> Changes:
    """What turns the host's entries (the agent's ``scanned`` list: path, kind, mode,
    size, mtime_ns, sha256 or None, symlink target) into ``tree``. Pure."""
    there = {str(e[0]): e for e in remote}
    delete: list[str] = []
    for path, entry in there.items():
        mine = tree.entries.get(path)
        if mine is None:
            if path in purge or not excludes.excluded(path, is_dir=entry[1] == "d"):
                delete.append(path)
        elif _SHORT[mine.kind] != entry[1]:
            delete.append(path)
    gone = set(delete)
    mkdir: list[tuple[str, int]] = []
    links: list[tuple[str, str]] = []
    attrs: list[tuple[str, int, int]] = []
    puts: list[LocalEntry] = []
    for path, mine in tree.entries.items():
        if not path:
            continue
        found = None if path in gone else there.get(path)
        if mine.kind == "dir":
            if found is None:
                mkdir.append((path, mine.mode))
        elif mine.kind == "link":
            if found is None or found[6] != mine.target:
                links.append((path, mine.target))
        elif found is None or found[5] != mine.sha256:
            puts.append(mine)
        elif found[2] != mine.mode or found[4] != mine.mtime_ns:
            attrs.append((path, mine.mode, mine.mtime_ns))
    dirs = tuple((p, e.mode, e.mtime_ns) for p, e in tree.entries.items() if e.kind == "dir")
    return Changes(tuple(delete), tuple(mkdir), tuple(links), tuple(attrs), tuple(puts), dirs)


class Agent(Protocol):
    """The agent runner's workspace messages (:class:`meshrun.agent.client.AgentRunner`)."""

    def send_lines(self, data: bytes) -> None: ...

    def request(self, message: dict[str, Any], reply: str) -> dict[str, Any]: ...


def _line(message: Mapping[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def push(
    agent: Agent,
    workdir: str,
    tree: LocalTree,
    excludes: Excludes,
    purge: Collection[str] = (),
) -> MirrorStats:
    """Make ``workdir`` on the agent's host equal ``tree``; MeshrunError when it could not."""
    lookup = sorted({*tree.lone, *(p for p in purge if p not in tree.entries)})
    scanned = agent.request(
        {"op": "scan", "root": workdir, "dirs": list(tree.full_dirs), "paths": lookup}, "scanned"
    )
    changes = diff(tree, scanned.get("entries") or (), excludes, purge)
    batch = bytearray()

    def raw(data: bytes) -> None:
        batch.extend(data)
        if len(batch) >= BATCH_BYTES:
            agent.send_lines(bytes(batch))
            batch.clear()

    def out(message: Mapping[str, Any]) -> None:
        raw(_line(message))

    if changes.delete or changes.mkdir or changes.links or changes.attrs:
        out(
            {
                "op": "apply",
                "delete": changes.delete,
                "mkdir": changes.mkdir,
                "links": changes.links,
                "attrs": changes.attrs,
            }
        )
    sent = 0
    for entry in changes.puts:
        out(
            {
                "op": "put",
                "path": entry.path,
                "mode": entry.mode,
                "mtime_ns": entry.mtime_ns,
                "size": entry.size,
                "sha": entry.sha256,
            }
        )
        left = entry.size
        with open(tree.root / entry.path, "rb") as handle:
            while left and (chunk := handle.read(min(CHUNK_BYTES, left))):
                raw(chunk)
                left -= len(chunk)
        if left:  # it shrank since it was hashed: the agent still expects ``size`` bytes
            raw(bytes(left))  # ...and rejects the file, as its SHA-256 differs
        sent += entry.size
    if batch:
        agent.send_lines(bytes(batch))
    done = agent.request({"op": "done", "dirs": changes.dirs}, "mirrored")
    return MirrorStats(int(done.get("written") or 0), sent, int(done.get("deleted") or 0))


class SharedTree:
    """The tree, built once per run by the first host that needs it (the others wait)."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._tree: LocalTree | None = None
        self._error: BaseException | None = None

    def get(self) -> LocalTree:
        with self._lock:
            if self._tree is None and self._error is None:
                try:
                    self._tree = self._build()
                except Exception as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._tree is not None
            return self._tree

    def warm(self) -> None:
        """Build it now, in the background (while hosts connect)."""

        def run() -> None:
            with contextlib.suppress(Exception):
                self.get()

        threading.Thread(target=run, name="meshrun-workspace-hash", daemon=True).start()


__all__ = [
    "CACHE_FILE",
    "Changes",
    "HashCache",
    "LocalEntry",
    "LocalTree",
    "MirrorStats",
    "SharedTree",
    "build_tree",
    "diff",
    "push",
]

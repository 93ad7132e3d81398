"""Place verified files where they belong, atomically: never half a file, never outside.

Two ways in. :func:`install_received` moves a pull's received tree (every file already
checked against its hash, see :mod:`meshrun.integrity.pull`) into its destination,
all of it at once where the destination is new. :func:`publish` places the run
directory's verified copy where a local build would have left it (the workspace) or
under ``--artifacts DIR/<task>/``: each file written aside (or hard-linked) and renamed
into place. Both refuse to write through a symlink or to replace a directory, and
never write outside the destination. What was installed for whom is recorded by
:mod:`meshrun.integrity.install`.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from meshrun.errors import IntegrityError
from meshrun.integrity.manifest import FileEntry, safe_relative_path


def checked_entries(files: Sequence[FileEntry]) -> list[FileEntry]:
    """``files`` sorted by path, each path safe and listed once (else IntegrityError)."""
    seen: set[str] = set()
    for entry in files:
        safe_relative_path(entry.path)
        if entry.path in seen:
            raise IntegrityError(f"{entry.path!r} is listed twice")
        seen.add(entry.path)
    return sorted(files, key=lambda e: e.path)


def publish(
    src_dir: Path, files: Sequence[FileEntry], dest_dir: Path, *, link: bool = False
) -> None:
    """Place verified files from ``src_dir/<path>`` at ``dest_dir/<path>``, atomically.

    Used to place outputs where a local build would have left them (the workspace) or
    under ``--artifacts DIR/<task>/``, while the run directory keeps the verified copy
    that ``meshrun verify`` checks and reruns push. Each file is written aside and
    renamed into place. ``link``: a hard link to the run directory's copy where the
    file system allows one (an output is stored once, not twice), else a copy. Every
    later use of the run directory's copy checks its SHA-256, so a tool that rewrites
    the installed file in place is caught there, never passed on.
    """
    entries = checked_entries(files)
    if not entries:
        return
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    base = Path(dest_dir).resolve()
    for entry in entries:
        target = _install_target(base, entry)
        source = Path(src_dir) / entry.path
        if link and _link_aside(source, target, entry):
            continue
        fd, temp = tempfile.mkstemp(prefix=".meshrun-publish-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(source, temp)
            os.chmod(temp, entry.mode & 0o777)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _link_aside(source: Path, target: Path, entry: FileEntry) -> bool:
    """Hard-link ``source`` beside ``target`` and rename it into place; False when the
    file system refuses a link (another device, no hard links), so the caller copies."""
    temp = target.parent / f".meshrun-publish-{os.urandom(8).hex()}"
    try:
        os.link(source, temp)
    except OSError:
        return False
    try:
        os.chmod(temp, entry.mode & 0o777)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def install_received(
    entries: Sequence[FileEntry], recv: Path, dest_dir: Path, modes: dict[str, int]
) -> None:
    """Give every file its mode and move it from ``recv`` to its place under ``dest_dir``.

    ``modes`` are the bits the files arrived with (chmod only where they differ). Into a
    destination that holds nothing else yet (a fresh run directory), the received
    top-level entries move with one rename each, so a tree appears all at once.
    """
    for entry in entries:
        if modes.get(entry.path) != entry.mode & 0o777:
            os.chmod(recv / entry.path, entry.mode & 0o777)
    with os.scandir(dest_dir) as it:
        present = [e.name for e in it]
    # ``recv`` lives in a private temporary directory inside ``dest_dir``.
    fresh = present == [recv.parent.name]
    if fresh and recv.parent.name not in {e.path.split("/", 1)[0] for e in entries}:
        for child in os.listdir(recv):
            os.rename(recv / child, dest_dir / child)
        return
    base = dest_dir.resolve()
    # Many files share a directory: check (and make) each parent once, not per file.
    # _make_parents resolves the whole path, which is most of the cost of a small file.
    checked: set[str] = set()
    for entry in entries:
        rel = safe_relative_path(entry.path)
        parent, _, _ = rel.rpartition("/")
        target = base / rel
        if parent not in checked:
            make_parents(base, target.parent, entry.path)
            checked.add(parent)
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            mode = 0
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
            raise IntegrityError(
                f"{target}: exists and is not a regular file; refusing to replace it"
            )
        os.replace(recv / rel, target)


def _install_target(base: Path, entry: FileEntry) -> Path:
    """Where ``entry`` goes under ``base`` (resolved): parents made safely, and never a
    symlink or directory replaced."""
    target = base / safe_relative_path(entry.path)
    make_parents(base, target.parent, entry.path)
    if target.is_symlink() or target.is_dir():
        raise IntegrityError(f"{target}: exists and is not a regular file; refusing to replace it")
    return target


def make_parents(base: Path, parent: Path, path: str) -> None:
    """Create ``parent`` below ``base``, refusing symlinked or non-directory parts."""
    current = base
    for part in parent.relative_to(base).parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            current.mkdir()
            continue
        if not stat.S_ISDIR(mode):
            raise IntegrityError(
                f"{path!r}: {current} is not a directory (a symlink?); refusing to write there"
            )
    if not parent.resolve().is_relative_to(base):
        raise IntegrityError(f"{path!r}: would be written outside {base}")


__all__ = ["checked_entries", "install_received", "make_parents", "publish"]

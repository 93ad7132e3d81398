"""Collect a task's declared outputs on its host, hash them there, pull them home.

Collect
    :data:`COLLECT_SCRIPT` (stdlib-only Python 3) runs on the host inside the task's
    workdir, expands the ``outputs`` patterns, hashes every file (sha256, size, mode,
    read 1 MiB at a time) and prints one JSON document. :func:`collect` runs it and
    turns every refusal into an :class:`~meshrun.errors.IntegrityError` (exit 4).

Pull
    :func:`pull` brings the listed files home with rsync carried over meshrun's own
    pooled SSH connection (``SSHConnector.rsync_ssh``: no second handshake, the same
    hops and host-key check), or over SFTP on that connection when rsync is missing
    (here or on the host). Files land in a
    private temporary directory inside ``dest_dir`` (same filesystem), every file's size
    and sha256 is checked against the host's, and only when *all* of them match are they
    renamed into place. A mismatch, an interrupted or failed transfer leaves nothing at
    any final path; the temporary directory is removed.

Output patterns (rsync / gitignore habits)
    Patterns are relative to the workdir and anchored there; ``/`` separates parts.

    - ``*`` / ``?`` / ``[abc]`` match within one name, never across ``/``; ``*`` also
      matches names starting with ``.`` (nothing is skipped silently).
    - ``**`` as a whole part matches any number of directories (zero included):
      ``**/*.log`` is every ``.log`` file at any depth.
    - A pattern that matches a directory takes every file below it, so ``dist``,
      ``dist/`` and ``dist/**`` all mean every file below ``dist`` (a trailing ``/``
      only requires the match to be a directory).
    - A leading ``?`` marks the pattern optional: ``?coverage/**`` may match nothing.
      (So a pattern whose first character is the single-character wildcard is
      written ``??x``.)
    - Refused, with the pattern named: an absolute pattern, a ``..`` part, a match
      whose real path leaves the workdir (a symlink pointing outside it), a special
      file (FIFO, socket, device), a name that is not valid UTF-8, a symlinked
      directory (never walked), and a pattern that matches no file unless optional.
    - A symlink to a regular file inside the workdir is collected as that file's
      content under the symlink's name.
    - ``.meshrun/`` at the top of the workdir (meshrun's agent and uploaded scripts)
      is never taken: ``*``, ``**`` and ``.`` pass it by, and a pattern naming it is
      refused.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from meshrun.config.inventory import Host
from meshrun.errors import CommandError, InputError, IntegrityError, Interrupted
from meshrun.integrity.manifest import FileEntry, file_digest, safe_relative_path
from meshrun.records import record
from meshrun.transport import rsync
from meshrun.transport.base import Connection, Connector
from meshrun.transport.capture import tail_text
from meshrun.transport.wrapper import workdir_expr

if TYPE_CHECKING:
    from meshrun.transport.ssh import SSHConnector

#: Prefix of the private directory a pull downloads into, inside ``dest_dir``.
PULL_TEMP_PREFIX = ".meshrun-pull-"

# The program the host runs, in its workdir, with {"patterns": [...]} as JSON on stdin.
# It prints {"root": cwd, "files": [{path, size, sha256, mode}], "errors": [{pattern,
# message}]}, ASCII-only JSON (names with newlines or odd bytes survive any locale).
COLLECT_SCRIPT = r"""
import fnmatch, hashlib, json, os, stat, sys

CHUNK = 1 << 20
MAGIC = set("*?[")
OWN = ".meshrun"  # meshrun's own directory in the workdir (agent, scripts): never taken
REAL_DIRS = {}  # directory (relative) -> its real path


def main():
    request = json.loads(sys.stdin.read())
    root = os.getcwd()
    real_root = os.path.realpath(root)
    files = {}
    errors = []
    for raw in request["patterns"]:
        Pattern(raw, real_root, files, errors).run()
    out = {"root": root, "files": [files[k] for k in sorted(files)], "errors": errors}
    sys.stdout.write(json.dumps(out, ensure_ascii=True))


def show(path):
    try:
        path.encode("utf-8")
        return repr(path)
    except UnicodeEncodeError:
        return repr(os.fsencode(path))


class Pattern:
    def __init__(self, raw, real_root, files, errors):
        self.raw = raw
        self.real_root = real_root
        self.files = files
        self.errors = errors
        self.found = 0

    def error(self, message, kind="refused"):
        self.errors.append({"pattern": self.raw, "message": message, "kind": kind})

    def unreadable(self, path, what, exc):
        self.error(show(path) + what + (exc.strerror or str(exc)), "unreadable")

    def run(self):
        text = self.raw
        optional = text.startswith("?")
        if optional:
            text = text[1:]
        if not text:
            return self.error("the pattern is empty")
        if "\0" in text:
            return self.error("the pattern contains a NUL byte")
        if text.startswith("/"):
            return self.error("it is absolute; outputs are paths inside the workdir")
        dir_only = text.endswith("/")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            return self.error("it has a '..' part; outputs must stay inside the workdir")
        if not parts:
            parts = ["**"]
        matches = set()
        self.expand("", parts, dir_only, matches)
        for rel in sorted(matches):
            self.take(rel)
        if not self.found and not optional:
            self.error("it matched no file (mark it optional with a leading '?')", "unmatched")

    # -- expansion ----------------------------------------------------------------

    def expand(self, base, parts, dir_only, out):
        head, rest = parts[0], parts[1:]
        if head == "**":
            if not rest:
                out.add(base or ".")
                return
            self.expand(base, rest, dir_only, out)
            for name, kind in self.listdir(base):
                if kind == "dir":
                    self.expand(join(base, name), parts, dir_only, out)
            return
        if not MAGIC.intersection(head):
            names = [] if not base and head == OWN else [(head, self.kind(join(base, head)))]
        else:
            names = [(n, k) for n, k in self.listdir(base) if fnmatch.fnmatchcase(n, head)]
        for name, kind in names:
            path = join(base, name)
            if kind is None:
                continue
            if rest:
                if kind == "dir":
                    self.expand(path, rest, dir_only, out)
                elif kind == "dirlink":
                    self.error(show(path) + ": is a symlink to a directory, which is not walked")
            elif not dir_only or kind in ("dir", "dirlink"):
                out.add(path)

    def kind(self, path):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable(path, ": cannot stat: ", exc)
            return None
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISLNK(mode):
            return "dirlink" if os.path.isdir(path) else "link"
        return "other"

    def listdir(self, base):
        try:
            with os.scandir(base or ".") as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable(base or ".", ": cannot list: ", exc)
            return []
        result = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    kind = "dir"
                elif entry.is_symlink():
                    kind = "dirlink" if entry.is_dir() else "link"
                else:
                    kind = "other"
            except OSError as exc:
                self.unreadable(join(base, entry.name), ": ", exc)
                continue
            if not base and entry.name == OWN:
                continue  # '*', '**' and '.' never reach meshrun's own files
            result.append((entry.name, kind))
        return result

    # -- taking matches ----------------------------------------------------------

    def take(self, rel):
        kind = self.kind(rel) if rel != "." else "dir"
        if kind == "dir":
            for name, sub in self.listdir("" if rel == "." else rel):
                self.take_walk(join("" if rel == "." else rel, name), sub)
        elif kind == "dirlink":
            self.error(show(rel) + ": is a symlink to a directory, which is not walked")
        elif kind is not None:
            self.take_file(rel)

    def take_walk(self, rel, kind):
        if kind == "dir":
            for name, sub in self.listdir(rel):
                self.take_walk(join(rel, name), sub)
        elif kind == "dirlink":
            self.error(show(rel) + ": is a symlink to a directory, which is not walked")
        else:
            self.take_file(rel)

    def take_file(self, rel):
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return self.error(show(rel) + ": the name is not valid UTF-8")
        try:
            mode = os.lstat(rel).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(rel)
                mode = os.stat(rel).st_mode
            else:  # only the directory can lead elsewhere: resolve each one once
                head, _, tail = rel.rpartition("/")
                if head not in REAL_DIRS:
                    REAL_DIRS[head] = os.path.realpath(head or ".")
                real = REAL_DIRS[head].rstrip("/") + "/" + tail
        except OSError as exc:
            return self.error(show(rel) + ": cannot stat: " + (exc.strerror or str(exc)))
        if real != self.real_root and not real.startswith(self.real_root.rstrip("/") + "/"):
            return self.error(show(rel) + ": resolves to " + show(real) + ", outside the workdir")
        try:
            if not stat.S_ISREG(mode):
                return self.error(show(rel) + ": is a special file, not a regular file")
            fd = os.open(rel, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            return self.unreadable(rel, ": cannot open: ", exc)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return self.error(show(rel) + ": is a special file, not a regular file")
            digest = hashlib.sha256()
            size = 0
            buffer = bytearray(min(CHUNK, info.st_size + 1))  # a fresh 1 MiB per small file is slow
            view = memoryview(buffer)
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])
                size += count
        self.found += 1
        self.files[rel] = {
            "path": rel,
            "size": size,
            "sha256": digest.hexdigest(),
            "mode": stat.S_IMODE(info.st_mode),
        }


def join(base, name):
    return base + "/" + name if base else name


main()
"""


# -- collect -----------------------------------------------------------------------------


def collect_command(workdir: str) -> str:
    """The shell line that runs :data:`COLLECT_SCRIPT` in ``workdir`` (request on stdin)."""
    # -I -S: no user site, no environment, no site import: faster, and nothing of the
    # host's Python set-up changes what the stdlib-only program does.
    script = shlex.quote(COLLECT_SCRIPT)
    return f"cd -- {workdir_expr(workdir)} && exec python3 -I -S -c {script}"


def collect_request(patterns: Sequence[str]) -> bytes:
    """What :data:`COLLECT_SCRIPT` reads on stdin."""
    return json.dumps({"patterns": list(patterns)}).encode("utf-8")


@record
class Refusal:
    """A pattern the host's collect program refused or found nothing for.

    ``kind``: ``"unmatched"`` (no file, pattern not optional), ``"unreadable"``
    (cannot stat, list or open: permissions) or ``"refused"`` (unsafe: absolute, ``..``,
    leaves the workdir through a symlink, special file, symlinked directory, bad name).
    """

    pattern: str
    message: str
    kind: str = "refused"

    def describe(self, what: str = "output") -> str:
        return f"{what} {self.pattern!r}: {self.message}"


def parse_collect_report(
    stdout: bytes, *, where: str = "host"
) -> tuple[str, list[FileEntry], list[Refusal]]:
    """The workdir's absolute path, its files and the refusals, from the script's output.

    Garbage (not the script's JSON, a malformed file entry) is an IntegrityError.
    """
    try:
        doc = json.loads(stdout.decode("utf-8"))
        root = doc["root"]
        raw_files = doc["files"]
        refusals = [
            Refusal(str(e["pattern"]), str(e["message"]), str(e.get("kind", "refused")))
            for e in doc["errors"]
        ]
        if not isinstance(root, str) or not isinstance(raw_files, list):
            raise TypeError("bad types")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{where}: output collection answered garbage ({exc})") from None
    files = [FileEntry.from_dict(item, f"{where}: file") for item in raw_files]
    return root, files, refusals


def parse_collect_output(stdout: bytes, *, where: str = "host") -> tuple[str, list[FileEntry]]:
    """The workdir's absolute path and its files, from the script's output.

    Refusals the script reported become one IntegrityError naming every pattern.
    """
    root, files, refusals = parse_collect_report(stdout, where=where)
    if refusals:
        raise IntegrityError(
            f"{where}: " + "; ".join(r.describe() for r in refusals),
            fix="outputs must be regular files inside the task's workdir",
        )
    return root, files


def collect_report(
    conn: Connection, workdir: str, patterns: Sequence[str], *, timeout_s: float = 3600.0
) -> tuple[str, list[FileEntry], list[Refusal]]:
    """Run the collect program in ``workdir``: its absolute path, the files, the refusals.

    Refusals are data here (the caller decides what each kind costs); CommandError when
    the program could not run (no python3, no workdir).
    """
    name = conn.host.name
    result = conn.run_raw(
        collect_command(workdir), stdin=collect_request(patterns), timeout_s=timeout_s
    )
    if result.exit_code != 0:
        fix = "is python3 installed on the host?" if result.exit_code == 127 else None
        raise CommandError(
            f"{name}: collecting outputs failed (exit {result.exit_code}): "
            f"{tail_text(result.stderr, 3)}",
            fix=fix,
        )
    return parse_collect_report(result.stdout, where=name)


def collect_outputs(
    conn: Connection,
    workdir: str,
    patterns: Sequence[str],
    *,
    timeout_s: float = 3600.0,
    missing_ok: bool = False,
) -> tuple[str, list[FileEntry]]:
    """:func:`collect`, plus the workdir's absolute path on the host (what rsync needs).

    ``missing_ok``: every pattern may match nothing (what a failed task left); unsafe or
    unreadable files are still refused."""
    name = conn.host.name
    root, files, refusals = collect_report(conn, workdir, patterns, timeout_s=timeout_s)
    if missing_ok:
        refusals = [r for r in refusals if r.kind != "unmatched"]
    if refusals:
        raise IntegrityError(
            f"{name}: " + "; ".join(r.describe() for r in refusals),
            fix="outputs must be regular files inside the task's workdir",
        )
    return root, files


def check_patterns(patterns: Sequence[str], *, what: str = "pattern") -> tuple[str, ...]:
    """``patterns`` unchanged (duplicates dropped) if each could match inside a workdir.

    What can be told without a host is refused here as an InputError naming the
    pattern: empty, a NUL, absolute (``/``, ``~``), a ``..`` part. The host's collect
    program checks the same again, and everything else (symlinks, special files).
    """
    for raw in patterns:
        text = raw[1:] if raw.startswith("?") else raw
        problem = None
        if not text:
            problem = "is empty"
        elif "\0" in text:
            problem = "contains a NUL byte"
        elif text.startswith(("/", "~")):
            problem = "is absolute; patterns are relative to the host's workdir"
        elif ".." in text.split("/"):
            problem = "has a '..' part; files must stay inside the host's workdir"
        elif [part for part in text.split("/") if part not in ("", ".")][:1] == [".meshrun"]:
            problem = "names .meshrun/, meshrun's own directory on the host, which is never pulled"
        if problem:
            raise InputError(
                f"{what} {raw!r} {problem}",
                fix="write a path or glob relative to the workdir, e.g. 'logs/*.log' or "
                "'dist/**' (a leading '?' marks it optional)",
            )
    return tuple(dict.fromkeys(patterns))


def collect(
    conn: Connection, workdir: str, patterns: Sequence[str], *, missing_ok: bool = False
) -> list[FileEntry]:
    """Expand ``patterns`` in ``workdir`` on the host and hash every file there.

    Sorted by path. IntegrityError naming each refused or unmatched pattern (see the
    module docstring; ``missing_ok``: unmatched ones are fine); CommandError when the
    script could not run (no python3, no workdir).
    """
    return collect_outputs(conn, workdir, patterns, missing_ok=missing_ok)[1]


# -- pull ----------------------------------------------------------------------------------


def remote_root(connector: SSHConnector, host: Host, workdir: str | None = None) -> str:
    """``workdir`` (default: the host's) as an absolute path on the host (``~`` resolved)."""
    workdir = host.workdir if workdir is None else workdir
    if workdir == "~" or workdir.startswith("~/"):
        home = connector.connect(host).facts().home
        if home is not None:
            return home.rstrip("/") + workdir[1:]
    return workdir


def host_has_rsync(conn: Connection) -> bool:
    """Whether rsync is on the host's PATH: asked once per connection (a dispatch run
    pulls after every task on the same pooled connection)."""
    return conn.facts().has_rsync


def pull_argv(*, rsh: rsync.RemoteShell, root: str, list_file: str, into: str) -> list[str]:
    """rsync that copies the NUL-separated relative paths in ``list_file`` from ``root``.

    Symlinks are copied as the files they point to (collect already checked they stay
    inside the workdir; the hashes are checked on arrival anyway).
    """
    return [
        "rsync",
        "--protect-args",
        "--from0",
        f"--files-from={list_file}",
        "--copy-links",
        "--perms",
        "--times",
        "-e",
        rsh.rsh,
        rsh.remote_dir(root),
        into.rstrip("/") + "/",
    ]


def pull(
    connector: SSHConnector,
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
    SFTP on the pooled connection. All-or-nothing: every file is verified (size,
    sha256) before any is renamed into place; a mismatch is an IntegrityError naming
    the file. Modes are set to the host's permission bits (without setuid/setgid/sticky).

    Setting ``cancel`` stops the transfer (rsync is terminated, SFTP stops at its next
    chunk) and raises Interrupted; nothing is installed. ``timeout_s`` bounds rsync.
    """
    dest_dir = Path(dest_dir)
    entries = _checked_entries(files)
    if not entries:
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = remote_root(connector, host, workdir)
    with tempfile.TemporaryDirectory(prefix=PULL_TEMP_PREFIX, dir=dest_dir) as tmp:
        recv = Path(tmp) / "recv"
        recv.mkdir()
        fetched = False
        if use_rsync and shutil.which("rsync"):
            fetched = _pull_rsync(
                connector, host, root, entries, Path(tmp), recv, cancel=cancel, timeout_s=timeout_s
            )
        if not fetched:
            _pull_sftp(connector, host, root, entries, recv, cancel=cancel)
        modes = _verify(host.name, entries, recv)
        _check_cancel(host.name, cancel)
        _install(entries, recv, dest_dir, modes)


def _check_cancel(name: str, cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Interrupted(f"{name}: pull stopped; nothing was installed")


def _checked_entries(files: Sequence[FileEntry]) -> list[FileEntry]:
    seen: set[str] = set()
    for entry in files:
        safe_relative_path(entry.path)
        if entry.path in seen:
            raise IntegrityError(f"{entry.path!r} is listed twice")
        seen.add(entry.path)
    return sorted(files, key=lambda e: e.path)


def _pull_rsync(
    connector: SSHConnector,
    host: Host,
    root: str,
    entries: Sequence[FileEntry],
    tmp: Path,
    recv: Path,
    *,
    cancel: threading.Event | None = None,
    timeout_s: float = 3600.0,
) -> bool:
    """Fetch with rsync; False when the host has no rsync (the caller falls back)."""
    if not host_has_rsync(connector.connect(host)):
        return False
    rsh = connector.rsync_ssh(host)
    list_file = tmp / "files0"
    list_file.write_bytes(b"".join(e.path.encode("utf-8") + b"\0" for e in entries))
    argv = pull_argv(rsh=rsh, root=root, list_file=str(list_file), into=str(recv))
    rsync.run(argv, host.name, timeout_s, what="pull", cancel=cancel, env=rsh.env)
    return True


def _pull_sftp(
    connector: SSHConnector,
    host: Host,
    root: str,
    entries: Sequence[FileEntry],
    recv: Path,
    *,
    cancel: threading.Event | None = None,
) -> None:
    """Fetch over SFTP on the pooled SSH connection, streamed into files under ``recv``.

    Read in batches of :data:`SFTP_BATCH_BYTES` (pipelined within a batch), so memory
    stays small and ``cancel`` takes effect within one batch: paramiko's whole-file
    prefetch would keep fetching (and closing would wait for) the rest of the file.
    """
    _check_cancel(host.name, cancel)
    conn = connector.connect(host)
    try:
        sftp: Any = conn.open_sftp()  # counted in the host's session budget
    except Exception as exc:  # paramiko.SSHException, EOFError, OSError
        raise CommandError(f"{host.name}: cannot open an SFTP session: {exc}") from exc
    try:
        for entry in entries:
            local = recv / entry.path
            local.parent.mkdir(parents=True, exist_ok=True)
            remote = root.rstrip("/") + "/" + entry.path
            with open(local, "wb") as handle:
                try:
                    _sftp_copy(sftp, remote, handle, lambda: _check_cancel(host.name, cancel))
                except Interrupted:
                    raise
                except Exception as exc:  # OSError; paramiko's SSHException, EOFError
                    raise CommandError(
                        f"{host.name}: cannot fetch {entry.path!r} over SFTP: {exc}"
                    ) from exc
    finally:
        sftp.close()


#: Bytes an SFTP pull requests at once (in 32 KiB reads, pipelined).
SFTP_BATCH_BYTES = 4 << 20


def _sftp_copy(sftp: Any, remote: str, handle: BinaryIO, check: Callable[[], None]) -> None:
    """Copy ``remote`` into ``handle`` batch by batch, calling ``check`` before each."""
    with sftp.open(remote, "rb") as source:
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


def _install_target(base: Path, entry: FileEntry) -> Path:
    """Where ``entry`` goes under ``base`` (resolved): parents made safely, and never a
    symlink or directory replaced."""
    target = base / safe_relative_path(entry.path)
    _make_parents(base, target.parent, entry.path)
    if target.is_symlink() or target.is_dir():
        raise IntegrityError(f"{target}: exists and is not a regular file; refusing to replace it")
    return target


def _install(
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
            _make_parents(base, target.parent, entry.path)
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


def _make_parents(base: Path, parent: Path, path: str) -> None:
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


__all__ = [
    "COLLECT_SCRIPT",
    "PULL_TEMP_PREFIX",
    "Refusal",
    "check_patterns",
    "collect",
    "collect_command",
    "collect_outputs",
    "collect_report",
    "collect_request",
    "parse_collect_output",
    "parse_collect_report",
    "pull",
    "pull_argv",
    "pull_from",
    "pull_local",
    "remote_root",
]


def pull_local(
    host: Host,
    files: Sequence[FileEntry],
    dest_dir: Path,
    *,
    cancel: threading.Event | None = None,
) -> None:
    """:func:`pull` for the local host: copy, verify and install the same way.

    ``cancel`` is checked between files (Interrupted; nothing is installed).
    """
    dest_dir = Path(dest_dir)
    entries = _checked_entries(files)
    if not entries:
        return
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.expanduser(host.workdir))
    with tempfile.TemporaryDirectory(prefix=PULL_TEMP_PREFIX, dir=dest_dir) as tmp:
        recv = Path(tmp) / "recv"
        for entry in entries:
            _check_cancel(host.name, cancel)
            target = recv / safe_relative_path(entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / entry.path, target)
        modes = _verify(host.name, entries, recv)
        _check_cancel(host.name, cancel)
        _install(entries, recv, dest_dir, modes)


def pull_from(
    connector: Connector,
    host: Host,
    files: Sequence[FileEntry],
    dest_dir: Path,
    *,
    workdir: str | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float = 3600.0,
) -> None:
    """:func:`pull_local` for the local host, :func:`pull` over ``connector`` otherwise.

    A connector that cannot transfer files (neither the local one nor SSH) is a
    CommandError naming the host.
    """
    if host.local:
        pull_local(host, files, dest_dir, cancel=cancel)
        return
    from meshrun.transport.ssh import SSHConnector

    if not isinstance(connector, SSHConnector):
        raise CommandError(
            f"{host.name}: cannot pull files through {type(connector).__name__}",
            fix="pull from SSH hosts or the local machine",
        )
    pull(connector, host, files, dest_dir, workdir=workdir, cancel=cancel, timeout_s=timeout_s)


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
    entries = _checked_entries(files)
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
    import secrets

    temp = target.parent / f".meshrun-publish-{secrets.token_hex(8)}"
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

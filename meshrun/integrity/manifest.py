"""The run manifest: what ran where, and every file it produced, as canonical JSON.

A run (or an artifacts directory copied elsewhere) carries::

    <directory>/manifest.json           the Manifest below, as canonical JSON
    <directory>/manifest.json.sig       its SSHSIG signature, namespace "meshrun" (optional)
    <root>/<task name>/<file path>      every file the manifest lists

``root`` is where listed files are looked up; it defaults to ``<directory>``. Each task
has a directory of its own under ``root`` and its files' paths are relative to it, so
two tasks may both produce ``dist/app.tar``. Task names and file paths are confined:
relative, no ``..``, ``.`` or empty parts, no NUL (:func:`safe_relative_path`).

The JSON document (schema 1) is::

    {"schema": 1, "run_id": "...", "started": "2026-11-23T15:25:19.120Z", "ended": "...",
     "coordinator": "laptop", "command_line": ["meshrun", "dispatch", ...],
     "hosts": [{"name", "address", "host_key_fingerprint" (null for local)}],
     "tasks": [{"name", "host", "command", "status", "exit_code", "attempts",
                "duration_s", "files": [{"path", "size", "sha256", "mode"}]}]}

``mode`` is the permission bits as an integer (0o644 is 420). Canonical bytes are
stable: keys sorted, separators ``,``/``:``, UTF-8, one trailing newline; hosts and
tasks sorted by name, files by path; times in UTC to the millisecond and durations
rounded to the millisecond when the values are built. So equal manifests are equal
bytes, and what is signed is exactly what a reader re-reads. A reader is strict: an
unknown key, a missing one or a wrong type is an IntegrityError (a newer writer bumps
``schema``).

Everything here is pure except reading files to hash them (streamed, 1 MiB at a time)
and :func:`write_manifest` / :func:`verify_directory`, which the CLI calls.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import math
import os
import re
import socket
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshrun.errors import InputError, IntegrityError
from meshrun.integrity.signing import fingerprint, sshsig_sign, sshsig_verify
from meshrun.records import record
from meshrun.rundir import (
    DISPATCH_FILES_DIR,
    FLEET_FILES_DIR,
    MANIFEST_NAME,
    REPORT_NAME,
    SIGNATURE_NAME,
)

SCHEMA = 1
#: What meshrun writes beside the per-host (or per-task) directories of a pull or
#: artifacts directory: no host or task may be named so.
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME, REPORT_NAME})
CHUNK_BYTES = 1 << 20
DURATION_DECIMALS = 3

_SHA256_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch: no trailing "\n"


# -- paths -----------------------------------------------------------------------------


def safe_relative_path(path: str) -> str:
    """``path`` unchanged if it stays inside its directory, else an IntegrityError.

    Refused: empty, absolute, a ``..``, ``.`` or empty part (``a//b``, ``a/``), a NUL,
    and names that are not valid UTF-8. So every file has exactly one spelling and
    ``<dir>/<path>`` never leaves ``<dir>`` (symlinks are the reader's business:
    :func:`verify_directory` never follows them).
    """
    if not isinstance(path, str) or not path:
        raise IntegrityError(f"unsafe path {path!r}: it is empty")
    problem = None
    if "\0" in path:
        problem = "it contains a NUL byte"
    elif path.startswith("/"):
        problem = "it is absolute"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "it has an empty, '.' or '..' part"
    else:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            problem = "it is not valid UTF-8"
    if problem:
        raise IntegrityError(
            f"unsafe path {path!r}: {problem}",
            fix="outputs must be relative paths inside their task's directory",
        )
    return path


def _safe_name(name: str, what: str) -> str:
    if not isinstance(name, str) or "/" in name:
        raise IntegrityError(f"{what} {name!r} cannot be a directory name (it contains '/')")
    return safe_relative_path(name)


# -- the document ----------------------------------------------------------------------


@record
class FileEntry:
    """One file: ``path`` relative to its task's directory, ``mode`` the permission bits."""

    path: str
    size: int
    sha256: str
    mode: int

    def __post_init__(self) -> None:
        safe_relative_path(self.path)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise IntegrityError(f"{self.path!r}: size must be an integer >= 0")
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256):
            raise IntegrityError(f"{self.path!r}: sha256 must be 64 lower-case hex digits")
        if isinstance(self.mode, bool) or not isinstance(self.mode, int):
            raise IntegrityError(f"{self.path!r}: mode must be an integer")
        if not 0 <= self.mode <= 0o7777:
            raise IntegrityError(f"{self.path!r}: mode {self.mode} is not permission bits")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "mode": self.mode}

    @classmethod
    def from_dict(cls, data: object, where: str = "file") -> FileEntry:
        doc = _Object(data, where, ("path", "size", "sha256", "mode"))
        return cls(doc.text("path"), doc.integer("size"), doc.text("sha256"), doc.integer("mode"))


ATTEMPT_OUTCOMES = ("succeeded", "failed", "timed out", "cancelled", "lost", "moved")


@record
class AttemptEntry:
    """One attempt at a task: its host, start and end in seconds from the run's start,
    how it ended (:data:`ATTEMPT_OUTCOMES`; "lost": its host went away mid-task,
    "moved": stopped to run on a faster host that joined) and its exit code if any."""

    host: str
    start_s: float
    end_s: float
    outcome: str
    exit_code: int | None = None

    def __post_init__(self) -> None:
        where = f"attempt on {self.host!r}"
        if not isinstance(self.host, str) or not self.host:
            raise IntegrityError("attempt: host must be a host name")
        if self.outcome not in ATTEMPT_OUTCOMES:
            raise IntegrityError(f"{where}: outcome must be one of {', '.join(ATTEMPT_OUTCOMES)}")
        object.__setattr__(self, "start_s", _duration(self.start_s, where))
        object.__setattr__(self, "end_s", _duration(self.end_s, where))
        if self.end_s < self.start_s:
            raise IntegrityError(f"{where}: it ends before it starts")
        if self.exit_code is not None and (
            isinstance(self.exit_code, bool) or not isinstance(self.exit_code, int)
        ):
            raise IntegrityError(f"{where}: exit_code must be an integer or null")

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "attempt") -> AttemptEntry:
        doc = _Object(data, where, ("host", "start_s", "end_s", "outcome", "exit_code"))
        start, end = doc.optional_number("start_s"), doc.optional_number("end_s")
        if start is None or end is None:
            raise IntegrityError(f"manifest: {where}: start_s and end_s must be numbers")
        return cls(
            host=doc.text("host"),
            start_s=start,
            end_s=end,
            outcome=doc.text("outcome"),
            exit_code=doc.optional_integer("exit_code"),
        )


@record
class TaskEntry:
    """One task of the run: where it ran last, how it ended, what it produced.

    ``host``, ``exit_code`` and ``duration_s`` are None for a task that never ran
    (skipped, cancelled). ``status`` is a TaskStatus value (``"succeeded"``, ...);
    ``duration_s`` is of the last attempt. ``files`` are kept sorted by path.
    """

    name: str
    host: str | None
    command: str
    status: str
    exit_code: int | None
    attempts: int
    duration_s: float | None
    files: tuple[FileEntry, ...] = ()
    timeline: tuple[AttemptEntry, ...] = ()  # every attempt, lost ones included
    #: Where its files were placed for use (absolute): the workspace, or ``DIR/<task>``
    #: of ``--artifacts DIR`` (``installed_kind`` "artifacts": meshrun's own directory,
    #: so a file there that the manifest does not list is reported). None: not placed.
    installed_to: str | None = None
    installed_kind: str | None = None  # "workspace" | "artifacts"

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        _safe_name(self.name, "task name")
        for value, what in ((self.command, "command"), (self.status, "status")):
            if not isinstance(value, str):
                raise IntegrityError(f"{where}: {what} must be a string")
        if not self.status:
            raise IntegrityError(f"{where}: status is empty")
        if self.host is not None and (not isinstance(self.host, str) or not self.host):
            raise IntegrityError(f"{where}: host must be a host name or null")
        if self.exit_code is not None and (
            isinstance(self.exit_code, bool) or not isinstance(self.exit_code, int)
        ):
            raise IntegrityError(f"{where}: exit_code must be an integer or null")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise IntegrityError(f"{where}: attempts must be an integer")
        if self.attempts < 0:
            raise IntegrityError(f"{where}: attempts must be >= 0")
        if self.duration_s is not None:
            object.__setattr__(self, "duration_s", _duration(self.duration_s, where))
        if self.installed_to is not None and (
            not isinstance(self.installed_to, str) or not self.installed_to.startswith("/")
        ):
            raise IntegrityError(f"{where}: installed_to must be an absolute path or null")
        if self.installed_kind not in (None, "workspace", "artifacts"):
            raise IntegrityError(f"{where}: installed_kind must be workspace, artifacts or null")
        files = tuple(sorted(self.files, key=lambda f: f.path))
        for before, after in pairwise(files):
            if before.path == after.path:
                raise IntegrityError(f"{where}: file {before.path!r} is listed twice")
        object.__setattr__(self, "files", files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "command": self.command,
            "status": self.status,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "duration_s": self.duration_s,
            "files": [f.to_dict() for f in self.files],
            "timeline": [a.to_dict() for a in self.timeline],
            "installed_to": self.installed_to,
            "installed_kind": self.installed_kind,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "task") -> TaskEntry:
        keys = ("name", "host", "command", "status", "exit_code", "attempts", "duration_s")
        # "timeline" is optional: manifests written before it existed still verify.
        doc = _Object(
            data, where, (*keys, "files"), optional=("timeline", "installed_to", "installed_kind")
        )
        name = doc.text("name")
        where = f"tasks[{name!r}]"
        files = tuple(
            FileEntry.from_dict(item, f"{where}.files[{i}]")
            for i, item in enumerate(doc.array("files"))
        )
        timeline = tuple(
            AttemptEntry.from_dict(item, f"{where}.timeline[{i}]")
            for i, item in enumerate(doc.array("timeline") if doc.has("timeline") else [])
        )
        return cls(
            name=name,
            host=doc.optional_text("host"),
            command=doc.text("command"),
            status=doc.text("status"),
            exit_code=doc.optional_integer("exit_code"),
            attempts=doc.integer("attempts"),
            duration_s=doc.optional_number("duration_s"),
            files=files,
            timeline=timeline,
            installed_to=doc.optional_text("installed_to") if doc.has("installed_to") else None,
            installed_kind=(
                doc.optional_text("installed_kind") if doc.has("installed_kind") else None
            ),
        )


@record
class HostEntry:
    """A host of the run; ``host_key_fingerprint`` (``SHA256:...``) is None for local."""

    name: str
    address: str
    host_key_fingerprint: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise IntegrityError(f"host {self.name!r}: name must be a non-empty string")
        if not isinstance(self.address, str):
            raise IntegrityError(f"host {self.name!r}: address must be a string")
        fp = self.host_key_fingerprint
        if fp is not None and (not isinstance(fp, str) or not fp):
            raise IntegrityError(f"host {self.name!r}: host_key_fingerprint must be a string")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "host_key_fingerprint": self.host_key_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "host") -> HostEntry:
        doc = _Object(data, where, ("name", "address", "host_key_fingerprint"))
        return cls(doc.text("name"), doc.text("address"), doc.optional_text("host_key_fingerprint"))


@record(kw_only=True)
class Manifest:
    """One run. Times are aware datetimes, kept in UTC to the millisecond.

    Construction normalizes (sorting, rounding) and validates: a task's host must be one
    of ``hosts``, names are unique, every value is well-formed; anything else is an
    IntegrityError. So ``Manifest.from_dict(m.to_dict()) == m`` always holds.
    """

    run_id: str
    started: datetime
    ended: datetime
    coordinator: str
    command_line: tuple[str, ...]
    hosts: tuple[HostEntry, ...]
    tasks: tuple[TaskEntry, ...]
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if self.schema != SCHEMA:
            raise IntegrityError(
                f"manifest schema {self.schema!r} is not supported (this meshrun reads {SCHEMA})",
                fix="verify it with the meshrun version that wrote it, or a newer one",
            )
        for value, what in ((self.run_id, "run_id"), (self.coordinator, "coordinator")):
            if not isinstance(value, str) or not value:
                raise IntegrityError(f"manifest: {what} must be a non-empty string")
        object.__setattr__(self, "started", _utc_ms(self.started, "started"))
        object.__setattr__(self, "ended", _utc_ms(self.ended, "ended"))
        command_line = tuple(self.command_line)
        if not all(isinstance(arg, str) for arg in command_line):
            raise IntegrityError("manifest: command_line must be a list of strings")
        object.__setattr__(self, "command_line", command_line)
        hosts = tuple(sorted(self.hosts, key=lambda h: h.name))
        tasks = tuple(sorted(self.tasks, key=lambda t: t.name))
        _unique([h.name for h in hosts], "host")
        _unique([t.name for t in tasks], "task")
        known = {h.name for h in hosts}
        for task in tasks:
            if task.host is not None and task.host not in known:
                raise IntegrityError(
                    f"manifest: task {task.name!r} ran on {task.host!r}, which is not in hosts"
                )
        object.__setattr__(self, "hosts", hosts)
        object.__setattr__(self, "tasks", tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "run_id": self.run_id,
            "started": _format_time(self.started),
            "ended": _format_time(self.ended),
            "coordinator": self.coordinator,
            "command_line": list(self.command_line),
            "hosts": [h.to_dict() for h in self.hosts],
            "tasks": [t.to_dict() for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """The manifest a JSON document describes; IntegrityError if it is malformed."""
        if isinstance(data, dict) and data.get("schema", SCHEMA) != SCHEMA:
            schema = data["schema"]
            raise IntegrityError(
                f"manifest schema {schema!r} is not supported (this meshrun reads {SCHEMA})",
                fix="verify it with the meshrun version that wrote it, or a newer one",
            )
        keys = ("schema", "run_id", "started", "ended", "coordinator", "command_line")
        doc = _Object(data, "manifest", (*keys, "hosts", "tasks"))
        command_line = doc.array("command_line")
        hosts = tuple(
            HostEntry.from_dict(item, f"hosts[{i}]") for i, item in enumerate(doc.array("hosts"))
        )
        tasks = tuple(
            TaskEntry.from_dict(item, f"tasks[{i}]") for i, item in enumerate(doc.array("tasks"))
        )
        return cls(
            schema=doc.integer("schema"),
            run_id=doc.text("run_id"),
            started=_parse_time(doc.text("started"), "started"),
            ended=_parse_time(doc.text("ended"), "ended"),
            coordinator=doc.text("coordinator"),
            command_line=tuple(command_line),
            hosts=hosts,
            tasks=tasks,
        )

    def files(self) -> list[tuple[TaskEntry, FileEntry]]:
        """Every listed file with its task, in layout order (task, then path)."""
        return [(task, entry) for task in self.tasks for entry in task.files]


def run_manifest(
    *,
    run_id: str,
    started_at: float,
    duration_s: float,
    command_line: Sequence[str],
    hosts: Sequence[HostEntry],
    tasks: Sequence[TaskEntry],
) -> Manifest:
    """The manifest of a run on this coordinator that started at ``started_at`` (wall
    clock, seconds) and lasted ``duration_s``: what dispatch and fleet runs both write."""
    return Manifest(
        run_id=run_id,
        started=datetime.fromtimestamp(started_at, UTC),
        ended=datetime.fromtimestamp(started_at + duration_s, UTC),
        coordinator=socket.gethostname(),
        command_line=tuple(command_line),
        hosts=tuple(hosts),
        tasks=tuple(tasks),
    )


def canonical_bytes(manifest: Manifest) -> bytes:
    """The bytes that are written and signed (see the module docstring)."""
    text = json.dumps(
        manifest.to_dict(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8") + b"\n"


def parse_manifest(data: bytes, *, source: str = MANIFEST_NAME) -> Manifest:
    """The manifest in ``data`` (any JSON spelling); IntegrityError naming ``source``."""
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        raise IntegrityError(f"{source}: not UTF-8 text") from None
    except ValueError as exc:
        raise IntegrityError(f"{source}: not valid JSON: {exc}") from None
    try:
        return Manifest.from_dict(document)
    except IntegrityError as exc:
        raise IntegrityError(f"{source}: {exc.message}", fix=exc.fix) from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# -- hashing ---------------------------------------------------------------------------


def hash_file(path: Path, *, root: Path | None = None) -> FileEntry:
    """Size, sha256 and permission bits of the regular file ``path``, read in 1 MiB chunks.

    The entry's path is ``path`` relative to ``root`` (default: its parent, i.e. the
    bare file name). Symlinks are not followed: a symlink, a directory, a FIFO or an
    unreadable file is an IntegrityError naming it. ``size`` counts the bytes hashed.
    """
    path = Path(path)
    base = path.parent if root is None else Path(root)
    try:
        relative = path.relative_to(base).as_posix()
    except ValueError:
        raise IntegrityError(f"{path} is not inside {base}") from None
    size, sha256, mode = file_digest(str(path))
    return FileEntry(relative, size, sha256, mode)


def file_digest(path: str) -> tuple[int, str, int]:
    """Size, sha256 (hex) and permission bits of the regular file at ``path``, streamed.

    The lean core of :func:`hash_file` (plain strings: it runs once per file pulled).
    Symlinks are not followed; anything but a readable regular file is an IntegrityError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{path}: is a symlink, not a regular file") from None
        raise IntegrityError(f"{path}: cannot read: {_reason(exc)}") from None
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(f"{path}: not a regular file")
        # Sized to the file: a fresh zeroed 1 MiB per small file costs more than its hash.
        buffer = bytearray(min(CHUNK_BYTES, info.st_size + 1))
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return size, digest.hexdigest(), stat.S_IMODE(info.st_mode)


def hash_tree(root: Path) -> tuple[FileEntry, ...]:
    """Every file under ``root``, hashed, paths relative to ``root``, sorted.

    For building a task's entry from its collected outputs. Anything that is not a
    regular file (a symlink, a FIFO) is an IntegrityError naming it: outputs are files.
    """
    entries, errors = _scan(Path(root))
    if errors:
        raise IntegrityError(errors[0])
    odd = sorted(rel for rel, kind in entries.items() if kind != "file")
    if odd:
        raise IntegrityError(
            f"{Path(root) / odd[0]}: is a {entries[odd[0]]}, not a regular file",
            fix="outputs must be regular files inside the task's directory",
        )
    return tuple(hash_file(Path(root) / rel, root=Path(root)) for rel in sorted(entries))


def _scan(root: Path) -> tuple[dict[str, str], list[str]]:
    """Everything under ``root`` but directories: relative path -> "file" / "symlink" /
    "special", without following symlinks; plus the errors met (a missing root is empty).
    """
    found: dict[str, str] = {}
    errors: list[str] = []

    def on_error(exc: OSError) -> None:
        if not (isinstance(exc, FileNotFoundError) and Path(exc.filename) == root):
            errors.append(f"{exc.filename}: cannot list: {_reason(exc)}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            full = here / name
            try:
                mode = full.lstat().st_mode
            except OSError as exc:
                errors.append(f"{full}: cannot stat: {_reason(exc)}")
                continue
            if stat.S_ISDIR(mode):
                continue
            kind = "file" if stat.S_ISREG(mode) else "symlink" if stat.S_ISLNK(mode) else "special"
            found[full.relative_to(root).as_posix()] = kind
    return found, errors


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# -- writing ---------------------------------------------------------------------------


def write_manifest(
    run_dir: Path, manifest: Manifest, signing_key: Ed25519PrivateKey | None = None
) -> Path:
    """Write ``run_dir/manifest.json`` (and, with a key, ``manifest.json.sig``).

    Each file is written aside and renamed into place, so a reader sees the old file
    or the new one, never half of one. Without a key, a stale ``.sig`` is removed.
    Returns the manifest's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = canonical_bytes(manifest)
    manifest_path = run_dir / MANIFEST_NAME
    signature_path = run_dir / SIGNATURE_NAME
    atomic_write(manifest_path, data)
    if signing_key is None:
        signature_path.unlink(missing_ok=True)
    else:
        atomic_write(signature_path, sshsig_sign(data, signing_key).encode("ascii"))
    return manifest_path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, synced, renamed."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# -- verifying -------------------------------------------------------------------------


class SignatureStatus(enum.Enum):
    TRUSTED = "trusted"  # signed by one of the allowed keys
    UNTRUSTED = "untrusted"  # a sound signature, but no allowed keys were given
    UNSIGNED = "unsigned"  # no .sig, and no allowed keys were given
    INVALID = "invalid"  # bad, missing while required, or by a key that is not allowed


@record
class ChangedFile:
    """A listed file that is there but differs. ``path`` is relative to the root.

    ``differs`` names what: ``"type"`` (not a regular file; ``actual`` is None and
    ``kind`` says what it is), else some of ``"size"``, ``"sha256"``, ``"mode"``.
    """

    path: str
    task: str
    differs: tuple[str, ...]
    expected: FileEntry
    actual: FileEntry | None
    kind: str = "file"

    def describe(self) -> str:
        if self.actual is None:
            return f"{self.path}: is a {self.kind}, not a regular file"
        parts = []
        if "size" in self.differs:
            parts.append(f"size {self.expected.size} -> {self.actual.size} bytes")
        if "sha256" in self.differs:
            parts.append("content (sha256) differs")
        if "mode" in self.differs:
            parts.append(f"mode {self.expected.mode:04o} -> {self.actual.mode:04o}")
        return f"{self.path}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "task": self.task,
            "differs": list(self.differs),
            "kind": self.kind,
            "expected": self.expected.to_dict(),
            "actual": None if self.actual is None else self.actual.to_dict(),
        }


@record
class VerifyReport:
    """What :func:`verify_directory` found; ``ok`` only if everything is exact.

    ``missing``, ``unlisted`` and ``changed`` paths are relative to ``root``
    (``<task>/<path>``); ``errors`` are one-line messages (signature, unreadable
    files, a malformed manifest).
    """

    directory: str
    root: str
    signature: SignatureStatus
    signer_fingerprint: str | None
    manifest: Manifest | None
    files_checked: int = 0
    missing: tuple[str, ...] = ()
    changed: tuple[ChangedFile, ...] = ()
    unlisted: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what was not checked, and why (not failures)

    @property
    def ok(self) -> bool:
        return (
            self.manifest is not None
            and self.signature is not SignatureStatus.INVALID
            and not (self.missing or self.changed or self.unlisted or self.errors)
        )

    def problems(self) -> list[str]:
        """One line per problem, each naming its file: what a console prints."""
        return [
            *self.errors,
            *(f"{path}: missing" for path in self.missing),
            *(change.describe() for change in self.changed),
            *(f"{path}: not in the manifest" for path in self.unlisted),
        ]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document of ``meshrun verify`` (schema 1)."""
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "directory": self.directory,
            "root": self.root,
            "run_id": None if self.manifest is None else self.manifest.run_id,
            "signature": self.signature.value,
            "signer_fingerprint": self.signer_fingerprint,
            "files_checked": self.files_checked,
            "missing": list(self.missing),
            "changed": [change.to_dict() for change in self.changed],
            "unlisted": list(self.unlisted),
            "errors": list(self.errors),
            "notes": list(self.notes),
        }


def verify_directory(
    directory: Path,
    *,
    allowed_keys: Sequence[Ed25519PublicKey] | None,
    root: Path | None = None,
    ignore: Sequence[Path] = (),
) -> VerifyReport:
    """Check ``directory/manifest.json``, its signature, and every file it lists.

    With ``allowed_keys`` the manifest must carry a signature by one of them (a
    missing ``.sig`` fails); with None the signature, if any, is only checked for
    soundness and the report says ``untrusted`` or ``unsigned``. Files are looked up at
    ``<root>/<task>/<path>`` (``root`` defaults to ``directory``) without following
    symlinks; everything under ``root`` that the manifest does not list is reported as
    unlisted, except ``directory``'s own manifest.json and manifest.json.sig and the
    paths in ``ignore`` (a manifest copy in ``root``). Problems are data in the report;
    only a ``directory`` that is not one is an InputError.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    if not directory.is_dir():
        raise InputError(
            f"{directory}: not a directory",
            fix="pass a run directory (.meshrun/runs/<run-id>) or an artifacts directory",
        )
    manifest_path = directory / MANIFEST_NAME
    signature_path = directory / SIGNATURE_NAME
    errors: list[str] = []

    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        errors.append(f"{manifest_path}: cannot read the manifest: {_reason(exc)}")
        unread = SignatureStatus.UNSIGNED if allowed_keys is None else SignatureStatus.INVALID
        return VerifyReport(
            directory=str(directory),
            root=str(root),
            signature=unread,
            signer_fingerprint=None,
            manifest=None,
            errors=tuple(errors),
        )

    signature, signer = _check_signature(data, signature_path, allowed_keys, errors)
    try:
        manifest: Manifest | None = parse_manifest(data, source=str(manifest_path))
    except IntegrityError as exc:
        errors.append(str(exc))
        manifest = None
    if manifest is None:
        return VerifyReport(
            directory=str(directory),
            root=str(root),
            signature=signature,
            signer_fingerprint=signer,
            manifest=None,
            errors=tuple(errors),
        )

    present, scan_errors = _scan(root)
    errors.extend(scan_errors)
    own = {_absolute(manifest_path), _absolute(signature_path), *map(_absolute, ignore)}
    expected: dict[str, tuple[TaskEntry, FileEntry]] = {
        f"{task.name}/{entry.path}": (task, entry) for task, entry in manifest.files()
    }
    missing: list[str] = []
    changed: list[ChangedFile] = []
    checked = 0
    for rel in sorted(expected):
        task, entry = expected[rel]
        kind = present.get(rel)
        if kind is None:
            missing.append(rel)
            continue
        if kind != "file":
            changed.append(ChangedFile(rel, task.name, ("type",), entry, None, kind))
            continue
        try:
            actual = hash_file(root / rel, root=root / task.name)
        except IntegrityError as exc:
            errors.append(str(exc))
            continue
        checked += 1
        differs = _differs(entry, actual)
        if differs:
            changed.append(ChangedFile(rel, task.name, differs, entry, actual))
    unlisted = sorted(
        rel for rel in present if rel not in expected and _absolute(root / rel) not in own
    )
    return VerifyReport(
        directory=str(directory),
        root=str(root),
        signature=signature,
        signer_fingerprint=signer,
        manifest=manifest,
        files_checked=checked,
        missing=tuple(missing),
        changed=tuple(changed),
        unlisted=tuple(unlisted),
        errors=tuple(errors),
    )


def _differs(expected: FileEntry, actual: FileEntry) -> tuple[str, ...]:
    """What of a file is not as listed: some of ``size``, ``sha256``, ``mode``."""
    return tuple(
        f for f in ("size", "sha256", "mode") if getattr(actual, f) != getattr(expected, f)
    )


def _check_signature(
    data: bytes,
    signature_path: Path,
    allowed_keys: Sequence[Ed25519PublicKey] | None,
    errors: list[str],
) -> tuple[SignatureStatus, str | None]:
    try:
        armored = signature_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if allowed_keys is None:
            return SignatureStatus.UNSIGNED, None
        errors.append(f"{signature_path}: missing, so the manifest is not signed")
        return SignatureStatus.INVALID, None
    except (OSError, UnicodeDecodeError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else "not text"
        errors.append(f"{signature_path}: cannot read the signature: {reason}")
        return SignatureStatus.INVALID, None
    try:
        signer = sshsig_verify(data, armored, allowed=allowed_keys)
    except IntegrityError as exc:
        errors.append(f"{signature_path}: {exc}")
        return SignatureStatus.INVALID, None
    status = SignatureStatus.UNTRUSTED if allowed_keys is None else SignatureStatus.TRUSTED
    return status, fingerprint(signer)


def _absolute(path: Path) -> str:
    return os.path.abspath(path)


# -- helpers ---------------------------------------------------------------------------


def _duration(value: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IntegrityError(f"{where}: duration_s must be a number or null")
    if not math.isfinite(value) or value < 0:
        raise IntegrityError(f"{where}: duration_s must be a finite number >= 0")
    return round(float(value), DURATION_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _utc_ms(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise IntegrityError(f"manifest: {what} must be a timezone-aware datetime")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _format_time(value: datetime) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"


def _parse_time(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise IntegrityError(f"manifest: {what} {text!r} is not an ISO 8601 time with a zone (…Z)")
    return value


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise IntegrityError(f"manifest: {what} {name!r} is listed twice")
        seen.add(name)


class _Object:
    """A JSON object with exactly ``keys``; typed getters raise IntegrityError."""

    def __init__(
        self, data: object, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> None:
        if not isinstance(data, dict):
            raise IntegrityError(f"manifest: {where} must be an object")
        missing = [k for k in keys if k not in data]
        unknown = sorted(k for k in data if k not in keys and k not in optional)
        if missing:
            raise IntegrityError(f"manifest: {where} lacks {', '.join(missing)}")
        if unknown:
            raise IntegrityError(
                f"manifest: {where} has unknown keys {', '.join(map(repr, unknown))}",
                fix="it was written by a newer meshrun, or edited by hand",
            )
        self._data = data
        self._where = where

    def _fail(self, key: str, expected: str) -> IntegrityError:
        return IntegrityError(f"manifest: {self._where}.{key} must be {expected}")

    def text(self, key: str) -> str:
        value = self._data[key]
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self._data[key] is None else self.text(key)

    def integer(self, key: str) -> int:
        value = self._data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        return None if self._data[key] is None else self.integer(key)

    def optional_number(self, key: str) -> float | None:
        value = self._data[key]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number or null")
        return float(value)

    def has(self, key: str) -> bool:
        """Whether an optional key is there."""
        return key in self._data

    def array(self, key: str) -> list[Any]:
        value = self._data[key]
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value


__all__ = [
    "ATTEMPT_OUTCOMES",
    "CHUNK_BYTES",
    "DISPATCH_FILES_DIR",
    "FLEET_FILES_DIR",
    "MANIFEST_NAME",
    "REPORT_NAME",
    "RESERVED_NAMES",
    "SCHEMA",
    "SIGNATURE_NAME",
    "AttemptEntry",
    "ChangedFile",
    "FileEntry",
    "HostEntry",
    "Manifest",
    "SignatureStatus",
    "TaskEntry",
    "VerifyReport",
    "atomic_write",
    "canonical_bytes",
    "file_digest",
    "hash_file",
    "hash_tree",
    "parse_manifest",
    "run_manifest",
    "safe_relative_path",
    "verify_directory",
    "write_manifest",
]


def verify_run(directory: Path, *, allowed_keys: Sequence[Ed25519PublicKey] | None) -> VerifyReport:
    """:func:`verify_directory` for what users pass to ``meshrun verify``.

    A run directory (``.meshrun/runs/<id>``, which has report.json beside the manifest)
    keeps its files where its kind of run puts them: a dispatch run under
    ``artifacts/<task>/``; a fleet run (exec/run, report.json ``"kind": "fleet"``) under
    ``hosts/<host>/``, or in the ``pull_dir`` its report names when that lies elsewhere.
    Any other directory (``--artifacts``, ``--pull-dir``) holds a manifest copy and is
    itself the root of ``<task>/<path>``; a fleet run's ``hosts/`` is verified as its
    run directory.
    """
    directory = Path(directory)
    if (
        directory.name == FLEET_FILES_DIR
        and not (directory / MANIFEST_NAME).exists()
        and _run_kind(directory.parent)[0] == "fleet"
    ):
        directory = directory.parent
    kind, pull_dir = _run_kind(directory)
    ignore: list[Path] = []
    if kind is None:
        root = directory
    elif kind == "fleet":
        root = directory / FLEET_FILES_DIR
        elsewhere = Path(pull_dir) if pull_dir is not None else None
        if not root.exists() and elsewhere is not None and (elsewhere / MANIFEST_NAME).is_file():
            root = elsewhere  # --pull-dir outside the run directory: it has a manifest copy
            ignore = [root / MANIFEST_NAME, root / SIGNATURE_NAME]
    else:
        root = directory / DISPATCH_FILES_DIR
    report = verify_directory(directory, allowed_keys=allowed_keys, root=root, ignore=ignore)
    if kind == "dispatch" and report.manifest is not None:
        report = _with_installed(report, report.manifest)
    return report


def _with_installed(report: VerifyReport, manifest: Manifest) -> VerifyReport:
    """``report`` plus the copies that ship: each task's files where the run placed
    them (the workspace, ``--artifacts DIR``). A changed byte, a missing file and, in
    ``--artifacts DIR``, a file the manifest does not list are each named by path; a
    place that is not on this machine (the run directory was copied elsewhere) is said,
    not failed."""
    missing, changed, unlisted, notes = [], [], [], []
    checked = 0
    for task in manifest.tasks:
        if task.installed_to is None:
            continue
        dest = Path(task.installed_to)
        if not dest.is_dir():
            if task.files:
                notes.append(f"{task.name}: its installed copies in {dest} are not here")
            continue
        for entry in task.files:
            target = dest / entry.path
            if not target.exists() and not target.is_symlink():
                missing.append(str(target))
                continue
            if target.is_symlink() or not target.is_file():
                # The kinds verify_directory names, and "directory" (a scan skips those).
                kind = (
                    "symlink"
                    if target.is_symlink()
                    else "directory"
                    if target.is_dir()
                    else "special"
                )
                changed.append(ChangedFile(str(target), task.name, ("type",), entry, None, kind))
                continue
            try:
                actual = hash_file(target, root=dest)
            except IntegrityError as exc:
                missing.append(f"{target} ({exc})")
                continue
            checked += 1
            differs = _differs(entry, actual)
            if differs:
                changed.append(ChangedFile(str(target), task.name, differs, entry, actual))
        if task.installed_kind == "artifacts":
            present, _ = _scan(dest)
            listed = {entry.path for entry in task.files}
            unlisted += [str(dest / rel) for rel in sorted(present) if rel not in listed]
    return replace(
        report,
        files_checked=report.files_checked + checked,
        missing=(*report.missing, *missing),
        changed=(*report.changed, *changed),
        unlisted=(*report.unlisted, *unlisted),
        notes=(*report.notes, *notes),
    )


def _run_kind(directory: Path) -> tuple[str | None, str | None]:
    """(``"dispatch"`` or ``"fleet"``, the fleet run's pull_dir) for a run directory,
    (None, None) for any other. The report is not signed: it only says where to look;
    what is found there is checked against the signed manifest."""
    try:
        data = (directory / REPORT_NAME).read_bytes()
    except OSError:
        return None, None
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("kind") == "fleet":
        pull_dir = document.get("pull_dir")
        return "fleet", pull_dir if isinstance(pull_dir, str) else None
    return "dispatch", None

"""known_hosts files as OpenSSH reads them: patterns, hashed names, markers, several files.

paramiko's ``HostKeys`` stops at the first ``@cert-authority`` or ``@revoked`` line and
knows nothing of negated patterns or of several files, so meshrun reads known_hosts
itself (pure, stdlib only) and answers one question per host key: is this key trusted
for this name, unknown, changed, or revoked?

- Names are matched like ``ssh``: comma-separated patterns with ``*``/``?`` wildcards and
  ``!`` negation, or a hashed ``|1|salt|hmac`` name (``HashKnownHosts``).
- ``@revoked`` keys are refused whatever else the files say.
- ``@cert-authority`` lines trust host *certificates*; meshrun's SSH library does not
  verify host certificates, so such a line never makes a plain key trusted, and the
  "unknown key" message says so.
- Bad lines are skipped (as ``ssh`` does), never fatal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Sequence
from enum import Enum

from meshrun import resources
from meshrun.records import record
from meshrun.transport.sshconfig import match_pattern_list

__all__ = ["KnownHosts", "KnownHostsEntry", "Verdict", "hashed_name", "host_key_name"]

log = logging.getLogger(__name__)

_MAX_FILE_BYTES = 64 * 1024 * 1024


def host_key_name(address: str, port: int, alias: str | None = None) -> str:
    """The name a host's key is filed under: ``HostKeyAlias`` as is, else ``addr`` on
    port 22 and ``[addr]:port`` otherwise (OpenSSH's ``put_host_port``)."""
    if alias:
        return alias
    return address if port == 22 else f"[{address}]:{port}"


def hashed_name(name: str, salt: bytes | None = None) -> str:
    """``|1|salt|hmac-sha1(salt, name)``, base64, as ``ssh-keygen -H`` writes."""
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _hashed_parts(field: str) -> tuple[bytes, bytes] | None:
    """``|1|salt|digest`` -> (salt, digest), decoded; None if malformed."""
    parts = field.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return None
    try:
        return base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return None


def _literal_names(field: str) -> list[str] | None:
    """The lowercased names of a pattern field without wildcards or negation, else None."""
    if field.startswith("|") or any(c in field for c in "*?!"):
        return None
    return [n.lower() for n in field.split(",") if n]


@record
class KnownHostsEntry:
    """One usable line: which names, which key, and its marker."""

    path: str
    line: int
    marker: str | None  # None, "cert-authority" or "revoked"
    names: str  # the raw host-pattern field
    key_type: str
    blob: bytes

    def matches(self, name: str) -> bool:
        if self.names.startswith("|"):
            parts = _hashed_parts(self.names)
            if parts is None:
                return False
            salt, want = parts
            return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), want)
        return match_pattern_list(name.lower(), self.names.split(","))


def parse_line(line: str, *, path: str = "?", lineno: int = 0) -> KnownHostsEntry | None:
    """One known_hosts line -> entry; None for comments, blanks and lines ssh skips."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    marker = None
    if fields[0].startswith("@"):
        marker = fields[0][1:]
        fields = fields[1:]
        if marker not in ("cert-authority", "revoked"):
            return None
    if len(fields) < 3:
        return None
    names, key_type, encoded = fields[0], fields[1], fields[2]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return KnownHostsEntry(path, lineno, marker, names, key_type, blob)


class Verdict(Enum):
    TRUSTED = "trusted"
    UNKNOWN = "unknown"  # no plain key for this name in any file
    CHANGED = "changed"  # a key of this type is listed and it is another one
    OTHER_TYPE = "other-type"  # only keys of other types are listed
    REVOKED = "revoked"


@record
class Check:
    verdict: Verdict
    listed_in: str | None = None  # the file that decided (trusted, changed, revoked)
    listed_types: tuple[str, ...] = ()  # key types known for the name
    has_cert_authority: bool = False  # a @cert-authority line covers the name


class _File:
    """One file's entries, read once and appended to under a lock.

    Indexed so that a fleet's lookups stay linear in its size: lines naming hosts
    literally (most files) are found by name; only pattern lines and hashed lines
    (one HMAC each, as OpenSSH computes too, with their salts decoded once) are scanned.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.entries: list[KnownHostsEntry] = []
        self._by_name: dict[str, list[int]] = {}
        self._patterns: list[int] = []
        self._hashed: list[tuple[int, bytes, bytes]] = []
        try:
            if os.path.getsize(path) > _MAX_FILE_BYTES:
                log.warning("known_hosts %s is larger than 64 MiB; not read", path)
                return
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, start=1):
                    entry = parse_line(line, path=path, lineno=n)
                    if entry is not None:
                        self.append(entry)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Out of descriptors here is not an empty file (every key would look
            # unknown): ResourceExhausted, and the file is read again next time.
            shortage = resources.resource_error(exc, f"reading known_hosts {path}")
            if shortage is not None:
                raise shortage from exc
            log.warning("could not read known_hosts %s: %s", path, exc)

    def append(self, entry: KnownHostsEntry) -> None:
        index = len(self.entries)
        self.entries.append(entry)
        if entry.names.startswith("|"):
            parts = _hashed_parts(entry.names)
            if parts is not None:
                self._hashed.append((index, *parts))
            return
        literal = _literal_names(entry.names)
        if literal is None:
            self._patterns.append(index)
            return
        for name in dict.fromkeys(literal):
            self._by_name.setdefault(name, []).append(index)

    def matching(self, name: str) -> list[KnownHostsEntry]:
        """The entries whose names match ``name``, in file order (hold ``lock``)."""
        found = list(self._by_name.get(name.lower(), ()))
        found += [i for i in self._patterns if self.entries[i].matches(name)]
        if self._hashed:
            raw = name.encode()
            found += [
                i
                for i, salt, want in self._hashed
                if hmac.compare_digest(hmac.new(salt, raw, hashlib.sha1).digest(), want)
            ]
        return [self.entries[i] for i in sorted(found)]


class KnownHosts:
    """The known_hosts files of a run, each read once and shared by every host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}

    def _file(self, path: str) -> _File:
        with self._lock:
            found = self._files.get(path)
            if found is None:
                found = self._files[path] = _File(path)
            return found

    def listed_types(self, files: Sequence[str], name: str) -> set[str]:
        """Key types listed (plainly) for ``name``: asked for first in the handshake."""
        types: set[str] = set()
        for path in files:
            f = self._file(path)
            with f.lock:
                types.update(e.key_type for e in f.matching(name) if e.marker is None)
        return types

    def check(self, files: Sequence[str], name: str, key_type: str, blob: bytes) -> Check:
        """How ``files`` (in order) judge ``key_type``/``blob`` presented as ``name``."""
        trusted_in = changed_in = None
        types: list[str] = []
        has_ca = False
        for path in files:
            f = self._file(path)
            with f.lock:
                entries = f.matching(name)
            for e in entries:
                if e.marker == "revoked":
                    if e.blob == blob:
                        return Check(Verdict.REVOKED, listed_in=path)
                    continue
                if e.marker == "cert-authority":
                    has_ca = True
                    continue
                if e.key_type not in types:
                    types.append(e.key_type)
                if e.key_type == key_type:
                    if e.blob == blob:
                        trusted_in = trusted_in or path
                    else:
                        changed_in = changed_in or path
        if trusted_in is not None:
            # OpenSSH accepts a key listed anywhere even if another line for the same
            # name and type differs (several keys per name are legal).
            return Check(Verdict.TRUSTED, trusted_in, tuple(types), has_ca)
        if changed_in is not None:
            return Check(Verdict.CHANGED, changed_in, tuple(types), has_ca)
        if types:
            return Check(Verdict.OTHER_TYPE, None, tuple(types), has_ca)
        return Check(Verdict.UNKNOWN, None, (), has_ca)

    def add(self, path: str, name: str, key_type: str, base64_key: str, *, hashed: bool) -> None:
        """Append ``name``'s key to ``path`` (``--accept-new-host-keys``)."""
        f = self._file(path)
        shown = hashed_name(name) if hashed else name
        line = f"{shown} {key_type} {base64_key}\n"
        with f.lock:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a", encoding="ascii") as out:
                out.write(line)
            entry = parse_line(line, path=path, lineno=len(f.entries) + 1)
            if entry is not None:
                f.append(entry)

"""Ed25519 keys and SSHSIG signatures that stock OpenSSH reads and writes.

A signed manifest can be checked without meshrun::

    ssh-keygen -Y verify -f allowed_signers -I <identity> -n meshrun \\
        -s manifest.json.sig < manifest.json

so the signature is OpenSSH's SSHSIG format (``PROTOCOL.sshsig`` in the OpenSSH
sources), armored like ``ssh-keygen -Y sign`` writes it::

    byte[6]  "SSHSIG"
    uint32   1                              version
    string   publickey                      SSH wire format: string "ssh-ed25519", string key
    string   namespace                      "meshrun"
    string   reserved                       ""
    string   hash_algorithm                 "sha512" (or "sha256")
    string   signature                      string "ssh-ed25519", string 64-byte signature

and what the key signs is ``"SSHSIG" || string(namespace) || string(reserved) ||
string(hash_algorithm) || string(H(message))``. Ed25519 signatures are deterministic,
so meshrun and ``ssh-keygen -Y sign`` produce the very same bytes for the same key and
message.

Keys are Ed25519 only, read and written with ``cryptography``: OpenSSH-format private
keys (what ``ssh-keygen -t ed25519`` writes) or PEM/PKCS#8, ``ssh-ed25519 AAAA...``
public keys, and ``allowed_signers`` files (see ALLOWED SIGNERS in ssh-keygen(1)).
Keys the user names that are wrong are :class:`~meshrun.errors.InputError` (exit 2);
signatures that do not check out are :class:`~meshrun.errors.IntegrityError` (exit 4).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshrun.errors import InputError, IntegrityError
from meshrun.transport.sshkeys import sha256_fingerprint

log = logging.getLogger(__name__)

NAMESPACE = "meshrun"
HASH_ALGORITHMS = ("sha256", "sha512")
KEY_TYPE = "ssh-ed25519"

_MAGIC = b"SSHSIG"
_VERSION = 1
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_WRAP = 70  # OpenSSH's sshbuf_dtob64() line length
_ED25519_KEY_BYTES = 32
_ED25519_SIG_BYTES = 64
_OPENSSH_KEY_MAGIC = b"openssh-key-v1\0"
_OPENSSH_PRIVATE_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_PRIVATE_END = b"-----END OPENSSH PRIVATE KEY-----"
_KEY_TYPE_RE = re.compile(r"^(ssh-|ecdsa-|sk-)")
_UNENCRYPTED_FIX = (
    "meshrun cannot prompt for a passphrase: use an unencrypted signing key "
    "(`meshrun keygen` writes one) and protect it with file permissions"
)


# -- keys ------------------------------------------------------------------------------


def public_key_line(key: Ed25519PublicKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA... [comment]``: the form of a ``.pub`` file."""
    line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    return f"{line} {comment}" if comment else line


def public_key_blob(key: Ed25519PublicKey) -> bytes:
    """The SSH wire format of ``key``: string "ssh-ed25519", string 32-byte key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _string(KEY_TYPE.encode()) + _string(raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """OpenSSH's fingerprint (``ssh-keygen -l``): ``SHA256:`` + unpadded base64."""
    return sha256_fingerprint(public_key_blob(key))


def same_key(a: Ed25519PublicKey, b: Ed25519PublicKey) -> bool:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return a.public_bytes(*raw) == b.public_bytes(*raw)


def generate_keypair(path: Path, *, comment: str) -> str:
    """Write a new Ed25519 key pair; return its ``allowed_signers`` line.

    ``path`` gets the OpenSSH-format private key (unencrypted, mode 0600) and
    ``path.pub`` the public key ``ssh-ed25519 AAAA... comment``. Each file appears
    complete or not at all (written aside, then hard-linked into place), and an
    existing file is never replaced: that is an InputError naming it. ``comment`` is
    the signer's identity, e.g. ``ci@example.com``; the returned line is
    ``comment namespaces="meshrun" ssh-ed25519 AAAA...``, ready for an
    ``allowed_signers`` file. Missing parent directories are created (mode 0700).
    """
    if not comment or any(c.isspace() or c in ',"\\' or not c.isprintable() for c in comment):
        raise InputError(
            f"signer identity {comment!r} cannot be an allowed_signers principal",
            fix="use an identity without spaces, commas or quotes, e.g. ci@example.com",
        )
    path = Path(path).expanduser()
    public_path = path.with_name(path.name + ".pub")
    for target in (path, public_path):
        if target.exists() or target.is_symlink():
            raise _exists(target)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = public_key_line(key.public_key())
    _create_exclusive(path, private_pem, 0o600)
    _create_exclusive(public_path, f"{line} {comment}\n".encode(), 0o644)
    return f'{comment} namespaces="{NAMESPACE}" {line}'


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and ``mode``, atomically, never replacing a file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _write_and_close(fd, data, mode)
        try:
            os.link(tmp_name, path)  # fails if path exists: no clobbering, no window
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            _create_exclusive_without_link(path, data, mode)  # e.g. no hard links on this fs
    finally:
        os.unlink(tmp_name)


def _create_exclusive_without_link(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise _exists(path) from None
    _write_and_close(fd, data, mode)


def _write_and_close(fd: int, data: bytes, mode: int) -> None:
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # exactly ``mode``, whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _exists(path: Path) -> InputError:
    return InputError(
        f"{path} already exists; meshrun will not overwrite a key",
        fix="choose another path, or move the old key away first",
    )


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key: OpenSSH format, or PEM (PKCS#8).

    ``~`` is expanded, so ``~/.ssh/id_ed25519`` works. An encrypted key, another key
    type, or a file that is not a private key is an InputError naming the file.
    """
    path = Path(path).expanduser()
    data = _read_key_file(path, "signing key")
    if data.lstrip().startswith(b"ssh-"):
        raise InputError(
            f"{path} is a public key, not a private one",
            fix="pass the private key file (the one without .pub)",
        )
    if _is_encrypted(data):
        raise InputError(f"{path}: the signing key is encrypted", fix=_UNENCRYPTED_FIX)
    key: object
    try:
        if _OPENSSH_PRIVATE_BEGIN in data:
            key = serialization.load_ssh_private_key(data, password=None)
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise InputError(f"{path}: the signing key is encrypted", fix=_UNENCRYPTED_FIX) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(
            f"{path}: not a private key meshrun can read ({exc})",
            fix="pass an Ed25519 private key, e.g. one written by `meshrun keygen`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(
            f"{path}: a {_key_kind(key)} key cannot sign meshrun manifests",
            fix="meshrun signs with Ed25519 only: run `meshrun keygen` "
            "(or `ssh-keygen -t ed25519`) and use that key",
        )
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such {what}",
            fix="check the path, or create a key pair with `meshrun keygen`",
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def _is_encrypted(data: bytes) -> bool:
    """Whether a private key file is passphrase-protected (read from its header)."""
    if _OPENSSH_PRIVATE_BEGIN in data:
        body = data.split(_OPENSSH_PRIVATE_BEGIN, 1)[1].split(_OPENSSH_PRIVATE_END, 1)[0]
        try:
            blob = base64.b64decode(b"".join(body.split()), validate=True)
            if not blob.startswith(_OPENSSH_KEY_MAGIC):
                return False
            cipher = _Reader(blob[len(_OPENSSH_KEY_MAGIC) :]).string()
        except (binascii.Error, ValueError):
            return False  # let the loader report the damage
        return cipher != b"none"
    # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY", or a traditional PEM "Proc-Type: 4,ENCRYPTED"
    headers = [ln for ln in data.splitlines() if ln.startswith((b"-----BEGIN", b"Proc-Type:"))]
    return any(b"ENCRYPTED" in ln for ln in headers)


def _key_kind(key: object) -> str:
    name = type(key).__name__.removeprefix("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name or "non-Ed25519"


def load_public_key(source: str | Path) -> Ed25519PublicKey:
    """An ``ssh-ed25519 AAAA... [comment]`` public key, given as text or as a file.

    A :class:`~pathlib.Path` is always a file. A ``str`` is the key itself when it
    starts with a key type (``ssh-``, ``ecdsa-``, ``sk-``), otherwise a file name
    (``~`` expanded). In a file, blank lines and ``#`` comments are skipped and exactly
    one key must remain. Anything else is an InputError naming the file.
    """
    if isinstance(source, str) and _KEY_TYPE_RE.match(source.strip()):
        return _parse_public_line(source.strip(), where="public key")
    path = Path(source).expanduser()
    text = _read_key_file(path, "public key").decode("utf-8", "replace")
    if "PRIVATE KEY" in text:
        raise InputError(
            f"{path} is a private key, not a public one",
            fix=f"pass the public key instead ({path}.pub)",
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise InputError(
            f"{path}: expected one `ssh-ed25519 AAAA...` line, found {len(lines)} lines",
            fix="pass a single .pub file, or several keys with --allowed-signers",
        )
    return _parse_public_line(lines[0], where=str(path))


def _parse_public_line(line: str, *, where: str) -> Ed25519PublicKey:
    key_type = line.split(None, 1)[0]
    if key_type != KEY_TYPE:
        raise InputError(
            f"{where}: a {key_type} key cannot verify meshrun signatures",
            fix="meshrun signs with Ed25519 only: pass the `ssh-ed25519 AAAA...` key",
        )
    try:
        key = serialization.load_ssh_public_key(line.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(
            f"{where}: not a valid ssh-ed25519 public key ({exc})",
            fix="copy the whole `ssh-ed25519 AAAA...` line of the .pub file",
        ) from None
    if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - type checked above
        raise InputError(f"{where}: not an Ed25519 public key")
    return key


# -- SSHSIG ----------------------------------------------------------------------------


def sshsig_sign(
    data: bytes,
    key: Ed25519PrivateKey,
    *,
    namespace: str = NAMESPACE,
    hash_alg: str = "sha512",
) -> str:
    """The armored SSHSIG signature of ``data``, as ``ssh-keygen -Y sign`` writes it."""
    if not namespace:
        raise ValueError("an SSHSIG namespace must not be empty")
    if hash_alg not in HASH_ALGORITHMS:
        raise ValueError(f"hash_alg must be one of {HASH_ALGORITHMS}, got {hash_alg!r}")
    ns = namespace.encode("utf-8")
    signed = _signed_data(ns, hash_alg, data)
    signature = _string(KEY_TYPE.encode()) + _string(key.sign(signed))
    blob = b"".join(
        (
            _MAGIC,
            struct.pack(">I", _VERSION),
            _string(public_key_blob(key.public_key())),
            _string(ns),
            _string(b""),
            _string(hash_alg.encode()),
            _string(signature),
        )
    )
    encoded = base64.b64encode(blob).decode("ascii")
    lines = [encoded[i : i + _WRAP] for i in range(0, len(encoded), _WRAP)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def sshsig_verify(
    data: bytes,
    armored: str,
    *,
    namespace: str = NAMESPACE,
    allowed: Sequence[Ed25519PublicKey] | None,
) -> Ed25519PublicKey:
    """Check an armored SSHSIG over ``data``; return the key that made it.

    Parsing is strict: anything but one Ed25519 SSHSIG version 1 for ``namespace`` with
    an empty reserved field and a sha256/sha512 hash is refused. The signer must be one
    of ``allowed``; ``allowed=None`` checks only that the signature is sound and leaves
    trusting the returned key to the caller (it proves nothing about who signed).
    Every refusal is an IntegrityError that says what is wrong.
    """
    parsed = _parse_sshsig(armored)
    if parsed.namespace != namespace:
        raise IntegrityError(
            f"the signature is for namespace {parsed.namespace!r}, not {namespace!r}",
            fix=f"sign with `-n {namespace}` (meshrun signs manifests in that namespace)",
        )
    signed = _signed_data(namespace.encode("utf-8"), parsed.hash_alg, data)
    try:
        parsed.key.verify(parsed.signature, signed)
    except InvalidSignature:
        raise IntegrityError(
            "the signature does not match the data: it was changed after signing, "
            "or the signature belongs to something else"
        ) from None
    if allowed is not None and not any(same_key(parsed.key, k) for k in allowed):
        raise IntegrityError(
            f"signed by {fingerprint(parsed.key)}, which is not an allowed key"
            + ("" if allowed else " (no key is allowed)"),
            fix="pass the signer's public key with --key, or list it in --allowed-signers",
        )
    return parsed.key


class _ParsedSignature(NamedTuple):
    key: Ed25519PublicKey
    namespace: str
    hash_alg: str
    signature: bytes


def _parse_sshsig(armored: str) -> _ParsedSignature:
    lines = armored.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != _BEGIN or lines[-1].strip() != _END:
        raise IntegrityError(
            f"not an armored SSH signature (expected {_BEGIN} ... {_END})",
            fix="pass the .sig file written by meshrun or `ssh-keygen -Y sign`",
        )
    try:
        blob = base64.b64decode("".join(ln.strip() for ln in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError("the SSH signature is not valid base64") from None
    reader = _Reader(blob)
    try:
        if reader.raw(len(_MAGIC)) != _MAGIC:
            raise IntegrityError("not an SSHSIG signature (bad magic)")
        version = reader.uint32()
        if version != _VERSION:
            raise IntegrityError(f"unsupported SSHSIG version {version} (meshrun reads 1)")
        key = _parse_key_blob(reader.string())
        namespace = _text(reader.string(), "namespace")
        if reader.string():
            raise IntegrityError("the SSHSIG reserved field is not empty")
        hash_alg = _text(reader.string(), "hash algorithm")
        if hash_alg not in HASH_ALGORITHMS:
            raise IntegrityError(
                f"unsupported SSHSIG hash algorithm {hash_alg!r} (sha256 or sha512)"
            )
        sig_reader = _Reader(reader.string())
        reader.end("signature")
        sig_type = sig_reader.string()
        if sig_type != KEY_TYPE.encode():
            raise IntegrityError(f"unsupported signature type {sig_type!r} (ssh-ed25519 only)")
        signature = sig_reader.string()
        sig_reader.end("signature blob")
    except ValueError as exc:
        raise IntegrityError(f"malformed SSH signature: {exc}") from None
    if len(signature) != _ED25519_SIG_BYTES:
        raise IntegrityError(f"malformed SSH signature: {len(signature)}-byte ed25519 signature")
    return _ParsedSignature(key, namespace, hash_alg, signature)


def _parse_key_blob(blob: bytes) -> Ed25519PublicKey:
    reader = _Reader(blob)
    key_type = reader.string()
    if key_type != KEY_TYPE.encode():
        shown = key_type.decode("ascii", "replace")
        raise IntegrityError(f"signed with a {shown} key; meshrun accepts ssh-ed25519 only")
    raw = reader.string()
    reader.end("public key")
    if len(raw) != _ED25519_KEY_BYTES:
        raise IntegrityError(f"malformed SSH signature: {len(raw)}-byte ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _signed_data(namespace: bytes, hash_alg: str, message: bytes) -> bytes:
    digest = hashlib.new(hash_alg, message).digest()
    return b"".join(
        (_MAGIC, _string(namespace), _string(b""), _string(hash_alg.encode()), _string(digest))
    )


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"malformed SSH signature: {what} is not UTF-8") from None


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    """SSH wire format reader; a short buffer or trailing bytes are ValueError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def raw(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise ValueError("truncated")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def end(self, what: str) -> None:
        if self._pos != len(self._data):
            raise ValueError(f"{len(self._data) - self._pos} unexpected bytes after the {what}")


# -- allowed_signers -------------------------------------------------------------------


class AllowedSigner(NamedTuple):
    """One usable line of an ``allowed_signers`` file.

    ``principals`` are the comma-separated identity patterns of the line; ``options``
    maps lower-case option names to their unquoted value (None for a flag), e.g.
    ``{"namespaces": "meshrun,git"}``.
    """

    principals: tuple[str, ...]
    options: Mapping[str, str | None]
    key: Ed25519PublicKey

    def allows_namespace(self, namespace: str) -> bool:
        """No ``namespaces`` option allows every namespace, as in OpenSSH."""
        patterns = self.options.get("namespaces")
        return patterns is None or match_pattern_list(namespace, patterns)

    def allows_identity(self, identity: str) -> bool:
        return match_pattern_list(identity, ",".join(self.principals))

    def valid_at(self, when: datetime) -> bool:
        after = self.options.get("valid-after")
        before = self.options.get("valid-before")
        if after is not None and when < _parse_time(after):
            return False
        return not (before is not None and when > _parse_time(before))


_KNOWN_OPTIONS = {"cert-authority", "namespaces", "valid-after", "valid-before"}


def _log_note(note: str) -> None:
    log.warning("%s", note)


def parse_allowed_signers(
    text: str,
    *,
    source: str = "allowed_signers",
    on_note: Callable[[str], None] = _log_note,
) -> list[AllowedSigner]:
    """The Ed25519 entries of an ``allowed_signers`` file (format of ssh-keygen(1)).

    Each line is ``principals [options] keytype base64 [comment]``; blank lines and
    ``#`` comments are skipped. Lines meshrun cannot use are skipped with a note sent
    to ``on_note`` (logged by default): ``cert-authority`` lines (meshrun signs with
    plain keys, never certificates) and keys that are not ssh-ed25519. A malformed line
    or an unknown option is an InputError naming ``source`` and the line.
    """
    signers: list[AllowedSigner] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        principals_field, rest = _next_field(line, where, "principals")
        principals = tuple(p for p in _unquote(principals_field).split(",") if p)
        if not principals or not rest:
            raise InputError(
                f"{where}: expected `principals [options] ssh-ed25519 AAAA...`",
                fix='e.g. ci@example.com namespaces="meshrun" ssh-ed25519 AAAA...',
            )
        options: dict[str, str | None] = {}
        if not _KEY_TYPE_RE.match(rest):
            options_field, rest = _next_field(rest, where, "options")
            options = _parse_options(options_field, where)
        if not rest:
            raise InputError(
                f"{where}: no public key after the options",
                fix='e.g. ci@example.com namespaces="meshrun" ssh-ed25519 AAAA...',
            )
        key_type = rest.split(None, 1)[0]
        if "cert-authority" in options:
            on_note(f"{where}: cert-authority line ignored (meshrun does not use certificates)")
            continue
        if key_type != KEY_TYPE:
            on_note(f"{where}: {key_type} key ignored (meshrun signs with Ed25519 only)")
            continue
        try:
            key = _parse_public_line(rest, where=where)
        except InputError as exc:
            raise InputError(exc.message, fix="copy the line printed by `meshrun keygen`") from None
        signers.append(AllowedSigner(principals, MappingProxyType(options), key))
    return signers


def load_allowed_signers(
    path: Path | str, *, on_note: Callable[[str], None] = _log_note
) -> list[AllowedSigner]:
    """:func:`parse_allowed_signers` of a file (``~`` expanded)."""
    path = Path(path).expanduser()
    data = _read_key_file(path, "allowed_signers file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    return parse_allowed_signers(text, source=str(path), on_note=on_note)


def keys_for_namespace(
    signers: Iterable[AllowedSigner],
    namespace: str = NAMESPACE,
    *,
    identity: str | None = None,
    now: datetime | None = None,
) -> list[Ed25519PublicKey]:
    """The keys that may sign for ``namespace`` (and ``identity``, when given) at ``now``.

    This is the choice ``ssh-keygen -Y verify -n namespace -I identity`` makes: the
    ``namespaces``, ``valid-after`` and ``valid-before`` options are honoured, and
    principals are matched as OpenSSH pattern lists (``*``, ``?``, ``!negation``).
    ``now`` defaults to the current time.
    """
    when = now or datetime.now(UTC)
    return [
        s.key
        for s in signers
        if s.allows_namespace(namespace)
        and (identity is None or s.allows_identity(identity))
        and s.valid_at(when)
    ]


def _next_field(text: str, where: str, what: str) -> tuple[str, str]:
    """Split off one whitespace-delimited field; double quotes may hide whitespace."""
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted and i + 1 < len(text) and text[i + 1] == '"':
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c.isspace() and not quoted:
            break
        i += 1
    if quoted:
        raise InputError(f"{where}: unterminated quote in the {what}")
    return text[:i], text[i:].strip()


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return value[1:-1].replace('\\"', '"')
    return value


def _parse_options(field: str, where: str) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for item in _split_outside_quotes(field):
        name, eq, value = item.partition("=")
        name = name.lower()
        if name not in _KNOWN_OPTIONS:
            raise InputError(
                f"{where}: unsupported option {name!r}",
                fix="allowed_signers options are cert-authority, namespaces, "
                "valid-after and valid-before",
            )
        if (name == "cert-authority") == bool(eq):
            raise InputError(f"{where}: option {name!r} is malformed")
        if eq:
            value = _unquote(value)
            if name != "namespaces":
                _parse_time(value, where=where)
        options[name] = value if eq else None
    return options


def _split_outside_quotes(field: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for c in field:
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(c)
    items.append("".join(current))
    return [item for item in items if item]


_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _parse_time(value: str, *, where: str = "allowed_signers") -> datetime:
    """OpenSSH's YYYYMMDD[HHMM[SS]][Z]: local time, or UTC with a ``Z``."""
    utc = value.endswith("Z")
    digits = value[:-1] if utc else value
    fmt = _TIME_FORMATS.get(len(digits))
    try:
        if fmt is None or not digits.isdigit():
            raise ValueError(value)
        parsed = datetime.strptime(digits, fmt)
    except ValueError:
        raise InputError(
            f"{where}: time {value!r} is not YYYYMMDD[HHMM[SS]][Z]",
            fix='e.g. valid-before="20301231Z"',
        ) from None
    return parsed.replace(tzinfo=UTC) if utc else parsed.astimezone()


def match_pattern_list(text: str, patterns: str) -> bool:
    """OpenSSH's pattern-list match: ``*``/``?`` globs; any matching ``!pattern`` vetoes."""
    matched = False
    for pattern in patterns.split(","):
        pattern = pattern.strip()
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if pattern and _glob(pattern).fullmatch(text):
            if negated:
                return False
            matched = True
    return matched


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
        re.DOTALL,
    )


__all__ = [
    "HASH_ALGORITHMS",
    "NAMESPACE",
    "AllowedSigner",
    "fingerprint",
    "generate_keypair",
    "keys_for_namespace",
    "load_allowed_signers",
    "load_private_key",
    "load_public_key",
    "match_pattern_list",
    "parse_allowed_signers",
    "public_key_blob",
    "public_key_line",
    "same_key",
    "sshsig_sign",
    "sshsig_verify",
]


def allowed_signer_keys(path: Path | str) -> list[Ed25519PublicKey]:
    """The keys an allowed_signers file trusts for meshrun manifests, valid now."""
    return keys_for_namespace(load_allowed_signers(path), NAMESPACE)

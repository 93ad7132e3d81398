"""OpenSSH public keys as text: ``.pub`` lines and their ``SHA256:`` fingerprints.

Pure and stdlib-only, so that ``meshrun agent`` can fingerprint its host key without
importing paramiko, and the SSH transport and discovery agree on one format: the one
``ssh-keygen -lf`` prints, ``SHA256:`` and the unpadded base64 of the SHA-256 of the
key blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct

from meshrun.errors import InputError
from meshrun.records import record

__all__ = [
    "FINGERPRINT_RE",
    "HOST_KEY_TYPES",
    "PublicKey",
    "parse_public_key",
    "read_public_key",
    "sha256_fingerprint",
]

#: ``SHA256:`` + 43 characters of unpadded base64 (32 bytes). Anchored with ``\A``/``\Z``
#: (``$`` would also match before a final newline), so ``match`` checks the whole string.
FINGERPRINT_RE = re.compile(r"\ASHA256:[A-Za-z0-9+/]{43}\Z")

#: Host key algorithms sshd can serve (the names in .pub files and known_hosts).
HOST_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "ssh-dss",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)

_MAX_PUB_FILE_BYTES = 16 * 1024


def sha256_fingerprint(blob: bytes) -> str:
    """OpenSSH's fingerprint of a public key blob (SSH wire format): ``SHA256:...``."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@record
class PublicKey:
    """One public key: its algorithm name (``ssh-ed25519``) and wire-format blob."""

    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.blob)


def parse_public_key(line: str) -> PublicKey:
    """``ssh-ed25519 AAAA... [comment]`` -> PublicKey. ValueError says what is wrong.

    The blob must decode and must name the same algorithm as the line, as OpenSSH
    checks; options before the key type (authorized_keys style) are not accepted.
    """
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("expected 'TYPE BASE64 [COMMENT]', as in a .pub file")
    key_type, encoded = fields[0], fields[1]
    if key_type not in HOST_KEY_TYPES:
        raise ValueError(f"unknown key type {key_type[:40]!r}")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    if len(blob) < 4:
        raise ValueError("the key is truncated")
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + length] != key_type.encode("ascii"):
        raise ValueError(f"the key data does not hold a {key_type} key")
    return PublicKey(key_type, blob)


def read_public_key(path: str | os.PathLike[str], *, option: str = "--host-key") -> PublicKey:
    """The first key in a ``.pub`` file; InputError naming ``option`` and the fix."""
    shown = os.fspath(path)
    fix = (
        f"pass {option} with the public key file of this machine's sshd, "
        "e.g. /etc/ssh/ssh_host_ed25519_key.pub"
    )
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_PUB_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{option} {shown}: no such file", fix=fix) from None
    except OSError as exc:
        raise InputError(
            f"{option} {shown}: cannot read it ({exc.strerror or exc})", fix=fix
        ) from None
    if len(raw) > _MAX_PUB_FILE_BYTES:
        raise InputError(f"{option} {shown}: too large for a public key file", fix=fix)
    text = raw.decode("ascii", "replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise InputError(f"{option} {shown}: the file is empty", fix=fix)
    if "PRIVATE KEY" in text:
        raise InputError(
            f"{option} {shown}: this is a private key",
            fix=f"pass the public half ({shown}.pub); never hand a private key around",
        )
    try:
        return parse_public_key(lines[0])
    except ValueError as exc:
        raise InputError(f"{option} {shown}: not an OpenSSH public key: {exc}", fix=fix) from None

"""Which keys to offer a host, in OpenSSH's order, with ssh-agent and certificates.

The most common laptop set-up is a passphrase-protected ``~/.ssh/id_ed25519`` whose key
lives in ssh-agent. OpenSSH offers that key *through the agent*, matching the agent's
key to the file by its public half (``KEY.pub``, or the public part every
``openssh-key-v1`` file carries in clear), so the passphrase is never needed. meshrun
does the same, and never prompts mid-run: a passphrase-protected key that the agent
does not hold is reported before any host is contacted (:func:`unusable_identities`),
naming the file and ``ssh-add``.

The order of offers follows ``ssh``: identity files whose key the agent holds (in
config order), then the agent's other keys (unless ``IdentitiesOnly``), then the other
identity files. A certificate (``CertificateFile``, or ``KEY-cert.pub`` beside a key) is
offered before the plain key it certifies.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

import paramiko

from meshrun import resources
from meshrun.records import record

__all__ = ["FileIdentity", "IdentityFiles", "Offer", "agent_for", "offers", "public_blob_of"]

log = logging.getLogger(__name__)

_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_MAX_KEY_FILE_BYTES = 1024 * 1024


def _openssh_public_blob(text: str) -> bytes | None:
    """The first public key of an ``openssh-key-v1`` private key file (kept in clear)."""
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text or end not in text:
        return None
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(_OPENSSH_MAGIC):
        return None
    pos = len(_OPENSSH_MAGIC)
    try:
        for _ in range(3):  # ciphername, kdfname, kdfoptions
            (n,) = struct.unpack(">I", raw[pos : pos + 4])
            pos += 4 + n
        (count,) = struct.unpack(">I", raw[pos : pos + 4])
        pos += 4
        if count < 1:
            return None
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        blob = raw[pos + 4 : pos + 4 + n]
    except struct.error:
        return None
    return blob if len(blob) == n else None


def _unless_short(exc: OSError, path: str) -> None:
    """Raise ResourceExhausted when ``path`` could not be read because this process ran
    out of descriptors or memory: never "unreadable", and never remembered as such."""
    shortage = resources.resource_error(exc, f"reading {path}")
    if shortage is not None:
        raise shortage from exc


def _pub_file_blob(path: str) -> bytes | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            fields = f.read(64 * 1024).split()
    except OSError as exc:
        _unless_short(exc, path)
        return None
    if len(fields) < 2:
        return None
    try:
        return base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        return None


def public_blob_of(path: str, private_text: str | None = None) -> bytes | None:
    """The public key of the private key at ``path``, without its passphrase.

    ``PATH.pub`` first (what ``ssh`` reads), then the clear public part of an
    ``openssh-key-v1`` file. None for an encrypted PEM key without a ``.pub``.
    """
    blob = _pub_file_blob(path + ".pub")
    if blob is not None:
        return blob
    if private_text is None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                private_text = f.read(_MAX_KEY_FILE_BYTES)
        except OSError as exc:
            _unless_short(exc, path)
            return None
    return _openssh_public_blob(private_text)


@record
class FileIdentity:
    """One ``IdentityFile`` as found on disk."""

    path: str
    exists: bool
    key: paramiko.PKey | None = None  # loaded: the file is not encrypted
    encrypted: bool = False
    public_blob: bytes | None = None
    error: str | None = None  # exists but unreadable / not a key


class IdentityFiles:
    """Identity files read once per run (a fleet shares a handful of keys)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, FileIdentity] = {}
        self._certs: dict[str, bytes | None] = {}

    def get(self, path: str) -> FileIdentity:
        with self._lock:
            found = self._files.get(path)
        if found is not None:
            return found
        found = self._load(path)
        with self._lock:
            return self._files.setdefault(path, found)

    @staticmethod
    def _load(path: str) -> FileIdentity:
        if not os.path.exists(path):
            return FileIdentity(path, exists=False)
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):
            # paramiko lets cryptography's TypeError ("Key is password-protected, but
            # password was not provided.") through for openssh-key-v1 files.
            return FileIdentity(path, True, encrypted=True, public_blob=public_blob_of(path))
        except (paramiko.SSHException, OSError, ValueError) as exc:
            if isinstance(exc, OSError):
                _unless_short(exc, path)
            return FileIdentity(path, True, error=str(exc) or type(exc).__name__)
        return FileIdentity(path, True, key=key, public_blob=key.asbytes())

    def certificate(self, path: str) -> bytes | None:
        """The certificate blob in ``path`` (a ``-cert.pub`` file), or None."""
        with self._lock:
            if path in self._certs:
                return self._certs[path]
        blob = _pub_file_blob(path) if os.path.exists(path) else None
        with self._lock:
            self._certs[path] = blob
        return blob


def _certified_key(blob: bytes | None) -> bytes | None:
    """The public key a certificate blob certifies (its key fields re-encoded)."""
    if blob is None:
        return None
    try:
        msg = paramiko.Message(blob)
        cert_type = msg.get_text()
        if not cert_type.endswith("-cert-v01@openssh.com"):
            return None
        plain_type = cert_type[: -len("-cert-v01@openssh.com")]
        msg.get_string()  # nonce
        # The key fields follow; their count depends on the type.
        counts = {"ssh-ed25519": 1, "ssh-rsa": 2, "ssh-dss": 4}
        out = paramiko.Message()
        out.add_string(plain_type)
        if plain_type.startswith("ecdsa-sha2-"):
            out.add_string(msg.get_string())  # curve
            out.add_string(msg.get_string())  # point
        elif plain_type in counts:
            for _ in range(counts[plain_type]):
                out.add_string(msg.get_string())
        else:
            return None
        return bytes(out.asbytes())
    except Exception:  # a malformed certificate certifies nothing
        return None


@record(frozen=False)
class Offer:
    """One key to offer, and how to name it in a message."""

    label: str
    key: paramiko.PKey


@record(frozen=False)
class Offers:
    keys: list[Offer] = field(default_factory=list)
    encrypted_not_in_agent: list[str] = field(default_factory=list)


def agent_for(identity_agent: str | None) -> paramiko.Agent | None:
    """A connection to the agent ``IdentityAgent`` names (None: $SSH_AUTH_SOCK)."""
    if identity_agent == "none":
        return None
    sock = identity_agent or os.environ.get("SSH_AUTH_SOCK")
    if not sock:
        return None
    previous = os.environ.get("SSH_AUTH_SOCK")
    try:
        if identity_agent:
            os.environ["SSH_AUTH_SOCK"] = sock  # paramiko reads the socket path from here
        return paramiko.Agent()
    except paramiko.SSHException as exc:
        log.warning("ssh-agent at %s is not usable: %s", sock, exc)
        return None
    except OSError as exc:  # paramiko lets socket()'s own errors through
        _unless_short(exc, f"ssh-agent's socket {sock}")
        raise
    finally:
        if identity_agent:
            if previous is None:
                os.environ.pop("SSH_AUTH_SOCK", None)
            else:
                os.environ["SSH_AUTH_SOCK"] = previous


#: ssh-agent's answer to "which keys do you hold": (public blob, comment) per key.
AgentListing = tuple[tuple[bytes, str], ...]


class ListedAgent(paramiko.agent.AgentSSH):  # type: ignore[misc]  # paramiko has no types
    """An ssh-agent's keys as :class:`AgentKeys` listed them, for one login: the socket
    is connected at the first signature asked for, not to list the keys again."""

    _conn: socket.socket | None  # paramiko's: the agent's socket, once connected

    def __init__(self, path: str, listing: AgentListing) -> None:
        super().__init__()
        self._path = path
        self._keys = tuple(paramiko.AgentKey(self, blob, comment) for blob, comment in listing)

    def _send_message(self, msg: Any) -> Any:
        if self._conn is None:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self._path)
            except OSError as exc:
                conn.close()
                _unless_short(exc, f"ssh-agent's socket {self._path}")
                raise paramiko.SSHException(f"lost ssh-agent at {self._path}: {exc}") from exc
            self._conn = conn
        return super()._send_message(msg)

    def close(self) -> None:
        self._close()


class AgentKeys:
    """Which keys each ssh-agent holds, asked once per run rather than once per host.

    Listing costs every login a connection to the agent and a round trip (~0.2 ms of
    client CPU per host); the answer does not change within a run. What is remembered is
    the public half of each key and its comment, nothing secret; a signature still goes
    to the agent, over a connection of the login's own (:class:`ListedAgent`). An agent
    that cannot be used is remembered as such (one warning per run); running out of
    descriptors while asking is not remembered (ResourceExhausted, asked again later).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listings: dict[str | None, AgentListing | None] = {}

    def listing(self, identity_agent: str | None) -> AgentListing | None:
        """The keys of the agent ``IdentityAgent`` names (None: $SSH_AUTH_SOCK); None
        when there is no agent or it cannot be used."""
        with self._lock:
            if identity_agent in self._listings:
                return self._listings[identity_agent]
            agent = agent_for(identity_agent)
            listing: AgentListing | None = None
            if agent is not None:
                try:
                    listing = tuple((k.blob, k.comment) for k in agent.get_keys())
                finally:
                    agent.close()
            self._listings[identity_agent] = listing
            return listing

    def agent(self, identity_agent: str | None) -> paramiko.agent.AgentSSH | None:
        """An agent for one login, holding the listed keys; its ``close()`` closes the
        connection if a signature opened one."""
        path = (
            None if identity_agent == "none" else identity_agent or os.environ.get("SSH_AUTH_SOCK")
        )
        if not path:
            return None
        if sys.platform == "win32":  # Pageant, not a socket: paramiko's own way
            return agent_for(identity_agent)
        listing = self.listing(identity_agent)
        return ListedAgent(path, listing) if listing else None


def offers(
    files: IdentityFiles,
    identity_paths: Sequence[str],
    certificate_paths: Sequence[str],
    agent_keys: Sequence[paramiko.AgentKey],
    *,
    identities_only: bool,
) -> Offers:
    """The keys to offer, in OpenSSH's order, each certificate before its plain key.

    Keys the agent holds only as certificates are not offered on their own: the
    certificate file on disk (beside the key, or ``CertificateFile``) is what is used.
    """
    result = Offers()
    agent_by_blob = {k.blob: k for k in agent_keys if not _is_cert(k)}
    named_certs = [(p, files.certificate(p)) for p in certificate_paths]
    used_agent: set[bytes] = set()
    in_agent: list[Offer] = []
    from_files: list[Offer] = []

    def add(
        label: str,
        key: paramiko.PKey,
        make_copy: Callable[[], paramiko.PKey],
        public: bytes,
        beside: str | None,
        out: list[Offer],
    ) -> None:
        certs = list(named_certs)
        if beside is not None:
            certs.insert(0, (beside, files.certificate(beside)))
        for cert_path, cert in certs:
            if cert is None or _certified_key(cert) != public:
                continue
            try:
                certified = make_copy()
                certified.load_certificate(cert_path)
            except (ValueError, OSError, paramiko.SSHException):
                continue
            out.append(Offer(f"{label} with certificate {cert_path}", certified))
        out.append(Offer(label, key))

    for path in identity_paths:
        ident = files.get(path)
        if not ident.exists or ident.error is not None:
            continue
        public = ident.public_blob
        agent_key = agent_by_blob.get(public) if public is not None else None
        if agent_key is not None and public is not None:
            if public not in used_agent:
                used_agent.add(public)
                add(
                    f"{path} (in ssh-agent)",
                    agent_key,
                    _copier(agent_key),
                    public,
                    path + "-cert.pub",
                    in_agent,
                )
            continue
        if ident.key is None or public is None:
            if ident.encrypted:
                result.encrypted_not_in_agent.append(path)
            continue
        add(path, ident.key, _file_copier(path), public, path + "-cert.pub", from_files)
    agent_rest: list[Offer] = []
    if not identities_only:
        for blob, key in agent_by_blob.items():
            if blob not in used_agent:
                label = f"ssh-agent key {getattr(key, 'comment', '') or key.get_name()}"
                add(label, key, _copier(key), blob, None, agent_rest)
    result.keys = in_agent + agent_rest + from_files
    return result


def _is_cert(key: paramiko.PKey) -> bool:
    return str(key.get_name()).endswith("-cert-v01@openssh.com")


def _copier(key: paramiko.AgentKey) -> Callable[[], paramiko.PKey]:
    return lambda: paramiko.AgentKey(key.agent, key.blob, getattr(key, "comment", ""))


def _file_copier(path: str) -> Callable[[], paramiko.PKey]:
    return lambda: paramiko.PKey.from_path(path)

"""transport/lean.py's cheaper key-exchange steps produce paramiko's exact bytes, and a
command sent without waiting for the exec reply still reports a refusal as before.

The key derivation and our KEXINIT are compared with paramiko's own methods on the same
inputs (a random cookie aside). The exec test talks to a real SSH peer (paramiko's
server side over a socket pair) that refuses every exec.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.config.inventory import Host
from meshrun.errors import HostUnreachable
from meshrun.transport import lean
from meshrun.transport.base import CommandRequest
from meshrun.transport.ssh import SSHConnection


class _Transports:
    """Transports over socket pairs (never started), every socket closed at the end."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def __call__(self, cls: Any = lean.LeanTransport, **kwargs: Any) -> Any:
        ours, theirs = socket.socketpair()
        self.sockets += [ours, theirs]
        return cls(ours, **kwargs)


@contextlib.contextmanager
def _transports() -> Iterator[_Transports]:
    made = _Transports()
    try:
        yield made
    finally:
        for sock in made.sockets:
            sock.close()


class _Engine:
    def __init__(self, hash_algo: Any) -> None:
        self.hash_algo = hash_algo


@settings(max_examples=40, deadline=None)
@given(
    k=st.one_of(st.integers(min_value=1, max_value=2**521), st.binary(min_size=32, max_size=64)),
    h=st.binary(min_size=20, max_size=64),
    session_id=st.binary(min_size=20, max_size=64),
    hash_algo=st.sampled_from([hashlib.sha256, hashlib.sha512, hashlib.sha1, None]),
)
def test_key_derivation_is_paramikos(
    k: int | bytes, h: bytes, session_id: bytes, hash_algo: Any
) -> None:
    with _transports() as make:
        transport = make()
        transport.kex_engine = _Engine(hash_algo)
        transport.session_id = session_id
        for round_ in range(2):  # a second exchange (rekey): new K and H, new keys
            transport.K = k if round_ == 0 else os.urandom(32)
            transport.H = h if round_ == 0 else os.urandom(32)
            for letter in "ABCDEF":
                for nbytes in (12, 16, 32, 64, 100):
                    expected = paramiko.Transport._compute_key(transport, letter, nbytes)
                    assert transport._compute_key(letter, nbytes) == expected


@pytest.mark.parametrize("strict_kex", [True, False])
def test_our_kexinit_is_paramikos_but_for_the_cookie(strict_kex: bool) -> None:
    with _transports() as make:
        _compare_kexinits(
            make(strict_kex=strict_kex), make(paramiko.Transport, strict_kex=strict_kex)
        )


def _compare_kexinits(ours: Any, theirs: Any) -> None:
    for t in (ours, theirs):  # the per-host reordering of host-key types, as _handshake does
        opts = t.get_security_options()
        opts.key_types = ["ssh-ed25519"] + [x for x in opts.key_types if x != "ssh-ed25519"]
    cookies = set()
    for _ in range(2):  # the second from the per-process cache
        ours._send_kex_init()
        theirs._send_kex_init()
        mine, paramikos = ours.local_kex_init, theirs.local_kex_init
        assert mine[:1] == paramikos[:1] and mine[17:] == paramikos[17:]
        assert len(mine) == len(paramikos)
        assert ours._latest_kex_init == mine
        assert ours.in_kex and not ours.clear_to_send.is_set()
        cookies.add(mine[1:17])
    assert len(cookies) == 2  # a fresh random cookie every time


class _RefusesExec(paramiko.ServerInterface):  # type: ignore[misc]
    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_SUCCEEDED)

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        return False


@pytest.fixture
def refusing_server() -> Iterator[paramiko.Transport]:
    """A logged-in client LeanTransport to an SSH server that refuses every exec."""
    ours, theirs = socket.socketpair()
    server = paramiko.Transport(theirs)
    server.add_server_key(paramiko.ECDSAKey.generate())
    started = threading.Event()

    def serve() -> None:
        server.start_server(event=started, server=_RefusesExec())

    threading.Thread(target=serve, daemon=True).start()
    client = lean.LeanTransport(ours)
    try:
        client.start_client(timeout=10)
        client.auth_none("tester")
        yield client
    finally:
        client.close()
        server.close()


def test_a_refused_exec_is_reported_as_before(refusing_server: paramiko.Transport) -> None:
    conn = SSHConnection(Host(name="h1", address="127.0.0.1"), refusing_server, 4, 5.0)
    with pytest.raises(HostUnreachable) as caught:
        conn.run(CommandRequest("true"))
    assert "the SSH connection failed during the command: Channel closed." in str(caught.value)
    assert refusing_server.is_active()  # the refusal does not take the connection down
    assert conn.sessions.links  # and the host keeps its connection for the next command

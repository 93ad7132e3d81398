"""transport/lean.py's packetizer reads: what the socket holds at once, handed out in order.

A real socket pair carries the bytes (no fake socket): the reader must return exactly
what paramiko's would (the banner's surplus first, every byte once, in order, EOF as
EOFError), with fewer reads than pieces asked for.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.transport import lean


class _CountingSocket(socket.socket):
    reads = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.reads += 1
        return super().recv(bufsize, flags)


def _pair() -> tuple[_CountingSocket, socket.socket]:
    a, b = socket.socketpair()
    ours = _CountingSocket(a.family, a.type, a.proto, fileno=a.detach())
    ours.settimeout(5.0)
    return ours, b


@settings(max_examples=60, deadline=None)
@given(
    banner_surplus=st.binary(max_size=40),
    stream=st.binary(min_size=1, max_size=70_000),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=60),
)
def test_reads_return_the_stream_in_order(
    banner_surplus: bytes, stream: bytes, cuts: list[int]
) -> None:
    ours, theirs = _pair()
    with ours, theirs:
        packetizer = lean._Packetizer(ours)
        theirs.sendall(b"SSH-2.0-test\r\n" + banner_surplus)
        assert packetizer.readline(5) == "SSH-2.0-test"
        data = banner_surplus + stream
        sizes: list[int] = []
        left = len(data)
        for cut in cuts:
            if left == 0:
                break
            sizes.append(min(cut, left))
            left -= sizes[-1]
        if left:
            sizes.append(left)
        theirs.sendall(stream)
        got = [packetizer.read_all(n) for n in sizes]
        assert b"".join(got) == data
        assert [len(g) for g in got] == sizes


def test_pieces_that_arrived_together_take_one_read() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        packetizer = lean._Packetizer(ours)
        theirs.sendall(bytes(range(200)))
        pieces = [packetizer.read_all(n) for n in (16, 36, 16, 100, 32)]
        assert b"".join(pieces) == bytes(range(200))
        assert ours.reads == 1  # paramiko's own read_all: one read per piece (5)


def test_end_of_stream_mid_piece_is_eof() -> None:
    ours, theirs = _pair()
    with ours:
        packetizer = lean._Packetizer(ours)
        theirs.sendall(b"x" * 10)
        theirs.close()
        assert packetizer.read_all(4) == b"xxxx"
        with pytest.raises(EOFError):
            packetizer.read_all(16)

"""Line splitting and head/tail capture: the same answers as the naive way, bounded."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshrun.transport.capture import HeadTail, LineSplitter

_CHUNKS = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"")), max_size=30)


def _split(chunks: list[bytes], max_line: int) -> list[bytes]:
    s = LineSplitter(max_line)
    out: list[bytes] = []
    for chunk in chunks:
        out += s.feed(chunk)
    return out + s.flush()


def test_a_line_of_exactly_max_line_given_out_before_its_newline_is_one_line() -> None:
    assert _split([b"abc", b"d", b"\n", b"ef\n"], max_line=4) == [b"abcd", b"ef"]
    assert _split([b"abcdefgh", b"\n"], max_line=4) == [b"abcd", b"efgh"]


@given(chunks=_CHUNKS, max_line=st.integers(1, 50))
@settings(max_examples=400)
@example(chunks=[b"\0" * 8, b"\0" * 9, b"\0" * 9, b"\n"], max_line=26)
def test_lines_are_the_naive_split_with_long_lines_cut(chunks: list[bytes], max_line: int) -> None:
    text = b"".join(chunks)
    expected: list[bytes] = []
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it starts no new one
    for line in lines:
        expected += [line[i : i + max_line] for i in range(0, len(line), max_line)] or [b""]
    got = _split(chunks, max_line)
    assert b"".join(got) == text.replace(b"\n", b"")
    assert all(len(line) <= max_line for line in got)
    if all(len(line) <= max_line for line in lines):
        assert got == lines


def test_a_line_without_end_comes_out_in_pieces_as_it_grows() -> None:
    s = LineSplitter(max_line=10)
    assert s.feed(b"x" * 25) == [b"x" * 10, b"x" * 10]
    assert s.feed(b"y" * 3 + b"\nz") == [b"x" * 5 + b"yyy"]
    assert s.flush() == [b"z"]
    assert s.flush() == []


def test_splitting_stays_linear_for_a_long_line_in_small_chunks() -> None:
    """4 MB in 4 KB chunks with no newline: quadratic copying would be ~2 TB of work."""
    s = LineSplitter(max_line=64 * 1024)
    got = 0
    chunk = b"a" * 4096
    for _ in range(1024):
        got += sum(len(line) for line in s.feed(chunk))
    got += sum(len(line) for line in s.flush())
    assert got == 4 * 1024 * 1024


@given(chunks=_CHUNKS, head=st.integers(0, 60), tail=st.integers(0, 60))
@settings(max_examples=400)
def test_head_and_tail_are_the_ends_of_the_stream(
    chunks: list[bytes], head: int, tail: int
) -> None:
    h = HeadTail(head=head, tail=tail)
    for chunk in chunks:
        h.write(chunk)
    text = b"".join(chunks)
    assert h.total == len(text)
    assert h.head() == text[:head]
    rest = text[head:]
    assert h.tail() == rest[max(0, len(rest) - tail) :]
    assert h.omitted == max(0, len(rest) - tail)
    if not h.omitted:
        assert h.value() == text
    else:
        assert h.value().startswith(text[:head]) and f"{h.omitted} bytes".encode() in h.value()

"""Output of any size in linear time and bounded memory.

A command may print a gigabyte, or a gigabyte without a newline. meshrun shows output
line by line and keeps some of it for reports, so two small tools stand between the
wire and everything else:

- :class:`LineSplitter` turns chunks into lines in time linear in the bytes (a pending
  partial line is a list of chunks, joined once when its newline comes), and cuts a
  "line" longer than ``max_line`` bytes into pieces, so no line is held without limit;
- :class:`HeadTail` keeps the first ``head`` and the last ``tail`` bytes of a stream and
  counts what it left out. Reports (``--json``, report.json, a grouped block) show that;
  the whole output is on the console as it streams, and in dispatch's log files.
"""

from __future__ import annotations

from collections import deque

__all__ = ["HEAD_BYTES", "MAX_LINE_BYTES", "TAIL_BYTES", "HeadTail", "LineSplitter", "tail_text"]

#: Kept from the start of each stream of each command, for reports.
HEAD_BYTES = 64 * 1024
#: Kept from the end (where the error usually is).
TAIL_BYTES = 1024 * 1024
#: A line longer than this is shown in pieces of this size.
MAX_LINE_BYTES = 64 * 1024


def tail_text(data: bytes, lines: int = 5) -> str:
    """The last ``lines`` lines of some output, decoded for a human."""
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:])


class LineSplitter:
    """Bytes in, complete lines out (without their ``\\n``), in linear time."""

    __slots__ = ("_given_out", "_max", "_pending", "_pending_len")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._max = max_line
        self._pending: list[bytes] = []
        self._pending_len = 0
        #: Pieces of the current line were given out before its newline came.
        self._given_out = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes; a partial last line waits for the next call."""
        lines: list[bytes] = []
        if not data:
            return lines
        parts = data.split(b"\n")
        for part in parts[:-1]:
            self._pending.append(part)
            line = b"".join(self._pending)
            # A line already given out whole (its length a multiple of max_line) ends
            # here: its newline adds no empty piece.
            if line or not self._given_out:
                lines.extend(self._cut(line))
            self._pending.clear()
            self._pending_len = 0
            self._given_out = False
        rest = parts[-1]
        if rest:
            self._pending.append(rest)
            self._pending_len += len(rest)
            if self._pending_len >= self._max:
                # No newline in sight: give out whole pieces now, keep the remainder.
                *full, remainder = self._cut(b"".join(self._pending), keep_last=True)
                lines.extend(full)
                self._pending = [remainder] if remainder else []
                self._pending_len = len(remainder)
                self._given_out = True
        return lines

    def flush(self) -> list[bytes]:
        """What is left without a final newline (at the end of the stream), as lines."""
        self._given_out = False
        if not self._pending:
            return []
        text = b"".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        return self._cut(text)

    def _cut(self, line: bytes, *, keep_last: bool = False) -> list[bytes]:
        """``line`` in pieces of at most ``max_line`` bytes; with ``keep_last`` the last
        piece is returned even when short (it is the remainder still being written)."""
        if len(line) <= self._max and not keep_last:
            return [line]
        pieces = [line[i : i + self._max] for i in range(0, len(line), self._max)]
        if keep_last and len(pieces[-1]) == self._max:
            pieces.append(b"")
        return pieces


class HeadTail:
    """The first ``head`` and last ``tail`` bytes written, and the count left between."""

    __slots__ = ("_head", "_head_max", "_tail", "_tail_len", "_tail_max", "total")

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self._head_max = head
        self._tail_max = tail
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_max - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_max <= 0:
            return
        self._tail.append(data)
        self._tail_len += len(data)
        # Drop whole chunks that fall out of the tail; the first kept one is cut on read.
        while self._tail_len - len(self._tail[0]) >= self._tail_max:
            self._tail_len -= len(self._tail.popleft())

    @property
    def omitted(self) -> int:
        """Bytes neither in the head nor in the tail."""
        return self.total - len(self._head) - min(self._tail_len, self._tail_max)

    def head(self) -> bytes:
        return bytes(self._head)

    def tail(self) -> bytes:
        joined = b"".join(self._tail)
        return joined[len(joined) - self._tail_max :] if len(joined) > self._tail_max else joined

    def value(self) -> bytes:
        """Everything, when nothing was left out; else head, a marker line, tail."""
        if not self.omitted:
            return self.head() + self.tail()
        marker = f"\n[meshrun: {self.omitted} bytes of output left out here]\n".encode()
        return self.head() + marker + self.tail()

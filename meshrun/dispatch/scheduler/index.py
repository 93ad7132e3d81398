"""Heaps over the scheduler's hosts, so one decision does not look at every host.

The scheduler asks three questions all the time: which host would finish this task
soonest (placement), would another host finish it sooner than this idle one (stealing),
and which host has the most queued work (the victim of a steal). Answered by looking at
every host, one event cost O(hosts) per task it touched and O(hosts²) once idle hosts
looked for victims: 10,000 tasks on 1,000 simulated hosts did not finish in 150 s.

Here each host has an *order* (its position among the hosts, which never changes) and a
*version* that grows whenever its state changes. An entry is ``(key..., order,
version)``; it is current while the host's version is the same, otherwise it is skipped
and dropped later (lazy invalidation): a change pushes a new entry in O(log hosts)
instead of finding and moving the old one. Stale entries are dropped once they
outnumber the hosts, so a heap holds O(hosts) entries and every push costs O(log hosts)
amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

#: An entry: the key's fields, then the host's order and the version it was pushed at.
Entry = tuple[Any, ...]

#: A heap is compacted once it holds more than this many entries beyond twice the
#: number of hosts: compaction is O(entries), paid once per that many pushes.
SLACK = 64


class LazyHeap:
    """A min-heap of entries ``(key..., order, version)``; ``versions[order]`` says
    which version of a host is current."""

    __slots__ = ("_entries", "_versions")

    def __init__(self, versions: list[int]) -> None:
        self._entries: list[Entry] = []
        self._versions = versions

    def __len__(self) -> int:
        return len(self._entries)

    def current(self, entry: Entry) -> bool:
        return bool(self._versions[entry[-2]] == entry[-1])

    def push(self, entry: Entry) -> None:
        heapq.heappush(self._entries, entry)
        if len(self._entries) > 2 * len(self._versions) + SLACK:
            self._entries = [e for e in self._entries if self.current(e)]
            heapq.heapify(self._entries)

    def top(self) -> Entry | None:
        """The smallest current entry (stale ones above it are dropped)."""
        entries = self._entries
        while entries and not self.current(entries[0]):
            heapq.heappop(entries)
        return entries[0] if entries else None

    def walk(self) -> Walk:
        """Current entries, smallest first (``with heap.walk() as entries``)."""
        return Walk(self)


class Walk:
    """Takes a heap's entries out smallest first, dropping the stale ones for good,
    and puts the current ones it took back when the ``with`` block ends: O(log n) per
    entry taken, and a stale entry costs once, not on every walk that passes it.

    Nothing else may use the heap until the walk ends.
    """

    __slots__ = ("_heap", "_taken")

    def __init__(self, heap: LazyHeap) -> None:
        self._heap = heap
        self._taken: list[Entry] = []

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        entries = self._heap._entries
        for entry in self._taken:
            heapq.heappush(entries, entry)
        self._taken.clear()

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        heap = self._heap
        entries = heap._entries
        versions = heap._versions
        while entries:
            entry = heapq.heappop(entries)
            if versions[entry[-2]] == entry[-1]:
                self._taken.append(entry)
                return entry
        raise StopIteration

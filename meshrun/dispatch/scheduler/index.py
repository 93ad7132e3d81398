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

    def ordered(self) -> Iterator[Entry]:
        """Current entries, smallest first, without taking them out: O(log k) per
        entry for the first k (a second heap over the frontier of the first).

        The heap must not change while this is being consumed.
        """
        if self.top() is None:
            return
        entries = self._entries
        frontier: list[tuple[Entry, int]] = [(entries[0], 0)]
        size = len(entries)
        while frontier:
            entry, i = heapq.heappop(frontier)
            if self.current(entry):
                yield entry
            child = 2 * i + 1
            if child < size:
                heapq.heappush(frontier, (entries[child], child))
                if child + 1 < size:
                    heapq.heappush(frontier, (entries[child + 1], child + 1))

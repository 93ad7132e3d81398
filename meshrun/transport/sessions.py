"""A per-connection session budget: how many channels one SSH connection may hold.

sshd caps the sessions of one connection (``MaxSessions``, 10 unless the host's admin
changed it) and answers one more channel open with a refusal ("open failed"). It counts
every session alike: a task's exec channel, the dispatch agent's channel, an SFTP
subsystem and an rsync carried over an exec channel all take one of the same places. So
every one of them must take its place from the same budget — :meth:`SessionBudget.acquire`
before opening, :meth:`Lease.release` once the channel is closed — or the ones that do
not would push the connection over the limit however careful the others are.

The limit cannot be read from the client side, so the budget learns it. It starts at an
optimistic cap; a refusal while N of our sessions are open (or being opened) says the
server allows about N — never fewer than it has already accepted at once, because sshd
frees a closed session only a moment after the close, and a refusal right after a close
is that lag, not a lower limit. A refused open is tried again after a short jittered
pause and never surfaces as a lost host. When more sessions are wanted than a connection
allows, the budget opens another connection to the same host (MaxSessions is per
connection) through the caller's dial function — a few at most, closed with the budget —
and otherwise queues the caller until a session is given back. What it learns is logged
at INFO.

Threads and arithmetic only, no paramiko: the caller's ``open_session`` turns the
server's refusal into :class:`SessionRefused`, and a link is whatever the caller dials
(a paramiko ``Transport`` for the SSH connector).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from meshrun.records import record

log = logging.getLogger(__name__)

L = TypeVar("L")  # a link: one connection to the host
S = TypeVar("S")  # what open_session returns: a channel

#: Refusals in a row on a link with none of our sessions open before giving up: the
#: server refuses sessions for some reason other than a limit we could wait out.
EMPTY_REFUSALS_MAX = 6
#: First pause after a refusal; it doubles per refusal in a row, up to MAX_PAUSE_S.
FIRST_PAUSE_S = 0.005
MAX_PAUSE_S = 0.25
#: How often a waiter looks at its cancel event and deadline.
WAIT_SLICE_S = 0.1


class SessionRefused(Exception):
    """Raised by ``open_session``: the server refused one more session (its limit)."""


class SessionsUnavailable(Exception):
    """No session could be had: the budget was closed, the wait timed out or was
    cancelled (``cancelled``), or the server refuses every session even when none of
    ours is open."""

    def __init__(self, message: str, *, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled


@record(frozen=False, eq=False, slots=False)
class _Link(Generic[L]):
    """One connection and its share of the budget."""

    link: L
    limit: int  # sessions we let be open (or being opened) at once
    in_use: int = 0  # reserved: being opened, or open
    open: int = 0  # opened and not given back yet
    proven: int = 0  # most sessions the server accepted at once on this link
    learned: bool = False  # the limit came from the server (a refusal)


@record
class LinkState:
    """A snapshot of one link's budget (for logs and tests)."""

    limit: int
    learned: bool
    in_use: int
    open: int


class Lease(Generic[L, S]):
    """One session taken from a budget: ``session`` on ``link``. ``release()`` gives
    the place back (after the channel is closed); calling it again does nothing."""

    def __init__(self, budget: SessionBudget[L], slot: _Link[L], session: S) -> None:
        self._budget = budget
        self._slot = slot
        self.session = session
        self._released = False
        self._lock = threading.Lock()

    @property
    def link(self) -> L:
        return self._slot.link

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._budget._give_back(self._slot, opened=True)

    def __enter__(self) -> Lease[L, S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _always(link: object) -> bool:
    return True


def _nothing(link: object) -> None:
    """The default close_link: the caller closes what ``close()`` returns."""


class SessionBudget(Generic[L]):
    """Sessions of one host, over its first connection and the few more it may open.

    ``limit`` is the cap per connection before the server says otherwise. ``alive``
    tells whether a link still works (dead extra links are dropped and closed with
    ``close_link``). Thread-safe.
    """

    def __init__(
        self,
        name: str,
        first: L,
        *,
        limit: int,
        alive: Callable[[L], bool] = _always,
        close_link: Callable[[L], None] = _nothing,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self.name = name
        self._cap = limit
        self._alive = alive
        self._close_link = close_link
        # random's shared generator unless given one: seeding a Random per connection
        # costs ~28 µs (2.5 kB from os.urandom).
        self._uniform = rng.uniform if rng is not None else random.uniform
        self._sleep = sleep
        self._cond = threading.Condition()
        self._links: list[_Link[L]] = [_Link(first, limit)]
        self._dial: Callable[[], L] | None = None
        self._max_links = 1
        self._dialing = False
        self._dial_failed = False
        self._told_queueing = False
        self._closed = False

    # -- set-up and inspection -------------------------------------------------------

    def allow_extra_links(self, dial: Callable[[], L], max_links: int) -> None:
        """Let the budget open up to ``max_links`` connections in all with ``dial``
        when the server's limit is what keeps sessions waiting."""
        with self._cond:
            self._dial = dial
            self._max_links = max(1, max_links)

    @property
    def links(self) -> list[L]:
        with self._cond:
            return [s.link for s in self._links]

    def state(self) -> list[LinkState]:
        with self._cond:
            return [LinkState(s.limit, s.learned, s.in_use, s.open) for s in self._links]

    # -- taking and giving back --------------------------------------------------------

    def acquire(
        self,
        open_session: Callable[[L], S],
        *,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Lease[L, S]:
        """Open a session with ``open_session(link)`` on a link with room for it.

        Waits while every link is full (opening one more link when allowed and useful),
        and tries again after a short pause when the server refuses. Exceptions of
        ``open_session`` other than SessionRefused pass through. SessionsUnavailable
        when ``timeout_s`` passes or ``cancel`` is set while waiting, the budget is
        closed, or the server refuses sessions with none of ours open.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        refusals = empty_refusals = 0
        while True:
            slot = self._reserve(deadline, cancel)
            try:
                session = open_session(slot.link)
            except SessionRefused as exc:
                refusals += 1
                if not self._refused(slot, exc):
                    empty_refusals += 1
                    if empty_refusals >= EMPTY_REFUSALS_MAX:
                        raise SessionsUnavailable(
                            f"the server refused {empty_refusals} sessions in a row with "
                            f"none of ours open ({exc})"
                        ) from exc
                pause = min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (refusals - 1))
                self._sleep(pause * self._uniform(0.5, 1.5))
                continue
            except BaseException:
                self._give_back(slot, opened=False)
                raise
            self._opened(slot)
            return Lease(self, slot, session)

    def close(self) -> list[L]:
        """Stop handing out sessions; wake every waiter. Returns every link, for the
        caller to close (links dialled later are closed with ``close_link``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            return [s.link for s in self._links]

    # -- internals ------------------------------------------------------------------

    def _reserve(self, deadline: float | None, cancel: threading.Event | None) -> _Link[L]:
        while True:
            dead: list[L] = []
            try:
                with self._cond:
                    while True:
                        if self._closed:
                            raise SessionsUnavailable("the connection is closed")
                        dead += self._drop_dead()
                        slot = self._free()
                        if slot is not None:
                            slot.in_use += 1
                            return slot
                        if self._may_dial():
                            self._dialing = True
                            break
                        self._tell_queueing()
                        if cancel is not None and cancel.is_set():
                            raise SessionsUnavailable(
                                "cancelled while waiting for a free session", cancelled=True
                            )
                        wait = WAIT_SLICE_S
                        if deadline is not None:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                raise SessionsUnavailable(
                                    f"no session became free in time ({self._describe()})"
                                )
                            wait = min(wait, left)
                        self._cond.wait(wait)
            finally:
                for link in dead:
                    self._close_link(link)
            self._dial_extra()

    def _free(self) -> _Link[L] | None:
        live = [s for s in self._links if self._alive(s.link)]
        if not live:
            # Let the caller's open_session report the dead connection as it sees it.
            return self._links[0]
        for s in live:
            if s.in_use < s.limit:
                return s
        return None

    def _drop_dead(self) -> list[L]:
        """Forget extra links that died with nothing on them and return them, to be
        closed (the first link stays: its failure is the host's)."""
        dead = [s for s in self._links[1:] if s.in_use == 0 and not self._alive(s.link)]
        for s in dead:
            self._links.remove(s)
            log.info("%s: an extra connection was lost; %d left", self.name, len(self._links))
        return [s.link for s in dead]

    def _may_dial(self) -> bool:
        """Open one more link when the server's own limit is what makes us wait."""
        return (
            self._dial is not None
            and not self._dialing
            and not self._dial_failed
            and len(self._links) < self._max_links
            and any(s.learned for s in self._links)
        )

    def _tell_queueing(self) -> None:
        if self._told_queueing or self._dialing:
            return
        self._told_queueing = True
        log.info(
            "%s: every session the host allows is in use (%s); more wait for a free one",
            self.name,
            self._describe(),
        )

    def _describe(self) -> str:
        parts = [f"{s.open}/{s.limit}{' learned' if s.learned else ''}" for s in self._links]
        noun = "connection" if len(parts) == 1 else "connections"
        return f"{len(parts)} {noun}: " + ", ".join(parts)

    def _dial_extra(self) -> None:
        """Dial one more link (the lock is not held: a handshake takes a while)."""
        assert self._dial is not None
        try:
            link = self._dial()
        except Exception as exc:
            with self._cond:
                self._dialing = False
                self._dial_failed = True
                self._cond.notify_all()
                count = len(self._links)
            log.info(
                "%s: could not open another connection (%s); sessions wait for a free one "
                "on the %d open",
                self.name,
                exc,
                count,
            )
            return
        except BaseException:
            with self._cond:
                self._dialing = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._dialing = False
            self._cond.notify_all()
            if self._closed:
                added = None
            else:
                limit = min(s.limit for s in self._links if s.learned)
                added = _Link(link, limit, learned=True)
                self._links.append(added)
                count = len(self._links)
        if added is None:
            self._close_link(link)
            return
        log.info(
            "%s: opened connection %d of at most %d (the host allows %d sessions per connection)",
            self.name,
            count,
            self._max_links,
            added.limit,
        )

    def _opened(self, slot: _Link[L]) -> None:
        with self._cond:
            slot.open += 1
            slot.proven = max(slot.proven, slot.open)
            if slot.learned and slot.proven > slot.limit:
                # Opens already under way when a refusal lowered the limit succeeded:
                # the server allows at least this many.
                slot.limit = min(self._cap, slot.proven)

    def _refused(self, slot: _Link[L], exc: SessionRefused) -> bool:
        """Learn from a refusal; returns whether any of ours were open or opening.

        The server had as many sessions as it allows, counting every one of ours it had
        accepted (some of them still on their way back to us) and the few it had not
        freed yet after we closed them. So its limit is about what we hold (open or
        opening) besides the refused one, and at least what it once accepted at once.
        Opens refused in a burst each set it anew, so the last word, with the fewest of
        ours in flight, is the one that stays.
        """
        with self._cond:
            slot.in_use -= 1
            before, was_learned = slot.limit, slot.learned
            slot.limit = max(1, min(self._cap, max(slot.proven, slot.in_use)))
            slot.learned = True
            held, after = slot.in_use, slot.limit
            self._cond.notify_all()
        if not was_learned:
            log.info(
                "%s: the server refused a session with %d of ours open or opening (%s): "
                "learning its limit per connection (sshd's MaxSessions)",
                self.name,
                held,
                exc,
            )
        log.debug(
            "%s: a session was refused with %d of ours open or opening (%s); limit %d (was "
            "%d), trying again",
            self.name,
            held,
            exc,
            after,
            before,
        )
        return held > 0

    def _give_back(self, slot: _Link[L], *, opened: bool) -> None:
        with self._cond:
            slot.in_use -= 1
            if opened:
                slot.open -= 1
            self._cond.notify_all()


__all__ = ["Lease", "LinkState", "SessionBudget", "SessionRefused", "SessionsUnavailable"]

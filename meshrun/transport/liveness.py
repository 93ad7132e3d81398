"""Dead-peer detection, as OpenSSH's ``ServerAliveInterval``/``ServerAliveCountMax``.

paramiko's own keepalive (``Transport.set_keepalive``) asks for no reply, so a host that
stops answering — its sshd stopped, a network path that drops packets without a reset —
is never noticed, and a command without a timeout waits for it forever. This does what
``ssh`` does: after ``interval`` seconds without a packet from the server, send a
``keepalive@openssh.com`` global request that wants a reply (OpenSSH answers with
REQUEST_FAILURE, which is an answer); any packet received counts as an answer and
resets the count; one more interval after ``count_max`` unanswered probes the host is
declared dead and its transport closed, so every channel on it ends at once.

A host is thus given up ``interval × (count_max + 1)`` after its last packet (20 s with
the defaults, 5 s × 3) — the same arithmetic as OpenSSH's client.

One monitor thread per connector watches every transport (no thread per host). Packets
are noticed in paramiko's reader thread, which stamps the time (one call per packet);
probes are sent from short-lived threads, because a send can block on a peer that
stopped reading, and the watch of every other host must go on meanwhile.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import field
from typing import Any

from meshrun.records import record

log = logging.getLogger(__name__)

#: OpenSSH's request name; its servers answer it (with a failure: still an answer).
KEEPALIVE_REQUEST = "keepalive@openssh.com"
#: Defaults when neither the command line nor ssh_config says (ssh_config's
#: ServerAliveCountMax defaults to 3 too).
DEFAULT_INTERVAL_S = 5.0
DEFAULT_COUNT_MAX = 3
#: Longest pause of the monitor between two looks at its transports.
MAX_TICK_S = 0.5


class Verdict(enum.Enum):
    WAIT = "wait"
    PROBE = "probe"
    DEAD = "dead"


@record(frozen=False)
class Liveness:
    """One transport's probe count; pure arithmetic on the times it is given.

    ``heard_at`` is written by whoever sees packets arrive (another thread: a float
    store is atomic); :meth:`step` is called by the monitor alone.
    """

    interval_s: float
    count_max: int
    heard_at: float
    probes: int = 0  # sent since the last packet heard
    probed_at: float = 0.0
    _counted_from: float = field(init=False)

    def __post_init__(self) -> None:
        self._counted_from = self.heard_at

    def heard(self, now: float) -> None:
        self.heard_at = now

    def step(self, now: float) -> Verdict:
        """What to do at ``now``: wait, send a probe (counted here), or give up."""
        if self.heard_at != self._counted_from:  # a packet came since we counted
            self._counted_from = self.heard_at
            self.probes = 0
        since = self.probed_at if self.probes else self.heard_at
        if now - since < self.interval_s:
            return Verdict.WAIT
        if self.probes >= self.count_max:
            return Verdict.DEAD
        self.probes += 1
        self.probed_at = now
        return Verdict.PROBE

    def reason(self) -> str:
        """Why the host was given up, for messages: it stopped answering, not timed out."""
        if self.count_max == 0:
            return f"stopped answering (nothing received in {self.interval_s:g}s)"
        plural = "s" if self.count_max != 1 else ""
        return (
            f"stopped answering (no reply to {self.count_max} keepalive{plural} in "
            f"{self.count_max * self.interval_s:g}s)"
        )


def tick_s(intervals: list[float]) -> float:
    """How long the monitor sleeps: a quarter of the shortest interval, 50-500 ms."""
    if not intervals:
        return MAX_TICK_S
    return max(0.05, min(MAX_TICK_S, min(intervals) / 4))


@record(frozen=False)
class _Watch:
    link: Any  # a paramiko Transport, or anything with is_active()
    state: Liveness
    probe: Callable[[], None]
    on_dead: Callable[[str], None]
    sending: threading.Event = field(default_factory=threading.Event)
    name: str = "a host"  # for logs


class LivenessMonitor:
    """Watches links for silence with one thread; see the module docstring.

    :meth:`watch` a link with its probe (send one keepalive wanting a reply) and what to
    do when it is dead (close it); feed packets to the returned :class:`Liveness`'s
    ``heard``. :meth:`reason` tells afterwards why a link was given up.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []
        self._dead: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(
        self,
        link: Any,
        *,
        interval_s: float,
        count_max: int,
        probe: Callable[[], None],
        on_dead: Callable[[str], None],
        name: str = "a host",
    ) -> Liveness:
        """Start watching ``link`` (``name``: the host, for logs); an ``interval_s`` of 0
        turns detection off."""
        state = Liveness(interval_s, count_max, heard_at=self._clock())
        if interval_s <= 0:
            return state
        with self._lock:
            if self._stop.is_set():
                return state
            self._watches.append(_Watch(link, state, probe, on_dead, name=name))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="meshrun-liveness", daemon=True
                )
                self._thread.start()
        return state

    def reason(self, link: Any) -> str | None:
        """Why ``link`` was given up by this monitor; None if it was not."""
        with self._lock:
            return self._dead.get(link)

    def close(self) -> None:
        """Stop watching (the links themselves are the caller's to close)."""
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
            self._watches.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def check(self) -> None:
        """One look at every link (the thread's loop body; tests call it directly)."""
        now = self._clock()
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            if not _active(w.link):
                self._forget(w)
                continue
            verdict = w.state.step(now)
            if verdict is Verdict.PROBE:
                self._send(w)
            elif verdict is Verdict.DEAD:
                reason = w.state.reason()
                with self._lock:
                    self._dead[w.link] = reason
                self._forget(w)
                # on_dead says so, naming the host (this monitor knows only the link).
                threading.Thread(
                    target=w.on_dead, args=(reason,), name="meshrun-liveness-close", daemon=True
                ).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                intervals = [w.state.interval_s for w in self._watches]
            if self._stop.wait(tick_s(intervals)):
                return
            try:
                self.check()
            except Exception:  # never let one bad link end the watch of all
                log.exception("liveness check failed")

    def _forget(self, w: _Watch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def _send(self, w: _Watch) -> None:
        """Send a probe off this thread; still counted if the last one has not gone
        out yet (a send that blocks is a peer that stopped reading)."""
        if w.sending.is_set():
            return
        w.sending.set()

        def send() -> None:
            try:
                w.probe()
            except Exception as exc:  # a closing transport: its reader notices
                log.debug("%s: keepalive not sent: %s", w.name, exc)
            finally:
                w.sending.clear()

        threading.Thread(target=send, name="meshrun-keepalive", daemon=True).start()


def _active(link: Any) -> bool:
    return bool(link.is_active())


# -- paramiko ------------------------------------------------------------------------------


def send_keepalive(transport: Any) -> None:
    """A ``keepalive@openssh.com`` global request that wants a reply.

    paramiko's ``global_request(wait=False)`` sends want-reply false, and ``wait=True``
    blocks on an event the transport shares with other requests; so the message is
    built here and sent as paramiko sends its own user requests (waiting out a key
    exchange). The reply is seen as any other packet (:func:`observe_packets`).
    """
    import paramiko
    from paramiko.common import cMSG_GLOBAL_REQUEST

    m = paramiko.Message()
    m.add_byte(cMSG_GLOBAL_REQUEST)
    m.add_string(KEEPALIVE_REQUEST)
    m.add_boolean(True)
    transport._send_user_message(m)


def observe_packets(transport: Any, state: Liveness) -> None:
    """Stamp ``state`` on every packet ``transport`` reads: any traffic is liveness.

    paramiko's reader thread calls ``packetizer.read_message`` once per packet; this
    wraps it for this transport only (an attribute of its own packetizer).
    """
    packetizer = transport.packetizer
    read = packetizer.read_message
    clock = time.monotonic

    def read_message() -> Any:
        message = read()
        state.heard_at = clock()
        return message

    packetizer.read_message = read_message


__all__ = [
    "DEFAULT_COUNT_MAX",
    "DEFAULT_INTERVAL_S",
    "KEEPALIVE_REQUEST",
    "Liveness",
    "LivenessMonitor",
    "Verdict",
    "observe_packets",
    "send_keepalive",
]

"""How many SSH connections may be starting at once, and what to do when sshd drops one.

sshd's ``MaxStartups`` (``10:30:100`` unless changed) counts connections that have not
logged in yet: past 10 it drops new ones at random, past 100 every one, right after
accepting them, so the client sees the connection reset or closed before sshd's banner.
A fan-out to many hosts behind one bastion puts every host's dial on that bastion at
the same moment (a ``ProxyCommand ssh -W ...`` is a whole new connection to it per
host). So:

- dials through one gateway (a ProxyJump chain or a ProxyCommand) are bounded, 8 at a
  time by default (:class:`HandshakeGate`); hosts dialled directly are bounded only by
  the connector's global handshake limit;
- a dial that sshd dropped early is tried again a few times with jittered backoff
  (:func:`dial_with_retries`) before the host counts as unreachable, and the error then
  says what happened instead of blaming a hung host.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from meshrun.errors import HostUnreachable
from meshrun.transport.proxycommand import ProxyCommandFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Dials through one gateway in flight at once (MaxStartups drops start past 10).
HANDSHAKES_PER_GATEWAY = 8
#: Tries of one dial when sshd keeps dropping it early.
DIAL_ATTEMPTS = 4
#: Pause before the first retry; doubled for each further one, jittered by +-50 %.
FIRST_RETRY_S = 0.1

# What a connection dropped right after accept looks like from the client.
_DROPPED = (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
# What rules that out: nothing listens, or nothing answers.
_NOT_DROPPED = (ConnectionRefusedError, TimeoutError)
# ... and what a ProxyCommand (``ssh -W``) says when it fails for another reason.
_NOT_DROPPED_TEXT = (
    "host key verification failed",
    "permission denied",
    "could not resolve",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "timed out",
)


def gateway_of(endpoint: object) -> str | None:
    """The gateway a host is dialled through (``ProxyJump`` hops or ``ProxyCommand``),
    as a key shared by every host behind it; None for a direct dial."""
    jump = getattr(endpoint, "proxy_jump", None)
    if jump:
        return "ProxyJump " + (jump if isinstance(jump, str) else ",".join(jump))
    command = getattr(endpoint, "proxy_command", None)
    if command:
        # The unexpanded command (``ssh -W %h:%p bastion``) is the same for every host
        # behind the bastion.
        return f"ProxyCommand {command}"
    return None


class HandshakeGate:
    """At most ``per_gateway`` dials in flight through any one gateway.

    Re-entrant per thread: a dial that needs another dial through the same gateway (a
    jump host reached through the chain it heads) does not wait for itself.
    """

    def __init__(self, per_gateway: int = HANDSHAKES_PER_GATEWAY) -> None:
        if per_gateway < 1:
            raise ValueError(f"per_gateway must be >= 1, not {per_gateway}")
        self.per_gateway = per_gateway
        self._lock = threading.Lock()
        self._gates: dict[str, threading.BoundedSemaphore] = {}
        self._held = threading.local()

    @contextlib.contextmanager
    def through(self, gateway: str | None) -> Iterator[None]:
        held: set[str] | None = getattr(self._held, "keys", None)
        if held is None:
            held = self._held.keys = set()
        if gateway is None or gateway in held:
            yield
            return
        with self._lock:
            gate = self._gates.setdefault(gateway, threading.BoundedSemaphore(self.per_gateway))
        with gate:
            held.add(gateway)
            try:
                yield
            finally:
                held.discard(gateway)


class _DroppedTooOften(HostUnreachable):
    """What :func:`dial_with_retries` raises at the end: never retried further up (a
    jump host's drops must not be retried again for every host behind it)."""


def dropped_early(exc: BaseException) -> bool:
    """Does ``exc`` (with its causes) look like sshd closing the connection before or
    during its banner — MaxStartups — rather than a host that is down or hung?"""
    seen: set[int] = set()
    dropped = False
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ProxyCommandFailed):  # what the command said decides
            return cur.dropped_by_sshd
        text = str(cur).lower()
        if isinstance(cur, (*_NOT_DROPPED, _DroppedTooOften)) or any(
            t in text for t in _NOT_DROPPED_TEXT
        ):
            return False
        if isinstance(cur, _DROPPED) or "exceeded maxstartups" in text:
            dropped = True
        cur = cur.__cause__ or cur.__context__
    return dropped


def dial_with_retries(
    dial: Callable[[], T],
    *,
    host: str,
    early_s: float,
    attempts: int = DIAL_ATTEMPTS,
    closing: Callable[[], bool] = lambda: False,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``dial()``, tried again when sshd drops it early (within ``early_s``).

    Only this host's own drops are retried (a jump host's dial retries itself), never
    while ``closing()``; other errors pass through at once. After ``attempts`` drops in
    a row: HostUnreachable saying so.
    """
    uniform = rng.uniform if rng is not None else random.uniform  # no Random per dial
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            return dial()
        except HostUnreachable as exc:
            took = time.monotonic() - started
            if exc.host != host or took > early_s or closing() or not dropped_early(exc):
                raise
            if attempt == attempts:
                raise _DroppedTooOften(
                    host,
                    f"sshd closed the connection before its banner {attempts} times in a "
                    "row: too many connections starting at once (its MaxStartups)",
                    fix="try again later, or raise MaxStartups on the host (or the "
                    "bastion in front of it)",
                ) from exc
            pause = FIRST_RETRY_S * 2 ** (attempt - 1) * uniform(0.5, 1.5)
            log.info(
                "%s: sshd dropped the connection early (MaxStartups?); dialling again in "
                "%.2fs (attempt %d of %d)",
                host,
                pause,
                attempt + 1,
                attempts,
            )
            sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["HandshakeGate", "dial_with_retries", "dropped_early", "gateway_of"]

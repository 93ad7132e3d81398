"""The per-connection session budget against a fake sshd that enforces MaxSessions.

A FakeLink is one connection: it refuses an open past its ``max_sessions`` and counts
the most sessions it ever held, so the tests check what the server would see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from meshrun.transport import sessions
from meshrun.transport.sessions import (
    Lease,
    SessionBudget,
    SessionRefused,
    SessionsUnavailable,
)


@dataclass(eq=False)
class FakeLink:
    max_sessions: int
    name: str = "link"
    open: int = 0
    most: int = 0
    opens: int = 0
    refusals: int = 0
    alive: bool = True
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class FakeSession:
    link: FakeLink

    def close(self) -> None:
        with self.link.lock:
            self.link.open -= 1


def open_on(link: FakeLink) -> FakeSession:
    with link.lock:
        if link.open >= link.max_sessions:
            link.refusals += 1
            raise SessionRefused("open failed")
        link.open += 1
        link.opens += 1
        link.most = max(link.most, link.open)
    return FakeSession(link)


def budget_for(link: FakeLink, *, limit: int = 64) -> SessionBudget[FakeLink]:
    return SessionBudget(
        "h1",
        link,
        limit=limit,
        alive=lambda li: li.alive,
        close_link=lambda li: setattr(li, "closed", True),
        sleep=lambda s: time.sleep(min(s, 0.001)),
    )


def done(lease: Lease[FakeLink, FakeSession]) -> None:
    """As a caller does: close the channel, then give its place back."""
    lease.session.close()
    lease.release()


def run_threads(count: int, work: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "expected every worker to finish"
    return errors


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=sessions.__name__):
        yield caplog


def test_refusals_teach_the_limit_and_never_reach_the_caller(
    info_logs: pytest.LogCaptureFixture,
) -> None:
    link = FakeLink(max_sessions=3)
    budget = budget_for(link)

    def churn() -> None:
        for _ in range(25):
            lease = budget.acquire(open_on)
            time.sleep(0.0005)
            done(lease)

    errors = run_threads(8, churn)
    assert errors == [], f"expected refusals to be retried, got {errors!r}"
    assert link.opens == 8 * 25 and link.most <= 3
    (state,) = budget.state()
    assert state.learned and state.limit == 3, f"expected limit 3 learned, got {state}"
    assert state.in_use == 0 and state.open == 0
    assert "learning its limit" in info_logs.text


def test_more_sessions_than_a_connection_allows_open_another_connection(
    info_logs: pytest.LogCaptureFixture,
) -> None:
    first = FakeLink(max_sessions=3, name="first")
    dialled: list[FakeLink] = []

    def dial() -> FakeLink:
        link = FakeLink(max_sessions=3, name=f"extra{len(dialled) + 1}")
        dialled.append(link)
        return link

    budget = budget_for(first)
    budget.allow_extra_links(dial, 3)
    hold = threading.Event()
    held = threading.Semaphore(0)

    def hold_one() -> None:
        lease = budget.acquire(open_on)
        held.release()
        hold.wait(10)
        done(lease)

    workers = threading.Thread(target=lambda: run_threads(8, hold_one))
    workers.start()
    for _ in range(8):
        assert held.acquire(timeout=10), "expected 8 sessions over 3 connections"
    links = budget.links
    assert len(links) == 3 and links[0] is first, "expected two extra connections"
    assert all(li.most <= 3 for li in links), "no connection may exceed MaxSessions"
    assert sum(li.open for li in links) == 8
    hold.set()
    workers.join(10)
    assert sorted(li.name for li in budget.close()) == ["extra1", "extra2", "first"]
    assert "opened connection 2 of at most 3" in info_logs.text


def test_without_extra_connections_callers_queue_for_a_free_session(
    info_logs: pytest.LogCaptureFixture,
) -> None:
    link = FakeLink(max_sessions=2)
    budget = budget_for(link)
    finished = []

    def hold_briefly() -> None:
        lease = budget.acquire(open_on)
        time.sleep(0.01)
        done(lease)
        finished.append(1)

    assert run_threads(6, hold_briefly) == []
    assert len(finished) == 6 and link.most <= 2 and budget.state()[0].limit == 2
    assert "more wait for a free one" in info_logs.text


def test_a_failed_extra_dial_falls_back_to_queueing(info_logs: pytest.LogCaptureFixture) -> None:
    link = FakeLink(max_sessions=2)
    budget = budget_for(link)
    calls = []

    def dial() -> FakeLink:
        calls.append(1)
        raise OSError("MaxStartups")

    budget.allow_extra_links(dial, 4)

    def hold_briefly() -> None:
        lease = budget.acquire(open_on)
        time.sleep(0.01)
        done(lease)

    assert run_threads(5, hold_briefly) == []
    assert calls == [1], "expected one failed dial, then no more tries"
    assert len(budget.links) == 1
    assert "could not open another connection" in info_logs.text


def test_a_refusal_right_after_a_close_is_lag_not_a_lower_limit() -> None:
    link = FakeLink(max_sessions=4)
    budget = budget_for(link)
    leases = [budget.acquire(open_on) for _ in range(4)]  # the server took 4 at once
    for lease in leases:
        done(lease)
    script = iter(["refuse", "ok"])  # sshd has not freed one of them yet

    def lagging(li: FakeLink) -> FakeSession:
        if next(script) == "refuse":
            raise SessionRefused("open failed")
        return open_on(li)

    others = [budget.acquire(open_on) for _ in range(3)]
    lease = budget.acquire(lagging)
    state = budget.state()[0]
    assert state.learned and state.limit == 4, f"expected the limit to stay 4, got {state}"
    for held in [*others, lease]:
        done(held)


def test_a_server_that_refuses_every_session_is_an_error_not_a_hang() -> None:
    link = FakeLink(max_sessions=0)
    pauses: list[float] = []
    budget = SessionBudget("h1", link, limit=10, sleep=pauses.append)
    with pytest.raises(SessionsUnavailable, match="refused 6 sessions in a row") as info:
        budget.acquire(open_on)
    assert not info.value.cancelled
    # Backed off (doubling, jittered) between tries, and gave up within a fraction of
    # a second rather than hanging.
    assert len(pauses) == sessions.EMPTY_REFUSALS_MAX - 1
    nominal = sum(sessions.FIRST_PAUSE_S * 2**i for i in range(len(pauses)))
    assert nominal * 0.5 <= sum(pauses) <= nominal * 1.5 < 1.0


def test_a_wait_ends_on_cancel_or_timeout() -> None:
    link = FakeLink(max_sessions=5)
    budget = budget_for(link, limit=1)
    held = budget.acquire(open_on)
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(SessionsUnavailable) as info:
        budget.acquire(open_on, cancel=cancel)
    assert info.value.cancelled and time.monotonic() - started < 2
    with pytest.raises(SessionsUnavailable, match="no session became free") as info:
        budget.acquire(open_on, timeout_s=0.05)
    assert not info.value.cancelled
    done(held)
    done(budget.acquire(open_on, timeout_s=0.05))


def test_other_errors_pass_through_and_give_the_place_back() -> None:
    budget = budget_for(FakeLink(max_sessions=5), limit=1)

    def broken(link: FakeLink) -> FakeSession:
        raise RuntimeError("link lost")

    with pytest.raises(RuntimeError, match="link lost"):
        budget.acquire(broken)
    assert budget.state()[0].in_use == 0
    done(budget.acquire(open_on, timeout_s=1))


def test_close_wakes_waiters_and_a_lease_is_given_back_once() -> None:
    link = FakeLink(max_sessions=5)
    budget = budget_for(link, limit=1)
    held = budget.acquire(open_on)
    errors = []

    def wait() -> None:
        try:
            budget.acquire(open_on)
        except SessionsUnavailable as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    assert budget.close() == [link]
    waiter.join(5)
    assert len(errors) == 1 and "closed" in str(errors[0])
    held.release()
    held.release()
    assert budget.state()[0].in_use == 0


def test_a_dead_extra_connection_is_dropped_and_closed() -> None:
    first = FakeLink(max_sessions=1, name="first")
    extra = FakeLink(max_sessions=1, name="extra")
    budget = budget_for(first)
    budget.allow_extra_links(lambda: extra, 2)
    a = budget.acquire(open_on)
    b_box: list[Lease[FakeLink, FakeSession]] = []
    t = threading.Thread(target=lambda: b_box.append(budget.acquire(open_on)))
    t.start()
    t.join(5)
    assert b_box and b_box[0].link is extra
    done(b_box[0])
    extra.alive = False
    done(a)
    done(budget.acquire(open_on))
    assert budget.links == [first] and extra.closed

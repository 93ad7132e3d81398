"""Dead-peer detection: the probe arithmetic (pure) and the monitor with a fake clock."""

from __future__ import annotations

import threading

import pytest

from meshrun.transport.liveness import Liveness, LivenessMonitor, Verdict, tick_s


def _steps(state: Liveness, times: list[float]) -> list[Verdict]:
    return [state.step(t) for t in times]


def test_probes_every_interval_of_silence_then_gives_up_after_count_max() -> None:
    s = Liveness(interval_s=5, count_max=3, heard_at=0.0)
    got = _steps(s, [4.9, 5.0, 9.9, 10.0, 15.0, 19.9, 20.0])
    W, P, D = Verdict.WAIT, Verdict.PROBE, Verdict.DEAD
    assert got == [W, P, W, P, P, W, D]
    assert s.reason() == "stopped answering (no reply to 3 keepalives in 15s)"


def test_any_packet_counts_as_a_reply_and_restarts_the_count() -> None:
    s = Liveness(interval_s=5, count_max=2, heard_at=0.0)
    assert s.step(5.0) is Verdict.PROBE
    assert s.step(10.0) is Verdict.PROBE
    s.heard(10.5)  # the answer (or any traffic) arrives
    assert s.step(14.0) is Verdict.WAIT
    assert s.probes == 0
    assert s.step(15.5) is Verdict.PROBE
    assert s.step(20.5) is Verdict.PROBE
    assert s.step(25.5) is Verdict.DEAD


def test_steady_traffic_never_probes() -> None:
    s = Liveness(interval_s=1, count_max=1, heard_at=0.0)
    for t in range(1, 100):
        s.heard(t - 0.1)
        assert s.step(float(t)) is Verdict.WAIT


def test_count_max_zero_gives_up_after_one_silent_interval() -> None:
    s = Liveness(interval_s=2, count_max=0, heard_at=0.0)
    assert s.step(1.0) is Verdict.WAIT
    assert s.step(2.0) is Verdict.DEAD
    assert s.reason() == "stopped answering (nothing received in 2s)"


def test_one_keepalive_is_singular() -> None:
    s = Liveness(interval_s=1.5, count_max=1, heard_at=0.0)
    assert s.reason() == "stopped answering (no reply to 1 keepalive in 1.5s)"


@pytest.mark.parametrize(
    ("intervals", "tick"), [([], 0.5), ([5.0], 0.5), ([1.0, 5.0], 0.25), ([0.1], 0.05)]
)
def test_the_monitor_looks_often_enough_for_its_shortest_interval(
    intervals: list[float], tick: float
) -> None:
    assert tick_s(intervals) == tick


class _Link:
    def __init__(self) -> None:
        self.active = True
        self.closed = threading.Event()
        self.probes = 0

    def is_active(self) -> bool:
        return self.active

    def probe(self) -> None:
        self.probes += 1

    def close(self, reason: str) -> None:
        self.active = False
        self.closed.set()


def _monitor(now: list[float]) -> LivenessMonitor:
    return LivenessMonitor(clock=lambda: now[0])


def _settle(link: _Link, probes: int) -> None:
    """Probes go out on their own threads: wait for them."""
    for _ in range(200):
        if link.probes >= probes:
            return
        threading.Event().wait(0.01)


def test_the_monitor_probes_a_silent_link_and_closes_it_with_a_reason() -> None:
    now = [0.0]
    monitor = _monitor(now)
    quiet, chatty = _Link(), _Link()
    try:
        monitor.watch(quiet, interval_s=1, count_max=2, probe=quiet.probe, on_dead=quiet.close)
        talk = monitor.watch(
            chatty, interval_s=1, count_max=2, probe=chatty.probe, on_dead=chatty.close
        )
        for t in (1.0, 2.0, 3.0):
            now[0] = t
            talk.heard(t)
            monitor.check()
            _settle(quiet, int(t))
        assert quiet.closed.wait(5), "expected the silent link closed"
        assert quiet.probes == 2
        assert monitor.reason(quiet) == "stopped answering (no reply to 2 keepalives in 2s)"
        assert chatty.probes == 0 and not chatty.closed.is_set()
        assert monitor.reason(chatty) is None
    finally:
        monitor.close()


def test_a_link_closed_by_its_owner_is_forgotten_not_blamed() -> None:
    now = [0.0]
    monitor = _monitor(now)
    link = _Link()
    try:
        monitor.watch(link, interval_s=1, count_max=1, probe=link.probe, on_dead=link.close)
        link.active = False
        now[0] = 10.0
        monitor.check()
        assert monitor.reason(link) is None and not link.closed.is_set()
    finally:
        monitor.close()


def test_a_probe_that_blocks_does_not_stall_the_watch() -> None:
    now = [0.0]
    monitor = _monitor(now)
    stuck = threading.Event()
    link, other = _Link(), _Link()

    def blocking_probe() -> None:
        link.probes += 1
        stuck.wait(10)  # a peer that stopped reading: the send never returns

    try:
        monitor.watch(link, interval_s=1, count_max=2, probe=blocking_probe, on_dead=link.close)
        monitor.watch(other, interval_s=1, count_max=5, probe=other.probe, on_dead=other.close)
        for t in (1.0, 2.0, 3.0):
            now[0] = t
            monitor.check()
        assert link.closed.wait(5), "expected the link with a stuck probe given up"
        assert link.probes == 1  # the second probe was counted, not sent on top
        _settle(other, 3)
        assert other.probes == 3
    finally:
        stuck.set()
        monitor.close()


def test_interval_zero_turns_detection_off() -> None:
    now = [0.0]
    monitor = _monitor(now)
    link = _Link()
    try:
        monitor.watch(link, interval_s=0, count_max=3, probe=link.probe, on_dead=link.close)
        now[0] = 1000.0
        monitor.check()
        assert link.probes == 0 and not link.closed.is_set()
    finally:
        monitor.close()

"""The executor's host pool on the in-memory connector: connecting and setting up each
host off the coordinator's thread, the first hosts gathered before they join the
scheduler, refusals, a host that drops during set-up, hosts that leave."""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Callable

from meshrun.agent.client import Runner
from meshrun.config.inventory import Host
from meshrun.dispatch.executor import GATHER_S, HostState
from meshrun.dispatch.executor.hosts import (
    SHORTAGE_GIVE_UP_S,
    SHORTAGE_RETRY_S,
    Connected,
    HostPool,
    Starved,
    Unreachable,
)
from meshrun.dispatch.scheduler import HostJoined, HostsJoined, HostSpec
from meshrun.errors import HostKeyError, HostUnreachable
from meshrun.testing.fake import FakeConnector
from meshrun.transport.base import Connection

H1 = Host(name="h1", workdir="~/w", slots=2, weight=2.0, labels=frozenset({"x"}))
H2 = Host(name="h2", workdir="~/w")

Item = Connected | Unreachable | Starved


def _no_later(delay_s: float, call: Callable[[], None]) -> None:
    raise AssertionError("nothing should be retried here")


def pool(
    connector: FakeConnector, hosts: list[Host], **kw: object
) -> tuple[HostPool, queue.Queue[Item]]:
    items: queue.Queue[Item] = queue.Queue()
    options = {"prepare": None, "use_agent": False, "later": _no_later, **kw}
    return HostPool(hosts, connector, items.put, **options), items  # type: ignore[arg-type]


def next_item(items: queue.Queue[Item]) -> Item:
    return items.get(timeout=10)


def connected(items: queue.Queue[Item], n: int) -> dict[str, Connected]:
    got = [next_item(items) for _ in range(n)]
    assert all(isinstance(i, Connected) for i in got), got
    return {i.host.name: i for i in got if isinstance(i, Connected)}


def test_the_first_hosts_join_together_once_all_are_ready() -> None:
    hosts, items = pool(FakeConnector(cpus=4), [H1, H2])
    hosts.connect_all()
    ready = connected(items, 2)
    one = hosts.ready(ready["h1"])
    assert one is not None and one.state is HostState.OK and one.slots == 2  # its own slots
    assert hosts.join(one, at=0.0) is None, "held back: h2 still connecting"
    assert hosts.gathering and hosts.gather_deadline == GATHER_S
    assert hosts.gathered(at=0.1) is None
    two = hosts.ready(ready["h2"])
    assert two is not None and two.slots == 4  # the CPUs the host reported
    assert hosts.join(two, at=0.2) is None
    assert hosts.gathered(at=0.2) == HostsJoined(
        (HostSpec("h1", 2, 2.0, frozenset({"x"})), HostSpec("h2", 4, 1.0))
    )
    assert not hosts.gathering and hosts.gather_deadline is None
    assert hosts.live() == ["h1", "h2"]
    assert dict(hosts.ready_weights()) == {"h1": 2.0, "h2": 1.0}


def test_the_first_host_does_not_wait_longer_than_the_gathering_time() -> None:
    hosts, items = pool(FakeConnector(), [H1, H2])
    hosts.connect_all()
    ready = connected(items, 2)
    one = hosts.ready(ready["h1"])
    assert one is not None and hosts.join(one, at=10.0) is None
    assert hosts.gathered(at=10.0 + GATHER_S / 2) is None  # h2 has not said it is ready
    joined = hosts.gathered(at=10.0 + GATHER_S)
    assert joined is not None and [s.name for s in joined.hosts] == ["h1"]
    late = hosts.ready(ready["h2"])
    assert late is not None
    assert hosts.join(late, at=11.0) == HostJoined(HostSpec("h2", 2, 1.0))


H3 = Host(name="h3", workdir="~/w")


def test_later_hosts_join_in_groups_while_others_still_connect() -> None:
    """Each join makes the scheduler place the queued tasks again: hosts getting ready
    one by one (256 hosts) join a group at a time, none waiting more than GATHER_S."""
    hosts, items = pool(FakeConnector(), [H1, H2, H3])
    hosts.connect_all()
    ready = connected(items, 3)  # the pool learns of each only through ready()
    first = hosts.ready(ready["h1"])
    assert first is not None and hosts.join(first, at=0.0) is None
    joined = hosts.gathered(at=GATHER_S)
    assert joined is not None and [s.name for s in joined.hosts] == ["h1"]
    second = hosts.ready(ready["h2"])
    assert second is not None and hosts.join(second, at=5.0) is None, "h3 still connects"
    assert hosts.gathering and hosts.gather_deadline == 5.0 + GATHER_S
    assert hosts.gathered(at=5.1) is None
    third = hosts.ready(ready["h3"])
    assert third is not None and hosts.join(third, at=5.2) is None
    joined = hosts.gathered(at=5.2)  # none connects any more: no reason to wait
    assert joined is not None and [s.name for s in joined.hosts] == ["h2", "h3"]
    assert not hosts.gathering and hosts.gather_deadline is None


def test_a_host_lost_while_it_waited_to_join_does_not_join() -> None:
    hosts, items = pool(FakeConnector(), [H1, H2, H3])
    hosts.connect_all()
    ready = connected(items, 3)
    first = hosts.ready(ready["h1"])
    assert first is not None and hosts.join(first, at=0.0) is None
    assert hosts.gathered(at=GATHER_S) is not None
    second = hosts.ready(ready["h2"])
    assert second is not None and hosts.join(second, at=5.0) is None
    assert hosts.lose("h2", "stopped answering")
    assert hosts.gathered(at=5.0 + GATHER_S) is None


def test_a_refused_host_stays_refused_when_it_joins_again() -> None:
    key = HostKeyError("h2", "HOST KEY CHANGED", fingerprint="SHA256:x", changed=True, fix="")
    connector = FakeConnector(refuse={"h2": key})
    hosts, items = pool(connector, [H2])
    hosts.connect_all()
    down = next_item(items)
    assert down == Unreachable(H2, "HOST KEY CHANGED", refused=True)  # named once, not twice
    assert isinstance(down, Unreachable) and hosts.unreachable(down)
    (summary,) = hosts.summaries()
    assert (summary.status, summary.refused, summary.runner) == ("unreachable", True, None)
    del connector.refuse["h2"]
    hosts.add(H2)  # discovery sees it again
    back = next_item(items)
    assert isinstance(back, Connected)
    assert hosts.ready(back) is not None
    (summary,) = hosts.summaries()
    assert (summary.status, summary.refused, summary.runner) == ("ok", True, "exec")
    hosts.add(H2)  # already in the run: ignored
    assert connector.connects == ["h2", "h2"]


def test_a_link_that_drops_during_set_up_is_dialled_once_more() -> None:
    calls: list[str] = []

    def prepare(host: Host, conn: Connection, runner: Runner) -> str:
        calls.append(host.name)
        if len(calls) == 1:
            raise HostUnreachable(host.name, "the link dropped")
        return "/home/h1/w/ws-1"

    connector = FakeConnector()
    hosts, items = pool(connector, [H1], prepare=prepare)
    hosts.connect_all()
    item = next_item(items)
    assert isinstance(item, Connected) and item.workdir == "/home/h1/w/ws-1"
    info = hosts.ready(item)
    assert info is not None and info.placed.workdir == "/home/h1/w/ws-1"
    assert connector.connects == ["h1", "h1"] and calls == ["h1", "h1"]


def test_a_host_that_fails_set_up_twice_is_unreachable_not_refused() -> None:
    def prepare(host: Host, conn: Connection, runner: Runner) -> str:
        raise HostUnreachable(host.name, "the link dropped")

    hosts, items = pool(FakeConnector(), [H1], prepare=prepare)
    hosts.connect_all()
    item = next_item(items)
    # HostUnreachable is a ConnectError: counted as refused (exit 3), as over SSH.
    assert item == Unreachable(H1, "the link dropped", refused=True)


def test_hosts_that_leave_while_connecting_or_after() -> None:
    hosts, items = pool(FakeConnector(), [H1, H2])
    hosts.connect_all()
    ready = connected(items, 2)
    assert hosts.leave("h2", "its agent left the network")  # still connecting
    assert hosts.ready(ready["h2"]) is None, "it left: its runner is closed, not used"
    info = hosts.ready(ready["h1"])
    assert info is not None
    assert not hosts.leave("h1", "gone"), "a ready host is lost by the caller"
    assert hosts.lose("h1", "stopped answering")
    assert not hosts.lose("h1", "again"), "lost once"
    assert not hosts.lose("never-heard-of", "ignored")
    hosts.release("h1")
    assert hosts.live() == []
    assert {s.name: (s.status, s.error) for s in hosts.summaries()} == {
        "h1": (HostState.LOST, "stopped answering"),
        "h2": (HostState.LOST, "its agent left the network"),
    }


def test_a_host_still_connecting_when_the_run_ends_is_unused() -> None:
    hosts, _ = pool(FakeConnector(), [H1])  # never connected
    assert hosts.connecting
    (summary,) = hosts.summaries()
    assert summary.status is HostState.UNUSED
    assert hosts.close() == []  # no runner to close


def test_the_end_of_the_run_stops_every_runner_from_this_thread() -> None:
    """One thread per runner to close took 8 s to start on 256 hosts: each is stopped
    here, at once, and waited for after."""
    hosts, items = pool(FakeConnector(), [H1, H2])
    hosts.connect_all()
    ready = connected(items, 2)
    for item in ready.values():
        assert hosts.ready(item) is not None
    stopped: list[str] = []
    for item in ready.values():
        real = item.runner.stop
        item.runner.stop = lambda real=real, name=item.host.name: (stopped.append(name), real())  # type: ignore[method-assign]
    threads = threading.active_count()
    runners = hosts.close()
    assert sorted(stopped) == ["h1", "h2"] and len(runners) == 2
    assert threading.active_count() <= threads  # no closing thread
    for runner in runners:
        runner.join(1.0)


class OutOfFds(FakeConnector):
    """Connecting fails as it does when this process has no descriptor left, ``times``
    times."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def connect(self, host: Host) -> Connection:
        if self.times:
            self.times -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().connect(host)


def test_a_host_set_up_without_fds_here_is_retried_not_unreachable() -> None:
    later: list[tuple[float, Callable[[], None]]] = []
    hosts, items = pool(OutOfFds(times=1), [H1], later=lambda d, c: later.append((d, c)))
    hosts.connect_all()
    item = next_item(items)
    assert isinstance(item, Starved) and "file descriptors (EMFILE" in item.error, item
    assert hosts.starved(item, at=0.0), "the first shortage of the run is told"
    assert hosts.connecting and hosts.shortage == item.error
    ((delay, again),) = later
    assert delay == SHORTAGE_RETRY_S
    again()  # when the loop calls it: the host connects this time
    back = next_item(items)
    assert isinstance(back, Connected) and hosts.ready(back) is not None
    (summary,) = hosts.summaries()
    assert (summary.status, summary.error, summary.refused) == (HostState.OK, None, False)


def test_a_host_starved_too_long_with_no_host_working_is_given_up_unused() -> None:
    later: list[tuple[float, Callable[[], None]]] = []
    hosts, items = pool(OutOfFds(times=99), [H1], later=lambda d, c: later.append((d, c)))
    hosts.connect_all()
    first = next_item(items)
    assert isinstance(first, Starved)
    hosts.starved(first, at=0.0)
    later.pop()[1]()
    second = next_item(items)
    assert isinstance(second, Starved)
    assert not hosts.starved(second, at=SHORTAGE_GIVE_UP_S), "told once per run"
    assert later == [] and not hosts.connecting
    (summary,) = hosts.summaries()
    assert summary.status is HostState.UNUSED and not summary.refused
    assert summary.error == second.error

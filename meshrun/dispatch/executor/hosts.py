"""The hosts of a dispatch run: connecting and setting up each one, and what the run
knows of it (state, runner, slots, workdir).

Each host is connected by a thread of its own, so a slow or hung handshake holds up
no other host. That thread starts the host's runner and pushes the workspace through
it (``PrepareFn``), then hands the runner over through the run's queue (``Connected``),
or says why not (``Unreachable``). Everything else here runs on the coordinator's
thread. Hosts that get ready within GATHER_S of each other (while others still
connect) join the scheduler together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from meshrun import resources
from meshrun.agent.client import Runner, RunnerEvent, start_runner
from meshrun.config.inventory import Host
from meshrun.dispatch.executor.results import HostState, HostSummary
from meshrun.dispatch.scheduler import HostJoined, HostsJoined, HostSpec
from meshrun.errors import ConnectError, HostUnreachable, MeshrunError, ResourceExhausted
from meshrun.records import record
from meshrun.transport.base import Connection, Connector

#: One logger for the whole executor: ``-v`` shows its records, each naming its host.
log = logging.getLogger("meshrun.dispatch.executor")

#: At the start of a run, hosts that connect within this long after the first one
#: join together, so the first to connect does not start the longest tasks before
#: faster hosts are known. Later hosts join in groups too: one that gets ready while
#: others still connect waits at most this long for them, as each join makes the
#: scheduler place the queued tasks again (256 hosts joining one by one: 4.5 s of its
#: CPU for 10,000 tasks, against 1.2 s in groups).
GATHER_S = 0.5

#: The coordinator ran out of file descriptors, threads or memory while connecting a
#: host, starting a task or a transfer: that is tried again this much later (what ran
#: out may free up: a task ends, a transfer finishes, a host is lost), never counted as
#: the host's or the task's fault.
SHORTAGE_RETRY_S = 1.0
#: ...for this long while no host takes tasks; then the host is given up (``unused``,
#: the shortage its error) and, with no host left, the run ends saying what ran out.
SHORTAGE_GIVE_UP_S = 30.0

#: What each host of a dispatch holds for the whole run: its one pooled connection's
#: socket (256 hosts x 4 slots measured 257 fds with the logs in memory). Dialing (an
#: ssh-agent socket, a known_hosts read: 2 more for a moment) and transfers (rsync: ~14
#: each) wait for descriptors when short, so only this must fit before the run starts.
FDS_PER_HOST = 1

#: Readies a connected host for tasks once its runner is up: claims the run's workdir
#: there and pushes the workspace into it; returns the workdir its tasks run in.
PrepareFn = Callable[[Host, Connection, Runner], str]


@record
class Connected:
    """A host is set up: its runner is up and its workspace pushed."""

    host: Host
    runner: Runner
    fingerprint: str | None
    workdir: str  # where its tasks run (the run's own workdir there, when it claimed one)


@record
class Unreachable:
    host: Host
    error: str
    refused: bool = False  # a ConnectError: the run exits 3


@record
class Starved:
    """Connecting or setting up a host failed for want of this process's resources."""

    host: Host
    error: str


@record
class AddHost:
    """A host appeared during the run (discovery)."""

    host: Host


@record
class RemoveHost:
    """A host left during the run (discovery)."""

    name: str
    reason: str


#: What the connecting threads and the runners hand to the coordinator.
Put = Callable[[RunnerEvent | Connected | Unreachable | Starved], None]
#: Calls a function on the coordinator's thread this many seconds from now.
Later = Callable[[float, Callable[[], None]], None]


@record(frozen=False)
class HostInfo:
    host: Host
    runner: Runner | None = None
    state: HostState = HostState.CONNECTING
    slots: int | None = None
    tasks_run: int = 0
    error: str | None = None
    fingerprint: str | None = None
    refused: bool = False  # kept when the host joins again (discovery): exit 3 stands
    workdir: str | None = None  # where its tasks run, once ready
    starved_since: float | None = None  # monotonic: connecting it first ran short

    @property
    def placed(self) -> Host:
        """The host as its tasks see it: with the workdir they run in."""
        if self.workdir is None or self.workdir == self.host.workdir:
            return self.host
        return replace(self.host, workdir=self.workdir)


def without_host(error: str, host: Host) -> str:
    """An error about ``host`` without its leading ``NAME: ``: the report and the console
    name the host already ("h2 refused: h2: ..." said it twice)."""
    return error.removeprefix(f"{host.name}: ")


def call_safely(host: str, fn: Callable[..., None], *args: str) -> None:
    """Ask a host's runner for something (cancel, load); a failure is logged, not
    raised: the runner reports a link that went as RunnerGone."""
    try:
        fn(*args)
    except MeshrunError as exc:
        log.warning("%s: %s", host, str(exc).removeprefix(f"{host}: "))


def _close_later(runner: Runner) -> None:
    """Close a runner off the coordinator's thread (closing waits for its reader)."""
    threading.Thread(target=runner.close, daemon=True).start()


class HostPool:
    """Every host of the run by name, and the threads connecting them."""

    def __init__(
        self,
        hosts: Sequence[Host],
        connector: Connector,
        put: Put,
        *,
        prepare: PrepareFn | None,
        use_agent: bool,
        later: Later,
    ) -> None:
        self.infos = {h.name: HostInfo(h) for h in hosts}
        self._later = later
        self._connecting = len(self.infos)  # hosts in CONNECTING (kept, not counted)
        self.shortage: str | None = None  # the last shortage that held a host back
        self._connector = connector
        self._put = put
        self._prepare = prepare
        self._use_agent = use_agent
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._gathering: list[HostSpec] = []  # ready hosts held back to join together
        self._gather_until: float | None = None  # None: not started; inf: done

    # -- queries ---------------------------------------------------------------------

    @property
    def connecting(self) -> bool:
        return self._connecting > 0

    def _set_state(self, info: HostInfo, state: HostState) -> None:
        self._connecting += (state is HostState.CONNECTING) - (info.state is HostState.CONNECTING)
        info.state = state

    @property
    def gathering(self) -> bool:
        """Ready hosts are being held back until the others have connected."""
        return bool(self._gathering)

    @property
    def gather_deadline(self) -> float | None:
        """When the hosts held back join whatever else is still connecting."""
        if self._gather_until in (None, float("inf")):
            return None
        return self._gather_until

    def live(self) -> list[str]:
        """Hosts that take tasks."""
        return [n for n, i in self.infos.items() if i.state is HostState.OK]

    def ready_weights(self) -> Iterator[tuple[str, float]]:
        """(name, speed) of every host that takes tasks."""
        for name, info in self.infos.items():
            if info.state is HostState.OK:
                yield name, info.host.weight

    def runner(self, name: str) -> Runner | None:
        return self.infos[name].runner

    def placed(self, name: str) -> Host:
        return self.infos[name].placed

    # -- connecting --------------------------------------------------------------------

    def connect_all(self) -> None:
        """Start connecting every host, from a thread of its own: each start waits for
        the new thread to run, which with hundreds of hosts in their handshakes (one
        GIL) took 32 ms a host, 8 s for 256, while no host that was ready could join."""
        hosts = [info.host for info in self.infos.values()]
        try:
            threading.Thread(
                target=self._start_all, args=(hosts,), name="meshrun-connect-all", daemon=True
            ).start()
        except RuntimeError:  # can't start new thread: each host finds out on its own
            self._start_all(hosts)

    def _start_all(self, hosts: list[Host]) -> None:
        for host in hosts:
            self._start_connecting(host)

    def add(self, host: Host) -> None:
        """A host that appeared (discovery): one already in the run is ignored; one that
        was lost or unreachable connects again (a refusal is remembered)."""
        known = self.infos.get(host.name)
        gone = (HostState.LOST, HostState.UNREACHABLE, HostState.UNUSED)
        if known is None or known.state in gone:
            refused = known is not None and known.refused
            self.infos[host.name] = HostInfo(host, refused=refused)
            self._connecting += 1
            self._start_connecting(host)

    def _start_connecting(self, host: Host) -> None:
        if self._closing:
            return
        thread = threading.Thread(
            target=self._connect, args=(host,), name=f"meshrun-connect-{host.name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread: later, not the host's fault
            shortage = resources.resource_error(exc, f"connecting to {host.name}")
            if shortage is None:
                raise
            self._put(Starved(host, str(shortage)))
            return
        self._threads.append(thread)

    def _connect(self, host: Host) -> None:
        try:
            conn = self._connector.connect(host)
            try:
                runner, workdir = self._set_up(host, conn)
            except HostUnreachable as exc:
                if self._closing:
                    raise
                # It connected and authenticated, then the link dropped while the agent
                # started or the workspace went over: once, take it for a blip and
                # connect again (a host that drops again is given up as before).
                log.info("%s: lost while setting up (%s); connecting again", host.name, exc)
                conn = self._connector.connect(host)
                runner, workdir = self._set_up(host, conn)
        except ResourceExhausted as exc:
            self._put(Starved(host, str(exc)))
            return
        except ConnectError as exc:
            self._put(Unreachable(host, without_host(str(exc), host), refused=True))
            return
        except MeshrunError as exc:
            self._put(Unreachable(host, without_host(str(exc), host)))
            return
        except Exception as exc:  # never hang the run on a bug in one host's set-up
            shortage = resources.resource_error(exc, f"setting up {host.name}")
            if shortage is not None:  # EMFILE, can't start new thread...: not the host
                self._put(Starved(host, str(shortage)))
                return
            log.exception("%s: setting up failed", host.name)
            self._put(Unreachable(host, f"internal error: {exc!r}"))
            return
        if self._closing:
            runner.close()
            return
        self._put(Connected(host, runner, conn.host_key_fingerprint, workdir))

    def _set_up(self, host: Host, conn: Connection) -> tuple[Runner, str]:
        """Start the host's runner, then push the workspace through it (``prepare``);
        the runner and the workdir its tasks run in. No task starts before both."""
        runner = start_runner(conn, host.workdir, self._put, use_agent=self._use_agent)
        if self._prepare is None:
            return runner, host.workdir
        log.info("%s: pushing the workspace", host.name)
        began = time.monotonic()
        try:
            workdir = self._prepare(host, conn, runner)
        except BaseException:
            runner.close()
            raise
        log.info(
            "%s: workspace pushed in %.2fs to %s", host.name, time.monotonic() - began, workdir
        )
        return runner, workdir

    # -- what the coordinator learns ---------------------------------------------------

    def ready(self, item: Connected) -> HostInfo | None:
        """A host finished setting up: it takes tasks from now on (its info), unless it
        left or was replaced meanwhile (None; its runner is closed)."""
        info = self.infos[item.host.name]
        if info.state is not HostState.CONNECTING or info.host is not item.host:
            _close_later(item.runner)
            return None
        info.runner = item.runner
        info.fingerprint = item.fingerprint
        info.workdir = item.workdir
        info.starved_since = None
        self._set_state(info, HostState.OK)
        info.slots = item.host.slots or item.runner.cpus or 1
        slots = f"{info.slots} slot{'s' * (info.slots != 1)}"
        log.info("%s: ready (%s runner, %s)", item.host.name, item.runner.kind, slots)
        return info

    def join(self, info: HostInfo, at: float) -> HostJoined | None:
        """The scheduler's event for a host that is ready at ``at`` (monotonic); None
        while it is gathered with others (``gathered`` joins them): at the start, or
        later while other hosts still connect."""
        assert info.slots is not None
        spec = HostSpec(info.host.name, info.slots, info.host.weight, info.host.labels)
        if self._gather_until == float("inf") and not self.connecting:
            return HostJoined(spec)  # no other host to wait for
        self._gathering.append(spec)
        if self._gather_until is None or self._gather_until == float("inf"):
            self._gather_until = at + GATHER_S
        return None

    def gathered(self, at: float) -> HostsJoined | None:
        """The hosts held back, once every host connected or GATHER_S passed since the
        first of them got ready."""
        if self._gather_until is None or self._gather_until == float("inf"):
            return None
        if self.connecting and at < self._gather_until:
            return None
        self._gather_until = float("inf")
        # Not one that was lost (or left) while it waited.
        ready = [s for s in self._gathering if self.infos[s.name].state is HostState.OK]
        self._gathering.clear()
        return HostsJoined(tuple(ready)) if ready else None

    def unreachable(self, item: Unreachable) -> bool:
        """Connecting or setting up failed: recorded, unless the host was replaced."""
        info = self.infos[item.host.name]
        if info.host is not item.host:
            return False
        # A host that left while connecting (discovery) was not refused: it went away.
        info.refused = info.refused or (item.refused and info.state is HostState.CONNECTING)
        self._set_state(info, HostState.UNREACHABLE)
        info.error = item.error
        return True

    def starved(self, item: Starved, at: float) -> bool:
        """Connecting a host ran short of this process's resources (``at``: monotonic):
        it connects again SHORTAGE_RETRY_S later, or, when no host has taken tasks for
        SHORTAGE_GIVE_UP_S, it is given up (``unused``, the shortage its error). True if
        it was the first shortage of the run (worth telling the user)."""
        first = self.shortage is None
        self.shortage = item.error
        info = self.infos[item.host.name]
        if info.host is not item.host or info.state is not HostState.CONNECTING:
            return first
        log.info("%s: %s; connecting again in %gs", item.host.name, item.error, SHORTAGE_RETRY_S)
        if info.starved_since is None:
            info.starved_since = at
        if at - info.starved_since >= SHORTAGE_GIVE_UP_S and not self.live():
            info.error = item.error
            self._set_state(info, HostState.UNUSED)
            return first

        def again() -> None:
            if self.infos.get(item.host.name) is info and info.state is HostState.CONNECTING:
                self._start_connecting(info.host)

        self._later(SHORTAGE_RETRY_S, again)
        return first

    def lose(self, name: str, reason: str) -> bool:
        """A ready host went away: True if it was taking tasks (its runner still to be
        released), False if it was not (unknown, or not ready)."""
        return self._lost_if(name, reason, HostState.OK)

    def release(self, name: str) -> None:
        """Close a lost host's runner (the agent there stops what it still runs)."""
        runner = self.infos[name].runner
        if runner is not None:
            _close_later(runner)

    def leave(self, name: str, reason: str) -> bool:
        """A host left (discovery) while still connecting: True, recorded as lost. False
        when it was not connecting: the caller loses it as a ready host."""
        return self._lost_if(name, reason, HostState.CONNECTING)

    def _lost_if(self, name: str, reason: str, state: HostState) -> bool:
        """Record ``name`` lost for ``reason`` if it is known and in ``state``; whether it
        was."""
        info = self.infos.get(name)
        if info is None or info.state is not state:
            return False
        self._set_state(info, HostState.LOST)
        info.error = reason
        return True

    def ran_task(self, name: str) -> None:
        self.infos[name].tasks_run += 1

    def poll_load(self) -> None:
        for info in self.infos.values():
            if info.state is HostState.OK and info.runner is not None:
                call_safely(info.host.name, info.runner.request_load)

    # -- the end ---------------------------------------------------------------------

    def abort(self) -> None:
        """Close every runner at once, off this thread (a second Ctrl-C)."""
        for info in self.infos.values():
            if info.runner is not None:
                _close_later(info.runner)

    def close(self) -> list[Runner]:
        """No host connects from now on; every ready host's runner is stopped (its
        agent told to end what it started) and returned: the caller waits for them.
        All from this thread: a thread per runner took 8 s to start on 256 hosts."""
        self._closing = True
        stopped = []
        for info in self.infos.values():
            if info.runner is not None and info.state is HostState.OK:
                call_safely(info.host.name, info.runner.stop)
                stopped.append(info.runner)
        return stopped

    def join_connecting(self, timeout_s: float) -> None:
        """Give hosts still connecting a moment. Not more: one hung in a handshake is
        aborted when the caller closes the connector, and a runner it hands over late
        is closed (the caller's queue, or _connect itself)."""
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    def summaries(self) -> tuple[HostSummary, ...]:
        return tuple(
            HostSummary(
                name,
                HostState.UNUSED if i.state is HostState.CONNECTING else i.state,
                i.runner.kind if i.runner else None,
                i.slots,
                i.tasks_run,
                i.error,
                address=i.host.address or i.host.name,
                host_key_fingerprint=i.fingerprint,
                refused=i.refused,
                workdir=i.workdir,
            )
            for name, i in self.infos.items()
        )

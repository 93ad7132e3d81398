"""``meshrun.Fleet``: a set of hosts and the connections to them, as one object.

::

    with meshrun.Fleet.from_inventory("hosts.toml", limit="web*") as fleet:
        result = fleet.run("uptime", timeout="30s")
        for host in result.failed:
            print(host.name, host.exit_code, host.stderr)
        fleet.pull("logs/*.log", into="out/")

Why an object: the connections. A ``Fleet`` owns one connector for its life, so the
calls in one ``with`` share it: a host dialled by ``run`` is not dialled again by the
``pull`` after it. Each call keeps the hosts' connections open when all of them fit
what this process may hold (:mod:`meshrun.resources`: descriptors and threads per
host, measured); when they do not (many hosts, a low ``ulimit -n``) each host's
connection is closed as soon as that call is done with it, as the CLI's one-shot
commands always do (``keep_connections=False``). Leaving the ``with`` — normally, by
an exception or by Ctrl-C — closes every connection.

Values are checked before any host is contacted (:mod:`meshrun.api.values`);
failed or unreachable hosts are results (``report.failed``), never exceptions, unless
``check=True`` (:class:`~meshrun.api.failed.RunFailed`). Callbacks run on the calling
thread, in order: ``on_output(host, stream, data)`` for each chunk a host prints,
``on_event(event)`` for every event of the run (the console of the CLI is one).
A Fleet runs one call at a time.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from meshrun import resources
from meshrun.api import values
from meshrun.api.failed import RunFailed
from meshrun.api.probes import ProbeReport
from meshrun.config.inventory import Host, local_host, resolve_hosts
from meshrun.errors import InputError
from meshrun.fleet.rollout import FailureBudget
from meshrun.fleet.run import (
    FleetEvent,
    FleetJob,
    FleetReport,
    HostOutput,
    Script,
    effective_parallel,
    read_script,
)
from meshrun.runid import new_run_id
from meshrun.transport.base import Connector, Stream

if TYPE_CHECKING:
    from meshrun.config.tasks import TaskGraph
    from meshrun.dispatch.executor import DispatchEvent, DispatchReport
    from meshrun.dispatch.run import LiveDiscovery

log = logging.getLogger(__name__)

#: ``on_output(host, stream, data)``: a chunk of a host's output, as it comes.
OutputCallback = Callable[[str, Stream, bytes], None]

#: ``--pull-max-bytes``'s default: a host whose matched files add up to more is refused.
DEFAULT_PULL_MAX_BYTES = 10 << 30


class Fleet:
    """Hosts, and the connections to them for as long as the Fleet is open.

    ``Fleet(hosts)`` takes hosts a program built (:class:`~meshrun.Host`);
    :meth:`from_inventory` reads them as ``--hosts`` does. The options are the CLI's
    connection options: ``connect_timeout`` (TCP, banner and handshake; default the
    host's ConnectTimeout, else 10 s), ``accept_new_host_keys`` (OpenSSH's
    accept-new; a changed key is always refused), ``server_alive_interval`` /
    ``server_alive_count_max`` (when a silent host is lost; 0 turns it off),
    ``state_dir`` (where recorded runs go: ``.meshrun`` here for ``run``/``pull``,
    beside the task file for ``dispatch``), ``keep_connections`` (None: keep each
    host's connection between calls when they all fit this process's limits; False:
    close each as soon as a call is done with it), ``remote`` (hosts may join later,
    found on the LAN: SSH even when every listed host is this machine), ``connector``
    (one a program made: another transport, a test's fake; the Fleet closes it; the
    connection options are then that connector's business).
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        connect_timeout: values.Duration | None = None,
        accept_new_host_keys: bool = False,
        server_alive_interval: values.Duration | None = None,
        server_alive_count_max: int | None = None,
        state_dir: values.PathLike | None = None,
        keep_connections: bool | None = None,
        remote: bool = False,
        connector: Connector | None = None,
    ) -> None:
        self._hosts = tuple(hosts)
        if not all(isinstance(h, Host) for h in self._hosts):
            raise InputError(
                "Fleet(hosts): every host must be a meshrun.Host",
                fix="build them with meshrun.Host(name=..., address=...) or use "
                "Fleet.from_inventory",
            )
        self._connect_timeout_s = values.seconds(connect_timeout, "connect_timeout")
        self._alive_s = values.interval(server_alive_interval, "server_alive_interval")
        self._alive_count = values.count(server_alive_count_max, "server_alive_count_max", least=0)
        self._accept_new = accept_new_host_keys
        self._state_dir = None if state_dir is None else Path(state_dir)
        self._keep = keep_connections
        self._remote = remote
        self._this_machine = False  # from_inventory(None): dispatch works in the task dir
        self._connector: Connector | None = connector
        self._calling = threading.Lock()

    @classmethod
    def from_inventory(
        cls,
        spec: values.PathLike | None = None,
        *,
        limit: str | Sequence[str] | None = None,
        connect_timeout: values.Duration | None = None,
        accept_new_host_keys: bool = False,
        server_alive_interval: values.Duration | None = None,
        server_alive_count_max: int | None = None,
        state_dir: values.PathLike | None = None,
        keep_connections: bool | None = None,
    ) -> Fleet:
        """The hosts ``spec`` names, as ``--hosts`` takes it: a hosts.toml path, an
        inline list (``"web1,root@10.0.0.5:2222"``), or None for this machine (no SSH).
        ``limit`` selects as ``--limit``: one pattern (``"web*"``, ``"label:db"``,
        ``"!web3"``; commas = any of) or a list that must all hold. InventoryError
        (an InputError) naming the file, line and key for a bad inventory or a limit
        that selects nothing."""
        text = None if spec is None else str(spec)
        fleet = cls(
            resolve_hosts(text, limits=values.limits(limit)),
            connect_timeout=connect_timeout,
            accept_new_host_keys=accept_new_host_keys,
            server_alive_interval=server_alive_interval,
            server_alive_count_max=server_alive_count_max,
            state_dir=state_dir,
            keep_connections=keep_connections,
        )
        fleet._this_machine = spec is None
        return fleet

    # -- the hosts and their connections ---------------------------------------------

    @property
    def hosts(self) -> tuple[Host, ...]:
        """The selected hosts, in inventory order."""
        return self._hosts

    @property
    def connector(self) -> Connector:
        """The connector every call of this Fleet shares (made on first use: an
        ssh_config OpenSSH refuses or a key that would need a passphrase prompt is an
        InputError then, before any host is contacted)."""
        if self._connector is None:
            from meshrun.transport import default_connector

            self._connector = default_connector(
                list(self._hosts),
                connect_timeout_s=self._connect_timeout_s,
                accept_new_host_keys=self._accept_new,
                remote=self._remote,
                server_alive_interval_s=self._alive_s,
                server_alive_count_max=self._alive_count,
            )
        return self._connector

    def close(self) -> None:
        """Close every connection (their threads end). A later call connects again
        (with a connector of its own making: one passed in is closed for good)."""
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _keeps(self, parallel: int | None, fds_each: int, threads_each: int) -> bool:
        """Whether this call leaves its hosts connected for the next: asked, or every
        host's connection fits what this process may hold, ``parallel`` of them busy
        (a held idle connection: its socket and paramiko's reader thread)."""
        if self._keep is not None:
            return self._keep
        count = len(self._hosts)
        busy = min(parallel or count, count)
        needed_fds = resources.RESERVE_FDS + busy * fds_each + (count - busy) * 2
        threads = resources.threads_available()
        fits_threads = threads is None or threads >= (
            resources.RESERVE_THREADS + busy * threads_each + (count - busy)
        )
        return needed_fds <= resources.fds_available() and fits_threads

    # -- exec / run / pull --------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: values.Duration | None = None,
        env: dict[str, str] | None = None,
        parallel: int | None = None,
        batch: str | Sequence[int] | None = None,
        max_fail: int | str | FailureBudget | None = None,
        fail_fast: bool = False,
        pull: str | Sequence[str] = (),
        pull_dir: values.PathLike | None = None,
        pull_max_bytes: int | str = DEFAULT_PULL_MAX_BYTES,
        sign_key: values.SignKey | None = None,
        on_output: OutputCallback | None = None,
        on_event: Callable[[FleetEvent], None] | None = None,
        check: bool = False,
        command_line: Sequence[str] = (),
    ) -> FleetReport:
        """Run ``command`` on every host at once (``meshrun exec``): a string is a
        shell command line (pipes work), a list is an argv, each word quoted.

        Each host runs it in its workdir with ``MESHRUN_HOST`` and ``MESHRUN_RUN_ID``
        set (and ``env``); ``timeout`` kills its process group there. ``parallel``
        (hosts at once), ``batch`` (rolling batches: ``"1,25%,100%"`` or ``[1, 5]``),
        ``max_fail`` (start no more hosts once more failed: ``3`` or ``"10%"``) and
        ``fail_fast`` are the CLI's. ``pull`` brings matching files home after the
        command (verified, into ``pull_dir/<host>/``, default the run directory);
        a run that pulls or is signed (``sign_key``) is recorded under ``state_dir``.
        Returns the :class:`~meshrun.FleetReport`; ``check=True`` raises
        :class:`~meshrun.api.failed.RunFailed` when any host did not succeed."""
        if isinstance(command, str):
            line = command
        else:
            words = list(command)
            if not words or not all(isinstance(w, str) for w in words):
                raise InputError(
                    f"command: a string or a non-empty list of strings is needed, got {command!r}"
                )
            line = shlex.join(words)
        if not line.strip():
            raise InputError("command: the command is empty", fix="pass a command to run")
        job = self._job(
            command=line,
            timeout=timeout,
            env=env,
            parallel=parallel,
            batch=batch,
            max_fail=max_fail,
            fail_fast=fail_fast,
            pull=pull,
            pull_dir=pull_dir,
            pull_max_bytes=pull_max_bytes,
        )
        return self._run_job(job, sign_key, on_output, on_event, check, command_line)

    def script(
        self,
        path: values.PathLike | Script,
        *args: str,
        timeout: values.Duration | None = None,
        env: dict[str, str] | None = None,
        parallel: int | None = None,
        batch: str | Sequence[int] | None = None,
        max_fail: int | str | FailureBudget | None = None,
        fail_fast: bool = False,
        pull: str | Sequence[str] = (),
        pull_dir: values.PathLike | None = None,
        pull_max_bytes: int | str = DEFAULT_PULL_MAX_BYTES,
        sign_key: values.SignKey | None = None,
        on_output: OutputCallback | None = None,
        on_event: Callable[[FleetEvent], None] | None = None,
        check: bool = False,
        command_line: Sequence[str] = (),
    ) -> FleetReport:
        """Upload the local script ``path`` to every host and run it with ``args``
        (``meshrun run``): uploaded once per host under its content hash, reused by
        later runs. ``path`` may be a :class:`~meshrun.Script` already read (its own
        ``args``). The options are :meth:`run`'s."""
        if isinstance(path, Script):
            loaded = path if not args else replace(path, args=(*path.args, *args))
        else:
            loaded = read_script(str(path), [str(a) for a in args])
        job = self._job(
            script=loaded,
            timeout=timeout,
            env=env,
            parallel=parallel,
            batch=batch,
            max_fail=max_fail,
            fail_fast=fail_fast,
            pull=pull,
            pull_dir=pull_dir,
            pull_max_bytes=pull_max_bytes,
        )
        return self._run_job(job, sign_key, on_output, on_event, check, command_line)

    def pull(
        self,
        patterns: str | Sequence[str],
        *,
        into: values.PathLike | None = None,
        parallel: int | None = None,
        pull_max_bytes: int | str = DEFAULT_PULL_MAX_BYTES,
        sign_key: values.SignKey | None = None,
        on_event: Callable[[FleetEvent], None] | None = None,
        check: bool = False,
        command_line: Sequence[str] = (),
    ) -> FleetReport:
        """Bring home the files ``patterns`` match in each host's workdir, running
        nothing there: each sha256 checked on arrival, installed atomically at
        ``into/<host>/<path>`` (default: the recorded run's ``hosts/``), listed in the
        run's manifest. A pattern that matches nothing fails its host (a leading ``?``
        makes it optional); a refused or changed file is an integrity failure
        (exit code 4). Patterns follow rsync/gitignore habits (``logs/*.log``,
        ``dist/**``)."""
        if not patterns:
            raise InputError("pull: no patterns", fix="pass e.g. 'logs/*.log'")
        job = self._job(
            parallel=parallel,
            pull=patterns,
            pull_dir=into,
            pull_max_bytes=pull_max_bytes,
        )
        return self._run_job(job, sign_key, None, on_event, check, command_line)

    def _job(
        self,
        *,
        command: str | None = None,
        script: Script | None = None,
        timeout: values.Duration | None = None,
        env: dict[str, str] | None = None,
        parallel: int | None = None,
        batch: str | Sequence[int] | None = None,
        max_fail: int | str | FailureBudget | None = None,
        fail_fast: bool = False,
        pull: str | Sequence[str] = (),
        pull_dir: values.PathLike | None = None,
        pull_max_bytes: int | str = DEFAULT_PULL_MAX_BYTES,
    ) -> FleetJob:
        patterns = (pull,) if isinstance(pull, str) else tuple(pull)
        if pull_dir is not None and not patterns:
            raise InputError("pull_dir needs pull patterns (what to bring home)")
        job = FleetJob(
            command=command,
            script=script,
            env=values.env(env),
            timeout_s=values.seconds(timeout, "timeout"),
            parallel=values.count(parallel, "parallel", least=1),
            batches=values.batches(batch, len(self._hosts)),
            max_fail=values.budget(max_fail),
            fail_fast=bool(fail_fast),
            pull=patterns,
            pull_dir=None if pull_dir is None else Path(pull_dir),
            pull_max_bytes=values.size(pull_max_bytes, "pull_max_bytes"),
        )
        effective_parallel(self._hosts, job)  # DoesNotFit now, before any host is contacted
        return job

    def _run_job(
        self,
        job: FleetJob,
        sign_key: values.SignKey | None,
        on_output: OutputCallback | None,
        on_event: Callable[[FleetEvent], None] | None,
        check: bool,
        command_line: Sequence[str],
    ) -> FleetReport:
        from meshrun.fleet.record import run_fleet_recorded

        key = values.signing_key(sign_key)
        pulls = bool(job.pull)
        keep = self._keeps(
            job.parallel,
            resources.PULL_FDS_PER_HOST if pulls else resources.EXEC_FDS_PER_HOST,
            resources.PULL_THREADS_PER_HOST if pulls else resources.EXEC_THREADS_PER_HOST,
        )

        def observe(event: FleetEvent) -> None:
            if on_output is not None and isinstance(event, HostOutput):
                on_output(event.name, event.stream, event.data)
            if on_event is not None:
                on_event(event)

        with self._one_call():
            report = run_fleet_recorded(
                self._hosts,
                job,
                self.connector,  # made inside: two threads never make two
                run_id=new_run_id(),
                state_dir=self._state_dir,
                observer=observe,
                command_line=command_line,
                signing_key=key,
                release=not keep,
            )
        if report.interrupted:  # a second Ctrl-C may have closed connections under it
            self.close()
        if check and not report.ok:
            raise RunFailed(report)
        return report

    # -- hosts --------------------------------------------------------------------------

    def probe(self, *, parallel: int | None = None) -> ProbeReport:
        """Check every host (``meshrun hosts``): reachable, login ok, round trip,
        CPUs, load, python3. Unreachable hosts are results (``.failed``)."""
        from meshrun.fleet.probe import probe_hosts, probe_parallel

        width = values.count(parallel, "parallel", least=1)
        probe_parallel(self._hosts, width)  # DoesNotFit now, before any host is contacted
        keep = self._keeps(width, resources.EXEC_FDS_PER_HOST, resources.EXEC_THREADS_PER_HOST)
        with self._one_call():
            probes = probe_hosts(self._hosts, self.connector, parallel=width, release=not keep)
        return ProbeReport(tuple(probes))

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(
        self,
        tasks: values.PathLike | TaskGraph,
        *,
        sign_key: values.SignKey | None = None,
        junit: values.PathLike | None = None,
        trace: values.PathLike | None = None,
        fail_fast: bool = False,
        keep_going: bool = False,
        max_fail: int | None = None,
        timeout: values.Duration | None = None,
        rerun_failed: bool = False,
        resume: str | None = None,
        artifacts: values.PathLike | None = None,
        pull_max_bytes: int | str = DEFAULT_PULL_MAX_BYTES,
        sync: bool = True,
        agent: bool = True,
        workdir_max_age: values.Duration = "7d",
        state_dir: values.PathLike | None = None,
        discovery: LiveDiscovery | None = None,
        on_event: Callable[[DispatchEvent], None] | None = None,
        check: bool = False,
        command_line: Sequence[str] = (),
    ) -> DispatchReport:
        """Spread a task graph (a tasks.toml path, or a loaded
        :class:`~meshrun.TaskGraph`) over the hosts (``meshrun dispatch``).

        Writes the run's logs, report.json, manifest (signed with ``sign_key``),
        history, and ``junit``/``trace`` when given, under ``state_dir`` (default:
        ``.meshrun`` beside the task file). ``rerun_failed`` / ``resume=RUN_ID`` run
        only the tasks a previous run did not finish; ``artifacts`` puts outputs
        under ``artifacts/<task>/`` instead of the workspace; ``sync=False`` runs in
        the hosts' workdirs as they are; ``agent=False`` uses one SSH channel per task;
        ``discovery`` lets agents on the LAN join (see
        :func:`meshrun.live_discovery`). A fleet of this machine
        (``from_inventory(None)``) runs the tasks in the task file's directory.
        Returns the :class:`~meshrun.DispatchReport`: ``.exit_code``, ``.failed``
        tasks; ``check=True`` raises RunFailed when it is not 0."""
        from meshrun.config.tasks import TaskGraph, load_tasks
        from meshrun.dispatch.executor import DispatchOptions
        from meshrun.dispatch.history import History
        from meshrun.dispatch.run import run_dispatch, select_rerun
        from meshrun.rundir import StateDir

        if fail_fast and keep_going:
            raise InputError("fail_fast and keep_going contradict each other", fix="pick one")
        if rerun_failed and resume:
            raise InputError("rerun_failed and resume both pick the tasks to run", fix="pass one")
        if isinstance(tasks, TaskGraph):
            graph = tasks
            tasks_file: values.PathLike = graph.source or graph.sync.root / "tasks.toml"
        else:
            tasks_file = tasks
            graph = load_tasks(str(tasks))
        hosts = list(self._hosts)
        if self._this_machine:
            hosts = [local_host(str(graph.sync.root))]
        state = StateDir.for_tasks(tasks_file, state_dir or self._state_dir)
        if (rerun_failed or resume) and not state.history.exists():
            raise InputError(
                f"no previous run is recorded in {state.history}",
                fix="run `meshrun dispatch` without --rerun-failed first (or pass --state-dir)",
            )
        if rerun_failed or resume:
            with History(state.history, scope=graph.scope) as history:
                graph = select_rerun(graph, history, resume, runs_dir=state.root / "runs")
        if max_fail is not None:
            values.count(max_fail, "max_fail", least=0)
        options = DispatchOptions(
            fail_fast=fail_fast,
            max_fail=max_fail,
            default_timeout_s=values.seconds(timeout, "timeout"),
            use_agent=agent,
            sync=sync,
        )
        max_bytes = values.size(pull_max_bytes, "pull_max_bytes")
        max_age_s = values.seconds(workdir_max_age, "workdir_max_age")
        assert max_age_s is not None
        key = values.signing_key(sign_key)
        with self._one_call():
            report = run_dispatch(
                graph,
                hosts,
                self.connector,
                state=state,
                run_id=new_run_id(),
                options=options,
                observer=on_event or _ignore,
                command_line=command_line,
                junit_path=None if junit is None else str(junit),
                trace_path=None if trace is None else str(trace),
                signing_key=key,
                artifacts_dir=None if artifacts is None else Path(artifacts),
                pull_max_bytes=max_bytes,
                discovery=discovery,
                workdir_max_age_s=max_age_s,
            )
        if report.interrupted:
            self.close()
        if check and report.exit_code != 0:
            raise RunFailed(report)
        return report

    @contextmanager
    def _one_call(self) -> Iterator[None]:
        """A Fleet's calls share its connections and its hosts' state: a second call
        while one runs (another thread) is a program error, said at once rather than
        two runs interleaving on the same channels."""
        if not self._calling.acquire(blocking=False):
            raise RuntimeError(
                "this meshrun.Fleet is already running a call (in another thread); "
                "a Fleet runs one call at a time: give each thread its own Fleet"
            )
        try:
            yield
        finally:
            self._calling.release()

    def __repr__(self) -> str:
        names = ", ".join(h.name for h in self._hosts[:4])
        more = f", ... ({len(self._hosts)} hosts)" if len(self._hosts) > 4 else ""
        state = "connected" if self._connector is not None else "not connected"
        return f"<meshrun.Fleet [{names}{more}] {state}>"


def _ignore(event: object) -> None:
    """The observer of a dispatch nobody watches."""

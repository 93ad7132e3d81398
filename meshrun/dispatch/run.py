"""One ``meshrun dispatch`` run, end to end: history in, report and records out.

What a library user calls; the CLI only parses options around it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshrun import resources
from meshrun.agent.client import AgentRunner, Runner
from meshrun.config.inventory import Host, HostDefaults, limit_filter
from meshrun.config.sizes import format_size
from meshrun.config.tasks import Task, TaskGraph, check_placeable
from meshrun.dispatch import staging
from meshrun.dispatch.executor import (
    FDS_PER_HOST,
    Dispatcher,
    DispatchEvent,
    DispatchOptions,
    DispatchReport,
    Notice,
    Observer,
    TaskEnded,
    TaskResult,
    ignore,
)
from meshrun.dispatch.history import History, TaskOutcome
from meshrun.dispatch.journal import Journal, JournalRecord, latest_journal, read_journal
from meshrun.dispatch.record import dispatch_document, junit_xml
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.dispatch.trace import chrome_trace
from meshrun.errors import CommandError, InputError, IntegrityError
from meshrun.integrity import collect as collecting
from meshrun.integrity.install import InstalledOutputs
from meshrun.integrity.manifest import (
    MANIFEST_NAME,
    RESERVED_NAMES,
    FileEntry,
    HostEntry,
    Manifest,
    TaskEntry,
    hash_tree,
    parse_manifest,
    run_manifest,
    write_manifest,
)
from meshrun.integrity.publish import publish
from meshrun.integrity.pull import pull
from meshrun.records import record
from meshrun.rundir import RunDir, StateDir
from meshrun.transport.base import Connection, Connector
from meshrun.workspace import mirror, workdirs
from meshrun.workspace.excludes import Excludes
from meshrun.workspace.push import push as push_workspace

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshrun.discovery import Agent, Browser

log = logging.getLogger(__name__)

#: ``--pull-max-bytes``: a task whose outputs add up to more fails before they are pulled.
DEFAULT_PULL_MAX_BYTES = 10 << 30

#: A host set up again in the same run (its link dropped) waits this long for the
#: workdir it held: its old agent lets go once it has stopped that link's tasks.
RECLAIM_WAIT_S = 6.0

RERUN_STATUSES = {TaskStatus.FAILED.value, TaskStatus.SKIPPED.value, TaskStatus.CANCELLED.value}


@record
class LiveDiscovery:
    """``dispatch --discover``: agents on the LAN join the run for as long as it lasts.

    An agent found before or during the run connects and joins (it starts stealing
    work); one that leaves (goodbye, or its record expires) is a lost host whose tasks
    are re-queued. Login settings come from ``defaults``; each agent is held to the
    host key it advertised. Tasks no known host can run wait ``wait_s`` for one to
    appear before they are given up. A host of ``--hosts`` with the same name or
    address wins over the agent; ``limits`` (``--limit``) filter agents too.
    """

    defaults: HostDefaults = field(default_factory=HostDefaults)
    wait_s: float = 2.0
    interfaces: Sequence[str] | None = None
    limits: Sequence[str] = ()


def live_discovery(
    spec: str | None,
    *,
    limits: Sequence[str] = (),
    wait_s: float = 2.0,
    interfaces: Sequence[str] | None = None,
    user: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
) -> tuple[list[Host], LiveDiscovery]:
    """What ``dispatch --hosts SPEC --discover`` starts with: SPEC's hosts that pass
    ``limits`` (maybe none), and the discovery that adds agents as they come. Login
    settings for agents: ``user``/``identity``/``known_hosts``, else SPEC's
    ``[defaults]``. Bad SPEC, limits or interfaces are errors now, before any run."""
    from meshrun.discovery import discovery_inventory, resolve_interfaces

    inventory = discovery_inventory(spec, user=user, identity=identity, known_hosts=known_hosts)
    passes = limit_filter(limits)
    live = LiveDiscovery(
        defaults=inventory.defaults,
        wait_s=wait_s,
        interfaces=resolve_interfaces(interfaces),
        limits=tuple(limits),
    )
    return [h for h in inventory.hosts if passes(h)], live


def _join_discovered(
    dispatcher: Dispatcher, listed: Sequence[Host], live: LiveDiscovery
) -> Browser:
    """Feed agents that come and go into the running ``dispatcher``."""
    from meshrun.discovery import agent_to_host, same_host, watch

    passes = limit_filter(live.limits)

    def added(agent: Agent) -> None:
        if any(same_host(agent, host) for host in listed):
            return  # the --hosts entry wins
        host = agent_to_host(agent, live.defaults)
        if passes(host):
            dispatcher.add_host(host)

    def removed(name: str) -> None:
        if all(name != host.name for host in listed):
            dispatcher.remove_host(name, "its agent left the network")

    return watch(on_added=added, on_removed=removed, interfaces=live.interfaces)


def select_rerun(
    graph: TaskGraph, history: History, run_id: str | None, *, runs_dir: Path | None = None
) -> TaskGraph:
    """The tasks of a previous run that did not succeed (``--rerun-failed``/``--resume``).

    With ``runs_dir`` (``<state>/runs``), a run that was killed before it could record
    itself counts too, from its journal: every task it had that did not succeed —
    failed, skipped, cancelled, or never finished — runs again.
    """
    if runs_dir is not None:
        unrecorded = _unrecorded_run(history, run_id, runs_dir, graph.scope)
        if unrecorded is not None:
            succeeded = TaskStatus.SUCCEEDED.value
            return graph.subset(
                [
                    t
                    for t in unrecorded.tasks
                    if unrecorded.ended.get(t) != succeeded and t in graph.tasks
                ]
            )
    target = run_id or history.last_run_id(scope=graph.scope)
    if target is None:
        raise InputError(
            f"no previous run is recorded in {history.path}",
            fix="run `meshrun dispatch` without --rerun-failed first (or pass --state-dir)",
        )
    outcomes = history.run_outcomes(target)
    if outcomes is None:
        raise InputError(
            f"no run {target!r} is recorded in {history.path}",
            fix="pick a run id from .meshrun/runs/ (or the --json output of a run)",
        )
    names = [o.task for o in outcomes if o.status in RERUN_STATUSES and o.task in graph.tasks]
    return graph.subset(names)


def _unrecorded_run(
    history: History, run_id: str | None, runs_dir: Path, scope: str
) -> JournalRecord | None:
    """The journal of the run asked for (or of the latest run) when history has no
    record of it: the run was killed."""
    journal = read_journal(runs_dir / run_id) if run_id else latest_journal(runs_dir, scope)
    if journal is None or history.run_outcomes(journal.run_id) is not None:
        return None
    if run_id is None:
        last = history.last_run(scope)
        if last is not None and last[1] > journal.started:
            return None  # a later run finished and was recorded: that one is "last"
    return journal


def _prior_outputs(
    graph: TaskGraph, history: History, state: StateDir
) -> dict[str, tuple[Path, tuple[FileEntry, ...]]]:
    """For a rerun: each need that passed earlier -> where its verified outputs are kept
    (``runs/<id>/artifacts/<need>``) and its files, from the latest run it passed in.

    Files come from that run's manifest, or, for a run killed before writing one, from
    hashing its artifacts (its journal says the need passed). InputError, before anything
    starts, when a need's outputs are listed but gone: the rerun would not equal a run.
    """
    found: dict[str, tuple[Path, tuple[FileEntry, ...]]] = {}
    needs = dict.fromkeys(n for needs in graph.done_needs.values() for n in needs)
    if not needs:
        return found
    # Read once for every need: the newest killed run of this task file, if any.
    killed = latest_journal(state.runs, graph.scope)
    if killed is not None and history.run_outcomes(killed.run_id) is not None:
        killed = None  # it was recorded after all
    for need in needs:
        run_id = _last_success(history, killed, need, graph.scope)
        if run_id is None:
            continue  # never recorded as passed: nothing to push (a dependent says so)
        source = state.run(run_id).artifacts / need
        try:
            manifest = state.run_dir(run_id) / MANIFEST_NAME
            if manifest.is_file():
                entries = parse_manifest(manifest.read_bytes(), source=str(manifest)).tasks
                files = next((t.files for t in entries if t.name == need), ())
            else:
                files = hash_tree(source) if source.is_dir() else ()
            missing = [f.path for f in files if not (source / f.path).is_file()]
        except (OSError, IntegrityError) as exc:
            raise InputError(
                f"{need}: the outputs it left in run {run_id} cannot be read: {exc}",
                fix="run the whole graph again (without --rerun-failed/--resume)",
            ) from exc
        if missing:
            raise InputError(
                f"{need}: outputs of run {run_id} are gone from {source} ({missing[0]!r})",
                fix="run the whole graph again (without --rerun-failed/--resume)",
            )
        found[need] = (source, files)
    return found


def _last_success(
    history: History, killed: JournalRecord | None, task: str, scope: str
) -> str | None:
    """The latest run ``task`` passed in: recorded, or ``killed`` (a run that was killed
    before it could record itself) when that is newer and says so in its journal."""
    recorded = history.last_success(task, scope)
    if killed is not None and killed.ended.get(task) == TaskStatus.SUCCEEDED.value:
        last = history.last_run(scope)
        if recorded is None or last is None or killed.started > last[1]:
            return killed.run_id
    return recorded


def _check_artifact_names(graph: TaskGraph, artifacts_dir: Path) -> None:
    """InputError for a task whose outputs would land where meshrun writes its own records.

    ``--artifacts DIR`` holds ``<task>/`` for each task beside the manifest's copy
    (``manifest.json``, ``.sig``; ``meshrun verify`` reads a ``report.json`` there as a
    run directory's): a task named so would collide with them, so it is refused before
    anything starts, as ``exec --pull-dir`` refuses a host named so.
    """
    for name in graph.tasks:
        if name in RESERVED_NAMES:
            raise InputError(
                f"task {name!r}: its outputs would go to {artifacts_dir}/{name}, where "
                "meshrun writes the run's own records (" + ", ".join(sorted(RESERVED_NAMES)) + ")",
                fix="give the task another name, or leave out --artifacts",
            )


def run_dispatch(
    graph: TaskGraph,
    hosts: Sequence[Host],
    connector: Connector,
    *,
    state: StateDir,
    run_id: str,
    options: DispatchOptions,
    observer: Observer = ignore,
    command_line: Sequence[str] = (),
    junit_path: str | None = None,
    trace_path: str | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    artifacts_dir: str | Path | None = None,
    pull_max_bytes: int | None = DEFAULT_PULL_MAX_BYTES,
    discovery: LiveDiscovery | None = None,
    workdir_max_age_s: float = workdirs.DEFAULT_MAX_AGE_S,
) -> DispatchReport:
    """Run ``graph`` on ``hosts``; write logs, report.json, the manifest (signed with
    ``signing_key``), JUnit, and the history. The manifest is written for failed and
    interrupted runs too: it says exactly which task ended how. With ``discovery``,
    agents found on the LAN join and leave while the run lasts (:class:`LiveDiscovery`).

    A task whose outputs (sizes as hashed on its host) add up to more than
    ``pull_max_bytes`` (``--pull-max-bytes``; None: no limit) fails before anything of
    them is written; its host stays in the run.

    Each host's tasks run in a workdir of this run's own there (:mod:`meshrun.workspace.workdirs`;
    ``[sync] isolate = false``: the host's workdir), made an exact copy of the
    workspace first (:mod:`meshrun.workspace.mirror`); workdirs no run claimed for
    ``workdir_max_age_s`` are removed.
    """
    if artifacts_dir is not None:
        _check_artifact_names(graph, Path(artifacts_dir))
    if discovery is None:
        check_placeable(graph, hosts)
    else:  # a host that can run them may yet appear
        options = replace(options, wait_for_hosts_s=max(options.wait_for_hosts_s, discovery.wait_s))
    # Every host's connection stays open for the run: refuse now (exit 2) what cannot
    # fit under `ulimit -n` (raised to the hard limit at start), not mid-run.
    resources.check_fits(
        resources.RESERVE_FDS + FDS_PER_HOST * len(hosts),
        f"dispatch on {len(hosts)} host{'s' * (len(hosts) != 1)}",
        option="the number of hosts (--limit)",
    )
    run_dir = state.run_dir(run_id)
    with History(state.history, scope=graph.scope) as history:
        expected = history.expected(graph.tasks)
        prior = _prior_outputs(graph, history, state)

        excludes = list(graph.sync.exclude)
        state_root = state.root.resolve()
        if state_root.is_relative_to(graph.sync.root.resolve()):
            # History and every run's logs stay home, wherever --state-dir points.
            relative = state_root.relative_to(graph.sync.root.resolve()).as_posix()
            if relative != ".":
                excludes.append("/" + relative)

        workspace = graph.sync.root.resolve()
        try:
            compiled = Excludes.compile(excludes)
        except ValueError as exc:
            raise InputError(f"[sync] exclude: {exc}") from exc
        installed_here = InstalledOutputs(state.root).paths_under(workspace)
        purge = literal_outputs(graph)
        tree = mirror.SharedTree(
            lambda: mirror.build_tree(
                graph.sync.root,
                graph.sync.paths,
                compiled,
                hide=installed_here,
                cache=mirror.HashCache(state.root / mirror.CACHE_FILE),
            )
        )
        key = workdirs.workdir_key(graph.sync.root, graph.scope)
        leases: list[Any] = []  # exec-mode workdir locks, held until the run ends
        held: dict[str, str] = {}  # host -> the workdir this run holds there
        told: set[str] = set()  # hosts whose push went over SFTP, said once each

        def prepare(host: Host, conn: Connection, runner: Runner) -> str:
            """Claim this run's workdir on ``host`` and make it a copy of the workspace."""
            if host.local and Path(host.workdir).expanduser().resolve() == workspace:
                return host.workdir  # the tasks run in the workspace itself
            agent = runner if isinstance(runner, AgentRunner) else None
            workdir = host.workdir
            if graph.sync.isolate:
                if agent is not None:
                    message: dict[str, Any] = {
                        "op": "claim",
                        "base": host.workdir,
                        "dir": workdirs.WORKDIRS,
                        "key": key,
                        "max_age_s": workdir_max_age_s,
                    }
                    if host.name in held:  # set up again after its link dropped
                        message["prefer"] = held[host.name].rpartition("/")[2]
                        message["wait_s"] = RECLAIM_WAIT_S
                    workdir = agent.request(message, "claimed")["path"]
                    held[host.name] = workdir
                else:
                    from meshrun.workspace.lease import lease_workdir

                    lease = lease_workdir(conn, host.workdir, key, workdir_max_age_s)
                    leases.append(lease)
                    workdir = lease.path
            if agent is not None:
                try:
                    stats = mirror.push(agent, workdir, tree.get(), compiled, purge)
                except FileNotFoundError as exc:
                    raise InputError(f"[sync] paths: {exc.filename}: no such file") from None
                log.info(
                    "%s: %d file%s (%s) sent, %d deleted",
                    host.name,
                    stats.sent_files,
                    "s" * (stats.sent_files != 1),
                    format_size(stats.sent_bytes),
                    stats.deleted,
                )
                return workdir
            why = push_workspace(
                connector,
                replace(host, workdir=workdir),
                root=str(graph.sync.root),
                paths=graph.sync.paths,
                excludes=excludes,
                hide=sorted(installed_here | purge),
            )
            if why is not None and host.name not in told:
                told.add(host.name)
                log.info("%s: %s; the workspace goes over SFTP", host.name, why)
            return workdir

        artifacts_root = RunDir(run_dir).artifacts
        claimed: dict[str, str] = {}  # output path -> the task that wrote it
        claim_lock = threading.Lock()

        def collect(host: Host, task: Task, succeeded: bool) -> tuple[FileEntry, ...]:
            """Hash the task's outputs on its host, bring them home verified, place them.

            A failed task's ``outputs`` come home too, and may be missing (it failed);
            ``outputs_on_success`` only when it succeeded."""
            conn = connector.connect(host)
            patterns = (*task.outputs, *task.outputs_on_success) if succeeded else task.outputs
            files = collecting.collect(conn, host.workdir, patterns, missing_ok=not succeeded)
            total = sum(entry.size for entry in files)
            if pull_max_bytes is not None and total > pull_max_bytes:
                raise CommandError(
                    f"the outputs add up to {format_size(total)}, more than --pull-max-bytes "
                    f"({format_size(pull_max_bytes)}); nothing was pulled from the host"
                )
            dest = artifacts_root / task.name
            pull(connector, host, files, dest)
            if artifacts_dir is not None:
                publish(dest, files, Path(artifacts_dir) / task.name, link=True)
                return tuple(files)
            with claim_lock:
                for entry in files:
                    other = claimed.setdefault(entry.path, task.name)
                    if other != task.name:
                        raise IntegrityError(
                            f"task {task.name!r}: output {entry.path!r} was already written "
                            f"by task {other!r}",
                            fix="give each task its own output paths, or use --artifacts DIR",
                        )
            ran_here = host.local and Path(host.workdir).expanduser().resolve() == workspace
            if not ran_here:  # a local task's outputs are already in the workspace
                publish(dest, files, workspace, link=True)
            return tuple(files)

        def stage(host: Host, needs: Sequence[tuple[str, tuple[FileEntry, ...]]]) -> int:
            """Push needs' verified outputs (the run directory's copy) to ``host``."""
            inputs = [
                staging.Input(
                    need, prior[need][0] if need in prior else artifacts_root / need, files
                )
                for need, files in needs
            ]
            return staging.push(connector, host, inputs)

        started = time.time()
        journal = Journal(run_dir, run_id, list(graph.tasks), started, scope=graph.scope)

        def observe(event: DispatchEvent) -> None:
            if isinstance(event, TaskEnded) and event.status is not None:
                journal.task_ended(
                    event.task,
                    event.status.value,
                    event.host,
                    event.exit_code,
                    event.duration_s,
                    event.log_slice,
                )
            observer(event)

        syncing = options.sync and bool(graph.sync.paths)
        if syncing:
            tree.warm()  # hashing the workspace while the hosts connect
        dispatcher = Dispatcher(
            graph=graph,
            hosts=hosts,
            connector=connector,
            run_id=run_id,
            run_dir=run_dir,
            expected_s=expected,
            options=options,
            observer=observe,
            prepare=prepare if syncing else None,
            collect=collect,
            stage=stage,
            prior_outputs={need: files for need, (_, files) in prior.items()},
            after_turn=journal.flush,
        )
        browser = None if discovery is None else _join_discovered(dispatcher, hosts, discovery)
        try:
            report = dispatcher.run()
        finally:
            for lease in leases:
                lease.close()
            journal.close()
            if browser is not None:
                browser.close()
        _settle_outputs(graph, report, state, artifacts_dir, run_id, observer)
        document = dispatch_document(report, command_line=command_line)
        RunDir(run_dir).write_report(document)
        manifest = build_manifest(graph, report, command_line, artifacts_dir=artifacts_dir)
        write_manifest(run_dir, manifest, signing_key)
        if artifacts_dir is not None:  # the artifacts carry their own manifest copy
            write_manifest(Path(artifacts_dir), manifest, signing_key)
        if junit_path:
            Path(junit_path).write_text(junit_xml(report))
        if trace_path:
            trace = json.dumps(chrome_trace(report), ensure_ascii=False)
            Path(trace_path).write_text(trace + "\n", encoding="utf-8")
        history.record_durations(dispatcher.learned_durations)
        history.record_run(
            run_id,
            started,
            time.time(),
            report.exit_code,
            [
                TaskOutcome(t.name, t.status.value, t.host, t.exit_code, t.attempts, t.duration_s)
                for t in report.tasks
            ],
        )
    return report


def literal_outputs(graph: TaskGraph) -> set[str]:
    """The output paths of the graph's tasks that name one path (no wildcard): removed
    from a host's workdir before its tasks run, as this run produces them anew."""
    found: set[str] = set()
    for task in graph.tasks.values():
        for pattern in (*task.outputs, *task.outputs_on_success):
            text = pattern.removeprefix("?")
            if any(c in text for c in "*?[\\"):
                continue
            parts = [p for p in text.split("/") if p not in ("", ".")]
            if parts and ".." not in parts:
                found.add("/".join(parts))
    return found


def _installed_at(
    graph: TaskGraph, artifacts_dir: str | Path | None, task: str
) -> tuple[Path, str]:
    """Where a task's outputs are placed for use, and what kind of place: the
    workspace (as a local build leaves them), or meshrun's own ``--artifacts DIR/<task>``."""
    if artifacts_dir is not None:
        return Path(artifacts_dir).resolve() / task, "artifacts"
    return graph.sync.root.resolve(), "workspace"


def _settle_outputs(
    graph: TaskGraph,
    report: DispatchReport,
    state: StateDir,
    artifacts_dir: str | Path | None,
    run_id: str,
    observer: Observer,
) -> None:
    """Record where this run's tasks installed outputs; remove what an earlier run
    installed for them and this run did not produce (:mod:`meshrun.integrity.install`)."""
    installed = InstalledOutputs(state.root)
    graph_key = graph.scope or "<tasks>"
    for result in report.tasks:
        task = graph.tasks.get(result.name)
        if task is None or not (task.outputs or task.outputs_on_success):
            continue
        dest, _ = _installed_at(graph, artifacts_dir, task.name)
        produced = {entry.path: entry.sha256 for entry in result.files}
        for text in installed.settle(graph_key, task.name, dest, produced, run_id):
            observer(Notice(text))
    try:
        installed.save()
    except OSError as exc:
        observer(Notice(f"could not record the installed outputs in {installed.path}: {exc}"))


def build_manifest(
    graph: TaskGraph,
    report: DispatchReport,
    command_line: Sequence[str],
    *,
    artifacts_dir: str | Path | None = None,
) -> Manifest:
    """The run's manifest: hosts with their host-key fingerprints, each task's end, and
    where its outputs were placed (the workspace, or ``artifacts_dir/<task>``), so
    ``meshrun verify`` checks what ships, not only the run directory's copy."""

    def entry(t: TaskResult) -> TaskEntry:
        place, kind = _installed_at(graph, artifacts_dir, t.name) if t.files else (None, None)
        return TaskEntry(
            name=t.name,
            host=t.host,
            command=graph.tasks[t.name].run,
            status=t.status.value,
            exit_code=t.exit_code,
            attempts=t.attempts,
            duration_s=t.duration_s,
            files=t.files,
            timeline=t.timeline,
            installed_to=None if place is None else str(place),
            installed_kind=kind,
        )

    return run_manifest(
        run_id=report.run_id,
        started_at=report.started_at,
        duration_s=report.duration_s,
        command_line=command_line,
        hosts=tuple(
            HostEntry(h.name, h.address or h.name, h.host_key_fingerprint) for h in report.hosts
        ),
        tasks=tuple(entry(t) for t in report.tasks),
    )

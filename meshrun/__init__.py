"""meshrun: run commands, scripts and task graphs across many machines over plain SSH.

The library is what the ``meshrun`` command is built from (the CLI imports nothing
else), and ``__all__`` below is all of it. :class:`Fleet` is where a program starts::

    import meshrun
    with meshrun.Fleet.from_inventory("hosts.toml", limit="web*") as fleet:
        report = fleet.run("uptime", timeout="30s")  # or fleet.script("deploy.sh", "v42")
        for host in report.failed:
            print(host.name, host.status.value, host.exit_code, host.stderr.decode())
        fleet.pull("logs/*.log", into="out/")  # the same connections, verified files
    print(meshrun.document_json(meshrun.fleet_document(report)))  # what --json prints
    with meshrun.Fleet.from_inventory("agents.toml") as fleet:
        run = fleet.dispatch("tasks.toml", junit="junit.xml")  # a task graph
    raise SystemExit(run.exit_code)

Failed and unreachable hosts are results, not exceptions (``check=True`` raises
:class:`RunFailed`); leaving the ``with`` closes every connection. The functions below
(``run_fleet``, ``run_dispatch``, ``default_connector``...) are the parts ``Fleet``
is built from.

``docs/ARCHITECTURE.md`` maps the packages behind these names. Nothing here imports
paramiko until a remote host is connected, and nothing imports Fabric.
``meshrun.__version__`` is the installed package's version (its metadata).
"""

import importlib
from typing import TYPE_CHECKING, Any

# -- loaded with ``import meshrun``: what ``meshrun exec`` needs ----------------------
from meshrun.config.durations import format_duration, parse_duration
from meshrun.config.inventory import (
    Host,
    HostDefaults,
    Inventory,
    load_inventory,
    local_host,
    read_inventory,
    resolve_hosts,
    select_hosts,
)
from meshrun.config.sizes import parse_size
from meshrun.errors import (
    AuthError,
    ChannelUnavailable,
    CommandError,
    ConnectError,
    DiscoveryError,
    ExitCode,
    HostKeyError,
    HostUnreachable,
    InputError,
    IntegrityError,
    Interrupted,
    InventoryError,
    MeshrunError,
    TaskFileError,
)
from meshrun.fleet.probe import HostProbe, probe_hosts, probe_parallel
from meshrun.fleet.rollout import FailureBudget, batch_sizes
from meshrun.fleet.run import (
    FleetEvent,
    FleetJob,
    FleetReport,
    HostFinished,
    HostOutput,
    HostResult,
    HostStarted,
    HostStatus,
    RunStopping,
    Script,
    Tick,
    effective_parallel,
    parse_env,
    read_script,
    run_fleet,
)
from meshrun.rundir import RunDir, StateDir, document_json
from meshrun.runid import new_run_id
from meshrun.stopsignals import (
    Stopped,
    exit_code_for_signal,
    how_stopped,
    signal_of,
    stop_on_signals,
)
from meshrun.transport.base import (
    CommandOutcome,
    CommandRequest,
    Connection,
    Connector,
)
from meshrun.transport.wrapper import shell_command

#: Loaded on first use, so ``meshrun exec`` never pays for them: the dispatch side
#: (scheduler, executor, SQLite history, agent client), the manifest and its crypto,
#: the SSH transport (paramiko) and discovery (zeroconf, ~0.12 s).
_LAZY = {
    "Advert": "meshrun.discovery.record",
    "Agent": "meshrun.discovery.record",
    "AgentOptions": "meshrun.discovery.announce",
    "Browser": "meshrun.discovery.browse",
    "Fleet": "meshrun.api.fleet",
    "ProbeReport": "meshrun.api.probes",
    "RunFailed": "meshrun.api.failed",
    "DispatchOptions": "meshrun.dispatch.executor",
    "DispatchReport": "meshrun.dispatch.executor",
    "DurationRecord": "meshrun.dispatch.history",
    "History": "meshrun.dispatch.history",
    "HostDown": "meshrun.dispatch.executor",
    "HostReady": "meshrun.dispatch.executor",
    "LiveDiscovery": "meshrun.dispatch.run",
    "Notice": "meshrun.dispatch.executor",
    "Progress": "meshrun.dispatch.executor",
    "PruneResult": "meshrun.dispatch.retention",
    "Task": "meshrun.config.tasks",
    "TaskEnded": "meshrun.dispatch.executor",
    "TaskGraph": "meshrun.config.tasks",
    "TaskLine": "meshrun.dispatch.executor",
    "TaskResult": "meshrun.dispatch.executor",
    "TaskStarted": "meshrun.dispatch.executor",
    "TaskStatus": "meshrun.dispatch.scheduler",
    "agent_to_host": "meshrun.discovery.hosts",
    "allowed_signer_keys": "meshrun.integrity.signing",
    "default_connector": "meshrun.transport",
    "discover": "meshrun.discovery.browse",
    "dispatch_document": "meshrun.dispatch.record",
    "fleet_document": "meshrun.fleet.record",
    "generate_keypair": "meshrun.integrity.signing",
    "hosts_toml": "meshrun.discovery.hosts",
    "junit_xml": "meshrun.dispatch.record",
    "live_discovery": "meshrun.dispatch.run",
    "load_private_key": "meshrun.integrity.signing",
    "load_public_key": "meshrun.integrity.signing",
    "load_tasks": "meshrun.config.tasks",
    "prune_state": "meshrun.dispatch.retention",
    "record_fleet_run": "meshrun.fleet.record",
    "resolve_with_discovery": "meshrun.discovery.browse",
    "run_agent": "meshrun.discovery.announce",
    "run_dispatch": "meshrun.dispatch.run",
    "run_fleet_recorded": "meshrun.fleet.record",
    "select_rerun": "meshrun.dispatch.run",
    "verify_run": "meshrun.integrity.manifest",
    "watch": "meshrun.discovery.browse",
    "write_hosts_toml": "meshrun.discovery.hosts",
}

if TYPE_CHECKING:  # the same names for type checkers; tests/unit/test_public_api.py
    # checks that these imports and _LAZY agree.
    from meshrun.api.failed import RunFailed
    from meshrun.api.fleet import Fleet
    from meshrun.api.probes import ProbeReport
    from meshrun.config.tasks import Task, TaskGraph, load_tasks
    from meshrun.discovery.announce import AgentOptions, run_agent
    from meshrun.discovery.browse import Browser, discover, resolve_with_discovery, watch
    from meshrun.discovery.hosts import agent_to_host, hosts_toml, write_hosts_toml
    from meshrun.discovery.record import Advert, Agent
    from meshrun.dispatch.executor import (
        DispatchOptions,
        DispatchReport,
        HostDown,
        HostReady,
        Notice,
        Progress,
        TaskEnded,
        TaskLine,
        TaskResult,
        TaskStarted,
    )
    from meshrun.dispatch.history import DurationRecord, History
    from meshrun.dispatch.record import dispatch_document, junit_xml
    from meshrun.dispatch.retention import PruneResult, prune_state
    from meshrun.dispatch.run import LiveDiscovery, live_discovery, run_dispatch, select_rerun
    from meshrun.dispatch.scheduler import TaskStatus
    from meshrun.fleet.record import fleet_document, record_fleet_run, run_fleet_recorded
    from meshrun.integrity.manifest import verify_run
    from meshrun.integrity.signing import (
        allowed_signer_keys,
        generate_keypair,
        load_private_key,
        load_public_key,
    )
    from meshrun.transport import default_connector

    __version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from meshrun.version import version

        globals()[name] = found = version()
        return found
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Advert",
    "Agent",
    "AgentOptions",
    "AuthError",
    "Browser",
    "ChannelUnavailable",
    "CommandError",
    "CommandOutcome",
    "CommandRequest",
    "ConnectError",
    "Connection",
    "Connector",
    "DiscoveryError",
    "DispatchOptions",
    "DispatchReport",
    "DurationRecord",
    "ExitCode",
    "FailureBudget",
    "Fleet",
    "FleetEvent",
    "FleetJob",
    "FleetReport",
    "History",
    "Host",
    "HostDefaults",
    "HostDown",
    "HostFinished",
    "HostKeyError",
    "HostOutput",
    "HostProbe",
    "HostReady",
    "HostResult",
    "HostStarted",
    "HostStatus",
    "HostUnreachable",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "Inventory",
    "InventoryError",
    "LiveDiscovery",
    "MeshrunError",
    "Notice",
    "ProbeReport",
    "Progress",
    "PruneResult",
    "RunDir",
    "RunFailed",
    "RunStopping",
    "Script",
    "StateDir",
    "Stopped",
    "Task",
    "TaskEnded",
    "TaskFileError",
    "TaskGraph",
    "TaskLine",
    "TaskResult",
    "TaskStarted",
    "TaskStatus",
    "Tick",
    "__version__",
    "agent_to_host",
    "allowed_signer_keys",
    "batch_sizes",
    "default_connector",
    "discover",
    "dispatch_document",
    "document_json",
    "effective_parallel",
    "exit_code_for_signal",
    "fleet_document",
    "format_duration",
    "generate_keypair",
    "hosts_toml",
    "how_stopped",
    "junit_xml",
    "live_discovery",
    "load_inventory",
    "load_private_key",
    "load_public_key",
    "load_tasks",
    "local_host",
    "new_run_id",
    "parse_duration",
    "parse_env",
    "parse_size",
    "probe_hosts",
    "probe_parallel",
    "prune_state",
    "read_inventory",
    "read_script",
    "record_fleet_run",
    "resolve_hosts",
    "resolve_with_discovery",
    "run_agent",
    "run_dispatch",
    "run_fleet",
    "run_fleet_recorded",
    "select_hosts",
    "select_rerun",
    "shell_command",
    "signal_of",
    "stop_on_signals",
    "verify_run",
    "watch",
    "write_hosts_toml",
]

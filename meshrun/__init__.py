"""meshrun: run commands, scripts and task graphs across many machines over plain SSH.

The library is what the ``meshrun`` command is built from::

    import meshrun
    hosts = meshrun.resolve_hosts("hosts.toml")
    job = meshrun.FleetJob(command="uptime")
    connector = meshrun.default_connector(hosts)
    try:
        report = meshrun.run_fleet(hosts, job, connector, run_id=meshrun.new_run_id())
    finally:
        connector.close()
    for result in report.results:
        print(result.name, result.status.value, result.stdout.decode())

Nothing here imports paramiko until a remote host is connected, and nothing imports
Fabric. ``meshrun.__version__`` is the installed package's version (its metadata).
"""

import importlib
from typing import TYPE_CHECKING, Any

from meshrun import report
from meshrun.cli.console import (
    ConsoleLogHandler,
    DispatchConsole,
    FleetConsole,
    OutputMode,
    render_agents,
    render_history,
    render_probes,
)
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
    HostKeyError,
    HostUnreachable,
    InputError,
    IntegrityError,
    Interrupted,
    InventoryError,
    MeshrunError,
    TaskFileError,
)
from meshrun.fleet.probe import HostProbe, probe_hosts
from meshrun.fleet.rollout import FailureBudget, batch_sizes
from meshrun.fleet.run import (
    FleetJob,
    FleetReport,
    HostResult,
    HostStatus,
    Script,
    parse_env,
    read_script,
    run_fleet,
)
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
    default_connector,
)
from meshrun.transport.wrapper import shell_command

if TYPE_CHECKING:
    from meshrun import discovery
    from meshrun.config.tasks import Task, TaskGraph, load_tasks
    from meshrun.discovery import (
        Advert,
        Agent,
        AgentOptions,
        Browser,
        agent_to_host,
        discover,
        hosts_toml,
        resolve_with_discovery,
        run_agent,
        watch,
        write_hosts_toml,
    )
    from meshrun.dispatch import executor
    from meshrun.dispatch.executor import DispatchOptions, DispatchReport, TaskResult
    from meshrun.dispatch.history import History
    from meshrun.dispatch.run import (
        LiveDiscovery,
        StateDir,
        live_discovery,
        run_dispatch,
        select_rerun,
    )
    from meshrun.dispatch.scheduler import TaskStatus
    from meshrun.fleet.pulls import record_fleet_run, run_fleet_recorded
    from meshrun.integrity.manifest import verify_run
    from meshrun.integrity.signing import (
        allowed_signer_keys,
        generate_keypair,
        load_private_key,
        load_public_key,
    )

#: The dispatch side (scheduler, executor, SQLite history, agent client) loads on first
#: use: ``meshrun exec`` never pays for it.
_LAZY = {
    "StateDir": "meshrun.dispatch.run",
    "LiveDiscovery": "meshrun.dispatch.run",
    "live_discovery": "meshrun.dispatch.run",
    "run_dispatch": "meshrun.dispatch.run",
    "select_rerun": "meshrun.dispatch.run",
    "DispatchOptions": "meshrun.dispatch.executor",
    "DispatchReport": "meshrun.dispatch.executor",
    "TaskResult": "meshrun.dispatch.executor",
    "History": "meshrun.dispatch.history",
    "TaskStatus": "meshrun.dispatch.scheduler",
    "Task": "meshrun.config.tasks",
    "TaskGraph": "meshrun.config.tasks",
    "load_tasks": "meshrun.config.tasks",
    "executor": "meshrun.dispatch.executor",
    "generate_keypair": "meshrun.integrity.signing",
    "load_private_key": "meshrun.integrity.signing",
    "load_public_key": "meshrun.integrity.signing",
    "allowed_signer_keys": "meshrun.integrity.signing",
    "verify_run": "meshrun.integrity.manifest",
    # Discovery: zeroconf (~0.12 s) loads only for agent, discover and --discover.
    "discovery": "meshrun.discovery",
    "Advert": "meshrun.discovery",
    "Agent": "meshrun.discovery",
    "AgentOptions": "meshrun.discovery",
    "Browser": "meshrun.discovery",
    "agent_to_host": "meshrun.discovery",
    "discover": "meshrun.discovery",
    "hosts_toml": "meshrun.discovery",
    "resolve_with_discovery": "meshrun.discovery",
    "run_agent": "meshrun.discovery",
    "watch": "meshrun.discovery",
    "write_hosts_toml": "meshrun.discovery",
    "run_fleet_recorded": "meshrun.fleet.pulls",
    "record_fleet_run": "meshrun.fleet.pulls",
}


def _version() -> str:
    """The installed distribution's version: one source, pyproject.toml. Looked up on
    first use only (importlib.metadata costs start-up time)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshrun")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = version = _version()
        return version
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshrun' has no attribute {name!r}")
    imported = importlib.import_module(module)
    # "executor" names a module itself; every other entry is a name inside one.
    value = imported if module == f"meshrun.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    __version__: str

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
    "ConsoleLogHandler",
    "DispatchConsole",
    "DispatchOptions",
    "DispatchReport",
    "FailureBudget",
    "FleetConsole",
    "FleetJob",
    "FleetReport",
    "History",
    "Host",
    "HostDefaults",
    "HostKeyError",
    "HostProbe",
    "HostResult",
    "HostStatus",
    "HostUnreachable",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "Inventory",
    "InventoryError",
    "LiveDiscovery",
    "MeshrunError",
    "OutputMode",
    "Script",
    "StateDir",
    "Stopped",
    "Task",
    "TaskFileError",
    "TaskGraph",
    "TaskResult",
    "TaskStatus",
    "__version__",
    "agent_to_host",
    "allowed_signer_keys",
    "batch_sizes",
    "default_connector",
    "discover",
    "discovery",
    "executor",
    "exit_code_for_signal",
    "format_duration",
    "generate_keypair",
    "hosts_toml",
    "how_stopped",
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
    "read_inventory",
    "read_script",
    "record_fleet_run",
    "render_agents",
    "render_history",
    "render_probes",
    "report",
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

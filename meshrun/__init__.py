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

Nothing here imports paramiko until a remote host is connected.
"""

from meshrun import executor, report
from meshrun.console import (
    DispatchConsole,
    FleetConsole,
    OutputMode,
    render_history,
    render_probes,
)
from meshrun.dispatch import StateDir, run_dispatch, select_rerun
from meshrun.durations import format_duration, parse_duration
from meshrun.errors import (
    AuthError,
    CommandError,
    ConnectError,
    HostKeyError,
    HostUnreachable,
    InputError,
    IntegrityError,
    InventoryError,
    MeshrunError,
    TaskFileError,
)
from meshrun.executor import DispatchOptions, DispatchReport, TaskResult
from meshrun.fleet import (
    FleetJob,
    FleetReport,
    HostResult,
    HostStatus,
    Script,
    parse_env,
    read_script,
    run_fleet,
)
from meshrun.history import History
from meshrun.inventory import Host, load_inventory, local_host, resolve_hosts, select_hosts
from meshrun.probe import HostProbe, probe_hosts
from meshrun.rollout import FailureBudget, batch_sizes
from meshrun.runid import new_run_id
from meshrun.scheduler import TaskStatus
from meshrun.tasks import Task, TaskGraph, load_tasks
from meshrun.transport.base import (
    CommandOutcome,
    CommandRequest,
    Connection,
    Connector,
    default_connector,
)
from meshrun.transport.wrapper import shell_command

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "CommandError",
    "CommandOutcome",
    "CommandRequest",
    "ConnectError",
    "Connection",
    "Connector",
    "DispatchConsole",
    "DispatchOptions",
    "DispatchReport",
    "FailureBudget",
    "FleetConsole",
    "FleetJob",
    "FleetReport",
    "History",
    "Host",
    "HostKeyError",
    "HostProbe",
    "HostResult",
    "HostStatus",
    "HostUnreachable",
    "InputError",
    "IntegrityError",
    "InventoryError",
    "MeshrunError",
    "OutputMode",
    "Script",
    "StateDir",
    "Task",
    "TaskFileError",
    "TaskGraph",
    "TaskResult",
    "TaskStatus",
    "__version__",
    "batch_sizes",
    "default_connector",
    "executor",
    "format_duration",
    "load_inventory",
    "load_tasks",
    "local_host",
    "new_run_id",
    "parse_duration",
    "parse_env",
    "probe_hosts",
    "read_script",
    "render_history",
    "render_probes",
    "report",
    "resolve_hosts",
    "run_dispatch",
    "run_fleet",
    "select_hosts",
    "select_rerun",
    "shell_command",
]

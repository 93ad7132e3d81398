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

from meshrun import report
from meshrun.console import FleetConsole, OutputMode, render_probes
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
from meshrun.inventory import Host, load_inventory, local_host, resolve_hosts, select_hosts
from meshrun.probe import HostProbe, probe_hosts
from meshrun.rollout import FailureBudget, batch_sizes
from meshrun.runid import new_run_id
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
    "FailureBudget",
    "FleetConsole",
    "FleetJob",
    "FleetReport",
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
    "TaskFileError",
    "__version__",
    "batch_sizes",
    "default_connector",
    "format_duration",
    "load_inventory",
    "local_host",
    "new_run_id",
    "parse_duration",
    "parse_env",
    "probe_hosts",
    "read_script",
    "render_probes",
    "report",
    "resolve_hosts",
    "run_fleet",
    "select_hosts",
    "shell_command",
]

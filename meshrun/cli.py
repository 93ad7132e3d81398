"""The ``meshrun`` command: parse options, build objects, call, render, exit.

No logic a library user would also need lives here; one function (``_exit_with``)
maps outcomes to the exit codes of DESIGN.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, NoReturn

import typer

import meshrun

app = typer.Typer(
    name="meshrun",
    help=(
        "Run commands, scripts and task graphs across many machines over plain SSH — "
        "no server, one exit code.\n\n"
        "Without --hosts every command runs on this machine. Exit codes: 0 all ok, "
        "1 a command failed, 2 bad input, 3 a host unreachable or refused, "
        "4 verification failed, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Output(StrEnum):
    stream = "stream"
    group = "group"
    fold = "fold"


HostsOpt = Annotated[
    str | None,
    typer.Option(
        "--hosts",
        "-H",
        metavar="FILE|LIST",
        envvar="MESHRUN_HOSTS",
        help="Inventory file (hosts.toml) or inline list like "
        "'web1,root@10.0.0.5:2222'. Default: this machine only.",
    ),
]
LimitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        "-l",
        metavar="PATTERN",
        help="Select hosts: glob on name ('web*'), 'label:db', '!name' to exclude; "
        "commas = any of; repeat to require all.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (schema 1) on stdout.")
]
VerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More log detail on stderr (-vv).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only failures and errors.")]
AcceptOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Add unknown host keys to known_hosts (like OpenSSH accept-new). "
        "A changed key is always refused.",
    ),
]
ConnectTimeoutOpt = Annotated[
    str,
    typer.Option(
        "--connect-timeout",
        metavar="DURATION",
        help="Limit for TCP connect, SSH banner and handshake.",
    ),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"meshrun: error: {message}\n")
    raise typer.Exit(code)


@contextmanager
def _input_errors() -> Iterator[None]:
    """Bad input becomes one clear line on stderr and exit 2."""
    try:
        yield
    except meshrun.MeshrunError as exc:
        _fail(str(exc), exc.exit_code)
    except ValueError as exc:
        _fail(str(exc))


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    elif quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="meshrun: %(levelname)s: %(name)s: %(message)s")
    if verbose < 3:
        # paramiko logs its own tracebacks at ERROR for a hung host; meshrun reports
        # the failure itself, in one line. -vvv shows paramiko's side.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _select(hosts_spec: str | None, limits: list[str] | None) -> list[meshrun.Host]:
    hosts = meshrun.resolve_hosts(hosts_spec)
    if limits:
        source = hosts_spec if hosts_spec and hosts_spec.endswith(".toml") else None
        hosts = meshrun.select_hosts(hosts, limits, source=source)
    return hosts


def _fleet(
    *,
    command: str | None,
    script: meshrun.Script | None,
    hosts_spec: str | None,
    limit: list[str] | None,
    parallel: int | None,
    batch: str | None,
    max_fail: str | None,
    fail_fast: bool,
    timeout: str | None,
    connect_timeout: str,
    env: list[str] | None,
    output: Output,
    json_out: bool,
    quiet: bool,
    verbose: int,
    accept_new_host_keys: bool,
) -> NoReturn:
    _setup_logging(verbose, quiet)
    with _input_errors():
        hosts = _select(hosts_spec, limit)
        if parallel is not None and parallel < 1:
            raise ValueError("--parallel must be at least 1")
        job = meshrun.FleetJob(
            command=command,
            script=script,
            env=meshrun.parse_env(env or []),
            timeout_s=meshrun.parse_duration(timeout, option="--timeout") if timeout else None,
            parallel=parallel,
            batches=meshrun.batch_sizes(batch, len(hosts)) if batch else None,
            max_fail=meshrun.FailureBudget.parse(max_fail) if max_fail else None,
            fail_fast=fail_fast,
        )
        connect_timeout_s = meshrun.parse_duration(connect_timeout, option="--connect-timeout")
    connector = meshrun.default_connector(
        hosts, connect_timeout_s=connect_timeout_s, accept_new_host_keys=accept_new_host_keys
    )
    mode = meshrun.OutputMode.NONE if json_out else meshrun.OutputMode(output.value)
    console = meshrun.FleetConsole(mode=mode, host_names=[h.name for h in hosts], quiet=quiet)
    try:
        report = meshrun.run_fleet(
            hosts, job, connector, run_id=meshrun.new_run_id(), observer=console
        )
    finally:
        connector.close()
    console.finish(report)
    if json_out:
        sys.stdout.write(meshrun.report.dumps(meshrun.report.fleet_document(report)) + "\n")
    raise typer.Exit(report.exit_code)


_EXEC_EPILOG = (
    "Examples:\n\n"
    "  meshrun exec --hosts hosts.toml -- uptime\n\n"
    "  meshrun exec -H hosts.toml -l 'web*' -o fold -- 'df -h / | tail -1'\n\n"
    "  meshrun exec -- echo hi            # no --hosts: this machine\n\n"
    "One argument is a shell command line (pipes work); several arguments are quoted "
    "one by one, exactly as typed."
)


@app.command(
    "exec",
    epilog=_EXEC_EPILOG,
    context_settings={"allow_interspersed_args": False},
)
def exec_command(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND...", show_default=False, help="The command to run on every host."
        ),
    ],
    hosts: HostsOpt = None,
    limit: LimitOpt = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel", "-p", metavar="N", help="Hosts at once (default: all, up to 256)."
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            "--batch",
            metavar="SIZES",
            help="Rolling batches, e.g. '1,25%,100%' (the last size repeats).",
        ),
    ] = None,
    max_fail: Annotated[
        str | None,
        typer.Option(
            "--max-fail",
            metavar="N|P%",
            help="Start no more hosts once more than this many failed.",
        ),
    ] = None,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="First failure: start nothing more, stop running hosts."),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            "-t",
            metavar="DURATION",
            help="Per-host command limit (30s, 5m, 1h); its processes are killed.",
        ),
    ] = None,
    connect_timeout: ConnectTimeoutOpt = "10s",
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="K=V",
            help="Set an environment variable for the command (repeatable).",
        ),
    ] = None,
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            help="stream: lines prefixed by host as they come; group: one block "
            "per host; fold: identical outputs once, under folded host names.",
        ),
    ] = Output.stream,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Run a command on every selected host, in parallel.

    Each host runs it in its workdir, with MESHRUN_HOST and MESHRUN_RUN_ID set. When the
    command is stopped (--timeout, --fail-fast, Ctrl-C, lost link) its whole process
    group is killed on the host.
    """
    with _input_errors():
        line = meshrun.shell_command(command)
    _fleet(
        command=line,
        script=None,
        hosts_spec=hosts,
        limit=limit,
        parallel=parallel,
        batch=batch,
        max_fail=max_fail,
        fail_fast=fail_fast,
        timeout=timeout,
        connect_timeout=connect_timeout,
        env=env,
        output=output,
        json_out=json_out,
        quiet=quiet,
        verbose=verbose,
        accept_new_host_keys=accept_new_host_keys,
    )


_RUN_EPILOG = (
    "Examples:\n\n"
    "  meshrun run --hosts hosts.toml deploy.sh v42\n\n"
    "  meshrun run -H hosts.toml --batch 1,25%,100% --max-fail 0 deploy.sh\n\n"
    "The script is uploaded once per host to WORKDIR/.meshrun/scripts/ under its "
    "content hash and reused by later runs."
)


@app.command(
    "run",
    epilog=_RUN_EPILOG,
    context_settings={"allow_interspersed_args": False},
)
def run_command(
    script: Annotated[str, typer.Argument(metavar="SCRIPT", help="Local script to run.")],
    args: Annotated[
        list[str] | None, typer.Argument(metavar="[ARGS]...", help="Arguments for the script.")
    ] = None,
    hosts: HostsOpt = None,
    limit: LimitOpt = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel", "-p", metavar="N", help="Hosts at once (default: all, up to 256)."
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            "--batch",
            metavar="SIZES",
            help="Rolling batches, e.g. '1,25%,100%' (the last size repeats).",
        ),
    ] = None,
    max_fail: Annotated[
        str | None,
        typer.Option(
            "--max-fail",
            metavar="N|P%",
            help="Start no more hosts once more than this many failed.",
        ),
    ] = None,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="First failure: start nothing more, stop running hosts."),
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            "-t",
            metavar="DURATION",
            help="Per-host limit (30s, 5m, 1h); its processes are killed.",
        ),
    ] = None,
    connect_timeout: ConnectTimeoutOpt = "10s",
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="K=V",
            help="Set an environment variable for the script (repeatable).",
        ),
    ] = None,
    output: Annotated[
        Output,
        typer.Option("--output", "-o", help="stream | group | fold (see `meshrun exec --help`)."),
    ] = Output.stream,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Upload a local script to every selected host and run it there, with ARGS.

    Options go before SCRIPT; everything after SCRIPT is passed to it.
    """
    with _input_errors():
        loaded = meshrun.read_script(script, args or [])
    _fleet(
        command=None,
        script=loaded,
        hosts_spec=hosts,
        limit=limit,
        parallel=parallel,
        batch=batch,
        max_fail=max_fail,
        fail_fast=fail_fast,
        timeout=timeout,
        connect_timeout=connect_timeout,
        env=env,
        output=output,
        json_out=json_out,
        quiet=quiet,
        verbose=verbose,
        accept_new_host_keys=accept_new_host_keys,
    )


@app.command("hosts")
def hosts_command(
    hosts: HostsOpt = None,
    limit: LimitOpt = None,
    json_out: JsonOpt = False,
    connect_timeout: ConnectTimeoutOpt = "10s",
    verbose: VerboseOpt = 0,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Check every selected host: reachable, login ok, round trip, CPUs, load, python3.

    Exits 3 if any host is unreachable or refuses the login.
    """
    _setup_logging(verbose, False)
    with _input_errors():
        selected = _select(hosts, limit)
        connect_timeout_s = meshrun.parse_duration(connect_timeout, option="--connect-timeout")
    connector = meshrun.default_connector(
        selected, connect_timeout_s=connect_timeout_s, accept_new_host_keys=accept_new_host_keys
    )
    try:
        probes = meshrun.probe_hosts(selected, connector)
    finally:
        connector.close()
    if json_out:
        sys.stdout.write(meshrun.report.dumps(meshrun.report.hosts_document(probes)) + "\n")
    else:
        sys.stdout.write(meshrun.render_probes(probes))
    raise typer.Exit(0 if all(p.reachable and p.auth_ok for p in probes) else 3)


class DispatchOutput(StrEnum):
    group = "group"
    stream = "stream"
    none = "none"


_DISPATCH_EPILOG = (
    "Examples:\n\n"
    "  meshrun dispatch tasks.toml --hosts agents.toml\n\n"
    "  meshrun dispatch tasks.toml -H agents.toml --junit junit.xml --json\n\n"
    "  meshrun dispatch tasks.toml --rerun-failed\n\n"
    "The workspace ([sync] in tasks.toml; default: the directory of tasks.toml) is "
    "pushed to every host with rsync before its first task. Logs: "
    ".meshrun/runs/<run-id>/logs/<task>.log beside tasks.toml (or under --state-dir)."
)


@app.command("dispatch", epilog=_DISPATCH_EPILOG)
def dispatch_command(
    tasks_file: Annotated[str, typer.Argument(metavar="TASKS.toml", help="The task graph to run.")],
    hosts: HostsOpt = None,
    limit: LimitOpt = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="First failure: cancel queued and running tasks.")
    ] = False,
    keep_going: Annotated[
        bool,
        typer.Option("--keep-going", help="Run every task whose needs succeeded (the default)."),
    ] = False,
    max_fail: Annotated[
        int | None,
        typer.Option(
            "--max-fail", metavar="N", help="Start no new task once more than N tasks failed."
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            "-t",
            metavar="DURATION",
            help="Limit for tasks that set no timeout of their own.",
        ),
    ] = None,
    rerun_failed: Annotated[
        bool,
        typer.Option(
            "--rerun-failed", help="Run only the last run's failed, skipped and cancelled tasks."
        ),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="RUN_ID", help="Like --rerun-failed, for the named run."),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Where history and runs live (default: .meshrun beside "
            "TASKS.toml); point a CI cache at it.",
        ),
    ] = None,
    no_sync: Annotated[
        bool, typer.Option("--no-sync", help="Do not push the workspace to the hosts.")
    ] = False,
    no_agent: Annotated[
        bool,
        typer.Option(
            "--no-agent", help="One SSH channel per task instead of the persistent agent."
        ),
    ] = False,
    junit: Annotated[
        str | None,
        typer.Option("--junit", metavar="FILE", help="Write JUnit XML (one testcase per task)."),
    ] = None,
    output: Annotated[
        DispatchOutput,
        typer.Option(
            "--output",
            "-o",
            help="group: each task's output as a block when it ends; stream: "
            "lines prefixed by task as they come; none: statuses only.",
        ),
    ] = DispatchOutput.group,
    json_out: JsonOpt = False,
    connect_timeout: ConnectTimeoutOpt = "10s",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    accept_new_host_keys: AcceptOpt = False,
) -> None:
    """Spread a graph of tasks over the hosts; one exit code for the whole run.

    Tasks are placed by expected duration (learned from past runs) and host speed,
    idle hosts steal queued work, and each host's concurrency adapts to its health.
    Failed tasks' logs are replayed at the end. Exit 0 all tasks succeeded, 1 a task
    failed or was skipped, 2 bad input, 3 no host reachable, 130 interrupted.
    """
    _setup_logging(verbose, quiet)
    if fail_fast and keep_going:
        _fail("--fail-fast and --keep-going contradict each other; pick one")
    if rerun_failed and resume:
        _fail("--rerun-failed and --resume both pick the tasks to run; pass one")
    with _input_errors():
        graph = meshrun.load_tasks(tasks_file)
        selected = _select(hosts, limit)
        if not hosts:
            selected = [meshrun.local_host(str(graph.sync.root))]
        state = meshrun.StateDir(meshrun.executor.state_paths(tasks_file, state_dir))
        if rerun_failed or resume:
            with meshrun.History(state.history) as history:
                graph = meshrun.select_rerun(graph, history, resume)
        options = meshrun.DispatchOptions(
            fail_fast=fail_fast,
            max_fail=max_fail,
            default_timeout_s=meshrun.parse_duration(timeout, option="--timeout")
            if timeout
            else None,
            use_agent=not no_agent,
            sync=not no_sync,
        )
        connect_timeout_s = meshrun.parse_duration(connect_timeout, option="--connect-timeout")
    connector = meshrun.default_connector(
        selected, connect_timeout_s=connect_timeout_s, accept_new_host_keys=accept_new_host_keys
    )
    mode = (
        meshrun.OutputMode.NONE
        if json_out or output is DispatchOutput.none
        else meshrun.OutputMode(output.value)
    )
    console = meshrun.DispatchConsole(mode=mode, total=len(graph.tasks), quiet=quiet)
    try:
        with _input_errors():
            report = meshrun.run_dispatch(
                graph,
                selected,
                connector,
                state=state,
                run_id=meshrun.new_run_id(),
                options=options,
                observer=console,
                command_line=sys.argv,
                junit_path=junit,
            )
    finally:
        connector.close()
    console.finish(report)
    if json_out:
        document = meshrun.report.dispatch_document(report, command_line=sys.argv)
        sys.stdout.write(meshrun.report.dumps(document) + "\n")
    raise typer.Exit(report.exit_code)


@app.command("history")
def history_command(
    tasks_file: Annotated[
        str, typer.Argument(metavar="[TASKS.toml]", help="Whose history (default: ./tasks.toml).")
    ] = "tasks.toml",
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Where history lives (default: .meshrun beside TASKS.toml).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the learned duration of each task (what the scheduler expects)."""
    state = meshrun.StateDir(meshrun.executor.state_paths(tasks_file, state_dir))
    if not state.history.exists():
        _fail(f"no history at {state.history}: run `meshrun dispatch` first (or pass --state-dir)")
    with meshrun.History(state.history) as history:
        records = history.durations()
    if json_out:
        document = {
            "schema": 1,
            "tasks": [
                {
                    "name": r.task,
                    "expected_s": round(r.estimate_s, 3),
                    "last_s": round(r.last_s, 3),
                    "samples": r.samples,
                }
                for r in records
            ],
        }
        sys.stdout.write(meshrun.report.dumps(document) + "\n")
    else:
        sys.stdout.write(meshrun.render_history(records))


@app.command("version")
def version_command() -> None:
    """Print meshrun's version."""
    sys.stdout.write(f"meshrun {meshrun.__version__}\n")


def main() -> None:
    """Console-script entry point: Ctrl-C outside a run still exits 130, not 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="meshrun", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("meshrun: interrupted\n")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            sys.stderr.write(f"meshrun: error: {exc}\n")
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)

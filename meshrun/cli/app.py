"""The ``meshrun`` command: parse options, build objects, call, render, exit.

No logic a library user would also need lives here; the command functions return the
exit codes of docs/ARCHITECTURE.md and ``main`` exits with them. Parsing is the standard library's
argparse, and only the parser of the command being run is built: startup time counts.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import meshrun
from meshrun import resources
from meshrun.cli import console, documents
from meshrun.rundir import DEFAULT_KEEP_RUNS, DEFAULT_STATE_DIR

_DESCRIPTION = (
    "Run commands, scripts and task graphs across many machines over plain SSH — "
    "no server, one exit code.\n\n"
    "Without --hosts every command runs on this machine. Exit codes: 0 all ok, "
    "1 a command failed, 2 bad input, 3 a host unreachable or refused, "
    "4 verification failed, 130 interrupted (143/129: SIGTERM/SIGHUP, which stop a run "
    "the same way)."
)

OUTPUTS = ("stream", "group", "fold")
DISPATCH_OUTPUTS = ("group", "stream", "none")


# -- help formatting and the shared options ------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs: plain paragraphs are wrapped to the terminal, indented
    lines (examples, lists) are kept as written. Options read ``-H, --hosts FILE|LIST``."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(paragraphs)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


def _doc(function: Callable[..., Any]) -> str:
    """A command's help text: its docstring, each paragraph on one line (to be wrapped)."""
    return "\n\n".join(" ".join(p.split()) for p in (function.__doc__ or "").split("\n\n"))


def _parser(
    name: str, function: Callable[..., Any], usage: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"meshrun {name}",
        usage=f"%(prog)s {usage}",
        description=_doc(function),
        epilog=epilog,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )


def _hosts_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "-H",
        "--hosts",
        metavar="FILE|LIST",
        default=os.environ.get("MESHRUN_HOSTS") or None,
        help="Inventory file (hosts.toml) or inline list like 'web1,root@10.0.0.5:2222'. "
        "Default: this machine only.  [env var: MESHRUN_HOSTS]",
    )


def _limit_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "-l",
        "--limit",
        metavar="PATTERN",
        action="append",
        help="Select hosts: glob on name ('web*'), 'label:db', '!name' to exclude; "
        "commas = any of; repeat to require all.",
    )


def _retention_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        p.add_argument(
            "--keep-runs",
            metavar="N",
            type=int,
            default=DEFAULT_KEEP_RUNS,
            help="Runs kept in the state directory: older ones are removed (directory and "
            "history) when a run is recorded, never the one --rerun-failed needs; "
            f"0 keeps all.  [default: {DEFAULT_KEEP_RUNS}]",
        ),
        p.add_argument(
            "--keep-days",
            metavar="DAYS",
            type=float,
            help="Also remove recorded runs older than DAYS (same exceptions).",
        ),
    ]


def _prune_after(
    state: meshrun.StateDir, run_id: str, keep_runs: int, keep_days: float | None
) -> None:
    """Retention after a recorded run; a failure is a warning, never the run's."""
    import sqlite3  # only after a recorded run: off every command's start

    try:
        meshrun.prune_state(state, keep_runs=keep_runs, keep_days=keep_days, current=run_id)
    except (OSError, ValueError, sqlite3.Error) as exc:
        sys.stderr.write(f"meshrun: warning: could not prune {state.root}: {exc}\n")


def _json_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "--json",
        dest="json_out",
        action="store_true",
        help="Print one JSON document (schema 1) on stdout.",
    )


def _quiet_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "-q", "--quiet", action="store_true", help="Print only failures and errors."
    )


def _verbose_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="More log detail on stderr (-vv).",
    )


def _progress_interval_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "--progress-interval",
        metavar="DURATION",
        default="15s",
        help="When stderr is no terminal (a CI log): a progress line this often while "
        "work runs (done/total, failures, what runs and for how long, ETA); 0 turns it "
        "off. On a terminal the status line shows the same.  [default: 15s]",
    )


def _progress_interval_s(text: str) -> float:
    if text.strip().lower() in ("0", "0s", "none", "off"):
        return 0.0
    return meshrun.parse_duration(text, option="--progress-interval")


def _accept_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="Add unknown host keys to known_hosts (like OpenSSH accept-new). "
        "A changed key is always refused.",
    )


def _sign_key_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "--sign-key",
        metavar="KEY",
        help="Sign the run's manifest.json with this Ed25519 key (OpenSSH format, e.g. "
        "from `meshrun keygen`); check it later with `meshrun verify`.",
    )


def _connect_timeout_option(p: argparse.ArgumentParser) -> argparse.Action:
    return p.add_argument(
        "--connect-timeout",
        metavar="DURATION",
        default=None,
        help="Limit for TCP connect, SSH banner and handshake.  [default: the host's "
        "ConnectTimeout in ssh_config, else 10s]",
    )


def _server_alive_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """OpenSSH's ServerAliveInterval/ServerAliveCountMax: when a silent host is lost."""
    return [
        p.add_argument(
            "--server-alive-interval",
            metavar="DURATION",
            default=None,
            help="After this long without a packet from a host, ask it for a reply "
            "(a keepalive, as ssh's ServerAliveInterval); 0 turns it off.  [default: "
            "the host's ServerAliveInterval in ssh_config, else 5s]",
        ),
        p.add_argument(
            "--server-alive-count-max",
            metavar="N",
            type=int,
            default=None,
            help="Unanswered keepalives after which a host that stopped answering is "
            "lost: interval x (N+1) after its last packet.  [default: the host's "
            "ServerAliveCountMax in ssh_config, else 3]",
        ),
    ]


def _parallel_option(p: argparse.ArgumentParser, default: str) -> argparse.Action:
    return p.add_argument(
        "-p",
        "--parallel",
        metavar="N",
        type=int,
        help=f"Hosts at once (default: {default}); each holds a connection until it is "
        "done. Fewer, with a warning, when `ulimit -n` cannot hold so many.",
    )


def _fleet_options(
    p: argparse.ArgumentParser, *, timeout_help: str, env_help: str, output_help: str
) -> list[argparse.Action]:
    """The options `exec` and `run` share, in the order their help lists them."""
    return [
        _hosts_option(p),
        _limit_option(p),
        _parallel_option(p, "all, up to 256"),
        p.add_argument(
            "--batch",
            metavar="SIZES",
            help="Rolling batches, e.g. '1,25%%,100%%' (the last size repeats).",
        ),
        p.add_argument(
            "--max-fail",
            metavar="N|P%",
            help="Start no more hosts once more than this many failed.",
        ),
        p.add_argument(
            "--fail-fast",
            action="store_true",
            help="First failure: start nothing more, stop running hosts.",
        ),
        p.add_argument("-t", "--timeout", metavar="DURATION", help=timeout_help),
        _connect_timeout_option(p),
        *_server_alive_options(p),
        p.add_argument("-e", "--env", metavar="K=V", action="append", help=env_help),
        p.add_argument(
            "-o",
            "--output",
            metavar="<stream|group|fold>",
            choices=OUTPUTS,
            default="stream",
            help=output_help,
        ),
        p.add_argument(
            "--pull",
            metavar="GLOB",
            action="append",
            help="After the command (whatever its exit code), bring home the files GLOB "
            "matches in each host's workdir, verified, to PULL_DIR/<host>/<path> "
            "('logs/*.log', 'dist/**'; a leading '?' allows no match). Repeatable.",
        ),
        p.add_argument(
            "--pull-dir",
            metavar="DIR",
            help="Where pulled files land, with a copy of the manifest "
            "(default: STATE_DIR/runs/<run-id>/hosts/).",
        ),
        _pull_max_bytes_option(
            p,
            "A host whose matched files add up to more is refused before anything is "
            "written (its host fails)",
        ),
        _sign_key_option(p),
        p.add_argument(
            "--state-dir",
            metavar="DIR",
            help="Where a run with --pull or --sign-key is recorded: runs/<run-id>/ with "
            "report.json and manifest.json (default: .meshrun in this directory).",
        ),
        *_retention_options(p),
        _json_option(p),
        _quiet_option(p),
        _verbose_option(p),
        _progress_interval_option(p),
        _accept_option(p),
    ]


def _pull_max_bytes_option(p: argparse.ArgumentParser, what: str) -> argparse.Action:
    """``--pull-max-bytes``: the most a pull may bring home (exec/run: per host;
    dispatch: per task), checked on the sizes hashed on the host, before any byte moves."""
    return p.add_argument(
        "--pull-max-bytes",
        metavar="SIZE",
        default="10G",
        help=f"{what}: 500M, 10G, 1048576.  [default: 10G]",
    )


def _discover_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """``--discover`` and the options that only make sense with it (exec, run)."""
    return [
        p.add_argument(
            "--discover",
            action="store_true",
            help="Also run on the meshrun agents found on the LAN (see `meshrun agent`). "
            "Each is held to the host key it advertised; unknown keys still need "
            "--accept-new-host-keys.",
        ),
        p.add_argument(
            "--discover-timeout",
            metavar="DURATION",
            help="How long to look for agents.  [default: 2s]",
        ),
        p.add_argument(
            "--interface",
            metavar="ADDR",
            action="append",
            help="Look for agents on this local address or interface (repeatable; "
            "default: every non-loopback IPv4 interface).",
        ),
        p.add_argument(
            "--user",
            metavar="USER",
            help="Log in to discovered agents as USER (default: [defaults] user of "
            "--hosts, else the user the agent advertises).",
        ),
        p.add_argument(
            "--identity",
            metavar="KEY",
            help="Private key for discovered agents (default: [defaults] of --hosts, "
            "else ~/.ssh/id_*).",
        ),
        p.add_argument(
            "--known-hosts",
            metavar="FILE",
            help="known_hosts file for discovered agents (default: [defaults] of --hosts, "
            "else ~/.ssh/known_hosts).",
        ),
    ]


class _Discovery(NamedTuple):
    """The --discover options of exec and run, as parsed."""

    enabled: bool
    timeout: str | None
    interfaces: list[str] | None
    user: str | None
    identity: str | None
    known_hosts: str | None


def _with_discovery(parsed: dict[str, Any]) -> dict[str, Any]:
    """Fold the --discover options into one ``discovery`` argument."""
    parsed["discovery"] = _Discovery(
        enabled=parsed.pop("discover"),
        timeout=parsed.pop("discover_timeout"),
        interfaces=parsed.pop("interface"),
        user=parsed.pop("user"),
        identity=parsed.pop("identity"),
        known_hosts=parsed.pop("known_hosts"),
    )
    return parsed


def _split_operands(
    args: Sequence[str], value_options: frozenset[str]
) -> tuple[list[str], list[str]]:
    """Split ``args`` at the first operand (or at ``--``, which is dropped).

    What comes before is options (and their values) for argparse; what comes after is
    the command or the script's arguments, taken as typed even if it looks like an option.
    """
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return list(args[:i]), list(args[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            return list(args[:i]), list(args[i:])
        if arg.startswith("--"):
            if "=" not in arg and arg in value_options:
                i += 1  # the next argument is this option's value
        else:  # a cluster of short options: -qv, -p4, -qp 4
            for j in range(1, len(arg)):
                if "-" + arg[j] in value_options:
                    if j == len(arg) - 1:
                        i += 1
                    break
        i += 1
    return list(args), []


def _value_options(actions: Iterable[argparse.Action]) -> frozenset[str]:
    return frozenset(s for a in actions if a.nargs != 0 for s in a.option_strings)


# -- outcomes --------------------------------------------------------------------------------


def _fail(message: str, code: int = meshrun.ExitCode.USAGE) -> NoReturn:
    sys.stderr.write(f"meshrun: error: {message}\n")
    raise SystemExit(code)


def _open_fleet(
    hosts: list[meshrun.Host] | None,
    connect_timeout: str | None,
    accept_new_host_keys: bool,
    *,
    remote: bool = False,
    server_alive_interval: str | None = None,
    server_alive_count_max: int | None = None,
    state_dir: str | None = None,
    limit: list[str] | None = None,
) -> meshrun.Fleet:
    """The command's :class:`meshrun.Fleet` (``hosts`` None: this machine, ``--limit``
    applied). A command makes one call, so each host's connection closes as soon as the
    call is done with it. A bad --connect-timeout or --server-alive-* is one clear line
    and exit 2; an ssh_config OpenSSH refuses or a key that would need a prompt is, too,
    when the call starts, before any host is contacted."""
    with _input_errors():
        timeout_s = (
            meshrun.parse_duration(connect_timeout, option="--connect-timeout")
            if connect_timeout
            else None
        )
        alive_s: float | None = None
        if server_alive_interval is not None:
            off = server_alive_interval.strip() in ("0", "0s", "none", "off")
            alive_s = (
                0.0
                if off
                else meshrun.parse_duration(server_alive_interval, option="--server-alive-interval")
            )
        if server_alive_count_max is not None and server_alive_count_max < 0:
            raise ValueError("--server-alive-count-max must be 0 or more")
        options: dict[str, Any] = {
            "connect_timeout": timeout_s,
            "accept_new_host_keys": accept_new_host_keys,
            "server_alive_interval": alive_s,
            "server_alive_count_max": server_alive_count_max,
            "state_dir": state_dir,
            "keep_connections": False,
        }
        if hosts is None:
            return meshrun.Fleet.from_inventory(None, limit=limit or None, **options)
        return meshrun.Fleet(hosts, remote=remote, **options)


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
    # Without -v a warning is for the user ("--parallel 1024 does not fit ..."): the
    # module it came from is noise; with -v it says where to look.
    where = "%(name)s: " if verbose else ""
    logging.basicConfig(
        level=level,
        format=f"meshrun: %(levelname)s: {where}%(message)s",
        handlers=[console.ConsoleLogHandler()],  # records do not run into the status line
    )
    if verbose < 3:
        # paramiko logs its own tracebacks at ERROR for a hung host; meshrun reports
        # the failure itself, in one line. -vvv shows paramiko's side.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _select(
    hosts_spec: str | None, limits: list[str] | None, discovery: _Discovery | None = None
) -> list[meshrun.Host]:
    if discovery is not None and discovery.enabled:
        hosts = meshrun.resolve_with_discovery(
            hosts_spec,
            timeout_s=meshrun.parse_duration(
                discovery.timeout or "2s", option="--discover-timeout"
            ),
            interfaces=discovery.interfaces,
            user=discovery.user,
            identity=discovery.identity,
            known_hosts=discovery.known_hosts,
        )
    else:
        if discovery is not None:
            for option, value in (
                ("--discover-timeout", discovery.timeout),
                ("--interface", discovery.interfaces),
                ("--user", discovery.user),
                ("--identity", discovery.identity),
                ("--known-hosts", discovery.known_hosts),
            ):
                if value:
                    _fail(
                        f"{option} only applies to agents found with --discover; add "
                        "--discover, or set it for your hosts in hosts.toml"
                    )
        return meshrun.resolve_hosts(hosts_spec, limits=limits or ())  # selects while reading
    if limits:
        source = hosts_spec if hosts_spec and hosts_spec.endswith(".toml") else None
        hosts = meshrun.select_hosts(hosts, limits, source=source)
    return hosts


def _fleet(
    *,
    command: str | None,
    script: meshrun.Script | None,
    hosts: str | None,
    limit: list[str] | None,
    parallel: int | None,
    batch: str | None,
    max_fail: str | None,
    fail_fast: bool,
    timeout: str | None,
    connect_timeout: str | None,
    server_alive_interval: str | None,
    server_alive_count_max: int | None,
    env: list[str] | None,
    output: str,
    pull: list[str] | None,
    pull_dir: str | None,
    pull_max_bytes: str,
    sign_key: str | None,
    state_dir: str | None,
    keep_runs: int,
    keep_days: float | None,
    json_out: bool,
    quiet: bool,
    verbose: int,
    progress_interval: str,
    accept_new_host_keys: bool,
    discovery: _Discovery | None = None,
) -> int:
    _setup_logging(verbose, quiet)
    if pull_dir and not pull:
        _fail("--pull-dir needs --pull GLOB (what to bring home)")
    with _input_errors():
        selected = _select(hosts, limit, discovery)
        if parallel is not None and parallel < 1:
            raise ValueError("--parallel must be at least 1")
        options: dict[str, Any] = {
            "env": meshrun.parse_env(env or []),
            "timeout": meshrun.parse_duration(timeout, option="--timeout") if timeout else None,
            "parallel": parallel,
            "batch": meshrun.batch_sizes(batch, len(selected)) if batch else None,
            "max_fail": meshrun.FailureBudget.parse(max_fail) if max_fail else None,
            "fail_fast": fail_fast,
            "pull": pull or (),
            "pull_dir": pull_dir,
            "pull_max_bytes": meshrun.parse_size(pull_max_bytes, option="--pull-max-bytes"),
        }
        interval_s = _progress_interval_s(progress_interval)
        options["sign_key"] = meshrun.load_private_key(sign_key) if sign_key else None
    fleet = _open_fleet(
        selected,
        connect_timeout,
        accept_new_host_keys,
        server_alive_interval=server_alive_interval,
        server_alive_count_max=server_alive_count_max,
        state_dir=state_dir,
    )
    mode = console.OutputMode.NONE if json_out else console.OutputMode(output)
    screen = console.FleetConsole(
        mode=mode,
        host_names=[h.name for h in selected],
        quiet=quiet,
        progress_interval_s=interval_s,
    )
    with fleet, _input_errors():  # DoesNotFit, an ssh_config refused: exit 2, no host contacted
        if script is not None:
            report = fleet.script(script, on_event=screen, command_line=sys.argv, **options)
        else:
            assert command is not None
            report = fleet.run(command, on_event=screen, command_line=sys.argv, **options)
    screen.finish(report)
    if report.run_dir is not None:  # recorded (--pull, --sign-key): runs/<run-id>/
        root = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
        _prune_after(meshrun.StateDir(root.absolute()), report.run_id, keep_runs, keep_days)
    if json_out:
        sys.stdout.write(meshrun.document_json(meshrun.fleet_document(report)) + "\n")
    return report.exit_code


# -- exec ------------------------------------------------------------------------------------

_EXEC_EPILOG = """\
Examples:
  meshrun exec --hosts hosts.toml -- uptime
  meshrun exec -H hosts.toml -l 'web*' -o fold -- 'df -h / | tail -1'
  meshrun exec -- echo hi            # no --hosts: this machine
  meshrun exec -H hosts.toml --pull 'logs/*.log' -- ./selftest
  meshrun exec -H hosts.toml --pull '?core*' --pull-dir cores --sign-key key -- ./soak
  meshrun exec --discover --user ci -l label:gpu -- nvidia-smi   # agents on the LAN

One argument is a shell command line (pipes work); several arguments are quoted one by \
one, exactly as typed.

With --pull, each host's matching files come home after its command ends (whatever its \
exit code) to .meshrun/runs/<run-id>/hosts/<host>/<path>, each sha256 checked on arrival \
and installed atomically; the run's manifest.json lists them (signed with --sign-key): \
check it later with `meshrun verify .meshrun/runs/<run-id>` (--allow-unsigned for a \
run without --sign-key). A pattern that matches \
nothing fails its host (exit 1); a refused path (outside the workdir, a symlink leading \
out, a special file) or a changed file exits 4."""


def exec_command(*, command: list[str], **options: Any) -> int:
    """Run a command on every selected host, in parallel.

    Each host runs it in its workdir, with MESHRUN_HOST and MESHRUN_RUN_ID set. When the
    command is stopped (--timeout, --fail-fast, Ctrl-C, lost link) its whole process
    group is killed on the host.
    """
    with _input_errors():
        line = meshrun.shell_command(command)
    return _fleet(
        command=line,
        script=None,
        **options,
    )


def _exec_parser() -> argparse.ArgumentParser:
    p = _parser("exec", exec_command, "[OPTIONS] COMMAND...", _EXEC_EPILOG)
    p.add_argument(
        "command", metavar="COMMAND...", nargs="*", help="The command to run on every host."
    )
    _fleet_options(
        p,
        timeout_help="Per-host command limit (30s, 5m, 1h); its processes are killed.",
        env_help="Set an environment variable for the command (repeatable).",
        output_help="stream: lines prefixed by host as they come; group: one block per "
        "host; fold: identical outputs once, under folded host names.  [default: stream]",
    )
    _discover_options(p)
    return p


def _parse_exec(args: list[str]) -> dict[str, Any]:
    p = _exec_parser()
    options, command = _split_operands(args, _value_options(p._actions))
    parsed = _with_discovery(vars(p.parse_args(options)))
    if not command:
        p.error("the following arguments are required: COMMAND...")
    parsed["command"] = command
    return parsed


# -- run -------------------------------------------------------------------------------------

_RUN_EPILOG = """\
Examples:
  meshrun run --hosts hosts.toml deploy.sh v42
  meshrun run -H hosts.toml --batch 1,25%,100% --max-fail 0 deploy.sh
  meshrun run --hosts hosts.toml --pull 'logs/*.log' --pull '?core*' collect.sh
  meshrun run -H hosts.toml --pull 'dist/**' --pull-dir out --sign-key key build.sh

The script is uploaded once per host to WORKDIR/.meshrun/scripts/ under its content \
hash and reused by later runs.

--pull brings files home as for `meshrun exec` (see its help): to \
.meshrun/runs/<run-id>/hosts/<host>/<path> or --pull-dir DIR/<host>/<path>, listed in the \
run's (signed) manifest; `meshrun verify` accepts the run directory or the pull \
directory."""


def run_command(*, script: str, args: list[str], **options: Any) -> int:
    """Upload a local script to every selected host and run it there, with ARGS.

    Options go before SCRIPT; everything after SCRIPT is passed to it.
    """
    with _input_errors():
        loaded = meshrun.read_script(script, args)
    return _fleet(
        command=None,
        script=loaded,
        **options,
    )


def _run_parser() -> argparse.ArgumentParser:
    p = _parser("run", run_command, "[OPTIONS] SCRIPT [ARGS]...", _RUN_EPILOG)
    p.add_argument("script", metavar="SCRIPT", nargs="?", help="Local script to run.")
    p.add_argument("args", metavar="ARGS", nargs="*", help="Arguments for the script.")
    _fleet_options(
        p,
        timeout_help="Per-host limit (30s, 5m, 1h); its processes are killed.",
        env_help="Set an environment variable for the script (repeatable).",
        output_help="stream | group | fold (see `meshrun exec --help`).  [default: stream]",
    )
    _discover_options(p)
    return p


def _parse_run(args: list[str]) -> dict[str, Any]:
    p = _run_parser()
    options, operands = _split_operands(args, _value_options(p._actions))
    parsed = _with_discovery(vars(p.parse_args(options)))
    if not operands:
        p.error("the following arguments are required: SCRIPT")
    parsed["script"], parsed["args"] = operands[0], operands[1:]
    return parsed


# -- hosts -----------------------------------------------------------------------------------


def hosts_command(
    *,
    hosts: str | None,
    limit: list[str] | None,
    parallel: int | None,
    json_out: bool,
    connect_timeout: str | None,
    server_alive_interval: str | None,
    server_alive_count_max: int | None,
    verbose: int,
    accept_new_host_keys: bool,
    discovery: _Discovery,
) -> int:
    """Check every selected host: reachable, login ok, round trip, CPUs, load, python3.

    Exits 3 if any host is unreachable or refuses the login; 1 if meshrun itself ran out
    of file descriptors or threads before it could check some host ("not probed"). With
    --discover, the agents found on the LAN are checked too (each held to the host key
    it advertised).
    """
    _setup_logging(verbose, False)
    with _input_errors():
        selected = _select(hosts, limit, discovery)
        if parallel is not None and parallel < 1:
            raise ValueError("--parallel must be at least 1")
    fleet = _open_fleet(
        selected,
        connect_timeout,
        accept_new_host_keys,
        server_alive_interval=server_alive_interval,
        server_alive_count_max=server_alive_count_max,
    )
    with fleet, _input_errors():  # DoesNotFit, an ssh_config refused: exit 2
        report = fleet.probe(parallel=parallel)
    probes = list(report.probes)
    if json_out:
        sys.stdout.write(meshrun.document_json(documents.hosts_document(probes)) + "\n")
    else:
        sys.stdout.write(console.render_probes(probes))
    return report.exit_code


def _hosts_parser() -> argparse.ArgumentParser:
    p = _parser("hosts", hosts_command, "[OPTIONS]")
    _hosts_option(p)
    _limit_option(p)
    _parallel_option(p, "64")
    _json_option(p)
    _connect_timeout_option(p)
    _server_alive_options(p)
    _verbose_option(p)
    _accept_option(p)
    _discover_options(p)
    return p


def _parse_hosts(args: list[str]) -> dict[str, Any]:
    return _with_discovery(vars(_hosts_parser().parse_args(args)))


# -- dispatch --------------------------------------------------------------------------------

_DISPATCH_EPILOG = """\
Examples:
  meshrun dispatch tasks.toml --hosts agents.toml
  meshrun dispatch tasks.toml -H agents.toml --junit junit.xml --json
  meshrun dispatch tasks.toml --rerun-failed
  meshrun dispatch tasks.toml --discover --hosts defaults.toml

With --discover, meshrun agents on the LAN (`meshrun agent`) join the run as they are \
found, also while it runs, and one that leaves is a lost host whose tasks move elsewhere; \
tasks no host can run yet wait --discover-timeout for one. Without --hosts, only agents run \
tasks.

The workspace ([sync] in tasks.toml; default: the directory of tasks.toml) is pushed to \
every host with rsync before its first task.

Logs go to .meshrun/runs/<run-id>/logs/ beside tasks.toml (or under --state-dir): \
<task>.log for a task that failed, was cancelled or timed out (or printed more than \
64 KiB); the output of every other succeeded task is a slice of logs/succeeded.log, \
whose place report.json and --json give as log, log_offset and log_bytes."""


def dispatch_command(
    *,
    tasks_file: str,
    hosts: str | None,
    limit: list[str] | None,
    fail_fast: bool,
    keep_going: bool,
    max_fail: int | None,
    timeout: str | None,
    rerun_failed: bool,
    resume: str | None,
    state_dir: str | None,
    keep_runs: int,
    keep_days: float | None,
    no_sync: bool,
    no_agent: bool,
    workdir_max_age: str,
    junit: str | None,
    trace: str | None,
    sign_key: str | None,
    artifacts: str | None,
    pull_max_bytes: str,
    output: str,
    json_out: bool,
    connect_timeout: str | None,
    server_alive_interval: str | None,
    server_alive_count_max: int | None,
    quiet: bool,
    verbose: int,
    progress_interval: str,
    accept_new_host_keys: bool,
    discovery: _Discovery,
) -> int:
    """Spread a graph of tasks over the hosts; one exit code for the whole run.

    Tasks are placed by expected duration (learned from past runs) and host speed,
    idle hosts steal queued work, and each host's concurrency adapts to its health.
    Failed tasks' logs are replayed at the end. Exit 0 all tasks succeeded, 1 a task
    failed or was skipped, 2 bad input, 3 no host reachable (or found), 4 an output
    failed verification, 130 interrupted (143 SIGTERM, 129 SIGHUP: the run stops and
    writes its records the same way).
    """
    _setup_logging(verbose, quiet)
    if fail_fast and keep_going:
        _fail("--fail-fast and --keep-going contradict each other; pick one")
    if rerun_failed and resume:
        _fail("--rerun-failed and --resume both pick the tasks to run; pass one")
    with _input_errors():
        graph = meshrun.load_tasks(tasks_file)
        live = None
        if discovery.enabled:
            selected, live = meshrun.live_discovery(
                hosts,
                limits=limit or (),
                wait_s=meshrun.parse_duration(
                    discovery.timeout or "2s", option="--discover-timeout"
                ),
                interfaces=discovery.interfaces,
                user=discovery.user,
                identity=discovery.identity,
                known_hosts=discovery.known_hosts,
            )
        else:
            selected = _select(hosts, limit, discovery)
        if max_fail is not None and max_fail < 0:
            raise ValueError("--max-fail must be 0 or more")
        max_bytes = meshrun.parse_size(pull_max_bytes, option="--pull-max-bytes")
        max_age_s = meshrun.parse_duration(workdir_max_age, option="--workdir-max-age")
        timeout_s = meshrun.parse_duration(timeout, option="--timeout") if timeout else None
        interval_s = _progress_interval_s(progress_interval)
        signing_key = meshrun.load_private_key(sign_key) if sign_key else None
    fleet = _open_fleet(
        # No --hosts: this machine, working in the task file's directory.
        None if not hosts and live is None else selected,
        connect_timeout,
        accept_new_host_keys,
        remote=live is not None,
        server_alive_interval=server_alive_interval,
        server_alive_count_max=server_alive_count_max,
        limit=limit,
    )
    mode = console.OutputMode.NONE if json_out or output == "none" else console.OutputMode(output)
    screen = console.DispatchConsole(mode=mode, quiet=quiet, progress_interval_s=interval_s)
    with fleet, _input_errors():  # no earlier run to rerun, an ssh_config refused: exit 2
        report = fleet.dispatch(
            graph,
            state_dir=state_dir,
            rerun_failed=rerun_failed,
            resume=resume,
            fail_fast=fail_fast,
            max_fail=max_fail,
            timeout=timeout_s,
            agent=not no_agent,
            sync=not no_sync,
            junit=junit,
            trace=trace,
            sign_key=signing_key,
            artifacts=artifacts,
            pull_max_bytes=max_bytes,
            discovery=live,
            workdir_max_age=max_age_s,
            on_event=screen,
            command_line=sys.argv,
        )
    screen.finish(report)
    state = meshrun.StateDir.for_tasks(tasks_file, state_dir)
    _prune_after(state, report.run_id, keep_runs, keep_days)
    if json_out:
        document = meshrun.dispatch_document(report, command_line=sys.argv)
        sys.stdout.write(meshrun.document_json(document) + "\n")
    return report.exit_code


def _dispatch_parser() -> argparse.ArgumentParser:
    p = _parser("dispatch", dispatch_command, "[OPTIONS] TASKS.toml", _DISPATCH_EPILOG)
    p.add_argument("tasks_file", metavar="TASKS.toml", help="The task graph to run.")
    _hosts_option(p)
    _limit_option(p)
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="First failure: cancel queued and running tasks.",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="Run every task whose needs succeeded (the default).",
    )
    p.add_argument(
        "--max-fail",
        metavar="N",
        type=int,
        help="Start no new task once more than N tasks failed.",
    )
    p.add_argument(
        "-t",
        "--timeout",
        metavar="DURATION",
        help="Limit for tasks that set no timeout of their own.",
    )
    p.add_argument(
        "--rerun-failed",
        action="store_true",
        help="Run only the last run's failed, skipped and cancelled tasks.",
    )
    p.add_argument("--resume", metavar="RUN_ID", help="Like --rerun-failed, for the named run.")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="Where history and runs live (default: .meshrun beside TASKS.toml); "
        "point a CI cache at it.",
    )
    _retention_options(p)
    p.add_argument(
        "--no-sync",
        action="store_true",
        help="Do not push the workspace: tasks run in each host's workdir as it is.",
    )
    p.add_argument(
        "--workdir-max-age",
        metavar="DURATION",
        default="7d",
        help="Each workspace and task file gets a workdir of its own on a host "
        "(WORKDIR/.meshrun/ws/NAME-HASH; [sync] isolate = false shares the host's workdir); one "
        "no run has used for this long is removed when a run starts there "
        "(default: 7d).",
    )
    p.add_argument(
        "--no-agent",
        action="store_true",
        help="One SSH channel per task instead of the persistent agent.",
    )
    p.add_argument("--junit", metavar="FILE", help="Write JUnit XML (one testcase per task).")
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="Write the run's timeline as a Chrome trace (every attempt, one row per host "
        "slot): open it in ui.perfetto.dev or chrome://tracing.",
    )
    p.add_argument(
        "--artifacts",
        metavar="DIR",
        help="Put each task's outputs under DIR/<task>/ (with a copy of the manifest) "
        "instead of at their paths in the workspace.",
    )
    _pull_max_bytes_option(
        p,
        "A task whose outputs add up to more is refused before anything of them is "
        "written (the task fails)",
    )
    _sign_key_option(p)
    p.add_argument(
        "-o",
        "--output",
        metavar="<group|stream|none>",
        choices=DISPATCH_OUTPUTS,
        default="group",
        help="group: each task's output as a block when it ends; stream: lines prefixed "
        "by task as they come; none: statuses only.  [default: group]",
    )
    _json_option(p)
    _connect_timeout_option(p)
    _server_alive_options(p)
    _quiet_option(p)
    _verbose_option(p)
    _progress_interval_option(p)
    _accept_option(p)
    _discover_options(p)
    return p


def _parse_dispatch(args: list[str]) -> dict[str, Any]:
    return _with_discovery(vars(_dispatch_parser().parse_args(args)))


# -- agent, discover ------------------------------------------------------------------------

_AGENT_EPILOG = """\
Examples:
  meshrun agent --slots 8 --labels linux,x86_64
  meshrun agent --name build-1 --user ci --workdir /var/tmp/meshrun
  meshrun agent --interface eth0 --host-key /etc/ssh/ssh_host_ecdsa_key.pub

The machine still needs sshd and the coordinator's public key in USER's \
authorized_keys: work arrives over SSH, and the coordinator refuses the machine if the \
host key it presents is not the one announced here. Runs in the foreground; SIGTERM or \
Ctrl-C sends goodbye packets and exits 0; SIGHUP (and every 10s) re-reads the host key \
and CPU count and updates the record. The name must be unique on the LAN: the default \
(this machine's host name) becomes NAME-2, NAME-3... when taken; a taken --name is an \
error."""


def _say(line: str) -> None:
    sys.stderr.write(f"meshrun: {line}\n")
    sys.stderr.flush()


def _labels(values: list[str] | None) -> list[str]:
    """``--labels a,b --labels c`` -> ``[a, b, c]``."""
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def agent_command(
    *,
    name: str | None,
    slots: int | None,
    labels: list[str] | None,
    ssh_port: int,
    user: str | None,
    workdir: str | None,
    host_key: str,
    interface: list[str] | None,
    verbose: int,
) -> int:
    """Announce this machine on the LAN as a meshrun host (zeroconf, _meshrun._tcp).

    The record carries the SSH port and user, slots, CPU count, labels, workdir, OS and
    architecture, and the SHA256 fingerprint of this machine's SSH host key, so that
    `meshrun discover` and `--discover` find it and SSH can hold it to that key.
    """
    _setup_logging(verbose, False)
    with _input_errors():
        options = meshrun.AgentOptions(
            name=name,
            slots=slots,
            labels=tuple(_labels(labels)),
            ssh_port=ssh_port,
            user=user,
            workdir=workdir,
            host_key=os.path.expanduser(host_key),
            interfaces=tuple(interface or ()),
        )
        meshrun.run_agent(options, report=_say)
    return meshrun.ExitCode.OK


def _agent_parser() -> argparse.ArgumentParser:
    p = _parser("agent", agent_command, "[OPTIONS]", _AGENT_EPILOG)
    p.add_argument(
        "--name",
        metavar="NAME",
        help="Unique name on the LAN, used as the host name (default: this machine's "
        "short host name).",
    )
    p.add_argument(
        "--slots",
        metavar="N",
        type=int,
        help="Tasks this machine runs at once (default: its CPU count).",
    )
    p.add_argument(
        "--labels",
        metavar="L1,L2",
        action="append",
        help="Labels tasks can require, e.g. 'linux,x86_64,gpu' (repeatable).",
    )
    p.add_argument(
        "--ssh-port",
        metavar="PORT",
        type=int,
        default=22,
        help="Port of this machine's sshd.  [default: 22]",
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="Login the coordinator should use (default: the user running the agent).",
    )
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="Where work runs here, absolute or ~/... (default: the coordinator's).",
    )
    p.add_argument(
        "--host-key",
        metavar="PUBFILE",
        default="/etc/ssh/ssh_host_ed25519_key.pub",
        help="Public host key of this machine's sshd, whose fingerprint is announced.  "
        "[default: /etc/ssh/ssh_host_ed25519_key.pub]",
    )
    p.add_argument(
        "--interface",
        metavar="ADDR",
        action="append",
        help="Announce on this local address or interface only (repeatable; default: "
        "every non-loopback IPv4 interface).",
    )
    _verbose_option(p)
    return p


def _parse_agent(args: list[str]) -> dict[str, Any]:
    return vars(_agent_parser().parse_args(args))


_DISCOVER_EPILOG = """\
Examples:
  meshrun discover
  meshrun discover --labels linux,gpu --json
  meshrun discover --write hosts.toml && meshrun exec -H hosts.toml -- uptime

An agent that is still starting (about 2s to register) may need a longer --timeout. \
Records that are malformed are skipped with a warning. The hosts.toml of --write notes \
each agent's advertised host key; keys are still checked against known_hosts when \
meshrun connects."""


def discover_command(
    *,
    timeout: str,
    interface: list[str] | None,
    labels: list[str] | None,
    json_out: bool,
    write: str | None,
    verbose: int,
) -> int:
    """List the meshrun agents on the LAN: address, SSH port and user, capacity, host key.

    Exits 0 (even when none is found), 2 on bad options, 3 when --write has nothing
    to write.
    """
    _setup_logging(verbose, False)
    with _input_errors():
        timeout_s = meshrun.parse_duration(timeout, option="--timeout")
        agents = meshrun.discover(timeout_s, interface, _labels(labels))
        if write and not agents:
            _fail(f"--write {write}: no agents found within {timeout_s:g}s; nothing written", 3)
        if write:
            meshrun.write_hosts_toml(write, agents)
    if json_out:
        sys.stdout.write(meshrun.document_json(documents.agents_document(agents)) + "\n")
    elif agents:
        sys.stdout.write(console.render_agents(agents))
    if not agents:
        where = ", ".join(interface) if interface else "the LAN"
        _say(f"no agents found on {where} within {timeout_s:g}s")
    if write:
        _say(f"wrote {write} ({len(agents)} host{'' if len(agents) == 1 else 's'})")
    return meshrun.ExitCode.OK


def _discover_parser() -> argparse.ArgumentParser:
    p = _parser("discover", discover_command, "[OPTIONS]", _DISCOVER_EPILOG)
    p.add_argument(
        "-t",
        "--timeout",
        metavar="DURATION",
        default="2s",
        help="How long to listen for agents.  [default: 2s]",
    )
    p.add_argument(
        "--interface",
        metavar="ADDR",
        action="append",
        help="Browse on this local address or interface only (repeatable; default: "
        "every non-loopback IPv4 interface).",
    )
    p.add_argument(
        "--labels",
        metavar="L1,L2",
        action="append",
        help="Only agents with every one of these labels (repeatable).",
    )
    _json_option(p)
    p.add_argument(
        "--write",
        metavar="FILE",
        help="Also write the agents found as a hosts.toml (for --hosts).",
    )
    _verbose_option(p)
    return p


def _parse_discover(args: list[str]) -> dict[str, Any]:
    return vars(_discover_parser().parse_args(args))


# -- history, version, completion ------------------------------------------------------------


def history_command(
    *,
    tasks_file: str,
    state_dir: str | None,
    json_out: bool,
    prune: bool,
    keep_runs: int,
    keep_days: float | None,
) -> int:
    """Show the learned duration of each task of TASKS.toml (what the scheduler expects).

    History is kept per task file: another file's tasks of the same names are not shown.
    With --prune: remove the runs beyond --keep-runs/--keep-days now (run directories
    and history rows, every task file's; never what --rerun-failed needs) and say what
    went.
    """
    state = meshrun.StateDir.for_tasks(tasks_file, state_dir)
    if prune:
        return _prune_command(state, keep_runs, keep_days, json_out)
    if not state.history.exists():
        _fail(f"no history at {state.history}: run `meshrun dispatch` first (or pass --state-dir)")
    if Path(tasks_file).exists():
        with _input_errors():
            scope = meshrun.load_tasks(tasks_file).scope
    else:  # a task file since removed: its history is still there under its name
        scope = Path(tasks_file).name
    with meshrun.History(state.history, scope=scope) as history:
        records = history.durations()
    if json_out:
        document = documents.history_document(scope, records)
        sys.stdout.write(meshrun.document_json(document) + "\n")
    else:
        sys.stdout.write(console.render_history(records))
    return meshrun.ExitCode.OK


def _prune_command(
    state: meshrun.StateDir, keep_runs: int, keep_days: float | None, json_out: bool
) -> int:
    if not state.root.is_dir():
        _fail(f"no state directory at {state.root}: nothing to prune (or pass --state-dir)")
    with _input_errors():
        pruned = meshrun.prune_state(state, keep_runs=keep_runs, keep_days=keep_days, compact=True)
    if json_out:
        document = documents.prune_document(str(state.root), pruned)
        sys.stdout.write(meshrun.document_json(document) + "\n")
        return meshrun.ExitCode.OK
    for run_id in pruned.runs:
        sys.stdout.write(f"removed {state.run_dir(run_id)}\n")
    sys.stdout.write(
        f"pruned {len(pruned.runs)} run{'' if len(pruned.runs) == 1 else 's'} "
        f"({pruned.bytes_freed / 1e6:.1f} MB, {pruned.history_rows} history rows); "
        f"{pruned.kept} kept in {state.root}\n"
    )
    return meshrun.ExitCode.OK


def _history_parser() -> argparse.ArgumentParser:
    p = _parser("history", history_command, "[OPTIONS] [TASKS.toml]")
    p.add_argument(
        "tasks_file",
        metavar="TASKS.toml",
        nargs="?",
        default="tasks.toml",
        help="Whose history (default: ./tasks.toml).",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="Where history lives (default: .meshrun beside TASKS.toml).",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="Remove the runs beyond --keep-runs/--keep-days now (every task file's), "
        "print what went, and compact the history.",
    )
    _retention_options(p)
    _json_option(p)
    return p


def _parse_history(args: list[str]) -> dict[str, Any]:
    return vars(_history_parser().parse_args(args))


def keygen_command(*, path: str, identity: str | None) -> int:
    """Write an Ed25519 signing key pair (OpenSSH format) for signing run manifests.

    The private key is written with mode 0600 and never overwritten; PATH.pub holds the
    public key. The printed allowed_signers line lets stock OpenSSH check signatures too:
    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n meshrun -s manifest.json.sig
    < manifest.json
    """
    import getpass
    import socket

    with _input_errors():
        comment = identity or f"{getpass.getuser()}@{socket.gethostname()}"
        line = meshrun.generate_keypair(Path(path).expanduser(), comment=comment)
    sys.stderr.write(f"meshrun: wrote {path} (private, 0600) and {path}.pub\n")
    sys.stdout.write(line + "\n")
    return meshrun.ExitCode.OK


def _keygen_parser() -> argparse.ArgumentParser:
    p = _parser("keygen", keygen_command, "[OPTIONS] PATH")
    p.add_argument("path", metavar="PATH", help="Where to write the private key.")
    p.add_argument(
        "--identity",
        "-I",
        metavar="NAME",
        help="The key's comment and allowed_signers principal (default: user@host).",
    )
    return p


def _parse_keygen(args: list[str]) -> dict[str, Any]:
    return vars(_keygen_parser().parse_args(args))


def verify_command(
    *,
    directory: str,
    key: list[str] | None,
    allowed_signers: str | None,
    allow_unsigned: bool,
    json_out: bool,
) -> int:
    """Check a run's signed manifest and every file it lists.

    Exit 0 only if the signature is by a trusted key (with --key or --allowed-signers)
    and every listed file is present and unchanged with nothing unlisted; 4 otherwise.
    Without a key, the signature is only checked for soundness and reported as
    untrusted; a manifest with no signature at all fails unless --allow-unsigned.
    """
    with _input_errors():
        allowed = None
        if key or allowed_signers:
            allowed = [meshrun.load_public_key(Path(k).expanduser()) for k in key or []]
            if allowed_signers:
                allowed += meshrun.allowed_signer_keys(Path(allowed_signers).expanduser())
        result = meshrun.verify_run(Path(directory), allowed_keys=allowed)
    document = result.to_dict()
    problems = result.problems()
    # A deleted .sig must not pass as "ok": unsigned is only fine when the user says so.
    refused_unsigned = result.signature.value == "unsigned" and not allow_unsigned
    if refused_unsigned:
        problems.append(
            f"{directory}: the manifest is not signed (no manifest.json.sig) — pass --key "
            "or --allowed-signers to require a signature, or --allow-unsigned to check "
            "the files alone"
        )
        document["ok"] = False
        document["errors"].append(problems[-1])
    if json_out:
        sys.stdout.write(meshrun.document_json(document) + "\n")
    for problem in problems:
        sys.stderr.write(f"meshrun: {problem}\n")
    for note in result.notes:
        sys.stderr.write(f"meshrun: note: {note}\n")
    state = "ok" if result.ok and not refused_unsigned else "FAILED"
    sys.stderr.write(
        f"meshrun: verify {state}: signature {result.signature.value}"
        + (f" by {result.signer_fingerprint}" if result.signer_fingerprint else "")
        + f", {result.files_checked} file{'' if result.files_checked == 1 else 's'} checked\n"
    )
    trusted = allowed is None or result.signature.value == "trusted"
    ok = result.ok and trusted and not refused_unsigned
    return meshrun.ExitCode.OK if ok else meshrun.ExitCode.INTEGRITY


def _verify_parser() -> argparse.ArgumentParser:
    p = _parser("verify", verify_command, "[OPTIONS] RUN_DIR")
    p.add_argument(
        "directory",
        metavar="RUN_DIR",
        help="A run directory (.meshrun/runs/<run-id>), or a directory given to "
        "--artifacts (dispatch) or --pull-dir (exec/run).",
    )
    p.add_argument(
        "--key",
        action="append",
        metavar="PUB",
        help="A trusted public key (ssh-ed25519 .pub file); repeatable.",
    )
    p.add_argument(
        "--allowed-signers",
        metavar="FILE",
        help="Trusted keys in OpenSSH allowed_signers format (namespace meshrun).",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="Accept a manifest without a signature (a run without --sign-key) and check "
        "its files alone. Without it an unsigned manifest fails (exit 4): a deleted "
        ".sig must not pass.",
    )
    _json_option(p)
    return p


def _parse_verify(args: list[str]) -> dict[str, Any]:
    return vars(_verify_parser().parse_args(args))


def version_command() -> int:
    """Print meshrun's version.

    The same as `meshrun --version`: the version of the installed package.
    """
    sys.stdout.write(f"meshrun {meshrun.__version__}\n")
    return meshrun.ExitCode.OK


def _version_parser() -> argparse.ArgumentParser:
    return _parser("version", version_command, "[OPTIONS]")


def _parse_version(args: list[str]) -> dict[str, Any]:
    return vars(_version_parser().parse_args(args))


SHELLS = ("bash", "zsh", "fish")

_COMPLETION_EPILOG = """\
Install it where your shell looks (then open a new shell):
  meshrun completion bash > ~/.local/share/bash-completion/completions/meshrun
  meshrun completion zsh > ~/.zfunc/_meshrun   # fpath+=(~/.zfunc) before compinit
  meshrun completion fish > ~/.config/fish/completions/meshrun.fish

The script is generated (with shtab) from the same option parsers `meshrun COMMAND -h` \
shows, so it completes commands, options, fixed choices and file or directory \
arguments of this version: write it again after an upgrade."""

# Arguments that name a local file or directory, by metavar: completed as paths.
_FILE_METAVARS = frozenset(
    {"FILE", "FILE|LIST", "KEY", "PUB", "PUBFILE", "PATH", "SCRIPT", "ARGS", "TASKS.toml"}
)
_DIRECTORY_METAVARS = frozenset({"DIR", "RUN_DIR"})


def completion_command(*, shell: str) -> int:
    """Print a shell completion script for bash, zsh or fish."""
    import shtab  # only here: the completion script is not on anyone's start-up path

    parser = _full_parser()
    parsers = [parser, *_subparsers(parser).values()]
    for action in (a for p in parsers for a in p._actions):
        if action.metavar in _FILE_METAVARS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.metavar in _DIRECTORY_METAVARS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    script: str = shtab.complete(parser, shell=shell)
    sys.stdout.write(script if script.endswith("\n") else script + "\n")
    return meshrun.ExitCode.OK


def _completion_parser() -> argparse.ArgumentParser:
    p = _parser("completion", completion_command, "[OPTIONS] SHELL", _COMPLETION_EPILOG)
    p.add_argument(
        "shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish: the shell to complete."
    )
    return p


def _parse_completion(args: list[str]) -> dict[str, Any]:
    return vars(_completion_parser().parse_args(args))


# -- entry point -----------------------------------------------------------------------------


class _Command(NamedTuple):
    """A command: its parser (built only when it runs), how it parses, what it runs."""

    build: Callable[[], argparse.ArgumentParser]
    parse: Callable[[list[str]], dict[str, Any]]
    run: Callable[..., int]

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


_COMMANDS: dict[str, _Command] = {
    "exec": _Command(_exec_parser, _parse_exec, exec_command),
    "run": _Command(_run_parser, _parse_run, run_command),
    "hosts": _Command(_hosts_parser, _parse_hosts, hosts_command),
    "agent": _Command(_agent_parser, _parse_agent, agent_command),
    "discover": _Command(_discover_parser, _parse_discover, discover_command),
    "dispatch": _Command(_dispatch_parser, _parse_dispatch, dispatch_command),
    "history": _Command(_history_parser, _parse_history, history_command),
    "keygen": _Command(_keygen_parser, _parse_keygen, keygen_command),
    "verify": _Command(_verify_parser, _parse_verify, verify_command),
    "version": _Command(_version_parser, _parse_version, version_command),
    "completion": _Command(_completion_parser, _parse_completion, completion_command),
}


def _top_parser() -> argparse.ArgumentParser:
    """Only for `meshrun`, `meshrun -h` and an unknown command: commands parse their own."""
    import textwrap

    lines = ["commands:"]
    for name, command in _COMMANDS.items():
        wrapped = textwrap.wrap(command.summary, 66) or [""]
        lines.append(f"  {name:<12}{wrapped[0]}")
        lines.extend(" " * 14 + rest for rest in wrapped[1:])
    top = argparse.ArgumentParser(
        prog="meshrun",
        usage="%(prog)s [OPTIONS] COMMAND [ARGS]...",
        description=_DESCRIPTION,
        epilog="\n".join(lines) + "\n\nRun 'meshrun COMMAND -h' for a command's options.",
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    top.add_argument("--version", action="store_true", help="Print meshrun's version and exit.")
    return top


def _full_parser() -> argparse.ArgumentParser:
    """`meshrun` with every command's parser as a subcommand: what completion reads."""
    top = _top_parser()
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in _COMMANDS.items():
        commands.add_parser(name, help=command.summary)
        commands._name_parser_map[name] = command.build()
    return top


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action._name_parser_map)
    return {}


def _main(argv: list[str]) -> int:
    if not argv:
        _top_parser().print_help(sys.stderr)
        return meshrun.ExitCode.USAGE
    if argv == ["--version"]:
        return version_command()
    entry = _COMMANDS.get(argv[0])
    if entry is None:
        top = _top_parser()
        if argv[0].startswith("-"):
            top.parse_args(argv)  # -h exits 0, an unknown option 2
        top.error(f"no such command: {argv[0]!r} (choose from {', '.join(_COMMANDS)})")
    return entry.run(**entry.parse(argv[1:]))


def main() -> None:
    """Console-script entry point. SIGTERM and SIGHUP stop a run as Ctrl-C does (a CI
    cancel still gets its report); outside a run they exit 143/129 and Ctrl-C 130, not 1."""
    code: int | str | None
    # paramiko imports invoke (Fabric's task runner), when installed, for its own
    # ssh_config `Match exec`, which meshrun never uses (it asks `ssh -G`): 55 ms of every
    # run on a machine with Fabric. The command process imports nothing else of it.
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    # A fleet needs a descriptor per host at once; shells start most users at a soft
    # `ulimit -n` of 1,024 under a far higher hard limit, which any process may take.
    resources.raise_nofile_limit()
    try:
        with meshrun.stop_on_signals():
            code = _main(sys.argv[1:])
    except KeyboardInterrupt as exc:
        signum = meshrun.signal_of(exc)
        sys.stderr.write(f"meshrun: {meshrun.how_stopped(signum)}\n")
        code = meshrun.exit_code_for_signal(signum)
    except SystemExit as exc:  # argparse (help: 0, bad usage: 2) and _fail
        code = exc.code
    # Nothing is freed from here on: spare the interpreter's shutdown a full collection.
    gc.freeze()
    sys.exit(code)

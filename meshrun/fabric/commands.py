"""``Group.run``: Fabric's options, one host's command, Fabric's own result for it.

Fabric's ``run`` takes invoke's options (``hide``, ``warn``, ``env``, ``timeout``,
``echo``, ``pty``, ``in_stream``...), each defaulting to the Connection's
``config.run``. :func:`run_options` settles them the same way and refuses, naming the
option and the alternative, what meshrun's execution cannot do: a pty, feeding the
command local stdin, answering prompts (watchers), running in the background. The rest
behave as under Fabric:

- output is printed as it arrives, unless hidden, raw and without host prefixes
  (to ``out_stream``/``err_stream`` when given), and kept whole in the result;
- the command runs in the user's login shell (``$SHELL -c``) in sshd's login
  directory, with ``env`` exported first, as Fabric's inline ``export`` does;
- a nonzero exit raises ``UnexpectedExit`` unless ``warn``; a timeout raises
  ``CommandTimedOut`` whatever ``warn`` says (its result's ``exited`` is -1, as
  Fabric's, whose channel is closed without a status).

What differs, on purpose: the command's stdin is ``/dev/null`` (never a hang on input),
and it runs inside meshrun's wrapper, so a timeout, Ctrl-C or a lost link kills its
whole process group on the host.
"""

from __future__ import annotations

import codecs
import shlex
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from invoke.exceptions import CommandTimedOut, UnexpectedExit
from invoke.runners import default_encoding, normalize_hide

from meshrun.errors import HostUnreachable, Interrupted
from meshrun.fabric.settings import NotSupported
from meshrun.records import record
from meshrun.transport.base import CommandRequest, Connection, Stream

__all__ = ["RunOptions", "run_command", "run_options"]

#: invoke's run options that change nothing here, whatever their value: ``shell`` is
#: recorded in the result (Fabric does not use it for remote commands either),
#: ``fallback`` is about ptys, ``echo_stdin`` about local stdin, ``replace_env`` must
#: be True (checked below).
_IGNORED = frozenset({"shell", "fallback", "echo_stdin", "replace_env"})

#: One lock for everything printed: chunks of different hosts never interleave mid-write.
_PRINT_LOCK = threading.Lock()


@record
class RunOptions:
    """One call's settled options (arguments over the Connection's ``config.run``)."""

    command: str
    hide: tuple[str, ...]
    warn: bool
    echo: bool
    echo_format: str
    env: Mapping[str, str]
    timeout: Any  # as given (Fabric's CommandTimedOut shows it so); None: no limit
    encoding: str
    shell: str
    out_stream: Any
    err_stream: Any

    @property
    def job(self) -> tuple[object, ...]:
        """What runs on the host (the rest is how its end is shown and judged): one
        value for the whole group."""
        return (self.command, tuple(sorted(self.env.items())), self.timeout_s)

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout is None else float(self.timeout)


def _refuse(option: str, fix: str) -> NotSupported:
    return NotSupported(f"run(): {option} cannot be honoured by meshrun", fix=fix)


def run_options(cxn: Any, command: str, kwargs: Mapping[str, Any]) -> RunOptions:
    """``kwargs`` of ``run(command, **kwargs)`` over ``cxn.config.run``, as invoke's
    Runner settles them. TypeError for an unknown option (as invoke), NotSupported for
    one meshrun cannot honour."""
    config = cxn.config
    opts: dict[str, Any] = {}
    given = dict(kwargs)
    # The merged sections as plain dicts (Config.get is the dict protocol): invoke's
    # `config.run` builds a proxy whose lookups of its own unset attributes each format
    # an AttributeError listing dir(): 64 hosts' options took 8.0 ms a call, now 1.1.
    run_config = config.get("run") or {}
    for key, value in run_config.items():
        runtime = given.pop(key, None)
        opts[key] = value if runtime is None else runtime
    timeout = given.pop("timeout", (config.get("timeouts") or {}).get("command"))
    if given:
        raise TypeError(f"run() got an unexpected keyword argument '{next(iter(given))}'")
    if opts.get("pty"):
        raise _refuse(
            "pty=True",
            "meshrun runs commands without a terminal; drop pty (a program that insists "
            "on one can be run under `script -qec CMD /dev/null`)",
        )
    in_stream = opts.get("in_stream")
    if in_stream not in (None, False):
        raise _refuse(
            "in_stream (feeding local input to the command)",
            "the command's stdin is /dev/null under meshrun: pass in_stream=False, or "
            "put() the input in a file and redirect from it",
        )
    if opts.get("watchers"):
        raise _refuse(
            "watchers (answering prompts)",
            "meshrun never answers prompts: make the command non-interactive "
            "(e.g. `sudo -n`, `apt-get -y`)",
        )
    if opts.get("asynchronous") or opts.get("disown"):
        raise _refuse(
            "asynchronous/disown",
            "Group.run waits for every host; run it in a thread of your own, or start "
            "the program with nohup/setsid inside the command",
        )
    if opts.get("dry"):
        raise _refuse("dry=True", "drop dry")
    # Fabric's Remote.run defaults replace_env to True (its config's False is the
    # local runner's): only an explicit False asks for the local environment.
    if kwargs.get("replace_env") is False:
        raise _refuse(
            "replace_env=False (sending the whole local environment)",
            "pass the variables the command needs as env={...}",
        )
    unknown = (
        set(opts)
        - _IGNORED
        - {
            "pty",
            "in_stream",
            "watchers",
            "asynchronous",
            "disown",
            "dry",
            "hide",
            "warn",
            "echo",
            "echo_format",
            "env",
            "encoding",
            "out_stream",
            "err_stream",
        }
    )
    for key in sorted(unknown):
        if opts[key]:
            raise _refuse(f"{key}={opts[key]!r}", f"drop {key}")
    hide_value = opts.get("hide")
    echo = bool(opts.get("echo"))
    if hide_value is True:
        echo = False
    env = {str(k): str(v) for k, v in (opts.get("env") or {}).items()}
    return RunOptions(
        command=command,
        hide=normalize_hide(hide_value, opts.get("out_stream"), opts.get("err_stream")),
        warn=bool(opts.get("warn")),
        echo=echo,
        echo_format=opts.get("echo_format") or "{command}",
        env=env,
        timeout=timeout,
        encoding=opts.get("encoding") or default_encoding(),
        shell=opts.get("shell") or "",
        out_stream=opts.get("out_stream"),
        err_stream=opts.get("err_stream"),
    )


def login_shell_line(command: str) -> str:
    """``command`` for the host's login shell, as sshd runs Fabric's (``$SHELL -c``)."""
    return 'exec "${SHELL:-/bin/sh}" -c ' + shlex.quote(command)


class _Printer:
    """One stream of one host: decoded as it comes (a character split between two
    chunks waits for its end) and written where Fabric writes it."""

    def __init__(self, target: IO[str] | None, fallback: str, encoding: str) -> None:
        self.target = target
        self.fallback = fallback
        self.decoder = codecs.getincrementaldecoder(encoding)("replace")

    def write(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if not text:
            return
        out = self.target if self.target is not None else getattr(sys, self.fallback)
        with _PRINT_LOCK:
            out.write(text)
            out.flush()


def run_command(conn: Connection, cxn: Any, options: RunOptions, cancel: threading.Event) -> Any:
    """Run ``options.command`` on ``conn`` (the host of Fabric Connection ``cxn``): a
    ``fabric.runners.Result``, or raises as Fabric's ``run`` would (UnexpectedExit,
    CommandTimedOut); a lost link is HostUnreachable, a cancel Interrupted."""
    from fabric.runners import Result

    if options.echo:
        with _PRINT_LOCK:
            print(options.echo_format.format(command=options.command), flush=True)
    chunks: dict[Stream, list[bytes]] = {"stdout": [], "stderr": []}
    printers: dict[Stream, _Printer] = {}
    if "stdout" not in options.hide:
        printers["stdout"] = _Printer(options.out_stream, "stdout", options.encoding)
    if "stderr" not in options.hide:
        printers["stderr"] = _Printer(options.err_stream, "stderr", options.encoding)

    def on_output(stream: Stream, data: bytes) -> None:
        chunks[stream].append(data)
        printer = printers.get(stream)
        if printer is not None:
            printer.write(data)

    outcome = conn.run(
        CommandRequest(
            login_shell_line(options.command), env=options.env, timeout_s=options.timeout_s
        ),
        on_output=on_output,
        cancel=cancel,
    )
    for printer in printers.values():
        printer.write(b"", final=True)
    name = conn.host.name
    if outcome.lost:
        raise HostUnreachable(
            name, outcome.lost_reason or "the connection was lost while the command ran"
        )
    if outcome.cancelled or not outcome.started:
        raise Interrupted(f"{name}: stopped; the command's processes were killed")
    result = Result(
        stdout=b"".join(chunks["stdout"]).decode(options.encoding, "replace"),
        stderr=b"".join(chunks["stderr"]).decode(options.encoding, "replace"),
        encoding=options.encoding,
        command=options.command,
        shell=options.shell,
        env=dict(options.env),
        exited=-1 if outcome.timed_out or outcome.exit_code is None else outcome.exit_code,
        pty=False,
        hide=options.hide,
        connection=cxn,
    )
    if outcome.timed_out:
        raise CommandTimedOut(result, timeout=options.timeout)
    if not (result.ok or options.warn):
        raise UnexpectedExit(result)
    return result

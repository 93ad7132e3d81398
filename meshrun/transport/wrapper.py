"""The POSIX shell wrapper every command runs inside, on a host or locally.

Pure string building: data in, a script out. The wrapper exists so that nothing
meshrun starts outlives the link to the coordinator — the behaviour of GNU parallel's
remote wrapper:

- the user's command runs in a new session (``setsid``), so it and everything it
  forks share one process group that can be signalled as a whole;
- a watcher, also in its own session, reads the wrapper's stdin (the SSH channel, or
  the local pipe). The coordinator never writes to it. When it reaches EOF — the
  coordinator cancelled (it closed its side), the connection dropped, or the
  coordinator process died — the watcher sends SIGTERM to the command's group and
  SIGKILL after a grace period;
- on normal exit the wrapper stops the watcher and exits with the command's status.

The command itself gets ``/dev/null`` as stdin: a parallel run must never block on input.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

#: How long the group gets between SIGTERM and SIGKILL, in tenths of a second.
KILL_GRACE_TENTHS = 30

#: Exit status the wrapper uses when it cannot enter the work directory.
WORKDIR_FAILED = 254


def shell_command(argv: Sequence[str]) -> str:
    """The command line a user meant.

    One argument is taken as a shell command line, as ``ssh host 'a | b'`` does. Several
    arguments are quoted one by one, so ``meshrun exec -- grep 'a b' f`` runs exactly
    what the same words would run locally.
    """
    if not argv:
        raise ValueError("empty command")
    if len(argv) == 1:
        return argv[0]
    return shlex.join(argv)


def workdir_expr(workdir: str) -> str:
    """A shell word for ``workdir``, with a leading ``~`` meaning the remote ``$HOME``."""
    if workdir == "~":
        return '"$HOME"'
    if workdir.startswith("~/"):
        return '"$HOME"/' + shlex.quote(workdir[2:])
    return shlex.quote(workdir)


def build_wrapper(command: str, *, workdir: str, env: Mapping[str, str]) -> str:
    """The script that runs ``command`` in ``workdir`` with ``env`` exported."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    for key in env:
        if not key.isidentifier():
            raise ValueError(f"not a valid environment variable name: {key!r}")
    watcher = (
        # ``read`` is a builtin: the watcher is one process, no ``cat`` to fork.
        "while read -r _; do :; done; "
        'kill -s TERM -- -"$1" 2>/dev/null || exit 0; '
        "i=0; "
        f'while kill -s 0 -- -"$1" 2>/dev/null && [ "$i" -lt {KILL_GRACE_TENTHS} ]; '
        "do sleep 0.1; i=$((i+1)); done; "
        'kill -s KILL -- -"$1" 2>/dev/null'
    )
    return (
        "exec 3<&0 </dev/null\n"
        f"d={workdir_expr(workdir)}\n"
        'cd -- "$d" 2>/dev/null || { mkdir -p -- "$d" 2>/dev/null; cd -- "$d"; } || '
        f'{{ echo "meshrun: cannot enter work directory $d" >&2; exit {WORKDIR_FAILED}; }}\n'
        f"{exports}"
        f"setsid /bin/sh -c {shlex.quote(command)} &\n"
        "p=$!\n"
        f'setsid /bin/sh -c {shlex.quote(watcher)} meshrun-watch "$p" <&3 >/dev/null 2>&1 &\n'
        "w=$!\n"
        "exec 3<&-\n"
        '{ wait "$p"; } 2>/dev/null; rc=$?\n'
        'kill -s TERM -- -"$w" 2>/dev/null\n'
        'exit "$rc"\n'
    )


def remote_exec_line(script: str) -> str:
    """What goes in the SSH exec request: the script under /bin/sh, whatever the login shell."""
    return "exec /bin/sh -c " + shlex.quote(script)


def upload_script(workdir: str, name: str) -> str:
    """A command that stores stdin as ``<workdir>/.meshrun/scripts/<name>`` unless present.

    ``name`` carries the content's hash, so an existing file is the same script: the
    upload is skipped and the bytes sent on stdin are discarded. The write goes to a
    temporary name and is renamed, so a half-written script is never run. Prints the
    path it stored or found.
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")
    return (
        f'd={workdir_expr(workdir)}/.meshrun/scripts; f="$d"/{shlex.quote(name)}; '
        'if [ -f "$f" ]; then cat >/dev/null; else '
        'mkdir -p -- "$d" && t="$f.$$.tmp" && cat >"$t" && chmod 700 "$t" && mv -f -- "$t" "$f" '
        '|| exit 1; fi; printf "%s\\n" "$f"'
    )

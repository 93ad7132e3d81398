"""rsync command lines (pure: argv out), and running rsync.

meshrun's transfers go over its own pooled SSH connection: rsync's remote shell is a
:class:`RemoteShell` handed out by the connector (``SSHConnector.rsync_ssh``), whose
program borrows that connection through the channel relay
(:mod:`meshrun.transport.channel_relay`). :func:`ssh_command` still builds a plain
OpenSSH command line with the same settings (the benchmarks compare against it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

from meshrun.records import record

if TYPE_CHECKING:
    import subprocess


#: How meshrun's rsh helper starts the lines it writes to rsync's stderr (why the
#: remote shell failed: the connection, not rsync).
SHELL_MESSAGE_PREFIX = "meshrun rsh: "


@record
class RemoteShell:
    """How rsync reaches one host: the program of its ``-e`` (``argv``), the name to
    write before the ``:`` of a remote path (``host``) and what rsync's environment
    needs on top of ours for that program (``env``)."""

    argv: tuple[str, ...]
    host: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def rsh(self) -> str:
        """``argv`` as one ``-e`` value (rsync splits it the way a shell would)."""
        return shlex.join(self.argv)

    def remote_dir(self, directory: str) -> str:
        """rsync's ``HOST:DIR/`` for a directory on the host (``~/x`` relative to the
        login directory)."""
        return f"{self.host}:{remote_path(directory).rstrip('/')}/"


def ssh_command(
    *,
    port: int,
    identities: Sequence[str],
    known_hosts: str,
    connect_timeout_s: float,
    proxy_jump: str | None = None,
) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-p", str(port)]
    for identity in identities:
        argv += ["-i", identity]
    argv += [
        "-o",
        "IdentitiesOnly=yes" if identities else "IdentitiesOnly=no",
        "-o",
        f"UserKnownHostsFile={shlex.quote(known_hosts)}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, int(connect_timeout_s))}",
        "-o",
        "ServerAliveInterval=15",
    ]
    if proxy_jump:
        argv += ["-J", proxy_jump]
    return argv


def remote_path(workdir: str) -> str:
    """rsync's remote path for a workdir: ``~/x`` becomes ``x`` (relative = home)."""
    if workdir == "~":
        return "."
    if workdir.startswith("~/"):
        return workdir[2:]
    return workdir


def push_argv(
    *,
    rsh: RemoteShell,
    root: str,
    paths: Sequence[str],
    excludes: Sequence[str],
    workdir: str,
    hide: Sequence[str] = (),
) -> list[str]:
    """rsync that mirrors ``paths`` (relative to ``root``) into the host's workdir.

    Exact (:func:`mirror_options`: extras deleted, content compared, ``hide`` left out
    and deleted), keeps the relative layout, incremental (rsync's delta transfer).
    """
    argv = ["rsync", "-a", "--relative", "--mkpath", "-e", rsh.rsh]
    argv += mirror_options(excludes, hide)
    argv += sources(root, paths)
    argv.append(rsh.remote_dir(workdir))
    return argv


#: The host's meshrun directory at the top of a workdir: never deleted by a push.
PROTECTED = ".meshrun"


def mirror_options(excludes: Sequence[str], hide: Sequence[str] = ()) -> list[str]:
    """rsync options that make the destination an exact copy of what is sent.

    - ``--delete``: what the destination has beyond what is sent is deleted, in every
      directory whose contents are sent (not in the parents ``--relative`` implies);
      what ``excludes`` match is neither sent nor deleted (rsync protects it);
    - ``--checksum``: a file is compared by content, so a change that keeps its size
      and modification time is sent too;
    - ``hide`` (literal paths relative to the transfer's root): not sent, and deleted
      on the destination even where an exclude would protect them — a hide rule comes
      before every exclude, a sender-side exclude (``-s``) and a receiver-side include
      (``+r``), so the first rule that matches is always the hide rule;
    - the top-level :data:`PROTECTED` directory is never deleted.

    An exclude ``!`` clears the rules before it: only the excludes after the last one
    are given (so it cannot clear the hide rules).
    """
    if "!" in excludes:
        excludes = excludes[len(excludes) - list(reversed(excludes)).index("!") :]
    argv = ["--delete", "--checksum"]
    for path in hide:
        pattern = hide_pattern(path)
        argv += [f"--filter=-s {pattern}", f"--filter=+r {pattern}"]
    argv.append(f"--filter=P /{PROTECTED}")
    for pattern in excludes:
        argv += ["--exclude", pattern]
    return argv


def hide_pattern(path: str) -> str:
    """An anchored rsync pattern that matches ``path`` (relative) and nothing else.

    A pattern without ``*``, ``?`` or ``[`` is literal, backslashes included; with one,
    ``\\`` escapes the next character, so each of ``*?[\\`` is escaped then.
    """
    path = path.strip("/")
    if any(c in path for c in "*?["):
        path = re.sub(r"([*?\[\\])", r"\\\1", path)
    return "/" + path


def sources(root: str, paths: Sequence[str]) -> list[str]:
    """rsync's source arguments for ``paths`` under ``root`` with ``--relative``."""
    root = root.rstrip("/") or "/"
    return [f"{root}/./{p}" if p != "." else f"{root}/./" for p in paths]


def pull_argv(*, rsh: RemoteShell, root: str, list_file: str, into: str) -> list[str]:
    """rsync that copies the NUL-separated relative paths in ``list_file`` from ``root``
    on the host into ``into``.

    Symlinks are copied as the files they point to (the files were collected, checked
    to stay inside the workdir, and their hashes are checked on arrival anyway).
    """
    return [
        "rsync",
        "--protect-args",
        "--from0",
        f"--files-from={list_file}",
        "--copy-links",
        "--perms",
        "--times",
        "-e",
        rsh.rsh,
        rsh.remote_dir(root),
        into.rstrip("/") + "/",
    ]


def put_argv(*, rsh: RemoteShell, source: str, list_file: str, root: str) -> list[str]:
    """rsync that copies the NUL-separated relative paths in ``list_file`` from
    ``source`` into the host's ``root``, always sending (no quick-check skip), with the
    files' permission bits. rsync writes each file aside and renames it into place."""
    return [
        "rsync",
        "--protect-args",
        "--from0",
        f"--files-from={list_file}",
        "--perms",
        "--times",
        "--ignore-times",
        "--whole-file",
        "-e",
        rsh.rsh,
        source.rstrip("/") + "/",
        rsh.remote_dir(root),
    ]


def get_files(
    rsh: RemoteShell,
    host: str,
    root: str,
    paths: Sequence[str],
    into: str,
    *,
    cancel: threading.Event | None = None,
    timeout_s: float = 3600.0,
    what: str = "pull",
) -> None:
    """Copy ``paths`` (relative to ``root`` on the host) into ``into`` (:func:`pull_argv`)."""
    with _list_file(paths) as listing:
        argv = pull_argv(rsh=rsh, root=root, list_file=listing, into=into)
        run(argv, host, timeout_s, what=what, cancel=cancel, env=rsh.env)


def put_files(
    rsh: RemoteShell, host: str, source: str, paths: Sequence[str], root: str, *, what: str
) -> None:
    """Copy ``paths`` (relative to ``source``) into ``root`` on the host (:func:`put_argv`)."""
    with _list_file(paths) as listing:
        argv = put_argv(rsh=rsh, source=source, list_file=listing, root=root)
        run(argv, host, what=what, env=rsh.env)


@contextlib.contextmanager
def _list_file(paths: Sequence[str]) -> Iterator[str]:
    """A temporary file holding ``paths`` NUL-separated (rsync's ``--from0``), removed
    on leaving."""
    with tempfile.NamedTemporaryFile(prefix="meshrun-files-", suffix=".list") as listing:
        listing.write(b"".join(p.encode("utf-8") + b"\0" for p in paths))
        listing.flush()
        yield listing.name


def run(
    argv: Sequence[str],
    host: str,
    timeout_s: float = 3600.0,
    *,
    what: str = "workspace sync",
    cancel: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run rsync (``env`` added to our environment); a failure becomes an error that
    names the host, ``what`` it was doing and what to do.

    With ``cancel``, rsync runs in a session of its own (a terminal's Ctrl-C reaches the
    coordinator only, which decides) and is terminated as soon as ``cancel`` is set,
    raising Interrupted; its remote shell goes with it.
    """
    import subprocess

    from meshrun.errors import CommandError, HostUnreachable, Interrupted

    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=cancel is not None,
            env=None if not env else {**os.environ, **env},
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"{host}: rsync is not installed on this machine",
            fix="install rsync (apt-get install rsync)",
        ) from exc
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            cancelled = cancel is not None and cancel.is_set()
            remaining = deadline - time.monotonic()
            if cancelled or remaining <= 0:
                _terminate(proc, group=cancel is not None)
                try:
                    proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                if cancelled:
                    raise Interrupted(f"{host}: {what} stopped")
                raise CommandError(f"{host}: {what} timed out after {timeout_s:g}s")
            try:
                _, stderr = proc.communicate(
                    timeout=remaining if cancel is None else min(remaining, 0.1)
                )
            except subprocess.TimeoutExpired:
                continue
            break
    except BaseException:
        if proc.poll() is None:  # e.g. KeyboardInterrupt in the calling thread
            proc.kill()
            proc.wait()
        raise
    if proc.returncode == 0:
        return
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    message = f"{what} failed (rsync exit {proc.returncode}): {' / '.join(lines[-3:])}"
    shell = [line for line in lines if line.startswith(SHELL_MESSAGE_PREFIX)]
    if shell:  # the remote shell (meshrun's rsh helper) says why: the connection
        reason = shell[-1].removeprefix(SHELL_MESSAGE_PREFIX)
        raise HostUnreachable(host, f"{what} failed (rsync exit {proc.returncode}): {reason}")
    if proc.returncode == 255:  # ssh itself failed
        raise HostUnreachable(host, message)
    fix = "is rsync installed on the host?" if proc.returncode in (12, 127) else None
    raise CommandError(f"{host}: {message}", fix=fix)


def _terminate(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    """SIGTERM rsync, and its remote shell too when they have a process group of their
    own (the remote shell would notice by itself, a moment later)."""
    if group:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            return
        except OSError:
            pass
    proc.terminate()

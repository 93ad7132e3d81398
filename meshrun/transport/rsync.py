"""rsync command lines over the same SSH settings meshrun uses (pure: argv out).

The ssh that rsync runs gets exactly the endpoint meshrun resolved — address, port,
user, identities, the same known_hosts with strict checking, the jump host — and
``-F /dev/null`` so nothing in ssh_config can weaken it behind our back.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Sequence


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


def remote_dir(user: str, address: str, directory: str) -> str:
    """rsync's ``user@host:DIR/`` for a directory on the host (an IPv6 address in
    brackets, ``~/x`` relative to the login directory)."""
    host = f"[{address}]" if ":" in address else address
    return f"{user}@{host}:{remote_path(directory).rstrip('/')}/"


def push_argv(
    *,
    ssh: Sequence[str],
    user: str,
    address: str,
    root: str,
    paths: Sequence[str],
    excludes: Sequence[str],
    workdir: str,
) -> list[str]:
    """rsync that mirrors ``paths`` (relative to ``root``) into the host's workdir.

    Incremental (rsync's delta transfer), keeps relative layout, never deletes on the
    host: a misconfigured workdir must not cost anyone their files.
    """
    argv = ["rsync", "-a", "--relative", "--mkpath", "-e", shlex.join(ssh)]
    for pattern in excludes:
        argv += ["--exclude", pattern]
    root = root.rstrip("/") or "/"
    argv += [f"{root}/./{p}" if p != "." else f"{root}/./" for p in paths]
    argv.append(remote_dir(user, address, workdir))
    return argv


def run(
    argv: Sequence[str],
    host: str,
    timeout_s: float = 3600.0,
    *,
    what: str = "workspace sync",
    cancel: threading.Event | None = None,
) -> None:
    """Run rsync; a failure becomes an error that names the host, ``what`` it was doing
    and what to do.

    With ``cancel``, rsync runs in a session of its own (a terminal's Ctrl-C reaches the
    coordinator only, which decides) and is terminated as soon as ``cancel`` is set,
    raising Interrupted.
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
                proc.terminate()
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
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    message = f"{what} failed (rsync exit {proc.returncode}): {' / '.join(tail)}"
    if proc.returncode == 255:  # ssh itself failed
        raise HostUnreachable(host, message)
    fix = "is rsync installed on the host?" if proc.returncode in (12, 127) else None
    raise CommandError(f"{host}: {message}", fix=fix)

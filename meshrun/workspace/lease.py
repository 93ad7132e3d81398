"""The workdir claim on a host without meshrun's agent: a lease channel.

:mod:`meshrun.workspace.workdirs` describes the layout: a run works in
``<base>/.meshrun/ws/<key>``, or ``<key>.2`` ... ``<key>.32`` when runs with the same
key hold those, each claimed by an ``flock`` on ``<name>.lock`` beside it for the whole
run. The agent takes that lock in its own process; a host without the agent gets one
long-lived channel (``Connection.open_process``) running :func:`lease_script`, a POSIX
``sh`` script that

1. enters ``base`` (a leading ``~`` is the host's ``$HOME``), makes ``ws``;
2. opens ``<key>.lock`` on fd 9 and takes ``flock -n 9``; on success, and when the
   name still is the file it locked (``[ NAME -ef /dev/fd/9 ]``: a cleanup may have
   removed it meanwhile), touches the lock (the last claim, what the age cleanup
   reads), makes the directory and prints ``ok<TAB><absolute path><NUL>``; otherwise
   the next number, up to :data:`~meshrun.workspace.workdirs.MAX_CONCURRENT`;
3. removes stale workdirs (never the one it holds): for each ``*.lock`` older than the
   max age whose lock is free, it takes the lock, moves the directory to
   ``.trash-<name>-<pid>``, removes the lock file, lets go and deletes the trash;
   leftover ``.trash-*`` (a cleanup that was killed) go too;
4. holds fd 9 until a line or EOF arrives on its stdin: :meth:`WorkdirLease.close`
   sends ``release`` and waits (briefly) for ``released``; when the coordinator dies
   or the link drops, sshd closes the channel's stdin and the lock goes just the same.

Without ``flock`` on the host (macOS, some minimal images) the script makes and prints
``<key>`` with ``noflock`` and nothing is locked or cleaned: a warning says concurrent
runs from this workspace may share a workdir.
"""

from __future__ import annotations

import logging
import math
import shlex
import threading

from meshrun.errors import CommandError
from meshrun.transport.base import Connection, ProcessStream
from meshrun.transport.wrapper import remote_exec_line, workdir_expr
from meshrun.workspace.workdirs import MAX_CONCURRENT, WORKDIRS

log = logging.getLogger(__name__)

#: How long :meth:`WorkdirLease.close` waits for the host to say the lock is released.
RELEASE_WAIT_S = 5.0

NO_FLOCK = "no flock on the host: concurrent runs from this workspace may share a workdir"

# ``command exec``: a redirection that fails must not end the shell (it would for a
# plain ``exec``, a special built-in), and with it the lease.
_SCRIPT = r"""
fail() { printf 'error\t%s\0' "$*"; exit 1; }
b=@BASE@
k=@KEY@
cd -- "$b" 2>/dev/null || { mkdir -p -- "$b" && cd -- "$b"; } 2>/dev/null ||
  fail "cannot enter $b"
mkdir -p @WS@ 2>/dev/null && cd @WS@ || fail "cannot make $PWD/@WS@"
if ! command -v flock >/dev/null 2>&1; then
  : >>"./$k.lock" && mkdir -p -- "./$k" || fail "cannot make $PWD/$k"
  printf 'noflock\t%s/%s\0' "$PWD" "$k"
  exit 0
fi
same() {
  if [ -e /dev/fd/$2 ]; then [ "$1" -ef /dev/fd/$2 ]; else [ -e "$1" ]; fi
}
claim() {
  i=0
  while [ "$i" -lt 3 ]; do
    command exec 9>>"./$1.lock" || return 1
    flock -n 9 || { exec 9>&-; return 1; }
    same "./$1.lock" 9 && return 0
    exec 9>&-
    i=$((i+1))
  done
  return 1
}
old() { [ -n "$(find "$1" -prune -mmin +@MINUTES@ 2>/dev/null)" ]; }
clean() {
  for t in ./.trash-*; do
    [ -e "$t" ] && rm -rf -- "$t"
  done
  for l in ./*.lock; do
    w=${l%.lock}
    [ -f "$l" ] && [ "$w" != "./$d" ] && old "$l" || continue
    command exec 8<"$l" || continue
    if flock -n 8 && same "$l" 8 && old "$l"; then
      t=./.trash-${w#./}-$$
      mv -- "$w" "$t" 2>/dev/null
      rm -f -- "$l"
      exec 8<&-
      rm -rf -- "$t"
    else
      exec 8<&-
    fi
  done
}
n=1
d=
while [ "$n" -le @MAX@ ]; do
  if [ "$n" = 1 ]; then c=$k; else c=$k.$n; fi
  if claim "$c"; then d=$c; break; fi
  n=$((n+1))
done
[ -n "$d" ] || fail "@MAX@ runs from this workspace already hold a workdir in $PWD"
# The lock file's mtime is the last claim (what the age cleanup reads): a write
# stamps it without touch(1), which a minimal host may lack.
printf '%s\n' "$$" >"./$d.lock" && mkdir -p -- "./$d" || fail "cannot make $PWD/$d"
printf 'ok\t%s/%s\0' "$PWD" "$d"
@CLEAN@
read -r _ || :
exec 9>&-
printf 'released\n'
"""


def lease_script(base: str, key: str, max_age_s: float) -> str:
    """The POSIX sh script of a lease (see the module docstring). ``max_age_s`` that
    is not finite turns the cleanup off; it counts in whole minutes (``find -mmin``)."""
    if not key or "/" in key or key in (".", ".."):
        raise ValueError(f"not a plain workdir name: {key!r}")
    clean = math.isfinite(max_age_s)
    replacements = {
        "@BASE@": workdir_expr(base),
        "@KEY@": shlex.quote(key),
        "@WS@": shlex.quote(WORKDIRS),
        "@MAX@": str(MAX_CONCURRENT),
        "@MINUTES@": str(max(0, int(max_age_s // 60)) if clean else 0),
        # The cleanup's commands must not inherit the held lock (a long rm -rf would
        # keep it after the run let go).
        "@CLEAN@": "clean 9>&-" if clean else ":",
    }
    script = _SCRIPT
    for marker, value in replacements.items():
        script = script.replace(marker, value)
    return script.strip() + "\n"


class WorkdirLease:
    """A workdir claimed on a host for one run: :attr:`path`; :meth:`close` gives it
    back (so does the end of the link). ``locked`` is False on a host without flock."""

    def __init__(self, path: str, stream: ProcessStream, *, locked: bool = True) -> None:
        self.path = path
        self.locked = locked
        self._stream = stream
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the lock and close the channel; waits at most :data:`RELEASE_WAIT_S`
        for the host to confirm. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._stream.send(b"release\n")
        except Exception:  # the link is gone: so is the lock
            pass
        else:
            waiter = threading.Thread(
                target=_drain, args=(self._stream,), name="meshrun-lease-close", daemon=True
            )
            waiter.start()
            waiter.join(RELEASE_WAIT_S)
        self._stream.close()

    def __enter__(self) -> WorkdirLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkdirLease({self.path!r}, locked={self.locked})"


def _drain(stream: ProcessStream) -> None:
    """Read until the host says ``released`` or the stream ends."""
    seen = b""
    while b"released\n" not in seen:
        chunk = stream.recv()
        if not chunk:
            return
        seen = (seen + chunk)[-64:]


def lease_workdir(conn: Connection, base: str, key: str, max_age_s: float) -> WorkdirLease:
    """Claim ``<base>/.meshrun/ws/<key>[.N]`` on ``conn``'s host for as long as the lease is
    open (see the module docstring); stale workdirs there (lock older than
    ``max_age_s``, free) are removed meanwhile.

    Raises CommandError when no workdir could be claimed (all taken, not writable),
    HostUnreachable when the channel could not be opened or the link went.
    """
    host = conn.host.name
    stream = conn.open_process(remote_exec_line(lease_script(base, key, max_age_s)))
    try:
        reply = _reply(stream)
    except BaseException:
        stream.close()
        raise
    what, _, detail = reply.partition("\t")
    if what == "ok" and detail.startswith("/"):
        return WorkdirLease(detail, stream)
    if what == "noflock" and detail.startswith("/"):
        log.warning("%s: %s", host, NO_FLOCK)
        return WorkdirLease(detail, stream, locked=False)
    stream.close()
    if what == "error":
        raise CommandError(f"{host}: cannot claim a workdir under {base}: {detail}")
    why = stream.lost_reason or "the claim ended without an answer"
    raise CommandError(f"{host}: cannot claim a workdir under {base}: {why}")


def _reply(stream: ProcessStream) -> str:
    """The script's answer: everything up to the first NUL ("" when the stream ended
    first)."""
    data = b""
    while b"\0" not in data:
        chunk = stream.recv()
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


__all__ = ["NO_FLOCK", "WorkdirLease", "lease_script", "lease_workdir"]

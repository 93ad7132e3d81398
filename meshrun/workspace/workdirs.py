"""Where a dispatch run works on a host: its own directory per workspace and task file.

Two checkouts (two branches, two CI jobs) dispatching to the same host must not write
into one directory: each would push its files over the other's and delete what the
other needs. So, by default, a run's tasks run in

    <host workdir>/.meshrun/ws/<workspace name>-<key>[.N]

where ``key`` is a short hash of this machine's name, the workspace's absolute path and
the task file (:func:`workdir_key`). The directory is claimed with a lock held for the
whole run (an ``flock`` on ``<name>.lock`` beside it, held by the host's agent, or by a
lease channel on hosts without python3): a second run with the same key at the same
time — the same checkout dispatched twice, or two CI machines with identical paths —
takes ``.2``, ``.3``... A later run with the same key finds its last copy there, so
only what changed is sent.

Workdirs not claimed for ``max age`` (7 days by default; the lock file's mtime is the
last claim) are removed when a run claims one on that host, unless a run holds them.

``[sync] isolate = false`` in the task file runs the tasks in the host's workdir
itself (shared by every run; no lock); a run that pushes nothing (``--no-sync``, no
``[sync] paths``) always does, since its tasks expect what is already there.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

#: The directory under a host's workdir that holds the claimed workdirs.
#: Inside the host's own ``.meshrun`` (where the agent lives too), which no workspace
#: push touches: a push into the host's workdir itself (``isolate = false``) never
#: deletes the workdirs other runs hold, and no workspace path can collide with it.
WORKDIRS = ".meshrun/ws"
#: How long a workdir not claimed by any run is kept (``--workdir-max-age``).
DEFAULT_MAX_AGE_S = 7 * 86400.0
#: How many runs with the same key may hold a workdir on one host at once.
MAX_CONCURRENT = 32

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def workdir_key(workspace: Path, scope: str | None, machine: str | None = None) -> str:
    """``<name>-<hash>``: readable in ``ls``, distinct per machine, checkout and task file.

    ``name`` is the workspace directory's name (reduced to safe characters, at most 40);
    the hash covers this machine's name, the workspace's absolute path and ``scope``
    (the task file's path inside the workspace).
    """
    machine = socket.gethostname() if machine is None else machine
    absolute = str(workspace.resolve())
    digest = hashlib.sha256(
        "\0".join((machine, absolute, scope or "")).encode("utf-8", "surrogateescape")
    )
    name = _UNSAFE.sub("_", workspace.resolve().name).strip("._")[:40] or "workspace"
    return f"{name}-{digest.hexdigest()[:12]}"


def workdirs_root(base: str) -> str:
    """The directory holding the claimed workdirs under a host's ``base`` workdir."""
    return base.rstrip("/") + "/" + WORKDIRS

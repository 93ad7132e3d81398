"""Fleet pulls: files brought home from every host after its command.

``meshrun run/exec --pull GLOB`` in library form. After a host's command ended
(whatever its exit code: logs of the hosts that failed are the main use), its worker
collects the patterns in the host's workdir, hashes the files there, pulls them over the
same pooled connection (rsync, SFTP without rsync, copies for the local host), checks
every sha256 on arrival and installs them atomically at ``pull_dir/<host>/<path>``
(:mod:`meshrun.integrity.collect`, :mod:`meshrun.integrity.pull`). What a host's pull
did is data (:class:`HostPull`), merged into its HostResult by
:func:`meshrun.fleet.run.with_pull`:

- a pattern that matched nothing (not optional) or an unreadable file: the host failed
  (exit 1), the files that did match still came home;
- a refused pattern or file (absolute, ``..``, a symlink leaving the workdir, a special
  file) or a file that changed after hashing: an integrity failure (exit 4), nothing
  of that host is installed;
- Ctrl-C: the transfer stops, nothing half-transferred is installed (``cancelled``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meshrun import resources
from meshrun.config.inventory import Host
from meshrun.config.sizes import format_size
from meshrun.errors import (
    ConnectError,
    InputError,
    IntegrityError,
    Interrupted,
    MeshrunError,
    in_context,
)
from meshrun.records import record
from meshrun.transport.base import Connector

if TYPE_CHECKING:
    from meshrun.integrity.manifest import FileEntry

# The transfer and manifest modules (and the crypto they load) are imported by the
# functions that pull or record: a plain `exec` never needs them, and their ~10 ms
# would sit between start-up and the first connection.


@record
class HostPull:
    """What one host's pull did. ``files`` are installed; ``error`` None means all
    went well. ``integrity``: refused or changed files (exit 4); ``interrupted``:
    stopped by Ctrl-C; ``lost``: the link to the host died; ``shortage``: this process
    ran out of descriptors, threads or memory (not the host's fault: worth a retry once
    other hosts are done; nothing was installed)."""

    files: tuple[FileEntry, ...] = ()
    error: str | None = None
    integrity: bool = False
    interrupted: bool = False
    lost: bool = False
    shortage: bool = False


def pull_host(
    connector: Connector,
    host: Host,
    patterns: Sequence[str],
    dest_dir: Path,
    *,
    cancel: threading.Event | None = None,
    timeout_s: float = 3600.0,
    max_bytes: int | None = None,
) -> HostPull:
    """Bring the files ``patterns`` match in ``host``'s workdir to ``dest_dir/<path>``.

    Every outcome is a HostPull (see the module docstring); nothing a host does raises.
    ``cancel`` stops the pull (Interrupted inside; ``interrupted`` here); ``timeout_s``
    bounds the hashing on the host and the transfer; files adding up to more than
    ``max_bytes`` are refused before anything is written.
    """

    def interrupted() -> HostPull:
        return HostPull(error="pull stopped (interrupted); nothing was installed", interrupted=True)

    from meshrun.integrity.collect import collect_report
    from meshrun.integrity.pull import pull

    if cancel is not None and cancel.is_set():
        return HostPull(error="not pulled (interrupted)", interrupted=True)
    name = host.name
    try:
        conn = connector.connect(host)
        root, files, refusals = collect_report(conn, host.workdir, patterns, timeout_s=timeout_s)
        unsafe = [r for r in refusals if r.kind == "refused"]
        if unsafe:
            return HostPull(
                error=_unprefixed(name, "; ".join(r.describe("pull") for r in unsafe))
                + "; nothing was pulled from this host",
                integrity=True,
            )
        total = sum(f.size for f in files)
        if max_bytes is not None and total > max_bytes:
            return HostPull(
                error=f"the files to pull add up to {format_size(total)}, more than "
                f"--pull-max-bytes ({format_size(max_bytes)}); nothing was pulled from this host"
            )
        pull(connector, host, files, dest_dir, workdir=root, cancel=cancel, timeout_s=timeout_s)
    except Interrupted:
        return interrupted()
    except (MeshrunError, OSError, RuntimeError, MemoryError) as exc:
        shortage = resources.resource_error(exc, f"pulling from {name}")
        if shortage is not None:  # ours, not the host's: before integrity or a lost link
            return HostPull(error=str(shortage), shortage=True)
        if isinstance(exc, IntegrityError):
            return HostPull(error=_unprefixed(name, str(exc)), integrity=True)
        if not isinstance(exc, MeshrunError):
            raise
        if cancel is not None and cancel.is_set():  # e.g. the link closed by a 2nd Ctrl-C
            return interrupted()
        lost = isinstance(exc, ConnectError)
        return HostPull(error=in_context("pull failed", str(exc), host=name), lost=lost)
    others = [r for r in refusals if r.kind != "refused"]
    if others:
        return HostPull(files=tuple(files), error="; ".join(r.describe("pull") for r in others))
    return HostPull(files=tuple(files))


def _unprefixed(name: str, message: str) -> str:
    """``message`` without a leading ``"<host>: "``: results already name their host."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def check_pull_names(names: Sequence[str], pull_dir: Path | None, *, what: str = "host") -> None:
    """InputError for a host whose files would land where meshrun writes its own records.

    A pull directory holds ``<host>/`` for each host beside the manifest's copy
    (``manifest.json``, ``.sig``); a host named ``manifest.json`` would make the two
    collide, so it is refused before any host is contacted.
    """
    from meshrun.integrity.manifest import RESERVED_NAMES

    for name in names:
        if name in RESERVED_NAMES:
            raise InputError(
                f"{what} {name!r}: its files would go to {pull_dir}/{name}, where meshrun "
                "writes the run's own records (" + ", ".join(sorted(RESERVED_NAMES)) + ")",
                fix=f"give the {what} another name",
            )


__all__ = ["HostPull", "check_pull_names", "pull_host"]

"""Fleet pulls: files brought home from every host after its command, and the run record.

``meshrun run/exec --pull GLOB`` in library form. After a host's command ended
(whatever its exit code: logs of the hosts that failed are the main use), its worker
collects the patterns in the host's workdir, hashes the files there, pulls them over the
same pooled connection (rsync, SFTP without rsync, copies for the local host), checks
every sha256 on arrival and installs them atomically at ``pull_dir/<host>/<path>``
(:mod:`meshrun.integrity.artifacts`). What a host's pull did is data (:class:`HostPull`), merged
into its HostResult by :func:`meshrun.fleet.run.with_pull`:

- a pattern that matched nothing (not optional) or an unreadable file: the host failed
  (exit 1), the files that did match still came home;
- a refused pattern or file (absolute, ``..``, a symlink leaving the workdir, a special
  file) or a file that changed after hashing: an integrity failure (exit 4), nothing
  of that host is installed;
- Ctrl-C: the transfer stops, nothing half-transferred is installed (``cancelled``).

A recorded run (:func:`run_fleet_recorded`, when it pulls or signs) is a directory::

    <state dir>/runs/<run-id>/report.json         the --json document (kind "fleet")
    <state dir>/runs/<run-id>/manifest.json(.sig) one TaskEntry per host, its files
    <state dir>/runs/<run-id>/hosts/<host>/<path> the files (the default pull dir)

and a pull directory elsewhere (``--pull-dir``) gets its own copy of the manifest, so
``meshrun verify`` accepts either directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

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
from meshrun.fleet.run import FleetJob, FleetReport, HostStatus, Observer, _ignore, run_fleet
from meshrun.records import record
from meshrun.transport.base import Connector

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshrun.integrity.manifest import FileEntry, Manifest

# The transfer and manifest modules (and the crypto they load) are imported by the
# functions that pull or record: a plain `exec` never needs them, and their ~10 ms
# would sit between start-up and the first connection.

#: Where recorded runs live when no state directory is given (relative to the cwd).
DEFAULT_STATE_DIR = Path(".meshrun")


@record
class HostPull:
    """What one host's pull did. ``files`` are installed; ``error`` None means all
    went well. ``integrity``: refused or changed files (exit 4); ``interrupted``:
    stopped by Ctrl-C; ``lost``: the link to the host died."""

    files: tuple[FileEntry, ...] = ()
    error: str | None = None
    integrity: bool = False
    interrupted: bool = False
    lost: bool = False


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

    from meshrun.integrity import artifacts

    if cancel is not None and cancel.is_set():
        return HostPull(error="not pulled (interrupted)", interrupted=True)
    name = host.name
    try:
        conn = connector.connect(host)
        root, files, refusals = artifacts.collect_report(
            conn, host.workdir, patterns, timeout_s=timeout_s
        )
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
        artifacts.pull_from(
            connector, host, files, dest_dir, workdir=root, cancel=cancel, timeout_s=timeout_s
        )
    except IntegrityError as exc:
        return HostPull(error=_unprefixed(name, str(exc)), integrity=True)
    except Interrupted:
        return interrupted()
    except MeshrunError as exc:
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


# -- the record of a run ---------------------------------------------------------------


def fleet_run_dir(state_dir: Path, run_id: str) -> Path:
    """``<state_dir>/runs/<run_id>``: where a recorded fleet run is written."""
    return Path(state_dir) / "runs" / run_id


def build_fleet_manifest(
    report: FleetReport, hosts: Sequence[Host], *, command_line: Sequence[str] = ()
) -> Manifest:
    """The run's manifest (pure): each host as a host and as a task of its own.

    A task is named after its host, ran on it, carries the job's command, the host's
    status (``ok``, ``failed``, ...), exit code, duration and pulled files; a host that
    never started (``skipped``) has no attempt and no duration.
    """
    from meshrun.integrity.manifest import HostEntry, TaskEntry, run_manifest

    address = {h.name: h.address or h.name for h in hosts}
    return run_manifest(
        run_id=report.run_id,
        started_at=report.started_at,
        duration_s=report.duration_s,
        command_line=command_line,
        hosts=tuple(
            HostEntry(r.name, address.get(r.name, r.name), r.host_key_fingerprint)
            for r in report.results
        ),
        tasks=tuple(
            TaskEntry(
                name=r.name,
                host=r.name,
                command=report.command,
                status=r.status.value,
                exit_code=r.exit_code,
                attempts=0 if r.status is HostStatus.SKIPPED else 1,
                duration_s=None if r.status is HostStatus.SKIPPED else r.duration_s,
                files=r.files,
            )
            for r in report.results
        ),
    )


def record_fleet_run(
    report: FleetReport,
    hosts: Sequence[Host],
    run_dir: Path,
    *,
    command_line: Sequence[str] = (),
    signing_key: Ed25519PrivateKey | None = None,
) -> FleetReport:
    """Write ``run_dir``'s report.json and manifest.json (signed with ``signing_key``),
    and a copy of the manifest into the pull directory when it lies outside ``run_dir``.

    Returns ``report`` with ``run_dir`` and ``manifest_path`` set.
    """
    from meshrun.integrity.manifest import MANIFEST_NAME, REPORT_NAME, write_manifest
    from meshrun.report import fleet_document

    run_dir = Path(run_dir)
    report = replace(report, run_dir=str(run_dir), manifest_path=str(run_dir / MANIFEST_NAME))
    run_dir.mkdir(parents=True, exist_ok=True)
    document = json.dumps(fleet_document(report), indent=2, ensure_ascii=False) + "\n"
    (run_dir / REPORT_NAME).write_text(document, encoding="utf-8")
    manifest = build_fleet_manifest(report, hosts, command_line=command_line)
    write_manifest(run_dir, manifest, signing_key)
    if report.pull_dir is not None:
        pull_dir = Path(report.pull_dir)
        if not pull_dir.resolve().is_relative_to(run_dir.resolve()):
            write_manifest(pull_dir, manifest, signing_key)
    return report


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


def run_fleet_recorded(
    hosts: Sequence[Host],
    job: FleetJob,
    connector: Connector,
    *,
    run_id: str,
    state_dir: Path | None = None,
    observer: Observer = _ignore,
    command_line: Sequence[str] = (),
    signing_key: Ed25519PrivateKey | None = None,
) -> FleetReport:
    """:func:`~meshrun.fleet.run.run_fleet`, recorded when it pulls files or signs.

    Then the run gets ``<state_dir>/runs/<run_id>/`` (``state_dir`` defaults to
    ``.meshrun`` in the current directory) with report.json and the manifest, written
    for failed and interrupted runs too; files land in ``job.pull_dir`` (default: the
    run directory's ``hosts/``). A run that neither pulls nor signs writes nothing.
    """
    if not job.pull and signing_key is None:
        return run_fleet(hosts, job, connector, run_id=run_id, observer=observer)
    from meshrun.integrity.manifest import FLEET_FILES_DIR

    run_dir = fleet_run_dir(state_dir or DEFAULT_STATE_DIR, run_id).absolute()
    if job.pull:
        pull_dir = run_dir / FLEET_FILES_DIR if job.pull_dir is None else job.pull_dir
        job = replace(job, pull_dir=Path(pull_dir).absolute())
        check_pull_names([host.name for host in hosts], job.pull_dir)
    # Before any host is contacted: a directory that cannot be made is bad input.
    for directory, what in ((run_dir, "the run directory"), (job.pull_dir, "the pull directory")):
        if directory is None:
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create {what} {directory}: {exc.strerror or exc}",
                fix="pass a writable --state-dir / --pull-dir",
            ) from None
    report = run_fleet(hosts, job, connector, run_id=run_id, observer=observer)
    return record_fleet_run(
        report, hosts, run_dir, command_line=command_line, signing_key=signing_key
    )


__all__ = [
    "DEFAULT_STATE_DIR",
    "HostPull",
    "build_fleet_manifest",
    "check_pull_names",
    "fleet_run_dir",
    "pull_host",
    "record_fleet_run",
    "run_fleet_recorded",
]

"""The record of a fleet run (``exec``/``run`` that pull files or sign): report.json and
the manifest, and the ``--json`` document they share.

A recorded run (:func:`run_fleet_recorded`, when it pulls or signs) is a directory::

    <state dir>/runs/<run-id>/report.json         the --json document (kind "fleet")
    <state dir>/runs/<run-id>/manifest.json(.sig) one TaskEntry per host, its files
    <state dir>/runs/<run-id>/hosts/<host>/<path> the files (the default pull dir)

and a pull directory elsewhere (``--pull-dir``) gets its own copy of the manifest, so
``meshrun verify`` accepts either directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshrun.config.inventory import Host
from meshrun.errors import InputError
from meshrun.fleet.pull import check_pull_names
from meshrun.fleet.run import (
    FleetJob,
    FleetReport,
    HostStatus,
    Observer,
    _ignore,
    effective_parallel,
    run_fleet,
)
from meshrun.rundir import DEFAULT_STATE_DIR, SCHEMA, RunDir, StateDir
from meshrun.stopsignals import signal_name
from meshrun.transport.base import Connector

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshrun.integrity.manifest import Manifest


def fleet_document(report: FleetReport) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun exec`` / ``meshrun run`` (also saved as a
    recorded run's report.json, where ``kind`` and ``pull_dir`` tell ``meshrun verify``
    where the files are). ``run_dir``, ``pull_dir`` and ``manifest`` are null when the
    run wrote nothing; each host lists the ``files`` pulled from it."""
    return {
        "schema": SCHEMA,
        "kind": "fleet",
        "ok": report.ok,
        "exit_code": report.exit_code,
        "run_id": report.run_id,
        "command": report.command,
        "duration_s": round(report.duration_s, 3),
        "interrupted": report.interrupted,
        "signal": None if report.stop_signal is None else signal_name(report.stop_signal),
        "stop_reason": report.stop_reason,
        "run_dir": report.run_dir,
        "pull_dir": report.pull_dir,
        "manifest": report.manifest_path,
        "files_pulled": report.files_pulled,
        "hosts": [
            {
                "name": r.name,
                "status": r.status.value,
                "exit_code": r.exit_code,
                "stdout": r.stdout.decode("utf-8", "replace"),
                "stderr": r.stderr.decode("utf-8", "replace"),
                "duration_s": round(r.duration_s, 3),
                "error": r.error,
                "files": [f.to_dict() for f in r.files],
                "pull_error": r.pull_error,
                "integrity_failed": r.integrity_failed,
            }
            for r in report.results
        ],
    }


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
    from meshrun.integrity.manifest import write_manifest

    record = RunDir(Path(run_dir))
    report = replace(report, run_dir=str(record.path), manifest_path=str(record.manifest))
    record.write_report(fleet_document(report))
    manifest = build_fleet_manifest(report, hosts, command_line=command_line)
    write_manifest(record.path, manifest, signing_key)
    if report.pull_dir is not None:
        pull_dir = Path(report.pull_dir)
        if not pull_dir.resolve().is_relative_to(record.path.resolve()):
            write_manifest(pull_dir, manifest, signing_key)
    return report


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
    release: bool = True,
) -> FleetReport:
    """:func:`~meshrun.fleet.run.run_fleet`, recorded when it pulls files or signs.

    Then the run gets ``<state_dir>/runs/<run_id>/`` (``state_dir`` defaults to
    ``.meshrun`` in the current directory) with report.json and the manifest, written
    for failed and interrupted runs too; files land in ``job.pull_dir`` (default: the
    run directory's ``hosts/``). A run that neither pulls nor signs writes nothing.
    """
    if not job.pull and signing_key is None:
        return run_fleet(hosts, job, connector, run_id=run_id, observer=observer, release=release)
    effective_parallel(hosts, job)  # DoesNotFit before the run directory is made
    record = StateDir(Path(state_dir or DEFAULT_STATE_DIR).absolute()).run(run_id)
    run_dir = record.path
    if job.pull:
        pull_dir = record.hosts if job.pull_dir is None else job.pull_dir
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
    report = run_fleet(hosts, job, connector, run_id=run_id, observer=observer, release=release)
    return record_fleet_run(
        report, hosts, run_dir, command_line=command_line, signing_key=signing_key
    )


__all__ = [
    "build_fleet_manifest",
    "fleet_document",
    "record_fleet_run",
    "run_fleet_recorded",
]

"""The ``--json`` documents only the CLI prints: ``meshrun hosts``, ``meshrun discover`` and
``meshrun history`` (its durations and its ``--prune`` result). schemas/ at the repository
root describes each (tests/unit/test_schema_files.py checks these builders against them).

Run records (exec/run, dispatch) have theirs beside the feature that writes them as
report.json: :func:`meshrun.fleet_document`, :func:`meshrun.dispatch_document`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from meshrun import HostProbe
from meshrun.rundir import SCHEMA

if TYPE_CHECKING:
    from meshrun import Agent, DurationRecord, PruneResult


def hosts_document(probes: list[HostProbe]) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun hosts``."""
    return {
        "schema": SCHEMA,
        "ok": all(p.reachable and p.auth_ok for p in probes),
        "hosts": [
            {
                "name": p.name,
                "address": p.address,
                "reachable": p.reachable,
                "auth_ok": p.auth_ok,
                "rtt_ms": None if p.rtt_ms is None else round(p.rtt_ms, 2),
                "cpus": p.cpus,
                "load": list(p.load) if p.load else None,
                "python3": p.python3,
                "error": p.error,
                "not_probed": p.shortage,  # meshrun ran short (fds, threads): not the host
            }
            for p in probes
        ],
    }


def agents_document(agents: Sequence[Agent]) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun discover``."""
    return {
        "schema": SCHEMA,
        "agents": [
            {
                "name": a.name,
                "address": a.address,
                "port": a.port,
                "user": a.user,
                "slots": a.slots,
                "cpus": a.cpus,
                "labels": list(a.labels),
                "workdir": a.workdir,
                "host_key_fingerprint": a.host_key_fingerprint,
                "host_key_type": a.host_key_type,
                "os": a.os,
                "arch": a.arch,
                "version": a.version,
                "meshrun_version": a.meshrun_version,
            }
            for a in agents
        ],
    }


def history_document(scope: str, records: Sequence[DurationRecord]) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun history``: each task's learned duration."""
    return {
        "schema": SCHEMA,
        "scope": scope,
        "tasks": [
            {
                "name": r.task,
                "expected_s": round(r.estimate_s, 3),
                "last_s": round(r.last_s, 3),
                "samples": r.samples,
            }
            for r in records
        ],
    }


def prune_document(state_dir: str, pruned: PruneResult) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun history --prune``: what went, what is left."""
    return {
        "schema": SCHEMA,
        "state_dir": state_dir,
        "pruned_runs": list(pruned.runs),
        "bytes_freed": pruned.bytes_freed,
        "history_rows": pruned.history_rows,
        "kept_runs": pruned.kept,
    }


__all__ = ["agents_document", "history_document", "hosts_document", "prune_document"]

"""Reports as documents for machines: ``--json`` (schema 1; extend, never break)."""

from __future__ import annotations

import json
from typing import Any

from meshrun.fleet import FleetReport
from meshrun.probe import HostProbe

SCHEMA = 1


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def fleet_document(report: FleetReport) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun exec`` / ``meshrun run``."""
    return {
        "schema": SCHEMA,
        "ok": report.ok,
        "exit_code": report.exit_code,
        "run_id": report.run_id,
        "command": report.command,
        "duration_s": round(report.duration_s, 3),
        "interrupted": report.interrupted,
        "hosts": [
            {
                "name": r.name,
                "status": r.status.value,
                "exit_code": r.exit_code,
                "stdout": _text(r.stdout),
                "stderr": _text(r.stderr),
                "duration_s": round(r.duration_s, 3),
                "error": r.error,
            }
            for r in report.results
        ],
    }


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
            }
            for p in probes
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)

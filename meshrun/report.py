"""Reports as documents for machines: ``--json`` (schema 1; extend, never break)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshrun import stopsignals
from meshrun.fleet.probe import HostProbe
from meshrun.fleet.run import FleetReport

if TYPE_CHECKING:
    from meshrun.discovery.record import Agent
    from meshrun.dispatch.executor import DispatchReport

SCHEMA = 1


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _signal(signum: int | None) -> str | None:
    """``"SIGTERM"``: what interrupted the run; null when nothing did."""
    return None if signum is None else stopsignals.signal_name(signum)


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
        "signal": _signal(report.stop_signal),
        "run_dir": report.run_dir,
        "pull_dir": report.pull_dir,
        "manifest": report.manifest_path,
        "files_pulled": report.files_pulled,
        "hosts": [
            {
                "name": r.name,
                "status": r.status.value,
                "exit_code": r.exit_code,
                "stdout": _text(r.stdout),
                "stderr": _text(r.stderr),
                "duration_s": round(r.duration_s, 3),
                "error": r.error,
                "files": [f.to_dict() for f in r.files],
                "pull_error": r.pull_error,
                "integrity_failed": r.integrity_failed,
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


def dispatch_document(
    report: DispatchReport, *, command_line: Sequence[str] = ()
) -> dict[str, Any]:
    """The ``--json`` document of ``meshrun dispatch`` (also saved as report.json)."""
    return {
        "schema": SCHEMA,
        "run_id": report.run_id,
        "ok": report.ok,
        "exit_code": report.exit_code,
        "interrupted": report.interrupted,
        "signal": _signal(report.stop_signal),
        "duration_s": round(report.duration_s, 3),
        "command": list(command_line),
        "run_dir": report.run_dir,
        "tasks": [
            {
                "name": t.name,
                "host": t.host,
                "status": t.status.value,
                "exit_code": t.exit_code,
                "attempts": t.attempts,
                "duration_s": None if t.duration_s is None else round(t.duration_s, 3),
                "log": t.log,
                "error": t.error,
                # Every attempt: host, start and end (s from the run's start), outcome.
                "timeline": [a.to_dict() for a in t.timeline],
            }
            for t in report.tasks
        ],
        "hosts": [
            {
                "name": h.name,
                "status": h.status,
                "runner": h.runner,
                "slots": h.slots,
                "tasks_run": h.tasks_run,
                "error": h.error,
                "refused": h.refused,
                "workdir": h.workdir,
            }
            for h in report.hosts
        ],
    }


def _log_text(path: str, limit_bytes: int = 1 << 20) -> str:
    """A task's log for a report: the last ``limit_bytes`` of it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    if len(data) > limit_bytes:
        data = b"[... earlier output cut ...]\n" + data[-limit_bytes:]
    # XML 1.0 cannot carry most control characters.
    text = data.decode("utf-8", "replace")
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def junit_xml(report: DispatchReport) -> str:
    """JUnit XML for CI systems: one testcase per task, failures carry their output."""
    from xml.etree import ElementTree as ET  # dispatch only: off exec's start

    from meshrun.dispatch.scheduler import TaskStatus

    failures = sum(1 for t in report.tasks if t.status is TaskStatus.FAILED)
    skipped = sum(1 for t in report.tasks if t.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED))
    suite = ET.Element(
        "testsuite",
        {
            "name": "meshrun dispatch",
            "tests": str(len(report.tasks)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
            "time": f"{report.duration_s:.3f}",
            "id": report.run_id,
        },
    )
    for t in report.tasks:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": "meshrun",
                "name": t.name,
                "time": f"{t.duration_s or 0.0:.3f}",
            },
        )
        if t.host:
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", {"name": "host", "value": t.host})
            ET.SubElement(props, "property", {"name": "attempts", "value": str(t.attempts)})
        if t.status is TaskStatus.FAILED:
            failure = ET.SubElement(
                case, "failure", {"message": t.error or "failed", "type": "TaskFailed"}
            )
            failure.text = _log_text(t.log)
        elif t.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED):
            ET.SubElement(case, "skipped", {"message": f"{t.status.value}: {t.error or ''}"})
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def dumps(document: dict[str, Any]) -> str:
    import json  # only when a document is written: off exec's start

    return json.dumps(document, indent=2, ensure_ascii=False)

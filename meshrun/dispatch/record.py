"""The record of a dispatch run for machines: its ``--json`` document (also saved as
report.json) and JUnit XML for CI systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from meshrun.rundir import SCHEMA
from meshrun.stopsignals import signal_name

if TYPE_CHECKING:
    from meshrun.dispatch.executor import DispatchReport, TaskResult


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
        "signal": None if report.stop_signal is None else signal_name(report.stop_signal),
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
                # A succeeded task's small log is a slice of logs/succeeded.log: these
                # bytes from this offset (both None: the whole file ``log``).
                "log": t.log,
                "log_offset": t.log_offset,
                "log_bytes": t.log_bytes,
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


def _log_text(task: TaskResult, limit_bytes: int = 1 << 20) -> str:
    """A task's log for a report: the last ``limit_bytes`` of it."""
    try:
        data, cut = task.log_tail(limit_bytes)
    except OSError:
        return ""
    if cut:
        data = b"[... earlier output cut ...]\n" + data
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
            failure.text = _log_text(t)
        elif t.status in (TaskStatus.SKIPPED, TaskStatus.CANCELLED):
            ET.SubElement(case, "skipped", {"message": f"{t.status.value}: {t.error or ''}"})
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


__all__ = ["dispatch_document", "junit_xml"]

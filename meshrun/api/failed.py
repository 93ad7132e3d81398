"""The error a run raises with ``check=True``: the report travels with it.

Without ``check``, failed and unreachable hosts (or failed tasks) are results, never
exceptions: a program reads ``report.failed``. With ``check=True`` a run that did not
succeed raises :class:`RunFailed`, a :class:`~meshrun.errors.CommandError` whose
``exit_code`` is the report's (1, 3 for an unreachable host, 4 for a file that failed
verification, 130 interrupted) and whose ``report`` is the whole report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshrun.errors import CommandError

if TYPE_CHECKING:
    from meshrun.dispatch.executor import DispatchReport
    from meshrun.fleet.run import FleetReport

#: Names listed in the message before "and N more".
_SHOWN = 5


class RunFailed(CommandError):
    """A run did not succeed and ``check=True`` was asked: ``report`` says how each
    host (or task) ended, ``exit_code`` is what the CLI would exit with."""

    def __init__(self, report: FleetReport | DispatchReport) -> None:
        failed = report.failed
        from meshrun.fleet.run import FleetReport

        if isinstance(report, FleetReport):
            what, total = "host", len(report.results)
        else:
            what, total = "task", len(report.tasks)
        shown = ", ".join(f"{item.name} ({item.status.value})" for item in failed[:_SHOWN])
        more = f" and {len(failed) - _SHOWN} more" if len(failed) > _SHOWN else ""
        if failed:
            message = f"{len(failed)} of {total} {what}s did not succeed: {shown}{more}"
        else:
            message = f"the run did not succeed (exit {report.exit_code})"
        if report.interrupted:
            message = f"interrupted; {message}"
        super().__init__(message, fix="read .failed of the attached report for each one's error")
        self.report = report
        self.exit_code = report.exit_code

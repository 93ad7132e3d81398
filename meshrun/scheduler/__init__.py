"""The dispatch scheduler: pure logic, events in, decisions out (see core.py)."""

from meshrun.scheduler.core import (
    Abandon,
    Cancel,
    CancelAll,
    Decision,
    Event,
    HostJoined,
    HostLoad,
    HostLost,
    HostSpec,
    Policy,
    Scheduler,
    Start,
    TaskFailed,
    TaskRecord,
    TaskStatus,
    TaskSucceeded,
)

__all__ = [
    "Abandon",
    "Cancel",
    "CancelAll",
    "Decision",
    "Event",
    "HostJoined",
    "HostLoad",
    "HostLost",
    "HostSpec",
    "Policy",
    "Scheduler",
    "Start",
    "TaskFailed",
    "TaskRecord",
    "TaskStatus",
    "TaskSucceeded",
]

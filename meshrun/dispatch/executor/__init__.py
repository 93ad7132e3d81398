"""The dispatch executor: carries out what the scheduler decides, on real hosts.

- ``loop``: the run loop (``Dispatcher``): owns the scheduler, turns what happens into
  its events, carries out its decisions;
- ``hosts``: connecting and setting up each host, and its state (``HostPool``);
- ``attempts``: each start of a task on a host: its id, log, deadline, how it ended;
- ``transfers``: files around an attempt: needs' outputs pushed before, its own
  outputs brought home after;
- ``progress``: what the observer (the console) sees, and the progress line's numbers;
- ``results``: the options a run takes and the report it returns;
- ``clock``: the run's one clock.
"""

from meshrun.dispatch.executor.attempts import STOP_GRACE_S
from meshrun.dispatch.executor.hosts import FDS_PER_HOST, GATHER_S, PrepareFn
from meshrun.dispatch.executor.loop import Dispatcher
from meshrun.dispatch.executor.progress import (
    DispatchEvent,
    HostDown,
    HostReady,
    Notice,
    Observer,
    Progress,
    TaskEnded,
    TaskLine,
    TaskStarted,
    ignore,
)
from meshrun.dispatch.executor.results import (
    DispatchOptions,
    DispatchReport,
    HostState,
    HostSummary,
    TaskResult,
)
from meshrun.dispatch.executor.transfers import CollectFn, StageFn

__all__ = [
    "FDS_PER_HOST",
    "GATHER_S",
    "STOP_GRACE_S",
    "CollectFn",
    "DispatchEvent",
    "DispatchOptions",
    "DispatchReport",
    "Dispatcher",
    "HostDown",
    "HostReady",
    "HostState",
    "HostSummary",
    "Notice",
    "Observer",
    "PrepareFn",
    "Progress",
    "StageFn",
    "TaskEnded",
    "TaskLine",
    "TaskResult",
    "TaskStarted",
    "ignore",
]

"""``dispatch --trace FILE``: the run's timeline as a Chrome trace.

The Trace Event Format (a JSON object with ``traceEvents``) opens in
https://ui.perfetto.dev and ``chrome://tracing``: one process per host, one thread per
slot that host used, one box per attempt (its task, how it ended, exit code). Slots are
lanes, not the agent's numbering: each attempt takes the lowest lane free when it
starts, so overlapping attempts on a host never share one. Pure: a report in, a dict out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshrun.dispatch.executor import DispatchReport

_US = 1_000_000  # the format counts microseconds


def chrome_trace(report: DispatchReport) -> dict[str, Any]:
    """The Trace Event Format document of ``report``'s attempts."""
    attempts = sorted(
        ((a, t.name) for t in report.tasks for a in t.timeline),
        key=lambda pair: (pair[0].start_s, pair[0].end_s, pair[1]),
    )
    hosts = sorted({a.host for a, _ in attempts} | {h.name for h in report.hosts})
    pid = {name: i + 1 for i, name in enumerate(hosts)}
    lanes: dict[str, list[float]] = {name: [] for name in hosts}  # lane -> busy until
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid[name], "args": {"name": name}}
        for name in hosts
    ]
    for attempt, task in attempts:
        busy = lanes[attempt.host]
        lane = next((i for i, until in enumerate(busy) if until <= attempt.start_s), len(busy))
        if lane == len(busy):
            busy.append(0.0)
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": pid[attempt.host],
                    "tid": lane + 1,
                    "args": {"name": f"slot {lane + 1}"},
                }
            )
        busy[lane] = attempt.end_s
        events.append(
            {
                "name": task,
                "cat": attempt.outcome,
                "ph": "X",
                "pid": pid[attempt.host],
                "tid": lane + 1,
                "ts": round(attempt.start_s * _US),
                "dur": max(1, round((attempt.end_s - attempt.start_s) * _US)),
                "args": {"outcome": attempt.outcome, "exit_code": attempt.exit_code},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"run_id": report.run_id, "duration_s": round(report.duration_s, 3)},
    }


__all__ = ["chrome_trace"]

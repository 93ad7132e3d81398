"""Retention: the state directory (``.meshrun``) does not grow without bound.

Every recorded run leaves ``runs/<run-id>/`` (a 10,000-task dispatch: its logs and
artifacts) and its rows in history.sqlite (one per task: 1.2 MB for 10,000 tasks).
After each recorded run, and on ``meshrun history --prune``, :func:`prune_state` keeps
the ``keep_runs`` newest runs (and, with ``keep_days``, none older than that) and
removes the rest, directory and rows together, oldest first — except a run that is

- **needed by --rerun-failed**: for each task file (history scope), its latest run,
  recorded or only journalled (a run killed before it could record itself), and each
  run that is the latest one a task of that file succeeded in (a rerun pushes that
  run's verified outputs to the tasks that need them);
- **possibly in progress**: newer than the run that prunes (another CI job sharing the
  state directory started later), or without a report.json and written to in the last
  :data:`UNFINISHED_GRACE_S` (a run still going; one killed longer ago is pruned);
- not a run at all: only names shaped like a run id are ever touched.

The durations table — one folded estimate per task, all the scheduler's estimate
reads — is kept whole. SQLite reuses the freed pages, so the file stops growing;
``history --prune`` also compacts it (VACUUM) when no other run holds it.

Two pruners at once (two CI jobs ending together) must not fail or half-delete a run
the other still sees: a run directory is first renamed into ``.pruned/`` (one rename
wins; the loser's FileNotFoundError means "already gone") and deleted from there; rows
go in one transaction under SQLite's busy timeout. Nothing here fails a run: the
caller reports an error and goes on.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from meshrun.dispatch.history import History
from meshrun.records import record
from meshrun.rundir import DEFAULT_KEEP_RUNS, JOURNAL_NAME, REPORT_NAME, StateDir

__all__ = ["DEFAULT_KEEP_RUNS", "PruneResult", "RunEntry", "choose_prunable", "prune_state"]

#: A run directory without report.json that was written to in the last day may still
#: be running (a long dispatch on another CI job): kept. Older ones were killed.
UNFINISHED_GRACE_S = 86400.0
#: ``20261123T152519Z-3fa9c1`` (runid.new_run_id): anything else in runs/ is not ours.
RUN_ID_RE = re.compile(r"(\d{8}T\d{6}Z)-[0-9a-f]+")
PRUNED_DIR = ".pruned"


@record
class RunEntry:
    """One run as retention sees it: its id, whether it ended (report.json written, or
    recorded in the history), when it was last written to and, when known (from the
    history or its journal), when it started (epoch seconds). Ids alone order runs only
    to the second: two runs started in the same second sort by their random suffix."""

    run_id: str
    finished: bool
    last_write: float
    started: float | None = None


@record
class PruneResult:
    """What :func:`prune_state` removed: run ids (oldest first), the bytes their
    directories held, and the history rows that went with them."""

    runs: tuple[str, ...]
    bytes_freed: int
    history_rows: int
    kept: int  # runs left


def run_started(run_id: str) -> float | None:
    """The UTC start of a run from its id; None when the name is not a run id."""
    match = RUN_ID_RE.fullmatch(run_id)
    if match is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ")))
    except (ValueError, OverflowError):
        return None


def choose_prunable(
    entries: Iterable[RunEntry],
    *,
    keep_runs: int,
    keep_days: float | None,
    protected: Collection[str],
    now: float,
    current: str | None = None,
) -> list[str]:
    """The run ids to remove, oldest first (pure; the rules are the module's)."""
    runs = sorted(
        (e for e in entries if run_started(e.run_id) is not None),
        key=_start_order,
        reverse=True,
    )
    newest_kept: tuple[float, str] | None = None  # the current run's place: none newer go
    if current is not None:
        mine = next((e for e in runs if e.run_id == current), None)
        newest_kept = _start_order(mine) if mine else (run_started(current) or 0.0, current)
    chosen: list[str] = []
    for position, entry in enumerate(runs):
        too_many = keep_runs > 0 and position >= keep_runs
        started = run_started(entry.run_id) or now
        too_old = keep_days is not None and now - started > keep_days * 86400.0
        if not (too_many or too_old):
            continue
        if entry.run_id in protected or (
            newest_kept is not None and _start_order(entry) >= newest_kept
        ):
            continue
        if not entry.finished and now - entry.last_write < UNFINISHED_GRACE_S:
            continue
        chosen.append(entry.run_id)
    return chosen[::-1]


def _start_order(entry: RunEntry) -> tuple[float, str]:
    """Newest last: the exact start when known, else the id's second; then the id."""
    started = entry.started
    if started is None:
        started = run_started(entry.run_id) or 0.0
    return started, entry.run_id


def prune_state(
    state: StateDir,
    *,
    keep_runs: int = DEFAULT_KEEP_RUNS,
    keep_days: float | None = None,
    current: str | None = None,
    compact: bool = False,
) -> PruneResult:
    """Remove the runs of ``state`` that :func:`choose_prunable` picks: directories and
    history rows. ``current``: the run that just ended (none newer is touched);
    ``compact``: VACUUM the history after (skipped while another run holds it).
    ValueError for a negative ``keep_runs`` or ``keep_days``."""
    if keep_runs < 0:
        raise ValueError(f"--keep-runs must be 0 (keep all) or more, got {keep_runs}")
    if keep_days is not None and keep_days < 0:
        raise ValueError(f"--keep-days must be 0 or more, got {keep_days}")
    now = time.time()
    heads: dict[str, tuple[str, float]] = {}  # run -> (scope, started) from its journal
    on_disk = _run_dirs(state, heads)
    history = History(state.history) if state.history.exists() else None
    try:
        recorded = history.run_ids() if history is not None else {}
        protected = set(history.rerun_runs()) if history is not None else set()
        protected |= _journalled_latest(heads)
        entries = dict(on_disk)
        for run_id, (started, ended) in recorded.items():
            old = entries.get(run_id)
            last = max(ended, old.last_write if old else ended)
            entries[run_id] = RunEntry(run_id, True, last, started)
        chosen = choose_prunable(
            entries.values(),
            keep_runs=keep_runs,
            keep_days=keep_days,
            protected=protected,
            now=now,
            current=current,
        )
        freed = sum(_remove_dir(state, run_id) for run_id in chosen if run_id in on_disk)
        rows = history.forget_runs([r for r in chosen if r in recorded]) if history else 0
        if compact and history is not None:
            history.compact()
    finally:
        if history is not None:
            history.close()
    _clear_pruned(state)
    return PruneResult(tuple(chosen), freed, rows, len(entries) - len(chosen))


def _run_dirs(state: StateDir, heads: dict[str, tuple[str, float]]) -> dict[str, RunEntry]:
    """The run directories under runs/: finished when report.json is there. Each
    journal's head (scope, started) goes into ``heads``, read once."""
    found: dict[str, RunEntry] = {}
    try:
        children = list(os.scandir(state.runs))
    except FileNotFoundError:
        return found
    for child in children:
        if run_started(child.name) is None:
            continue
        try:
            if not child.is_dir(follow_symlinks=False):
                continue
            last = child.stat(follow_symlinks=False).st_mtime
            for name in (REPORT_NAME, JOURNAL_NAME):
                with contextlib.suppress(FileNotFoundError):
                    last = max(last, os.stat(os.path.join(child.path, name)).st_mtime)
            finished = os.path.exists(os.path.join(child.path, REPORT_NAME))
        except FileNotFoundError:
            continue  # removed meanwhile (another pruner)
        head = _journal_head(Path(child.path) / JOURNAL_NAME)
        if head is not None:
            heads[child.name] = head
        found[child.name] = RunEntry(child.name, finished, last, head[1] if head else None)
    return found


def _journalled_latest(heads: dict[str, tuple[str, float]]) -> set[str]:
    """For each task file with a journal, its newest journalled run (what --rerun-failed
    reads when that run was killed before it could record itself)."""
    newest: dict[str, tuple[float, str]] = {}
    for run_id, (scope, started) in heads.items():
        if started > newest.get(scope, (float("-inf"), ""))[0]:
            newest[scope] = (started, run_id)
    return {run_id for _, run_id in newest.values()}


def _journal_head(path: Path) -> tuple[str, float] | None:
    """(scope, started) from a journal's first line (dispatch/journal.py writes it)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            head = json.loads(file.readline())
        if head.get("event") != "start":
            return None
        return str(head.get("scope", "")), float(head["started"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remove_dir(state: StateDir, run_id: str) -> int:
    """Rename the run's directory out of runs/, then delete it: its size in bytes, 0
    when another pruner got there first."""
    trash = state.root / PRUNED_DIR
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{run_id}-{os.urandom(3).hex()}"
    try:
        os.rename(state.run_dir(run_id), target)
    except FileNotFoundError:
        return 0
    size = _size(target)
    shutil.rmtree(target, onerror=_tolerate_missing)
    return size


def _clear_pruned(state: StateDir) -> None:
    """Whatever an interrupted pruner left in .pruned/ (another may be deleting it too)."""
    trash = state.root / PRUNED_DIR
    try:
        leftovers = list(trash.iterdir())
    except FileNotFoundError:
        return
    for leftover in leftovers:
        shutil.rmtree(leftover, onerror=_tolerate_missing)
    with contextlib.suppress(OSError):  # not empty (another pruner's), or gone
        trash.rmdir()


def _size(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _tolerate_missing(
    function: object, path: str, exc_info: tuple[type, BaseException, object]
) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]

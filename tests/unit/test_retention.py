"""Retention (dispatch/retention.py): which runs go, which never do, two pruners at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from meshrun.dispatch.history import History, TaskOutcome
from meshrun.dispatch.retention import RunEntry, choose_prunable, prune_state, run_started
from meshrun.rundir import StateDir

NOW = 1_800_000_000.0  # 2027-01-15


def run_id(seconds_ago: float, tag: str = "a1b2c3") -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW - seconds_ago)) + "-" + tag


def entries(count: int, *, finished: bool = True) -> list[RunEntry]:
    """``count`` runs an hour apart, the newest first."""
    return [RunEntry(run_id(3600 * i), finished, NOW - 3600 * i) for i in range(count)]


def choose(runs: list[RunEntry], **options: object) -> list[str]:
    settings: dict[str, object] = {"keep_runs": 3, "keep_days": None, "protected": (), "now": NOW}
    settings.update(options)
    return choose_prunable(runs, **settings)  # type: ignore[arg-type]


def test_run_ids_carry_their_start() -> None:
    assert run_started(run_id(0)) == NOW
    assert run_started("notes") is None
    assert run_started("20261123T152519Z") is None


def test_beyond_the_count_oldest_first() -> None:
    runs = entries(6)
    assert choose(runs) == [runs[5].run_id, runs[4].run_id, runs[3].run_id]


def test_runs_started_in_one_second_go_by_their_exact_start_not_their_suffix() -> None:
    # Ids order runs to the second only: "ffffff" sorts after "000000" though it
    # started first. The history and the journal know the exact start.
    earlier = RunEntry(run_id(0, "ffffff"), True, NOW, started=NOW + 0.1)
    later = RunEntry(run_id(0, "000000"), True, NOW, started=NOW + 0.6)
    assert choose([earlier, later], keep_runs=1) == [earlier.run_id]
    # The run pruning after itself keeps itself and nothing it thinks newer by id.
    assert choose([earlier, later], keep_runs=1, current=later.run_id) == [earlier.run_id]


def test_zero_keeps_every_run() -> None:
    assert choose(entries(30), keep_runs=0) == []


def test_age_removes_within_the_count_too() -> None:
    runs = [*entries(3), RunEntry(run_id(10 * 86400), True, NOW - 10 * 86400)]
    assert choose(runs, keep_runs=0, keep_days=7) == [runs[3].run_id]
    assert choose(runs, keep_runs=10, keep_days=7) == [runs[3].run_id]


def test_protected_run_is_never_removed() -> None:
    runs = entries(6)
    chosen = choose(runs, protected={runs[4].run_id})
    assert chosen == [runs[5].run_id, runs[3].run_id]


def test_run_in_progress_is_kept() -> None:
    """No report.json and written to lately: another job may still be running it."""
    runs = entries(6)
    runs[5] = RunEntry(runs[5].run_id, False, NOW - 60)
    assert runs[5].run_id not in choose(runs)
    runs[5] = RunEntry(runs[5].run_id, False, NOW - 3 * 86400)  # killed days ago
    assert runs[5].run_id in choose(runs)


def test_runs_newer_than_the_pruning_run_are_kept() -> None:
    runs = entries(6)
    # The run that prunes is the oldest: every run is beyond the count but none older.
    assert choose(runs, keep_runs=1, current=runs[5].run_id) == []
    assert choose(runs, keep_runs=1, current=runs[2].run_id) == [
        runs[5].run_id,
        runs[4].run_id,
        runs[3].run_id,
    ]


def test_names_that_are_not_runs_are_left_alone() -> None:
    runs = [*entries(2), RunEntry("my-notes", True, 0.0)]
    assert choose(runs, keep_runs=1) == [runs[1].run_id]


# --- on disk and in the history -------------------------------------------------------


def make_run(
    state: StateDir,
    run: str,
    *,
    scope: str = "tasks.toml",
    report: bool = True,
    journal: bool = True,
    outcomes: dict[str, str] | None = None,
    history: History | None = None,
) -> None:
    directory = state.run(run)
    directory.logs.mkdir(parents=True)
    (directory.logs / "t.log").write_text("x" * 1000)
    started = run_started(run) or 0.0
    if journal:
        head = {"event": "start", "run_id": run, "started": started, "scope": scope}
        directory.journal.write_text(json.dumps(head) + "\n")
    if report:
        directory.write_report({"run_id": run})
    if history is not None and outcomes is not None:
        scoped = History(state.history, scope=scope)
        scoped.record_run(
            run,
            started,
            started + 1,
            0 if all(s == "succeeded" for s in outcomes.values()) else 1,
            [TaskOutcome(task, status, "h", 0, 1, 1.0) for task, status in outcomes.items()],
        )
        scoped.close()


def test_prune_state_keeps_what_rerun_failed_needs(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".meshrun")
    history = History(state.history)
    runs = [run_id(3600 * (9 - i)) for i in range(10)]  # oldest first
    # run 0: a and b pass (b's outputs come from here forever after); later runs rerun a.
    make_run(state, runs[0], outcomes={"a": "succeeded", "b": "succeeded"}, history=history)
    for run in runs[1:]:
        make_run(state, run, outcomes={"a": "failed"}, history=history)
    make_run(
        state,
        run_id(86400 * 5, "ffffff"),
        scope="other.toml",
        outcomes={"x": "failed"},
        history=history,
    )
    history.close()

    pruned = prune_state(state, keep_runs=3)

    left = {path.name for path in state.runs.iterdir()}
    assert runs[0] in left  # b last succeeded there: a rerun pushes its outputs
    assert run_id(86400 * 5, "ffffff") in left  # the latest (only) run of other.toml
    assert set(runs[7:]) <= left
    assert set(pruned.runs) == set(runs[1:7])
    assert pruned.bytes_freed >= 6 * 1000
    assert not (state.root / ".pruned").exists()
    with History(state.history, scope="tasks.toml") as after:
        assert after.last_run_id() == runs[9]
        assert after.last_success("b") == runs[0]
        assert after.run_outcomes(runs[3]) is None  # its rows went with it
        assert after.run_outcomes(runs[8]) is not None


def test_killed_latest_run_is_kept(tmp_path: Path) -> None:
    """A run killed before it recorded itself (journal only) is what --rerun-failed reads."""
    state = StateDir(tmp_path / ".meshrun")
    history = History(state.history)
    runs = [run_id(86400 * 3 - 3600 * i) for i in range(5)]
    for run in runs[:4]:
        make_run(state, run, outcomes={"a": "succeeded"}, history=history)
    history.close()
    killed = run_id(86400 * 2)  # newest of its file, no report, idle for two days
    make_run(state, killed, report=False)
    assert killed not in prune_state(state, keep_runs=1).runs
    assert state.run_dir(killed).is_dir()


def test_two_pruners_at_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".meshrun")
    history = History(state.history)
    runs = [run_id(3600 * (40 - i), f"{i:06x}") for i in range(40)]
    for run in runs:
        make_run(state, run, outcomes={"a": "succeeded"}, history=history)
    history.close()
    errors: list[BaseException] = []
    results = []

    def prune() -> None:
        try:
            results.append(prune_state(state, keep_runs=5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prune) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(path.name for path in state.runs.iterdir()) == runs[35:]
    removed = [run for result in results for run in result.runs]
    assert set(removed) == set(runs[:35])
    with History(state.history) as after:
        assert sorted(after.run_ids()) == runs[35:]


def test_negative_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--keep-runs"):
        prune_state(StateDir(tmp_path), keep_runs=-1)
    with pytest.raises(ValueError, match="--keep-days"):
        prune_state(StateDir(tmp_path), keep_days=-1)

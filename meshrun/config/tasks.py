"""tasks.toml -> a validated, frozen :class:`TaskGraph`; checking it against the hosts.

Pure data: the only I/O is reading the task file. Every mistake is a
:class:`~meshrun.errors.TaskFileError` whose one-line message names the file, the
line, the task and the key (``tasks.toml:12: task 'test-core': needs: ...``, the
same shape as :class:`~meshrun.errors.InventoryError`) and says what to write
instead. Unknown names, a task needing itself and dependency cycles are found here,
so the scheduler only ever sees a graph it can finish.
"""

from __future__ import annotations

import difflib
import heapq
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from meshrun.config.durations import parse_duration
from meshrun.config.inventory import MAX_SLOTS, Host
from meshrun.config.loader import Invalid as _Invalid
from meshrun.config.loader import (
    Loader,
    check_name,
    check_text,
    collector_paused,
    name_re,
    wrong_type,
)
from meshrun.config.loader import show as _show
from meshrun.config.loader import toml_type as _toml_type
from meshrun.errors import TaskFileError, where
from meshrun.records import record

__all__ = [
    "BUILTIN_EXCLUDES",
    "SyncSpec",
    "Task",
    "TaskGraph",
    "check_placeable",
    "load_tasks",
    "parse_tasks",
]

BUILTIN_EXCLUDES = (".git", ".meshrun")
#: Attempts after the first. Each retry reruns the task on a host; beyond this a typo
#: (retries = 1000000000) would keep a failing run going for days.
MAX_RETRIES = 100


#: The environment of a task that sets none: one read-only empty mapping for them all
#: (100,000 tasks: 0.06 s less to load).
_NO_ENV: Mapping[str, str] = MappingProxyType({})


def _empty_env() -> Mapping[str, str]:
    return _NO_ENV


@record
class Task:
    """One node of the graph: a shell command line and what it needs to run.

    ``env`` is read-only and left out of the hash (a mapping is not hashable), so a
    Task can still sit in a set or be a dict key; equality does compare it.
    """

    name: str
    run: str
    needs: tuple[str, ...] = ()
    weight: int = 1  # load units taken from a host's slots
    timeout_s: float | None = None
    retries: int = 0
    labels: frozenset[str] = frozenset()  # the host must carry all of them
    env: Mapping[str, str] = field(default_factory=_empty_env, hash=False)
    outputs: tuple[str, ...] = ()  # relative globs: brought home however the task ended
    outputs_on_success: tuple[str, ...] = ()  # brought home only when it succeeded

    def __post_init__(self) -> None:
        # A copy, so a dict handed in cannot change the task afterwards.
        if self.env is not _NO_ENV:
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@record
class SyncSpec:
    """What is pushed to every host before tasks start.

    ``paths`` are relative to ``root`` (normalised, never escaping it); ``exclude``
    holds rsync-style patterns, the built-in ones first. ``isolate``: each workspace
    and task file gets a workdir of its own on a host (meshrun.workspace.workdirs); False runs
    in the host's workdir, shared by every run.
    """

    root: Path  # the directory of tasks.toml, absolute
    paths: tuple[str, ...] = (".",)
    exclude: tuple[str, ...] = BUILTIN_EXCLUDES
    isolate: bool = True


@record(slots=False)
class TaskGraph:
    """Validated tasks in file order: every need names a task here, and there is no cycle.

    ``lines`` maps a task name to the line of its ``[[task]]`` header, for messages
    about the task that come after parsing (:func:`check_placeable`).
    """

    tasks: Mapping[str, Task]
    sync: SyncSpec
    source: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    #: A subset's needs on tasks left out (they passed in an earlier run): a rerun
    #: pushes their outputs from that run, as a full run would have them there.
    done_needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", MappingProxyType(dict(self.tasks)))
        object.__setattr__(self, "lines", MappingProxyType(dict(self.lines)))
        object.__setattr__(self, "done_needs", MappingProxyType(dict(self.done_needs)))
        for task in self.tasks.values():
            unknown = [need for need in task.needs if need not in self.tasks]
            if unknown:
                raise ValueError(f"task {task.name!r} needs unknown tasks: {unknown}")

    @classmethod
    def _resolved(
        cls, tasks: dict[str, Task], sync: SyncSpec, source: str, lines: dict[str, int]
    ) -> TaskGraph:
        """``TaskGraph(tasks=..., sync=..., source=..., lines=...)`` for the loader, which
        has found every need already and hands over dicts of its own: the same graph
        without copying them or looking every need up again (100,000 tasks: 0.06 s)."""
        graph = cls.__new__(cls)
        object.__setattr__(graph, "tasks", MappingProxyType(tasks))
        object.__setattr__(graph, "sync", sync)
        object.__setattr__(graph, "source", source)
        object.__setattr__(graph, "lines", MappingProxyType(lines))
        object.__setattr__(graph, "done_needs", MappingProxyType({}))
        return graph

    @cached_property
    def _dependents(self) -> Mapping[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {name: [] for name in self.tasks}
        for task in self.tasks.values():
            for need in task.needs:
                found[need].append(task.name)
        return {name: tuple(names) for name, names in found.items()}

    @property
    def scope(self) -> str:
        """What this graph's history, learned durations and ``--rerun-failed`` are kept
        under: the task file's path within the workspace (``tasks.toml``,
        ``ci/nightly.toml``), so two task files in one directory keep apart, and the
        same file in another checkout (CI job paths vary) finds its history."""
        if self.source is None:
            return ""
        source = Path(self.source).resolve()
        try:
            return source.relative_to(self.sync.root.resolve()).as_posix()
        except ValueError:
            return source.name

    def dependents(self, name: str) -> tuple[str, ...]:
        """The tasks that need ``name``, in file order. KeyError for an unknown name."""
        return self._dependents[name]

    def topological_order(self) -> list[str]:
        """Every task after all of its needs; among tasks ready at once, file order wins.

        A file already written in dependency order comes back unchanged.
        """
        order, stuck = _kahn(self.tasks)
        if stuck:
            cycle = _find_cycle(self.tasks, stuck)
            raise ValueError(f"dependency cycle: {' -> '.join(cycle)}")
        return order

    def critical_path_s(self, expected: Mapping[str, float]) -> float:
        """The longest chain of expected durations: no schedule can finish sooner.

        A task missing from ``expected`` (no history yet) counts as 0 s, which keeps
        the result a lower bound. ValueError for a negative or non-finite duration.
        """
        finish_s: dict[str, float] = {}
        for name in self.topological_order():
            own_s = expected.get(name, 0.0)
            if not math.isfinite(own_s) or own_s < 0:
                raise ValueError(f"expected duration of {name!r} must be >= 0, got {own_s!r}")
            before_s = max((finish_s[need] for need in self.tasks[name].needs), default=0.0)
            finish_s[name] = before_s + own_s
        return max(finish_s.values(), default=0.0)

    def subset(self, names: Iterable[str]) -> TaskGraph:
        """Only these tasks (file order kept); needs on tasks left out count as satisfied.

        For ``--rerun-failed``: the tasks that passed last time are not run again.
        A name that is not a task of this graph is a TaskFileError.
        """
        wanted = set(names)
        unknown = sorted(wanted - set(self.tasks))
        if unknown:
            shown = ", ".join(repr(name) for name in unknown)
            raise TaskFileError(
                f"{self.source or 'tasks'}: no task named {shown}",
                fix=_did_you_mean_task(unknown[0], list(self.tasks)),
            )
        kept = {
            name: replace(task, needs=tuple(need for need in task.needs if need in wanted))
            for name, task in self.tasks.items()
            if name in wanted
        }
        lines = {name: line for name, line in self.lines.items() if name in wanted}
        done = {
            name: tuple(
                dict.fromkeys(
                    [*self.done_needs.get(name, ()), *(n for n in task.needs if n not in wanted)]
                )
            )
            for name, task in self.tasks.items()
            if name in wanted
        }
        return TaskGraph(
            tasks=kept,
            sync=self.sync,
            source=self.source,
            lines=lines,
            done_needs={name: needs for name, needs in done.items() if needs},
        )


def _kahn(tasks: Mapping[str, Task]) -> tuple[list[str], list[str]]:
    """(order, stuck): a stable topological order, and the tasks a cycle holds back."""
    position = {name: index for index, name in enumerate(tasks)}
    waiting = {name: len(task.needs) for name, task in tasks.items()}
    dependents: dict[str, list[str]] = {name: [] for name in tasks}
    for task in tasks.values():
        for need in task.needs:
            dependents[need].append(task.name)
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(tasks)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    stuck = [name for name in tasks if waiting[name] > 0]
    return order, stuck


def _find_cycle(tasks: Mapping[str, Task], stuck: Sequence[str]) -> list[str]:
    """One cycle among the stuck tasks, as ``[a, b, c, a]`` where each needs the next.

    Every stuck task needs at least one other stuck task, so walking needs from any of
    them must come back to a task already seen. The cycle starts at its member that
    comes first in the file, so the message does not depend on where the walk began.
    """
    remaining = set(stuck)
    walk: list[str] = []
    seen: dict[str, int] = {}
    current = stuck[0]
    while current not in seen:
        seen[current] = len(walk)
        walk.append(current)
        current = next(need for need in tasks[current].needs if need in remaining)
    cycle = walk[seen[current] :]
    position = {name: index for index, name in enumerate(tasks)}
    start = min(range(len(cycle)), key=lambda index: position[cycle[index]])
    cycle = cycle[start:] + cycle[:start]
    return [*cycle, cycle[0]]


# --- checking the graph against the hosts --------------------------------------------


def check_placeable(graph: TaskGraph, hosts: Sequence[Host]) -> None:
    """Raise one TaskFileError listing every task that no host can run.

    A host can run a task when it carries all of the task's labels and its slots are
    at least the task's weight; ``slots=None`` ("auto", known only once connected)
    takes any weight.
    """
    source = graph.source or "tasks"
    if not hosts:
        raise TaskFileError(
            f"{source}: no hosts to run the tasks on",
            fix="pass --hosts with a hosts.toml or a list of hosts",
        )
    carried = sorted(set().union(*(host.labels for host in hosts)))
    carried_text = ", ".join(carried) if carried else "no labels"
    problems: list[str] = []
    fixes: dict[str, str] = {}
    heaviest = 0
    for task in graph.tasks.values():
        place = where(source, graph.lines.get(task.name), _task_entry(task.name), None)
        able = [host for host in hosts if task.labels <= host.labels]
        if not able:
            missing = sorted(task.labels - set(carried))
            if missing:
                reason = (
                    f"needs {'label' if len(missing) == 1 else 'labels'} {', '.join(missing)}, "
                    f"which no host carries (hosts carry: {carried_text})"
                )
            else:
                reason = (
                    f"needs labels {', '.join(sorted(task.labels))} on one host, but no host "
                    f"carries all of them (hosts carry: {carried_text})"
                )
            problems.append(f"{place}: labels: {reason}")
            fixes["labels"] = (
                "add the labels to a host in the inventory (labels = [...]) "
                "or remove them from the task"
            )
            continue
        if any(host.slots is None or host.slots >= task.weight for host in able):
            continue
        biggest = max(able, key=lambda host: host.slots or 0)
        which = "host with its labels" if task.labels else "host"
        problems.append(
            f"{place}: weight: weight {task.weight} is more than any {which} can take "
            f"(most slots: {biggest.slots} on {biggest.name})"
        )
        heaviest = max(heaviest, task.weight)
        fixes["weight"] = (
            f'lower the weight, or give a host slots = {heaviest} or more (or slots = "auto")'
        )
    if not problems:
        return
    if len(problems) == 1:
        message = problems[0]
    else:
        message = f"{source}: {len(problems)} tasks cannot run on any host: " + "; ".join(problems)
    raise TaskFileError(message, fix="; ".join(fixes.values()))


# --- values --------------------------------------------------------------------------

_NAME_CHARS = "._:"  # besides letters, digits and "-"
_NAME_RE = name_re(_NAME_CHARS)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_TASK_KEYS = (
    "name",
    "run",
    "needs",
    "weight",
    "timeout",
    "retries",
    "labels",
    "env",
    "outputs",
    "outputs_on_success",
)
_DEFAULT_KEYS = ("timeout", "retries", "weight", "labels", "env")
_SYNC_KEYS = ("paths", "exclude", "isolate")
_TOP_LEVEL_KEYS = ("defaults", "sync", "task")

_EXAMPLES = {
    "name": 'name = "build-core"',
    "run": 'run = "make -C core"',
    "needs": 'needs = ["build-core"]',
    "weight": "weight = 2",
    "timeout": 'timeout = "10m"',
    "retries": "retries = 1",
    "labels": 'labels = ["linux", "x86_64"]',
    "env": 'env = { CC = "gcc" }',
    "outputs": 'outputs = ["reports/core.xml"]',
    "outputs_on_success": 'outputs_on_success = ["core/dist/**"]',
    "paths": 'paths = ["src", "Makefile"]',
    "exclude": 'exclude = ["*.pyc", "build/"]',
    "isolate": "isolate = false",
}
# Names people bring from GitHub Actions, GitLab CI, make or Taskfile; difflib alone
# would miss them. Only offered when the target is valid where the key was written.
_KEY_ALIASES = {
    "command": "run",
    "cmd": "run",
    "script": "run",
    "shell": "run",
    "depends_on": "needs",
    "depends": "needs",
    "deps": "needs",
    "dependencies": "needs",
    "after": "needs",
    "requires": "needs",
    "tags": "labels",
    "runs_on": "labels",
    "environment": "env",
    "variables": "env",
    "vars": "env",
    "artifacts": "outputs",
    "retry": "retries",
    "attempts": "retries",
    "timeout_s": "timeout",
    "time_limit": "timeout",
    "id": "name",
    "tasks": "task",
    "jobs": "task",
    "job": "task",
    "steps": "task",
    "step": "task",
    "include": "paths",
    "ignore": "exclude",
    "excludes": "exclude",
}

#: Where a key written at the top level belongs, for the fix.
_HOMES = (
    (_DEFAULT_KEYS, "move {key} under [defaults] (every task) or into a [[task]] block"),
    (_TASK_KEYS, "move {key} into a [[task]] block"),
    (_SYNC_KEYS, "move {key} under [sync]"),
)


_TASK_EXAMPLE = 'add a [[task]] block for each task, with at least name = "build" and run = "make"'


def _did_you_mean_task(name: str, names: Sequence[str]) -> str:
    """Fix text for an unknown task name: the closest one, then (some of) all of them."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(names[:10])
    if len(names) > 10:
        shown += f" and {len(names) - 10} more"
    return f"{hint}tasks in this file: {shown}"


def _wrong_type(key: str, expected: str, value: object) -> _Invalid:
    # Every number in a task file is an integer.
    return wrong_type(key, expected, value, _EXAMPLES[key], number=r"[0-9]+")


def _check_text(key: str, value: object) -> str:
    return check_text(key, value, _EXAMPLES[key])


def _check_name(key: str, value: object) -> str:
    return check_name(
        key, value, _EXAMPLES[key], chars=_NAME_CHARS, what="task", fallback="build-core"
    )


def _check_run(key: str, value: object) -> str:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        joined = " && ".join(str(item) for item in value)
        raise _Invalid(
            f"expected a string, found an array ({_show(value)})",
            f"write one shell command line, joining steps with &&: run = {_show(joined)}",
        )
    return _check_text(key, value)


def _check_strings(key: str, value: object, what: str) -> list[str]:
    """An array of non-empty strings; ``what`` names one item ("need", "label")."""
    if not isinstance(value, list):
        invalid = _wrong_type(key, "an array of strings", value)
        if isinstance(value, str):
            words = [word for word in re.split(r"[\s,]+", value) if word]
            invalid.fix = f"write {key} = [{', '.join(_show(word) for word in words)}]"
        raise invalid
    items: list[str] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            raise _Invalid(
                f"{what} #{number} must be a string, found {_toml_type(item)} ({_show(item)})",
                f"quote it: {_show(str(item))}",
            )
        if not item.strip():
            raise _Invalid(f"{what} #{number} is empty", "remove the empty string")
        items.append(item)
    return items


def _check_needs(key: str, value: object) -> tuple[str, ...]:
    # Unknown names are found later, once every task of the file is known.
    return tuple(dict.fromkeys(_check_strings(key, value, "need")))


def _check_weight(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        invalid = _wrong_type(key, "an integer of at least 1", value)
        if isinstance(value, float) and math.isfinite(value):
            invalid.fix = f"write weight = {max(1, math.ceil(value))} (load units are whole)"
        raise invalid
    if value < 1:
        raise _Invalid(
            f"weight must be at least 1, found {value}",
            "write weight = 1 for an ordinary task, more for one that takes several slots",
        )
    if value > MAX_SLOTS:
        # A task takes `weight` of one host's slots, and no host has more than MAX_SLOTS.
        raise _Invalid(
            f"weight {value} is more than any host can take (at most {MAX_SLOTS} slots)",
            "write the load units the task takes of one host's slots, e.g. weight = 2",
        )
    return value


def _check_retries(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, "an integer of at least 0", value)
    if value < 0:
        raise _Invalid(
            f"retries must be 0 or more, found {value}",
            "write retries = 0 to run once, retries = 1 to allow one more attempt",
        )
    if value > MAX_RETRIES:
        raise _Invalid(
            f"retries must be at most {MAX_RETRIES}, found {value}",
            "write how many more attempts a failing task may take, e.g. retries = 2 "
            "(a task that fails that often needs fixing, not retrying)",
        )
    return value


def _check_timeout(key: str, value: object) -> float:
    fix = 'write e.g. timeout = "10m" (units ms, s, m, h, d, as in "1h30m") or a number of seconds'
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid(
            f"expected a duration string or a number of seconds, found "
            f"{_toml_type(value)} ({_show(value)})",
            fix,
        )
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise _Invalid(f"{_show(value)} is not a positive duration", fix) from None
    if not math.isfinite(seconds):
        raise _Invalid(f"{_show(value)} is not a finite duration", fix)
    return seconds


def _check_labels(key: str, value: object) -> frozenset[str]:
    labels = _check_strings(key, value, "label")
    for item in labels:
        if re.search(r"[\s,]", item):
            words = [word for word in re.split(r"[\s,]+", item) if word]
            raise _Invalid(
                f"label {_show(item)} contains a space or comma",
                f"write each label as its own string: [{', '.join(_show(w) for w in words)}]",
            )
    return frozenset(labels)


def _check_env(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _wrong_type(key, "a table of strings", value)
    env: dict[str, str] = {}
    for name, item in value.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise _Invalid(
                f"{name!r} is not an environment variable name",
                "use letters, digits and '_', not starting with a digit, e.g. CC or MY_FLAG",
            )
        if not isinstance(item, str):
            if isinstance(item, bool | int | float):
                written = "true" if item is True else "false" if item is False else str(item)
                fix = f'quote it: {name} = "{written}" (environment values are strings)'
            else:
                fix = f'write {name} = "..." (environment values are strings)'
            raise _Invalid(
                f"env {name} must be a string, found {_toml_type(item)} ({_show(item)})", fix
            )
        env[name] = item
    return env


def _check_outputs(key: str, value: object) -> tuple[str, ...]:
    outputs = _check_strings(key, value, "output")
    for item in outputs:
        path = PurePosixPath(item)
        if path.is_absolute() or item.startswith("~"):
            raise _Invalid(
                f"output {_show(item)} is an absolute path",
                "write it relative to the task's working directory, e.g. "
                f'"{item.lstrip("/~") or "dist/**"}"',
            )
        if ".." in path.parts:
            raise _Invalid(
                f"output {_show(item)} contains '..'",
                "outputs must stay inside the task's working directory; "
                'name the files below it, e.g. "dist/**"',
            )
    return tuple(dict.fromkeys(outputs))


def _check_sync_paths(key: str, value: object) -> tuple[str, ...]:
    paths: list[str] = []
    for item in _check_strings(key, value, "path"):
        if PurePosixPath(item).is_absolute() or item.startswith("~"):
            raise _Invalid(
                f"sync path {_show(item)} is absolute",
                'write it relative to the directory of the task file, e.g. paths = ["."]',
            )
        normal = posixpath.normpath(item)
        if normal == ".." or normal.startswith("../"):
            raise _Invalid(
                f"sync path {_show(item)} leaves the directory of the task file",
                "move the task file up to the project root, or list only paths inside "
                "its directory",
            )
        paths.append(normal)
    return tuple(dict.fromkeys(paths))


def _check_isolate(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(
            f"{key} must be true or false, not {_show(value)}",
            "isolate = false runs every task file's tasks in the host's workdir itself",
        )
    return value


def _check_exclude(key: str, value: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILTIN_EXCLUDES, *_check_strings(key, value, "pattern")]))


# --- the file ------------------------------------------------------------------------


def _task_entry(name: str) -> str:
    return f"task {name!r}"


class _QuickTasks:
    """The [[task]] blocks almost every file is made of, checked in a few steps.

    A block of ``name`` (a valid name), ``run`` (a non-empty string), and any of
    ``needs``, ``labels``, ``outputs``, ``outputs_on_success`` (arrays of non-empty
    strings), ``weight``, ``retries`` (integers in range) and ``timeout``, each plainly
    valid and without a NUL, becomes its Task here; anything else, including every
    mistake and any ``env``, is left (None) to ``_Loader._task``, whose checks give the
    same Task or the error (``tests/unit/test_tasks_quick.py`` checks both ways agree).
    1.8 µs a task of name, run and needs, 3.7 µs one with outputs, timeout and labels
    too, where the full checks take 10 and ~30 (100,000 tasks of the second kind load
    in 1.5 s of CPU instead of 4.1: bench/load's ``typical``).
    """

    def __init__(self, defaults: Mapping[str, Any]) -> None:
        # What _Loader._task takes from [defaults] for a block that sets none of it, in
        # Task's field order after name, run and needs (passed by position: a keyword
        # dict per task cost 0.05 s of a 100,000-task load). One read-only env for all.
        env = defaults.get("env")
        self._defaults: tuple[Any, ...] = (
            defaults.get("weight", 1),
            defaults.get("timeout"),
            defaults.get("retries", 0),
            defaults.get("labels", frozenset()),
            MappingProxyType(dict(env)) if env else _NO_ENV,
            (),
            (),
        )
        # A file repeats a few durations and label sets: one object each (100,000
        # tasks with labels = ["linux"]: 20 MB less).
        self._timeouts: dict[str, float] = {}
        self._labels: dict[tuple[str, ...], frozenset[str]] = {}

    def task(self, raw: object) -> Task | None:
        if type(raw) is not dict:
            return None
        keys = raw.keys()
        if not keys <= _QUICK_KEYS:
            return None
        name = raw.get("name")
        run = raw.get("run")
        if (
            type(name) is not str
            or type(run) is not str
            or _NAME_RE.fullmatch(name) is None
            or not run.strip()
            or _NUL in run
        ):
            return None
        needs = raw.get("needs", ())
        if needs:
            needs = _quick_strings(needs)
            if needs is None:
                return None
        elif type(needs) is list or needs == ():
            needs = ()
        else:
            return None
        if keys <= _PLAIN_KEYS:
            return _new_task(name, run, needs, *self._defaults)
        fields = list(self._defaults)
        for key in keys - _PLAIN_KEYS:
            value = self._value(key, raw[key])
            if value is None:
                return None
            fields[_POSITION[key]] = value
        return _new_task(name, run, needs, *fields)

    def _value(self, key: str, value: object) -> object:
        """What _Loader._task makes of a valid ``value`` of ``key``; None for anything
        it might refuse (it then says why)."""
        if key == "timeout":
            if type(value) is str:
                seconds = self._timeouts.get(value)
                if seconds is None and _NUL not in value:
                    seconds = _quick_timeout(value)
                    if seconds is not None:
                        self._timeouts[value] = seconds
                return seconds
            return _quick_timeout(value) if type(value) is int or type(value) is float else None
        if key == "weight":
            return value if type(value) is int and 1 <= value <= MAX_SLOTS else None
        if key == "retries":
            return value if type(value) is int and 0 <= value <= MAX_RETRIES else None
        items = _quick_strings(value)
        if items is None:
            return None
        if key == "labels":
            labels = self._labels.get(items)
            if labels is None:
                if any(_LABEL_SEPARATOR.search(item) for item in items):
                    return None
                labels = self._labels[items] = frozenset(items)
            return labels
        for item in items:  # outputs, outputs_on_success
            if item[0] in "/~" or (".." in item and ".." in item.split("/")):
                return None
        return items


def _quick_strings(value: object) -> tuple[str, ...] | None:
    """A non-empty array of non-empty strings without a NUL, duplicates dropped."""
    if type(value) is not list or not value:
        return None
    for item in value:
        if type(item) is not str or not item.strip() or _NUL in item:
            return None
    return tuple(value) if len(value) == 1 else tuple(dict.fromkeys(value))


def _quick_timeout(value: str | float) -> float | None:
    try:
        return _check_timeout("timeout", value)
    except _Invalid:
        return None


_PLAIN_KEYS = frozenset({"name", "run", "needs"})
#: Where each other quick key goes among Task's fields after name, run and needs.
_POSITION = {
    "weight": 0,
    "timeout": 1,
    "retries": 2,
    "labels": 3,
    "outputs": 5,
    "outputs_on_success": 6,
}
_QUICK_KEYS = _PLAIN_KEYS | _POSITION.keys()
_LABEL_SEPARATOR = re.compile(r"[\s,]")  # as _check_labels refuses
_NUL = "\x00"


class _NewTask:
    """A Task in a third of the time ``Task(...)`` takes, for the quick path.

    Task is frozen: its ``__init__`` sets each of its ten fields through
    ``object.__setattr__``, 1.35 µs a task. This class has the same slots and plain
    attribute stores, then becomes a Task by assigning ``__class__``, which Python
    allows between classes of one layout: 0.4 µs (100,000 tasks: 0.1 s less). Only for
    values already checked; ``Task.__post_init__`` is not run (it only makes a caller's
    env read-only, and the quick path passes a read-only env already).
    """

    __slots__ = (  # Task's fields (Python orders slots by name either way)
        "env",
        "labels",
        "name",
        "needs",
        "outputs",
        "outputs_on_success",
        "retries",
        "run",
        "timeout_s",
        "weight",
    )

    def __init__(
        self,
        name: str,
        run: str,
        needs: tuple[str, ...],
        weight: int,
        timeout_s: float | None,
        retries: int,
        labels: frozenset[str],
        env: Mapping[str, str],
        outputs: tuple[str, ...],
        outputs_on_success: tuple[str, ...],
    ) -> None:
        self.name = name
        self.run = run
        self.needs = needs
        self.weight = weight
        self.timeout_s = timeout_s
        self.retries = retries
        self.labels = labels
        self.env = env
        self.outputs = outputs
        self.outputs_on_success = outputs_on_success
        self.__class__ = Task  # type: ignore[assignment]


# Task(...)'s own signature, for the type checker: a _NewTask is a Task once made.
_new_task: Callable[..., Task] = _NewTask  # type: ignore[assignment]


_REQUIRED = {"name": _EXAMPLES["name"], "run": _EXAMPLES["run"]}


class _Loader(Loader):
    """Validates parsed TOML into a TaskGraph, raising errors that point into the file."""

    aliases = _KEY_ALIASES
    name_re = _NAME_RE
    missing_fix = "create it, or pass the path of your task file"
    unreadable_fix = "check its permissions"

    def __init__(self, source: str, root: Path) -> None:
        super().__init__(source)
        self.root = root

    def error(
        self, message: str, *, line: int | None, entry: str | None, key: str | None, fix: str
    ) -> TaskFileError:
        return TaskFileError(f"{where(self.source, line, entry, key)}: {message}", fix=fix)

    def entry_name(self, name: str) -> str:
        return _task_entry(name)

    def directory_fix(self) -> str:
        return f"pass the task file itself, e.g. {os.path.join(self.source, 'tasks.toml')}"

    def toml_fix(self) -> str:
        if any(header.name == "task" and not header.array for header in self.locate.headers):
            return "write [[task]] (double brackets) above each task's keys"
        return (
            'write key = value with strings in double quotes (run = "make -C core"); '
            "tables are [defaults], [sync] and [[task]]"
        )

    def load(self, data: dict[str, Any]) -> TaskGraph:
        self.reject_unknown_top_level(data, _TOP_LEVEL_KEYS, _HOMES)
        defaults = self._defaults(data)
        sync = self._sync(data)
        raw_tasks = self.array_of_tables(data, "task", required=True, fix=_TASK_EXAMPLE)
        tasks: dict[str, Task] = {}
        indexes: dict[str, int] = {}  # name -> its [[task]]'s position
        quick = _QuickTasks(defaults)
        in_order = True
        for index, raw in enumerate(raw_tasks):
            task = quick.task(raw)
            if task is None:
                task = self._task(index, raw, defaults)
            name = task.name
            if name in indexes:
                self.duplicate_name("task", name, indexes[name], index, _task_entry(name))
            if in_order:  # every need so far names a task above its own
                for need in task.needs:
                    if need not in indexes:
                        in_order = False
                        break
            indexes[name] = index
            tasks[name] = task
        if not in_order:
            self._resolve_needs(tasks, indexes)
        headers = self.array_lines("task")
        if len(headers) == len(raw_tasks):  # each [[task]] has its header line
            lines = dict(zip(tasks, headers, strict=True))
        else:
            lines = {
                name: line
                for name, index in indexes.items()
                if (line := self.locate.in_table("task", index, None)) is not None
            }
        return TaskGraph._resolved(tasks, sync, self.source, lines)

    def _defaults(self, data: Mapping[str, object]) -> dict[str, Any]:
        raw = self.table(
            data, "defaults", "write [defaults] once (single brackets), then key = value lines"
        )
        entry = "[defaults]"
        for key in raw:
            if key in _TASK_KEYS and key not in _DEFAULT_KEYS:
                self.not_a_default(key, "task")
        self.reject_unknown(raw, _DEFAULT_KEYS, table="defaults", index=None, entry=entry)
        return {
            key: self.check(_CHECKS[key], key, value, table="defaults", index=None, entry=entry)
            for key, value in raw.items()
        }

    def _sync(self, data: Mapping[str, object]) -> SyncSpec:
        raw = self.table(
            data, "sync", 'write [sync] once (single brackets), then paths = ["."] and exclude'
        )
        entry = "[sync]"
        self.reject_unknown(raw, _SYNC_KEYS, table="sync", index=None, entry=entry)
        spec = SyncSpec(root=self.root)
        if "paths" in raw:
            paths = self.check(
                _check_sync_paths, "paths", raw["paths"], table="sync", index=None, entry=entry
            )
            spec = replace(spec, paths=paths)
        if "exclude" in raw:
            exclude = self.check(
                _check_exclude, "exclude", raw["exclude"], table="sync", index=None, entry=entry
            )
            spec = replace(spec, exclude=exclude)
        if "isolate" in raw:
            isolate = self.check(
                _check_isolate, "isolate", raw["isolate"], table="sync", index=None, entry=entry
            )
            spec = replace(spec, isolate=isolate)
        return spec

    def _task(self, index: int, raw: object, defaults: Mapping[str, Any]) -> Task:
        block, entry = self.entry_table("task", index, raw)
        self.reject_unknown(block, _TASK_KEYS, table="task", index=index, entry=entry)
        self.require(block, _REQUIRED, table="task", index=index, entry=entry)
        values: dict[str, Any] = {
            key: self.check(_CHECKS[key], key, value, table="task", index=index, entry=entry)
            for key, value in block.items()
        }
        merged = {**defaults, **values}
        env = {**defaults.get("env", {}), **values.get("env", {})}
        task = Task(
            name=merged["name"],
            run=merged["run"],
            needs=merged.get("needs", ()),
            weight=merged.get("weight", 1),
            timeout_s=merged.get("timeout"),
            retries=merged.get("retries", 0),
            labels=merged.get("labels", frozenset()),
            env=env,
            outputs=merged.get("outputs", ()),
            outputs_on_success=merged.get("outputs_on_success", ()),
        )
        return task

    def _resolve_needs(self, tasks: Mapping[str, Task], indexes: Mapping[str, int]) -> None:
        """Every need names another task of the file, and no need leads back: the
        errors name the task that needs, in file order."""
        in_order = True  # every need earlier in the file: no cycle can be there
        for name, task in tasks.items():
            index = indexes[name]
            for need in task.needs:
                before = indexes.get(need)
                if before is not None and before < index:
                    continue
                in_order = False
                if need == name:
                    self.fail_at(
                        f"task {need!r} needs itself",
                        table="task",
                        index=index,
                        key="needs",
                        entry=_task_entry(name),
                        fix=f"remove {need!r} from its own needs",
                    )
                if before is None:
                    self.fail_at(
                        f"{need!r} is not a task in this file",
                        table="task",
                        index=index,
                        key="needs",
                        entry=_task_entry(name),
                        fix=_did_you_mean_task(need, list(tasks)),
                    )
        if in_order:
            return
        _, stuck = _kahn(tasks)
        if stuck:
            cycle = _find_cycle(tasks, stuck)
            first, last = cycle[0], cycle[-2]
            last_line = self.locate.in_table("task", indexes[last], "needs")
            self.fail_at(
                f"dependency cycle {' -> '.join(cycle)} (each needs the next)",
                table="task",
                index=indexes[first],
                key="needs",
                entry=_task_entry(first),
                fix=f"remove {cycle[0]!r} from the needs of {last!r} "
                f"(line {last_line}), or another need in the cycle",
            )


_CHECKS: dict[str, Callable[[str, object], object]] = {
    "name": _check_name,
    "run": _check_run,
    "needs": _check_needs,
    "weight": _check_weight,
    "timeout": _check_timeout,
    "retries": _check_retries,
    "labels": _check_labels,
    "env": _check_env,
    "outputs": _check_outputs,
    "outputs_on_success": _check_outputs,
}


def parse_tasks(text: str, *, source: str, root: Path) -> TaskGraph:
    """Validate the text of a task file; ``root`` is its directory, ``source`` its name."""
    loader = _Loader(source, root.absolute())
    with collector_paused():
        return loader.load(loader.parse(text))


def load_tasks(path: str | os.PathLike[str]) -> TaskGraph:
    """Read and validate a tasks.toml; every mistake is a TaskFileError pointing at it."""
    loader = _Loader(os.fspath(path), Path(path).absolute().parent)
    with collector_paused():
        return loader.load(loader.parse(loader.read(path)))

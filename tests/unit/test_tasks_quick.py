"""The fast paths of task loading against the slow ones they stand in for.

Most [[task]] blocks are built by a short path (``_QuickTasks``, ``_NewTask``) that
hands everything unusual to the full checks of ``_Loader._task``; a file must give the
same graph, or the same error (message and fix), whichever path a block takes.
Hypothesis writes blocks from valid and invalid values of every key and compares the
load with and without the quick path. The loader also hands its graph over without a
second check of the needs (``TaskGraph._resolved``) and leaves what it made in the
collector's oldest generation (``collector_paused``).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.config import tasks as tasks_module
from meshrun.config.tasks import Task, TaskGraph, load_tasks, parse_tasks
from meshrun.errors import TaskFileError

ROOT = Path("/project")


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    return "{ " + ", ".join(f"{key} = {toml(item)}" for key, item in value.items()) + " }"


WORDS = st.sampled_from(["a", "b", "a", "build-core", "reports/x.xml", "a/b/**", "...", "ünï"])
#: Each key's valid values.
VALID = {
    "weight": st.integers(1, 5),
    "retries": st.integers(0, 3),
    "timeout": st.sampled_from(["10m", "1h30m", "90", "1.5s", "250ms", 30, 2.5]),
    "labels": st.lists(WORDS, max_size=3),
    "outputs": st.lists(WORDS, max_size=3),
    "outputs_on_success": st.lists(WORDS, max_size=3),
    "env": st.just({"CC": "gcc"}),
}
#: Values on the edge of each check, valid or not: a file has at most one of them.
EDGES = [
    *(("weight", value) for value in (0, -1, 1, 5000, 5001, 10**9, True, 1.5, "1")),
    *(("retries", value) for value in (-1, 0, 100, 101, False, 2.0, "1")),
    *(("timeout", value) for value in ("0", "-1s", "soon", "", "1h\x00", 0, -1.0, 0.0, 5, 1.5)),
    *(("timeout", value) for value in (True, [1], "nan", "inf")),
    *(("labels", value) for value in (["x y"], ["a,b"], ["a\tb"], [" "], [""], ["a", "a"])),
    *(("labels", value) for value in ([], ["nul\x00"], "linux", [1], ["ünï"], [True], [["a"]])),
    *(("labels", value) for value in ([{"a": "b"}], ["linux", "linux"], ["linux", "arm"])),
    *(("outputs", value) for value in (["/abs"], ["~home"], ["../up"], ["a/.."], ["a/../b"])),
    *(("outputs", value) for value in (["..."], ["a..b"], ["a//b"], [], [""], ["x", "x"], "x")),
    *(("outputs_on_success", value) for value in (["/abs"], ["a/.."], ["ok/**"], [1])),
    *(("needs", value) for value in ([""], ["zz"], [" "], "a", [1], ["nul\x00"])),
    *(("env", value) for value in ({"A": 1}, {"1A": "x"}, {"A": "\x00"}, "A=1", {})),
    *(("run", value) for value in ("", " ", "a\x00", ["make", "test"], 1)),
    *(("name", value) for value in ("bad name", ".dot", "", 7, "a\x00", "ok:name.1")),
]


@st.composite
def task_files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append("[defaults]")
        keys = draw(st.lists(st.sampled_from(["weight", "timeout", "labels", "env"]), unique=True))
        lines += [f"{key} = {toml(draw(VALID[key]))}" for key in keys]
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
    odd_task = draw(st.integers(-1, len(names) - 1))  # -1: every value valid
    for number, name in enumerate(names):
        block = {"name": name, "run": "make " + name}
        for key in draw(st.lists(st.sampled_from([*VALID, "needs"]), unique=True, max_size=4)):
            if key == "needs":  # mostly earlier tasks, sometimes a dangling or odd one
                block[key] = draw(
                    st.lists(st.sampled_from([*names[:number], "zz", ""]), max_size=2)
                )
            else:
                block[key] = draw(VALID[key])
        if number == odd_task:
            key, block[key] = draw(st.sampled_from(EDGES))
        lines += ["", "[[task]]", *(f"{key} = {toml(value)}" for key, value in block.items())]
    return "\n".join(lines) + "\n"


def load(text: str) -> TaskGraph | tuple[str, str]:
    try:
        return parse_tasks(text, source="tasks.toml", root=ROOT)
    except TaskFileError as exc:
        return str(exc), exc.fix


@settings(max_examples=200)
@given(text=task_files())
def test_the_quick_path_gives_what_the_full_checks_give(text: str) -> None:
    quick = load(text)
    with mock.patch.object(tasks_module._QuickTasks, "task", lambda self, raw: None):
        full = load(text)
    assert quick == full
    if isinstance(quick, TaskGraph):
        assert isinstance(full, TaskGraph)
        assert quick.lines == full.lines
        for task in quick.tasks.values():
            assert type(task) is Task
            assert task.env == full.tasks[task.name].env


@pytest.mark.parametrize(("key", "value"), EDGES, ids=repr)
@pytest.mark.parametrize("defaults", ["", '[defaults]\nlabels = ["x"]\ntimeout = "1m"\n'])
def test_each_edge_value_gives_what_the_full_checks_give(
    key: str, value: object, defaults: str
) -> None:
    block = {"name": "b", "run": "make b", "needs": ["a"], "outputs": ["r/b.xml"], key: value}
    text = defaults + '[[task]]\nname = "a"\nrun = "make a"\n\n[[task]]\n'
    text += "".join(f"{k} = {toml(v)}\n" for k, v in block.items())
    quick = load(text)
    with mock.patch.object(tasks_module._QuickTasks, "task", lambda self, raw: None):
        full = load(text)
    assert quick == full


TYPICAL = {
    "name": "test-7",
    "run": "make test N=7",
    "needs": ["build", "build"],
    "outputs": ["reports/7.xml"],
    "outputs_on_success": ["dist/**"],
    "timeout": "10m",
    "labels": ["linux", "x86_64"],
    "weight": 2,
    "retries": 1,
}


def test_a_task_with_typical_fields_takes_the_quick_path() -> None:
    task = tasks_module._QuickTasks({}).task(dict(TYPICAL))
    assert task == Task(
        name="test-7",
        run="make test N=7",
        needs=("build",),
        weight=2,
        timeout_s=600.0,
        retries=1,
        labels=frozenset({"linux", "x86_64"}),
        outputs=("reports/7.xml",),
        outputs_on_success=("dist/**",),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("outputs", ["../x"]),
        ("outputs", ["/abs"]),
        ("labels", ["a b"]),
        ("timeout", "soon"),
        ("weight", 0),
        ("retries", True),
        ("env", {"A": "b"}),
        ("needs", []),
    ],
)
def test_anything_the_full_checks_might_refuse_is_left_to_them(key: str, value: object) -> None:
    raw = {**TYPICAL, key: value}
    if key == "needs":
        assert tasks_module._QuickTasks({}).task(raw) is not None  # needs = [] is fine
        return
    assert tasks_module._QuickTasks({}).task(raw) is None


def test_a_quickly_made_task_is_a_plain_frozen_task() -> None:
    made = tasks_module._QuickTasks({}).task(dict(TYPICAL))
    assert made is not None and type(made) is Task
    assert sorted(field.name for field in dataclasses.fields(Task)) == list(
        tasks_module._NewTask.__slots__
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "other"  # type: ignore[misc]
    assert copy.copy(made) == made and hash(copy.copy(made)) == hash(made)
    assert dataclasses.replace(made, weight=1).weight == 1
    assert repr(made).startswith("Task(name='test-7', run='make test N=7'")


def test_the_loaded_graph_is_the_graph_its_constructor_makes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(
        '[[task]]\nname = "a"\nrun = "x"\n\n[[task]]\nname = "b"\nrun = "y"\nneeds = ["a"]\n'
    )
    loaded = load_tasks(path)
    built = TaskGraph(
        tasks=dict(loaded.tasks), sync=loaded.sync, source=str(path), lines={"a": 1, "b": 5}
    )
    for field in dataclasses.fields(TaskGraph):  # a field _resolved misses fails here
        assert getattr(loaded, field.name) == getattr(built, field.name), field.name
        assert isinstance(getattr(loaded, field.name), type(getattr(built, field.name)))
    assert loaded == built and loaded.dependents("a") == ("b",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.source = "other"  # type: ignore[misc]


def test_a_load_leaves_its_objects_in_the_oldest_generation(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text("".join(f'[[task]]\nname = "t{i}"\nrun = "x"\n' for i in range(50)))
    graph = load_tasks(path)
    assert gc.isenabled()
    oldest = {id(item) for item in gc.get_objects(generation=2)}
    assert all(id(task) in oldest for task in graph.tasks.values())


def test_a_load_leaves_the_callers_frozen_objects_frozen(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text('[[task]]\nname = "a"\nrun = "x"\n')
    gc.freeze()
    frozen = gc.get_freeze_count()
    load_tasks(path)
    assert gc.get_freeze_count() == frozen > 0  # conftest unfreezes after the test


def test_tasks_with_the_same_labels_share_one_set() -> None:
    quick = tasks_module._QuickTasks({})
    first = quick.task({"name": "a", "run": "x", "labels": ["linux", "arm"], "timeout": "1m"})
    second = quick.task({"name": "b", "run": "y", "labels": ["linux", "arm"], "timeout": "1m"})
    assert first is not None and second is not None
    assert first.labels is second.labels == frozenset({"linux", "arm"})
    assert first.timeout_s is second.timeout_s == 60.0

"""tasks.toml -> TaskGraph: validation messages, the graph's methods, host placement.

Error cases are a table: the file text, and where the message must point (line, task,
key) and what the fix must say, because these messages are the user's only guide.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from types import MappingProxyType

import pytest
from config_errors import ErrorCase, assert_points_at
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.config.inventory import Host
from meshrun.config.tasks import (
    BUILTIN_EXCLUDES,
    SyncSpec,
    Task,
    TaskGraph,
    check_placeable,
    load_tasks,
    parse_tasks,
)
from meshrun.errors import TaskFileError

SOURCE = "tasks.toml"
ROOT = Path("/project")


def parse(text: str) -> TaskGraph:
    return parse_tasks(text, source=SOURCE, root=ROOT)


def task_block(name: str, *lines: str) -> str:
    return "\n".join(["[[task]]", f'name = "{name}"', 'run = "true"', *lines]) + "\n"


GOOD = task_block("a")


ERROR_CASES = [
    ErrorCase(
        "not-toml",
        '[[task]]\nname = "a"\nrun = make\n',
        3,
        None,
        None,
        "not valid TOML",
        "double quotes",
    ),
    ErrorCase(
        "task-as-table-twice-is-a-toml-error",
        '[task]\nname = "a"\nrun = "x"\n\n[task]\nname = "b"\nrun = "y"\n',
        5,
        None,
        None,
        "not valid TOML",
        "write [[task]] (double brackets)",
    ),
    ErrorCase(
        "task-as-table",
        '[task]\nname = "a"\nrun = "x"\n',
        1,
        None,
        "task",
        "[task] is a single table",
        "write [[task]] (double brackets)",
    ),
    ErrorCase(
        "no-tasks",
        "[defaults]\nretries = 1\n",
        None,
        None,
        "task",
        "no tasks",
        "[[task]]",
    ),
    ErrorCase("empty-task-array", "task = []\n", 1, None, "task", "no tasks", "[[task]]"),
    ErrorCase(
        "unknown-top-level-key",
        '[[tasks]]\nname = "a"\nrun = "x"\n',
        1,
        None,
        "tasks",
        "unknown top-level key 'tasks'",
        "did you mean 'task'?",
    ),
    ErrorCase(
        "task-key-at-top-level",
        'timeout = "1m"\n' + GOOD,
        1,
        None,
        "timeout",
        "unknown top-level key 'timeout'",
        "move timeout under [defaults]",
    ),
    ErrorCase(
        "sync-key-at-top-level",
        'paths = ["src"]\n' + GOOD,
        1,
        None,
        "paths",
        "unknown top-level key",
        "move paths under [sync]",
    ),
    ErrorCase(
        "unknown-key-with-suggestion",
        task_block("a", "retires = 2"),
        4,
        "task 'a'",
        "retires",
        "unknown key 'retires'",
        "did you mean 'retries'?",
    ),
    ErrorCase(
        "unknown-key-alias",
        task_block("a", 'depends_on = ["b"]'),
        4,
        "task 'a'",
        "depends_on",
        "unknown key",
        "did you mean 'needs'? valid keys: name, run, needs",
    ),
    ErrorCase(
        "unknown-key-in-defaults",
        '[defaults]\ntimout = "1m"\n\n' + GOOD,
        2,
        "[defaults]",
        "timout",
        "unknown key 'timout'",
        "did you mean 'timeout'?",
    ),
    ErrorCase(
        "run-in-defaults",
        '[defaults]\nrun = "make"\n\n' + GOOD,
        2,
        "[defaults]",
        "run",
        "cannot be a default",
        "into each [[task]] block",
    ),
    ErrorCase(
        "unknown-key-in-sync",
        '[sync]\nexcludes = ["*.o"]\n\n' + GOOD,
        2,
        "[sync]",
        "excludes",
        "unknown key 'excludes'",
        "did you mean 'exclude'?",
    ),
    ErrorCase(
        "defaults-not-a-table",
        "defaults = 3\n" + GOOD,
        1,
        "[defaults]",
        None,
        "expected a table, found an integer",
        "[defaults] once",
    ),
    ErrorCase(
        "missing-name",
        GOOD + '\n[[task]]\nrun = "x"\n',
        5,
        "task #2",
        "name",
        "missing name",
        'add name = "build-core"',
    ),
    ErrorCase(
        "missing-run",
        GOOD + '\n[[task]]\nname = "b"\n',
        5,
        "task 'b'",
        "run",
        "missing run",
        'add run = "make -C core"',
    ),
    ErrorCase(
        "empty-run",
        '[[task]]\nname = "a"\nrun = "  "\n',
        3,
        "task 'a'",
        "run",
        "must not be empty",
        "run =",
    ),
    ErrorCase(
        "run-as-array",
        '[[task]]\nname = "a"\nrun = ["make", "make test"]\n',
        3,
        "task 'a'",
        "run",
        "expected a string, found an array",
        'run = "make && make test"',
    ),
    ErrorCase(
        "bad-name",
        '[[task]]\nname = "build core"\nrun = "x"\n',
        2,
        "task #1",
        "name",
        "not a valid task name",
        'name = "build-core"',
    ),
    ErrorCase(
        "name-wrong-type",
        '[[task]]\nname = 3\nrun = "x"\n',
        2,
        "task #1",
        "name",
        "expected a string, found an integer (3)",
        "name =",
    ),
    ErrorCase(
        "duplicate-name",
        GOOD + "\n" + task_block("a"),
        6,
        "task 'a'",
        "name",
        "is used twice, at lines 2 and 6",
        'name = "a-2"',
    ),
    ErrorCase(
        "unknown-need",
        task_block("build-core") + "\n" + task_block("test", 'needs = ["biuld-core"]'),
        8,
        "task 'test'",
        "needs",
        "'biuld-core' is not a task in this file",
        "did you mean 'build-core'?",
    ),
    ErrorCase(
        "needs-itself",
        task_block("a", 'needs = ["a"]'),
        4,
        "task 'a'",
        "needs",
        "needs itself",
        "remove 'a'",
    ),
    ErrorCase(
        "needs-as-string",
        GOOD + task_block("b", 'needs = "a"'),
        7,
        "task 'b'",
        "needs",
        "expected an array of strings",
        'needs = ["a"]',
    ),
    ErrorCase(
        "cycle",
        task_block("a", 'needs = ["c"]')
        + task_block("b", 'needs = ["a"]')
        + task_block("c", 'needs = ["b"]'),
        4,
        "task 'a'",
        "needs",
        "dependency cycle a -> c -> b -> a",
        "remove 'a' from the needs of 'b' (line 8)",
    ),
    ErrorCase(
        "timeout-bad-string",
        task_block("a", 'timeout = "ten minutes"'),
        4,
        "task 'a'",
        "timeout",
        '"ten minutes" is not a positive duration',
        'timeout = "10m"',
    ),
    ErrorCase(
        "timeout-zero",
        task_block("a", "timeout = 0"),
        4,
        "task 'a'",
        "timeout",
        "not a positive duration",
        "a number of seconds",
    ),
    ErrorCase(
        "timeout-infinite",
        task_block("a", "timeout = inf"),
        4,
        "task 'a'",
        "timeout",
        "not a finite duration",
        'timeout = "10m"',
    ),
    ErrorCase(
        "timeout-in-defaults",
        '[defaults]\ntimeout = "15x"\n' + GOOD,
        2,
        "[defaults]",
        "timeout",
        "not a positive duration",
        'timeout = "10m"',
    ),
    ErrorCase(
        "weight-zero",
        task_block("a", "weight = 0"),
        4,
        "task 'a'",
        "weight",
        "at least 1",
        "weight = 1",
    ),
    ErrorCase(
        "weight-float",
        task_block("a", "weight = 1.5"),
        4,
        "task 'a'",
        "weight",
        "expected an integer of at least 1, found a float (1.5)",
        "weight = 2 (load units are whole)",
    ),
    ErrorCase(
        "weight-quoted",
        task_block("a", 'weight = "2"'),
        4,
        "task 'a'",
        "weight",
        "found a string",
        "weight = 2 (a number, without quotes)",
    ),
    ErrorCase(
        "retries-negative",
        task_block("a", "retries = -1"),
        4,
        "task 'a'",
        "retries",
        "0 or more",
        "retries = 0",
    ),
    ErrorCase(
        "retries-boolean",
        task_block("a", "retries = true"),
        4,
        "task 'a'",
        "retries",
        "found a boolean (true)",
        "retries = 1",
    ),
    ErrorCase(
        "labels-string",
        task_block("a", 'labels = "linux,arm"'),
        4,
        "task 'a'",
        "labels",
        "expected an array of strings",
        'labels = ["linux", "arm"]',
    ),
    ErrorCase(
        "labels-with-space",
        task_block("a", 'labels = ["linux arm"]'),
        4,
        "task 'a'",
        "labels",
        "contains a space or comma",
        '["linux", "arm"]',
    ),
    ErrorCase(
        "labels-not-string",
        task_block("a", "labels = [3]"),
        4,
        "task 'a'",
        "labels",
        "label #1 must be a string",
        'quote it: "3"',
    ),
    ErrorCase(
        "env-integer-value",
        task_block("a", "env = { JOBS = 4 }"),
        4,
        "task 'a'",
        "env",
        "env JOBS must be a string, found an integer (4)",
        'JOBS = "4"',
    ),
    ErrorCase(
        "env-boolean-value-in-subtable",
        task_block("a") + "[task.env]\nCI = true\n",
        4,
        "task 'a'",
        "env",
        "env CI must be a string, found a boolean",
        'CI = "true"',
    ),
    ErrorCase(
        "env-bad-name",
        task_block("a", 'env = { "MY-VAR" = "1" }'),
        4,
        "task 'a'",
        "env",
        "not an environment variable name",
        "letters, digits and '_'",
    ),
    ErrorCase(
        "env-not-a-table",
        '[defaults]\nenv = ["CC=gcc"]\n' + GOOD,
        2,
        "[defaults]",
        "env",
        "expected a table of strings",
        'env = { CC = "gcc" }',
    ),
    ErrorCase(
        "output-absolute",
        task_block("a", 'outputs = ["/etc/passwd"]'),
        4,
        "task 'a'",
        "outputs",
        "is an absolute path",
        '"etc/passwd"',
    ),
    ErrorCase(
        "output-home",
        task_block("a", 'outputs = ["~/x"]'),
        4,
        "task 'a'",
        "outputs",
        "is an absolute path",
        "relative to the task's working directory",
    ),
    ErrorCase(
        "output-dotdot",
        task_block("a", 'outputs = ["dist/../../secret"]'),
        4,
        "task 'a'",
        "outputs",
        "contains '..'",
        "inside the task's working directory",
    ),
    ErrorCase(
        "output-empty",
        task_block("a", 'outputs = ["dist/**", ""]'),
        4,
        "task 'a'",
        "outputs",
        "output #2 is empty",
        "remove the empty string",
    ),
    ErrorCase(
        "sync-path-absolute",
        '[sync]\npaths = ["/home/me/src"]\n' + GOOD,
        2,
        "[sync]",
        "paths",
        "is absolute",
        "relative to the directory of the task file",
    ),
    ErrorCase(
        "sync-path-escapes",
        '[sync]\npaths = ["src", "src/../../other"]\n' + GOOD,
        2,
        "[sync]",
        "paths",
        "leaves the directory of the task file",
        "move the task file up",
    ),
    ErrorCase(
        "sync-exclude-not-string",
        '[sync]\nexclude = ["*.o", 1]\n' + GOOD,
        2,
        "[sync]",
        "exclude",
        "pattern #2 must be a string",
        'quote it: "1"',
    ),
    # Bad input never reaches a host: a NUL cannot be in a command, an environment
    # variable or a file name (Popen refuses it there, on every host in turn).
    ErrorCase(
        "nul-in-run",
        '[[task]]\nname = "a"\nrun = "make\\u0000; rm -rf /"\n',
        3,
        "task 'a'",
        "run",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-env-value",
        task_block("a", 'env = { CC = "gcc\\u0000" }'),
        4,
        "task 'a'",
        "env",
        '"gcc\\u0000" contains a NUL character',
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-env-key",
        task_block("a", "[task.env]", '"C\\u0000C" = "gcc"'),
        4,
        "task 'a'",
        "env",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-default-env",
        '[defaults]\nenv = { CC = "\\u0000" }\n' + GOOD,
        2,
        "[defaults]",
        "env",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-name",
        '[[task]]\nname = "a\\u0000"\nrun = "true"\n',
        2,
        "task #1",
        "name",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "newline-ending-name",
        '[[task]]\nname = "a\\n"\nrun = "true"\n',
        2,
        "task #1",
        "name",
        "is not a valid task name",
        'name = "a"',
    ),
    ErrorCase(
        "newline-ending-env-name",
        task_block("a", 'env = { "CC\\n" = "gcc" }'),
        4,
        "task 'a'",
        "env",
        "is not an environment variable name",
        "letters, digits and '_'",
    ),
    ErrorCase(
        "nul-in-outputs",
        task_block("a", 'outputs = ["dist/\\u0000"]'),
        4,
        "task 'a'",
        "outputs",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "nul-in-sync-path",
        '[sync]\npaths = ["src\\u0000"]\n' + GOOD,
        2,
        "[sync]",
        "paths",
        "contains a NUL character",
        "remove the \\u0000 escape",
    ),
    ErrorCase(
        "weight-above-any-host",
        task_block("a", "weight = 99999999999999999"),
        4,
        "task 'a'",
        "weight",
        "more than any host can take (at most 1024 slots)",
        "weight = 2",
    ),
    ErrorCase(
        "retries-absurd",
        task_block("a", "retries = 1000000000"),
        4,
        "task 'a'",
        "retries",
        "at most 100",
        "retries = 2",
    ),
    ErrorCase(
        "retries-absurd-default",
        "[defaults]\nretries = 101\n" + GOOD,
        2,
        "[defaults]",
        "retries",
        "at most 100",
        "retries = 2",
    ),
    ErrorCase(
        "nested-too-deep-to-parse",
        "x = " + "[" * 5000 + "]" * 5000 + "\n" + GOOD,
        None,
        None,
        None,
        "not valid TOML: nested too deeply",
        "remove the extra nesting",
    ),
    ErrorCase(
        "nested-deep-but-parseable",
        GOOD + "[task.env" + ".A" * 5000 + "]\n",
        4,
        "task 'a'",
        "env",
        "env A must be a string, found a table ({...})",
        'write A = "..."',
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.id for case in ERROR_CASES])
def test_task_file_error_points_at_the_mistake(case: ErrorCase) -> None:
    with pytest.raises(TaskFileError) as caught:
        parse(case.toml)

    error = caught.value
    text = str(error)
    prefix = assert_points_at(error, case, SOURCE)
    if case.line is None:
        assert not re.match(rf"{re.escape(SOURCE)}:\d", text), f"expected no line in {text!r}"
    for part in (case.entry, case.key):
        if part is not None:
            prefix += f": {part}"
    assert error.message.startswith(prefix + ": "), (
        f"expected the message to start with {prefix!r}, got {error.message!r}"
    )


def test_cycle_names_every_member_in_order() -> None:
    text = (
        task_block("lint")
        + task_block("build", 'needs = ["lint", "package"]')
        + task_block("test", 'needs = ["build"]')
        + task_block("package", 'needs = ["test"]')
        + task_block("deploy", 'needs = ["package"]')
    )
    with pytest.raises(TaskFileError) as caught:
        parse(text)
    message = caught.value.message
    assert "build -> package -> test -> build" in message, message
    assert "lint" not in message and "deploy" not in message, message


def test_toml_error_at_end_of_document_still_has_a_line() -> None:
    with pytest.raises(TaskFileError) as caught:
        parse('[[task]]\nname = "a"\nname = "b"')
    assert re.match(r"tasks\.toml:\d+: not valid TOML", str(caught.value)), str(caught.value)


# --- reading the file ---------------------------------------------------------------


def test_load_tasks_reads_the_file_and_roots_sync_at_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "tasks.toml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)

    graph = load_tasks("ci/tasks.toml")

    assert graph.source == "ci/tasks.toml"
    assert graph.sync.root == tmp_path / "ci"
    assert graph.sync.root.is_absolute()
    assert list(graph.tasks) == ["a"]


def test_load_tasks_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(TaskFileError, match="no such file") as caught:
        load_tasks(missing)
    assert str(caught.value).startswith(str(missing) + ":")
    assert caught.value.fix is not None and "create it" in caught.value.fix

    with pytest.raises(TaskFileError, match="is a directory") as caught:
        load_tasks(tmp_path)
    assert caught.value.fix is not None and "tasks.toml" in caught.value.fix

    bad = tmp_path / "bad.toml"
    bad.write_text(task_block("a", "weight = 0"))
    with pytest.raises(TaskFileError) as caught:
        load_tasks(bad)
    assert str(caught.value).startswith(f"{bad}:4: task 'a': weight: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(GOOD)
    path.chmod(0)
    try:
        with pytest.raises(TaskFileError, match="cannot read the file"):
            load_tasks(path)
    finally:
        path.chmod(0o600)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_bytes(b'[[task]]\nname = "\xff"\n')
    with pytest.raises(TaskFileError) as caught:
        load_tasks(path)
    assert str(caught.value).startswith(f"{path}:2: not UTF-8")


# --- happy paths --------------------------------------------------------------------

FULL = """\
[defaults]
timeout = "15m"
retries = 1
labels = ["linux"]
env = { LANG = "C", CC = "cc" }

[sync]
paths = ["src", "./Makefile", "docs/"]
exclude = ["*.pyc", ".git"]

[[task]]
name = "lint"
run = "ruff check ."
timeout = 30
retries = 0
labels = []

[[task]]
name = "build-core"
run = "make -C core"
needs = ["lint", "lint"]
weight = 2
timeout = "1h30m"
env = { CC = "gcc" }
outputs = ["core/dist/**", "core/build.log"]

[[task]]
name = "test:core"
run = "pytest core"
needs = ["build-core"]
labels = ["linux", "x86_64"]

[task.env]
PYTHONHASHSEED = "0"
"""


def test_full_file() -> None:
    graph = parse(FULL)

    assert graph.source == SOURCE
    assert graph.sync == SyncSpec(
        root=ROOT,
        paths=("src", "Makefile", "docs"),
        exclude=(".git", ".meshrun", "*.pyc"),
    )
    assert list(graph.tasks) == ["lint", "build-core", "test:core"]
    assert graph.tasks["lint"] == Task(
        name="lint",
        run="ruff check .",
        timeout_s=30.0,
        retries=0,
        labels=frozenset(),  # a task's labels replace the default, so [] opts out
        env={"LANG": "C", "CC": "cc"},
    )
    assert graph.tasks["build-core"] == Task(
        name="build-core",
        run="make -C core",
        needs=("lint",),  # written twice, kept once
        weight=2,
        timeout_s=5400.0,
        retries=1,
        labels=frozenset({"linux"}),
        env={"LANG": "C", "CC": "gcc"},  # the task's env is merged over the default
        outputs=("core/dist/**", "core/build.log"),
    )
    test = graph.tasks["test:core"]
    assert test.timeout_s == 900.0
    assert test.labels == frozenset({"linux", "x86_64"})
    assert dict(test.env) == {"LANG": "C", "CC": "cc", "PYTHONHASHSEED": "0"}
    assert graph.lines == {"lint": 11, "build-core": 18, "test:core": 27}


def test_minimal_file_uses_the_built_in_defaults() -> None:
    graph = parse(GOOD)
    assert graph.tasks == {"a": Task(name="a", run="true")}
    task = graph.tasks["a"]
    assert (task.weight, task.timeout_s, task.retries, task.labels, dict(task.env)) == (
        1,
        None,
        0,
        frozenset(),
        {},
    )
    assert graph.sync == SyncSpec(root=ROOT, paths=(".",), exclude=BUILTIN_EXCLUDES)
    assert BUILTIN_EXCLUDES == (".git", ".meshrun")


def test_sync_paths_may_be_empty_and_exclude_adds_to_the_built_ins() -> None:
    graph = parse('[sync]\npaths = []\nexclude = ["node_modules/"]\n' + GOOD)
    assert graph.sync.paths == ()
    assert graph.sync.exclude == (".git", ".meshrun", "node_modules/")


def test_relative_root_becomes_absolute() -> None:
    graph = parse_tasks(GOOD, source="t.toml", root=Path("sub"))
    assert graph.sync.root == Path.cwd() / "sub"


def test_values_are_frozen_and_tasks_hashable() -> None:
    graph = parse(FULL)
    task = graph.tasks["build-core"]
    assert isinstance(task.env, MappingProxyType)
    assert isinstance(graph.tasks, MappingProxyType)
    with pytest.raises(TypeError):
        task.env["CC"] = "clang"  # type: ignore[index]
    assert len({task, graph.tasks["lint"], task}) == 2

    given_env = {"A": "1"}
    made = Task(name="x", run="y", env=given_env)
    given_env["A"] = "2"
    assert made.env == {"A": "1"}, "a Task must not share the caller's dict"


# --- the graph ----------------------------------------------------------------------

DIAMOND = (
    task_block("test", 'needs = ["build-a", "build-b"]')
    + task_block("build-b", 'needs = ["setup"]')
    + task_block("build-a", 'needs = ["setup"]')
    + task_block("setup")
    + task_block("docs")
)


def test_topological_order_is_stable_file_order_among_ready_tasks() -> None:
    graph = parse(DIAMOND)
    assert graph.topological_order() == ["setup", "build-b", "build-a", "test", "docs"]

    in_order = parse(task_block("a") + task_block("b") + task_block("c", 'needs = ["a"]'))
    assert in_order.topological_order() == ["a", "b", "c"], "file order if already valid"


def test_dependents_in_file_order() -> None:
    graph = parse(DIAMOND)
    assert graph.dependents("setup") == ("build-b", "build-a")
    assert graph.dependents("build-a") == ("test",)
    assert graph.dependents("test") == ()
    with pytest.raises(KeyError):
        graph.dependents("nope")


def test_critical_path_is_the_longest_chain() -> None:
    graph = parse(DIAMOND)
    expected = {"setup": 10.0, "build-a": 60.0, "build-b": 5.0, "test": 20.0, "docs": 85.0}
    assert graph.critical_path_s(expected) == 90.0  # setup + build-a + test
    expected["docs"] = 95.0
    assert graph.critical_path_s(expected) == 95.0  # one long task alone
    assert graph.critical_path_s({}) == 0.0, "unknown durations count as 0 (a lower bound)"
    assert graph.critical_path_s({"build-b": 7.5}) == 7.5
    with pytest.raises(ValueError, match="setup"):
        graph.critical_path_s({"setup": -1.0})


def test_subset_drops_needs_outside_it() -> None:
    graph = parse(DIAMOND)

    rerun = graph.subset(["docs", "test", "build-a"])

    assert list(rerun.tasks) == ["test", "build-a", "docs"], "file order, not argument order"
    assert rerun.tasks["test"].needs == ("build-a",), "build-b passed: treated as satisfied"
    assert rerun.tasks["build-a"].needs == (), "setup passed: treated as satisfied"
    assert rerun.topological_order() == ["build-a", "test", "docs"]
    assert rerun.dependents("build-a") == ("test",)
    assert rerun.sync == graph.sync and rerun.source == graph.source
    assert rerun.lines == {"test": 1, "build-a": 9, "docs": 16}
    assert graph.tasks["test"].needs == ("build-a", "build-b"), "the original is untouched"
    assert graph.subset([]).tasks == {}


def test_subset_of_unknown_names_suggests_the_closest() -> None:
    with pytest.raises(TaskFileError) as caught:
        parse(DIAMOND).subset(["tset"])
    assert "no task named 'tset'" in caught.value.message
    assert caught.value.fix is not None and "did you mean 'test'?" in caught.value.fix


def test_graph_built_by_hand_must_name_known_needs() -> None:
    with pytest.raises(ValueError, match="unknown"):
        TaskGraph(
            tasks={"a": Task(name="a", run="x", needs=("b",))},
            sync=SyncSpec(root=ROOT),
            source=None,
        )


# --- placement ----------------------------------------------------------------------

PLACEMENT = (
    task_block("plain")
    + task_block("gpu", 'labels = ["linux", "gpu"]')
    + task_block("both", 'labels = ["linux", "arm"]')
    + task_block("heavy", "weight = 8")
    + task_block("heavy-arm", "weight = 3", 'labels = ["arm"]')
)


def test_check_placeable_lists_every_task_no_host_can_run() -> None:
    hosts = [
        Host(name="x1", labels=frozenset({"linux", "x86_64"}), slots=4),
        Host(name="pi", labels=frozenset({"arm"}), slots=2),
    ]
    with pytest.raises(TaskFileError) as caught:
        check_placeable(parse(PLACEMENT), hosts)

    message, fix = caught.value.message, caught.value.fix or ""
    assert message.startswith("tasks.toml: 4 tasks cannot run on any host: "), message
    assert (
        "tasks.toml:4: task 'gpu': labels: needs label gpu, which no host carries "
        "(hosts carry: arm, linux, x86_64)"
    ) in message
    assert "tasks.toml:8: task 'both': labels: needs labels arm, linux on one host" in message
    assert "tasks.toml:12: task 'heavy': weight: weight 8 is more than any host can take " in (
        message
    )
    assert "(most slots: 4 on x1)" in message
    assert (
        "task 'heavy-arm': weight: weight 3 is more than any host with its labels can take "
        "(most slots: 2 on pi)"
    ) in message
    assert "plain" not in message
    assert "add the labels to a host" in fix and "slots = " in fix


def test_check_placeable_single_problem_uses_the_one_task_format() -> None:
    graph = parse(task_block("a") + task_block("gpu", 'labels = ["gpu"]'))
    with pytest.raises(TaskFileError) as caught:
        check_placeable(graph, [Host(name="h", slots=1)])
    assert caught.value.message.startswith("tasks.toml:4: task 'gpu': labels: "), str(caught.value)
    assert "(hosts carry: no labels)" in caught.value.message


def test_auto_slots_take_any_weight() -> None:
    graph = parse(PLACEMENT)
    hosts = [
        Host(name="big", labels=frozenset({"linux", "gpu", "arm"}), slots=None),
        Host(name="small", labels=frozenset({"linux"}), slots=1),
    ]
    check_placeable(graph, hosts)  # no error
    check_placeable(parse(task_block("a", "weight = 64")), [Host(name="local", local=True)])


def test_check_placeable_without_hosts() -> None:
    with pytest.raises(TaskFileError, match="no hosts"):
        check_placeable(parse(GOOD), [])


# --- properties ---------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """(file order, needs): task i may only need tasks of lower index, then shuffled."""
    count = draw(st.integers(min_value=1, max_value=12))
    names = [f"t{index}" for index in range(count)]
    needs = {
        name: draw(st.lists(st.sampled_from(names[:index]), unique=True)) if index else []
        for index, name in enumerate(names)
    }
    order = draw(st.permutations(names))
    return list(order), needs


def render(order: list[str], needs: dict[str, list[str]]) -> str:
    blocks = []
    for name in order:
        quoted = ", ".join(f'"{need}"' for need in needs[name])
        blocks.append(task_block(name, f"needs = [{quoted}]"))
    return "\n".join(blocks)


@settings(max_examples=200, deadline=None)
@given(dags())
def test_topological_order_puts_every_need_first(
    dag: tuple[list[str], dict[str, list[str]]],
) -> None:
    order, needs = dag
    graph = parse(render(order, needs))  # never raises for a DAG

    topo = graph.topological_order()

    assert sorted(topo) == sorted(order), "every task exactly once"
    position = {name: index for index, name in enumerate(topo)}
    for name, its_needs in needs.items():
        for need in its_needs:
            assert position[need] < position[name], f"{need} must come before {name}: {topo}"
        assert set(graph.tasks[name].needs) == set(its_needs)
        for need in its_needs:
            assert name in graph.dependents(need)
    if all(not its_needs for its_needs in needs.values()):
        assert topo == order, "no needs: file order"


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_is_reported_as_a_real_cycle(
    dag: tuple[list[str], dict[str, list[str]]], data: st.DataObject
) -> None:
    order, needs = dag
    count = len(order)
    if count < 2:
        return
    low = data.draw(st.integers(min_value=0, max_value=count - 2))
    high = data.draw(st.integers(min_value=low + 1, max_value=count - 1))
    for index in range(low + 1, high + 1):  # a chain t_high -> ... -> t_low of needs
        if f"t{index - 1}" not in needs[f"t{index}"]:
            needs[f"t{index}"].append(f"t{index - 1}")
    needs[f"t{low}"].append(f"t{high}")  # the back edge closes it

    with pytest.raises(TaskFileError) as caught:
        parse(render(order, needs))

    match = re.search(r"dependency cycle ((?:t\d+ -> )+t\d+)", caught.value.message)
    assert match, f"expected a cycle in {caught.value.message!r}"
    members = match.group(1).split(" -> ")
    assert members[0] == members[-1] and len(members) >= 3
    assert len(set(members[:-1])) == len(members) - 1, f"each member once: {members}"
    for name, need in itertools.pairwise(members):
        assert need in needs[name], f"{name} does not need {need}; cycle {members}"
    first = min(members, key=order.index)
    assert members[0] == first, "the cycle starts at its first task in the file"


def test_outputs_and_outputs_on_success_are_kept_apart() -> None:
    graph = parse(
        task_block(
            "test",
            'outputs = ["reports/test.xml"]',
            'outputs_on_success = ["dist/**", "dist/**"]',
        )
    )
    task = graph.tasks["test"]
    assert task.outputs == ("reports/test.xml",)
    assert task.outputs_on_success == ("dist/**",)  # duplicates dropped, as for outputs


def test_outputs_on_success_is_checked_like_outputs() -> None:
    with pytest.raises(TaskFileError, match=r"outputs_on_success.*absolute"):
        parse(task_block("a", 'outputs_on_success = ["/etc/passwd"]'))


def test_a_subset_remembers_the_needs_it_left_out() -> None:
    graph = parse(
        task_block("a")
        + task_block("b")
        + task_block("merge", 'needs = ["a", "b"]')
        + task_block("ship", 'needs = ["merge"]')
    )
    rerun = graph.subset(["merge", "ship"])
    assert rerun.tasks["merge"].needs == () and rerun.tasks["ship"].needs == ("merge",)
    assert dict(rerun.done_needs) == {"merge": ("a", "b")}
    assert dict(rerun.subset(["ship"]).done_needs) == {"ship": ("merge",)}

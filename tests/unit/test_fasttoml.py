"""The quick TOML reader (config/fasttoml.py) says what tomllib says, or passes.

Whatever text it is given, ``fasttoml.loads`` either returns exactly what
``tomllib.loads`` returns or raises ``Unsupported``; it never accepts a text tomllib
refuses. The quick task check of config/tasks.py gives the Task the full check gives.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrun.config import fasttoml
from meshrun.config.tasks import _Loader, _QuickTasks, parse_tasks

# Pieces of lines: the quick forms, their near misses, and what only tomllib reads.
_KEYS = st.sampled_from(["name", "run", "needs", "a-b", "x_1", "task", "defaults", '"q"', "a.b"])
_VALUES = st.sampled_from(
    [
        '"plain"',
        '""',
        '"with # hash"',
        '"esc\\"aped"',
        '"tab\there"',
        "'literal'",
        "'it#s'",
        "0",
        "7",
        "01",
        "-3",
        "+4",
        "1_000",
        "0x1F",
        "1.5",
        "inf",
        "true",
        "false",
        "truex",
        '["a", "b"]',
        '["a",]',
        "[,]",
        "[]",
        '[ "a" , "b" , ]',
        '["a", 1]',
        "[[1], [2]]",
        '{ CC = "gcc" }',
        "1979-05-27",
        "1979-05-27 07:32:00",
        '"""multi',
        '"""one"""',
        "[",
        '"unterminated',
        "",
        "bare",
        '"nul\x00"',
        '"line\u2028sep"',
        '"del\x7f"',
    ]
)
_SPACES = st.sampled_from(["", " ", "  ", "\t"])
_COMMENTS = st.sampled_from(["", "# c", " # c", "#", "# \x01", "# \u2028"])


@st.composite
def _key_value(draw: st.DrawFn) -> str:
    return (
        draw(_SPACES)
        + draw(_KEYS)
        + draw(_SPACES)
        + "="
        + draw(_SPACES)
        + draw(_VALUES)
        + draw(_SPACES)
        + draw(_COMMENTS)
    )


@st.composite
def _header(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["task", "defaults", "host", "sync", "task.env", "a b"]))
    opening, closing = draw(
        st.sampled_from([("[", "]"), ("[[", "]]"), ("[[", "]"), ("[", "]]"), ("[ [", "] ]")])
    )
    inner = draw(_SPACES)
    return draw(_SPACES) + opening + inner + name + inner + closing + draw(_COMMENTS)


_LINES = st.one_of(_key_value(), _header(), _COMMENTS, _SPACES, st.just('"""'), st.just("\r"))
_DOCUMENTS = st.tuples(
    st.lists(_LINES, max_size=12), st.sampled_from(["\n", "\r\n"]), st.booleans()
).map(lambda parts: parts[1].join(parts[0]) + (parts[1] if parts[2] else ""))


def _agrees(text: str) -> None:
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        expected = None
    try:
        found, _ = fasttoml.loads(text)
    except fasttoml.Unsupported:
        return
    assert expected is not None, f"accepted what tomllib refuses: {text!r}"
    assert found == expected
    assert [type(value) for value in found.values()] == [type(v) for v in expected.values()]


@settings(max_examples=500, deadline=None)
@given(_DOCUMENTS)
def test_says_what_tomllib_says_or_passes(text: str) -> None:
    _agrees(text)


@pytest.mark.parametrize(
    "text",
    [
        '[[task]]\nname = "a"\nrun = "x"\n\n[[task]]\nname = "b"\nneeds = ["a"]\n',
        '[defaults]\nretries = 1\nweight = 2\n[[host]]\nname = "h"\nlabels = []\n',
        "x = 1\n[x]\n",  # a key, then a table of its name
        "[a]\n[a]\n",
        "[a]\n[[a]]\n",
        "[[a]]\n[a]\n",
        "a = 1\na = 2\n",
        'a = "x"\r\nb = 2\r\n',
        'a = "x"\rb = 2\n',
        'a = "x"\r',
        "\ufeffa = 1\n",
        'env = { CC = "gcc" } # c\nt = "a\\tb"\n',
        "a = 'x' # c\n[[t]]\n",
        # the quick forms' edges: empty strings and arrays, a string that looks like one
        'a = ""\nb = []\nc = [""]\nd = "[x]"\n[[t]]\ne = ""\nf = ["", "y"]\n',
    ],
)
def test_known_cases(text: str) -> None:
    _agrees(text)


def test_quick_files_are_read_quickly() -> None:
    """The forms tasks and hosts are written in never fall back to tomllib."""
    text = '[defaults]\nretries = 1\n\n[[task]]\nname = "a"\nrun = "make"\nneeds = []\n'
    data, tables = fasttoml.loads(text)
    assert data == tomllib.loads(text)
    assert [(t.name, t.array, t.line) for t in tables] == [
        (None, False, 0),
        ("defaults", False, 1),
        ("task", True, 4),
    ]


def test_a_quick_line_count_mismatch_passes() -> None:
    """A line none of the forms matches makes the whole text Unsupported."""
    with pytest.raises(fasttoml.Unsupported):
        fasttoml.loads("a = 1\nthis is not toml\nb = 2\n")


# --- the quick task check gives the Task the full check gives ----------------------

_NAMES = st.sampled_from(["a", "build-core", "t.1", "x:y", "", " ", "-a", "a b", "a\x00"])
_RUNS = st.one_of(st.sampled_from(["true", "", "  ", "make\x00", "echo hi"]), st.integers(0, 2))
_NEEDS = st.one_of(
    st.lists(st.sampled_from(["a", "b", "", " ", "a\x00", "b"]), max_size=3),
    st.sampled_from(["a", 1]),
)


@st.composite
def _blocks(draw: st.DrawFn) -> dict[str, object]:
    block: dict[str, object] = {}
    if draw(st.booleans()):
        block["name"] = draw(_NAMES)
    if draw(st.booleans()):
        block["run"] = draw(_RUNS)
    if draw(st.booleans()):
        block["needs"] = draw(_NEEDS)
    if draw(st.booleans()):
        block["weight"] = 2
    return block


_DEFAULTS = st.sampled_from(
    [{}, {"retries": 2, "weight": 3, "timeout": 5.0, "labels": frozenset({"x"}), "env": {"A": "1"}}]
)


@settings(max_examples=300, deadline=None)
@given(_blocks(), _DEFAULTS)
def test_quick_task_is_the_full_check(
    block: dict[str, object], defaults: dict[str, object]
) -> None:
    quick = _QuickTasks(defaults).task(block)
    loader = _Loader("tasks.toml", Path("/p"))
    loader.parse("")
    try:
        full = loader._task(0, block, defaults)
    except Exception:
        assert quick is None  # every mistake is left to the full check
        return
    if quick is not None:
        assert quick == full
        assert type(quick.needs) is tuple


def test_a_graph_in_file_order_and_one_out_of_order_load_alike() -> None:
    forward = '[[task]]\nname = "a"\nrun = "x"\n[[task]]\nname = "b"\nrun = "y"\nneeds = ["a"]\n'
    backward = '[[task]]\nname = "b"\nrun = "y"\nneeds = ["a"]\n[[task]]\nname = "a"\nrun = "x"\n'
    for text in (forward, backward):
        graph = parse_tasks(text, source="tasks.toml", root=Path("/p"))
        assert graph.topological_order() == ["a", "b"]

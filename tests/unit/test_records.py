"""``@record`` behaves as ``@dataclass`` does, and the start path uses no ``@dataclass``."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

from meshrun.records import record


@record
class Point:
    """A frozen record with defaults of every kind."""

    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list, compare=False, repr=False)
    label: str = field(default="p", kw_only=True)


@dataclass(frozen=True, slots=True)
class PointDC:
    """The same class as a compiled dataclass."""

    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list, compare=False, repr=False)
    label: str = field(default="p", kw_only=True)


@record(frozen=False)
class Counter:
    """A mutable record with a derived field."""

    name: str
    count: int = 0
    total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total = self.count * 2


@pytest.mark.parametrize("cls", [Point, PointDC])
def test_construction_matches_dataclass(cls: type) -> None:
    p = cls(1, 2, ("a",), label="q")
    assert (p.x, p.y, p.tags, p.notes, p.label) == (1, 2, ("a",), [], "q")
    assert cls(x=3).y == 0
    assert cls(1).notes is not cls(1).notes  # a fresh list each time
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        cls(1, x=1)
    with pytest.raises(TypeError):
        cls(1, 2, (), [], "too many")
    with pytest.raises(TypeError):
        cls(1, nope=2)


def test_methods_match_dataclass() -> None:
    a, b = Point(1, 2, label="z"), PointDC(1, 2, label="z")
    assert repr(a).replace("Point", "PointDC") == repr(b)
    assert Point(1, notes=["x"]) == Point(1, notes=["y"])  # compare=False
    assert Point(1) != Point(2)
    assert Point(1) != PointDC(1)  # another class is never equal
    assert hash(Point(1, 2)) == hash(Point(1, 2, notes=["ignored"]))
    assert hash(Point(1, 2)) == hash(PointDC(1, 2))  # the same tuple is hashed
    assert {Point(1), Point(1)} == {Point(1)}
    assert Point.__match_args__ == PointDC.__match_args__
    assert str(inspect.signature(Point)) == str(inspect.signature(PointDC))


def test_frozen_everywhere() -> None:
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.x  # type: ignore[misc]
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    assert pickle.loads(pickle.dumps(p)) == p
    assert not hasattr(p, "__dict__")  # slots by default


def test_dataclass_functions_work() -> None:
    p = Point(1, 2)
    assert dataclasses.is_dataclass(p)
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "tags", "notes", "label"]
    assert dataclasses.replace(p, y=5) == Point(1, 5)
    assert dataclasses.asdict(p) == {"x": 1, "y": 2, "tags": (), "notes": [], "label": "p"}
    assert dataclasses.astuple(p) == (1, 2, (), [], "p")


def test_mutable_record() -> None:
    c = Counter("n", 3)
    assert c.total == 6  # __post_init__ ran, init=False field set first
    c.count = 4
    assert c != Counter("n", 4)  # total is compared: 6 here, 8 there
    c.total = 8
    assert c == Counter("n", 4)
    with pytest.raises(TypeError):
        hash(c)  # mutable with eq: unhashable, as @dataclass
    with pytest.raises(TypeError):
        Counter("n", total=1)  # type: ignore[call-arg]


def test_initvar_refused() -> None:
    with pytest.raises(TypeError, match="InitVar"):

        @record
        class Bad:
            x: dataclasses.InitVar[int]


def test_start_path_compiles_no_dataclass() -> None:
    """Every class `meshrun exec` imports is a @record: importing the CLI, the SSH
    transport and run recording compiles no dataclass method of meshrun's (the 29 ms
    this module saves)."""
    probe = textwrap.dedent(
        """
        import dataclasses, sys
        compiled = []
        real = dataclasses._process_class
        def spy(cls, init, repr, eq, order, unsafe_hash, frozen, *rest):
            if cls.__module__.startswith("meshrun") and (init or repr or eq or frozen):
                compiled.append(cls.__module__ + "." + cls.__qualname__)
            return real(cls, init, repr, eq, order, unsafe_hash, frozen, *rest)
        dataclasses._process_class = spy
        import meshrun.cli, meshrun.pulls, meshrun.transport.ssh
        print("\\n".join(compiled))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [], f"use @record (meshrun.records) for these: {out}"

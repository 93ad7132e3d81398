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
from pathlib import Path

import pytest

from meshrun import records
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
    check_construction(cls)


def check_construction(cls: type) -> None:
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
    check_mutable(Counter)


def check_mutable(cls: type[Counter]) -> None:
    c = cls("n", 3)
    assert c.total == 6  # __post_init__ ran, init=False field set first
    c.count = 4
    assert c != cls("n", 4)  # total is compared: 6 here, 8 there
    c.total = 8
    assert c == cls("n", 4)
    with pytest.raises(TypeError):
        hash(c)  # mutable with eq: unhashable, as @dataclass
    with pytest.raises(TypeError):
        cls("n", total=1)  # type: ignore[call-arg]


def test_initvar_refused() -> None:
    with pytest.raises(TypeError, match="InitVar"):

        @record
        class Bad:
            x: dataclasses.InitVar[int]


def test_start_path_compiles_no_dataclass() -> None:
    """Every class `meshrun exec` and `meshrun dispatch` import is a @record: importing
    them compiles no dataclass method of meshrun's (the 29 and 47 ms this module saves)."""
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
        import meshrun.cli.app, meshrun.fleet.record, meshrun.transport.ssh, meshrun.dispatch.run
        import meshrun.dispatch.executor, meshrun.integrity.manifest
        import meshrun.dispatch.staging, meshrun.workspace.push
        print("\\n".join(compiled))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [], f"use @record (meshrun.records) for these: {out}"


def test_inheritance() -> None:
    @record(kw_only=True)
    class Base:
        a: int
        b: int = 1

    @record(kw_only=True)
    class Child(Base):
        c: str

    child = Child(a=1, c="x")
    assert (child.a, child.b, child.c) == (1, 1, "x")
    assert [f.name for f in dataclasses.fields(child)] == ["a", "b", "c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.a = 2  # type: ignore[misc]
    assert Child(a=1, c="x") == child and Base(a=1) != child
    with pytest.raises(TypeError, match="cannot mix"):

        @record(frozen=False)
        class Mutable(Base):
            d: int = 0


def test_a_hot_class_gets_a_compiled_init_that_behaves_the_same() -> None:
    @record
    class HotPoint:
        x: int
        y: int = 0
        tags: tuple[str, ...] = ()
        notes: list[str] = field(default_factory=list, compare=False, repr=False)
        label: str = field(default="p", kw_only=True)

    @record(frozen=False)
    class HotCounter(Counter):
        pass

    generic = HotPoint.__init__
    for _ in range(records.COMPILE_AFTER):
        HotPoint(0)
        HotCounter("warm")
    assert HotPoint.__init__ is not generic
    assert "args" not in HotPoint.__init__.__code__.co_varnames  # the compiled one
    check_construction(HotPoint)
    check_mutable(HotCounter)
    assert HotPoint(1).notes is not HotPoint(1).notes
    assert str(inspect.signature(HotPoint)) == str(inspect.signature(PointDC))


def test_required_after_default_refused() -> None:
    with pytest.raises(TypeError, match="non-default"):

        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_the_package_uses_record_not_dataclass() -> None:
    """One way to write a record in meshrun (the agent script shipped to hosts has none)."""
    package = Path(records.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "records.py" and "\n@dataclass" in path.read_text()
    ]
    assert offenders == [], f"use @record (meshrun.records) in: {offenders}"

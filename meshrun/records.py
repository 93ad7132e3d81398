"""``@record``: a dataclass whose methods are not compiled at import.

Why: ``@dataclass`` writes ``__init__``, ``__repr__``, ``__eq__``, ``__hash__`` and the
frozen ``__setattr__``/``__delattr__`` as source text and compiles each with ``exec``:
about 0.8 ms per frozen class. The 37 classes that every ``meshrun exec`` imports cost
29 ms that way, a tenth of the whole run on 8 hosts (117 ms of imports); ``dispatch``
imports 93, 47 ms. ``@record`` lets ``dataclasses`` collect the fields
(``fields()``, ``replace()``, ``asdict()`` and type checkers keep working) and attaches
ready-made methods that read those fields instead; building a class costs ~0.05 ms.

The price was per call (a generic ``__init__`` is ~1 µs slower), so a class whose
instances pass ``COMPILE_AFTER`` gets the ``__init__`` @dataclass would have written,
compiled then: the start path never compiles, a scheduler's per-task events run at
@dataclass speed. ``tests/unit/test_records.py`` checks both paths against @dataclass
and keeps every command's start free of compiled dataclasses.

Semantics follow ``@dataclass``: positional and keyword arguments in field order,
``kw_only``, ``default``/``default_factory``, ``init=False``, ``repr=False``,
``compare=False``, ``hash=``, ``__post_init__``, frozen instances (also through ``copy``
and ``pickle``), unhashable when mutable with ``eq``. ``InitVar`` is not supported.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError
from operator import attrgetter
from typing import Any, TypeVar, cast, dataclass_transform, overload

_T = TypeVar("_T", bound=type)
_set = object.__setattr__

#: Instances of one class after which its ``__init__`` is compiled as @dataclass's is:
#: the start path never gets there, a scheduler's per-task events do (at full speed).
COMPILE_AFTER = 64


@overload
def record(cls: _T, /) -> _T: ...


@overload
def record(
    *, frozen: bool = True, eq: bool = True, slots: bool = True, kw_only: bool = False
) -> Callable[[_T], _T]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(
    cls: _T | None = None,
    /,
    *,
    frozen: bool = True,
    eq: bool = True,
    slots: bool = True,
    kw_only: bool = False,
) -> _T | Callable[[_T], _T]:
    """Make ``cls`` a dataclass (frozen, with ``__slots__``, unless told otherwise)."""

    def wrap(c: _T) -> _T:
        return _build(c, frozen=frozen, eq=eq, slots=slots, kw_only=kw_only)

    return wrap if cls is None else wrap(cls)


def _tuple_getter(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    if not names:
        return lambda _obj: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def _build(original: _T, *, frozen: bool, eq: bool, slots: bool, kw_only: bool) -> _T:
    undocumented = not original.__doc__
    if undocumented:
        original.__doc__ = "-"  # else @dataclass asks inspect for a signature: set below
    cls: Any = dataclasses.dataclass(  # collects the fields only: nothing compiled
        original, init=False, repr=False, eq=False, frozen=False, slots=slots, kw_only=kw_only
    )
    for base in cls.__mro__[1:]:
        if getattr(base, "__record_frozen__", frozen) != frozen:  # as @dataclass refuses
            raise TypeError(f"{cls.__qualname__}: frozen and mutable records cannot mix")
    fields = dataclasses.fields(cls)
    if len(fields) != len(cls.__dataclass_fields__):
        raise TypeError(f"{cls.__qualname__}: @record does not support InitVar")
    name = cls.__name__
    # The order @dataclass's __init__ takes them in: keyword-only fields last.
    init = [f for f in fields if f.init and not f.kw_only] + [
        f for f in fields if f.init and f.kw_only
    ]
    positional = tuple(f.name for f in init if not f.kw_only)
    assign = tuple((f.name, f.default, f.default_factory) for f in init)
    derived = tuple((f.name, f.default, f.default_factory) for f in fields if not f.init)
    post_init = hasattr(cls, "__post_init__")

    calls = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == COMPILE_AFTER:  # a hot class: from now on, @dataclass's own speed
            compiled = _compile_init(cls, init, derived, post_init)
            compiled.__signature__ = signature  # type: ignore[attr-defined]
            cls.__init__ = compiled
        if len(args) > len(positional):
            raise TypeError(
                f"{name}() takes {len(positional)} positional arguments but {len(args)} were given"
            )
        for field_name, value in zip(positional, args, strict=False):
            if field_name in kwargs:
                raise TypeError(f"{name}() got multiple values for argument {field_name!r}")
            kwargs[field_name] = value
        for field_name, default, factory in assign:
            if field_name in kwargs:
                _set(self, field_name, kwargs.pop(field_name))
            elif default is not MISSING:
                _set(self, field_name, default)
            elif factory is not MISSING:
                _set(self, field_name, factory())
            else:
                raise TypeError(f"{name}() missing required argument: {field_name!r}")
        if kwargs:
            raise TypeError(f"{name}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        for field_name, default, factory in derived:
            if default is not MISSING:
                _set(self, field_name, default)
            elif factory is not MISSING:
                _set(self, field_name, factory())
        if post_init:
            self.__post_init__()

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    try:
        signature = _signature(init)
    except ValueError as exc:  # a required field after one with a default
        raise TypeError(f"{cls.__qualname__}: {exc}") from None
    __init__.__signature__ = signature  # type: ignore[attr-defined]
    cls.__init__ = __init__
    if undocumented:  # as @dataclass writes it
        shown_signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        cls.__doc__ = name + str(shown_signature).replace(" -> None", "")

    shown = tuple(f.name for f in fields if f.repr)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{type(self).__qualname__}({inner})"

    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__

    if eq:
        compared = _tuple_getter(tuple(f.name for f in fields if f.compare))

        def __eq__(self: Any, other: object) -> bool:
            if other.__class__ is self.__class__:
                return compared(self) == compared(other)
            return NotImplemented

        cls.__eq__ = __eq__
        if "__hash__" in cls.__dict__ and cls.__dict__["__hash__"] is not None:
            pass  # the class wrote its own
        elif frozen:
            hashed = _tuple_getter(
                tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
            )

            def __hash__(self: Any) -> int:
                return hash(hashed(self))

            cls.__hash__ = __hash__
        else:
            cls.__hash__ = None

    if frozen:
        names = frozenset(f.name for f in fields)
        everything = tuple(f.name for f in fields)

        def __setattr__(self: Any, attr: str, value: object) -> None:
            if type(self) is cls or attr in names:
                raise FrozenInstanceError(f"cannot assign to field {attr!r}")
            _set(self, attr, value)

        def __delattr__(self: Any, attr: str) -> None:
            if type(self) is cls or attr in names:
                raise FrozenInstanceError(f"cannot delete field {attr!r}")
            object.__delattr__(self, attr)

        def __getstate__(self: Any) -> list[Any]:
            return [getattr(self, n) for n in everything]

        def __setstate__(self: Any, state: list[Any]) -> None:
            for attr, value in zip(everything, state, strict=True):
                _set(self, attr, value)

        cls.__setattr__ = __setattr__
        cls.__delattr__ = __delattr__
        cls.__getstate__ = __getstate__
        cls.__setstate__ = __setstate__
    setattr(cls, "__match_args__", positional)  # noqa: B010 (mypy: not assignable)
    cls.__record_frozen__ = frozen
    return cast(_T, cls)


def _compile_init(
    cls: Any,
    init: list[dataclasses.Field[Any]],
    derived: tuple[tuple[str, Any, Any], ...],
    post_init: bool,
) -> Callable[..., None]:
    """The ``__init__`` @dataclass would write for ``cls``, compiled (once, when hot)."""
    env: dict[str, Any] = {"_set": _set, "_FACTORY": _FACTORY}
    params, body = [], []
    for i, f in enumerate(init):
        if f.kw_only and (i == 0 or not init[i - 1].kw_only):
            params.append("*")
        if f.default is not MISSING:
            env[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
            body.append(f"_set(self, {f.name!r}, {f.name})")
        elif f.default_factory is not MISSING:
            env[f"_f{i}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            body.append(f"_set(self, {f.name!r}, _f{i}() if {f.name} is _FACTORY else {f.name})")
        else:
            params.append(f.name)
            body.append(f"_set(self, {f.name!r}, {f.name})")
    for j, (field_name, default, factory) in enumerate(derived):
        if default is not MISSING:
            env[f"_e{j}"] = default
            body.append(f"_set(self, {field_name!r}, _e{j})")
        elif factory is not MISSING:
            env[f"_e{j}"] = factory
            body.append(f"_set(self, {field_name!r}, _e{j}())")
    if post_init:
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, env)
    function: Callable[..., None] = env["__init__"]
    function.__qualname__ = f"{cls.__qualname__}.__init__"
    return function


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()  # as @dataclass shows a default_factory in signatures


def _signature(init: list[dataclasses.Field[Any]]) -> inspect.Signature:
    """What ``inspect.signature(cls)`` reports (help(), IDEs, hypothesis' ``builds``)."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in init:
        kind = (
            inspect.Parameter.KEYWORD_ONLY if f.kw_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        default: Any = inspect.Parameter.empty
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = _FACTORY
        params.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
    return inspect.Signature(params, return_annotation=None)


__all__ = ["record"]

"""``meshrun``'s exports: one curated list, kept in step with what the package defines.

``meshrun/__init__.py`` names each export three times (an import or a ``_LAZY`` entry,
the ``TYPE_CHECKING`` import for type checkers, ``__all__``); these tests make the three
agree, as httpx's exported-members test does for its package.
"""

import ast
import subprocess
import sys
import types
from pathlib import Path

import meshrun

INIT = Path(meshrun.__file__)


def _type_checking_imports() -> dict[str, str]:
    """name -> module of every import under ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module:
                    found.update((alias.asname or alias.name, stmt.module) for alias in stmt.names)
    return found


def _eager_names() -> set[str]:
    """Names ``import meshrun`` binds by importing them at module level."""
    names: set[str] = set()
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meshrun"):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def test_all_is_sorted_and_unique() -> None:
    assert meshrun.__all__ == sorted(set(meshrun.__all__))


def test_all_lists_exactly_the_eager_and_the_lazy_names() -> None:
    exported = _eager_names() | set(meshrun._LAZY) | {"__version__"}
    assert set(meshrun.__all__) == exported


def test_type_checkers_see_the_lazy_names_from_the_same_modules() -> None:
    assert _type_checking_imports() == meshrun._LAZY


def test_every_export_resolves_to_something_meshrun_defines() -> None:
    for name in meshrun.__all__:
        value = getattr(meshrun, name)
        assert not isinstance(value, types.ModuleType), f"{name}: a whole module is exported"
        if name == "__version__" or hasattr(value, "__args__"):  # a type alias (a Union)
            continue
        module = getattr(value, "__module__", None)
        assert module is not None and module.startswith("meshrun."), f"{name}: from {module}"
        lazy = meshrun._LAZY.get(name, module)
        assert module == lazy or module.startswith(lazy + "."), f"{name}: from {module}?"


def test_nothing_public_in_the_namespace_is_left_out() -> None:
    for name in meshrun.__all__:  # load the lazy ones too
        getattr(meshrun, name)
    public = {
        name
        for name, value in vars(meshrun).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"TYPE_CHECKING", "Any", "importlib"} <= set(meshrun.__all__)


def test_lazy_names_load_nothing_until_used() -> None:
    """``import meshrun`` (what ``meshrun exec`` pays for) leaves the dispatch side, the
    manifest's crypto, discovery and the SSH transport unloaded."""
    eager = {
        node.module
        for node in ast.parse(INIT.read_text()).body
        if isinstance(node, ast.ImportFrom) and node.module
    }
    # A lazy name's module may be a package an eager module sits in (loaded with it).
    lazy = {m for m in meshrun._LAZY.values() if not any(e.startswith(m + ".") for e in eager)}
    heavy = sorted(lazy - eager | {"paramiko", "zeroconf", "cryptography"})
    code = f"import sys, meshrun; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

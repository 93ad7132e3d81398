"""The dependency rules of docs/ARCHITECTURE.md, checked on the source.

Every import counts, at module level, in a function (imported late for start-up time)
or under ``TYPE_CHECKING``: a late import is still a dependency.
"""

import ast
import importlib.util
from pathlib import Path

import meshrun

PACKAGE = Path(meshrun.__file__).parent

#: The layers, lowest first: a module may import its own layer and the ones below.
#: The public API (``meshrun/__init__.py``) sits above every feature; only the CLI
#: (and the test fleet) stand on it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "meshrun.errors",
            "meshrun.records",
            "meshrun.resources",
            "meshrun.rundir",
            "meshrun.runid",
            "meshrun.stopsignals",
            "meshrun.version",
        ),
    ),
    ("config", ("meshrun.config",)),
    ("transport", ("meshrun.transport",)),
    ("integrity", ("meshrun.integrity",)),
    ("agent", ("meshrun.agent", "meshrun.discovery")),
    ("workspace", ("meshrun.workspace", "meshrun.fleet")),
    ("dispatch", ("meshrun.dispatch",)),
    ("library", ("meshrun.api",)),
    ("api", ("meshrun",)),
    ("interop", ("meshrun.fabric",)),
    ("cli", ("meshrun.cli", "meshrun.testing", "meshrun.__main__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The rank of ``module`` in LAYERS (its longest matching prefix)."""
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer of LAYERS"
    return rank


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from pkg import sub`` counts as ``pkg.sub``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            inner = {s for s in subs if s.startswith("meshrun.") and is_module(s)}
            names.update(inner)
            if inner != subs or not inner:
                names.add(node.module)
    return names


def meshrun_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        own = module_name(path)
        graph[own] = {
            n for n in imports_of(path) if (n == "meshrun" or n.startswith("meshrun.")) and n != own
        }
    return graph


def test_every_import_goes_down_the_layers() -> None:
    offenders = [
        f"{own} ({LAYERS[layer_of(own)][0]}) imports {name} ({LAYERS[layer_of(name)][0]})"
        for own, names in meshrun_graph().items()
        for name in sorted(names)
        if layer_of(name) > layer_of(own)
    ]
    assert offenders == [], "imports that go up a layer:\n" + "\n".join(offenders)


def test_no_import_circles() -> None:
    """No module reaches itself through its imports (a package's ``__init__`` re-exporting
    its own modules is not a circle: those modules never import the package back)."""
    graph = meshrun_graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_cli_stands_on_the_public_api() -> None:
    """``meshrun/cli/`` reaches features only through ``meshrun``'s exports; beside them
    it may use its own modules and the base layer's utilities."""
    allowed = ("meshrun.cli", "meshrun.config.hostlist", "meshrun.transport.capture")
    offenders = [
        f"{own} imports {name}"
        for own, names in meshrun_graph().items()
        if own.startswith("meshrun.cli")
        for name in sorted(names)
        if name != "meshrun"
        and layer_of(name) != 0
        and not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert offenders == [], "the CLI reaches past meshrun's exports:\n" + "\n".join(offenders)


def test_only_the_transport_package_imports_paramiko() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "transport" not in path.parts
        and any(n.split(".")[0] == "paramiko" for n in imports_of(path))
    ]
    assert offenders == [], f"paramiko imported outside meshrun/transport: {offenders}"


def test_importing_meshrun_does_not_import_paramiko() -> None:
    import subprocess
    import sys

    code = "import sys, meshrun, meshrun.cli.app; print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "paramiko must be imported lazily (startup time)"


def test_the_scheduler_is_pure() -> None:
    """The scheduler reads the task graph and answers with decisions: no I/O, no
    threads, no clock, nothing of meshrun but the graph's model and records."""
    forbidden = {"threading", "socket", "time", "subprocess", "asyncio", "selectors", "os"}
    allowed = ("meshrun.dispatch.scheduler", "meshrun.config", "meshrun.records", "meshrun.errors")
    offenders = []
    for path in (PACKAGE / "dispatch" / "scheduler").rglob("*.py"):
        for name in imports_of(path):
            outside = name.startswith("meshrun") and not name.startswith(allowed)
            if name.split(".")[0] in forbidden or outside:
                offenders.append(f"{path.name}: {name}")
    assert offenders == [], f"the scheduler must stay pure (no I/O, threads, clock): {offenders}"


def test_fabric_is_an_optional_extra_loaded_only_by_meshrun_fabric() -> None:
    """Only ``meshrun/fabric/`` imports Fabric; it is the ``fabric`` extra (and bench's),
    not in what `pip install meshrun` pulls in, and neither `import meshrun` nor the
    CLI loads it (nor ``meshrun.fabric``)."""
    import subprocess
    import sys
    import tomllib

    importers = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "fabric" not in path.relative_to(PACKAGE).parts[:1]
        and any(n.split(".")[0] == "fabric" for n in imports_of(path))
    ]
    assert importers == []
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split(">")[0].strip() == "fabric"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("fabric") for d in extras["fabric"])
    assert any(d.startswith("fabric") for d in extras["bench"])
    code = (
        "import sys, meshrun, meshrun.cli.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fabric', 'invoke')"
        " or m.startswith('meshrun.fabric')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

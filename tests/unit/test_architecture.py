"""The dependency rules of docs/ARCHITECTURE.md, checked on the source."""

import ast
from pathlib import Path

import meshrun

PACKAGE = Path(meshrun.__file__).parent


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_transport_package_imports_paramiko_or_fabric() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "transport" not in path.parts
        and any(n.split(".")[0] in {"paramiko", "fabric"} for n in imports_of(path))
    ]
    assert offenders == [], f"paramiko/fabric imported outside meshrun/transport: {offenders}"


def test_cli_uses_only_the_public_api() -> None:
    cli = PACKAGE / "cli" / "app.py"
    internal = sorted(n for n in imports_of(cli) if n.startswith("meshrun.") and n != "meshrun")
    assert internal == [], f"cli.py reaches past meshrun's exports: {internal}"


def test_importing_meshrun_does_not_import_paramiko() -> None:
    import subprocess
    import sys

    code = "import sys, meshrun, meshrun.cli.app; print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "paramiko must be imported lazily (startup time)"


def test_the_scheduler_is_pure() -> None:
    forbidden = {"threading", "socket", "time", "subprocess", "asyncio", "selectors"}
    forbidden_meshrun = (
        "meshrun.transport",
        "meshrun.dispatch.executor",
        "meshrun.cli.app",
        "meshrun.agent",
        "meshrun.dispatch.run",
        "meshrun.dispatch.history",
    )
    offenders = []
    for path in (PACKAGE / "dispatch" / "scheduler").rglob("*.py"):
        for name in imports_of(path):
            if name.split(".")[0] in forbidden or name.startswith(forbidden_meshrun):
                offenders.append(f"{path.name}: {name}")
    assert offenders == [], f"the scheduler must stay pure (no I/O, threads, clock): {offenders}"


def test_fabric_is_no_runtime_dependency() -> None:
    """Nothing in meshrun imports Fabric (only bench/ compares with it): it is in the
    `bench` extra, not in what `pip install meshrun` pulls in, and `import meshrun`
    never loads it."""
    import subprocess
    import sys
    import tomllib

    importers = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(n.split(".")[0] == "fabric" for n in imports_of(path))
    ]
    assert importers == []
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split(">")[0].strip() == "fabric"]
    assert any(d.startswith("fabric") for d in project["optional-dependencies"]["bench"])
    code = "import sys, meshrun, meshrun.cli.app; print('fabric' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

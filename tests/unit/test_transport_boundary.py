"""One transport boundary, checked on the source: above ``meshrun/transport/``, code holds
a Connector or a Connection and uses what their protocols offer (commands, the host's
home, rsync, file sessions, files got and put). It never imports paramiko nor names its
errors (they are meshrun's own by then), never asks which connector it holds, and never
reaches for the SSH transport under a connection."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

import meshrun

PACKAGE = Path(meshrun.__file__).parent
TRANSPORT = PACKAGE / "transport"

#: Every exception class paramiko exports (SSHException, ChannelException, SFTPError, ...).
PARAMIKO_ERRORS = frozenset(
    name
    for name in dir(paramiko)
    if isinstance(getattr(paramiko, name), type)
    and issubclass(getattr(paramiko, name), BaseException)
)

#: The connector and connection classes: what code outside must not tell apart.
IMPLEMENTATIONS = frozenset({"SSHConnector", "SSHConnection", "LocalConnector", "LocalConnection"})

Finding = tuple[int, str]


def named(node: ast.AST) -> str | None:
    """The name an expression ends in: ``x`` for ``x`` and for ``a.b.x``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def paramiko_mentions(tree: ast.AST) -> list[Finding]:
    """``import paramiko``, ``from paramiko... import``, ``paramiko.X`` and any name of
    one of its exceptions (``except SSHException``, ``paramiko.ChannelException``)."""
    found: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] == "paramiko"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "paramiko":
            found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Name | ast.Attribute):
            name = named(node)
            if name == "paramiko" or name in PARAMIKO_ERRORS:
                found.append((node.lineno, str(name)))
    return found


def connector_type_tests(tree: ast.AST) -> list[Finding]:
    """``isinstance(x, SSHConnector)`` and the like (a tuple of classes too)."""
    found: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and named(node.func) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1]
            for kind in kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]:
                if named(kind) in IMPLEMENTATIONS:
                    found.append((node.lineno, f"isinstance(..., {named(kind)})"))
    return found


def transport_reads(tree: ast.AST) -> list[Finding]:
    """``conn.transport`` (SSHConnection's paramiko Transport). ``meshrun.transport``, the
    package in a dotted module path, is no such read."""
    return [
        (node.lineno, ".transport")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "transport"
        and not (isinstance(node.value, ast.Name) and node.value.id == "meshrun")
    ]


CHECKS: dict[str, Callable[[ast.AST], list[Finding]]] = {
    "names paramiko or its errors": paramiko_mentions,
    "asks which connector it holds": connector_type_tests,
    "reads a connection's transport": transport_reads,
}


def outside_transport() -> Iterator[tuple[str, ast.AST]]:
    """(path, tree) of every module of the package outside ``meshrun/transport/``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if TRANSPORT not in path.parents:
            yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text(), str(path))


@pytest.mark.parametrize("what", list(CHECKS))
def test_no_module_outside_the_transport(what: str) -> None:
    offenders = [
        f"{where}:{line}: {text}"
        for where, tree in outside_transport()
        for line, text in CHECKS[what](tree)
    ]
    assert offenders == [], f"outside meshrun/transport, code that {what}:\n" + "\n".join(offenders)


def test_the_checks_find_what_they_look_for() -> None:
    source = """
import paramiko
import paramiko.sftp_client as sc
from paramiko import SFTPClient
from meshrun.transport import rsync
import meshrun.transport.base

def f(connector, conn):
    try:
        conn.open_files()
    except (SSHException, paramiko.ChannelException):
        pass
    if isinstance(connector, SSHConnector) or isinstance(conn, (int, ssh.LocalConnection)):
        return conn.transport.open_session()
    return meshrun.transport.base
"""
    tree = ast.parse(source)
    assert [text for _, text in paramiko_mentions(tree)] == [
        "import paramiko",
        "import paramiko.sftp_client",
        "from paramiko import",
        "SSHException",
        "ChannelException",
        "paramiko",
    ]
    assert [line for line, _ in connector_type_tests(tree)] == [13, 13]
    assert transport_reads(tree) == [(14, ".transport")]
    assert {"SSHException", "ChannelException", "SFTPError"} <= PARAMIKO_ERRORS

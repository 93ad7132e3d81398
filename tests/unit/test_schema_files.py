"""The published JSON Schemas (schemas/ at the repository root) are sound, complete and
match what the document builders produce.

Sound: each is a valid 2020-12 schema with a stable ``$id`` and every ``$ref`` resolves
offline. Complete: every command with ``--json`` has one, every object says
``additionalProperties: false`` and every field has a description. Matching: documents
the pure builders make from synthetic reports (every status, outcome and null case)
validate, and one with a field its schema does not know fails, so a field added to a
document without its schema fails here. tests/integration/test_json_schemas.py checks
the real commands' output against the same files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from meshrun.cli import app, documents
from meshrun.discovery.record import Agent
from meshrun.dispatch.executor.results import (
    DispatchReport,
    HostState,
    HostSummary,
    TaskResult,
)
from meshrun.dispatch.history import DurationRecord
from meshrun.dispatch.record import dispatch_document
from meshrun.dispatch.retention import PruneResult
from meshrun.dispatch.scheduler import TaskStatus
from meshrun.fleet.probe import HostProbe
from meshrun.fleet.record import build_fleet_manifest, fleet_document
from meshrun.fleet.run import FleetReport, HostResult, HostStatus
from meshrun.integrity.manifest import (
    AttemptEntry,
    FileEntry,
    HostEntry,
    Manifest,
    TaskEntry,
    canonical_bytes,
    verify_directory,
    write_manifest,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = "https://meshrun.invalid/schemas/1/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: Each command that prints a document with --json, and the file describing it.
DOCUMENTS = {
    "exec": "exec",
    "run": "run",
    "hosts": "hosts",
    "dispatch": "dispatch",
    "discover": "discover",
    "history": "history",
    "verify": "verify",
}
#: Manifest keys a reader accepts missing (manifests written before them still verify).
OPTIONAL = {("manifest.schema.json", "task"): {"timeline", "installed_to", "installed_kind"}}

RUN_ID = "20261123T152519Z-3fa9c1"
FP = "SHA256:" + "A" * 43
FILE = FileEntry("dist/app.tar", 10240, "0" * 64, 0o644)


def _schemas() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))}


def _registry() -> Registry[Any]:
    resources = [Resource.from_contents(s) for s in _schemas().values()]
    return Registry().with_resources((r.id(), r) for r in resources)  # type: ignore[misc]


def validator(name: str) -> Draft202012Validator:
    """The validator of ``schemas/<name>.schema.json``, its $refs resolved offline."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(schema, registry=_registry())


def check(name: str, document: dict[str, Any]) -> None:
    """``document`` is valid for ``name``, and stops being so with a field it lacks in
    its schema (the same JSON text the CLI writes: tuples become lists)."""
    document = json.loads(json.dumps(document))
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator(name).iter_errors(document)
    ]
    assert not errors, f"{name}: " + "\n".join(errors)
    assert not validator(name).is_valid({**document, "surprise": 1}), f"{name}: not closed"


def _walk(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


# -- the files --------------------------------------------------------------------------


def test_every_file_is_a_valid_2020_12_schema_with_a_stable_id() -> None:
    schemas = _schemas()
    assert {"common.schema.json", "manifest.schema.json"} <= set(schemas)
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == DRAFT, name
        assert schema["$id"] == BASE + name, f"{name}: $id must be {BASE + name}"
        assert schema.get("title") and schema.get("description"), name


def test_every_ref_resolves_offline() -> None:
    registry = _registry()
    refs = 0
    for name, schema in _schemas().items():
        resolver = registry.resolver(base_uri=schema["$id"])
        for path, node in _walk(schema):
            if isinstance(node, dict) and "$ref" in node:
                refs += 1
                resolved = resolver.lookup(node["$ref"]).contents
                assert isinstance(resolved, dict), f"{name} {path}: {node['$ref']}"
    assert refs > 20


def test_every_command_with_json_has_a_schema() -> None:
    with_json = set()
    for name, command in app._COMMANDS.items():
        parser: argparse.ArgumentParser = command.build()
        if any("--json" in action.option_strings for action in parser._actions):
            with_json.add(name)
    assert with_json == set(DOCUMENTS), "a command gained or lost --json: update DOCUMENTS"
    for name in DOCUMENTS.values():
        assert (SCHEMAS / f"{name}.schema.json").is_file(), f"schemas/{name}.schema.json"
    readme = (SCHEMAS / "README.md").read_text()
    for name in [*DOCUMENTS.values(), "manifest", "common"]:
        assert f"{name}.schema.json" in readme, f"schemas/README.md does not name {name}"


def test_every_object_is_closed_and_every_field_described() -> None:
    registry = _registry()
    for name, schema in _schemas().items():
        resolver = registry.resolver(base_uri=schema["$id"])
        for path, node in _walk(schema):
            if not isinstance(node, dict) or "properties" not in node:
                continue
            assert node.get("additionalProperties") is False, f"{name} {path}: not closed"
            assert node.get("type") == "object", f"{name} {path}"
            optional = OPTIONAL.get((name, path.rsplit("/", 1)[-1]), set())
            assert set(node["required"]) == set(node["properties"]) - optional, (
                f"{name} {path}: every field is always written, so every one is required"
            )
            for key, field in node["properties"].items():
                if set(field) == {"$ref"}:  # described where it is defined
                    field = resolver.lookup(field["$ref"]).contents
                assert field.get("description"), f"{name} {path}/properties/{key}: undescribed"


def test_exit_codes_and_statuses_match_the_code() -> None:
    common = _schemas()["common.schema.json"]["$defs"]
    assert common["exit_code"]["enum"] == [0, 1, 3, 4, 129, 130, 143]
    assert set(common["signal"]["enum"]) == {"SIGINT", "SIGTERM", "SIGHUP", None}
    fleet = common["fleet_host"]["properties"]["status"]["enum"]
    assert fleet == [s.value for s in HostStatus]
    dispatch = _schemas()["dispatch.schema.json"]["$defs"]
    final = [s.value for s in TaskStatus if s.final]
    assert dispatch["task"]["properties"]["status"]["enum"] == final
    hosts = dispatch["host"]["properties"]["status"]["enum"]
    assert set(hosts) == {s.value for s in HostState} - {"connecting"}


# -- the documents ----------------------------------------------------------------------


def _fleet_report(**kw: Any) -> FleetReport:
    results = (
        HostResult("h1", HostStatus.OK, 0, b"up\n", b"", 0.1234, files=(FILE,)),
        HostResult("h2", HostStatus.FAILED, 3, b"", b"\xffbad\n", 0.2, pull_error="no match"),
        HostResult("h3", HostStatus.FAILED, None, duration_s=1.0, error="timed out after 1s"),
        HostResult("h4", HostStatus.UNREACHABLE, error="connection refused"),
        HostResult("h5", HostStatus.SKIPPED),
        HostResult("h6", HostStatus.CANCELLED, None, duration_s=0.5, integrity_failed=True),
    )
    return FleetReport(RUN_ID, "deploy.sh v42", results, 1.5, **kw)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"interrupted": True, "stop_signal": signal.SIGTERM, "stop_reason": "SIGTERM"},
        {"interrupted": True, "stop_signal": signal.SIGINT},
        {"run_dir": "/w/.meshrun/runs/x", "manifest_path": "/w/m.json", "pull_dir": "/w/p"},
    ],
)
@pytest.mark.parametrize("command", ["exec", "run"])
def test_fleet_documents_validate(command: str, extra: dict[str, Any]) -> None:
    check(command, fleet_document(_fleet_report(**extra)))


def test_an_all_ok_fleet_document_validates() -> None:
    report = FleetReport(RUN_ID, "uptime", (HostResult("h1", HostStatus.OK, 0),), 0.0)
    assert report.exit_code == 0
    check("exec", fleet_document(report))


def _task(name: str, status: TaskStatus, **kw: Any) -> TaskResult:
    return TaskResult(name, status, None, None, 0, None, f"/r/logs/{name}.log", **kw)


def _dispatch_report(**kw: Any) -> DispatchReport:
    timeline = (
        AttemptEntry("h2", 0.0, 1.5, "lost"),
        AttemptEntry("h1", 1.6, 2.0, "failed", 2),
        AttemptEntry("h1", 2.0, 3.0, "timed out"),
        AttemptEntry("h1", 3.0, 3.1, "moved"),
        AttemptEntry("h1", 3.1, 3.2, "cancelled"),
        AttemptEntry("h1", 3.2, 4.0, "succeeded", 0),
    )
    tasks = (
        TaskResult(
            "build",
            TaskStatus.SUCCEEDED,
            "h1",
            0,
            6,
            0.8,
            "/r/logs/succeeded.log",
            None,
            files=(FILE,),
            timeline=timeline,
            log_offset=120,
            log_bytes=42,
        ),
        TaskResult("test", TaskStatus.FAILED, "h1", 1, 1, 0.25, "/r/logs/test.log", "exit 1"),
        _task("docs", TaskStatus.SKIPPED, error="needs failed: test"),
        _task("lint", TaskStatus.CANCELLED, error="interrupted"),
    )
    hosts = (
        HostSummary("h1", HostState.OK, "agent", 4, 9, workdir="/home/ci/.meshrun/w1"),
        HostSummary("h2", HostState.LOST, "exec", 1, 1, "stopped answering"),
        HostSummary("h3", HostState.UNREACHABLE, None, None, 0, "refused", refused=True),
        HostSummary("h4", HostState.UNUSED, None, None, 0),
    )
    return DispatchReport(RUN_ID, 1.7e9, 4.2, tasks, hosts, "/r", **kw)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"interrupted": True, "stop_signal": signal.SIGHUP},
        {"integrity_failures": ("test",)},
    ],
)
def test_dispatch_documents_validate(extra: dict[str, Any]) -> None:
    report = _dispatch_report(**extra)
    check("dispatch", dispatch_document(report, command_line=["meshrun", "dispatch", "t.toml"]))


def test_hosts_documents_validate() -> None:
    probes = [
        HostProbe("h1", "10.0.0.1", True, True, 1.234, 8, (0.5, 0.25, 0.0), True),
        HostProbe("h2", "h2", True, False, error="login refused"),
        HostProbe("h3", None, False, False, error="too many open files", shortage=True),
    ]
    check("hosts", documents.hosts_document(probes))


def test_discover_documents_validate() -> None:
    agents = [
        Agent(
            name="build-1",
            port=22,
            user="ci",
            slots=8,
            cpus=16,
            labels=("gpu", "linux"),
            workdir="~/work",
            os="linux",
            arch="x86_64",
            host_key_type="ssh-ed25519",
            host_key_fingerprint=FP,
            meshrun_version="0.1.0",
            address="192.0.2.7",
        ),
        Agent(
            name="b2",
            port=2202,
            user=None,
            slots=1,
            cpus=1,
            labels=(),
            workdir=None,
            os="darwin",
            arch="arm64",
            host_key_type="ssh-rsa",
            host_key_fingerprint=FP,
            address="192.0.2.8",
        ),
    ]
    check("discover", documents.agents_document(agents))
    check("discover", documents.agents_document([]))


def test_history_documents_validate() -> None:
    records = [DurationRecord("build", 12.3456, 3, 11.0, 1.7e9)]
    check("history", documents.history_document("tasks.toml", records))
    check("history", documents.history_document("tasks.toml", []))
    pruned = PruneResult((RUN_ID, "20261124T000000Z-000000"), 4096, 12, 20)
    check("history", documents.prune_document("/w/.meshrun", pruned))
    check("history", documents.prune_document("/w/.meshrun", PruneResult((), 0, 0, 0)))


def _manifest_dict(manifest: Manifest) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(canonical_bytes(manifest))
    return document


def test_manifests_validate(tmp_path: Path) -> None:
    fleet = build_fleet_manifest(_fleet_report(), [], command_line=["meshrun", "run"])
    check("manifest", _manifest_dict(fleet))
    dispatch = Manifest(
        run_id=RUN_ID,
        started=fleet.started,
        ended=fleet.ended,
        coordinator="laptop",
        command_line=(),
        hosts=(HostEntry("h1", "10.0.0.1", FP), HostEntry("local", "local", None)),
        tasks=(
            TaskEntry(
                "build",
                "h1",
                "make",
                "succeeded",
                0,
                1,
                0.5,
                (FILE,),
                (AttemptEntry("h1", 0.0, 0.5, "succeeded", 0),),
                "/w",
                "workspace",
            ),
            TaskEntry(
                "pkg",
                "h1",
                "tar",
                "failed",
                2,
                2,
                0.1,
                installed_to="/a/pkg",
                installed_kind="artifacts",
            ),
            TaskEntry("docs", None, "mkdocs", "skipped", None, 0, None),
            TaskEntry("lint", None, "ruff", "cancelled", None, 0, None),
        ),
    )
    document = _manifest_dict(dispatch)
    check("manifest", document)
    for task in document["tasks"]:  # as written before timeline and installed_* existed
        for key in ("timeline", "installed_to", "installed_kind"):
            del task[key]
    check("manifest", document)


def test_verify_documents_validate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    root = tmp_path / "run"
    (root / "h1" / "dist").mkdir(parents=True)
    (root / "h1" / "dist" / "a.txt").write_text("a\n")
    (root / "h1" / "dist" / "b.txt").write_text("b\n")
    (root / "h1" / "dist" / "gone.txt").write_text("c\n")
    from meshrun.integrity.manifest import hash_tree

    files = hash_tree(root / "h1")
    report = FleetReport(RUN_ID, "make", (HostResult("h1", HostStatus.OK, 0, files=files),), 1.0)
    write_manifest(root, build_fleet_manifest(report, []), key)
    public = key.public_key()
    good = verify_directory(root, allowed_keys=[public])
    assert good.ok and good.signature.value == "trusted"
    check("verify", good.to_dict())

    (root / "h1" / "dist" / "a.txt").write_text("tampered\n")
    (root / "h1" / "dist" / "b.txt").unlink()
    (root / "h1" / "dist" / "b.txt").symlink_to("a.txt")
    (root / "h1" / "dist" / "gone.txt").unlink()
    (root / "h1" / "new.txt").write_text("x")
    bad = verify_directory(root, allowed_keys=None)
    assert not bad.ok and bad.changed and bad.missing and bad.unlisted
    assert {c.kind for c in bad.changed} == {"file", "symlink"}
    check("verify", bad.to_dict())

    (root / "manifest.json").write_text("{not json")
    broken = verify_directory(root, allowed_keys=[public])
    assert broken.manifest is None and broken.signature.value == "invalid"
    check("verify", broken.to_dict())
    (root / "manifest.json.sig").unlink()
    (root / "manifest.json").unlink()
    check("verify", verify_directory(root, allowed_keys=None).to_dict())


def test_verify_of_changed_installed_copies_validates(tmp_path: Path) -> None:
    """A dispatch run's installed copies are checked too: one replaced by a directory is
    of kind "directory" (it read "directory or special file", outside the kinds a scan
    names), and one that is missing is named by its absolute path."""
    from meshrun.integrity.manifest import hash_tree, verify_run

    workspace = tmp_path / "ws"
    (workspace / "dist").mkdir(parents=True)
    (workspace / "dist" / "app").write_text("bin\n")
    (workspace / "dist" / "lib").write_text("lib\n")
    run_dir = tmp_path / "run"
    (run_dir / "artifacts" / "build").mkdir(parents=True)
    shutil.copytree(workspace / "dist", run_dir / "artifacts" / "build" / "dist")
    files = hash_tree(run_dir / "artifacts" / "build")
    task = TaskEntry(
        "build", "h1", "make", "succeeded", 0, 1, 0.5, files, (), str(workspace), "workspace"
    )
    manifest = Manifest(
        run_id=RUN_ID,
        started=build_fleet_manifest(_fleet_report(), []).started,
        ended=build_fleet_manifest(_fleet_report(), []).ended,
        coordinator="laptop",
        command_line=("meshrun", "dispatch"),
        hosts=(HostEntry("h1", "10.0.0.1", FP),),
        tasks=(task,),
    )
    write_manifest(run_dir, manifest, None)
    (run_dir / "report.json").write_text("{}")  # a dispatch run's directory
    (workspace / "dist" / "app").unlink()
    (workspace / "dist" / "app").mkdir()
    (workspace / "dist" / "lib").unlink()
    report = verify_run(run_dir, allowed_keys=None)
    assert [(c.path, c.kind) for c in report.changed] == [
        (str(workspace / "dist" / "app"), "directory")
    ]
    assert report.missing == (str(workspace / "dist" / "lib"),)
    check("verify", report.to_dict())

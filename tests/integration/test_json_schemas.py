"""Real ``--json`` output and manifests validate against the published schemas (schemas/).

Every command that prints a document runs here as a user runs it (the console script,
real sshd hosts on loopback), in the states a program reading its output must handle:
succeeded, failed, a host unreachable, timed out, stopped by SIGTERM mid-run, signed and
tampered with. One small fleet serves the module: h1 and h2 up, h3 killed (its port
refuses), so ``good.toml`` (h1, h2) runs and ``all.toml`` (h1-h3) meets a dead host.
tests/unit/test_schema_files.py checks the schemas themselves and the pure builders.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dispatch_helpers import dispatch, kill_on_error, spawn_dispatch, task_statuses, write_project
from helpers import (
    Result,
    finish,
    marker_seconds,
    run_meshrun,
    spawn_meshrun,
    wait_running,
    write_inventory,
)
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from meshrun.testing.fleet import SSHD, Fleet

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _validator(name: str) -> Draft202012Validator:
    schemas = [json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")]
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas
    )
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(schema, registry=registry)


def valid(name: str, document: Any, shown: str = "") -> None:
    """``document`` follows ``schemas/<name>.schema.json``; else every error, and what ran."""
    assert document is not None, f"expected a JSON document{shown}"
    errors = [
        f"  {list(e.absolute_path)}: {e.message}" for e in _validator(name).iter_errors(document)
    ]
    assert not errors, f"{name}.schema.json rejects the document:\n" + "\n".join(errors) + shown


@dataclass
class World:
    fleet: Fleet
    good: Path  # h1, h2: up
    all: Path  # h1, h2 and h3, whose sshd is killed
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("openssh-server is not installed; run scripts/test which installs it")
        pytest.skip(f"{SSHD} not found (openssh-server is not installed)")
    tmp = tmp_path_factory.mktemp("schemas")
    with Fleet.start(3, tmp / "fleet") as fleet:
        fleet.kill("h3")
        good = write_inventory(tmp / "good.toml", fleet, names=["h1", "h2"])
        yield World(fleet, good, fleet.hosts_toml, tmp)


# -- exec and run -----------------------------------------------------------------------

#: case -> (inventory, exec's command, run's script body, --timeout, exit code, statuses)
FLEET_CASES: dict[str, tuple[str, str, str, str | None, int, dict[str, str]]] = {
    "ok": ("good", "echo hi", "echo hi", None, 0, {"h1": "ok", "h2": "ok"}),
    "failed": ("good", "exit 3", "exit 3", None, 1, {"h1": "failed", "h2": "failed"}),
    "unreachable": (
        "all",
        "echo hi",
        "echo hi",
        None,
        3,
        {"h1": "ok", "h2": "ok", "h3": "unreachable"},
    ),
    "timed_out": ("good", "sleep 30", "sleep 30", "1s", 1, {"h1": "failed", "h2": "failed"}),
}


def _fleet_argv(world: World, command: str, case: str) -> list[str | os.PathLike[str]]:
    inventory, line, body, timeout, _, _ = FLEET_CASES[case]
    argv: list[str | os.PathLike[str]] = [command, "--hosts", getattr(world, inventory), "--json"]
    if timeout:
        argv += ["--timeout", timeout]
    if command == "exec":
        return [*argv, "--", line]
    script = world.tmp / f"{case}.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    return [*argv, script]


@pytest.mark.parametrize("case", list(FLEET_CASES))
@pytest.mark.parametrize("command", ["exec", "run"])
def test_exec_and_run_documents(world: World, command: str, case: str) -> None:
    *_, code, statuses = FLEET_CASES[case]
    r = run_meshrun(*_fleet_argv(world, command, case))
    assert (r.rc, r.statuses()) == (code, statuses), r.describe()
    valid(command, r.doc, r.describe())
    if case == "timed_out":
        assert "timed out" in (r.hosts["h1"]["error"] or ""), r.describe()


@pytest.mark.parametrize("command", ["exec", "run"])
def test_exec_and_run_stopped_by_sigterm(world: World, command: str) -> None:
    marker = marker_seconds()
    argv: list[str | os.PathLike[str]] = [command, "--hosts", world.good, "--json"]
    if command == "exec":
        argv += ["--", f"sleep {marker}"]
    else:
        script = world.tmp / f"sleep-{marker}.sh"
        script.write_text(f"#!/bin/sh\nsleep {marker}\n")
        argv.append(script)
    proc = spawn_meshrun(*argv)
    try:
        wait_running(f"sleep {marker}", 2)
        os.kill(proc.pid, signal.SIGTERM)
        r = finish(proc, timeout_s=15)
    finally:
        kill_on_error(proc)
    assert r.rc == 143 and r.doc["signal"] == "SIGTERM", r.describe()
    assert set(r.statuses().values()) == {"cancelled"}, r.describe()
    valid(command, r.doc, r.describe())


def test_exec_pull_signed_manifest_and_verify(world: World, tmp_path: Path) -> None:
    key = _keygen(tmp_path)
    r = run_meshrun(
        "exec", "--hosts", world.good, "--json", "--pull", "out/*.txt", "--sign-key", key,
        "--state-dir", tmp_path / "state", "--", "mkdir -p out && echo $MESHRUN_HOST > out/a.txt",
    )  # fmt: skip
    assert r.rc == 0 and r.doc["files_pulled"] == 2, r.describe()
    valid("exec", r.doc, r.describe())
    run_dir = Path(r.doc["run_dir"])
    valid("exec", json.loads((run_dir / "report.json").read_text()), " (report.json)")
    _check_manifest_and_verify(run_dir, key, tampered=Path("h2/out/a.txt"))


# -- hosts ------------------------------------------------------------------------------


def test_hosts_document(world: World) -> None:
    r = run_meshrun("hosts", "--hosts", world.all, "--json")
    assert r.rc == 3, r.describe()
    reachable = {h["name"]: h["reachable"] for h in r.doc["hosts"]}
    assert reachable == {"h1": True, "h2": True, "h3": False}, r.describe()
    valid("hosts", r.doc, r.describe())


# -- dispatch, its manifest, verify, history --------------------------------------------


def test_dispatch_ok_and_failed_documents(world: World, tmp_path: Path) -> None:
    tasks = [
        {"name": "first", "run": "echo one"},
        {"name": "second", "run": "echo two", "needs": ["first"]},
    ]
    ok = dispatch(write_project(tmp_path / "ok", tasks), world.good)
    assert ok.rc == 0, ok.describe()
    valid("dispatch", ok.doc, ok.describe())
    valid("dispatch", json.loads((Path(ok.doc["run_dir"]) / "report.json").read_text()))

    tasks = [
        {"name": "good", "run": "true"},
        {"name": "bad", "run": "exit 5", "needs": ["good"]},
        {"name": "after", "run": "true", "needs": ["bad"]},
        {"name": "slow", "run": "sleep 30", "timeout": "1s"},
    ]
    failed = dispatch(write_project(tmp_path / "failed", tasks), world.all)
    # h3's port refuses: exit 3 wins over the failed tasks' 1.
    assert failed.rc == 3, failed.describe()
    statuses = {"good": "succeeded", "bad": "failed", "after": "skipped", "slow": "failed"}
    assert task_statuses(failed) == statuses, failed.describe()
    assert {h["name"]: h["status"] for h in failed.doc["hosts"]}["h3"] == "unreachable"
    valid("dispatch", failed.doc, failed.describe())


def test_dispatch_stopped_by_sigterm(world: World, tmp_path: Path) -> None:
    marker = marker_seconds()
    tasks = [
        {"name": "quick", "run": "echo done"},
        *({"name": f"t{i}", "run": f"sleep {marker}", "needs": ["quick"]} for i in range(2)),
        {"name": "later", "run": "true", "needs": ["t0"]},
    ]
    proc = spawn_dispatch(write_project(tmp_path / "proj", tasks), world.good)
    try:
        wait_running(f"sleep {marker}", 2)
        os.kill(proc.pid, signal.SIGTERM)
        r = finish(proc, timeout_s=15)
    finally:
        kill_on_error(proc)
    assert r.rc == 143 and r.doc["interrupted"] is True, r.describe()
    valid("dispatch", r.doc, r.describe())
    run_dir = Path(r.doc["run_dir"])
    valid("manifest", json.loads((run_dir / "manifest.json").read_text()), " (manifest.json)")


def test_dispatch_signed_manifest_and_verify(world: World, tmp_path: Path) -> None:
    tasks = [
        {"name": "build", "run": "mkdir -p dist && echo bin > dist/app", "outputs": ["dist/**"]},
        {"name": "lint", "run": "true"},
    ]
    tasks_file = write_project(tmp_path / "proj", tasks, sync={"paths": []})
    key = _keygen(tmp_path)
    r = dispatch(tasks_file, world.good, "--sign-key", key)
    assert r.rc == 0, r.describe()
    valid("dispatch", r.doc, r.describe())
    _check_manifest_and_verify(Path(r.doc["run_dir"]), key, tampered=Path("build/dist/app"))


def test_history_and_prune_documents(world: World, tmp_path: Path) -> None:
    tasks_file = write_project(tmp_path / "proj", [{"name": "a", "run": "true"}])
    for _ in range(2):
        r = dispatch(tasks_file, world.good)
        assert r.rc == 0, r.describe()
    history = run_meshrun("history", tasks_file, "--json")
    assert history.rc == 0 and [t["name"] for t in history.doc["tasks"]] == ["a"], (
        history.describe()
    )
    valid("history", history.doc, history.describe())
    pruned = run_meshrun("history", tasks_file, "--prune", "--keep-runs", "1", "--json")
    assert pruned.rc == 0 and len(pruned.doc["pruned_runs"]) == 1, pruned.describe()
    valid("history", pruned.doc, pruned.describe())


def _keygen(directory: Path) -> Path:
    key = directory / "sign_key"
    made = run_meshrun("keygen", key, "-I", "ci@test")
    assert made.rc == 0, made.describe()
    return key


def _check_manifest_and_verify(run_dir: Path, key: Path, *, tampered: Path) -> None:
    """The run's manifest validates; so does ``verify --json`` of it as written (exit 0),
    without a key (untrusted) and of a copy with one file changed (exit 4)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    valid("manifest", manifest, " (manifest.json)")
    assert any(task["files"] for task in manifest["tasks"]), manifest

    ok = run_meshrun("verify", run_dir, "--key", f"{key}.pub", "--json")
    assert ok.rc == 0 and ok.doc["signature"] == "trusted", ok.describe()
    valid("verify", ok.doc, ok.describe())
    untrusted = run_meshrun("verify", run_dir, "--json")
    assert untrusted.doc["signature"] == "untrusted", untrusted.describe()
    valid("verify", untrusted.doc, untrusted.describe())

    copy = run_dir.parent / f"{run_dir.name}-copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    root = Path(ok.doc["root"]).relative_to(run_dir)
    (copy / root / tampered).write_text("changed\n")
    (copy / "manifest.json.sig").unlink()
    bad = run_meshrun("verify", copy, "--json")
    assert bad.rc == 4 and not bad.doc["ok"], bad.describe()
    assert [c["path"] for c in bad.doc["changed"]] == [tampered.as_posix()], bad.describe()
    assert bad.doc["signature"] == "unsigned" and bad.doc["errors"], bad.describe()
    valid("verify", bad.doc, bad.describe())


# -- discover ---------------------------------------------------------------------------


def test_discover_documents(tmp_path: Path, start_agents: Any) -> None:
    token = "t" + secrets.token_hex(4)
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    start_agents((f"{token}-a", ["--labels", f"{token},linux", "--host-key", f"{key}.pub"]))
    found = _discover(token)
    assert [a["name"] for a in found.doc["agents"]] == [f"{token}-a"], found.describe()
    valid("discover", found.doc, found.describe())
    none = _discover(token + "-nobody", timeout="0.3s")
    assert none.doc["agents"] == [], none.describe()
    valid("discover", none.doc, none.describe())


def _discover(label: str, timeout: str = "1s") -> Result:
    r = run_meshrun(
        "discover", "--json", "--interface", "127.0.0.1", "--labels", label, "--timeout", timeout
    )
    assert r.rc == 0, r.describe()
    return r

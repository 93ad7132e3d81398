"""Task outputs come home verified and are listed in the run's (signed) manifest."""

from __future__ import annotations

import json
from pathlib import Path

from dispatch_helpers import dispatch, log_text, tasks_of, write_hosts, write_project
from helpers import describe_procs, marker_seconds, run_meshrun, wait_gone

from meshrun.testing.fleet import Fleet


def test_outputs_come_home_verified_and_signed(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "build",
                "run": "mkdir -p 'signed-dist/sub dir' && printf 'bin\\n' > signed-dist/app && "
                "printf 'ü\\n' > 'signed-dist/sub dir/nötes.txt'",
                "outputs": ["signed-dist/**"],
            },
            {"name": "lint", "run": "true"},
        ],
        sync={"paths": []},
    )
    keygen = run_meshrun("keygen", tmp_path / "key", "-I", "ci@test")
    assert keygen.rc == 0, keygen.describe()
    r = dispatch(tasks_file, fleet4.hosts_toml, "--sign-key", tmp_path / "key")
    assert r.rc == 0, r.describe()
    run_dir = Path(r.doc["run_dir"])
    build_dir = run_dir / "artifacts" / "build"
    assert (build_dir / "signed-dist" / "app").read_text() == "bin\n"
    assert (build_dir / "signed-dist" / "sub dir" / "nötes.txt").read_text() == "ü\n"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {t["name"]: [f["path"] for f in t["files"]] for t in manifest["tasks"]}
    assert files == {"build": ["signed-dist/app", "signed-dist/sub dir/nötes.txt"], "lint": []}
    ok = run_meshrun("verify", run_dir, "--key", f"{tmp_path / 'key'}.pub")
    assert ok.rc == 0, ok.describe()
    (build_dir / "signed-dist" / "app").write_text("changed\n")
    tampered = run_meshrun("verify", run_dir, "--key", f"{tmp_path / 'key'}.pub")
    assert tampered.rc == 4 and "signed-dist/app" in tampered.stderr, tampered.describe()


def test_an_unmatched_or_escaping_output_fails_the_task_with_exit_4(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "nothing", "run": "true", "outputs": ["missing/**"]},
            {"name": "escape", "run": "ln -sf /etc/hostname leak", "outputs": ["leak"]},
            {"name": "fine", "run": "echo ok > ok.txt", "outputs": ["ok.txt", "?maybe.txt"]},
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, fleet4.hosts_toml)
    assert r.rc == 4, f"expected exit 4 (integrity){r.describe()}"
    tasks = tasks_of(r)
    assert tasks["nothing"]["status"] == "failed" and "missing/**" in tasks["nothing"]["error"]
    assert tasks["escape"]["status"] == "failed" and "leak" in tasks["escape"]["error"]
    assert tasks["fine"]["status"] == "succeeded", r.describe()
    artifacts = Path(r.doc["run_dir"]) / "artifacts"
    assert not (artifacts / "escape").exists(), "nothing may be written for a refused output"


def test_outputs_land_in_the_workspace_as_a_local_build_would_leave_them(
    fleet4: Fleet, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    tasks_file = write_project(
        project,
        [
            {
                "name": "build",
                "run": "mkdir -p ws-dist && echo v1 > ws-dist/app",
                "outputs": ["ws-dist/**"],
            },
            {
                "name": "docs",
                "run": "mkdir -p ws-site && echo doc > ws-site/index.html",
                "outputs": ["ws-site/index.html"],
            },
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, fleet4.hosts_toml)
    assert r.rc == 0, r.describe()
    assert (project / "ws-dist" / "app").read_text() == "v1\n"
    assert (project / "ws-site" / "index.html").read_text() == "doc\n"


def test_two_tasks_writing_the_same_output_path_is_an_error(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "a", "run": "echo a > out.txt", "outputs": ["out.txt"]},
            {"name": "b", "run": "echo b > out.txt", "outputs": ["out.txt"], "needs": ["a"]},
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, fleet4.hosts_toml)
    assert r.rc == 4, r.describe()
    assert "already written by task 'a'" in (tasks_of(r)["b"]["error"] or ""), r.describe()


def test_artifacts_dir_gets_outputs_per_task_and_a_manifest_copy_that_verifies(
    fleet4: Fleet, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    tasks_file = write_project(
        project,
        [{"name": "build", "run": "mkdir -p pkg && echo v2 > pkg/app", "outputs": ["pkg/**"]}],
        sync={"paths": []},
    )
    out = tmp_path / "out"
    r = dispatch(tasks_file, fleet4.hosts_toml, "--artifacts", out)
    assert r.rc == 0, r.describe()
    assert (out / "build" / "pkg" / "app").read_text() == "v2\n"
    assert not (project / "pkg").exists(), "with --artifacts the workspace is left alone"
    assert (out / "manifest.json").is_file()
    ok = run_meshrun("verify", out, "--json", "--allow-unsigned")
    assert ok.rc == 0 and ok.doc["files_checked"] == 1, ok.describe()
    (out / "build" / "extra.txt").write_text("not from the run")
    extra = run_meshrun("verify", out, "--allow-unsigned")
    assert extra.rc == 4 and "extra.txt" in extra.stderr, extra.describe()


def test_a_chain_split_over_two_hosts_gets_its_needs_outputs_pushed(
    fleet4: Fleet, tmp_path: Path
) -> None:
    """``build`` can only run on h1 and ``package`` only on h2: build's outputs are
    pushed to h2 (verified) before package starts, and package reads them there."""
    hosts = write_hosts(
        tmp_path / "hosts.toml", fleet4, {"h1": {"labels": ["a"]}, "h2": {"labels": ["b"]}}
    )
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "build",
                "run": "mkdir -p 'chain-dist/sub dir' && echo lib-$MESHRUN_RUN_ID > "
                "'chain-dist/sub dir/lib.txt'",
                "outputs": ["chain-dist/**"],
                "labels": ["a"],
            },
            {
                "name": "package",
                "run": "mkdir -p chain-pkg && cat 'chain-dist/sub dir/lib.txt' > chain-pkg/pkg.txt",
                "outputs": ["chain-pkg/pkg.txt"],
                "needs": ["build"],
                "labels": ["b"],
            },
            {
                "name": "check",  # same host as build: nothing to push
                "run": "cat 'chain-dist/sub dir/lib.txt'",
                "needs": ["build"],
                "labels": ["a"],
            },
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, hosts)
    assert r.rc == 0, r.describe()
    tasks = tasks_of(r)
    assert (tasks["build"]["host"], tasks["package"]["host"]) == ("h1", "h2"), r.describe()
    run_id = r.doc["run_id"]
    h2_copy = fleet4.host("h2").workdir / "chain-dist" / "sub dir" / "lib.txt"
    assert h2_copy.read_text() == f"lib-{run_id}\n"
    assert (tmp_path / "proj" / "chain-pkg" / "pkg.txt").read_text() == f"lib-{run_id}\n"
    assert "outputs pushed here" in log_text(r, "package")
    assert "outputs pushed here" not in log_text(r, "check")
    ok = run_meshrun("verify", r.doc["run_dir"], "--allow-unsigned")
    assert ok.rc == 0, ok.describe()


def test_with_fail_fast_an_integrity_failure_stops_the_run_and_the_manifest_says_so(
    fleet4: Fleet, tmp_path: Path
) -> None:
    marker = marker_seconds()
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {"name": "slow", "run": f"sleep {marker}"},
            {
                "name": "leaky",
                "run": "sleep 0.5; ln -sf /etc/hostname ff-leak",
                "outputs": ["ff-leak"],
            },
            {"name": "after", "run": "true", "needs": ["slow"]},
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, fleet4.hosts_toml, "--fail-fast")
    assert r.rc == 4, f"expected exit 4 (integrity) with --fail-fast{r.describe()}"
    statuses = {name: t["status"] for name, t in tasks_of(r).items()}
    assert statuses == {"slow": "cancelled", "leaky": "failed", "after": "cancelled"}, r.describe()
    manifest = json.loads((Path(r.doc["run_dir"]) / "manifest.json").read_text())
    assert {t["name"]: t["status"] for t in manifest["tasks"]} == statuses
    left = wait_gone(marker)
    assert not left, f"expected no 'sleep {marker}' left:\n{describe_procs(left)}"


def test_outputs_over_pull_max_bytes_fail_their_task_before_anything_is_written(
    fleet4: Fleet, tmp_path: Path
) -> None:
    """A host cannot fill the coordinator's disk with a task's outputs: their sizes, as
    hashed on the host, are checked before the pull. The task fails saying why; its
    host is not lost (it stays ``ok`` and other tasks' outputs still come home)."""
    hosts = write_hosts(tmp_path / "hosts.toml", fleet4, {"h1": {"labels": ["a"]}})
    project = tmp_path / "proj"
    tasks_file = write_project(
        project,
        [
            {
                "name": "big",  # two files each under the cap, together over it
                "run": "mkdir -p cap-big && head -c 3000 /dev/zero > cap-big/one && "
                "head -c 1000 /dev/zero > cap-big/two",
                "outputs": ["cap-big/**"],
                "labels": ["a"],
            },
            {
                "name": "small",
                "run": "mkdir -p cap-small && head -c 1000 /dev/zero > cap-small/one",
                "outputs": ["cap-small/**"],
            },
            {"name": "after-small", "run": "true", "needs": ["small"], "labels": ["a"]},
        ],
        sync={"paths": []},
    )
    r = dispatch(tasks_file, hosts, "--pull-max-bytes", "2K")
    assert r.rc == 1, f"expected exit 1: a task failed{r.describe()}"
    tasks = tasks_of(r)
    assert {n: t["status"] for n, t in tasks.items()} == {
        "big": "failed",
        "small": "succeeded",
        "after-small": "succeeded",
    }, r.describe()
    assert tasks["big"]["host"] == "h1" and tasks["big"]["attempts"] == 1, r.describe()
    assert tasks["big"]["error"] == (
        "collecting outputs failed: the outputs add up to 4000 bytes, more than "
        "--pull-max-bytes (2 KiB); nothing was pulled from the host"
    ), r.describe()
    assert r.hosts["h1"]["status"] == "ok" and r.hosts["h1"]["error"] is None, r.describe()
    run_dir = Path(r.doc["run_dir"])
    assert not (run_dir / "artifacts" / "big").exists(), "nothing of big may be written"
    assert not (project / "cap-big").exists(), "nothing of big may reach the workspace"
    assert (project / "cap-small" / "one").stat().st_size == 1000
    report = json.loads((run_dir / "report.json").read_text())
    assert {t["name"]: t["error"] for t in report["tasks"]}["big"] == tasks["big"]["error"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {t["name"]: t["files"] for t in manifest["tasks"]}["big"] == []


def test_verify_of_a_run_checks_the_copies_that_ship(fleet4: Fleet, tmp_path: Path) -> None:
    """The workspace copies and --artifacts DIR are what CI publishes: verify checks them."""
    tasks = [
        {
            "name": "build",
            "run": "mkdir -p ship && echo v1 > ship/app && echo doc > ship/doc",
            "outputs": ["ship/**"],
        },
    ]
    tasks_file = write_project(tmp_path / "proj", tasks, sync={"paths": []})
    project = tasks_file.parent
    r = dispatch(tasks_file, fleet4.hosts_toml)
    assert r.rc == 0, r.describe()
    run_dir = Path(r.doc["run_dir"])
    clean = run_meshrun("verify", run_dir, "--allow-unsigned")
    assert clean.rc == 0, clean.describe()

    (project / "ship" / "app").write_text("v2\n")  # same size, one byte flipped
    (project / "ship" / "doc").unlink()
    tampered = run_meshrun("verify", run_dir, "--allow-unsigned")
    assert tampered.rc == 4, tampered.describe()
    assert f"{project / 'ship' / 'app'}: content (sha256) differs" in tampered.stderr
    assert f"{project / 'ship' / 'doc'}: missing" in tampered.stderr, tampered.describe()

    artifacts = tmp_path / "published"
    r2 = dispatch(tasks_file, fleet4.hosts_toml, "--artifacts", artifacts)
    assert r2.rc == 0, r2.describe()
    (artifacts / "build" / "ship" / "extra.txt").write_text("slipped in\n")
    extra = run_meshrun("verify", r2.doc["run_dir"], "--allow-unsigned")
    assert extra.rc == 4, extra.describe()
    assert f"{artifacts / 'build' / 'ship' / 'extra.txt'}: not in the manifest" in extra.stderr

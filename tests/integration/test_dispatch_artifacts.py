"""Task outputs come home verified and are listed in the run's (signed) manifest."""

from __future__ import annotations

import json
from pathlib import Path

from dispatch_helpers import dispatch, tasks_of, write_project
from helpers import run_meshrun

from meshrun.testing.fleet import Fleet


def test_outputs_come_home_verified_and_signed(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "build",
                "run": "mkdir -p 'dist/sub dir' && printf 'bin\\n' > dist/app && "
                "printf 'ü\\n' > 'dist/sub dir/nötes.txt'",
                "outputs": ["dist/**"],
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
    assert (build_dir / "dist" / "app").read_text() == "bin\n"
    assert (build_dir / "dist" / "sub dir" / "nötes.txt").read_text() == "ü\n"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {t["name"]: [f["path"] for f in t["files"]] for t in manifest["tasks"]}
    assert files == {"build": ["dist/app", "dist/sub dir/nötes.txt"], "lint": []}
    ok = run_meshrun("verify", run_dir, "--key", f"{tmp_path / 'key'}.pub")
    assert ok.rc == 0, ok.describe()
    (build_dir / "dist" / "app").write_text("changed\n")
    tampered = run_meshrun("verify", run_dir, "--key", f"{tmp_path / 'key'}.pub")
    assert tampered.rc == 4 and "dist/app" in tampered.stderr, tampered.describe()


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

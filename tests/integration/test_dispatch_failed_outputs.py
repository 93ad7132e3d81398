"""A failed task's outputs come home, and no older run's output is left looking current.

The CI shape: a test task writes ``reports/test.xml`` and a package; the job publishes
the reports afterwards. A green run, then a red one, then one that crashes before
writing anything: the workspace must always show what the latest run produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from dispatch_helpers import dispatch, tasks_of, write_project

from meshrun.testing.fleet import Fleet

# mode.txt decides: pass (report, package, exit 0), failing (report, package, exit 1),
# crash... (nothing written, exit 2). Sizes differ so rsync's quick check sees each change.
TEST_TASK = (
    "rm -rf reports dist && mode=$(cat mode.txt) && "
    'case "$mode" in crash*) exit 2 ;; esac && '
    'mkdir -p reports dist && printf "<testsuite>%s</testsuite>\\n" "$mode" > reports/test.xml '
    '&& echo package > dist/app.txt && [ "$mode" = pass ]'
)


def _project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path / "proj",
        [
            {
                "name": "test",
                "run": TEST_TASK,
                "outputs": ["reports/test.xml"],
                "outputs_on_success": ["dist/app.txt"],
            }
        ],
        files={"mode.txt": "pass"},
    )


def test_failing_report_comes_home_and_stale_outputs_go(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = _project(tmp_path)
    project = tasks_file.parent
    report, package = project / "reports" / "test.xml", project / "dist" / "app.txt"

    green = dispatch(tasks_file, fleet4.hosts_toml)
    assert green.rc == 0, green.describe()
    assert report.read_text() == "<testsuite>pass</testsuite>\n"
    assert package.read_text() == "package\n"

    (project / "mode.txt").write_text("failing")
    red = dispatch(tasks_file, fleet4.hosts_toml)
    assert red.rc == 1, red.describe()
    assert tasks_of(red)["test"]["status"] == "failed", red.describe()
    # The failing report is what CI must publish; the package of a failed run is not
    # installed, and the green run's one is gone rather than left looking current.
    assert report.read_text() == "<testsuite>failing</testsuite>\n", red.describe()
    assert not package.exists(), f"expected the green run's package removed{red.describe()}"
    assert "removed" in red.stderr and "dist/app.txt" in red.stderr, red.describe()
    manifest = json.loads((Path(red.doc["run_dir"]) / "manifest.json").read_text())
    entry = next(t for t in manifest["tasks"] if t["name"] == "test")
    assert entry["status"] == "failed"
    assert [f["path"] for f in entry["files"]] == ["reports/test.xml"]

    (project / "mode.txt").write_text("crash!!!!")
    crashed = dispatch(tasks_file, fleet4.hosts_toml)
    assert crashed.rc == 1, crashed.describe()
    assert not report.exists(), (
        f"expected the previous run's report removed: this run wrote none{crashed.describe()}"
    )


def test_a_file_the_user_changed_is_kept_and_reported(fleet4: Fleet, tmp_path: Path) -> None:
    tasks_file = _project(tmp_path)
    project = tasks_file.parent
    report = project / "reports" / "test.xml"
    assert dispatch(tasks_file, fleet4.hosts_toml).rc == 0
    report.write_text("edited by hand\n")

    (project / "mode.txt").write_text("crash!!!!")
    crashed = dispatch(tasks_file, fleet4.hosts_toml)
    assert crashed.rc == 1, crashed.describe()
    assert report.read_text() == "edited by hand\n", "meshrun must delete only its own bytes"
    assert "kept" in crashed.stderr and "reports/test.xml" in crashed.stderr, crashed.describe()

"""``meshrun run``: upload a local script once per host, run it with args, in batches."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

from helpers import run_meshrun

from meshrun.testing.fleet import Fleet

NAMES = ["h1", "h2", "h3", "h4"]


def _script(tmp_path: Path, body: str, name: str = "job.sh") -> Path:
    """A script whose content (so its upload name) is unique to this test run."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n# {uuid.uuid4()}\n{body}")
    return path


def test_run_uploads_the_script_and_passes_its_args(fleet4: Fleet, tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        'echo "path=$0"\necho "argc=$#"\nprintf "arg=%s\\n" "$@"\n'
        'echo "host=$MESHRUN_HOST"\necho "pwd=$(pwd)"\n',
    )
    r = run_meshrun("run", "--hosts", fleet4.hosts_toml, "--json", script, "a b", "c'd", "")
    assert r.rc == 0, f"expected the script to run ok everywhere{r.describe()}"
    assert r.doc["command"].startswith("job.sh "), f"expected the script in 'command'{r.describe()}"
    for h in fleet4.hosts:
        out = r.hosts[h.name]["stdout"].splitlines()
        scripts_dir = h.workdir / ".meshrun" / "scripts"
        assert out[0].startswith(f"path={scripts_dir}/") and out[0].endswith("-job.sh"), (
            f"expected the script stored under {scripts_dir}/ on {h.name}, got {out[0]!r}"
        )
        assert out[1:] == [
            "argc=3",
            "arg=a b",
            "arg=c'd",
            "arg=",
            f"host={h.name}",
            f"pwd={h.workdir}",
        ], f"expected the three args unchanged, in the workdir, on {h.name}; got {out}"


def test_a_second_run_reuses_the_uploaded_script(fleet4: Fleet, tmp_path: Path) -> None:
    script = _script(tmp_path, 'echo "$0"\n')
    first = run_meshrun("run", "--hosts", fleet4.hosts_toml, "--json", script)
    assert first.rc == 0, first.describe()
    paths = {n: Path(first.hosts[n]["stdout"].strip()) for n in NAMES}
    for h in fleet4.hosts:
        assert paths[h.name].parent == h.workdir / ".meshrun" / "scripts", (
            f"expected the upload in WORKDIR/.meshrun/scripts on {h.name}, got {paths[h.name]}"
        )
        assert paths[h.name].read_bytes() == script.read_bytes(), (
            f"expected the uploaded copy on {h.name} to equal the local script"
        )
    mtimes = {n: p.stat().st_mtime_ns for n, p in paths.items()}

    second = run_meshrun("run", "--hosts", fleet4.hosts_toml, "--json", script)
    assert second.rc == 0, second.describe()
    again = {n: Path(second.hosts[n]["stdout"].strip()) for n in NAMES}
    assert again == paths, f"expected the same remote paths, got {again} then {paths}"
    after = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    assert after == mtimes, f"expected the uploaded files untouched (mtimes {mtimes}, now {after})"
    for h in fleet4.hosts:
        stored = sorted(p.name for p in (h.workdir / ".meshrun" / "scripts").iterdir())
        assert not [s for s in stored if s.endswith(".tmp")], (
            f"expected no temporary upload files left on {h.name}: {stored}"
        )


def test_max_fail_stops_later_batches(fleet4: Fleet, tmp_path: Path) -> None:
    script = _script(tmp_path, '[ "$MESHRUN_HOST" = h2 ] && exit 3\necho done\n')
    # --batch 1,50% of 4 hosts: [h1] [h2 h3] [h4]
    r = run_meshrun(
        "run", "--hosts", fleet4.hosts_toml, "--json", "--batch", "1,50%", "--max-fail", "0", script
    )
    assert r.rc == 1, f"expected exit 1 (a command failed, the rest skipped){r.describe()}"
    assert r.statuses() == {"h1": "ok", "h2": "failed", "h3": "ok", "h4": "skipped"}, (
        f"expected h2 failed, h3 (same batch) ok and h4 (next batch) skipped{r.describe()}"
    )
    h4 = r.hosts["h4"]
    assert h4["exit_code"] is None and h4["stdout"] == "", f"expected h4 never started: {h4}"
    assert "max-fail" in (h4["error"] or ""), f"expected the skip reason on h4: {h4}"


def test_batches_run_one_after_the_other(fleet4: Fleet, tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    script = _script(
        tmp_path,
        'echo "$MESHRUN_HOST start $(date +%s.%N)" >> "$1"\n'
        "sleep 0.5\n"
        'echo "$MESHRUN_HOST end $(date +%s.%N)" >> "$1"\n',
    )
    r = run_meshrun("run", "--hosts", fleet4.hosts_toml, "--json", "--batch", "1,50%", script, log)
    assert r.rc == 0, r.describe()
    times: dict[tuple[str, str], float] = {}
    for line in log.read_text().splitlines():
        name, what, stamp = line.split()
        times[(name, what)] = float(stamp)
    assert len(times) == 8, f"expected a start and an end per host, got:\n{log.read_text()}"
    batches = [["h1"], ["h2", "h3"], ["h4"]]
    for earlier, later in itertools.pairwise(batches):
        last_end = max(times[(n, "end")] for n in earlier)
        first_start = min(times[(n, "start")] for n in later)
        assert first_start >= last_end, (
            f"expected batch {later} to start after batch {earlier} ended "
            f"(ended {last_end:.3f}, next started {first_start:.3f}):\n{log.read_text()}"
        )
    # Within a batch the hosts run together.
    assert times[("h3", "start")] < times[("h2", "end")], (
        f"expected h2 and h3 to overlap in their batch:\n{log.read_text()}"
    )

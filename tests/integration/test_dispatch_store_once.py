"""An output is stored once: the run directory's verified copy and the installed one
(workspace or ``--artifacts DIR``) are one file on disk (a hard link), so a run with a
200 MB output uses about 200 MB, not 400. What ships still verifies, and a byte changed
in the installed copy is still named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dispatch_helpers import dispatch, write_hosts, write_project
from helpers import run_meshrun

from meshrun.testing.fleet import Fleet

SIZE = 200_000_000
LIMIT = 220_000_000


def _disk_used(*roots: Path) -> int:
    """Bytes of disk the files under ``roots`` take, each inode counted once (du)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


@pytest.mark.parametrize("where", ["workspace", "artifacts"])
def test_a_200_mb_output_takes_about_200_mb(make_fleet: object, tmp_path: Path, where: str) -> None:
    fleet: Fleet = make_fleet(1)  # type: ignore[operator]
    hosts = write_hosts(tmp_path / "hosts.toml", fleet)
    tasks_file = write_project(
        tmp_path / "proj",
        [
            {
                "name": "big",
                "run": f"mkdir -p dist && head -c {SIZE} /dev/urandom > dist/big.bin",
                "outputs": ["dist/big.bin"],
            }
        ],
    )
    project = tasks_file.parent
    args = ["--artifacts", str(tmp_path / "out")] if where == "artifacts" else []
    r = dispatch(tasks_file, hosts, *args, timeout_s=180)
    assert r.rc == 0, r.describe()
    installed = (tmp_path / "out" / "big" if where == "artifacts" else project) / "dist" / "big.bin"
    assert installed.stat().st_size == SIZE
    used = _disk_used(project, tmp_path / "out")
    assert used < LIMIT, f"expected the output stored once (< {LIMIT} bytes), used {used}"

    ok = run_meshrun("verify", r.doc["run_dir"], "--allow-unsigned")
    assert ok.rc == 0, ok.describe()
    with open(installed, "r+b") as handle:  # a tool that rewrites it in place
        handle.seek(SIZE // 2)
        byte = handle.read(1)
        handle.seek(SIZE // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    bad = run_meshrun("verify", r.doc["run_dir"], "--allow-unsigned")
    assert bad.rc == 4, bad.describe()
    assert "big.bin" in bad.stdout + bad.stderr, bad.describe()

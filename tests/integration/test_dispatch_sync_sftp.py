"""``meshrun dispatch`` pushes the workspace over SFTP when rsync is missing on the host
or on this machine and the host runs without the agent (``--no-agent``; with it, the
agent carries the workspace and neither rsync nor SFTP is used): the tasks find the
same files an rsync push leaves (nested directories, executable bits, symlinks;
excluded paths absent), in the run's workdir under the ``~`` workdir the tasks run in,
and a second run sends only what changed.

Real sshd hosts; a host "without rsync" has a PATH without it (``SetEnv PATH=`` in its
sshd_config), the coordinator "without rsync" runs with such a PATH.
"""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from dispatch_helpers import log_text, task_statuses, workdir_of, write_hosts, write_project
from helpers import bin_dir_without, run_meshrun

from meshrun.testing.fleet import Fleet
from meshrun.workspace.workdirs import WORKDIRS

MakeFleet = Callable[..., Fleet]

SAID = {
    "host": "h1: rsync is not installed on the host; the workspace goes over SFTP",
    "coordinator": "h1: rsync is not installed on this machine; the workspace goes over SFTP",
}

# What the task checks on the host; it fails (and with it the run) on any difference.
CHECK = """set -e
echo "ran in $PWD"
cat src/pkg/deep/mod.txt
./bin/run.sh
[ -x bin/run.sh ] && [ ! -x src/main.py ]
[ "$(readlink link.txt)" = src/main.py ] && cat link.txt
cat docs/build/keep.txt
for gone in secret build .git ci-state cache.pyc src/pkg/deep/junk.pyc; do
  if [ -e "$gone" ]; then echo "excluded $gone is here"; exit 9; fi
done
echo all-checks-passed
"""


def _project(root: Path) -> Path:
    tasks_file = write_project(
        root,
        [{"name": "check", "run": CHECK}],
        sync={"exclude": ["/secret", "/build", "*.pyc"]},
        files={
            "src/main.py": "print('main')\n",
            "src/pkg/deep/mod.txt": "deep module ✓\n",
            "src/pkg/deep/junk.pyc": "compiled\n",
            "cache.pyc": "compiled\n",
            "bin/run.sh": "#!/bin/sh\necho script-ran\n",
            "docs/build/keep.txt": "not the top-level build\n",  # "/build" is anchored
            "build/out.o": "object\n",
            "secret/api.key": "do not ship\n",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "src" / "main.py").chmod(0o640)
    (root / "link.txt").symlink_to("src/main.py")
    return tasks_file


def _snapshot(work: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and symlink under ``work`` but meshrun's own: (inode, mtime, mode)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(work):
        dirnames[:] = [d for d in dirnames if d != ".meshrun"]
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            found[path.relative_to(work).as_posix()] = (st.st_ino, int(st.st_mtime), st.st_mode)
    return found


@pytest.mark.parametrize("without", ["host", "coordinator"])
def test_dispatch_pushes_the_workspace_over_sftp_without_rsync(
    make_fleet: MakeFleet, tmp_path: Path, without: str
) -> None:
    bin_dir = bin_dir_without(tmp_path / "bin", without="rsync")
    home = tmp_path / "remote-home"  # $HOME on the host, not the login directory SFTP uses
    home.mkdir()
    setenv = f"SetEnv HOME={home}" + (f" PATH={bin_dir}" if without == "host" else "")
    fleet = make_fleet(1, extra_config=[setenv])
    tag = f"ws-{uuid.uuid4().hex[:8]}"
    hosts = write_hosts(tmp_path / "hosts.toml", fleet, {"h1": {"workdir": f"~/{tag}/{{name}}"}})
    project = tmp_path / "proj"
    tasks_file = _project(project)
    env = {"PATH": str(bin_dir)} if without == "coordinator" else None
    workdirs = home / tag / "h1" / WORKDIRS  # the run's own workdir is in here
    ran_in: list[Path] = []

    def run() -> str:
        r = run_meshrun(
            "dispatch", tasks_file, "--hosts", hosts, "--json", "-v", "--no-agent",
            "--state-dir", project / "ci-state", env=env,
        )  # fmt: skip
        assert r.rc == 0 and task_statuses(r) == {"check": "succeeded"}, r.describe()
        assert r.stderr.count(SAID[without]) == 1, r.describe()
        work = workdir_of(r, "h1")
        assert work.parent == workdirs, work
        ran_in.append(work)
        log = log_text(r, "check")
        assert f"ran in {work}\n" in log and "all-checks-passed" in log, log
        return log

    log = run()
    work = ran_in[0]
    assert "deep module ✓" in log and "script-ran" in log and "print('main')" in log, log
    first = _snapshot(work)
    assert sorted(first) == [
        "bin/run.sh",
        "docs/build/keep.txt",
        "link.txt",
        "src/main.py",
        "src/pkg/deep/mod.txt",
        "tasks.toml",
    ], first
    for rel in ("bin/run.sh", "src/main.py", "src/pkg/deep/mod.txt"):
        local = (project / rel).stat()
        assert first[rel][1:] == (int(local.st_mtime), local.st_mode), f"{rel}: time or mode"
    assert (work / "link.txt").is_symlink()
    login_dir = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where SFTP's relative paths go
    assert not (login_dir / tag).exists(), "the push went to the login directory, not $HOME"

    (project / "src" / "main.py").write_text("print('changed')\n")
    os.utime(project / "src" / "main.py", (1_700_000_000, 1_700_000_000))
    (project / "src" / "pkg" / "new.txt").write_text("new\n")

    log = run()
    assert ran_in[1] == work, "expected the second run to reuse the first one's workdir"
    assert "print('changed')" in log, log
    second = _snapshot(work)
    assert (work / "src" / "pkg" / "new.txt").read_text() == "new\n"
    assert second["src/main.py"][:2] != first["src/main.py"][:2], "the changed file was sent"
    unchanged = {k: v for k, v in first.items() if k != "src/main.py"}
    assert {k: second[k] for k in unchanged} == unchanged, (
        "expected unchanged files kept as they were (same inode: not sent again)"
    )

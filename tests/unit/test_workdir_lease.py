"""The workdir lease for hosts without the agent (``meshrun.workspace.lease``), run by
/bin/sh on this machine (a local connection): claims, numbering, release, the stale
workdir cleanup, and the warning on a host without flock."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshrun.config.inventory import Host
from meshrun.errors import CommandError
from meshrun.transport.local import LocalConnection
from meshrun.workspace.lease import NO_FLOCK, WorkdirLease, lease_script, lease_workdir
from meshrun.workspace.workdirs import WORKDIRS

pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")

KEY = "proj-0123456789ab"
DAY = 86400.0
WEEK = 7 * DAY


@pytest.fixture
def conn() -> LocalConnection:
    return LocalConnection(Host(name="here", local=True))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def leases() -> Iterator[list[WorkdirLease]]:
    opened: list[WorkdirLease] = []
    yield opened
    for lease in opened:
        lease.close()


def test_two_claims_at_once_get_two_workdirs_and_a_closed_one_is_free_again(
    conn: LocalConnection, base: Path
) -> None:
    first = lease_workdir(conn, str(base), KEY, WEEK)
    second = lease_workdir(conn, str(base), KEY, WEEK)
    try:
        assert first.path == str(base / WORKDIRS / KEY) and first.locked
        assert second.path == str(base / WORKDIRS / f"{KEY}.2")
        assert Path(first.path).is_dir() and Path(second.path).is_dir()
        assert (base / WORKDIRS / f"{KEY}.lock").is_file()
        first.close()
        third = lease_workdir(conn, str(base), KEY, WEEK)
        assert third.path == first.path, "a closed lease's workdir is claimable again"
        third.close()
    finally:
        first.close()
        second.close()
    first.close()  # idempotent


def test_a_claim_touches_its_lock(conn: LocalConnection, base: Path) -> None:
    (base / WORKDIRS).mkdir(parents=True)
    lock = base / WORKDIRS / f"{KEY}.lock"
    lock.touch()
    os.utime(lock, (time.time() - 3 * DAY, time.time() - 3 * DAY))
    with lease_workdir(conn, str(base), KEY, WEEK) as lease:
        assert lease.path.endswith(KEY)
        assert time.time() - lock.stat().st_mtime < 60


def _stale(base: Path, name: str, age_s: float) -> Path:
    workdir = base / WORKDIRS / name
    (workdir / "sub").mkdir(parents=True)
    (workdir / "sub" / "f.txt").write_text("old")
    lock = base / WORKDIRS / f"{name}.lock"
    lock.touch()
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return workdir


def test_stale_workdirs_are_removed_held_and_recent_ones_are_not(
    conn: LocalConnection, base: Path, leases: list[WorkdirLease]
) -> None:
    stale = _stale(base, "other-aaaaaaaaaaaa", 8 * DAY)
    recent = _stale(base, "recent-bbbbbbbbbbbb", 2 * DAY)
    held_old = _stale(base, "held-cccccccccccc", 0)
    held = lease_workdir(conn, str(base), "held-cccccccccccc", WEEK)
    leases.append(held)
    assert held.path == str(held_old)
    lock = base / WORKDIRS / "held-cccccccccccc.lock"
    os.utime(lock, (time.time() - 8 * DAY, time.time() - 8 * DAY))  # old, but held
    (base / WORKDIRS / ".trash-gone-123").mkdir()  # a cleanup that was killed
    lease = lease_workdir(conn, str(base), KEY, WEEK)
    leases.append(lease)

    def left() -> list[str]:
        """What the cleanup has still to remove. It moves a stale workdir to .trash-*,
        then removes its lock, then the trash: the directory alone goes first."""
        ws = base / WORKDIRS
        names = (stale.name, f"{stale.name}.lock")
        return sorted(p.name for p in ws.iterdir() if p.name in names or p.name[:7] == ".trash-")

    _wait_until(lambda: not left(), seen=left)
    assert recent.exists() and (recent / "sub" / "f.txt").exists()
    assert held_old.exists() and lock.exists(), "a held workdir is never removed"


def test_no_cleanup_without_a_finite_max_age(conn: LocalConnection, base: Path) -> None:
    stale = _stale(base, "other-aaaaaaaaaaaa", 800 * DAY)
    with lease_workdir(conn, str(base), KEY, float("inf")):
        time.sleep(0.3)
        assert stale.exists()


def test_all_numbers_taken_is_an_error(
    conn: LocalConnection, base: Path, leases: list[WorkdirLease]
) -> None:
    from meshrun.workspace.workdirs import MAX_CONCURRENT

    for _ in range(MAX_CONCURRENT):
        leases.append(lease_workdir(conn, str(base), KEY, WEEK))
    with pytest.raises(CommandError, match=f"{MAX_CONCURRENT} runs from this workspace"):
        lease_workdir(conn, str(base), KEY, WEEK)


def test_a_base_that_cannot_be_made_is_an_error(conn: LocalConnection, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CommandError, match=r"cannot claim a workdir under .*cannot enter"):
        lease_workdir(conn, str(tmp_path / "file" / "w"), KEY, WEEK)


def test_without_flock_the_key_is_used_with_a_warning(
    conn: LocalConnection, base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "touch", "find", "rm", "mv", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    script = lease_script(str(base), KEY, WEEK)
    stream = conn.open_process(f"PATH={bin_dir}; export PATH\n{script}")
    from meshrun.workspace import lease as workdir_lease

    class Shim:
        host = conn.host

        @staticmethod
        def open_process(command: str) -> object:
            return stream

    with caplog.at_level(logging.WARNING, logger="meshrun.workspace.lease"):
        lease = workdir_lease.lease_workdir(Shim(), str(base), KEY, WEEK)  # type: ignore[arg-type]
    lease.close()
    assert lease.path == str(base / WORKDIRS / KEY) and not lease.locked
    assert Path(lease.path).is_dir()
    assert f"here: {NO_FLOCK}" in caplog.text


def test_names_are_quoted(conn: LocalConnection, tmp_path: Path) -> None:
    base = tmp_path / "with space $HOME `x` 'q'"
    with lease_workdir(conn, str(base), "k-1", WEEK) as lease:
        assert lease.path == str(base / WORKDIRS / "k-1")
    with pytest.raises(ValueError, match="not a plain workdir name"):
        lease_script(str(base), "../x", WEEK)


def _wait_until(
    check: Callable[[], bool], timeout_s: float = 10.0, seen: Callable[[], object] = str
) -> None:
    """Poll ``check``; at the timeout, fail showing ``seen()``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out; still there: {seen()}"
        time.sleep(0.05)

"""``meshrun exec/run --pull``: files come home from real sshd hosts, verified and listed
in the run's (signed) manifest; refusals, failures, SFTP and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    bin_dir_without,
    describe_procs,
    interrupt,
    run_meshrun,
    spawn_meshrun,
    wait_gone,
)

from meshrun.config.inventory import load_inventory
from meshrun.errors import Interrupted
from meshrun.integrity.collect import collect
from meshrun.integrity.pull import pull
from meshrun.testing.fleet import Fleet
from meshrun.transport.ssh import SSHConnector

MakeFleet = Callable[..., Fleet]
THREE = ["-l", "h[1-3]"]


def _tag() -> str:
    """A directory name unique to this test, in the shared fleet's workdirs."""
    return f"pull-{uuid.uuid4().hex[:8]}"


def _manifest(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return data


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def test_logs_from_three_hosts_land_per_host_and_the_run_verifies(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tag = _tag()
    command = (
        f'mkdir -p "{tag}/logs/sub dir" && echo "$MESHRUN_HOST" > {tag}/logs/app.log && '
        f'printf ü > "{tag}/logs/sub dir/nötes ü.log" && echo skip > {tag}/other.txt'
    )
    r = run_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, *THREE, "--json", "--pull", f"{tag}/logs/**",
        "--", command, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 0, r.describe()
    run_dir = tmp_path / ".meshrun" / "runs" / r.doc["run_id"]
    assert r.doc["run_dir"] == str(run_dir) and r.doc["manifest"] == str(run_dir / "manifest.json")
    assert _files(run_dir / "hosts") == sorted(
        f"{h}/{tag}/logs/{rel}"
        for h in ("h1", "h2", "h3")
        for rel in ("app.log", "sub dir/nötes ü.log")
    ), r.describe()
    for name in ("h1", "h2", "h3"):
        assert (run_dir / "hosts" / name / tag / "logs" / "app.log").read_text() == f"{name}\n"
        assert [f["path"] for f in r.hosts[name]["files"]] == [
            f"{tag}/logs/app.log",
            f"{tag}/logs/sub dir/nötes ü.log",
        ]
    assert "6 files from 3 hosts in .meshrun/runs/" in r.stderr, r.describe()
    manifest = _manifest(run_dir)
    assert [t["name"] for t in manifest["tasks"]] == ["h1", "h2", "h3"]
    assert all(t["status"] == "ok" and t["host"] == t["name"] for t in manifest["tasks"])
    assert all(h["host_key_fingerprint"].startswith("SHA256:") for h in manifest["hosts"])

    for directory in (run_dir, run_dir / "hosts"):
        ok = run_meshrun("verify", directory, "--json", "--allow-unsigned")
        assert ok.rc == 0 and ok.doc["files_checked"] == 6, ok.describe()

    (run_dir / "hosts" / "h2" / tag / "logs" / "app.log").write_text("edited\n")
    tampered = run_meshrun("verify", run_dir, "--allow-unsigned")
    assert tampered.rc == 4 and f"h2/{tag}/logs/app.log" in tampered.stderr, tampered.describe()


def test_a_pull_dir_elsewhere_signed_verifies_with_meshrun_and_ssh_keygen(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tag = _tag()
    script = tmp_path / "collect.sh"
    script.write_text(f"#!/bin/sh\n# {tag}\nmkdir -p {tag} && hostname > {tag}/out.txt\n")
    keygen = run_meshrun("keygen", tmp_path / "key", "-I", "ci@test")
    assert keygen.rc == 0, keygen.describe()
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(keygen.stdout)
    out = tmp_path / "elsewhere"
    r = run_meshrun(
        "run", "--hosts", fleet4.hosts_toml, *THREE, "--pull", f"{tag}/*.txt", "--pull-dir", out,
        "--sign-key", tmp_path / "key", "--json", script, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 0, r.describe()
    assert _files(out) == sorted(
        ["manifest.json", "manifest.json.sig", *(f"h{i}/{tag}/out.txt" for i in (1, 2, 3))]
    )
    run_dir = Path(r.doc["run_dir"])
    assert (run_dir / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    for directory in (out, run_dir):
        ok = run_meshrun("verify", directory, "--key", f"{tmp_path / 'key'}.pub", "--json")
        assert ok.rc == 0 and ok.doc["signature"] == "trusted", ok.describe()
        assert ok.doc["files_checked"] == 3, ok.describe()
    with (out / "manifest.json").open("rb") as data:
        stock = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "ci@test", "-n", "meshrun",
             "-s", str(out / "manifest.json.sig")],
            stdin=data, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert stock.returncode == 0, f"ssh-keygen -Y verify refused the signature: {stock.stderr}"


def test_a_failed_command_still_has_its_logs_pulled(fleet4: Fleet, tmp_path: Path) -> None:
    tag = _tag()
    command = (
        f'mkdir -p {tag} && echo "why $MESHRUN_HOST" > {tag}/run.log && [ "$MESHRUN_HOST" != h2 ]'
    )
    r = run_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, *THREE, "--json", "--pull", f"{tag}/run.log",
        "--", command, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 1, f"expected exit 1 (h2's command failed){r.describe()}"
    assert r.statuses() == {"h1": "ok", "h2": "failed", "h3": "ok"}, r.describe()
    assert r.hosts["h2"]["error"] == "exit code 1" and r.hosts["h2"]["pull_error"] is None
    pulled = Path(r.doc["pull_dir"]) / "h2" / tag / "run.log"
    assert pulled.read_text() == "why h2\n", r.describe()
    tasks = {t["name"]: t for t in _manifest(Path(r.doc["run_dir"]))["tasks"]}
    assert (tasks["h2"]["status"], tasks["h2"]["exit_code"]) == ("failed", 1)
    assert [f["path"] for f in tasks["h2"]["files"]] == [f"{tag}/run.log"]


def test_an_unmatched_glob_fails_its_host_and_an_optional_one_does_not(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tag = _tag()
    command = (
        f"mkdir -p {tag} && echo x > {tag}/always.log && "
        f'[ "$MESHRUN_HOST" = h1 ] && echo c > {tag}/core.1; true'
    )
    r = run_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, *THREE, "--json", "--pull", f"{tag}/always.log",
        "--pull", f"{tag}/core*", "--pull", f"?{tag}/maybe/**", "--", command, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 1, f"expected exit 1 (an unmatched pattern){r.describe()}"
    assert r.statuses() == {"h1": "ok", "h2": "failed", "h3": "failed"}, r.describe()
    for name in ("h2", "h3"):
        assert r.hosts[name]["error"] == (
            f"pull '{tag}/core*': it matched no file (mark it optional with a leading '?')"
        ), r.describe()
        assert [f["path"] for f in r.hosts[name]["files"]] == [f"{tag}/always.log"]
        line = next(ln for ln in r.stderr.splitlines() if ln.strip().startswith(name))
        assert f"'{tag}/core*'" in line and "failed" in line, r.describe()
    assert len(r.hosts["h1"]["files"]) == 2


def test_an_escaping_symlink_is_refused_with_exit_4_and_nothing_written_outside(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tag = _tag()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    command = (
        f"mkdir -p {tag} && echo ok > {tag}/fine.log && "
        f'[ "$MESHRUN_HOST" = h1 ] && ln -s {secret} {tag}/leak.log; true'
    )
    before = _files(tmp_path)
    r = run_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, *THREE, "--json", "--pull", f"{tag}/*.log",
        "--", command, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 4, f"expected exit 4 (integrity){r.describe()}"
    h1 = r.hosts["h1"]
    assert h1["status"] == "failed" and h1["integrity_failed"] and h1["files"] == []
    assert f"'{tag}/leak.log'" in h1["pull_error"] and "outside the workdir" in h1["pull_error"]
    assert r.statuses()["h2"] == "ok" and r.statuses()["h3"] == "ok", r.describe()
    pull_dir = Path(r.doc["pull_dir"])
    assert not (pull_dir / "h1").exists() or _files(pull_dir / "h1") == [], r.describe()
    assert secret.read_text() == "secret\n"
    after = [f for f in _files(tmp_path) if not f.startswith(".meshrun/")]
    assert after == before, "nothing may be written outside the pull directory"


def test_a_host_without_rsync_is_pulled_over_sftp(make_fleet: MakeFleet, tmp_path: Path) -> None:
    bin_dir = bin_dir_without(tmp_path / "bin", without="rsync")
    home = tmp_path / "remote-home"
    home.mkdir()
    # sshd keeps only the first SetEnv line: HOME again, with the PATH lacking rsync.
    fleet = make_fleet(2, extra_config=[f"SetEnv HOME={home} PATH={bin_dir}"])
    probe = run_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--", "command -v rsync || echo none"
    )
    assert probe.rc == 0 and {h["stdout"] for h in probe.doc["hosts"]} == {"none\n"}, (
        f"test setup: expected no rsync on the hosts' PATH{probe.describe()}"
    )
    data = os.urandom(2 * (1 << 20) + 7)
    for h in fleet.hosts:
        (h.workdir / "dist dir").mkdir()
        (h.workdir / "dist dir" / "bïg file.bin").write_bytes(data)
    r = run_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--pull", "dist dir/**", "--",
        "echo 'été' > 'dist dir/ünï cødé.txt'", cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 0, r.describe()
    hosts_dir = Path(r.doc["pull_dir"])
    for h in fleet.hosts:
        assert (hosts_dir / h.name / "dist dir" / "bïg file.bin").read_bytes() == data
        assert (hosts_dir / h.name / "dist dir" / "ünï cødé.txt").read_text() == "été\n"
    ok = run_meshrun("verify", r.doc["run_dir"], "--allow-unsigned")
    assert ok.rc == 0, ok.describe()


def test_ctrl_c_during_a_pull_exits_130_and_leaves_no_file_that_looks_complete(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    # The hosts' rsync sends at 4 MB/s: a 40 MB file takes ~10 s, time to press Ctrl-C.
    bin_dir = bin_dir_without(
        tmp_path / "bin",
        without="rsync",
        wrappers={"rsync": 'exec /usr/bin/rsync --bwlimit=4000 "$@"'},
    )
    home = tmp_path / "remote-home"
    home.mkdir()
    fleet = make_fleet(2, extra_config=[f"SetEnv HOME={home} PATH={bin_dir}"])
    big = fleet.host("h1").workdir / "big.bin"
    with open(big, "wb") as f:
        f.truncate(40 << 20)
    (fleet.host("h2").workdir / "small.log").write_text("small\n")
    pull_dir = tmp_path / "pulled"
    proc = spawn_meshrun(
        "exec", "--hosts", fleet.hosts_toml, "--json", "--pull", "?big.bin", "--pull",
        "?small.log", "--pull-dir", pull_dir, "--", "true", cwd=tmp_path,
    )  # fmt: skip
    partial = _wait_for_partial(pull_dir / "h1", proc)

    interrupt(proc, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        interrupt(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"meshrun did not stop after Ctrl-C\n{out}\n{err}") from None
    shown = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert proc.returncode == 130, f"expected exit 130, got {proc.returncode}{shown}"
    doc = json.loads(out)
    statuses = {h["name"]: h["status"] for h in doc["hosts"]}
    assert statuses == {"h1": "cancelled", "h2": "ok"}, shown
    assert "interrupted" in (doc["hosts"][0]["pull_error"] or ""), shown
    manifest = _manifest(Path(doc["run_dir"]))
    assert {
        t["name"]: (t["status"], [f["path"] for f in t["files"]]) for t in manifest["tasks"]
    } == {
        "h1": ("cancelled", []),
        "h2": ("ok", ["small.log"]),
    }, shown
    assert not partial.exists(), f"the partial download {partial} was left behind"
    assert _files(pull_dir) == ["h2/small.log", "manifest.json"], shown
    ok = run_meshrun("verify", pull_dir, "--allow-unsigned")
    assert ok.rc == 0, ok.describe()
    left = wait_gone(str(pull_dir))
    assert not left, f"expected no rsync left after Ctrl-C:\n{describe_procs(left)}"
    assert "1 host: 1 ok, 1 cancelled" in err or "1 ok, 1 cancelled" in err, shown
    assert "1 file from 1 host in" in err, shown


def _wait_for_partial(dest: Path, proc: subprocess.Popen[str], timeout_s: float = 20) -> Path:
    """A file rsync is still writing under dest/.meshrun-pull-*/ (it has some bytes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in dest.glob(".meshrun-pull-*/recv/*"):
            try:
                if path.is_file() and path.stat().st_size > (1 << 20):
                    return path
            except FileNotFoundError:
                continue
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    interrupt(proc, signal.SIGKILL)
    out, err = proc.communicate()
    raise AssertionError(f"no partial download appeared under {dest}\n{out}\n{err}")


def test_a_cancelled_sftp_pull_stops_within_a_batch(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(1)
    (host,) = load_inventory(fleet.hosts_toml)
    with open(fleet.hosts[0].workdir / "big.bin", "wb") as f:
        f.truncate(160 << 20)  # paramiko reads ~100 MB/s here: over a second
    connector = SSHConnector(ssh_config_path="/nonexistent")
    try:
        files = collect(connector.connect(host), host.workdir, ["big.bin"])
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            pull(connector, host, files, tmp_path / "dest", use_rsync=False, cancel=cancel)
        waited = time.monotonic() - started
        assert waited < 1.5, f"expected the SFTP pull to stop within a batch, took {waited:.2f}s"
        assert list((tmp_path / "dest").iterdir()) == [], "nothing may be left in the destination"
        still = connector.connect(host).run_raw("echo still")
        assert still.stdout == b"still\n", "the pooled connection must survive a cancelled pull"
    finally:
        connector.close()


def test_files_over_pull_max_bytes_are_refused_before_anything_is_written(
    fleet4: Fleet, tmp_path: Path
) -> None:
    tag = _tag()
    command = (
        f"mkdir -p {tag} && head -c 1000 /dev/zero > {tag}/small && "
        f'if [ "$MESHRUN_HOST" = h2 ]; then head -c 3000 /dev/zero > {tag}/big; fi'
    )
    r = run_meshrun(
        "exec", "--hosts", fleet4.hosts_toml, *THREE, "--json", "--pull", f"{tag}/*",
        "--pull-max-bytes", "2K", "--", command, cwd=tmp_path,
    )  # fmt: skip
    assert r.rc == 1, f"expected exit 1: h2's files are over the limit{r.describe()}"
    assert r.statuses() == {"h1": "ok", "h2": "failed", "h3": "ok"}, r.describe()
    assert r.hosts["h2"]["pull_error"] == (
        "the files to pull add up to 4000 bytes, more than --pull-max-bytes (2 KiB); "
        "nothing was pulled from this host"
    ), r.describe()
    assert not (Path(r.doc["pull_dir"]) / "h2").exists(), "nothing of h2 may be written"
    assert (Path(r.doc["pull_dir"]) / "h1" / tag / "small").stat().st_size == 1000

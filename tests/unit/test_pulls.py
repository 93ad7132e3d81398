"""exec/run --pull on local hosts (real processes, no SSH) and the pure parts around it:
exit codes, how a pull changes a host's end, the manifest, the record, verify."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from cli_runner import run_cli_process

from meshrun import (
    FleetJob,
    FleetReport,
    Host,
    HostResult,
    HostStatus,
    InputError,
    Interrupted,
    run_fleet,
)
from meshrun.cli.console import FleetConsole, OutputMode
from meshrun.fleet.pull import HostPull, pull_host
from meshrun.fleet.record import (
    build_fleet_manifest,
    fleet_document,
    record_fleet_run,
    run_fleet_recorded,
)
from meshrun.fleet.run import with_pull
from meshrun.integrity.collect import check_patterns, parse_collect_report
from meshrun.integrity.manifest import FileEntry, parse_manifest, verify_run
from meshrun.integrity.pull import PULL_TEMP_PREFIX
from meshrun.transport import rsync
from meshrun.transport.local import LocalConnector

SHA = "0" * 64


def local_hosts(tmp_path: Path, count: int) -> list[Host]:
    hosts = []
    for i in range(1, count + 1):
        (tmp_path / f"n{i}").mkdir(parents=True, exist_ok=True)
        hosts.append(Host(name=f"n{i}", local=True, workdir=str(tmp_path / f"n{i}")))
    return hosts


def result(name: str, status: HostStatus, **kw: object) -> HostResult:
    return HostResult(name, status, **kw)  # type: ignore[arg-type]


def report_of(*results: HostResult, interrupted: bool = False) -> FleetReport:
    return FleetReport("r-1", "cmd", results, 1.0, interrupted=interrupted, started_at=1e9)


# -- pure: exit codes, merging, patterns ------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "interrupted", "expected"),
    [
        ([result("a", HostStatus.OK)], False, 0),
        ([result("a", HostStatus.OK), result("b", HostStatus.FAILED)], False, 1),
        ([result("a", HostStatus.FAILED), result("b", HostStatus.UNREACHABLE)], False, 3),
        (
            [
                result("a", HostStatus.FAILED, integrity_failed=True),
                result("b", HostStatus.UNREACHABLE),
            ],
            False,
            4,
        ),
        ([result("a", HostStatus.FAILED, integrity_failed=True)], True, 130),
        ([result("a", HostStatus.SKIPPED)], False, 1),
    ],
)
def test_exit_code_is_the_first_of_130_4_3_1(
    results: list[HostResult], interrupted: bool, expected: int
) -> None:
    assert report_of(*results, interrupted=interrupted).exit_code == expected


def test_a_pull_problem_only_changes_a_host_that_was_ok() -> None:
    ok = result("a", HostStatus.OK, exit_code=0)
    failed = result("a", HostStatus.FAILED, exit_code=3, error="exit code 3")
    entry = FileEntry("x.log", 1, SHA, 0o644)

    fine = with_pull(ok, HostPull(files=(entry,)), 2.0)
    assert (fine.status, fine.error, fine.files, fine.duration_s) == (
        HostStatus.OK,
        None,
        (entry,),
        2.0,
    )
    unmatched = with_pull(ok, HostPull(files=(entry,), error="pull 'y': no match"), 2.0)
    assert (unmatched.status, unmatched.error, unmatched.files) == (
        HostStatus.FAILED,
        "pull 'y': no match",
        (entry,),
    )
    assert not unmatched.integrity_failed
    bad = with_pull(ok, HostPull(error="changed", integrity=True), 2.0)
    assert (bad.status, bad.integrity_failed) == (HostStatus.FAILED, True)
    stopped = with_pull(ok, HostPull(error="stopped", interrupted=True), 2.0)
    assert stopped.status is HostStatus.CANCELLED
    lost = with_pull(ok, HostPull(error="link lost", lost=True), 2.0)
    assert lost.status is HostStatus.UNREACHABLE
    kept = with_pull(failed, HostPull(error="changed", integrity=True), 2.0)
    assert (kept.status, kept.error, kept.pull_error, kept.integrity_failed) == (
        HostStatus.FAILED,
        "exit code 3",
        "changed",
        True,
    )


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("/var/log/*.log", "is absolute"),
        ("?/etc/passwd", "is absolute"),
        ("~/logs/*", "is absolute"),
        ("../up", "has a '..' part"),
        ("a/../../b", "has a '..' part"),
        ("?", "is empty"),
        ("", "is empty"),
        ("a\0b", "NUL"),
    ],
)
def test_patterns_that_cannot_stay_in_the_workdir_are_input_errors(
    pattern: str, problem: str
) -> None:
    with pytest.raises(InputError, match=problem) as info:
        FleetJob(command="true", pull=["ok/*.log", pattern])
    assert repr(pattern) in str(info.value) and info.value.exit_code == 2


def test_patterns_are_kept_in_order_without_duplicates() -> None:
    job = FleetJob(command="true", pull=["b/**", "?a", "b/**", "..x/y", "x..", "a/./b"])
    assert job.pull == ("b/**", "?a", "..x/y", "x..", "a/./b")
    assert FleetJob(command="true", pull="logs/*.log").pull == ("logs/*.log",)
    assert check_patterns([]) == ()


def test_the_collect_report_keeps_refusal_kinds() -> None:
    doc = {
        "root": "/w",
        "files": [{"path": "a.log", "size": 1, "sha256": SHA, "mode": 420}],
        "errors": [
            {"pattern": "x", "message": "it matched no file", "kind": "unmatched"},
            {"pattern": "y", "message": "'y': cannot open: denied", "kind": "unreadable"},
            {"pattern": "z", "message": "'z': resolves outside"},  # an older host program
        ],
    }
    root, files, refusals = parse_collect_report(json.dumps(doc).encode())
    assert root == "/w" and [f.path for f in files] == ["a.log"]
    assert [(r.pattern, r.kind) for r in refusals] == [
        ("x", "unmatched"),
        ("y", "unreadable"),
        ("z", "refused"),
    ]


def test_the_manifest_has_one_task_per_host() -> None:
    entry = FileEntry("logs/a.log", 3, SHA, 0o640)
    report = report_of(
        result("b", HostStatus.FAILED, exit_code=2, duration_s=1.5, files=(entry,)),
        result("a", HostStatus.OK, exit_code=0, duration_s=0.25, host_key_fingerprint="SHA256:x"),
        result("c", HostStatus.SKIPPED, error="not started"),
    )
    hosts = [Host("a", address="10.0.0.1"), Host("b"), Host("c", address="c.example")]
    manifest = build_fleet_manifest(report, hosts, command_line=["meshrun", "exec"])
    assert [(h.name, h.address, h.host_key_fingerprint) for h in manifest.hosts] == [
        ("a", "10.0.0.1", "SHA256:x"),
        ("b", "b", None),
        ("c", "c.example", None),
    ]
    tasks = {t.name: t for t in manifest.tasks}
    assert tasks["b"].host == "b" and tasks["b"].command == "cmd"
    assert (tasks["b"].status, tasks["b"].exit_code, tasks["b"].files) == ("failed", 2, (entry,))
    assert (tasks["a"].attempts, tasks["a"].duration_s) == (1, 0.25)
    assert (tasks["c"].status, tasks["c"].attempts, tasks["c"].duration_s) == ("skipped", 0, None)
    assert manifest.command_line == ("meshrun", "exec")


def test_a_cancelled_pull_stops_rsync_at_once() -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="pull stopped"):
        rsync.run(["sleep", "30"], "h1", what="pull", cancel=cancel)
    assert time.monotonic() - started < 5


# -- on local hosts ---------------------------------------------------------------------------


def write(root: Path, rel: str, data: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def test_files_come_home_from_every_host_and_verify(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path / "hosts", 3)
    job = FleetJob(
        command='mkdir -p "logs/sub dir" && echo "$MESHRUN_HOST" > "logs/sub dir/ünï.log" && '
        'echo run > logs/run.log && [ "$MESHRUN_HOST" != n2 ]',
        pull=["logs/**", "?core*"],
    )
    state = tmp_path / "state"
    report = run_fleet_recorded(hosts, job, LocalConnector(), run_id="r-1", state_dir=state)
    assert report.exit_code == 1, report
    assert [r.status for r in report.results] == [HostStatus.OK, HostStatus.FAILED, HostStatus.OK]
    run_dir = state / "runs" / "r-1"
    for name in ("n1", "n2", "n3"):
        assert (run_dir / "hosts" / name / "logs/sub dir/ünï.log").read_text() == f"{name}\n"
        assert (run_dir / "hosts" / name / "logs/run.log").read_text() == "run\n"
    assert report.manifest_path == str((run_dir / "manifest.json").absolute())
    manifest = parse_manifest((run_dir / "manifest.json").read_bytes())
    assert {t.name: (t.status, len(t.files)) for t in manifest.tasks} == {
        "n1": ("ok", 2),
        "n2": ("failed", 2),
        "n3": ("ok", 2),
    }
    document = json.loads((run_dir / "report.json").read_text())
    assert document["kind"] == "fleet" and document["files_pulled"] == 6
    assert [f["path"] for f in document["hosts"][0]["files"]] == [
        "logs/run.log",
        "logs/sub dir/ünï.log",
    ]
    for directory in (run_dir, run_dir / "hosts"):
        checked = verify_run(directory, allowed_keys=None)
        assert checked.ok and checked.files_checked == 6, checked.problems()
    (run_dir / "hosts" / "n3" / "logs" / "run.log").write_text("tampered\n")
    tampered = verify_run(run_dir, allowed_keys=None)
    assert not tampered.ok and any("n3/logs/run.log" in p for p in tampered.problems())


def test_an_unmatched_pattern_fails_its_host_and_the_rest_still_comes_home(
    tmp_path: Path,
) -> None:
    hosts = local_hosts(tmp_path, 2)
    write(tmp_path / "n1", "app.log", "a\n")
    write(tmp_path / "n2", "app.log", "b\n")
    write(tmp_path / "n2", "core.1", "dump\n")
    job = FleetJob(command="true", pull=["app.log", "core*"], pull_dir=tmp_path / "out")
    report = run_fleet(hosts, job, LocalConnector(), run_id="r")
    n1, n2 = report.results
    assert n1.status is HostStatus.FAILED and report.exit_code == 1
    assert n1.error == "pull 'core*': it matched no file (mark it optional with a leading '?')"
    assert [f.path for f in n1.files] == ["app.log"] and not n1.integrity_failed
    assert (tmp_path / "out" / "n1" / "app.log").read_text() == "a\n"
    assert n2.status is HostStatus.OK and [f.path for f in n2.files] == ["app.log", "core.1"]


def test_an_escaping_symlink_is_an_integrity_failure_and_nothing_is_installed(
    tmp_path: Path,
) -> None:
    (host,) = local_hosts(tmp_path, 1)
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    write(tmp_path / "n1", "logs/fine.log", "fine\n")
    (tmp_path / "n1" / "logs" / "leak.log").symlink_to(secret)
    out = tmp_path / "out"
    job = FleetJob(command="exit 1", pull=["logs/*.log"], pull_dir=out)
    report = run_fleet([host], job, LocalConnector(), run_id="r")
    (r,) = report.results
    assert report.exit_code == 4 and r.integrity_failed and r.files == ()
    assert r.error == "exit code 1", "a failed command keeps its own error"
    assert "'logs/leak.log'" in (r.pull_error or "") and "outside the workdir" in (
        r.pull_error or ""
    )
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_a_pull_dir_elsewhere_gets_a_manifest_copy_and_both_verify(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path / "hosts", 2)
    for h in hosts:
        write(Path(h.workdir), "out.txt", h.name)
    out = tmp_path / "elsewhere"
    job = FleetJob(command="true", pull=["out.txt"], pull_dir=out)
    state = tmp_path / "state"
    report = run_fleet_recorded(hosts, job, LocalConnector(), run_id="r-2", state_dir=state)
    assert report.exit_code == 0 and report.pull_dir == str(out.absolute())
    run_dir = state / "runs" / "r-2"
    assert (out / "manifest.json").read_bytes() == (run_dir / "manifest.json").read_bytes()
    assert not (run_dir / "hosts").exists()
    for directory in (out, run_dir):
        checked = verify_run(directory, allowed_keys=None)
        assert checked.ok and checked.files_checked == 2, (directory, checked.problems())
    (out / "n2" / "stray.txt").write_text("not from the run")
    assert "n2/stray.txt: not in the manifest" in verify_run(run_dir, allowed_keys=None).problems()


def test_a_plain_run_records_nothing(tmp_path: Path) -> None:
    hosts = local_hosts(tmp_path, 1)
    state = tmp_path / "state"
    report = run_fleet_recorded(
        hosts, FleetJob(command="true"), LocalConnector(), run_id="r", state_dir=state
    )
    assert report.exit_code == 0 and report.run_dir is None and report.manifest_path is None
    assert not state.exists()


def test_an_interrupted_pull_installs_nothing(tmp_path: Path) -> None:
    (host,) = local_hosts(tmp_path, 1)
    write(tmp_path / "n1", "a.log", "a")
    cancel = threading.Event()
    cancel.set()
    pulled = pull_host(LocalConnector(), host, ["a.log"], tmp_path / "out", cancel=cancel)
    assert pulled.interrupted and pulled.files == () and not (tmp_path / "out").exists()


def test_the_console_says_how_many_files_came_home_and_where(tmp_path: Path) -> None:
    entry = FileEntry("a.log", 1, SHA, 0o644)
    report = FleetReport(
        "r",
        "cmd",
        (
            result("n1", HostStatus.OK, files=(entry,)),
            result("n2", HostStatus.FAILED, error="exit code 2", pull_error="pull 'x': no"),
        ),
        1.0,
        pull_dir="/srv/pulls",
        manifest_path="/srv/run/manifest.json",
    )
    err = io.StringIO()
    FleetConsole(
        mode=OutputMode.STREAM, host_names=["n1", "n2"], out=io.StringIO(), err=err
    ).finish(report)
    text = err.getvalue()
    assert "meshrun: 1 file from 1 host in /srv/pulls (manifest /srv/run/manifest.json)\n" in text
    assert "n2  failed       exit code 2; pull 'x': no" in text
    document = fleet_document(report)
    assert document["manifest"] == "/srv/run/manifest.json" and document["files_pulled"] == 1
    assert document["hosts"][1]["pull_error"] == "pull 'x': no"


def test_record_writes_the_manifest_for_an_interrupted_run(tmp_path: Path) -> None:
    report = report_of(
        result("n1", HostStatus.CANCELLED, error="pull stopped (interrupted)"), interrupted=True
    )
    recorded = record_fleet_run(report, [Host("n1")], tmp_path / "run")
    manifest = parse_manifest((tmp_path / "run" / "manifest.json").read_bytes())
    assert [(t.name, t.status) for t in manifest.tasks] == [("n1", "cancelled")]
    assert recorded.run_dir == str(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "report.json").read_text())["exit_code"] == 130


def test_cli_pull_validates_before_running_and_records_locally(tmp_path: Path) -> None:
    bad = run_cli_process(tmp_path, "exec", "--pull", "../x", "--", "touch ran")
    assert bad.returncode == 2 and "pull pattern '../x'" in bad.stderr, bad.stderr
    nokey = run_cli_process(
        tmp_path, "exec", "--pull", "x", "--sign-key", "nope", "--", "touch ran"
    )
    assert nokey.returncode == 2 and "nope" in nokey.stderr, nokey.stderr
    (tmp_path / "script.sh").write_text("touch ran\n")
    lone = run_cli_process(tmp_path, "run", "--pull-dir", "d", "script.sh")
    assert lone.returncode == 2 and "--pull-dir needs --pull" in lone.stderr, lone.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / ".meshrun").exists()

    plain = run_cli_process(tmp_path, "exec", "--", "mkdir -p logs && echo hi > logs/a.log")
    assert plain.returncode == 0 and not (tmp_path / ".meshrun").exists(), plain.stderr
    pulled = run_cli_process(tmp_path, "exec", "--json", "--pull", "logs/*.log", "--", "true")
    assert pulled.returncode == 0, pulled.stderr
    document = json.loads(pulled.stdout)
    run_dir = Path(document["run_dir"])
    assert run_dir.parent == tmp_path / ".meshrun" / "runs"
    assert document["manifest"] == str(run_dir / "manifest.json")
    assert (run_dir / "hosts" / "local" / "logs" / "a.log").read_text() == "hi\n"
    assert "1 file from 1 host in .meshrun/runs/" in pulled.stderr, pulled.stderr
    assert not list((run_dir / "hosts" / "local").glob(PULL_TEMP_PREFIX + "*"))
    verify = run_cli_process(tmp_path, "verify", str(run_dir))
    assert verify.returncode == 4, "an unsigned manifest is not ok without --allow-unsigned"
    assert "the manifest is not signed" in verify.stderr and "--allow-unsigned" in verify.stderr
    assert "verify FAILED: signature unsigned" in verify.stderr, verify.stderr
    verify = run_cli_process(tmp_path, "verify", str(run_dir), "--allow-unsigned")
    assert verify.returncode == 0, verify.stderr

    keygen = run_cli_process(tmp_path, "keygen", str(tmp_path / "key"))
    assert keygen.returncode == 0, keygen.stderr
    signed = run_cli_process(tmp_path, "exec", "--json", "--sign-key", "key", "--", "exit 3")
    assert signed.returncode == 1, signed.stderr
    document = json.loads(signed.stdout)
    assert document["pull_dir"] is None and Path(document["run_dir"]).is_dir()
    assert (Path(document["run_dir"]) / "manifest.json.sig").is_file()
    trusted = run_cli_process(tmp_path, "verify", document["run_dir"], "--key", "key.pub")
    assert trusted.returncode == 0, trusted.stderr


@pytest.mark.parametrize("name", ["manifest.json", "manifest.json.sig", "report.json"])
def test_a_host_named_like_a_record_is_refused_before_any_host_runs(
    tmp_path: Path, name: str
) -> None:
    """Its files would go to PULL_DIR/manifest.json/, where the manifest's copy is
    written: bad input, said before anything starts (was a traceback after the run)."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    hosts = [Host(name=name, local=True, workdir=str(workdir))]
    out = tmp_path / "out"
    job = FleetJob(command="touch started; echo x > out.txt", pull=["out.txt"], pull_dir=out)
    with pytest.raises(InputError) as caught:
        run_fleet_recorded(hosts, job, LocalConnector(), run_id="r", state_dir=tmp_path / "s")
    assert f"host {name!r}: its files would go to {out.absolute()}/{name}" in str(caught.value)
    assert caught.value.fix == "give the host another name"
    assert not (workdir / "started").exists() and not out.exists()


@pytest.mark.parametrize("pattern", ["**", "*", ".", ".mesh*/**", "?**/*.sh"])
def test_meshrun_s_own_directory_on_the_host_is_never_pulled(tmp_path: Path, pattern: str) -> None:
    """The host's .meshrun/ holds the agent and uploaded scripts, not the user's files."""
    (host,) = local_hosts(tmp_path / "hosts", 1)
    write(Path(host.workdir), ".meshrun/scripts/abc-deploy.sh", "echo secret\n")
    write(Path(host.workdir), "out/build.sh", "echo mine\n")
    job = FleetJob(command="true", pull=[pattern])
    report = run_fleet_recorded([host], job, LocalConnector(), run_id="r", state_dir=tmp_path)
    pulled = {f.path for r in report.results for f in r.files}
    assert not any(path.startswith(".meshrun") for path in pulled), pulled
    if pattern != ".mesh*/**":
        assert pulled == {"out/build.sh"}, report


@pytest.mark.parametrize("pattern", [".meshrun/scripts/*", "./.meshrun/**", "?.meshrun"])
def test_a_pattern_naming_meshrun_s_own_directory_is_bad_input(pattern: str) -> None:
    with pytest.raises(InputError, match="meshrun's own directory on the host"):
        FleetJob(command="true", pull=[pattern])
